//! busybox 1.35 `dd` (coreutils/dd.c; Debian build: no third status line):
//! `if= of= bs= ibs= obs= count= seek= skip= conv=notrunc,sync,noerror
//! status=none`, on `/dev/zero`, `/dev/urandom` (the machine's seeded
//! stream), `/dev/null`, `/dev/ubdX` (through the block layer, in guest
//! block units) and the guest's files ([`crate::sim::tmpfs`]).
//!
//! Copying takes virtual time (about 200 MiB/s, at most 1 MiB per step), so a
//! machine killed during a long `dd` keeps exactly the blocks written so far.
//!
//! Bounded whatever the numbers (each answer recorded in a `mem=64M` UML 6.1
//! guest, tests/hostile/bombs.rs):
//! - sizes parse as busybox's `xatoull_range_sfx`: `bs=0` and
//!   `bs=18446744073709551615` are `dd: number N is not in
//!   1..9223372036854775807 range`; an overflow is `invalid number`;
//! - the buffers (`ibs`, and `obs` when it differs) are allocated as the guest
//!   would ([`super::alloc`]): past MemTotal `dd: out of memory`, past
//!   MemAvailable the OOM killer (`Killed`, 137); the sim itself copies in
//!   pieces of at most 64 KiB;
//! - `seek=` past a device's end is `dd: /dev/ubdb: Invalid argument`, past
//!   `i64::MAX` on a file likewise; a file past it is a sparse tmpfs file;
//! - output nobody keeps (`of=/dev/null`, a full console) is counted, not
//!   made: `count=18446744073709551615 bs=1` runs until its timeout in
//!   constant memory and wall time.

use std::time::Duration;

use crate::sim::disk::dev_name;
use crate::sim::programs::{alloc, xatoull_range_sfx, Alloc};
use crate::sim::tmpfs::{FsError, MAX_FILE_SIZE};
use crate::sim::world::{Poll, Program, Sys};

/// Bytes per virtual second.
const THROUGHPUT: u64 = 200 << 20;
/// Bytes copied per step (a step's bytes land at once, then its time passes):
/// small enough that a machine killed mid-`dd` has written only part of it.
const STEP: u64 = 64 << 10;
/// A copy longer than this (virtual seconds) never ends before any timeout.
const FOREVER_SECS: u128 = 1 << 40;

/// busybox `cwbkMG_suffixes`.
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

/// A record being copied: its length and how far it got.
#[derive(Debug, Clone, Copy)]
struct Record {
    len: u64,
    done: u64,
    /// Bytes of the current `obs` block written so far.
    block_done: u64,
}

/// The rest of a copy whose output nobody keeps, worked out at once.
#[derive(Debug, Clone, Copy)]
struct Counted {
    /// Full records and the length of a last partial one (0: none).
    full: u64,
    partial: u64,
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
    record: Option<Record>,
    counted: Option<Counted>,
    /// One piece of a record (at most [`STEP`] bytes).
    buf: Vec<u8>,
}

