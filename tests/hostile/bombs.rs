//! Hostile inputs: bombs inside the sim's guest. Each guest command here once
//! panicked the sim, hung it, or made it allocate gigabytes; now each answers
//! as the real program does and finishes within seconds in bounded memory.
//!
//! How the expected texts were recorded: busybox answers with the host's
//! busybox-static 1.35 (the guest's binary: `busybox dd ...`, `busybox sleep
//! ...`), memory and filesystem answers by running the same command line in
//! a `mem=64M` UML 6.1 guest (`umltest run --backend uml` on a one-machine
//! lab, commands followed by `; echo rc=$?`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use umltest::scenario::backend::{Backend, Lab, MachineSpec, SwitchSpec, CONSOLE_CAP};
use umltest::sim::SimBackend;

use crate::util;

/// A day: the longest step timeout a scenario may ask for.
const DAY: Duration = Duration::from_secs(86_400);

/// A sparse image with just an ext4 superblock: enough for the sim to mount
/// it as root, no mkfs needed.
fn fake_ext4(path: &Path, size: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(size).expect("size image");
    let mut sb = [0u8; 1024];
    sb[0x38..0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
    sb[0x60..0x64].copy_from_slice(&0x40u32.to_le_bytes());
    f.write_all_at(&sb, 1024).expect("write superblock");
}

/// One booted `mem=64M` machine `h1` with an 8 MiB data disk (`/dev/ubdb`)
/// and a second machine `h2` on the same switch.
fn guest(dir: &Path) -> SimBackend {
    fake_ext4(&dir.join("fs.ext4"), 64 << 20);
    std::fs::File::create(dir.join("data.img"))
        .and_then(|f| f.set_len(8 << 20))
        .expect("data disk");
    let machine = |name: &str, extra: &str| MachineSpec {
        name: name.into(),
        argv: format!(
            "mem=64M ubd0={name}.cow,fs.ext4 {extra} root=/dev/ubda init=/init eth0=vde,sw1"
        )
        .split_whitespace()
        .map(String::from)
        .collect(),
    };
    let lab = Lab {
        name: "bombs".into(),
        seed: 1,
        run_dir: dir.to_path_buf(),
        switches: vec![SwitchSpec {
            name: "sw1".into(),
            hub: false,
            numports: 32,
        }],
        machines: vec![machine("h1", "ubd1=data.img"), machine("h2", "")],
        external: Vec::new(),
    };
    let mut sim = SimBackend::new();
    sim.start(&lab).expect("start");
    sim.boot(&["h1".into(), "h2".into()], Duration::from_secs(10))
        .expect("boot");
    sim
}

/// (output, exit code) of `cmd` on h1, and the wall time it took.
fn run(sim: &mut SimBackend, cmd: &str, timeout: Duration) -> (String, i32, Duration) {
    let t0 = Instant::now();
    let out = sim
        .run("h1", cmd, timeout)
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (out.output, out.exit_code, t0.elapsed())
}

/// Asserts `cmd` prints exactly `want` with status `code`, within seconds.
fn answers(sim: &mut SimBackend, cmd: &str, want: &str, code: i32) {
    let (out, got, took) = run(sim, cmd, DAY);
    assert_eq!((out.as_str(), got), (want, code), "{cmd}");
    assert!(took < Duration::from_secs(10), "{cmd} took {took:?}");
}

fn file_len(sim: &SimBackend, path: &str) -> Option<u64> {
    sim.world().machines[0].core.files.len(path)
}

#[test]
fn dd_block_sizes_out_of_range_are_refused_as_busybox_does() {
    let dir = util::tempdir();
    let mut sim = guest(dir.path());
    let range = "is not in 1..9223372036854775807 range";
    // Once a capacity-overflow panic in the sim.
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/null bs=18446744073709551615 count=1",
        &format!("dd: number 18446744073709551615 {range}\n"),
        1,
    );
    // Once a hang: busybox refuses 0 before opening anything.
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/null bs=0 count=1",
        &format!("dd: number 0 {range}\n"),
        1,
    );
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/null obs=0",
        &format!("dd: number 0 {range}\n"),
        1,
    );
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/null bs=99999999999999999999",
        "dd: invalid number '99999999999999999999'\n",
        1,
    );
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/null bs=1M seek=99999999999G",
        "dd: number 99999999999G is not in 0..18446744073709551615 range\n",
        1,
    );
}

