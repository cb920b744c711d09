//! The host paths a UML 6.1 command line names, so that a lab's command line can
//! be kept inside its run folder (ARCHITECTURE.md, "Confinement").
//!
//! Every option of the Debian 6.1 build that makes linux.uml open, create, remove
//! or connect to a host path (from `arch/um/drivers/*.c`, `arch/um/kernel/*.c`,
//! `arch/um/os-Linux/*.c`, `fs/hostfs/`):
//!
//! | option | host path | source |
//! | --- | --- | --- |
//! | `ubd<N>=FILE[,BACKING]` | images, COW files | `ubd_kern.c` |
//! | `eth<N>=daemon,,unix,CTL` | control socket (default `/var/run/uml-utilities/uml_switch.ctl`) | `daemon_kern.c` |
//! | `eth<N>=vde,SWITCH` | switch directory (default: vde's own socket) | `vde_kern.c` |
//! | `vec<N>:bpffile=FILE` | a BPF program | `vector_kern.c` |
//! | `iomem=NAME,FILE` | a file mapped as I/O memory | `iomem.c` |
//! | `initrd=FILE` | the initrd | `initrd.c` |
//! | `mconsole=notify:SOCKET` | a socket told the mconsole's address | `mconsole_kern.c` |
//! | `uml_dir=DIR` | where the umid directory is made, and removed | `umid.c` |
//! | `umid=NAME` | `uml_dir/NAME`, removed at exit: a path when it holds `/` or is `.`/`..` | `umid.c` |
//! | `hostfs=DIR` | the root of hostfs mounts | `hostfs_kern.c` |
//! | `con<N>=tty:DEV`, `ssl<N>=tty:DEV` | a host terminal | `chan_kern.c`, `tty.c` |
//! | `virtio_uml.device=SOCKET:ID` | a vhost-user socket | `virtio_uml.c` |
//! | `time-travel=ext:[ID:]SOCKET` | the time-travel controller's socket | `time.c` |
//! | `hostaudio.dsp=DEV`, `hostaudio.mixer=DEV` | host sound devices | `hostaudio_kern.c` |
//!
//! Words are scanned as the kernel's tokeniser would split them and also inside
//! an argv element that holds spaces: refusing too much is safe, missing one is not.
//! A path is fine when it is relative and has no `..` component; the machine runs
//! with the run folder as its working directory.

use super::kernel::kernel_isspace;
use super::model::{NetParams, Parsed, Span};

/// What a named host path is, for messages and for exceptions (`external` disks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathKind {
    /// A ubd image or backing file.
    Disk,
    /// A switch: a socket directory or socket.
    Switch,
    /// `umid=`: a directory name under `uml_dir`.
    Umid,
    /// Any other file, directory or socket.
    Other,
}

/// One host path a command line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPath {
    /// The option as written, e.g. `iomem=` or `eth0`.
    pub option: String,
    pub path: String,
    pub kind: HostPathKind,
    /// Not written: the kernel's (or library's) default for an option left empty.
    pub implied: bool,
    /// Into [`Parsed::input`]: the path itself where it can be located, else the option.
    pub span: Span,
}

impl HostPath {
    /// Why the path reaches outside the run folder, or `Ok`.
    pub fn check(&self) -> Result<(), String> {
        let opt = &self.option;
        let path = &self.path;
        let outside = if self.kind == HostPathKind::Umid {
            path.contains('/') || path == "." || path == ".."
        } else {
            path.starts_with('/') || path.split('/').any(|c| c == "..")
        };
        if !outside {
            return Ok(());
        }
        let base = path
            .rsplit('/')
            .find(|c| !c.is_empty() && *c != "." && *c != "..");
        let fix = match self.kind {
            HostPathKind::Switch if path.ends_with("/ctl") || opt.ends_with("daemon") => {
                "name a switch of the lab, e.g. `daemon,,unix,sw1/ctl`".to_string()
            }
            HostPathKind::Switch => {
                // A course's `/tmp/sw1` becomes the lab's `sw1`; a socket file
                // name (`vde.ctl`) is no switch name.
                let name = base
                    .filter(|b| *b != "ctl" && !b.ends_with(".ctl"))
                    .unwrap_or("sw1");
                format!("name a switch of the lab, e.g. `vde,{name}`")
            }
            HostPathKind::Disk => {
                "declare it as a disk with `external = true` to use a host file, read-only".into()
            }
            HostPathKind::Umid => "a umid is one name: letters, digits, `.`, `_`, `-`".into(),
            HostPathKind::Other => match base {
                Some(base) => format!("name a file in the run folder, e.g. `{base}`"),
                None => "name a file in the run folder".into(),
            },
        };
        let what = if self.implied {
            "(the default when none is named) is on the host"
        } else if self.kind == HostPathKind::Umid {
            "is a path, and linux.uml removes `uml_dir/<umid>` at exit"
        } else if path.starts_with('/') {
            "is an absolute host path"
        } else {
            "reaches outside the run folder"
        };
        Err(format!(
            "`{opt}`: `{path}` {what}: a command line names files inside the run folder ({fix})"
        ))
    }
}

