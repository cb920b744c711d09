//! Booting a sim machine from its `linux.uml` argv, through `cmdline::parse`
//! (what the kernel configures) and `block::Ubd::open` (what opening the disks
//! prints and does, COW creation included), with a boot log modelled on a real
//! UML 6.1.176 boot for the lines that matter:
//!
//! ```text
//! Linux version 6.1.176 (...)
//! Kernel command line: <the effective command line>
//! <the kernel's messages about the command line, in order>
//! Memory: 53456K/65536K available (...)
//! <network device lines>
//! <ubd open lines: Creating "h1.cow" as COW file for "fs.ext4", mismatches ...>
//! EXT4-fs (ubda): mounted filesystem with ordered data mode. Quota mode: none.
//! VFS: Mounted root (ext4 filesystem) readonly on device 98:0.
//! devtmpfs: mounted
//! Run /init as init process
//! ```
//!
//! and the kernel's panics where it does not come up (no root device, no
//! filesystem on it). Host-dependent lines (the mconsole socket path, timing
//! figures) are left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::block::{BlockDevice, Ubd, UbdFlags, UbdSpec};
use crate::cmdline::{self, Channel, HostFile, NetParams, Parsed, Severity};
use crate::net::wire::MacAddr;
use crate::sim::disk::{self, Disk};
use crate::sim::rng::Rng;
use crate::sim::stack::{Iface, Stack};
use crate::sim::world::MachineCore;

/// The real kernel's banner (Debian's 6.1.176 build).
pub const BANNER: &str = "Linux version 6.1.176 (buildd@x86-grnet-03) (gcc (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 Sat Jul  4 15:38:16 UTC 2026";

/// Pid the sim reports as a machine's owner of disk locks (`linux.uml` pids are
/// not deterministic; these are, and two sim machines never share one).
pub fn owner_pid(machine: usize) -> u32 {
    1000 + machine as u32
}

/// A NIC to plug into a lab switch after boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plug {
    /// Index in the machine's interface list (0 is `lo`).
    pub iface: usize,
    /// The lab switch name the transport's socket path names.
    pub switch: String,
    /// Requested VDE port (0: any).
    pub port: u32,
}

/// The outcome of a boot.
pub struct Booted {
    pub core: MachineCore,
    pub plugs: Vec<Plug>,
    /// `Some(reason)` when the kernel did not reach init (the console says why).
    pub failed: Option<String>,
}

/// The switch a transport's socket path names: the last path component for a
/// VDE switch directory, the directory of a uml_switch control socket.
fn switch_of(params: &NetParams) -> Option<(String, u32)> {
    let name = |p: &str| {
        Path::new(p.trim_end_matches('/'))
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    };
    match params {
        NetParams::Vde { switch, port, .. } => Some((name(switch.as_deref()?)?, *port)),
        NetParams::Daemon { ctl_sock, .. } => {
            let dir = Path::new(ctl_sock).parent()?.to_string_lossy().into_owned();
            Some((name(&dir)?, 0))
        }
        _ => None,
    }
}

/// What `resolve_sizes` needs about a host file in the run folder.
fn host_file(run_dir: &Path, name: &str) -> HostFile {
    let path = run_dir.join(name);
    let Ok(meta) = std::fs::metadata(&path) else {
        return HostFile::default();
    };
    if !meta.is_file() {
        return HostFile::default();
    }
    let cow_backing = std::fs::File::open(&path)
        .ok()
        .and_then(|f| crate::cow::file::read_header(&f, &path).ok())
        .map(|h| String::from_utf8_lossy(&h.backing_file).into_owned());
    HostFile {
        size: Some(meta.len()),
        cow_backing,
    }
}

