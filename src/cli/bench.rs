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
    /// Size of the sparse ext4 backing image (`1G`, `512M`, `16G`; a multiple of 4 KiB).
    #[arg(long, default_value = "1G", value_parser = bench_size)]
    size: u64,
    /// Percentages of 4 KiB blocks to dirty, one COW file each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    percent: Vec<u32>,
    /// Timed runs per tool, case and cache state (alternating tools); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Page cache states to time: `warm` (after a warm-up round), `cold`
    /// (`sync` and `echo 3 > /proc/sys/vm/drop_caches` before each timed
    /// command: needs root), or both.
    #[arg(long, value_enum, default_value = "both")]
    cache: CacheArg,
    /// Work directory (needs about size × (1 + 3 × max percent) of free space).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CacheArg {
    Warm,
    Cold,
    Both,
}

fn bench_size(text: &str) -> Result<u64, String> {
    let n = crate::scenario::units::parse_size(text)?;
    if n == 0 || n % 4096 != 0 {
        return Err(format!(
            "{text}: the image size must be a non-zero multiple of 4 KiB"
        ));
    }
    Ok(n)
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

const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// Writes back dirty pages and empties the page cache (and dentries and
/// inodes), so the next command reads everything from the disk.
fn drop_caches() -> anyhow::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write(DROP_CACHES, "3").with_context(|| format!("write 3 to {DROP_CACHES}"))
}

/// Runs a command, returning its wall time and peak RSS; `cold`: with the
/// page cache emptied just before.
fn timed(cold: bool, cmd: &mut Command) -> anyhow::Result<Timed> {
    if cold {
        drop_caches()?;
    }
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

/// Median wall times of one case in one cache state.
struct Row {
    moo: Duration,
    ours: Duration,
    cp: Duration,
    moo_d: Duration,
    ours_d: Duration,
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
    let size = a.size;
    let mut states = Vec::new();
    if a.cache != CacheArg::Cold {
        states.push(false);
    }
    if a.cache != CacheArg::Warm {
        // Only root may drop the page cache: say so instead of timing a warm
        // cache and calling it cold.
        match std::fs::OpenOptions::new().write(true).open(DROP_CACHES) {
            Ok(_) => states.push(true),
            Err(e) => println!(
                "cold cache: not measured: cannot write {DROP_CACHES} ({e}); run as root to drop the page cache before each command"
            ),
        }
    }
    println!(
        "umltest bench cow: {} MiB sparse ext4 image, {} timed runs each (median), tools alternating; warm: after a warm-up round; cold: sync and drop_caches before each timed command",
        size >> 20,
        a.runs
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
        "{:>5} {:>5} | {:>9} {:>9} {:>9} {:>7} {:>7} | {:>9} {:>9} {:>7} | {:>10} | bytes, allocation",
        "dirty",
        "cache",
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
    let moo_out = dir.join("moo.img");
    let ours_out = dir.join("ours.img");
    let cp_out = dir.join("cp.img");
    let back_moo = dir.join("back-moo.ext4");
    let back_ours = dir.join("back-ours.ext4");
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
        for &cold in &states {
            let mut t: [Vec<Duration>; 5] = Default::default();
            let mut peak = 0i64;
            // Warm: one warm-up round (page cache), then the timed ones.
            let first = usize::from(!cold);
            for round in 0..a.runs + first {
                for p in [&moo_out, &ours_out, &cp_out] {
                    let _ = std::fs::remove_file(p);
                }
                let order_moo_first = round % 2 == 0;
                let run_moo = || timed(cold, Command::new(&moo).arg(&cow_path).arg(&moo_out));
                let run_ours = || {
                    timed(
                        cold,
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
                    cold,
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
                        cold,
                        Command::new(&moo)
                            .args(["-d", "-b"])
                            .arg(&back_moo)
                            .arg(&cow_path),
                    )
                };
                let run_ours_d = || {
                    timed(
                        cold,
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
                if round >= first {
                    for (v, x) in t.iter_mut().zip([&m, &o, &c, &md, &od]) {
                        v.push(x.wall);
                    }
                }
                peak = peak.max(o.maxrss_kib).max(od.maxrss_kib);
            }
            let same = same_content(&ours_out, &moo_out)? && same_content(&back_ours, &back_moo)?;
            // Allocation is compared once both files are on disk: before writeback,
            // st_blocks includes ext4's delayed-allocation estimate, which differs
            // between the two writers by tens of blocks.
            for p in [&ours_out, &moo_out, &back_ours, &back_moo] {
                std::fs::File::open(p)?.sync_all()?;
            }
            let blocks_of = |p: &Path| std::fs::metadata(p).map(|m| m.blocks());
            let (alloc_ours, alloc_moo) = (blocks_of(&ours_out)?, blocks_of(&moo_out)?);
            let (alloc_ours_d, alloc_moo_d) = (blocks_of(&back_ours)?, blocks_of(&back_moo)?);
            let alloc_ok = alloc_ours <= alloc_moo && alloc_ours_d <= alloc_moo_d;
            let [tm, to, tc, tmd, tod] = t.map(median);
            let r = Row {
                moo: tm,
                ours: to,
                cp: tc,
                moo_d: tmd,
                ours_d: tod,
            };
            println!(
                "{:>4}% {:>5} | {:>8.3}s {:>8.3}s {:>8.3}s {:>6.2}x {:>6.2}x | {:>8.3}s {:>8.3}s {:>6.2}x | {:>7} KiB | {}, {} vs {} KiB, -d {} vs {} KiB",
                pct,
                if cold { "cold" } else { "warm" },
                secs(r.moo),
                secs(r.ours),
                secs(r.cp),
                secs(r.ours) / secs(r.moo),
                secs(r.ours) / secs(r.cp),
                secs(r.moo_d),
                secs(r.ours_d),
                secs(r.ours_d) / secs(r.moo_d),
                peak,
                if same { "same bytes" } else { "DIFFERENT BYTES" },
                alloc_ours / 2,
                alloc_moo / 2,
                alloc_ours_d / 2,
                alloc_moo_d / 2,
            );
            all_ok &= same && alloc_ok && peak < 64 * 1024;
        }
        let _ = std::fs::remove_file(&cow_path);
    }
    println!("targets: new image <= 0.25x uml_moo and <= 1.5x the cp floor; -d <= 0.5x uml_moo; same bytes; allocation no larger; peak RSS < 64 MiB");
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