/// Every host path `parsed` names (see the module doc), in input order.
pub fn host_paths(parsed: &Parsed) -> Vec<HostPath> {
    let mut out = Vec::new();
    for dev in parsed.ubd.iter().filter(|d| !d.implicit) {
        for file in std::iter::once(&dev.file).chain(&dev.backing) {
            out.push(HostPath {
                option: format!("ubd{}", dev.index),
                path: file.clone(),
                kind: HostPathKind::Disk,
                implied: false,
                span: dev.span,
            });
        }
    }
    for dev in &parsed.net {
        let option = format!("{}={}", dev.name, dev.transport);
        let path = match &dev.params {
            NetParams::Daemon { ctl_sock, .. } => ctl_sock.clone(),
            NetParams::Vde {
                switch: Some(s), ..
            } => s.clone(),
            NetParams::Vde { switch: None, .. } => {
                // libvdeplug's default switch: the host's, not the lab's.
                "/var/run/vde.ctl".into()
            }
            _ => continue,
        };
        // A default (the daemon's control socket, vde's switch), not written.
        let written = parsed
            .input
            .get(dev.span[0]..dev.span[1])
            .is_some_and(|w| w.contains(path.as_str()));
        out.push(HostPath {
            option,
            implied: !written,
            path,
            kind: HostPathKind::Switch,
            span: dev.span,
        });
    }
    let input = parsed.input.as_bytes();
    let mut at = 0;
    while at < input.len() {
        if kernel_isspace(input[at]) {
            at += 1;
            continue;
        }
        let start = at;
        while at < input.len() && !kernel_isspace(input[at]) {
            at += 1;
        }
        word_paths(&parsed.input, start, at, &mut out);
    }
    out.sort_by_key(|p| p.span[0]);
    out
}

/// The paths in the word `input[start..end]`.
fn word_paths(input: &str, start: usize, end: usize, out: &mut Vec<HostPath>) {
    let Some(word) = input.get(start..end) else {
        return;
    };
    let mut push = |option: &str, value_at: usize, value: &str, kind| {
        // The kernel's tokeniser drops the quotes around a value.
        let path = value.replace('"', "");
        if path.is_empty() {
            return;
        }
        let from = start + value_at;
        out.push(HostPath {
            option: option.to_string(),
            path,
            kind,
            implied: false,
            span: [from, (from + value.len()).max(from + 1)],
        });
    };
    let value_of = |prefix: &str| word.strip_prefix(prefix).map(|v| (prefix.len(), v));
    let simple = [
        "initrd=",
        "uml_dir=",
        "hostfs=",
        "hostaudio.dsp=",
        "hostaudio.mixer=",
    ];
    for prefix in simple {
        if let Some((at, v)) = value_of(prefix) {
            push(prefix, at, v, HostPathKind::Other);
        }
    }
    if let Some((at, v)) = value_of("umid=") {
        push("umid=", at, v, HostPathKind::Umid);
    }
    if let Some((at, v)) = value_of("iomem=") {
        if let Some((name, file)) = v.split_once(',') {
            push("iomem=", at + name.len() + 1, file, HostPathKind::Other);
        }
    }
    if let Some((at, v)) = value_of("mconsole=notify:") {
        push("mconsole=notify:", at, v, HostPathKind::Other);
    }
    if let Some((at, v)) = value_of("virtio_uml.device=") {
        let socket = v.rsplit_once(':').map_or(v, |(s, _)| s);
        push("virtio_uml.device=", at, socket, HostPathKind::Other);
    }
    if let Some((at, v)) = value_of("time-travel=ext:") {
        let (skip, socket) = match v.split_once(':') {
            Some((id, s)) => (id.len() + 1, s),
            None => (0, v),
        };
        push("time-travel=ext:", at + skip, socket, HostPathKind::Other);
    }
    // con=, con<N>=, ssl=, ssl<N>= (not the kernel's console=): channels
    // `in,out`, each `type:arg`; `tty:DEV` opens a host file.
    let channel_option = ["con", "ssl"].iter().find_map(|p| {
        let rest = word.strip_prefix(p)?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        rest.get(digits..)?.strip_prefix('=')?;
        Some(p.len() + digits + 1)
    });
    if let Some(eq) = channel_option {
        let option = word.get(..eq).unwrap_or(word);
        let mut offset = eq;
        for chan in word.get(eq..).unwrap_or("").split(',') {
            if let Some(dev) = chan.strip_prefix("tty:") {
                push(option, offset + 4, dev, HostPathKind::Other);
            }
            offset += chan.len() + 1;
        }
    }
    // vec<N>:key=value,...
    if let Some(rest) = word.strip_prefix("vec") {
        if let Some(colon) = rest.find(':') {
            let mut offset = 3 + colon + 1;
            for opt in rest.get(colon + 1..).unwrap_or("").split(',') {
                if let Some(file) = opt.strip_prefix("bpffile=") {
                    push("bpffile=", offset + 8, file, HostPathKind::Other);
                }
                offset += opt.len() + 1;
            }
        }
    }
}

