//! The guest image's programs, one table: busybox 1.35 applets (ash builtins
//! included), Habets arping 2.23, tcpdump 4.99, util-linux lsblk/blkid. Each
//! emulation's output was checked against the real program in a UML 6.1
//! guest; anything not in [`lookup`] is `sh: X: not found` (127).

pub mod arp;
pub mod arping;
pub mod dd;
pub mod getopt;
pub mod ip;
pub mod printf;
pub mod tcpdump;

use std::time::Duration;

use crate::sim::disk::dev_name;
use crate::sim::world::{Poll, Program, Sys};

use ip::Instant;

/// The program table.
pub fn lookup(name: &str, args: &[String]) -> Option<Box<dyn Program>> {
    let args = args.to_vec();
    let instant = |f: fn(&mut Sys, &[String]) -> i32| -> Option<Box<dyn Program>> {
        Some(Box::new(Instant(f, args.clone())))
    };
    // A path to a known program runs it (`/usr/sbin/arping`, `/bin/echo`).
    let base = name.rsplit('/').next().unwrap_or(name);
    match base {
        "arping" => Some(Box::new(arping::Arping::new(&args))),
        "tcpdump" => Some(Box::new(tcpdump::Tcpdump::new(&args))),
        "dd" => Some(Box::new(dd::Dd::new(&args))),
        "sleep" => Some(Box::new(Sleep::new(&args))),
        "ip" => instant(ip::ip),
        "arp" => instant(arp::arp),
        "ifconfig" => instant(ip::ifconfig),
        "echo" => instant(echo),
        // ash runs its builtin for a bare name; a path execs the applet.
        "printf" if base == name => {
            instant(|sys, args| run_printf(sys, printf::Invocation::Builtin, args))
        }
        "printf" => instant(|sys, args| run_printf(sys, printf::Invocation::Applet, args)),
        "true" => instant(|_, _| 0),
        "false" => instant(|_, _| 1),
        "cat" => instant(cat),
        "sync" => instant(sync),
        "mount" => instant(mount),
        "lsblk" => instant(lsblk),
        "blkid" => instant(blkid),
        "sysctl" => instant(sysctl),
        "halt" => instant(|sys, args| power_off(sys, "halt", args)),
        "poweroff" => instant(|sys, args| power_off(sys, "poweroff", args)),
        "reboot" => instant(reboot),
        "shutdown" => instant(shutdown),
        _ => None,
    }
}

/// ash's `echo` builtin: `-n`, `-e`, `-E` flags (clustered), words joined by spaces.
fn echo(sys: &mut Sys, args: &[String]) -> i32 {
    let (mut newline, mut escapes) = (true, false);
    let mut words = args;
    while let Some(first) = words.first() {
        let flags = first
            .strip_prefix('-')
            .filter(|f| !f.is_empty() && f.chars().all(|c| "neE".contains(c)));
        let Some(flags) = flags else {
            break;
        };
        for c in flags.chars() {
            match c {
                'n' => newline = false,
                'e' => escapes = true,
                _ => escapes = false,
            }
        }
        words = &words[1..];
    }
    let mut s = words.join(" ");
    if escapes {
        s = s
            .replace("\\n", "\n")
            .replace("\\t", "\t")
            .replace("\\\\", "\\");
    }
    if newline {
        s.push('\n');
    }
    sys.out(&s);
    0
}

/// busybox `printf`, its stdout and stderr written in the order it writes them.
fn run_printf(sys: &mut Sys, how: printf::Invocation, args: &[String]) -> i32 {
    let p = printf::printf(how, args);
    for chunk in &p.chunks {
        match chunk {
            printf::Chunk::Out(bytes) => sys.out_bytes(bytes),
            printf::Chunk::Err(text) => sys.err(text),
        }
    }
    p.status
}

