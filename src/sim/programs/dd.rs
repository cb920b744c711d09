//! busybox 1.35 `dd` (Debian build: no third status line): `if= of= bs= ibs=
//! obs= count= seek= skip= conv=notrunc,sync,noerror status=none`, on
//! `/dev/zero`, `/dev/urandom` (the machine's seeded stream), `/dev/null`, `/dev/ubdX` (through the block layer, in guest
//! block units) and the files redirections made.
//!
//! Copying takes virtual time (about 200 MiB/s, at most 1 MiB per step), so a
//! machine killed during a long `dd` keeps exactly the blocks written so far.

use std::time::Duration;

use crate::sim::disk::dev_name;
use crate::sim::world::{Poll, Program, Sys};

/// Bytes per virtual second.
const THROUGHPUT: u64 = 200 << 20;
/// Bytes copied per step (a step's bytes land at once, then its time passes):
/// small enough that a machine killed mid-`dd` has written only part of it.
const STEP: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Zero,
    /// `/dev/urandom`: the machine's seeded stream.
    Random,
    Null,
    /// No `of=`: the bytes go to the console (as text).
    Stdout,
    Disk(u32),
    File(String),
}

pub struct Dd {
    args: Vec<String>,
    input: End,
    output: End,
    ibs: u64,
    obs: u64,
    count: Option<u64>,
    skip: u64,
    seek: u64,
    notrunc: bool,
    sync_pad: bool,
    quiet: bool,
    in_full: u64,
    in_part: u64,
    out_full: u64,
    out_part: u64,
    /// Input position and output position, in bytes.
    ipos: u64,
    opos: u64,
    out_name: String,
    /// Stuck in the kernel (see [`crate::sim::disk::Disk::hangs_on_write`]).
    hung: bool,
}

/// busybox `dd_suffixes` (xatoull_sfx).
pub fn parse_size(s: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u64); 13] = [
        ("kB", 1000),
        ("kD", 1000),
        ("MB", 1_000_000),
        ("MD", 1_000_000),
        ("GB", 1_000_000_000),
        ("GD", 1_000_000_000),
        ("c", 1),
        ("w", 2),
        ("b", 512),
        ("k", 1024),
        ("K", 1024),
        ("M", 1 << 20),
        ("G", 1 << 30),
    ];
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let rest = &s[digits..];
    if rest.is_empty() {
        return Some(n);
    }
    let (_, mult) = SUFFIXES.iter().find(|(suf, _)| *suf == rest)?;
    n.checked_mul(*mult)
}

impl Dd {
    pub fn new(args: &[String]) -> Self {
        Self {
            args: args.to_vec(),
            input: End::Zero,
            output: End::Null,
            ibs: 512,
            obs: 512,
            count: None,
            skip: 0,
            seek: 0,
            notrunc: false,
            sync_pad: false,
            quiet: false,
            in_full: 0,
            in_part: 0,
            out_full: 0,
            out_part: 0,
            ipos: 0,
            opos: 0,
            out_name: String::new(),
            hung: false,
        }
    }

    fn end(sys: &mut Sys, path: &str, write: bool) -> Result<End, String> {
        match path {
            "/dev/zero" => return Ok(End::Zero),
            "/dev/urandom" | "/dev/random" => return Ok(End::Random),
            "/dev/null" => return Ok(End::Null),
            _ => {}
        }
        if let Some(dev) = path.strip_prefix("/dev/") {
            // A read-only ubd device opens for writing too: UML 6.1's
            // `ubd_open` has its EROFS check commented out; each write then
            // fails in `blkdev_write_iter` (see `write`).
            if let Some(d) = sys.m.disks.values().find(|d| dev_name(d.unit) == dev) {
                return Ok(End::Disk(d.unit));
            }
            let broken = sys
                .m
                .disks_broken(dev)
                .map(|(errno, _)| std::io::Error::from_raw_os_error(errno));
            if let Some(e) = broken {
                return Err(format!("dd: can't open '{path}': {}\n", os_msg(&e)));
            }
            return Err(format!(
                "dd: can't open '{path}': No such file or directory\n"
            ));
        }
        if write || sys.m.files.contains_key(path) {
            Ok(End::File(path.to_string()))
        } else {
            Err(format!(
                "dd: can't open '{path}': No such file or directory\n"
            ))
        }
    }

    fn status(&self, sys: &mut Sys) {
        if !self.quiet {
            sys.err(&format!(
                "{}+{} records in\n{}+{} records out\n",
                self.in_full, self.in_part, self.out_full, self.out_part
            ));
        }
    }

