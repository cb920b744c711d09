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

use crate::sim::tmpfs::FsError;
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
    match sys.out_bytes(s.as_bytes()) {
        Ok(()) => 0,
        Err(e) => {
            sys.err(&format!("sh: write error: {}\n", e.message()));
            1
        }
    }
}

/// busybox `printf`, its stdout and stderr written in the order it writes them.
/// A write error (a full tmpfs) makes the status 1 without a message, as the
/// builtin does in a `mem=64M` guest (`printf '%99999999d' 1 >/tmp/q`). A
/// digit buffer that calls the OOM killer kills the process: for the builtin
/// that is the shell, init, and the kernel panics (`printf '%.*f' 13000000 1`
/// in a `mem=64M` guest); the applet is `Killed`.
fn run_printf(sys: &mut Sys, how: printf::Invocation, args: &[String]) -> i32 {
    let mem = printf::Memory {
        total: mem_total_kb(sys.m.mem).saturating_mul(1024),
        available: mem_available_kb(sys.m.mem).saturating_mul(1024),
    };
    let p = printf::printf_in(how, args, mem);
    let mut write_failed = false;
    for chunk in &p.chunks {
        let r = match chunk {
            printf::Chunk::Out(bytes) => sys.out_bytes(bytes),
            printf::Chunk::Fill(b, n) => sys.out_fill(*b, *n),
            printf::Chunk::Err(text) => {
                sys.err(text);
                Ok(())
            }
        };
        write_failed |= r.is_err();
    }
    if p.oom {
        if how == printf::Invocation::Builtin {
            sys.panic("System is deadlocked on memory");
            return 137;
        }
        sys.shell_msg("Killed\n");
        return 137;
    }
    if write_failed {
        1
    } else {
        p.status
    }
}

/// MemTotal in kB for `mem=` bytes: a 6.1 guest with mem=64M reports 53456
/// kB (the kernel keeps 12080 kB).
pub fn mem_total_kb(mem: u64) -> u64 {
    (mem / 1024).saturating_sub(12080)
}

/// MemAvailable in kB, as [`meminfo`] reports it.
pub fn mem_available_kb(mem: u64) -> u64 {
    mem_total_kb(mem).saturating_sub(14704).saturating_sub(188)
}

/// What a guest allocation of `bytes` meets, as the 6.1 kernel answers
/// (`__vm_enough_memory`, OVERCOMMIT_GUESS): more than MemTotal fails at once
/// (ENOMEM); more than MemAvailable, once touched, calls the OOM killer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alloc {
    Ok,
    /// malloc returns NULL.
    Enomem,
    /// The process is killed (SIGKILL, the shell prints `Killed`, 137).
    OomKilled,
}

/// Checks a program's allocations: each one against MemTotal, their sum
/// against MemAvailable. Checked on `mem=64M` guests: `dd bs=53M` is
/// `dd: out of memory`, `bs=40M` and `ibs=20M obs=30M` are `Killed`, `bs=35M`
/// copies.
pub fn alloc(mem: u64, sizes: &[u64]) -> Alloc {
    let total = mem_total_kb(mem).saturating_mul(1024);
    let available = mem_available_kb(mem).saturating_mul(1024);
    if sizes.iter().any(|&s| s > total) {
        return Alloc::Enomem;
    }
    let sum = sizes.iter().fold(0u64, |a, &s| a.saturating_add(s));
    if sum > available {
        return Alloc::OomKilled;
    }
    Alloc::Ok
}

fn meminfo(mem: u64) -> String {
    // Figures from a 6.1 guest with mem=64M; the other lines are that boot's,
    // scaled by nothing.
    let total = mem_total_kb(mem);
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
    None
}