fn meminfo(mem: u64) -> String {
    // Figures from a 6.1 guest with mem=64M (MemTotal 53456 kB: the kernel
    // keeps 12080 kB); the other lines are that boot's, scaled by nothing.
    let total = (mem / 1024).saturating_sub(12080);
    let free = total.saturating_sub(14704);
    format!(
        "MemTotal:       {total:>8} kB\nMemFree:        {free:>8} kB\nMemAvailable:   {:>8} kB\n\
Buffers:             120 kB\nCached:             1832 kB\nSwapCached:            0 kB\n\
Active:             1788 kB\nInactive:            224 kB\nActive(anon):          4 kB\n\
Inactive(anon):       56 kB\nActive(file):       1784 kB\nInactive(file):      168 kB\n\
Unevictable:           0 kB\nMlocked:               0 kB\nSwapTotal:             0 kB\n\
SwapFree:              0 kB\nZswap:                 0 kB\nZswapped:              0 kB\n\
Dirty:                 0 kB\nWriteback:             0 kB\nAnonPages:           104 kB\n\
Mapped:             1476 kB\nShmem:                 0 kB\nKReclaimable:        432 kB\n\
Slab:              10316 kB\nSReclaimable:        432 kB\nSUnreclaim:         9884 kB\n\
KernelStack:         576 kB\nPageTables:           44 kB\nSecPageTables:         0 kB\n\
NFS_Unstable:          0 kB\nBounce:                0 kB\nWritebackTmp:          0 kB\n\
CommitLimit:    {:>8} kB\nCommitted_AS:        672 kB\nVmallocTotal:   534175728 kB\n\
VmallocUsed:         584 kB\nVmallocChunk:          0 kB\nPercpu:               32 kB\n",
        free.saturating_sub(188),
        total / 2
    )
}

/// The contents of a file the guest can read, or None (ENOENT).
fn read_file(sys: &Sys, path: &str) -> Option<Vec<u8>> {
    let m = &*sys.m;
    match path {
        "/proc/cmdline" => return Some(format!("{}\n", m.proc_cmdline).into_bytes()),
        "/proc/meminfo" => return Some(meminfo(m.mem).into_bytes()),
        "/proc/mounts" => return Some(m.mounts.clone().into_bytes()),
        "/proc/version" => {
            return Some(b"Linux version 6.1.176 (sim) #1 Sat Jul  4 15:38:16 UTC 2026\n".to_vec())
        }
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/sys/block/") {
        let (dev, attr) = rest.split_once('/')?;
        // (unit, bytes, read-only, serial); a device that failed to open is
        // there too, read-write (set_disk_ro runs only after a good open).
        let (unit, size, read_only, serial) = m
            .disks
            .values()
            .find(|d| dev_name(d.unit) == dev)
            .map(|d| (d.unit, d.size, d.read_only, &d.serial))
            .or_else(|| {
                m.broken_disks
                    .iter()
                    .find(|(u, _)| dev_name(**u) == dev)
                    .map(|(u, b)| (*u, b.size, false, &b.serial))
            })?;
        return match attr {
            "size" => Some(format!("{}\n", size / 512).into_bytes()),
            "ro" => Some(format!("{}\n", u8::from(read_only)).into_bytes()),
            "removable" => Some(b"0\n".to_vec()),
            "dev" => Some(format!("98:{}\n", unit * 16).into_bytes()),
            // The kernel prints a missing serial with "%s" of NULL and no newline.
            "serial" => Some(match serial {
                Some(s) => format!("{s}\n").into_bytes(),
                None => b"(null)".to_vec(),
            }),
            _ => None,
        };
    }
    if let Some(rest) = path.strip_prefix("/sys/class/net/") {
        let (dev, attr) = rest.split_once('/')?;
        let i = m.stack.ifaces.iter().find(|i| i.name == dev)?;
        return match attr {
            "address" => Some(format!("{}\n", i.mac).into_bytes()),
            "operstate" => Some(
                // UML's net driver never reports a link state (no
                // netif_carrier_on): an up eth0 reads "unknown", as lo does.
                match (i.loopback, i.up, i.running()) {
                    (true, _, _) => "unknown\n",
                    (_, true, true) => "unknown\n",
                    _ => "down\n",
                }
                .as_bytes()
                .to_vec(),
            ),
            "carrier" if i.up => Some(format!("{}\n", u8::from(i.carrier)).into_bytes()),
            "mtu" => Some(format!("{}\n", if i.loopback { 65536 } else { 1500 }).into_bytes()),
            _ => None,
        };
    }
    if let Some(key) = path.strip_prefix("/proc/sys/") {
        let key = key.replace('/', ".");
        return m
            .stack
            .sysctl
            .get(&key)
            .map(|v| format!("{v}\n").into_bytes());
    }
    m.files.get(path).cloned()
}