/// The root device unit `root=` names (`/dev/ubda`, `ubda`, `98:0`, `6200`).
fn root_unit(root: &str) -> Option<u32> {
    let r = root.strip_prefix("/dev/").unwrap_or(root);
    if let Some(letter) = r.strip_prefix("ubd") {
        let b = *letter.as_bytes().first()?;
        return (letter.len() == 1 && b.is_ascii_lowercase()).then(|| u32::from(b - b'a'));
    }
    if let Some((maj, min)) = r.split_once(':') {
        let (maj, min): (u32, u32) = (maj.parse().ok()?, min.parse().ok()?);
        return (maj == 98 && min % 16 == 0).then_some(min / 16);
    }
    let n = u32::from_str_radix(r, 16).ok()?;
    (n >> 8 == 98 && (n & 0xff) % 16 == 0).then_some((n & 0xff) / 16)
}

/// Boots machine number `index` called `name` from `argv` in `run_dir`.
pub fn boot(
    index: usize,
    name: &str,
    argv: &[String],
    run_dir: &Path,
    external: &[PathBuf],
    mut rng: Rng,
) -> Booted {
    let mut parsed: Parsed = cmdline::parse(argv);
    cmdline::resolve_sizes(&mut parsed, &|f| host_file(run_dir, f));
    let mut log = String::new();
    let line = |log: &mut String, s: &str| {
        log.push_str(s);
        log.push('\n');
    };
    let shown = |sev: Severity| !parsed.quiet || sev <= Severity::Error;
    // Host stdout chatter first (e.g. `'debug' is not necessary ...`).
    for d in parsed
        .diagnostics
        .iter()
        .filter(|d| d.channel == Channel::Stdout)
    {
        line(&mut log, &d.message);
    }
    let mut core = MachineCore::empty(name, rng.clone());
    core.proc_cmdline = parsed.proc_cmdline.clone();
    core.mem = parsed.mem_bytes;
    // The guest's /tmp: tmpfs of half the memory the kernel reports.
    core.files = crate::sim::tmpfs::Tmpfs::new(
        crate::sim::programs::mem_total_kb(parsed.mem_bytes) / 2 * 1024,
    );
    if !parsed.boots {
        core.console = log.into();
        return Booted {
            core,
            plugs: Vec::new(),
            failed: Some("the kernel did not start (see the console)".into()),
        };
    }
    if shown(Severity::Info) {
        line(&mut log, BANNER);
        line(
            &mut log,
            &format!("Kernel command line: {}", parsed.proc_cmdline),
        );
    }
    // Parse-time messages come right after the command line; the ubd size
    // stage runs at device registration, after the memory line.
    let size_stage = |m: &str| m.starts_with("Failed to initialize ubd device");
    for d in parsed
        .diagnostics
        .iter()
        .filter(|d| d.channel == Channel::Log && shown(d.severity) && !size_stage(&d.message))
    {
        line(&mut log, &d.message);
    }
    if shown(Severity::Info) {
        let total = parsed.mem_bytes / 1024;
        line(
            &mut log,
            &format!(
                "Memory: {}K/{total}K available (6634K kernel code, 1490K rwdata, 2112K rodata, 211K init, 306K bss, 12080K reserved, 0K cma-reserved)",
                total.saturating_sub(12080)
            ),
        );
    }
    // Network devices, in the kernel's configuration order.
    let mut eths = Vec::new();
    let mut plugs = Vec::new();
    for dev in &parsed.net {
        if shown(Severity::Info) {
            for m in &dev.messages {
                line(&mut log, m);
            }
        }
        if dev.transport == "vector" || dev.transport == "slip" || dev.transport == "slirp" {
            continue;
        }
        let mac = dev
            .mac
            .as_deref()
            .and_then(|m| m.parse::<MacAddr>().ok())
            .unwrap_or_else(|| {
                // eth_hw_addr_random: random bytes, locally administered unicast.
                let mut b = [0u8; 6];
                rng.fill(&mut b);
                b[0] = (b[0] & 0xfe) | 0x02;
                MacAddr(b)
            });
        eths.push((dev.index, Iface::ethernet(&dev.name, mac)));
        if let Some((switch, port)) = switch_of(&dev.params) {
            plugs.push((dev.index, switch, port));
        }
    }
    // Interfaces are registered in configuration order; ifindex follows it.
    let names: Vec<u32> = eths.iter().map(|(i, _)| *i).collect();
    core.stack = Stack::new(eths.into_iter().map(|(_, i)| i).collect());
    let plugs = plugs
        .into_iter()
        .filter_map(|(unit, switch, port)| {
            let pos = names.iter().position(|&u| u == unit)?;
            Some(Plug {
                iface: pos + 1,
                switch,
                port,
            })
        })
        .collect();
    for d in parsed
        .diagnostics
        .iter()
        .filter(|d| d.channel == Channel::Log && shown(d.severity) && size_stage(&d.message))
    {
        line(&mut log, &d.message);
    }
    // Block devices: the open stage, with its messages.
    let mut open_errors: BTreeMap<u32, i32> = BTreeMap::new();
    for dev in &parsed.ubd {
        if dev.size_sectors.is_none() {
            continue;
        }
        let spec = UbdSpec {
            index: dev.index,
            file: PathBuf::from(&dev.file),
            backing: dev.backing.as_ref().map(PathBuf::from),
            flags: UbdFlags {
                read_only: dev.read_only,
                sync: dev.sync,
                no_cow: dev.no_cow,
                shared: dev.shared,
                no_trim: dev.no_trim,
            },
            cwd: run_dir.to_path_buf(),
            owner_pid: owner_pid(index),
            // As the uml backend's sandbox: only the run folder is writable,
            // and only the external disks are readable outside it.
            confined: true,
            readable: external.to_vec(),
        };
        let opened = Ubd::open(&spec);
        for l in &opened.log {
            line(&mut log, &l.text);
        }
        match opened.result {
            Ok(ubd) => {
                let size = ubd.size();
                let mut head = vec![0u8; 2048.min(size as usize)];
                let _ = ubd.read_at(&mut head, 0);
                let read_only = ubd.is_read_only();
                let hangs_on_write = ubd.as_cow().is_some_and(|c| c.kernel_hangs_on_write());
                core.disks.insert(
                    dev.index,
                    Disk {
                        unit: dev.index,
                        size,
                        read_only,
                        serial: dev.serial.clone(),
                        io: ubd,
                        faults: Default::default(),
                        writes: 0,
                        root: false,
                        fs: disk::probe_fs(&head),
                        hangs_on_write,
                    },
                );
            }
            Err(e) => {
                let errno = match e {
                    crate::block::BlockError::Open { errno, .. } => errno,
                    _ => libc::EIO,
                };
                open_errors.insert(dev.index, errno);
                let lines = opened.log.iter().map(|l| l.text.clone()).collect();
                core.broken_disks.insert(
                    dev.index,
                    crate::sim::world::BrokenDisk {
                        errno,
                        lines,
                        size: dev.size_sectors.unwrap_or(0).saturating_mul(512),
                        serial: dev.serial.clone(),
                    },
                );
            }
        }
    }
    // Mount the root filesystem.
    let root_name = parsed
        .root
        .strip_prefix("/dev/")
        .unwrap_or(&parsed.root)
        .to_string();
    let unit = root_unit(&parsed.root);
    let configured = unit.and_then(|u| {
        parsed
            .ubd
            .iter()
            .find(|d| d.index == u && d.size_sectors.is_some())
    });
    let failed = match (unit, configured) {
        (Some(u), Some(_)) => match core.disks.get_mut(&u) {
            Some(d) if d.fs.is_some() => {
                d.root = true;
                let rw = parsed.root_rw && !d.read_only;
                let kind = d.fs.as_ref().map(|f| f.kind).unwrap_or("ext4");
                let dev = disk::dev_name(u);
                line(&mut log, &format!("EXT4-fs ({dev}): mounted filesystem with ordered data mode. Quota mode: none."));
                line(
                    &mut log,
                    &format!(
                        "VFS: Mounted root ({kind} filesystem){} on device 98:{}.",
                        if rw { "" } else { " readonly" },
                        u * 16
                    ),
                );
                core.mounts = format!(
                    "/dev/root on / type {kind} ({},relatime)\ndevtmpfs on /dev type devtmpfs (rw,relatime,mode=755)\nproc on /proc type proc (rw,relatime)\nsys on /sys type sysfs (rw,relatime)\n",
                    if rw { "rw" } else { "ro" }
                );
                None
            }
            Some(_) => {
                // No filesystem any kernel driver recognises.
                Some(no_filesystem(&mut log, &parsed, u))
            }
            // mount_block_root: -EINVAL and -EACCES mean "not this filesystem,
            // try the next", so a disk that cannot be opened for those reasons
            // (a COW file whose backing file fails the size/mtime check) ends
            // like one without a filesystem.
            None if matches!(open_errors.get(&u), Some(&libc::EINVAL | &libc::EACCES)) => {
                Some(no_filesystem(&mut log, &parsed, u))
            }
            None => {
                let errno = open_errors.get(&u).copied().unwrap_or(libc::ENXIO);
                line(
                    &mut log,
                    &format!("VFS: Cannot open root device \"{root_name}\" or unknown-block(98,{}): error -{errno}", u * 16),
                );
                line(&mut log, "Please append a correct \"root=\" boot option; here are the available partitions:");
                Some(format!("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(98,{})", u * 16))
            }
        },
        _ => {
            line(
                &mut log,
                &format!(
                    "VFS: Cannot open root device \"{root_name}\" or unknown-block(0,0): error -6"
                ),
            );
            line(
                &mut log,
                "Please append a correct \"root=\" boot option; here are the available partitions:",
            );
            Some(
                "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
                    .into(),
            )
        }
    };
    if let Some(panic) = &failed {
        line(&mut log, panic);
    } else {
        line(&mut log, "devtmpfs: mounted");
        let init = parsed.init.clone().unwrap_or_else(|| "/sbin/init".into());
        line(&mut log, &format!("Run {init} as init process"));
    }
    core.console = log.into();
    core.rng = rng;
    Booted {
        core,
        plugs,
        failed,
    }
}