/// Recorded in a `mem=64M` guest (MemTotal 53456 kB, MemAvailable ~37 MiB).
#[test]
fn dd_buffers_meet_the_guests_memory() {
    let dir = util::tempdir();
    let mut sim = guest(dir.path());
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/null bs=1G count=1",
        "dd: out of memory\n",
        1,
    );
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/null bs=53M count=2",
        "dd: out of memory\n",
        1,
    );
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/null bs=40M count=1",
        "Killed\n",
        137,
    );
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/null count=2 ibs=20M obs=30M",
        "Killed\n",
        137,
    );
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/null count=2 bs=35M",
        "2+0 records in\n2+0 records out\n",
        0,
    );
    // Arguments apply in order: bs= then obs=, or ibs= then bs=.
    answers(
        &mut sim,
        "dd if=/dev/zero of=/tmp/a bs=4k count=1 obs=1k",
        "1+0 records in\n4+0 records out\n",
        0,
    );
    answers(
        &mut sim,
        "dd if=/dev/zero of=/tmp/b ibs=1k bs=4k count=1",
        "1+0 records in\n1+0 records out\n",
        0,
    );
    assert_eq!(file_len(&sim, "/tmp/b"), Some(4096));
    answers(
        &mut sim,
        "dd if=/dev/zero of=/tmp/c bs=1M seek=100 count=0",
        "0+0 records in\n0+0 records out\n",
        0,
    );
    assert_eq!(file_len(&sim, "/tmp/c"), Some(104857600));
}

#[test]
fn dd_seek_far_makes_a_sparse_file_not_a_2_pib_allocation() {
    let dir = util::tempdir();
    let mut sim = guest(dir.path());
    // Once an abort on a 2 PB allocation.
    answers(
        &mut sim,
        "dd if=/dev/zero of=/tmp/f seek=2147483647 bs=1M count=1",
        "1+0 records in\n1+0 records out\n",
        0,
    );
    // `ls -l /tmp/f` in the guest: 2251799813685248.
    assert_eq!(file_len(&sim, "/tmp/f"), Some(2251799813685248));
    // The block would end past i64::MAX: EINVAL for the write.
    answers(
        &mut sim,
        "dd if=/dev/zero of=/tmp/z bs=1M count=2 seek=8796093022207",
        "dd: error writing '/tmp/z': Invalid argument\n1+0 records in\n0+0 records out\n",
        1,
    );
    // seek * obs wraps negative: ftruncate fails.
    answers(
        &mut sim,
        "dd if=/dev/zero of=/tmp/h bs=1M seek=18446744073709551615 count=1",
        "dd: /tmp/h: Invalid argument\n",
        1,
    );
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/ubdb seek=2147483647 bs=1M count=1",
        "dd: /dev/ubdb: Invalid argument\n",
        1,
    );
    answers(
        &mut sim,
        "dd if=/dev/zero of=/dev/null bs=1M seek=18446744073709551615 count=1",
        "1+0 records in\n1+0 records out\n",
        0,
    );
    answers(
        &mut sim,
        "dd if=/dev/ubdb of=/dev/null bs=1M skip=18446744073709551615 count=1",
        "0+0 records in\n0+0 records out\n",
        0,
    );
}

/// `/tmp` is a tmpfs of half MemTotal: 26728 kB in a `mem=64M` guest.
#[test]
fn writes_fill_the_guests_tmpfs_and_stop() {
    let dir = util::tempdir();
    let mut sim = guest(dir.path());
    answers(
        &mut sim,
        "dd if=/dev/zero of=/tmp/z bs=1M count=100",
        "dd: error writing '/tmp/z': No space left on device\n27+0 records in\n26+0 records out\n",
        1,
    );
    assert_eq!(file_len(&sim, "/tmp/z"), Some(27369472));
    answers(
        &mut sim,
        "echo hello >/tmp/y",
        "sh: write error: No space left on device\n",
        1,
    );
    answers(
        &mut sim,
        "cat /tmp/z > /tmp/w",
        "cat: write error: No space left on device\n",
        1,
    );
    // Once a 100 MB string: a full tmpfs takes nothing, printf says nothing.
    answers(&mut sim, "printf '%99999999d' 1 >/tmp/q", "", 1);
    assert_eq!(file_len(&sim, "/tmp/q"), Some(0));
}