fn cat(sys: &mut Sys, args: &[String]) -> i32 {
    let mut code = 0;
    for path in args {
        match read_file(sys, path) {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                sys.out(&text);
            }
            None => {
                sys.err(&format!(
                    "cat: can't open '{path}': No such file or directory\n"
                ));
                code = 1;
            }
        }
    }
    code
}

fn sync(sys: &mut Sys, _args: &[String]) -> i32 {
    for d in sys.m.disks.values_mut() {
        let _ = crate::block::BlockDevice::flush(&mut d.io);
    }
    0
}

fn mount(sys: &mut Sys, args: &[String]) -> i32 {
    if args.is_empty() {
        let s = sys.m.mounts.clone();
        sys.out(&s);
        return 0;
    }
    sys.err("mount: mounting is not emulated by the sim\n");
    1
}

/// util-linux `size_to_human_string(SIZE_SUFFIX_1LETTER)`: `64M`, `8M`, `1.5G`.
pub fn lsblk_size(bytes: u64) -> String {
    const LETTERS: [&str; 7] = ["B", "K", "M", "G", "T", "P", "E"];
    let mut exp = 0;
    while exp + 1 < LETTERS.len() && bytes >= 1u64 << (10 * (exp + 1)) {
        exp += 1;
    }
    if exp == 0 {
        return format!("{bytes}B");
    }
    let shift = 10 * exp;
    let whole = bytes >> shift;
    let frac = bytes & ((1u64 << shift) - 1);
    // One decimal, rounded as util-linux does (to the nearest tenth).
    let mut dec = ((frac as u128 * 10 + (1u128 << (shift - 1))) >> shift) as u64;
    let mut whole = whole;
    if dec == 10 {
        whole += 1;
        dec = 0;
    }
    if dec == 0 {
        format!("{whole}{}", LETTERS[exp])
    } else {
        format!("{whole}.{dec}{}", LETTERS[exp])
    }
}

/// util-linux lsblk's default table for ubd disks: (unit, size, read-only, root).
fn lsblk_table(disks: &[(u32, u64, bool, bool)]) -> String {
    let rows: Vec<[String; 6]> = disks
        .iter()
        .map(|&(unit, size, ro, root)| {
            [
                dev_name(unit),
                format!("{:>3}:{:<3}", 98, unit * 16),
                "0".into(),
                lsblk_size(size),
                u8::from(ro).to_string(),
                if root { "/".into() } else { String::new() },
            ]
        })
        .collect();
    let name_w = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(4);
    // Observed in the guest: "64M" fits the 4-wide header, "300M" widens the
    // column to 5 (a right-aligned column keeps one cell of room).
    let size_w = rows
        .iter()
        .map(|r| r[3].len() + 1)
        .max()
        .unwrap_or(0)
        .max(4);
    let mut s = format!(
        "{:<name_w$} MAJ:MIN RM {:>size_w$} RO TYPE MOUNTPOINTS\n",
        "NAME", "SIZE"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<name_w$} {:<7} {:>2} {:>size_w$} {:>2} disk {}\n",
            r[0], r[1], r[2], r[3], r[4], r[5]
        ));
    }
    s
}