    fn read(&mut self, sys: &mut Sys, len: u64) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len as usize];
        let got = match &self.input {
            End::Zero => len as usize,
            End::Random => {
                sys.m.rng.fill(&mut buf);
                len as usize
            }
            End::Null | End::Stdout => 0,
            End::Disk(unit) => {
                let Some(d) = sys.m.disks.get_mut(unit) else {
                    return Ok(Vec::new());
                };
                let avail = d.size.saturating_sub(self.ipos).min(len) as usize;
                match d.read(self.ipos, &mut buf[..avail]) {
                    Ok(n) => n,
                    Err(e) => {
                        return Err(format!(
                            "dd: error reading '/dev/{}': {}\n",
                            dev_name(*unit),
                            os_msg(&e)
                        ))
                    }
                }
            }
            End::File(p) => {
                let data = sys.m.files.get(p).map(Vec::as_slice).unwrap_or_default();
                let from = (self.ipos as usize).min(data.len());
                let n = (data.len() - from).min(len as usize);
                buf[..n].copy_from_slice(&data[from..from + n]);
                n
            }
        };
        buf.truncate(got);
        self.ipos += got as u64;
        Ok(buf)
    }

    /// Writes one record; returns the error message if it failed.
    fn write(&mut self, sys: &mut Sys, data: &[u8]) -> Result<(), String> {
        let at = self.opos;
        match &self.output {
            End::Null | End::Zero | End::Random => {}
            End::Stdout => sys.out(&String::from_utf8_lossy(data)),
            End::Disk(unit) => {
                let Some(d) = sys.m.disks.get_mut(unit) else {
                    return Ok(());
                };
                // `blkdev_write_iter` checks this first, before the size:
                // "dd: error writing '/dev/ubdb': Operation not permitted",
                // as a real UML 6.1 guest prints for `ubdbr=` and for an image
                // the host does not let it write.
                if d.read_only {
                    return Err(format!(
                        "dd: error writing '{}': Operation not permitted\n",
                        self.out_name
                    ));
                }
                let room = d.size.saturating_sub(at) as usize;
                let n = room.min(data.len());
                if n > 0 {
                    if let Err(e) = d.guest_write(at, &data[..n]) {
                        return Err(format!(
                            "dd: error writing '{}': {}\n",
                            self.out_name,
                            os_msg(&e)
                        ));
                    }
                }
                if n < data.len() {
                    if n > 0 {
                        self.out_part += 1;
                    }
                    self.opos += n as u64;
                    return Err(format!(
                        "dd: error writing '{}': No space left on device\n",
                        self.out_name
                    ));
                }
            }
            End::File(p) => {
                let f = sys.m.files.entry(p.clone()).or_default();
                let end = at as usize + data.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[at as usize..end].copy_from_slice(data);
            }
        }
        self.opos += data.len() as u64;
        if data.len() as u64 == self.obs {
            self.out_full += 1;
        } else {
            self.out_part += 1;
        }
        Ok(())
    }

    /// Copies up to [`STEP`] bytes; `Some(code)` when done.
    fn step(&mut self, sys: &mut Sys) -> Option<i32> {
        let mut moved = 0u64;
        while moved < STEP {
            if self.count.is_some_and(|c| self.in_full + self.in_part >= c) {
                return Some(self.done(sys, 0));
            }
            let mut rec = match self.read(sys, self.ibs) {
                Ok(r) => r,
                Err(msg) => {
                    sys.err(&msg);
                    return Some(self.done(sys, 1));
                }
            };
            if rec.is_empty() {
                return Some(self.done(sys, 0));
            }
            if rec.len() as u64 == self.ibs {
                self.in_full += 1;
            } else {
                self.in_part += 1;
                if self.sync_pad {
                    rec.resize(self.ibs as usize, 0);
                }
            }
            moved += rec.len() as u64;
            // Re-block into obs-sized writes (bs= sets both, the usual case).
            for chunk in rec.chunks(self.obs.max(1) as usize) {
                if let Err(msg) = self.write(sys, chunk) {
                    sys.err(&msg);
                    return Some(self.done(sys, 1));
                }
            }
        }
        None
    }

    fn done(&mut self, sys: &mut Sys, code: i32) -> i32 {
        if let End::File(p) = &self.output {
            if !self.notrunc {
                if let Some(f) = sys.m.files.get_mut(p) {
                    f.truncate(self.opos as usize);
                }
            }
        }
        self.status(sys);
        code
    }

    fn setup(&mut self, sys: &mut Sys) -> Result<(), i32> {
        let (mut bs, mut ibs, mut obs) = (None, None, None);
        let (mut iname, mut oname) = (None, None);
        for a in &self.args {
            let Some((k, v)) = a.split_once('=') else {
                sys.err(&format!("dd: invalid argument '{a}'\n"));
                return Err(1);
            };
            let num = |v: &str| parse_size(v);
            let bad = |sys: &mut Sys| {
                sys.err(&format!("dd: invalid number '{v}'\n"));
                Err(1)
            };
            match k {
                "if" => iname = Some(v.to_string()),
                "of" => oname = Some(v.to_string()),
                "bs" | "ibs" | "obs" | "count" | "seek" | "skip" => {
                    let Some(n) = num(v) else {
                        return bad(sys);
                    };
                    match k {
                        "bs" => bs = Some(n),
                        "ibs" => ibs = Some(n),
                        "obs" => obs = Some(n),
                        "count" => self.count = Some(n),
                        "seek" => self.seek = n,
                        _ => self.skip = n,
                    }
                }
                "conv" => {
                    for c in v.split(',') {
                        match c {
                            "notrunc" => self.notrunc = true,
                            "sync" => self.sync_pad = true,
                            "noerror" | "fsync" => {}
                            other => {
                                sys.err(&format!("dd: invalid conversion '{other}'\n"));
                                return Err(1);
                            }
                        }
                    }
                }
                "status" if v == "none" => self.quiet = true,
                "status" if v == "noxfer" || v == "progress" => {}
                "iflag" | "oflag" => {}
                _ => {
                    sys.err(&format!("dd: invalid argument '{a}'\n"));
                    return Err(1);
                }
            }
        }
        self.ibs = bs.or(ibs).unwrap_or(512).max(1);
        self.obs = bs.or(obs).unwrap_or(512).max(1);
        // Without if=/of= busybox uses stdin/stdout; the sim has no pipes:
        // stdin reads as empty, stdout is the console.
        self.input = match &iname {
            Some(p) => Dd::end(sys, p, false).map_err(|m| {
                sys.err(&m);
                1
            })?,
            None => End::Null,
        };
        self.output = match &oname {
            Some(p) => Dd::end(sys, p, true).map_err(|m| {
                sys.err(&m);
                1
            })?,
            None => End::Stdout,
        };
        self.out_name = oname.unwrap_or_else(|| "standard output".into());
        self.ipos = self.skip.saturating_mul(self.ibs);
        self.opos = self.seek.saturating_mul(self.obs);
        if let End::File(p) = &self.output {
            let f = sys.m.files.entry(p.clone()).or_default();
            if !self.notrunc && f.len() as u64 > self.opos {
                f.truncate(self.opos as usize);
            }
        }
        Ok(())
    }
}

