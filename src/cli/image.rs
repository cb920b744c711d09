//! `umltest image build`: the root image of the `uml` backend; `umltest image
//! manifest`: its committed manifest (see [`crate::uml::manifest`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::uml::image::{self, ImageSpec};
use crate::uml::manifest::Manifest;

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
    /// Write the manifest of the default image (names, types, modes, owners, sizes,
    /// link targets, text file contents) from the tree `image build` stages, or
    /// check one: the committed one is src/uml/default-image.manifest.
    Manifest {
        /// Compare FILE with the default image of this host instead of writing it
        /// (sizes of binaries, which differ between hosts, are not compared); exit 1
        /// on a difference.
        #[arg(long)]
        check: bool,
        /// The manifest file.
        file: PathBuf,
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
        ImageCommand::Manifest { check, file } => {
            let actual = image::manifest(&ImageSpec::default_with(&[]))?;
            if !check {
                std::fs::write(&file, actual.render())
                    .with_context(|| format!("write {}", file.display()))?;
                println!("wrote {} ({} paths)", file.display(), actual.items.len());
                return Ok(ExitCode::SUCCESS);
            }
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            let expected = Manifest::parse(&text, &file)?;
            let diff = expected.differences(&actual, false);
            if diff.is_empty() {
                println!(
                    "{}: matches the default image of this host ({} paths)",
                    file.display(),
                    actual.items.len()
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "--- {} (expected)\n+++ default image of this host",
                file.display()
            );
            for line in &diff {
                println!("{line}");
            }
            eprintln!(
                "umltest: {} differs from the default image of this host in {} lines (sizes of binaries not compared); regenerate it with: umltest image manifest {}",
                file.display(),
                diff.len(),
                file.display()
            );
            Ok(ExitCode::from(1))
        }
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
