//! `umltest bench uml`: harness overhead of the `uml` backend. Side by side in one
//! run, alternating: `scenarios/arping.toml` on the uml backend (the engine in this
//! process: disks, switch, parallel boots, console protocol, halts, artifacts)
//! versus the same two `linux.uml` boots started by hand: the same image, COW
//! disks, command lines and in-process switch, each machine's commands piped to
//! its console shell at once as a script (`timeout -s INT` where the lab has a
//! step timeout, the lab's own sleeps and wait timeouts, `sleep`s on h2 where the
//! lab orders it after h1's steps), ending in `poweroff -f`; both machines start
//! together. Reported: medians and the ratio harness/by hand, with the host's
//! load average (`/proc/loadavg`) before and after, since the host is shared.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::net::vde::daemon::{Daemon, DaemonConfig, LogTarget};
use crate::scenario::{engine, resolve};
use crate::uml::args::effective_argv;
use crate::uml::guest::find_program;
use crate::uml::image::{self, ImageSpec};

#[derive(Debug, Args)]
pub struct BenchUmlArgs {
    /// Timed runs per side (alternating); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The scenario (default scenarios/arping.toml).
    #[arg(long, default_value = "scenarios/arping.toml")]
    scenario: PathBuf,
}

/// h1's part of the arping lab, as a script: the same commands with the same
/// timeouts, and the lab's waits where h1 has to wait (the 1 s `sleep` step after
/// the capture starts, the 1 s `wait_job` timeout before the halt). The full
/// path under `timeout`, which would otherwise exec busybox's own applet.
const H1_SCRIPT: &str = "arping -0 -B -i eth0 -c 1
ip link set eth0 up
sleep 1
timeout -s INT 3.8 /usr/sbin/arping -0 -B -i eth0
arping -0 -i eth0 -c 2 1.1.1.1
arping -0 -i eth0 -c 2 1.1.1.1
arping -0i eth0 -c1 1.1.1.1
sleep 1
sync
poweroff -f
";

/// h2's part: up, the capture in the background, the address once h1's first
/// `-c 2` probe is over (1 s + 3.8 s + 2 s after the capture starts), the capture
/// stopped after h1's last probe and the lab's 1 s `wait_job` timeout (2 s + 1 s
/// + 1 s later). By hand, fixed sleeps stand in for the harness's ordering.
const H2_SCRIPT: &str = "ip link set eth0 up
tcpdump -i eth0 -n -e arp >/tmp/capture 2>&1 &
sleep 6.9
ip addr add 1.1.1.1/24 dev eth0
sleep 4.1
kill -INT %1
ip neigh
sync
poweroff -f
";

pub fn run(args: BenchUmlArgs) -> anyhow::Result<ExitCode> {
    let linux = find_program("linux.uml")
        .context("linux.uml not found (apt-get install -y user-mode-linux)")?;
    let plan = resolve::load(&args.scenario).map_err(|d| anyhow::anyhow!("{d}"))?;
    let work = tempfile::Builder::new().prefix("ub").tempdir_in("/tmp")?;
    let mut spec = ImageSpec::default_with(&[]);
    spec.size = 64 << 20;
    let base = work.path().join("base.ext4");
    image::build(&spec, &base)?;
    let mut harness = Vec::new();
    let mut by_hand = Vec::new();
    let load_before = loadavg();
    for i in 0..args.runs.max(1) {
        // Alternate which side goes first, so a change in the host's load
        // weighs on both.
        let run_harness = |harness: &mut Vec<Duration>| -> anyhow::Result<()> {
            let dir = work.path().join(format!("h{i}"));
            let started = Instant::now();
            let mut backend = crate::uml::backend::UmlBackend::new();
            let result = engine::run(&plan, &mut backend, &dir, plan.seed)?;
            drop(backend);
            harness.push(started.elapsed());
            if let Some(f) = result.failures.first() {
                eprintln!("umltest: warning: harness run {i}: {f}");
            }
            Ok(())
        };
        let dir = work.path().join(format!("r{i}"));
        if i % 2 == 0 {
            run_harness(&mut harness)?;
            by_hand.push(hand_run(&linux, &base, &dir)?);
        } else {
            by_hand.push(hand_run(&linux, &base, &dir)?);
            run_harness(&mut harness)?;
        }
        eprintln!(
            "run {}: harness {:.2}s, by hand {:.2}s",
            i + 1,
            harness[i].as_secs_f64(),
            by_hand[i].as_secs_f64()
        );
    }
    let (h, r) = (median(harness), median(by_hand));
    println!(
        "arping lab, two machines, median of {} runs (load average before: {load_before}, after: {}):",
        args.runs.max(1),
        loadavg()
    );
    println!("  umltest run --backend uml   {:.2}s", h.as_secs_f64());
    println!("  linux.uml by hand (script)  {:.2}s", r.as_secs_f64());
    println!(
        "  ratio harness/by hand       {:.3}",
        h.as_secs_f64() / r.as_secs_f64().max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// The host's 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Two machines on a switch, started by hand with their scripts; wall time from
/// the first start to the last exit (image copy and switch start included, as the
/// harness side includes them).
fn hand_run(linux: &Path, base: &Path, dir: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    std::fs::create_dir_all(dir)?;
    // As the harness does: the cached image, copied hole for hole.
    let _ = base;
    let mut spec = ImageSpec::default_with(&[]);
    spec.size = 64 << 20;
    image::build(&spec, &dir.join("fs.ext4")).context("root image")?;
    let daemon = Daemon::bind(
        {
            let mut c = DaemonConfig::new(dir.join("sw1"));
            c.rcfile = Some(PathBuf::from("/dev/null"));
            c.mgmt = Some(dir.join("sw1.mgmt"));
            c
        },
        LogTarget::Stderr,
    )?;
    let switch = std::thread::spawn(move || daemon.run());
    let mut children = Vec::new();
    for (idx, (name, script)) in [("h1", H1_SCRIPT), ("h2", H2_SCRIPT)].iter().enumerate() {
        let argv = effective_argv(
            &[
                "mem=64M".into(),
                format!("ubd0={name}.cow,fs.ext4"),
                "root=/dev/ubda".into(),
                "eth0=vde,sw1".into(),
            ],
            name,
            idx,
        );
        let mut child = Command::new("setarch")
            .arg(std::env::consts::ARCH)
            .arg("-R")
            .arg(linux)
            .args(&argv)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {name}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes())?;
            // Kept open: EOF on the console would end the shell (and init) early.
            children.push((child, Some(stdin)));
        } else {
            children.push((child, None));
        }
    }
    for (child, stdin) in &mut children {
        let status = child.wait()?;
        drop(stdin.take());
        if !status.success() {
            bail!("a hand-started linux.uml exited with {status}");
        }
    }
    let took = started.elapsed();
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(dir.join("sw1.mgmt")) {
        let _ = s.write_all(b"shutdown\n");
    }
    let _ = switch.join();
    Ok(took)
}
