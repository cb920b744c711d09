//! `umltest console UMID|SOCKET COMMAND...`: one mconsole command, printed as
//! `uml_mconsole` prints it (`OK <text>` / `ERR <text>`, exit status 1 on ERR).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::uml::mconsole::{self, Client};

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// A umid (looked up in ./.uml, ~/.uml, /tmp/uml) or an mconsole socket path.
    pub machine: String,
    /// The command, e.g. `version`, `halt`, `sysrq s`, `proc meminfo`, `config ubd1=x`.
    /// The words are joined with single spaces.
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

pub fn run(args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let socket = mconsole::resolve(&args.machine)?;
    let client = Client::connect(&socket)?;
    let reply = client.command(&args.command.join(" "), Duration::from_secs(args.timeout))?;
    println!("{}", reply.display());
    Ok(if reply.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