fn os_msg(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EIO) => "Input/output error".into(),
        Some(libc::EINVAL) => "Invalid argument".into(),
        Some(libc::EAGAIN) => "Resource temporarily unavailable".into(),
        Some(libc::ENOSPC) => "No space left on device".into(),
        Some(libc::EACCES) => "Permission denied".into(),
        // strerror's text, without Rust's " (os error N)".
        Some(n) => {
            let text = std::io::Error::from_raw_os_error(n).to_string();
            text.strip_suffix(&format!(" (os error {n})"))
                .map(str::to_string)
                .unwrap_or(text)
        }
        None => e.to_string(),
    }
}

impl Program for Dd {
    fn start(&mut self, sys: &mut Sys) -> Poll {
        if let Err(code) = self.setup(sys) {
            return Poll::Exit(code);
        }
        if let End::Disk(unit) = self.output {
            if sys.m.disks.get(&unit).is_some_and(|d| d.hangs_on_write) {
                // The write never returns; not even SIGINT gets it out.
                self.hung = true;
                return Poll::Pending;
            }
        }
        self.wake(sys)
    }

    fn wake(&mut self, sys: &mut Sys) -> Poll {
        let before = self.opos.max(self.ipos);
        match self.step(sys) {
            Some(code) => Poll::Exit(code),
            None => {
                let moved = self.opos.max(self.ipos).saturating_sub(before).max(1);
                let nanos = moved.saturating_mul(1_000_000_000) / THROUGHPUT;
                sys.wake_at(sys.now + Duration::from_nanos(nanos.max(1)));
                Poll::Pending
            }
        }
    }

    fn interrupt(&mut self, sys: &mut Sys) -> Poll {
        if self.hung {
            return Poll::Pending;
        }
        self.status(sys);
        Poll::Exit(130)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_suffixes() {
        assert_eq!(parse_size("300M"), Some(300 << 20));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("2b"), Some(1024));
        assert_eq!(parse_size("1kB"), Some(1000));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("1Q"), None);
    }
}
