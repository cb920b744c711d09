//! The `umltest` command: clap definitions and dispatch. Each subcommand lives in
//! its own file; `main.rs` only calls [`main`].
//!
//! Exit codes: 0 success, 1 an operation failed (bad file, mismatch, ...),
//! 2 usage errors (clap) and bad scenario files, 4 nothing ran, 100 test failures.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod bench_sim;
pub mod bench_switch;
pub mod bench_uml;
pub mod check;
pub mod cmdline;
pub mod console;
pub mod cow;
pub mod image;
pub mod run;
pub mod switch;

#[derive(Debug, Parser)]
#[command(
    name = "umltest",
    version,
    about = "Test-and-simulation harness for User Mode Linux labs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run scenario files and compare their artifacts with the committed snapshots.
    Run(run::RunArgs),
    /// Validate scenario files without running them.
    Check(check::CheckArgs),
    /// VDE switch, wire-compatible with vde_switch, with packet capture (--pcap, --trace).
    Switch(switch::SwitchArgs),
    /// Print the version.
    #[command(hide = true)]
    Version,
    /// Root images for the uml backend.
    Image(image::ImageArgs),
    /// Send one command to a running machine's management console (uml_mconsole).
    Console(console::ConsoleArgs),
    /// Predict what linux.uml 6.1 configures from a kernel command line.
    Cmdline(cmdline::CmdlineArgs),
    /// UML copy-on-write disk files: create, merge, rebase, info, diff, check.
    Cow(cow::CowArgs),
    /// Benchmarks against the reference tools, reported as ratios.
    Bench(bench::BenchArgs),
}

/// Entry point of the binary: parse argv, run, map errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::run(args),
        Command::Switch(args) => switch::run(args),
        Command::Version => {
            println!("umltest {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(args) => image::run(args),
        Command::Console(args) => console::run(args),
        Command::Cmdline(args) => cmdline::run(args),
        Command::Cow(args) => cow::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("umltest: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