#[test]
fn endless_commands_run_a_day_of_virtual_time_in_seconds() {
    let dir = util::tempdir();
    let mut sim = guest(dir.path());
    // busybox dd has no SIGINT handler: it dies without statistics.
    let cmd = "dd if=/dev/zero of=/dev/null count=18446744073709551615 bs=1 skip=1";
    let (out, code, took) = run(&mut sim, cmd, DAY);
    assert_eq!((out.as_str(), code), ("", 130), "{cmd}");
    assert!(took < Duration::from_secs(10), "{cmd} took {took:?}");
    let (out, code, took) = run(&mut sim, "sleep inf", DAY);
    assert_eq!((out.as_str(), code), ("", 130));
    assert!(took < Duration::from_secs(10), "sleep inf took {took:?}");
    let (out, code, _) = run(&mut sim, "sleep 18446744073709551615", DAY);
    assert_eq!((out.as_str(), code), ("", 130));
    // A day of arping at its default second: 86400 requests, one frame each.
    let (out, code, took) = run(
        &mut sim,
        "ip link set eth0 up; arping -i eth0 -S 10.0.0.1 10.0.0.9",
        DAY,
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("86400 packets transmitted, 0 packets received"),
        "{}",
        &out[out.len().saturating_sub(300)..]
    );
    assert!(
        took < Duration::from_secs(30),
        "a day of arping took {took:?}"
    );
}

#[test]
fn sleep_numbers_are_refused_as_busybox_does() {
    let dir = util::tempdir();
    let mut sim = guest(dir.path());
    answers(
        &mut sim,
        "sleep 99999999999999999999",
        "sleep: invalid number '99999999999999999999'\n",
        1,
    );
    answers(
        &mut sim,
        "sleep 1e300",
        "sleep: invalid number '1e300'\n",
        1,
    );
    answers(
        &mut sim,
        "sleep 999999999999999999d",
        "sleep: number 999999999999999999d is not in 0..18446744073709551615 range\n",
        1,
    );
    answers(&mut sim, "sleep 0.0000000001", "", 0);
    // Found by the fuzz below: the `inf` check cut a UTF-8 character.
    answers(&mut sim, "sleep 'é5'", "sleep: invalid number 'é5'\n", 1);
    answers(&mut sim, "sleep in", "sleep: invalid number 'in'\n", 1);
}

/// `printf 'a%.*fb\n' 99999999 1` in a `mem=64M` guest: glibc cannot get
/// the digit buffer, the directive prints nothing, status 1. It once made a
/// 1 GB console and a 1 GB `.snap.new`.
#[test]
fn printf_precision_past_memory_prints_nothing_for_the_directive() {
    let dir = util::tempdir();
    let mut sim = guest(dir.path());
    answers(&mut sim, "printf 'a%.*fb\\n' 99999999 1", "ab\n", 1);
    answers(&mut sim, "printf '%.*f' 999999999 1 >/dev/null", "", 1);
    answers(&mut sim, "printf '%.*e' 99999999 1 >/dev/null", "", 1);
    answers(&mut sim, "printf '%2147483648d' 1 >/dev/null", "", 1);
    answers(&mut sim, "printf '%2147483647d' 1 >/dev/null", "", 0);
    answers(&mut sim, "printf '%.*s' 99999999 abc", "abc", 0);
    // The applet is a process of its own: the OOM killer takes it.
    answers(
        &mut sim,
        "/usr/bin/printf '%.*f' 13000000 1",
        "Killed\n",
        137,
    );
    answers(
        &mut sim,
        "/usr/bin/printf 'a%.*fb\\n' 99999999 1",
        "ab\n",
        1,
    );
    answers(&mut sim, "printf '%.*f' 13700000 1 >/dev/null", "", 1);
    // The builtin runs in the shell, which is init: the guest panics.
    let err = sim
        .run("h1", "printf '%.*f' 13000000 1 >/dev/null", DAY)
        .expect_err("init runs out of memory");
    assert!(
        err.to_string()
            .contains("the kernel panicked while running \"printf '%.*f' 13000000 1 >/dev/null\": Kernel panic - not syncing: System is deadlocked on memory"),
        "{err}"
    );
}

