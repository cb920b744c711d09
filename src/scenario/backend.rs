//! The contract between the scenario engine and a backend (`sim` or `uml`).
//!
//! The engine resolves a scenario file into a [`Lab`] (plain data: switches and
//! machines with their final argv, all names relative to the run folder), then
//! drives a [`Backend`] step by step. Host-side disk steps (write bytes, copy,
//! mkcow, merge, check) and disk diffs are done by the engine itself on the run
//! folder through the `cow`/`block` modules, identically for both backends.
//!
//! Durations are virtual on the sim and wall-clock on `uml`; a backend never
//! blocks longer than the timeout it is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A scenario resolved for running: everything a backend needs, nothing it must parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lab {
    pub name: String,
    /// The scenario seed: the sim derives every RNG stream from it.
    pub seed: u64,
    /// The run folder, the working directory of every machine; disk files and
    /// switch socket dirs named in command lines are relative to it.
    pub run_dir: PathBuf,
    pub switches: Vec<SwitchSpec>,
    pub machines: Vec<MachineSpec>,
    /// The `external` disks, as named (host paths, only ever read): the only
    /// files outside the run folder a command line may name, and a machine
    /// may open, only for reading.
    pub external: Vec<String>,
}

impl Lab {
    /// The external disks' paths (a relative name is taken from the run folder).
    pub fn external_paths(&self) -> Vec<PathBuf> {
        self.external.iter().map(|e| self.run_dir.join(e)).collect()
    }
}

/// A switch of the lab (a VDE switch socket dir `run_dir/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchSpec {
    pub name: String,
    /// Hub mode (`vde_switch -x`): every frame to every other port.
    pub hub: bool,
    /// Number of ports (`vde_switch -n`, default 32).
    pub numports: u32,
}

/// A machine: its name and the exact argv of `linux.uml` (without the program
/// name): the scenario's command line split as a shell would, plus only what the
/// harness appends (ARCHITECTURE.md, "What the harness adds").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    pub name: String,
    pub argv: Vec<String>,
}

/// Injected faults on one device of a machine (a `fault` step); every field
/// replaces the device's previous setting.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// At the switch port of NIC `nic`: frames it sends are lost or duplicated
    /// with these probabilities (0..=1) and delayed by `delay`.
    Port {
        nic: String,
        loss: f64,
        duplicate: f64,
        delay: Duration,
    },
    /// On ubd unit `unit`: its `fail_write`th block write from now on fails
    /// with EIO (`None`: no write fails).
    Disk { unit: u32, fail_write: Option<u64> },
}

// Plans compare with `==`; probabilities are checked to be within 0..=1 when
// the scenario is resolved, so never NaN.
impl Eq for Fault {}

/// Most bytes of a console transcript (and of one command's output) either
/// backend keeps: a guest can print without end (`yes`, `tcpdump`, `printf
/// '%2147483647d'`), the artifact and the memory used while it runs stay bounded.
pub const CONSOLE_CAP: usize = 16 << 20;

/// The line that ends a transcript cut at [`CONSOLE_CAP`]: what was dropped.
pub fn truncation_line(dropped: u64) -> String {
    format!("[umltest: console truncated: {dropped} more bytes]\n")
}

/// Identifies a background command started with [`Backend::spawn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u32);

/// What a finished (or interrupted) guest command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// stdout and stderr as the console shows them, `\n` line endings.
    pub output: String,
    /// The exit status (`128 + signal` style codes as the shell reports them).
    pub exit_code: i32,
    /// True if the command was still running at its timeout and got SIGINT.
    pub interrupted: bool,
}

/// One frame seen by a switch, in the shared trace format of ARCHITECTURE.md:
/// `<seq> <time> port <in> -> <out ports>: <tcpdump -n -e line>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRecord {
    /// Time since the lab started (virtual on the sim).
    pub time: Duration,
    pub in_port: u32,
    pub out_ports: Vec<u32>,
    /// The raw frame, as forwarded.
    pub frame: Vec<u8>,
}

/// Everything a backend recorded, collected once at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendArtifacts {
    /// Console transcript per machine.
    pub consoles: BTreeMap<String, String>,
    /// Frames per switch, in forwarding order.
    pub traces: BTreeMap<String, Vec<TraceRecord>>,
}

