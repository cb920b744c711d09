//! `umltest image build`: the root image of the `uml` backend.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::uml::image::{self, ImageSpec};

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a reproducible, sparse ext4 root image: busybox-static, the guest
    /// programs (arping, tcpdump, lsblk, blkid) with their libraries, the harness init.
    Build {
        /// Also copy this host program (path or name on PATH) with its libraries.
        #[arg(long = "with", value_name = "BINARY")]
        with: Vec<PathBuf>,
        /// Image size, e.g. 64M, 1G (default 64M).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: Option<u64>,
        /// Build without the cache ($XDG_CACHE_HOME/umltest).
        #[arg(long)]
        no_cache: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The image file to write.
        out: PathBuf,
    },
}

fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a size like 64M"))?;
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (K, M or G)")),
    };
    n.checked_shl(shift)
        .filter(|v| v >> shift == n && *v >= 8 << 20)
        .ok_or_else(|| format!("{text:?}: size out of range (at least 8M)"))
}

pub fn run(args: ImageArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ImageCommand::Build {
            with,
            size,
            no_cache,
            json,
            out,
        } => {
            let mut spec = ImageSpec::default_with(&with);
            if let Some(size) = size {
                spec.size = size;
            }
            if no_cache {
                spec.cache_dir = None;
            }
            let report = image::build(&spec, &out)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for p in &report.programs {
                    println!(
                        "{:<8} {:<8} {}",
                        p.name,
                        p.version.as_deref().unwrap_or("?"),
                        p.path.display()
                    );
                }
                println!("{}", report.mkfs_version);
                match (&report.cached_at, report.cache_hit) {
                    (Some(c), true) => println!("cached: {}", c.display()),
                    (Some(c), false) => println!("built and cached: {}", c.display()),
                    (None, _) => println!("built (no cache)"),
                }
                println!("wrote {}", out.display());
            }
            for p in &report.programs {
                if let Some(w) = &p.warning {
                    eprintln!("umltest: warning: {w}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