/// Copies a tmpfs file to stdout in 64 KiB pieces; bytes a discarding
/// stdout would lose are counted, not read (a sparse 2 PiB file costs nothing).
fn cat_tmpfs(sys: &mut Sys, path: &str) -> Result<(), FsError> {
    let len = sys.m.files.len(path).unwrap_or(0);
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0u64;
    while at < len {
        if sys.stdout_discards() {
            sys.out_discarded(len - at);
            break;
        }
        let n = sys.m.files.read(path, at, &mut buf);
        if n == 0 {
            break;
        }
        sys.out_bytes(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

fn cat(sys: &mut Sys, args: &[String]) -> i32 {
    let mut code = 0;
    for path in args {
        match read_file(sys, path) {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                sys.out(&text);
            }
            None if sys.m.files.contains(path) => {
                if let Err(e) = cat_tmpfs(sys, path) {
                    sys.err(&format!("cat: write error: {}\n", e.message()));
                    return 1;
                }
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

/// busybox's `xatoull_range_sfx` (libbb/xatonum_template.c): base-10
/// digits with no sign or leading space, then nothing or exactly one of
/// `suffixes`; the error as busybox prints it after `APPLET: `.
pub fn xatoull_range_sfx(
    s: &str,
    lo: u64,
    hi: u64,
    suffixes: &[(&str, u64)],
) -> Result<u64, String> {
    let invalid = || format!("invalid number '{s}'");
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(invalid());
    }
    // strtoull overflow is ERANGE, which busybox reports as invalid.
    let n: u64 = s[..digits].parse().map_err(|_| invalid())?;
    let rest = &s[digits..];
    let n = if rest.is_empty() {
        n
    } else {
        let (_, mult) = suffixes
            .iter()
            .find(|(suf, _)| *suf == rest)
            .ok_or_else(invalid)?;
        n.checked_mul(*mult)
            .ok_or_else(|| format!("number {s} is not in {lo}..{hi} range"))?
    };
    if n < lo || n > hi {
        return Err(format!("number {s} is not in {lo}..{hi} range"));
    }
    Ok(n)
}

const SLEEP_USAGE: &str = "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\n\nUsage: sleep [N]...\n\nPause for a time equal to the total of the args given, where each arg can\nhave an optional suffix of (s)econds, (m)inutes, (h)ours, or (d)ays\n";

/// Longest sleep the sim schedules; anything longer never ends (busybox
/// sleeps `LONG_MAX` seconds for those, and a step's timeout is at most a day).
const SLEEP_FOREVER_SECS: f64 = 1e12;

/// busybox 1.35 `sleep`: several arguments add up; `inf...` as the first one
/// sleeps for ever.
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

/// Why an argument was refused: the usage text, or a message line.
#[derive(Debug, Clone, PartialEq)]
enum SleepError {
    Usage,
    Message(String),
}

/// busybox `parse_duration_str` (libbb/duration.c), in seconds. With a `.`,
/// the digits and dots go to `strtod` and the last of them is overwritten by
/// `1` for the suffix (so `1.5e3` fails as `invalid number '1e3'`); without
/// digits before the suffix that `1` lands on the byte before the argument:
/// argv[0]'s NUL for the first one (`sleep1x.5: invalid number '1x.5'`).
fn sleep_arg(s: &str, first: bool) -> Result<f64, SleepError> {
    const SUFFIXES: [(&str, u64); 4] = [("s", 1), ("m", 60), ("h", 3600), ("d", 86400)];
    let range = |t: &str| {
        xatoull_range_sfx(t, 0, u64::MAX, &SUFFIXES)
            .map_err(|m| SleepError::Message(format!("sleep: {m}\n")))
    };
    if !s.contains('.') {
        return range(s).map(|n| n as f64);
    }
    let len = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (num, suffix) = s.split_at(len);
    if len == 0 {
        let t = format!("1{s}");
        let who = if first {
            format!("sleep{t}")
        } else {
            "sleep".into()
        };
        return Err(SleepError::Message(format!(
            "{who}: invalid number '{t}'\n"
        )));
    }
    // strtod must take all of `num`: one dot at most, a digit somewhere.
    if num.matches('.').count() > 1 || !num.bytes().any(|b| b.is_ascii_digit()) {
        return Err(SleepError::Usage);
    }
    let d: f64 = num.parse().map_err(|_| SleepError::Usage)?;
    let mult = range(&format!("1{suffix}"))?;
    Ok(d * mult as f64)
}

impl Program for Sleep {
    fn start(&mut self, sys: &mut Sys) -> Poll {
        let Some(first) = self.args.first() else {
            sys.err(SLEEP_USAGE);
            return Poll::Exit(1);
        };
        if first
            .as_bytes()
            .get(..3)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"inf"))
        {
            return Poll::Pending;
        }
        let mut total = 0.0f64;
        for (i, a) in self.args.iter().enumerate() {
            match sleep_arg(a, i == 0) {
                Ok(d) => total += d,
                Err(SleepError::Usage) => {
                    sys.err(SLEEP_USAGE);
                    return Poll::Exit(1);
                }
                Err(SleepError::Message(m)) => {
                    sys.err(&m);
                    return Poll::Exit(1);
                }
            }
        }
        if total <= 0.0 {
            return Poll::Exit(0);
        }
        if total >= SLEEP_FOREVER_SECS {
            return Poll::Pending;
        }
        // nanosleep takes whole nanoseconds; the 1e-10 s of `sleep
        // 0.0000000001` is none.
        let d = Duration::from_nanos((total * 1e9) as u64);
        if d.is_zero() {
            return Poll::Exit(0);
        }
        sys.wake_at(sys.now.saturating_add(d));
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
        assert_eq!(sleep_arg("1.5", true), Ok(1.5));
        assert_eq!(sleep_arg("2m", true), Ok(120.0));
        assert_eq!(sleep_arg("1.d", true), Ok(86400.0));
    }

    /// Each recorded with the host's busybox-static 1.35 (the guest's binary):
    /// `busybox sleep ARG`.
    #[test]
    fn sleep_errors_match_busybox() {
        let msg = |m: &str| Err(SleepError::Message(format!("{m}\n")));
        assert_eq!(sleep_arg("x", true), msg("sleep: invalid number 'x'"));
        assert_eq!(sleep_arg("1e3", true), msg("sleep: invalid number '1e3'"));
        assert_eq!(sleep_arg("1.5e3", true), msg("sleep: invalid number '1e3'"));
        assert_eq!(
            sleep_arg("18446744073709551616", true),
            msg("sleep: invalid number '18446744073709551616'")
        );
        assert_eq!(
            sleep_arg("999999999999999999d", true),
            msg("sleep: number 999999999999999999d is not in 0..18446744073709551615 range")
        );
        assert_eq!(
            sleep_arg("x.5", true),
            msg("sleep1x.5: invalid number '1x.5'")
        );
        assert_eq!(sleep_arg("-.5", false), msg("sleep: invalid number '1-.5'"));
        assert_eq!(sleep_arg("+5", true), msg("sleep: invalid number '+5'"));
        assert_eq!(sleep_arg(" 5", true), msg("sleep: invalid number ' 5'"));
        assert_eq!(sleep_arg("nan", true), msg("sleep: invalid number 'nan'"));
        assert_eq!(sleep_arg("1.5.5", true), Err(SleepError::Usage));
        assert_eq!(sleep_arg(".", true), Err(SleepError::Usage));
        assert_eq!(
            sleep_arg("18446744073709551615", true),
            Ok(18446744073709551615.0)
        );
    }

    #[test]
    fn unknown_programs_are_not_found() {
        assert!(lookup("foo", &[]).is_none());
        assert!(lookup("/usr/sbin/arping", &[]).is_some());
    }
}
