//! `umltest check`: validate scenario files without running them (exit 0, or
//! 2 with every problem shown), and print the generated scenario reference.

use std::path::PathBuf;
use std::process::ExitCode;

use super::run::{expand_paths, EXIT_BAD_SCENARIO};
use crate::scenario::resolve;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Scenario files, or folders whose *.toml files are scenarios.
    #[arg(value_name = "SCENARIO|DIR", required_unless_present = "reference")]
    pub paths: Vec<PathBuf>,
    /// Print the scenario file reference (docs/scenario-reference.md) and exit.
    #[arg(long)]
    pub reference: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    if args.reference {
        print!("{}", crate::scenario::reference::markdown());
        return Ok(ExitCode::SUCCESS);
    }
    let files = match expand_paths(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("umltest: error: {e}");
            return Ok(ExitCode::from(EXIT_BAD_SCENARIO));
        }
    };
    let mut bad = 0;
    for file in &files {
        match resolve::load(file) {
            Ok(plan) => println!(
                "ok {} ({}: {} machines, {} steps)",
                file.display(),
                plan.name,
                plan.machines.len(),
                plan.steps.len()
            ),
            Err(diags) => {
                eprintln!("{diags}\n");
                bad += 1;
            }
        }
    }
    println!("{} passed, {bad} failed", files.len() - bad);
    Ok(if bad > 0 {
        ExitCode::from(EXIT_BAD_SCENARIO)
    } else {
        ExitCode::SUCCESS
    })
}