/// A lab whose one step runs `command`, as a file in `dir`.
fn one_step_lab(dir: &Path, command: &str, timeout: &str) -> PathBuf {
    let path = dir.join("bomb.toml");
    let text = format!(
        "[scenario]\nname = \"bomb\"\nseed = 1\n\n[[switch]]\nname = \"sw1\"\n\n\
         [[disk]]\nname = \"fs.ext4\"\nsize = \"64M\"\nimage = \"default\"\n\n\
         [[machine]]\nname = \"h1\"\ncmdline = \"mem=64M ubd0=h1.cow,fs.ext4 root=/dev/ubda eth0=vde,sw1\"\n\n\
         [[machine]]\nname = \"h2\"\ncmdline = \"mem=64M ubd0=h2.cow,fs.ext4 root=/dev/ubda eth0=vde,sw1\"\n\n\
         [[step]]\nboot = [\"h1\", \"h2\"]\n\n\
         [[step]]\non = \"h1\"\nrun = '''{command}'''\ntimeout = \"{timeout}\"\n"
    );
    std::fs::write(&path, text).expect("write lab");
    path
}

/// Address space for a child umltest: what a run needs, far below the
/// gigabytes the bombs took.
const AS_LIMIT: libc::rlim_t = 1 << 30;

/// `umltest args` in `dir` with its address space limited to [`AS_LIMIT`].
fn umltest_limited(dir: &Path, args: &[&str]) -> util::Run {
    let mut cmd = Command::new(util::umltest_bin());
    cmd.args(args).current_dir(dir).env("CI", "true");
    // SAFETY: only setrlimit runs between fork and exec; it is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: AS_LIMIT,
                rlim_max: AS_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = cmd.output().expect("spawn umltest");
    util::Run {
        cmdline: format!("(ulimit -v 1048576; umltest {})", args.join(" ")),
        cwd: dir.to_path_buf(),
        output,
    }
}

/// `printf '%2147483647d' 1` writes 2 GiB to the console: the artifact keeps
/// 16 MiB and says how much it dropped; the run stays under 1 GiB of
/// address space.
#[test]
fn console_is_capped_at_16_mib_with_a_truncation_line() {
    if util::tool("mkfs.ext4", "e2fsprogs").is_none() {
        return;
    }
    let dir = util::tempdir();
    let lab = one_step_lab(dir.path(), "printf '%2147483647d' 1", "86400s");
    let t0 = Instant::now();
    let run = umltest_limited(
        dir.path(),
        &["run", "--out", "out", lab.to_str().expect("utf-8 path")],
    );
    let took = t0.elapsed();
    // No snapshot exists: the run fails, and keeps its folder.
    run.expect_code(100);
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}\n{}",
        run.dump()
    );
    let console =
        std::fs::read_to_string(dir.path().join("out/bomb/h1.console")).expect("console artifact");
    let (kept, last) = console
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .expect("lines");
    let dropped: u64 = last
        .strip_prefix("[umltest: console truncated: ")
        .and_then(|s| s.strip_suffix(" more bytes]"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("last line: {last:?}"));
    let spaces = kept.rsplit('\n').next().unwrap_or("").len() as u64;
    // The output is 2147483646 spaces and a `1`: all that was not kept was
    // dropped, and the halt line the end of the lab adds.
    assert_eq!(
        dropped,
        2147483647 - spaces + "reboot: System halted\n".len() as u64
    );
    assert!(
        console.len() <= CONSOLE_CAP + 200,
        "{} bytes",
        console.len()
    );
    // CI=true: no .snap.new of any size.
    assert!(!dir
        .path()
        .join("snapshots/bomb/h1.console.snap.new")
        .exists());
}