fn lsblk(sys: &mut Sys, _args: &[String]) -> i32 {
    let mut disks: Vec<(u32, u64, bool, bool)> = sys
        .m
        .disks
        .values()
        .map(|d| (d.unit, d.size, d.read_only, d.root))
        .chain(
            sys.m
                .broken_disks
                .iter()
                .map(|(u, b)| (*u, b.size, false, false)),
        )
        .collect();
    disks.sort_unstable();
    let s = lsblk_table(&disks);
    sys.out(&s);
    0
}

fn blkid(sys: &mut Sys, args: &[String]) -> i32 {
    let mut s = String::new();
    for d in sys.m.disks.values() {
        let dev = format!("/dev/{}", dev_name(d.unit));
        if !args.is_empty() && !args.contains(&dev) {
            continue;
        }
        if let Some(fs) = &d.fs {
            let label = fs
                .label
                .as_ref()
                .map(|l| format!("LABEL=\"{l}\" "))
                .unwrap_or_default();
            s.push_str(&format!(
                "{dev}: {label}UUID=\"{}\" BLOCK_SIZE=\"{}\" TYPE=\"{}\"\n",
                fs.uuid, fs.block_size, fs.kind
            ));
        }
    }
    let code = if s.is_empty() { 2 } else { 0 };
    sys.out(&s);
    code
}

fn sysctl(sys: &mut Sys, args: &[String]) -> i32 {
    let (out, err, code) = crate::sim::sysctl::run(&mut sys.m.stack.sysctl, args);
    sys.out(&out);
    sys.err(&err);
    code
}

/// busybox `halt`/`poweroff [-d DELAY] [-n] [-f] [-w]`: with `-f` reboot(2)
/// halts the UML kernel (`reboot: System halted`, the process exits). Without
/// it busybox signals pid 1 (SIGUSR1/SIGUSR2), the harness init's interactive
/// shell, which ignores it: nothing happens, status 0 (both measured on
/// linux.uml 6.1.176 with the harness image).
fn power_off(sys: &mut Sys, applet: &str, args: &[String]) -> i32 {
    match forced(sys, applet, args) {
        Ok(true) => sys.power_off(),
        Ok(false) => {}
        Err(code) => return code,
    }
    0
}

/// busybox `reboot [-d DELAY] [-n] [-f]`: with `-f` reboot(2) restarts the
/// UML kernel in its process (the same argv); without it, as `halt` without
/// `-f`, nothing happens under the harness init (measured likewise).
fn reboot(sys: &mut Sys, args: &[String]) -> i32 {
    match forced(sys, "reboot", args) {
        Ok(true) => sys.restart(),
        Ok(false) => {}
        Err(code) => return code,
    }
    0
}

/// The options of busybox's halt.c (`d:+nfw`): `-f` calls reboot(2) at once,
/// `-w` only writes a wtmp record (nothing else happens), `-n`, `-d DELAY`
/// (the sim does not wait). Another option: its error and usage, status 1.
fn forced(sys: &mut Sys, applet: &str, args: &[String]) -> Result<bool, i32> {
    let (mut force, mut wtmp_only) = (false, false);
    let mut args = args.iter();
    while let Some(a) = args.next() {
        let Some(flags) = a.strip_prefix('-').filter(|f| !f.is_empty()) else {
            continue;
        };
        for (i, c) in flags.char_indices() {
            match c {
                'f' => force = true,
                'w' => wtmp_only = true,
                'n' => {}
                // -d DELAY, attached or the next word.
                'd' => {
                    if i + 1 == flags.len() {
                        args.next();
                    }
                    break;
                }
                other => {
                    sys.err(&format!(
                        "{applet}: invalid option -- '{other}'\n{}",
                        halt_usage(applet)
                    ));
                    return Err(1);
                }
            }
        }
    }
    Ok(force && !wtmp_only)
}

