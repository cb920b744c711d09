//! `umltest cow ...`: the uml_mkcow / uml_moo equivalents and COW inspection.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::cow::{self, inspect, CreateOptions, MergeOptions};

/// COW (copy-on-write) disk files of UML: create, merge, inspect, repair.
#[derive(Debug, Args)]
pub struct CowArgs {
    #[command(subcommand)]
    pub command: CowCommand,
}

#[derive(Debug, Subcommand)]
pub enum CowCommand {
    /// Create a COW file over a backing file (uml_mkcow): a v3 header
    /// byte-identical to uml_mkcow's and the kernel's.
    Create {
        /// Overwrite an existing COW file. Unlike `uml_mkcow -f` the new file
        /// starts empty: no stale dirty bits or data survive.
        #[arg(short = 'f')]
        force: bool,
        /// The COW file to create.
        cow: PathBuf,
        /// The backing image (stored as an absolute path).
        backing: PathBuf,
    },
    /// Merge a COW file into a new image, or in place with -d (uml_moo).
    ///
    /// `merge [-b BACKING] COW NEW_IMAGE` writes a sparse image (via a temporary
    /// file and a rename); `merge [-b BACKING] -d COW` writes the COW's sectors
    /// into the backing file itself, resumable if interrupted. -b and -d may come
    /// in either order.
    #[command(
        override_usage = "umltest cow merge [-b BACKING] COW NEW_IMAGE\n       umltest cow merge [-b BACKING] -d COW"
    )]
    Merge {
        /// The actual backing file, overriding the path in the COW header.
        #[arg(short = 'b', value_name = "BACKING")]
        backing: Option<PathBuf>,
        /// Destructive in-place merge into the backing file.
        #[arg(short = 'd')]
        in_place: bool,
        /// With -d: fsync the merge journal and the backing file, so an
        /// interrupted merge also resumes after a power loss (slower).
        #[arg(long)]
        sync: bool,
        /// The COW file, then the new image (omitted with -d).
        #[arg(value_name = "COW [NEW_IMAGE]", num_args = 1..=2, required = true)]
        files: Vec<PathBuf>,
    },
    /// Point a COW file at a moved backing file, after checking its size and mtime.
    Rebase { cow: PathBuf, new_backing: PathBuf },
    /// Show every header field, the layout, dirty sectors and the backing file's state.
    Info {
        cow: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Changed sector ranges (coalesced) and bytes changed vs the backing file.
    Diff {
        cow: PathBuf,
        /// The actual backing file, overriding the path in the COW header.
        #[arg(short = 'b', value_name = "BACKING")]
        backing: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Show the differing 16-byte rows (backing `-`, COW `+`).
        #[arg(long)]
        hexdump: bool,
        /// Also list the files added (A), changed (M) and removed (D) in an
        /// ext2/3/4 disk, read from both views without mounting.
        #[arg(long)]
        files: bool,
    },
    /// Check a COW file and its backing file (magic, version, truncation, size,
    /// mtime); exit 1 on a problem.
    Check {
        cow: PathBuf,
        /// The actual backing file, overriding the path in the COW header.
        #[arg(short = 'b', value_name = "BACKING")]
        backing: Option<PathBuf>,
        /// Repair an mtime mismatch by rewriting the COW header's mtime (the
        /// backing file is never touched).
        #[arg(long)]
        fix_mtime: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn print_report(report: &cow::MergeReport) {
    for m in &report.messages {
        println!("{m}");
    }
    for w in &report.warnings {
        eprintln!("umltest: {w}");
    }
}

/// Runs `umltest cow ...`.
pub fn run(args: CowArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CowCommand::Create {
            force,
            cow: cow_path,
            backing,
        } => {
            let header = cow::create(&cow_path, &backing, &CreateOptions { force, cwd: None })?;
            let size = header.size;
            if size <= 32768 {
                eprintln!(
                    "umltest: warning: backing file \"{}\" is {size} bytes (32 KiB or less): the real UML 6.1 kernel hangs on its first write through a COW file over it",
                    backing.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CowCommand::Merge {
            backing,
            in_place,
            sync,
            files,
        } => {
            // Test hook for crash-safety tests: stop as if killed after N writes.
            let fail_after_writes = std::env::var("UMLTEST_COW_FAIL_AFTER_WRITES")
                .ok()
                .and_then(|v| v.parse().ok());
            // And one that stops for ever, for a test to SIGKILL at that point.
            let pause_after_writes = std::env::var("UMLTEST_COW_PAUSE_AFTER_WRITES")
                .ok()
                .and_then(|v| v.parse().ok());
            let opts = MergeOptions {
                backing,
                fail_after_writes,
                pause_after_writes,
                confine: None,
            };
            match (in_place, files.as_slice()) {
                (true, [cow_path]) => {
                    let report = cow::merge::merge_in_place_durable(cow_path, &opts, sync)?;
                    if report.resumed {
                        eprintln!(
                            "umltest: completed an interrupted in-place merge of {}",
                            cow_path.display()
                        );
                    }
                    print_report(&report);
                }
                (false, [cow_path, out]) => {
                    let report = cow::merge_to_new(cow_path, out, &opts)?;
                    print_report(&report);
                }
                (true, _) => bail!("merge -d takes one file, the COW file (usage: umltest cow merge [-b BACKING] -d COW)"),
                (false, _) => bail!("merge takes the COW file and the new image (usage: umltest cow merge [-b BACKING] COW NEW_IMAGE), or -d COW"),
            }
            Ok(ExitCode::SUCCESS)
        }
        CowCommand::Rebase {
            cow: c,
            new_backing,
        } => {
            let r = inspect::rebase(&c, &new_backing)?;
            println!(
                "{}: backing file \"{}\" -> \"{}\"",
                c.display(),
                r.old.display(),
                r.new.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CowCommand::Info { cow: c, json } => {
            let info = inspect::info(&c, None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_info(&info);
            }
            Ok(ExitCode::SUCCESS)
        }
        CowCommand::Diff {
            cow: c,
            backing,
            json,
            hexdump,
            files,
        } => {
            let d = inspect::diff(&c, backing.as_deref(), hexdump)?;
            let changes = if files {
                Some(cow::files::diff_files(&c, backing.as_deref())?)
            } else {
                None
            };
            if json {
                let mut v = serde_json::to_value(&d)?;
                if let (Some(changes), Some(obj)) = (&changes, v.as_object_mut()) {
                    obj.insert("files".into(), serde_json::to_value(changes)?);
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_diff(&d, hexdump).context("write to stdout")?;
                for f in changes.iter().flatten() {
                    if f.what.is_empty() {
                        println!("{} {}", f.change.tag(), f.path);
                    } else {
                        println!("{} {} ({})", f.change.tag(), f.path, f.what.join(", "));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CowCommand::Check {
            cow: c,
            backing,
            fix_mtime,
            json,
        } => {
            let r = inspect::check(&c, backing.as_deref(), fix_mtime)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for f in &r.findings {
                    let tag = match f.severity {
                        inspect::Severity::Ok => "ok",
                        inspect::Severity::Warning => "warning",
                        inspect::Severity::Error => "error",
                    };
                    println!("{}: {tag}: {}", c.display(), f.what);
                }
            }
            Ok(if r.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "matches",
        Some(false) => "MISMATCH",
        None => "unknown",
    }
}

fn print_info(i: &inspect::Info) {
    let h = &i.header;
    for m in &i.messages {
        println!("{m}");
    }
    println!(
        "file:            {} ({} bytes)",
        i.path.display(),
        i.file_len
    );
    println!(
        "version:         {} (magic {})",
        h.version,
        if h.magic_big_endian {
            "big-endian"
        } else {
            "little-endian"
        }
    );
    println!("backing file:    {}", h.backing_path().display());
    println!("mtime:           {}", h.mtime);
    println!("size:            {}", h.size);
    println!("sectorsize:      {}", h.sectorsize);
    println!("alignment:       {}", h.alignment);
    println!("cow_format:      {}", h.cow_format);
    println!("bitmap offset:   {}", i.layout.bitmap_offset);
    println!("bitmap length:   {}", i.layout.bitmap_len);
    println!("data offset:     {}", i.layout.data_offset);
    println!("expected length: {}", i.expected_len);
    println!(
        "dirty sectors:   {} in {} ranges ({} bytes)",
        i.dirty_sectors,
        i.dirty_ranges,
        i.dirty_sectors * 512
    );
    let b = &i.backing;
    if b.exists {
        println!(
            "backing status:  exists, size {} ({}), mtime {} ({})",
            b.size.unwrap_or(0),
            yes_no(b.size_matches),
            b.mtime.unwrap_or(0),
            yes_no(b.mtime_matches)
        );
    } else {
        println!(
            "backing status:  missing ({})",
            b.error.as_deref().unwrap_or("")
        );
    }
}

fn print_diff(d: &inspect::Diff, hexdump: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} over {}: {} ranges, {} dirty sectors ({} bytes), {} bytes changed",
        d.cow.display(),
        d.backing.display(),
        d.ranges.len(),
        d.dirty_sectors,
        d.dirty_sectors * 512,
        d.changed_bytes
    )?;
    for r in &d.ranges {
        writeln!(
            out,
            "sectors {}-{} (bytes {}-{}): {} bytes changed",
            r.first_sector,
            r.first_sector + r.sectors - 1,
            r.offset,
            r.offset + r.len - 1,
            r.changed_bytes
        )?;
        if hexdump {
            for row in &r.rows {
                writeln!(out, "-{:08x}: {}", row.offset, hex(&row.backing))?;
                writeln!(out, "+{:08x}: {}", row.offset, hex(&row.cow))?;
            }
            if r.rows.len() == inspect::MAX_HEX_ROWS {
                writeln!(
                    out,
                    "  (first {} differing rows shown)",
                    inspect::MAX_HEX_ROWS
                )?;
            }
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    let mut s = String::new();
    for (i, x) in b.iter().enumerate() {
        if i > 0 && i % 2 == 0 {
            s.push(' ');
        }
        s.push_str(&format!("{x:02x}"));
    }
    s
}