/// `arping -W 0.000001` sends a million frames a virtual second: the lab
/// stops at its event budget with a clear error instead of running for
/// hours and filling gigabytes of trace.
#[test]
fn a_frame_flood_stops_at_the_event_budget() {
    let dir = util::tempdir();
    let mut sim = guest(dir.path());
    let t0 = Instant::now();
    let err = sim
        .run(
            "h1",
            "ip link set eth0 up; arping -i eth0 -S 10.0.0.1 -W 0.000001 10.0.0.9",
            Duration::from_secs(3600),
        )
        .expect_err("the flood must be refused");
    let took = t0.elapsed();
    let msg = err.to_string();
    assert!(
        msg.contains("machine h1: the sim stopped at ")
            && msg.contains("the lab used up its 1000000 events"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// Words a fuzzed command line is made of: applets, their options, numbers
/// at the edges of every type, shell syntax.
const WORDS: &[&str] = &[
    "dd",
    "printf",
    "sleep",
    "arping",
    "tcpdump",
    "echo",
    "cat",
    "ip",
    "arp",
    "sysctl",
    "ifconfig",
    "lsblk",
    "blkid",
    "sync",
    "mount",
    "true",
    "false",
    "/bin/printf",
    "if=/dev/zero",
    "if=/dev/urandom",
    "if=/dev/ubdb",
    "of=/dev/null",
    "of=/tmp/f",
    "of=/dev/ubdb",
    "bs=",
    "ibs=",
    "obs=",
    "count=",
    "seek=",
    "skip=",
    "conv=notrunc",
    "conv=sync",
    "status=none",
    "-c",
    "-w",
    "-W",
    "-i",
    "eth0",
    "-S",
    "10.0.0.1",
    "10.0.0.9",
    "-0",
    "-b",
    "-D",
    "-U",
    "-C",
    "0",
    "1",
    "-1",
    "0.000001",
    "1e300",
    "inf",
    "nan",
    "2147483647",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "99999999999999999999",
    "1M",
    "1G",
    "99999999999G",
    "%d",
    "%s",
    "%.*f",
    "%*d",
    "%b",
    "%2147483647d",
    "%.2147483647d",
    "'%.*e'",
    "\\c",
    "link",
    "set",
    "up",
    "down",
    "neigh",
    "flush",
    "addr",
    "add",
    "dev",
    "-w",
    "net.ipv4.neigh.eth0.locktime=99999999999",
    "net.ipv4.neigh.eth0.retrans_time_ms=0",
    "net.ipv4.neigh.eth0.base_reachable_time_ms=0",
    "/proc/meminfo",
    "/tmp/f",
    ">/tmp/f",
    ">>/tmp/f",
    "2>&1",
    ">/dev/null",
    ";",
    "&&",
    "||",
    "$?",
    "'",
    "\"",
    "\\",
    "#",
];

/// The programs a command starts with (most fuzzed lines run one).
const APPLETS: &[&str] = &[
    "dd",
    "printf",
    "/usr/bin/printf",
    "sleep",
    "arping",
    "tcpdump",
    "echo",
    "cat",
    "ip",
    "arp",
    "sysctl",
    "ifconfig",
    "lsblk",
    "blkid",
    "mount",
];

fn command() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        8 => proptest::sample::select(WORDS).prop_map(str::to_string),
        2 => (proptest::sample::select(WORDS), proptest::sample::select(WORDS))
            .prop_map(|(a, b)| format!("{a}{b}")),
        1 => proptest::collection::vec(any::<u8>(), 0..8)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    let first = prop_oneof![
        4 => proptest::sample::select(APPLETS).prop_map(str::to_string),
        1 => proptest::sample::select(WORDS).prop_map(str::to_string),
    ];
    (first, proptest::collection::vec(word, 0..10))
        .prop_map(|(f, w)| format!("{f} {}", w.join(" ")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random command lines through the sim's shell and applets, each with
    /// a day's timeout: no panic, an answer within seconds, the console
    /// within its cap.
    #[test]
    fn random_commands_never_panic_and_finish(commands in proptest::collection::vec(command(), 1..4)) {
        let dir = util::tempdir();
        let mut sim = guest(dir.path());
        for cmd in &commands {
            let t0 = Instant::now();
            let v0 = sim.world().now;
            // An error is a clean refusal (the event budget, a guest panic);
            // a panic of the sim fails the case.
            let result = sim.run("h1", cmd, DAY);
            let took = t0.elapsed();
            prop_assert!(took < Duration::from_secs(30), "{cmd:?} took {took:?}");
            prop_assert!(sim.world().now - v0 <= DAY, "{cmd:?} ran past its timeout");
            if let Ok(out) = result {
                prop_assert!(out.output.len() <= CONSOLE_CAP + 100);
            }
            let console = &sim.world().machines[0].core.console;
            prop_assert!(console.len() <= CONSOLE_CAP);
        }
    }
}

/// A console filled to its cap stays cheap to watch: `wait_console` for text
/// that never comes, during a day of arping, once scanned 16 MiB per event.
#[test]
fn waiting_on_a_full_console_is_not_rescanned_per_event() {
    let dir = util::tempdir();
    let mut sim = guest(dir.path());
    let (_, code, _) = run(&mut sim, "printf '%2147483647d' 1", DAY);
    assert_eq!(code, 0);
    sim.spawn(
        "h1",
        "ip link set eth0 up; arping -i eth0 -S 10.0.0.1 10.0.0.9",
    )
    .expect("background arping");
    let t0 = Instant::now();
    let seen = sim
        .wait_console("h1", "never printed", DAY)
        .expect("wait_console");
    assert!(!seen);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// The `uml` backend's console reader, with a stand-in for linux.uml: busybox
/// `sh` printing 20 MB of boot noise, the harness shell's readiness line,
/// then running the protocol's commands as the guest's ash does. The
/// transcript keeps 16 MiB, the markers still end each command, and the
/// command's 30 MB of output come back as the truncation line.
#[test]
fn uml_console_reader_keeps_16_mib_and_still_ends_commands() {
    use umltest::uml::machine::{Machine, MachineConfig};
    let Some(busybox) = util::tool("busybox", "busybox-static") else {
        return;
    };
    let dir = util::tempdir();
    let script = format!(
        "head -c 20000000 /dev/zero | tr '\\0' b; echo; echo {}; exec sh",
        umltest::uml::image::SHELL_READY
    );
    let config = MachineConfig {
        name: "h1".into(),
        linux: busybox,
        cwd: dir.path().to_path_buf(),
        argv: vec!["sh".into(), "-c".into(), script],
        sandbox: None,
        tmpdir: None,
    };
    let t0 = Instant::now();
    let mut m = Machine::start(&config).expect("start the stand-in");
    m.wait_ready(Duration::from_secs(60))
        .expect("ready line past the cap");
    let out = m
        .run(
            "head -c 30000000 /dev/zero | tr '\\0' x; echo done",
            Duration::from_secs(60),
        )
        .expect("the command ends past the cap");
    assert_eq!(out.exit_code, 0);
    assert!(!out.interrupted);
    // 30000000 x, "done\n", and the end marker's own newline.
    assert_eq!(
        out.output,
        "[umltest: console truncated: 30000006 more bytes]\n"
    );
    let after = m
        .run("echo after", Duration::from_secs(60))
        .expect("next command");
    assert_eq!(after.exit_code, 0);
    let transcript = m.console_bytes();
    assert!(
        transcript.len() <= CONSOLE_CAP + 4096,
        "{} bytes kept",
        transcript.len()
    );
    m.kill();
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
}

/// Sizes a lab takes from the host are bounded at check time: `mem=` (the real
/// kernel maps that much in /dev/shm) and `mkfs = "ext4"` disks (mkfs writes
/// every inode table: a 10T disk wrote gigabytes into the cache).
#[test]
fn host_sized_requests_are_refused_at_check_time_with_a_caret() {
    for (disk, cmdline, message, shown) in [
        (
            "size = \"10T\"\nmkfs = \"ext4\"",
            "mem=64M ubd0=d.img",
            "an ext4 disk is at most 64 GiB",
            "\"10T\"",
        ),
        (
            "size = \"8M\"",
            "ubd0=d.img mem=64M mem=5G",
            "a machine has at most 4 GiB of memory",
            "mem=5G",
        ),
    ] {
        let d = util::tempdir();
        let lab = format!(
            "[scenario]\nname = \"big\"\n\n[[disk]]\nname = \"d.img\"\n{disk}\n\n[[machine]]\nname = \"h1\"\ncmdline = \"{cmdline}\"\n\n[[step]]\nboot = [\"h1\"]\n"
        );
        std::fs::write(d.path().join("big.toml"), lab).expect("write");
        for cmd in ["check", "run"] {
            let r = util::umltest(d.path(), &[cmd, "big.toml"]);
            r.expect_code(2);
            let err = r.stderr();
            assert!(err.contains(message), "{}", r.dump());
            let caret_line = err
                .lines()
                .skip_while(|l| !l.contains(shown))
                .nth(1)
                .unwrap_or_default();
            let col = err
                .lines()
                .find(|l| l.contains(shown))
                .and_then(|l| l.find(shown))
                .expect("the word is shown");
            assert_eq!(
                caret_line.find('^'),
                Some(col),
                "caret under `{shown}`: {}",
                r.dump()
            );
            assert_eq!(caret_line.matches('^').count(), shown.len(), "{}", r.dump());
        }
        assert!(!d.path().join("big").exists(), "nothing was made");
    }
}