/// busybox 1.35's usage text of halt, poweroff and reboot (Debian's build).
fn halt_usage(applet: &str) -> String {
    let (flags, what, wtmp) = match applet {
        "halt" => (
            "-nfw",
            "Halt the system",
            "\t-w\tOnly write a wtmp record\n",
        ),
        "poweroff" => ("-nf", "Halt and shut off power", ""),
        _ => ("-nf", "Reboot the system", ""),
    };
    format!(
        "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\n\nUsage: {applet} [-d DELAY] [{flags}]\n\n{what}\n\n\t-d SEC\tDelay interval\n\t-n\tDo not sync\n\t-f\tForce (don't go through init)\n{wtmp}"
    )
}

fn shutdown(sys: &mut Sys, args: &[String]) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "-P") {
        sys.power_off();
        return 0;
    }
    sys.err("shutdown: only `shutdown -h now` is emulated by the sim\n");
    1
}

/// busybox `sleep`: decimals and the s/m/h/d suffixes, several arguments add up.
pub struct Sleep {
    args: Vec<String>,
}

impl Sleep {
    pub fn new(args: &[String]) -> Self {
        Self {
            args: args.to_vec(),
        }
    }
}

fn sleep_arg(s: &str) -> Option<Duration> {
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1.0),
        'm' => (&s[..s.len() - 1], 60.0),
        'h' => (&s[..s.len() - 1], 3600.0),
        'd' => (&s[..s.len() - 1], 86400.0),
        _ => (s, 1.0),
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64((v * mult).min(1e9)))
}

impl Program for Sleep {
    fn start(&mut self, sys: &mut Sys) -> Poll {
        if self.args.is_empty() {
            sys.err("BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\n\nUsage: sleep [N]...\n\nPause for a time equal to the total of the args given, where each arg can\nhave an optional suffix of (s)econds, (m)inutes, (h)ours, or (d)ays\n");
            return Poll::Exit(1);
        }
        let mut total = Duration::ZERO;
        for a in &self.args {
            match sleep_arg(a) {
                Some(d) => total += d,
                None => {
                    sys.err(&format!("sleep: invalid number '{a}'\n"));
                    return Poll::Exit(1);
                }
            }
        }
        if total.is_zero() {
            return Poll::Exit(0);
        }
        sys.wake_at(sys.now + total);
        Poll::Pending
    }
    fn wake(&mut self, _sys: &mut Sys) -> Poll {
        Poll::Exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsblk_sizes() {
        assert_eq!(lsblk_size(64 << 20), "64M");
        assert_eq!(lsblk_size(8 << 20), "8M");
        assert_eq!(lsblk_size((300 << 20) + 1), "300M");
        assert_eq!(lsblk_size(3 << 29), "1.5G");
        assert_eq!(lsblk_size(512), "512B");
    }

    /// Both layouts captured from util-linux lsblk in a UML 6.1 guest.
    #[test]
    fn lsblk_tables_match_the_guest() {
        assert_eq!(
            lsblk_table(&[(0, 64 << 20, false, true), (1, 8 << 20, false, false)]),
            "NAME MAJ:MIN RM SIZE RO TYPE MOUNTPOINTS\nubda  98:0    0  64M  0 disk /\nubdb  98:16   0   8M  0 disk \n"
        );
        assert_eq!(
            lsblk_table(&[(0, 64 << 20, false, true), (1, (300 << 20) + 512, false, false)]),
            "NAME MAJ:MIN RM  SIZE RO TYPE MOUNTPOINTS\nubda  98:0    0   64M  0 disk /\nubdb  98:16   0  300M  0 disk \n"
        );
    }

    #[test]
    fn sleep_args() {
        assert_eq!(sleep_arg("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(sleep_arg("2m"), Some(Duration::from_secs(120)));
        assert_eq!(sleep_arg("x"), None);
    }

    #[test]
    fn unknown_programs_are_not_found() {
        assert!(lookup("foo", &[]).is_none());
        assert!(lookup("/usr/sbin/arping", &[]).is_some());
    }
}
