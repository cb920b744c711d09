//! `umltest bench switch`: `umltest switch` against the real vde_switch, driven by
//! the same ctl-protocol client (see `net::vde::bench`), reported as ratios.

use std::process::ExitCode;

use anyhow::Context;

use crate::net::vde::bench::{median, run_once, Contender, RunResult};

/// `umltest bench switch` options.
#[derive(Debug, clap::Args)]
pub struct SwitchBenchArgs {
    /// Runs per switch and configuration (alternating between the switches).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Seconds of traffic per run.
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Frame sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 1514])]
    pub sizes: Vec<usize>,
    /// Numbers of ports (clients, paired sender -> receiver).
    #[arg(long, value_delimiter = ',', default_values_t = [2usize, 16])]
    pub ports: Vec<usize>,
    /// The reference switch.
    #[arg(long, default_value = "vde_switch")]
    pub vde_switch: String,
    /// Folder for the switch directories and the `--pcap` file, like `umltest
    /// run --out` (default: a fresh folder in the system temp dir, as `umltest
    /// run` uses for its run folders; removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
}

/// What kind of filesystem holds `dir`, for the report (a pcap on tmpfs only
/// costs memory copies; on a disk-backed one it also costs page-cache
/// allocation and writeback).
fn fs_kind(dir: &std::path::Path) -> String {
    use nix::sys::statfs::{statfs, TMPFS_MAGIC};
    match statfs(dir) {
        Ok(s) if s.filesystem_type() == TMPFS_MAGIC => "tmpfs".into(),
        Ok(s) => format!("disk-backed, statfs type {:#x}", s.filesystem_type().0),
        Err(e) => format!("unknown: {e}"),
    }
}

/// Runs `umltest bench switch`.
pub fn run(args: SwitchBenchArgs) -> anyhow::Result<ExitCode> {
    let vde = crate::uml::guest::find_program(&args.vde_switch).with_context(|| {
        format!(
            "{} not found (install it with: apt-get install -y vde2)",
            args.vde_switch
        )
    })?;
    let me = std::env::current_exe().context("locating the umltest binary")?;
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; run `cargo run --release -- bench switch` for real numbers");
    }
    let contenders = [
        Contender {
            label: "vde_switch".into(),
            program: vde,
            args: vec![],
            pcap: false,
        },
        Contender {
            label: "umltest".into(),
            program: me.clone(),
            args: vec!["switch".into()],
            pcap: false,
        },
        Contender {
            label: "umltest --pcap".into(),
            program: me,
            args: vec!["switch".into()],
            pcap: true,
        },
    ];
    let work = match &args.out {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            tempfile::Builder::new()
                .prefix("bench-switch")
                .tempdir_in(d)
        }
        None => tempfile::Builder::new().prefix("umltest-").tempdir(),
    }
    .context("creating the bench folder")?;
    println!(
        "--pcap writes {} ({})",
        work.path().join("sw.pcap").display(),
        fs_kind(work.path())
    );
    println!(
        "{:>5} {:>5}  {:<16} {:>12} {:>8} {:>7}   ({} alternating runs of {} s, medians)",
        "frame", "ports", "switch", "frames/s", "loss", "ratio", args.runs, args.seconds
    );
    for &size in &args.sizes {
        for &ports in &args.ports {
            let ports = ports.max(2);
            let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); contenders.len()];
            for _ in 0..args.runs {
                for (i, c) in contenders.iter().enumerate() {
                    results[i].push(run_once(c, work.path(), ports, size, args.seconds)?);
                }
            }
            let fps: Vec<f64> = results
                .iter()
                .map(|r| median(&r.iter().map(RunResult::frames_per_sec).collect::<Vec<_>>()))
                .collect();
            for (i, c) in contenders.iter().enumerate() {
                let loss = median(&results[i].iter().map(RunResult::loss).collect::<Vec<_>>());
                println!(
                    "{size:>5} {ports:>5}  {:<16} {:>12.0} {:>7.2}% {:>6.2}x",
                    c.label,
                    fps[i],
                    loss * 100.0,
                    fps[i] / fps[0].max(1e-9)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