/// The first path `argv` names outside the working directory that is not one of
/// `external` (disks only), with why: the run-time twin of `umltest check`.
pub fn first_outside(argv: &[String], external: &[String]) -> Option<(HostPath, String)> {
    let parsed = super::parse(argv);
    host_paths(&parsed).into_iter().find_map(|p| {
        if p.kind == HostPathKind::Disk && external.contains(&p.path) {
            return None;
        }
        p.check().err().map(|why| (p, why))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(line: &str) -> Vec<(String, String)> {
        let parsed = super::super::parse_shell(line).unwrap();
        host_paths(&parsed)
            .into_iter()
            .map(|p| {
                let at = parsed.input.get(p.span[0]..p.span[1]).unwrap().to_string();
                (p.option, at)
            })
            .collect()
    }

    #[test]
    fn every_file_option_is_found_with_its_span() {
        assert_eq!(
            paths("iomem=x,/etc/shadow initrd=../i mconsole=notify:/run/n uml_dir=/d umid=a/b hostfs=/"),
            [
                ("iomem=", "/etc/shadow"),
                ("initrd=", "../i"),
                ("mconsole=notify:", "/run/n"),
                ("uml_dir=", "/d"),
                ("umid=", "a/b"),
                ("hostfs=", "/"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(
            paths("con1=tty:/dev/tty1 ssl=null,tty:/dev/x vec0:transport=raw,bpffile=/b virtio_uml.device=/s:1 time-travel=ext:3:/t hostaudio.dsp=/dev/dsp console=tty0"),
            [
                ("con1=", "/dev/tty1"),
                ("ssl=", "/dev/x"),
                ("bpffile=", "/b"),
                ("virtio_uml.device=", "/s"),
                ("time-travel=ext:", "/t"),
                ("hostaudio.dsp=", "/dev/dsp"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn relative_paths_pass_and_outside_ones_say_why() {
        let ok = first_outside(
            &[
                "ubd0=h1.cow,fs.ext4".into(),
                "eth0=daemon,,unix,sw1/ctl".into(),
                "umid=h1".into(),
                "uml_dir=.uml".into(),
            ],
            &[],
        );
        assert_eq!(ok, None);
        let (p, why) = first_outside(&["eth0=vde,/tmp/sw1,,5".into()], &[]).unwrap();
        assert_eq!(p.path, "/tmp/sw1");
        assert!(why.contains("e.g. `vde,sw1`"), "{why}");
        let (_, why) = first_outside(&["eth0=daemon".into()], &[]).unwrap();
        assert!(
            why.starts_with("`eth0=daemon`: `/var/run/uml-utilities/uml_switch.ctl` (the default when none is named)"),
            "{why}"
        );
        let (_, why) = first_outside(&["eth0=daemon,,unix,sw1/../../x".into()], &[]).unwrap();
        assert!(why.contains("reaches outside the run folder"), "{why}");
        let (_, why) = first_outside(&["eth0=vde".into()], &[]).unwrap();
        assert!(
            why.starts_with(
                "`eth0=vde`: `/var/run/vde.ctl` (the default when none is named) is on the host"
            ),
            "{why}"
        );
        assert!(why.contains("e.g. `vde,sw1`"), "{why}");
        let (_, why) = first_outside(&["umid=..".into()], &[]).unwrap();
        assert!(why.contains("removes `uml_dir/<umid>`"), "{why}");
        // An external disk is named by its host path.
        let argv = ["ubd1r=/srv/img".to_string()];
        assert_eq!(first_outside(&argv, &["/srv/img".into()]), None);
        assert!(first_outside(&argv, &[]).is_some());
    }
}
