//! `umltest console UMID|SOCKET COMMAND...`: one mconsole command, printed as
//! `uml_mconsole` prints it (`OK <text>` / `ERR <text>`, exit status 1 on ERR),
//! with `uml_mconsole`'s local commands, matched by prefix as it does
//! (`../shared/spec/mconsole.md`): `quit`, `help` (the kernel's help, then the
//! local one), `switch`, `log` / `log -f FILE` (in chunks of at most 506
//! characters, plus `log \n` when the text does not end a line), `mconsole-version`
//! and `int` (SIGINT to the machine, from its pid file).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
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

/// uml_mconsole's local help, printed after the kernel's.
pub const LOCAL_HELP: &str = "Additional local mconsole commands:
    quit - Quit mconsole
    switch <socket-name> - Switch control to the given machine
    log -f <filename> - use contents of <filename> as UML log messages
    mconsole-version - version of this mconsole program
    int  - Interrupt UML session
";

/// Longest text of one `log` request.
const LOG_CHUNK: usize = 506;

/// What a command line is to uml_mconsole (its prefix checks, in its order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    Quit,
    Help,
    Switch(String),
    /// The text to log (`-f FILE` already read).
    Log(LogText),
    Version,
    Int,
    /// Sent to the kernel as is.
    Remote(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogText {
    Text(String),
    File(String),
}

pub fn classify(command: &str) -> Local {
    let arg = |name: &str| {
        command
            .get(name.len()..)
            .unwrap_or("")
            .trim_start()
            .to_string()
    };
    if command.starts_with("quit") {
        Local::Quit
    } else if command.starts_with("help") {
        Local::Help
    } else if command.starts_with("switch") {
        Local::Switch(arg("switch"))
    } else if command.starts_with("log") {
        let rest = arg("log");
        match rest.strip_prefix("-f") {
            Some(file) => Local::Log(LogText::File(file.trim().to_string())),
            None => Local::Log(LogText::Text(rest)),
        }
    } else if command.starts_with("mconsole-version") {
        Local::Version
    } else if command.starts_with("int") {
        Local::Int
    } else {
        Local::Remote(command.to_string())
    }
}

/// The `log` requests for `text`: chunks of at most [`LOG_CHUNK`] characters, and
/// `log \n` after a text that does not end in a newline.
pub fn log_requests(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<String> = chars
        .chunks(LOG_CHUNK)
        .map(|c| format!("log {}", c.iter().collect::<String>()))
        .collect();
    if !text.ends_with('\n') {
        out.push("log \n".into());
    }
    out
}

pub fn run(args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let socket = mconsole::resolve(&args.machine)?;
    let timeout = Duration::from_secs(args.timeout);
    let command = args.command.join(" ");
    let send = |command: &str| -> anyhow::Result<bool> {
        let reply = Client::connect(&socket)?.command(command, timeout)?;
        println!("{}", reply.display());
        Ok(reply.ok)
    };
    let ok = match classify(&command) {
        Local::Quit => true,
        // As uml_mconsole's help_cmd: the line as typed, then the local help;
        // its status is always 0.
        Local::Help => {
            send(&command)?;
            print!("{LOCAL_HELP}");
            true
        }
        Local::Switch(name) => {
            println!("Switched to '{name}'");
            true
        }
        Local::Log(text) => {
            let text = match text {
                LogText::Text(t) => t,
                LogText::File(f) => std::fs::read_to_string(&f)
                    .with_context(|| format!("log -f {f}: cannot read it"))?,
            };
            let mut ok = true;
            for request in log_requests(&text) {
                ok &= send(&request)?;
            }
            ok
        }
        Local::Version => {
            println!("uml_mconsole client version 2");
            true
        }
        Local::Int => {
            interrupt(&socket);
            true
        }
        Local::Remote(command) => send(&command)?,
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// SIGINT to the machine whose mconsole socket is `socket` (its umid dir holds
/// the `pid` file).
fn interrupt(socket: &Path) {
    let pid = socket
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("pid")).ok())
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|&p| p > 0);
    match pid {
        Some(pid) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        None => println!("Cannot determine the PID of your UML session, not sending signal."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_commands_match_by_prefix_like_uml_mconsole() {
        assert_eq!(classify("quit"), Local::Quit);
        assert_eq!(classify("help"), Local::Help);
        assert_eq!(classify("switch mc2"), Local::Switch("mc2".into()));
        assert_eq!(classify("interface"), Local::Int);
        assert_eq!(
            classify("logging x"),
            Local::Log(LogText::Text("ging x".into()))
        );
        assert_eq!(classify("log hi"), Local::Log(LogText::Text("hi".into())));
        assert_eq!(
            classify("log -f /x"),
            Local::Log(LogText::File("/x".into()))
        );
        assert_eq!(classify("mconsole-version"), Local::Version);
        assert_eq!(classify("version"), Local::Remote("version".into()));
        assert_eq!(classify("sysrq s"), Local::Remote("sysrq s".into()));
    }

    #[test]
    fn log_text_is_chunked_and_a_line_is_ended() {
        assert_eq!(log_requests("hi"), ["log hi", "log \n"]);
        assert_eq!(log_requests("hi\n"), ["log hi\n"]);
        let long = "x".repeat(LOG_CHUNK + 1);
        let r = log_requests(&long);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].len(), 4 + LOG_CHUNK);
        assert_eq!(r[1], "log x");
    }
}