/// The end of `mount_block_root` when no filesystem type could mount the root
/// device (unit `u`): every registered disk, the types tried (those of the 6.1
/// kernel the harness runs, in registration order), and the panic message.
fn no_filesystem(log: &mut String, parsed: &Parsed, u: u32) -> String {
    log.push_str("List of all partitions:\n");
    for d in parsed.ubd.iter().filter(|d| d.size_sectors.is_some()) {
        let kib = d.size_sectors.unwrap_or(0) / 2;
        log.push_str(&format!(
            "{:02x}{:02x}{kib:>16} {} \n driver: uml-blkdev\n",
            98,
            d.index * 16,
            disk::dev_name(d.index)
        ));
    }
    log.push_str("No filesystem could mount root, tried: \n");
    for fs in ["reiserfs", "ext3", "ext4", "ext2", "jfs", "xfs", "btrfs"] {
        log.push_str(&format!(" {fs}\n"));
    }
    log.push('\n');
    format!(
        "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(98,{})",
        u * 16
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_device_names() {
        assert_eq!(root_unit("/dev/ubda"), Some(0));
        assert_eq!(root_unit("ubdb"), Some(1));
        assert_eq!(root_unit("98:0"), Some(0));
        assert_eq!(root_unit("98:16"), Some(1));
        assert_eq!(root_unit("6210"), Some(1));
        assert_eq!(root_unit("/dev/sda1"), None);
        assert_eq!(root_unit(""), None);
    }

    #[test]
    fn switch_names_from_transport_paths() {
        let vde = NetParams::Vde {
            switch: Some("./sw1/".into()),
            port: 5,
            group: None,
            mode: None,
            description: None,
        };
        assert_eq!(switch_of(&vde), Some(("sw1".into(), 5)));
        let daemon = NetParams::Daemon {
            sock_type: "unix".into(),
            ctl_sock: "sw2/ctl".into(),
        };
        assert_eq!(switch_of(&daemon), Some(("sw2".into(), 0)));
    }
}