/// busybox `xatoull_sfx` with dd's suffixes (`300M`, `1k`, `2b`).
pub fn parse_size(s: &str) -> Option<u64> {
    xatoull_range_sfx(s, 0, u64::MAX, &SUFFIXES).ok()
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
            record: None,
            counted: None,
            buf: Vec::new(),
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
        if write || sys.m.files.contains(path) {
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

    /// Bytes the input still has from `ipos` (`u64::MAX`: no end).
    fn available(&self, sys: &Sys) -> u64 {
        match &self.input {
            End::Zero | End::Random => u64::MAX,
            End::Null | End::Stdout => 0,
            End::Disk(unit) => sys
                .m
                .disks
                .get(unit)
                .map_or(0, |d| d.size.saturating_sub(self.ipos)),
            End::File(p) => sys.m.files.len(p).unwrap_or(0).saturating_sub(self.ipos),
        }
    }

    /// Reads `len` (at most [`STEP`]) bytes of the record into `self.buf`.
    fn read(&mut self, sys: &mut Sys, len: usize) -> Result<(), String> {
        self.buf.clear();
        self.buf.resize(len, 0);
        match &self.input {
            End::Zero | End::Null | End::Stdout => {}
            End::Random => sys.m.rng.fill(&mut self.buf),
            End::Disk(unit) => {
                if let Some(d) = sys.m.disks.get_mut(unit) {
                    if let Err(e) = d.read(self.ipos, &mut self.buf) {
                        return Err(format!(
                            "dd: error reading '/dev/{}': {}\n",
                            dev_name(*unit),
                            os_msg(&e)
                        ));
                    }
                }
            }
            End::File(p) => {
                sys.m.files.read(p, self.ipos, &mut self.buf);
            }
        }
        self.ipos = self.ipos.saturating_add(len as u64);
        Ok(())
    }

    /// Writes `self.buf[..]` at `opos`: the bytes written, and the error
    /// message if the write stopped.
    fn write(&mut self, sys: &mut Sys, data_len: usize) -> (u64, Option<String>) {
        let at = self.opos;
        let data = &self.buf[..data_len];
        match &self.output {
            End::Null | End::Zero | End::Random => (data.len() as u64, None),
            End::Stdout => {
                let _ = sys.out_bytes(data);
                (data.len() as u64, None)
            }
            End::Disk(unit) => {
                let Some(d) = sys.m.disks.get_mut(unit) else {
                    return (data.len() as u64, None);
                };
                // `blkdev_write_iter` checks this first, before the size:
                // "dd: error writing '/dev/ubdb': Operation not permitted",
                // as a real UML 6.1 guest prints for `ubdbr=` and for an image
                // the host does not let it write.
                if d.read_only {
                    return (
                        0,
                        Some(format!(
                            "dd: error writing '{}': Operation not permitted\n",
                            self.out_name
                        )),
                    );
                }
                let room = d.size.saturating_sub(at) as usize;
                let n = room.min(data.len());
                if n > 0 {
                    if let Err(e) = d.guest_write(at, &data[..n]) {
                        return (
                            0,
                            Some(format!(
                                "dd: error writing '{}': {}\n",
                                self.out_name,
                                os_msg(&e)
                            )),
                        );
                    }
                }
                if n < data.len() {
                    return (
                        n as u64,
                        Some(format!(
                            "dd: error writing '{}': No space left on device\n",
                            self.out_name
                        )),
                    );
                }
                (n as u64, None)
            }
            End::File(p) => match sys.m.files.write(p, at, data) {
                Ok(n) if n == data.len() => (n as u64, None),
                // What fit stays written (the file is as long as the tmpfs).
                Ok(n) => (
                    n as u64,
                    Some(format!(
                        "dd: error writing '{}': No space left on device\n",
                        self.out_name
                    )),
                ),
                Err(FsError::NoSpace) => (
                    0,
                    Some(format!(
                        "dd: error writing '{}': No space left on device\n",
                        self.out_name
                    )),
                ),
                Err(e) => (
                    0,
                    Some(format!(
                        "dd: error writing '{}': {}\n",
                        self.out_name,
                        e.message()
                    )),
                ),
            },
        }
    }

    /// True when what is written is lost anyway: the copy can be counted.
    fn output_discards(&self, sys: &Sys) -> bool {
        match self.output {
            End::Null | End::Zero | End::Random => true,
            End::Stdout => sys.stdout_discards(),
            End::Disk(_) | End::File(_) => false,
        }
    }

    /// Output blocks (full, partial) a record of `len` bytes makes.
    fn out_blocks(&self, len: u64) -> (u64, u64) {
        (len / self.obs, u64::from(len % self.obs != 0))
    }

    /// Works out the rest of a copy into a discarding output at once;
    /// returns when it ends.
    fn count_rest(&mut self, sys: &mut Sys) -> Option<Duration> {
        let left = self
            .count
            .map_or(u64::MAX, |c| c.saturating_sub(self.in_full + self.in_part));
        let avail = self.available(sys);
        let full = left.min(avail / self.ibs);
        let partial = if full < left && avail != u64::MAX {
            avail % self.ibs
        } else {
            0
        };
        self.counted = Some(Counted { full, partial });
        let bytes = u128::from(full) * u128::from(self.ibs) + u128::from(partial);
        let nanos = bytes * 1_000_000_000 / u128::from(THROUGHPUT);
        if nanos / 1_000_000_000 > FOREVER_SECS {
            return None;
        }
        Some(sys.now.saturating_add(Duration::from_nanos(nanos as u64)))
    }

    /// Adds `full` records (and a partial one of `partial` bytes) to the counts.
    fn add_counted(&mut self, full: u64, partial: u64) {
        self.in_full = self.in_full.saturating_add(full);
        let (f, p) = self.out_blocks(self.ibs);
        self.out_full = self.out_full.saturating_add(full.saturating_mul(f));
        self.out_part = self.out_part.saturating_add(full.saturating_mul(p));
        if partial > 0 {
            self.in_part += 1;
            let len = if self.sync_pad { self.ibs } else { partial };
            let (f, p) = self.out_blocks(len);
            self.out_full = self.out_full.saturating_add(f);
            self.out_part = self.out_part.saturating_add(p);
        }
    }

    /// Copies about [`STEP`] bytes; `Some(code)` when done.
    fn step(&mut self, sys: &mut Sys) -> Option<i32> {
        let mut moved = 0u64;
        while moved < STEP {
            let mut rec = match self.record {
                Some(r) => r,
                None => {
                    if self.count.is_some_and(|c| self.in_full + self.in_part >= c) {
                        return Some(self.done(sys, 0));
                    }
                    let avail = self.available(sys);
                    let len = avail.min(self.ibs);
                    if len == 0 {
                        return Some(self.done(sys, 0));
                    }
                    if len == self.ibs {
                        self.in_full += 1;
                    } else {
                        self.in_part += 1;
                    }
                    let len = if self.sync_pad { self.ibs } else { len };
                    Record {
                        len,
                        done: 0,
                        block_done: 0,
                    }
                }
            };
            // A piece: within the record, the current obs block and STEP.
            let piece = (rec.len - rec.done)
                .min(STEP)
                .min(self.obs - rec.block_done);
            // One write(2) per obs block: a block ending past the largest
            // file fails whole (EINVAL), before any of it is written.
            if rec.block_done == 0 && matches!(self.output, End::File(_)) {
                let block = self.obs.min(rec.len - rec.done);
                if self
                    .opos
                    .checked_add(block)
                    .is_none_or(|e| e > MAX_FILE_SIZE)
                {
                    sys.err(&format!(
                        "dd: error writing '{}': Invalid argument\n",
                        self.out_name
                    ));
                    return Some(self.done(sys, 1));
                }
            }
            let real = self.available(sys).min(piece);
            if let Err(msg) = self.read(sys, piece as usize) {
                sys.err(&msg);
                return Some(self.done(sys, 1));
            }
            // conv=sync pads a short record with zeros.
            self.buf[real as usize..].fill(0);
            let (written, err) = self.write(sys, piece as usize);
            self.opos = self.opos.saturating_add(written);
            rec.done += piece;
            rec.block_done += piece;
            moved += piece;
            if let Some(msg) = err {
                // A block the device took part of counts as partial.
                if (rec.block_done > piece || written > 0) && matches!(self.output, End::Disk(_)) {
                    self.out_part += 1;
                }
                sys.err(&msg);
                return Some(self.done(sys, 1));
            }
            if rec.block_done == self.obs || rec.done == rec.len {
                if rec.block_done == self.obs {
                    self.out_full += 1;
                } else {
                    self.out_part += 1;
                }
                rec.block_done = 0;
            }
            self.record = (rec.done < rec.len).then_some(rec);
        }
        None
    }

    fn done(&mut self, sys: &mut Sys, code: i32) -> i32 {
        if let End::File(p) = &self.output {
            if !self.notrunc {
                let _ = sys.m.files.set_len(p, self.opos);
            }
        }
        self.status(sys);
        code
    }

    fn setup(&mut self, sys: &mut Sys) -> Result<(), i32> {
        let (mut iname, mut oname) = (None, None);
        const SIZE_MAX_HALF: u64 = i64::MAX as u64;
        for a in &self.args {
            let Some((k, v)) = a.split_once('=') else {
                sys.err(&format!("dd: invalid argument '{a}'\n"));
                return Err(1);
            };
            let num = |sys: &mut Sys, lo: u64, hi: u64| {
                xatoull_range_sfx(v, lo, hi, &SUFFIXES).map_err(|m| {
                    sys.err(&format!("dd: {m}\n"));
                    1
                })
            };
            // busybox takes them in order: a later ibs= overrides bs=.
            match k {
                "if" => iname = Some(v.to_string()),
                "of" => oname = Some(v.to_string()),
                "bs" => {
                    self.ibs = num(sys, 1, SIZE_MAX_HALF)?;
                    self.obs = self.ibs;
                }
                "ibs" => self.ibs = num(sys, 1, SIZE_MAX_HALF)?,
                "obs" => self.obs = num(sys, 1, SIZE_MAX_HALF)?,
                "count" => self.count = Some(num(sys, 0, u64::MAX)?),
                "seek" => self.seek = num(sys, 0, u64::MAX)?,
                "skip" => self.skip = num(sys, 0, u64::MAX)?,
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
        // xmalloc(ibs), and xmalloc(obs) when it differs, before any open.
        let buffers: &[u64] = if self.ibs == self.obs {
            &[self.ibs]
        } else {
            &[self.ibs, self.obs]
        };
        let fate = alloc(sys.m.mem, buffers);
        if fate == Alloc::Enomem {
            sys.err("dd: out of memory\n");
            return Err(1);
        }
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
        // The first read touches the buffer's pages.
        if fate == Alloc::OomKilled {
            sys.shell_msg("Killed\n");
            return Err(137);
        }
        // lseek(SEEK_CUR) with `skip * ibs` as off_t: C's wrapping product.
        // Past the end (or negative) the reads that replace it reach EOF.
        self.ipos = self.skip.wrapping_mul(self.ibs);
        if self.ipos > i64::MAX as u64 {
            self.ipos = u64::MAX;
        }
        let seek_to = self.seek.wrapping_mul(self.obs);
        let invalid = |sys: &mut Sys, name: &str| {
            sys.err(&format!("dd: {name}: Invalid argument\n"));
            Err(1)
        };
        match &self.output {
            End::File(p) => {
                sys.m.files.create(p);
                if self.seek > 0 && !self.notrunc {
                    // ftruncate(seek * obs): a negative off_t is EINVAL.
                    if sys.m.files.set_len(p, seek_to).is_err() {
                        return invalid(sys, &self.out_name.clone());
                    }
                } else if !self.notrunc {
                    let _ = sys.m.files.set_len(p, 0);
                }
                if seek_to > i64::MAX as u64 {
                    return invalid(sys, &self.out_name.clone());
                }
            }
            End::Disk(unit) => {
                // A block device's llseek takes offsets up to its size.
                let size = sys.m.disks.get(unit).map_or(0, |d| d.size);
                if self.seek > 0 && seek_to > size {
                    return invalid(sys, &self.out_name.clone());
                }
            }
            _ => {}
        }
        self.opos = seek_to;
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
        if let Some(c) = self.counted.take() {
            self.add_counted(c.full, c.partial);
            return Poll::Exit(self.done(sys, 0));
        }
        if self.record.is_none() && self.output_discards(sys) {
            return match self.count_rest(sys) {
                Some(at) => {
                    sys.wake_at(at);
                    Poll::Pending
                }
                None => Poll::Pending,
            };
        }
        let before = self.opos.max(self.ipos);
        match self.step(sys) {
            Some(code) => Poll::Exit(code),
            None => {
                let moved = self.opos.max(self.ipos).saturating_sub(before).max(1);
                let nanos = moved.saturating_mul(1_000_000_000) / THROUGHPUT;
                sys.wake_at(sys.now.saturating_add(Duration::from_nanos(nanos.max(1))));
                Poll::Pending
            }
        }
    }

    /// busybox dd has no SIGINT handler: it dies without its statistics
    /// (`count=18446744073709551615 bs=1` at a step timeout in a UML 6.1
    /// guest prints nothing).
    fn interrupt(&mut self, _sys: &mut Sys) -> Poll {
        if self.hung {
            return Poll::Pending;
        }
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

    /// Each line printed by busybox 1.35 in a `mem=64M` UML 6.1 guest
    /// (`dd if=/dev/zero of=/dev/null ARG`).
    #[test]
    fn number_errors_match_busybox() {
        let bs = |s: &str| xatoull_range_sfx(s, 1, i64::MAX as u64, &SUFFIXES);
        let n = |s: &str| xatoull_range_sfx(s, 0, u64::MAX, &SUFFIXES);
        let range = "is not in 1..9223372036854775807 range";
        assert_eq!(bs("0"), Err(format!("number 0 {range}")));
        assert_eq!(
            bs("18446744073709551615"),
            Err(format!("number 18446744073709551615 {range}"))
        );
        assert_eq!(
            bs("9223372036854775808"),
            Err(format!("number 9223372036854775808 {range}"))
        );
        assert_eq!(
            bs("99999999999G"),
            Err(format!("number 99999999999G {range}"))
        );
        assert_eq!(
            bs("99999999999999999999"),
            Err("invalid number '99999999999999999999'".into())
        );
        assert_eq!(bs("8E"), Err("invalid number '8E'".into()));
        assert_eq!(bs("-1"), Err("invalid number '-1'".into()));
        assert_eq!(bs("1x"), Err("invalid number '1x'".into()));
        assert_eq!(
            n("99999999999G"),
            Err("number 99999999999G is not in 0..18446744073709551615 range".into())
        );
    }
}
