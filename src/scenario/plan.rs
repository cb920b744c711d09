//! A scenario resolved and validated: plain data the engine runs. Made by
//! [`crate::scenario::resolve`]; nothing here needs the file any more.

use std::path::PathBuf;
use std::time::Duration;

use super::backend::SwitchSpec;

/// A validated scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The scenario file, as given on the command line.
    pub file: PathBuf,
    pub name: String,
    pub about: String,
    pub seed: u64,
    pub switches: Vec<SwitchSpec>,
    pub disks: Vec<DiskPlan>,
    pub machines: Vec<MachinePlan>,
    pub steps: Vec<Step>,
}

/// A disk the harness prepares before the first step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Relative to the run folder, or an absolute host path when `external`.
    pub name: String,
    pub content: DiskContent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskContent {
    /// A sparse file of exactly `size` bytes.
    Raw { size: u64 },
    /// A reproducible ext4 filesystem of `size` bytes.
    Ext4 { size: u64 },
    /// A guest image (`"default"`) made by the backend.
    Image { image: String, size: u64 },
    /// A host file used read-only.
    External,
    /// A COW file over another disk of the scenario.
    Cow { backing: String },
}

/// A machine and the command line the scenario gave it, split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachinePlan {
    pub name: String,
    /// The scenario's words, before the harness additions.
    pub argv: Vec<String>,
}

/// One step: what to do, where it was written, its timeout and expectations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based position among the steps.
    pub number: usize,
    /// 1-based line of its `[[step]]` table in the file.
    pub line: usize,
    pub action: Action,
    /// `None` for host-side steps, which run to completion.
    pub timeout: Option<Duration>,
    pub expect: Option<Expect>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Boot(Vec<String>),
    Run {
        on: String,
        command: String,
    },
    Spawn {
        on: String,
        command: String,
        id: String,
    },
    WaitJob {
        id: String,
        on: String,
    },
    WaitConsole {
        on: String,
        pattern: String,
    },
    Sleep(Duration),
    Link {
        on: String,
        nic: String,
        up: bool,
    },
    Write {
        file: String,
        offset: u64,
        bytes: Vec<u8>,
    },
    Copy {
        from: String,
        to: String,
        preserve: bool,
        sparse: bool,
    },
    Mkcow {
        cow: String,
        backing: String,
    },
    Merge {
        cow: String,
        into: Option<String>,
        backing: Option<String>,
    },
    Check {
        cow: String,
    },
    Halt(Vec<String>),
    Kill(String),
    ExpectTrace {
        switch: String,
        contains: Vec<String>,
        lacks: Vec<String>,
    },
    Fault {
        on: String,
        fault: super::backend::Fault,
    },
}

impl Action {
    /// The step kind's key, as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Boot(_) => "boot",
            Action::Run { .. } | Action::Spawn { .. } => "run",
            Action::WaitJob { .. } => "wait_job",
            Action::WaitConsole { .. } => "wait_console",
            Action::Sleep(_) => "sleep",
            Action::Link { .. } => "link",
            Action::Write { .. } => "write",
            Action::Copy { .. } => "copy",
            Action::Mkcow { .. } => "mkcow",
            Action::Merge { .. } => "merge",
            Action::Check { .. } => "check",
            Action::Halt(_) => "halt",
            Action::Kill(_) => "kill",
            Action::ExpectTrace { .. } => "expect_trace",
            Action::Fault { .. } => "fault",
        }
    }

    /// A short human description, e.g. `run on h1: arping -c 2`.
    pub fn describe(&self) -> String {
        match self {
            Action::Boot(m) => format!("boot {}", m.join(", ")),
            Action::Run { on, command } => format!("run on {on}: {command}"),
            Action::Spawn { on, command, id } => {
                format!("run on {on} in background as {id}: {command}")
            }
            Action::WaitJob { id, on } => format!("wait_job {id} on {on}"),
            Action::WaitConsole { on, pattern } => format!("wait_console on {on}: {pattern:?}"),
            Action::Sleep(d) => format!("sleep {}", super::units::format_duration(*d)),
            Action::Link { on, nic, up } => {
                format!("link {} on {on} {nic}", if *up { "up" } else { "down" })
            }
            Action::Write {
                file,
                offset,
                bytes,
            } => {
                format!("write {} bytes to {file} at {offset}", bytes.len())
            }
            Action::Copy {
                from,
                to,
                preserve,
                sparse,
            } => {
                format!("copy {from} to {to} (preserve {preserve}, sparse {sparse})")
            }
            Action::Mkcow { cow, backing } => format!("mkcow {cow} over {backing}"),
            Action::Merge { cow, into, .. } => match into {
                Some(into) => format!("merge {cow} into {into}"),
                None => format!("merge {cow} into its backing file"),
            },
            Action::Check { cow } => format!("check {cow}"),
            Action::Halt(m) => format!("halt {}", m.join(", ")),
            Action::Kill(m) => format!("kill {m}"),
            Action::ExpectTrace { switch, .. } => format!("expect_trace {switch}"),
            Action::Fault { on, fault } => match fault {
                super::backend::Fault::Port {
                    nic,
                    loss,
                    duplicate,
                    delay,
                } => format!(
                    "fault {nic} on {on}: loss {loss}, duplicate {duplicate}, delay {}",
                    super::units::format_duration(*delay)
                ),
                super::backend::Fault::Disk { unit, fail_write } => match fail_write {
                    Some(n) => format!("fault ubd{unit} on {on}: write {n} fails"),
                    None => format!("fault ubd{unit} on {on}: no write fails"),
                },
            },
        }
    }
}

/// What a command step must produce; unset parts are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    pub exit: Option<i32>,
    pub stdout: Vec<String>,
    pub stdout_lacks: Vec<String>,
    /// A regular expression, already checked to compile.
    pub stdout_matches: Option<String>,
    pub interrupted: Option<bool>,
}