/// A backend failure that stops the run (as opposed to a failed expectation).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run here at all (e.g. `linux.uml` missing): exit code 4.
    #[error("{what} (install it with: apt-get install -y {package})")]
    Unavailable { what: String, package: String },
    /// A machine name the lab does not define.
    #[error("no machine named {0:?} in this lab")]
    UnknownMachine(String),
    /// The guest did not boot, panicked, or stopped answering; `last_lines` shows why.
    #[error("machine {machine}: {message}\nlast console lines:\n{last_lines}")]
    Machine {
        machine: String,
        message: String,
        last_lines: String,
    },
    /// A step this backend cannot perform (e.g. `fault` on real processes).
    #[error("not supported on the {backend} backend: {key}")]
    Unsupported {
        backend: &'static str,
        key: &'static str,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// A way of running a [`Lab`]: the deterministic sim or real `linux.uml` processes.
pub trait Backend {
    /// `"sim"` or `"uml"`.
    fn name(&self) -> &'static str;
    /// Prepares the lab (switches up); no machine runs yet.
    fn start(&mut self, lab: &Lab) -> Result<(), BackendError>;
    /// Fills `path`, a disk of the scenario with `image = "<image>"` (only
    /// `"default"` so far), with a guest image of `size` bytes. Called before
    /// [`Backend::start`]. The default makes the harness's reproducible, empty
    /// ext4 filesystem of that size; the sim builds the default image from its
    /// committed manifest (placeholder program bytes), the `uml` backend with the
    /// guest programs.
    fn prepare_image(&mut self, image: &str, path: &Path, size: u64) -> Result<(), BackendError> {
        super::disk::mkfs_ext4(path, size, image).map_err(|e| match e {
            super::disk::DiskError::NoMkfs => BackendError::Unavailable {
                what: "mkfs.ext4 not found".into(),
                package: "e2fsprogs".into(),
            },
            other => BackendError::Io {
                context: format!("image {image:?}"),
                source: std::io::Error::other(other.to_string()),
            },
        })
    }
    /// Boots machines (in parallel where it matters) and waits until each has a
    /// shell, or has failed to boot as the kernel would (the console tells why).
    /// A machine without a shell after `timeout` is an error.
    fn boot(&mut self, machines: &[String], timeout: Duration) -> Result<(), BackendError>;
    /// Runs a shell command in the foreground; at `timeout` it gets SIGINT (like
    /// Ctrl-C) and its output so far and exit code are returned.
    fn run(
        &mut self,
        machine: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutcome, BackendError>;
    /// Starts a shell command in the background.
    fn spawn(&mut self, machine: &str, command: &str) -> Result<JobId, BackendError>;
    /// Waits for a background command, interrupting it with SIGINT at `timeout`.
    fn wait_job(
        &mut self,
        machine: &str,
        job: JobId,
        timeout: Duration,
    ) -> Result<CommandOutcome, BackendError>;
    /// Takes a machine's NIC (`eth0`, ...) cable out of / back into its switch.
    fn set_link(&mut self, machine: &str, nic: &str, up: bool) -> Result<(), BackendError>;
    /// Waits until the console shows `pattern` (a substring); false at timeout.
    fn wait_console(
        &mut self,
        machine: &str,
        pattern: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError>;
    /// Lets time pass (virtual on the sim).
    fn sleep(&mut self, duration: Duration) -> Result<(), BackendError>;
    /// Halts machines cleanly (guest `halt`/mconsole), so disks are consistent;
    /// a machine still running after `timeout` is an error.
    fn halt(&mut self, machines: &[String], timeout: Duration) -> Result<(), BackendError>;
    /// Kills a machine abruptly (fault injection: the host kills the process).
    fn kill(&mut self, machine: &str) -> Result<(), BackendError>;
    /// Injects `fault` on a device of `machine` (now, or at its boot). Only the
    /// sim can; the default refuses, so a scenario never silently runs
    /// without the faults it asks for.
    /// Whether [`Backend::inject_fault`] works: the engine refuses a lab with
    /// `fault` steps up front on a backend that cannot, rather than boot it and
    /// stop at the first one.
    fn can_inject_faults(&self) -> bool {
        false
    }
    fn inject_fault(&mut self, machine: &str, fault: &Fault) -> Result<(), BackendError> {
        let _ = (machine, fault);
        Err(BackendError::Unsupported {
            backend: self.name(),
            key: "fault",
        })
    }
    /// The modification time host-side steps give the files they write (a
    /// careless `copy`, a `write`): `None`, the default, leaves the host's clock
    /// to set it, as on a real host; the sim returns its virtual clock on a fixed
    /// epoch, so a kernel message quoting the mtime is the same on every run.
    fn file_time(&self) -> Option<std::time::SystemTime> {
        None
    }
    /// Stops everything still running and returns what was recorded.
    fn finish(&mut self) -> Result<BackendArtifacts, BackendError>;
}
