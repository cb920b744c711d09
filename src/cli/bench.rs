//! `umltest bench ...`: side-by-side benchmarks against the reference tools,
//! reported as ratios from one run (never timed unit tests).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::cow::{self, CowFile, CreateOptions};
use crate::uml::guest::find_program;

/// Benchmarks against the reference tools.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// COW merge: uml_moo vs `umltest cow merge` (new image and -d), with
    /// `cp --sparse=always` of the merged image as the floor.
    Cow(BenchCowArgs),
    /// Scenario runs on the sim, end to end (see `bench_sim`).
    Sim(super::bench_sim::BenchSimArgs),
    /// VDE switch: vde_switch vs `umltest switch` (and with --pcap): frames/s, loss, ratios.
    Switch(super::bench_switch::SwitchBenchArgs),
    /// Harness overhead of the uml backend: the arping lab vs the same boots by hand.
    Uml(super::bench_uml::BenchUmlArgs),
}

#[derive(Debug, Args)]
pub struct BenchCowArgs {
    /// Size of the sparse ext4 backing image in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Percentages of 4 KiB blocks to dirty, one COW file each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    percent: Vec<u32>,
    /// Timed runs per tool and case (alternating tools); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Work directory (needs about size × (1 + 3 × max percent) of free space).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs `umltest bench ...`.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::Cow(a) => bench_cow(a),
        BenchCommand::Sim(a) => super::bench_sim::run(a),
        BenchCommand::Switch(a) => super::bench_switch::run(a),
        BenchCommand::Uml(a) => super::bench_uml::run(a),
    }
}

fn tool(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    find_program(name).with_context(|| format!("{name} not found (apt-get install -y {package})"))
}

struct Timed {
    wall: Duration,
    /// Peak RSS of the child in KiB (from wait4's rusage).
    maxrss_kib: i64,
}

/// Runs a command, returning its wall time and peak RSS.
fn timed(cmd: &mut Command) -> anyhow::Result<Timed> {
    let start = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; pointers are to live locals.
    let r = unsafe { libc::wait4(pid.as_raw(), &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if r < 0 {
        bail!("wait4 {cmd:?}: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed with status {status:#x}");
    }
    Ok(Timed {
        wall,
        maxrss_kib: usage.ru_maxrss,
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn same_content(a: &Path, b: &Path) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut fa = std::fs::File::open(a)?;
    let mut fb = std::fs::File::open(b)?;
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn set_mtime(path: &Path, mtime: std::time::SystemTime) -> anyhow::Result<()> {
    let f = std::fs::File::options().write(true).open(path)?;
    f.set_times(std::fs::FileTimes::new().set_modified(mtime))?;
    Ok(())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn bench_cow(a: BenchCowArgs) -> anyhow::Result<ExitCode> {
    let moo = tool("uml_moo", "uml-utilities")?;
    let mkfs = tool("mkfs.ext4", "e2fsprogs")?;
    let cp = tool("cp", "coreutils")?;
    let me = std::env::current_exe().context("locate the umltest binary")?;
    let work = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::Builder::new().prefix("bench-cow").tempdir_in(d)?
        }
        None => tempfile::Builder::new().prefix("bench-cow").tempdir()?,
    };
    let dir = work.path();
    let base = dir.join("base.ext4");
    let size = a.size_mib << 20;
    println!(
        "umltest bench cow: {} MiB sparse ext4 image, {} timed runs each (median), tools alternating",
        a.size_mib, a.runs
    );
    let out = Command::new(&mkfs)
        .args(["-q", "-F", "-E", "root_owner=0:0"])
        .arg(&base)
        .arg(format!("{}k", size / 1024))
        .output()?;
    if !out.status.success() {
        bail!("mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    }
    let base_mtime = std::fs::metadata(&base)?.modified()?;
    let blocks = size / 4096;
    let mut all_ok = true;
    println!(
        "{:>5} | {:>9} {:>9} {:>9} {:>7} {:>7} | {:>9} {:>9} {:>7} | {:>10} | bytes, allocation",
        "dirty",
        "uml_moo",
        "ours",
        "cp floor",
        "/moo",
        "/cp",
        "moo -d",
        "ours -d",
        "/moo",
        "peak RSS"
    );
    for &pct in &a.percent {
        let cow_path = dir.join(format!("d{pct}.cow"));
        cow::create(&cow_path, &base, &CreateOptions::default())?;
        {
            // Dirty pct% of the 4 KiB blocks, chosen by a seeded RNG, with
            // non-zero pseudo-random data.
            let mut f = CowFile::open(&cow_path, None, true)?;
            let mut rng = ChaCha8Rng::seed_from_u64(u64::from(pct));
            let mut buf = vec![0u8; 4096];
            let want = blocks * u64::from(pct) / 100;
            let mut chosen = std::collections::BTreeSet::new();
            while (chosen.len() as u64) < want {
                chosen.insert(rng.next_u64() % blocks);
            }
            for b in chosen {
                rng.fill_bytes(&mut buf);
                f.write_at(&buf, b * 4096)?;
            }
            f.flush()?;
        }
        let moo_out = dir.join("moo.img");
        let ours_out = dir.join("ours.img");
        let cp_out = dir.join("cp.img");
        let (mut t_moo, mut t_ours, mut t_cp) = (vec![], vec![], vec![]);
        let (mut t_moo_d, mut t_ours_d) = (vec![], vec![]);
        let mut peak = 0i64;
        let back_moo = dir.join("back-moo.ext4");
        let back_ours = dir.join("back-ours.ext4");
        // One warm-up round (page cache), then the timed ones.
        for round in 0..=a.runs {
            for p in [&moo_out, &ours_out, &cp_out] {
                let _ = std::fs::remove_file(p);
            }
            let order_moo_first = round % 2 == 0;
            let run_moo = || timed(Command::new(&moo).arg(&cow_path).arg(&moo_out));
            let run_ours = || {
                timed(
                    Command::new(&me)
                        .args(["cow", "merge"])
                        .arg(&cow_path)
                        .arg(&ours_out),
                )
            };
            let (m, o) = if order_moo_first {
                let m = run_moo()?;
                (m, run_ours()?)
            } else {
                let o = run_ours()?;
                (run_moo()?, o)
            };
            let c = timed(
                Command::new(&cp)
                    .arg("--sparse=always")
                    .arg(&ours_out)
                    .arg(&cp_out),
            )?;
            // In place: fresh sparse copies of the backing, same mtime.
            for b in [&back_moo, &back_ours] {
                let _ = std::fs::remove_file(b);
                let st = Command::new(&cp)
                    .arg("--sparse=always")
                    .arg(&base)
                    .arg(b)
                    .status()?;
                if !st.success() {
                    bail!("cp {} failed", base.display());
                }
                set_mtime(b, base_mtime)?;
            }
            let run_moo_d = || {
                timed(
                    Command::new(&moo)
                        .args(["-d", "-b"])
                        .arg(&back_moo)
                        .arg(&cow_path),
                )
            };
            let run_ours_d = || {
                timed(
                    Command::new(&me)
                        .args(["cow", "merge", "-d", "-b"])
                        .arg(&back_ours)
                        .arg(&cow_path),
                )
            };
            let (md, od) = if order_moo_first {
                let md = run_moo_d()?;
                (md, run_ours_d()?)
            } else {
                let od = run_ours_d()?;
                (run_moo_d()?, od)
            };
            if round > 0 {
                t_moo.push(m.wall);
                t_ours.push(o.wall);
                t_cp.push(c.wall);
                t_moo_d.push(md.wall);
                t_ours_d.push(od.wall);
            }
            peak = peak.max(o.maxrss_kib).max(od.maxrss_kib);
        }
        let same = same_content(&ours_out, &moo_out)? && same_content(&back_ours, &back_moo)?;
        // Allocation is compared once both files are on disk: before writeback,
        // st_blocks includes ext4's delayed-allocation estimate, which differs
        // between the two writers by tens of blocks.
        for p in [&ours_out, &moo_out] {
            std::fs::File::open(p)?.sync_all()?;
        }
        let alloc_ours = std::fs::metadata(&ours_out)?.blocks();
        let alloc_moo = std::fs::metadata(&moo_out)?.blocks();
        let alloc_ok = alloc_ours <= alloc_moo;
        let (tm, to, tc) = (median(t_moo), median(t_ours), median(t_cp));
        let (tmd, tod) = (median(t_moo_d), median(t_ours_d));
        println!(
            "{:>4}% | {:>8.3}s {:>8.3}s {:>8.3}s {:>6.2}x {:>6.2}x | {:>8.3}s {:>8.3}s {:>6.2}x | {:>7} KiB | {}, {} vs {} KiB",
            pct,
            secs(tm),
            secs(to),
            secs(tc),
            secs(to) / secs(tm),
            secs(to) / secs(tc),
            secs(tmd),
            secs(tod),
            secs(tod) / secs(tmd),
            peak,
            if same { "same bytes" } else { "DIFFERENT BYTES" },
            alloc_ours / 2,
            alloc_moo / 2,
        );
        all_ok &= same && alloc_ok && peak < 64 * 1024;
        let _ = std::fs::remove_file(&cow_path);
    }
    println!("targets: new image <= 0.25x uml_moo and <= 1.5x the cp floor; -d <= 0.5x uml_moo; same bytes; allocation no larger; peak RSS < 64 MiB");
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
