//! `impl Backend` for real `linux.uml` processes: one [`Machine`] per machine, one
//! in-process switch daemon (`net::vde`) per switch on its own thread, with the
//! socket dir `run_dir/<switch>` (Debian's linux.uml reaches it through `vde_plug`).
//!
//! Traces: each daemon writes a pcap and a trace file into `run_dir/.uml/`; at
//! [`Backend::finish`] the two are read back in step (same order, one record per
//! forwarded frame) into [`TraceRecord`]s, optionally keeping only some ethertypes
//! (kernel background traffic such as IPv6 ND and MLD would make real traces
//! flaky). Consoles: the raw transcript with the protocol's markers turned into
//! `# <command>` lines (as the sim writes them) and `\r\n` into `\n`.
//! A machine booted again runs as a new process; its console artifact is the
//! earlier processes' transcripts, each followed by `$ linux <argv>`, then the
//! new one's.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::console;
use super::guest::{find_program, require_program};
use super::image::{self, ImageSpec};
use super::machine::{HaltedBy, Machine, MachineConfig, MachineError};
use super::sandbox::{Policy, Sandbox};
use crate::net::switch::SwitchConfig;
use crate::net::vde::daemon::{Daemon, DaemonConfig, LogTarget};
use crate::scenario::backend::{
    Backend, BackendArtifacts, BackendError, CommandOutcome, JobId, Lab, TraceRecord,
};
use std::sync::Arc;

/// Ethertype of ARP, for [`UmlBackend::capture_only`].
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethertype of IPv4, for [`UmlBackend::capture_only`].
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// What a real run's traces keep when they are compared with the sim's: ARP
/// and IPv4. A real kernel's own IPv6 traffic (neighbour discovery, MLD
/// reports at link-up) is background the sim does not model and no lab asks for.
pub const COMPARED_ETHERTYPES: &[u16] = &[ETHERTYPE_ARP, ETHERTYPE_IPV4];

/// Longest wait for a background command to show it is running (see `spawn`).
const JOB_SETTLE: Duration = Duration::from_secs(3);

/// Where a background job's output and exit status go in the guest.
const JOB_FILE_PREFIX: &str = "/tmp/umltest-job-";

/// How long a halt may take per stage (guest poweroff, then mconsole halt).
const HALT_TIMEOUT: Duration = Duration::from_secs(15);

struct SwitchRun {
    name: String,
    mgmt: PathBuf,
    pcap: PathBuf,
    trace: PathBuf,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    /// Port as the daemon numbered it → port as the sim numbers it (see `boot`).
    relabel: BTreeMap<u32, u32>,
    /// (machine, NIC) whose cable is out → its port.
    pulled: BTreeMap<(String, String), u32>,
}

/// How a protocol exchange appears in the console artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// A scenario command: `# <command>`, then its output.
    Command(String),
    /// A background command as the sim shows it: `# <command>`, no output (the
    /// harness's wrapper prints the job's pid).
    CommandLine(String),
    /// The harness's own exchange, whose output is the scenario's (a job's output).
    Output,
    /// The harness's own exchange (waiting, exit status files): not shown.
    Hidden,
}

struct Job {
    machine: String,
    pid: u32,
    out_file: String,
}

/// The real backend.
#[derive(Default)]
pub struct UmlBackend {
    lab: Option<Lab>,
    linux: Option<PathBuf>,
    machines: BTreeMap<String, Machine>,
    /// Commands sent per machine, by protocol sequence number (for transcripts).
    commands: BTreeMap<String, Vec<Shown>>,
    switches: Vec<SwitchRun>,
    jobs: BTreeMap<JobId, Job>,
    next_job: u32,
    capture: Option<Vec<u16>>,
    /// Problems found while stopping (e.g. a machine that had to be killed).
    notes: Vec<String>,
    phases: PhaseLog,
    /// Per machine booted again: the transcripts of its earlier processes,
    /// each followed by `$ linux <argv>` (the artifact's first line, again).
    earlier: BTreeMap<String, String>,
    /// `umltest run --unconfined`: no Landlock domain around the kernels.
    unconfined: bool,
    /// The lab's Landlock domain (built in `start`).
    sandbox: Option<Arc<Sandbox>>,
    /// The machines' `TMPDIR` (UML's memory files), removed with the backend.
    mem_dir: Option<tempfile::TempDir>,
}

/// `UMLTEST_PHASES=1`: each backend call's start (since the backend was made)
/// and wall time on stderr, to see where a run spends its time (`bench uml`).
struct PhaseLog {
    epoch: std::time::Instant,
    on: bool,
}

impl Default for PhaseLog {
    fn default() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            on: std::env::var_os("UMLTEST_PHASES").is_some_and(|v| !v.is_empty() && v != "0"),
        }
    }
}

impl PhaseLog {
    fn start(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
    fn done(&self, started: std::time::Instant, what: std::fmt::Arguments) {
        if self.on {
            eprintln!(
                "umltest phase: at {:7.3}s took {:6.3}s  {what}",
                (started - self.epoch).as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
        }
    }
}

impl UmlBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Run the kernels without the Landlock sandbox (`umltest run --unconfined`).
    pub fn unconfined(mut self, unconfined: bool) -> Self {
        self.unconfined = unconfined;
        self
    }

    /// Builds the lab's Landlock domain (see [`super::sandbox`]): the run folder
    /// and a fresh memory-file directory read-write (in /dev/shm, where UML puts
    /// its memory file by default, else in the run folder's `.uml`), the system
    /// read-only, the `external` disks read-only.
    fn confine(&mut self, lab: &Lab, private: &Path) -> Result<(), BackendError> {
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() { shm } else { private };
        let mem_dir = tempfile::Builder::new()
            .prefix("umltest-mem-")
            .tempdir_in(parent)
            .or_else(|_| tempfile::Builder::new().prefix("mem-").tempdir_in(private))
            .map_err(io("create the machines' memory-file directory".to_string()))?;
        let external = lab.external_paths();
        let policy = Policy::for_uml(&lab.run_dir, mem_dir.path(), &external);
        let sandbox = Sandbox::new(&policy).map_err(|e| BackendError::Io {
            context: "sandbox (umltest run --unconfined runs without)".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.sandbox = Some(Arc::new(sandbox));
        self.mem_dir = Some(mem_dir);
        Ok(())
    }

    /// Keep only frames of these ethertypes in the traces (e.g. `[ETHERTYPE_ARP]`).
    pub fn capture_only(mut self, ethertypes: &[u16]) -> Self {
        self.capture = Some(ethertypes.to_vec());
        self
    }

    fn machine(&mut self, name: &str) -> Result<&mut Machine, BackendError> {
        self.machines
            .get_mut(name)
            .ok_or_else(|| BackendError::Machine {
                machine: name.to_string(),
                message: "not booted".into(),
                last_lines: String::new(),
            })
    }

    fn run_dir(&self) -> Result<PathBuf, BackendError> {
        self.lab
            .as_ref()
            .map(|l| l.run_dir.clone())
            .ok_or_else(|| BackendError::Io {
                context: "uml backend".into(),
                source: std::io::Error::other("start() was not called"),
            })
    }

    fn stop_switches(&mut self) {
        for sw in &mut self.switches {
            if let Ok(mut s) = UnixStream::connect(&sw.mgmt) {
                let _ = s.write_all(b"shutdown\n");
            }
            if let Some(t) = sw.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// The switch daemon hands out ports in connection order, and machines that
    /// boot together connect in any order. The sim numbers them in boot-list order
    /// (each machine's NICs in turn), so the ports this boot step added are
    /// renumbered that way in the traces: the same set of port numbers, assigned by
    /// (place in the boot list, daemon's order). A port's machine is the process
    /// group of its endpoint (`vde_plug`, started by the machine, in its group).
    fn number_ports_by_boot_list(&mut self, machines: &[String]) {
        let groups: Vec<i32> = machines
            .iter()
            .map(|n| self.machines.get(n).map_or(-1, |m| m.pid() as i32))
            .collect();
        // Ports a machine asked for by number (`eth0=vde,sw1,,5`) are its own on
        // the sim too: they keep their number.
        let fixed: Vec<Vec<(String, u32)>> = machines
            .iter()
            .map(|n| {
                self.machines
                    .get(n)
                    .map(|m| fixed_ports(m.argv()))
                    .unwrap_or_default()
            })
            .collect();
        for sw in &mut self.switches {
            let Ok(endpoints) = endpoint_pids(&sw.mgmt) else {
                continue;
            };
            let mut new: Vec<(usize, u32)> = Vec::new();
            for (port, pid) in endpoints {
                let place = process_group(pid).and_then(|g| groups.iter().position(|&m| m == g));
                let asked = place
                    .and_then(|p| fixed.get(p))
                    .is_some_and(|f| f.iter().any(|(s, n)| *s == sw.name && *n == port));
                if asked {
                    sw.relabel.insert(port, port);
                } else if !sw.relabel.contains_key(&port) {
                    new.push((place.unwrap_or(usize::MAX), port));
                }
            }
            let mut slots: Vec<u32> = new.iter().map(|&(_, p)| p).collect();
            slots.sort_unstable();
            new.sort_unstable();
            for ((_, port), slot) in new.into_iter().zip(slots) {
                sw.relabel.insert(port, slot);
            }
            if self.phases.on {
                eprintln!(
                    "umltest phase: switch {} ports (daemon -> trace): {:?}",
                    sw.name, sw.relabel
                );
            }
        }
    }

    /// Before `name` boots again (its last process ended: halted, killed, or
    /// failed to boot): its transcript is kept for the console artifact,
    /// followed by the command line the new process runs with.
    fn retire(&mut self, name: &str) {
        let Some(old) = self.machines.remove(name) else {
            return;
        };
        let commands = self.commands.remove(name).unwrap_or_default();
        let text = self.earlier.entry(name.to_string()).or_default();
        text.push_str(&transcript(&old.console_bytes(), &commands));
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("$ linux {}\n", old.argv().join(" ")));
    }

    /// Notes the next protocol exchange on `name` (only a booted machine has one).
    fn record(&mut self, name: &str, shown: Shown) {
        if !self.machines.contains_key(name) {
            return;
        }
        self.commands
            .entry(name.to_string())
            .or_default()
            .push(shown);
    }
}

/// A `boot` of a machine whose process still runs.
fn still_running(name: &str, m: &Machine) -> BackendError {
    let text = m.transcript();
    let lines: Vec<&str> = text.lines().collect();
    BackendError::Machine {
        machine: name.to_string(),
        message: "is already running: halt or kill it before booting it again".into(),
        last_lines: lines[lines.len().saturating_sub(12)..].join("\n"),
    }
}

fn machine_error(e: MachineError) -> BackendError {
    match e {
        MachineError::Failed {
            machine,
            message,
            last_lines,
        } => BackendError::Machine {
            machine,
            message,
            last_lines,
        },
        MachineError::MissingTool(m) => BackendError::Unavailable {
            what: format!("{} not found", m.program),
            package: m.package.to_string(),
        },
        other => BackendError::Machine {
            machine: String::new(),
            message: other.to_string(),
            last_lines: String::new(),
        },
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
    let context = context.into();
    move |source| BackendError::Io { context, source }
}

/// The kernel: `$UMLTEST_LINUX` if set (another build of UML), else `linux.uml`.
fn find_linux() -> Result<PathBuf, BackendError> {
    let unavailable = |what: String| BackendError::Unavailable {
        what,
        package: "user-mode-linux".into(),
    };
    if let Some(path) = std::env::var_os("UMLTEST_LINUX").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return match find_program(&path.to_string_lossy()) {
            Some(p) => Ok(p),
            None => Err(unavailable(format!(
                "UMLTEST_LINUX={}: no such kernel: the uml backend needs linux.uml",
                path.display()
            ))),
        };
    }
    require_program("linux.uml", "user-mode-linux")
        .map_err(|m| unavailable(format!("{} not found: the uml backend needs it", m.program)))
}

/// Number of argv words configuring a NIC on the `vde` transport.
fn vde_nics(argv: &[String]) -> usize {
    argv.iter()
        .take_while(|a| *a != "--")
        .filter(|a| {
            a.starts_with("eth")
                && a.split_once('=')
                    .is_some_and(|(_, v)| v == "vde" || v.starts_with("vde,"))
        })
        .count()
}

/// The (switch, port) pairs an argv's VDE NICs ask for by number.
fn fixed_ports(argv: &[String]) -> Vec<(String, u32)> {
    crate::cmdline::parse(argv)
        .net
        .iter()
        .filter_map(|d| match &d.params {
            crate::cmdline::NetParams::Vde {
                switch: Some(switch),
                port,
                ..
            } if *port != 0 => {
                let name = Path::new(switch.trim_end_matches('/')).file_name()?;
                Some((name.to_string_lossy().into_owned(), *port))
            }
            _ => None,
        })
        .collect()
}

fn uses_vde(argv: &[String]) -> bool {
    vde_nics(argv) > 0
}

/// Each connected port of a switch and the pid its endpoint announced
/// (`... pid=N` at the end of the description), from the management console's
/// `port/allprint`.
fn endpoint_pids(mgmt: &Path) -> std::io::Result<Vec<(u32, u32)>> {
    Ok(parse_allprint(&mgmt_command(mgmt, "port/allprint")?))
}

/// One command on a switch's management console; its reply up to and including
/// the result line (`1000 Success`, or an error code).
fn mgmt_command(mgmt: &Path, command: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = UnixStream::connect(mgmt)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    // The result may follow the prompt on its line (`vde$ 1000 Success`).
    let is_result = |l: &str| {
        let l = l.strip_prefix("vde$ ").unwrap_or(l);
        l.len() >= 5
            && l.as_bytes().get(4) == Some(&b' ')
            && l.bytes().take(4).all(|b| b.is_ascii_digit())
            && !l.starts_with("0000")
    };
    while !text.lines().any(is_result) {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(buf.get(..n).unwrap_or_default()));
    }
    Ok(text)
}

/// `Port 0001 ...` then `  -- endpoint ID 0003 module unix prog   : descr pid=N`.
pub fn parse_allprint(text: &str) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut port = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Port ") {
            port = rest.split(' ').next().and_then(|n| n.parse::<u32>().ok());
        } else if line.trim_start().starts_with("-- endpoint ID") {
            let pid = line
                .rsplit(' ')
                .next()
                .and_then(|w| w.strip_prefix("pid="))
                .and_then(|p| p.parse::<u32>().ok());
            if let (Some(port), Some(pid)) = (port, pid) {
                out.push((port, pid));
            }
        }
    }
    out
}

/// The process group of `pid` (`/proc/<pid>/stat`, the field after the state).
fn process_group(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Printed by linux.uml once a vde NIC is connected to its switch (at boot).
const VDE_CONNECTED: &str = "vde backend - connection opened";

impl Backend for UmlBackend {
    fn name(&self) -> &'static str {
        "uml"
    }

    fn prepare_image(&mut self, image: &str, path: &Path, size: u64) -> Result<(), BackendError> {
        // No kernel, no point building its root: say so before any work.
        find_linux()?;
        if image != "default" {
            return Err(BackendError::Io {
                context: format!("disk image {image:?}"),
                source: std::io::Error::other("only image = \"default\" is known"),
            });
        }
        let t = self.phases.start();
        let mut spec = ImageSpec::default_with(&[]);
        spec.size = size;
        let built = image::build(&spec, path);
        self.phases
            .done(t, format_args!("root image {}", path.display()));
        built.map_err(|e| match e {
            image::ImageError::MissingTool(m) => BackendError::Unavailable {
                what: format!("{} not found", m.program),
                package: m.package.to_string(),
            },
            other => BackendError::Io {
                context: format!("root image {}", path.display()),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
        // mkfs works in whole KiB; a scenario size like 300M+1 keeps its last byte.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(format!("open {}", path.display())))?;
        let len = file.metadata().map_err(io("stat image"))?.len();
        if len < size {
            file.set_len(size).map_err(io("extend image"))?;
        }
        Ok(())
    }

    fn start(&mut self, lab: &Lab) -> Result<(), BackendError> {
        // The run-time twin of `umltest check`: a lab built by other means
        // than a scenario file still names nothing outside its run folder.
        for m in &lab.machines {
            if let Some((_, why)) = crate::cmdline::paths::first_outside(&m.argv, &lab.external) {
                return Err(BackendError::Io {
                    context: format!("machine {}: command line", m.name),
                    source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, why),
                });
            }
        }
        let linux = find_linux()?;
        if lab.machines.iter().any(|m| uses_vde(&m.argv)) && find_program("vde_plug").is_none() {
            return Err(BackendError::Unavailable {
                what: "vde_plug not found (Debian's linux.uml reaches a VDE switch through it)"
                    .into(),
                package: "vde2".into(),
            });
        }
        self.linux = Some(linux);
        self.lab = Some(lab.clone());
        let private = lab.run_dir.join(super::args::UML_DIR);
        std::fs::create_dir_all(&private).map_err(io(format!("create {}", private.display())))?;
        if !self.unconfined {
            self.confine(lab, &private)?;
        }
        for sw in &lab.switches {
            let mut config = DaemonConfig::new(lab.run_dir.join(&sw.name));
            config.switch = SwitchConfig {
                numports: u16::try_from(sw.numports).unwrap_or(u16::MAX),
                hub: sw.hub,
                ..SwitchConfig::default()
            };
            let run = SwitchRun {
                name: sw.name.clone(),
                mgmt: private.join(format!("{}.mgmt", sw.name)),
                pcap: private.join(format!("{}.pcap", sw.name)),
                trace: private.join(format!("{}.trace", sw.name)),
                thread: None,
                relabel: BTreeMap::new(),
                pulled: BTreeMap::new(),
            };
            config.mgmt = Some(run.mgmt.clone());
            config.pcap = Some(run.pcap.clone());
            config.trace = Some(run.trace.clone());
            // No rc file from the user's home: the lab alone configures the switch.
            config.rcfile = Some(PathBuf::from("/dev/null"));
            // `link` steps pull cables through the management console.
            config.cable_command = true;
            let daemon = Daemon::bind(config, LogTarget::Stderr).map_err(|e| BackendError::Io {
                context: format!("switch {}", sw.name),
                source: std::io::Error::other(e.to_string()),
            })?;
            let thread = std::thread::Builder::new()
                .name(format!("switch {}", sw.name))
                .spawn(move || daemon.run())
                .map_err(io("start switch thread"))?;
            self.switches.push(SwitchRun {
                thread: Some(thread),
                ..run
            });
        }
        Ok(())
    }

    fn boot(&mut self, machines: &[String], timeout: Duration) -> Result<(), BackendError> {
        let lab = self.lab.clone().ok_or_else(|| BackendError::Io {
            context: "uml backend".into(),
            source: std::io::Error::other("start() was not called"),
        })?;
        let linux = self.linux.clone().unwrap_or_default();
        // Start all at once (they boot in parallel), from this thread: the
        // parent-death signal is tied to the thread that spawns.
        let mut nics = Vec::new();
        // Nothing starts if one of them still runs.
        for name in machines {
            if let Some(m) = self.machines.get_mut(name) {
                if m.status().is_none() {
                    return Err(still_running(name, m));
                }
            }
        }
        for name in machines {
            self.retire(name);
        }
        for name in machines {
            let spec = lab
                .machines
                .iter()
                .find(|m| &m.name == name)
                .ok_or_else(|| BackendError::UnknownMachine(name.clone()))?;
            let config = MachineConfig {
                name: name.clone(),
                linux: linux.clone(),
                cwd: lab.run_dir.clone(),
                argv: spec.argv.clone(),
                sandbox: self.sandbox.clone(),
                tmpdir: self.mem_dir.as_ref().map(|d| d.path().to_path_buf()),
            };
            let t = self.phases.start();
            let m = Machine::start(&config).map_err(machine_error)?;
            self.phases.done(t, format_args!("boot {name}: started"));
            nics.push(vde_nics(&spec.argv));
            self.machines.insert(name.clone(), m);
        }
        let deadline = std::time::Instant::now() + timeout;
        for (name, &nics) in machines.iter().zip(&nics) {
            let t = self.phases.start();
            let m = self.machine(name)?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if nics > 0 {
                m.wait_console_count(VDE_CONNECTED, nics, left);
            }
            let own_init = super::args::first_value(m.argv(), "init=")
                .is_some_and(|init| init != super::image::INIT_PATH);
            if own_init {
                continue;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ready = m.wait_ready(left);
            self.phases
                .done(t, format_args!("boot {name}: NICs connected, shell ready"));
            let m = self.machine(name)?;
            match ready {
                Ok(()) => {}
                // Exited during boot (e.g. a panic): the console tells why; commands
                // on it will fail with that text.
                Err(_) if m.status().is_some() => {}
                Err(e) => return Err(machine_error(e)),
            }
        }
        if nics.iter().any(|&n| n > 0) {
            self.number_ports_by_boot_list(machines);
        }
        Ok(())
    }

    fn run(
        &mut self,
        machine: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutcome, BackendError> {
        self.record(machine, Shown::Command(command.to_string()));
        let t = self.phases.start();
        let out = self
            .machine(machine)?
            .run(command, timeout)
            .map_err(machine_error);
        self.phases
            .done(t, format_args!("run on {machine}: {command}"));
        out
    }

    fn spawn(&mut self, machine: &str, command: &str) -> Result<JobId, BackendError> {
        self.next_job += 1;
        let id = JobId(self.next_job);
        let out_file = format!("{JOB_FILE_PREFIX}{}", id.0);
        // A subshell in the background (its own process group under job control),
        // output and exit status in files: an interactive shell forgets a finished
        // job once it has reported it, so `wait` alone could lose the status. The
        // subshell traps INT so that, interrupted, it still records the command's
        // status. The shell prints `[1] <pid>` first: the pid is the last line.
        let wrapped = format!(
            "( trap : INT; command eval \"$(printf '{}')\"; echo $? >{out_file}.rc ) >{out_file}.out 2>&1 </dev/null & echo $!",
            command
                .bytes()
                .map(|b| format!("\\{b:03o}"))
                .collect::<String>()
        );
        self.record(machine, Shown::CommandLine(command.to_string()));
        let t = self.phases.start();
        let out = self
            .machine(machine)?
            .run(&wrapped, Duration::from_secs(10))
            .map_err(machine_error)?;
        let pid = out
            .output
            .lines()
            .last()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .ok_or_else(|| BackendError::Machine {
                machine: machine.to_string(),
                message: format!(
                    "background command {command:?} did not start: {}",
                    out.output
                ),
                last_lines: String::new(),
            })?;
        // Settle: return once the job has printed something or ended (tcpdump prints
        // `listening on ...` once its capture is open), at most JOB_SETTLE. On the
        // sim a background command is ready at once; on a loaded host the exec
        // alone can take longer than the next step needs (a capture missing the
        // first frame was seen in CI).
        let settle = format!(
            "i=0; while [ ! -s {out_file}.out ] && [ ! -e {out_file}.rc ] && [ $i -lt {n} ]; do usleep 50000; i=$((i+1)); done",
            n = JOB_SETTLE.as_millis() / 50
        );
        self.phases
            .done(t, format_args!("spawn on {machine}: {command}"));
        let t = self.phases.start();
        self.record(machine, Shown::Hidden);
        self.machine(machine)?
            .run(&settle, JOB_SETTLE + Duration::from_secs(10))
            .map_err(machine_error)?;
        self.phases
            .done(t, format_args!("spawn on {machine}: settle"));
        self.jobs.insert(
            id,
            Job {
                machine: machine.to_string(),
                pid,
                out_file,
            },
        );
        Ok(id)
    }

    fn wait_job(
        &mut self,
        machine: &str,
        job: JobId,
        timeout: Duration,
    ) -> Result<CommandOutcome, BackendError> {
        let Some(j) = self.jobs.remove(&job) else {
            return Err(BackendError::Machine {
                machine: machine.to_string(),
                message: format!("no background job {}", job.0),
                last_lines: String::new(),
            });
        };
        let t = self.phases.start();
        self.record(&j.machine, Shown::Hidden);
        let m = self.machine(&j.machine)?;
        let (pid, f) = (j.pid, &j.out_file);
        // `wait` in the foreground; at the timeout ^C interrupts the wait (the
        // shell traps INT), then the job's process group gets SIGINT.
        let waited = m
            .run(&format!("wait {pid} 2>/dev/null; cat {f}.rc"), timeout)
            .map_err(machine_error)?;
        let (status, interrupted) = if waited.interrupted {
            self.record(&j.machine, Shown::Hidden);
            let m = self.machine(&j.machine)?;
            let again = m
                .run(
                    &format!("kill -INT -{pid} 2>/dev/null; wait {pid} 2>/dev/null; cat {f}.rc"),
                    Duration::from_secs(10),
                )
                .map_err(machine_error)?;
            (again, true)
        } else {
            (waited, false)
        };
        let exit_code = status
            .output
            .trim()
            .parse::<i32>()
            .map_err(|_| BackendError::Machine {
                machine: machine.to_string(),
                message: format!(
                    "background job {} left no exit status: {:?}",
                    job.0, status.output
                ),
                last_lines: String::new(),
            })?;
        self.record(&j.machine, Shown::Output);
        let out = self
            .machine(&j.machine)?
            .run(
                &format!("cat {f}.out; rm -f {f}.out {f}.rc"),
                Duration::from_secs(10),
            )
            .map_err(machine_error)?;
        self.phases
            .done(t, format_args!("wait_job on {}", j.machine));
        Ok(CommandOutcome {
            output: out.output,
            exit_code,
            interrupted,
        })
    }

    fn set_link(&mut self, machine: &str, nic: &str, up: bool) -> Result<(), BackendError> {
        let t = self.phases.start();
        let failed = |message: String| BackendError::Machine {
            machine: machine.to_string(),
            message,
            last_lines: String::new(),
        };
        let m = self.machine(machine)?;
        let group = m.pid() as i32;
        // The NIC's switch, and its place among the machine's NICs on that switch
        // (they connect, and get their ports, in NIC order).
        let vde: Vec<(String, String)> = m
            .argv()
            .iter()
            .take_while(|a| *a != "--")
            .filter_map(|a| {
                let (dev, value) = a.split_once('=')?;
                let rest = value.strip_prefix("vde,")?;
                let switch = rest.split(',').next()?;
                Some((dev.to_string(), switch.to_string()))
            })
            .collect();
        let Some(switch) = vde.iter().find(|(d, _)| d == nic).map(|(_, s)| s.clone()) else {
            return Err(failed(format!(
                "has no {nic} plugged into a switch of the lab"
            )));
        };
        let place = vde
            .iter()
            .filter(|(_, s)| *s == switch)
            .position(|(d, _)| d == nic)
            .unwrap_or(0);
        let Some(sw) = self.switches.iter().find(|s| s.name == switch) else {
            return Err(failed(format!(
                "has no {nic} plugged into a switch of the lab ({switch} is not one)"
            )));
        };
        let mut ports: Vec<u32> = endpoint_pids(&sw.mgmt)
            .map_err(io(format!("switch {switch}: port/allprint")))?
            .into_iter()
            .filter(|&(_, pid)| process_group(pid) == Some(group))
            .map(|(port, _)| port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        // While the cable is out the port has no endpoint: the port found for the
        // NIC then is the one its cable was pulled from.
        let port = match (
            ports.get(place),
            sw.pulled.get(&(machine.to_string(), nic.to_string())),
        ) {
            (_, Some(&p)) => p,
            (Some(&p), None) => p,
            (None, None) => {
                return Err(failed(format!(
                    "{nic} is not connected to switch {switch} (no endpoint of this machine on it)"
                )))
            }
        };
        let reply = mgmt_command(&sw.mgmt, &format!("umltest/cable {port} {}", u8::from(up)))
            .map_err(io(format!("switch {switch}: umltest/cable")))?;
        if !reply.contains("1000 Success") {
            return Err(failed(format!(
                "switch {switch} refused to {} the cable of port {port}: {}",
                if up { "put back" } else { "pull" },
                reply.trim()
            )));
        }
        let key = (machine.to_string(), nic.to_string());
        if let Some(sw) = self.switches.iter_mut().find(|s| s.name == switch) {
            if up {
                sw.pulled.remove(&key);
            } else {
                sw.pulled.insert(key, port);
            }
        }
        self.phases.done(
            t,
            format_args!("link {} {machine} {nic}", if up { "up" } else { "down" }),
        );
        Ok(())
    }

    fn wait_console(
        &mut self,
        machine: &str,
        pattern: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        match self.machine(machine)?.wait_console_text(pattern, timeout) {
            Ok(seen) => Ok(seen),
            // The machine is gone and never showed it.
            Err(MachineError::Failed { .. }) => Ok(false),
            Err(e) => Err(machine_error(e)),
        }
    }

    fn sleep(&mut self, duration: Duration) -> Result<(), BackendError> {
        let t = self.phases.start();
        std::thread::sleep(duration);
        self.phases.done(t, format_args!("sleep {duration:?}"));
        Ok(())
    }

    fn halt(&mut self, machines: &[String], timeout: Duration) -> Result<(), BackendError> {
        let mut killed = Vec::new();
        // All power off at once, then each is waited for.
        for name in machines {
            self.machine(name)?.request_halt();
        }
        for name in machines {
            let t = self.phases.start();
            let m = self.machine(name)?;
            if m.halt(timeout.max(HALT_TIMEOUT)) == HaltedBy::Killed {
                killed.push(name.clone());
            }
            self.phases.done(t, format_args!("halt {name}"));
        }
        if killed.is_empty() {
            return Ok(());
        }
        Err(BackendError::Machine {
            machine: killed.join(", "),
            message: "did not halt (neither `poweroff -f` in the guest nor mconsole `halt`); killed as a last resort".into(),
            last_lines: String::new(),
        })
    }

    fn kill(&mut self, machine: &str) -> Result<(), BackendError> {
        self.machine(machine)?.kill();
        Ok(())
    }

    fn finish(&mut self) -> Result<BackendArtifacts, BackendError> {
        let t = self.phases.start();
        let run_dir = self.run_dir();
        for m in self.machines.values_mut() {
            m.request_halt();
        }
        for (name, m) in &mut self.machines {
            if m.halt(HALT_TIMEOUT) == HaltedBy::Killed {
                self.notes
                    .push(format!("{name}: did not halt at the end; killed"));
            }
        }
        self.stop_switches();
        let mut artifacts = BackendArtifacts::default();
        for (name, m) in &self.machines {
            let commands = self.commands.get(name).map(Vec::as_slice).unwrap_or(&[]);
            let mut text = self.earlier.get(name).cloned().unwrap_or_default();
            text.push_str(&transcript(&m.console_bytes(), commands));
            artifacts.consoles.insert(name.clone(), text);
        }
        for sw in &self.switches {
            let records = read_capture(&sw.pcap, &sw.trace)
                .map_err(io(format!("read the capture of switch {}", sw.name)))?;
            let records = match &self.capture {
                Some(types) => records
                    .into_iter()
                    .filter(|r| {
                        r.frame
                            .get(12..14)
                            .is_some_and(|t| types.contains(&u16::from_be_bytes([t[0], t[1]])))
                    })
                    .collect(),
                None => records,
            };
            let relabel = |p: u32| sw.relabel.get(&p).copied().unwrap_or(p);
            let records = records
                .into_iter()
                .map(|mut r| {
                    r.in_port = relabel(r.in_port);
                    r.out_ports = r.out_ports.into_iter().map(relabel).collect();
                    r.out_ports.sort_unstable();
                    r
                })
                .collect();
            artifacts.traces.insert(sw.name.clone(), records);
        }
        self.phases.done(t, format_args!("finish"));
        run_dir?;
        if !self.notes.is_empty() {
            return Err(BackendError::Machine {
                machine: String::new(),
                message: self.notes.join("; "),
                last_lines: String::new(),
            });
        }
        Ok(artifacts)
    }
}

impl Drop for UmlBackend {
    fn drop(&mut self) {
        // Machines kill themselves on drop; the switch threads need a shutdown.
        self.machines.clear();
        self.stop_switches();
    }
}

/// The console artifact: the raw console with `\r\n` as `\n`, each protocol
/// exchange shown as [`Shown`] says (`# <command>` for the begin marker of a
/// scenario command), the end markers dropped.
pub fn transcript(raw: &[u8], commands: &[Shown]) -> String {
    let text = console::normalize_newlines(&String::from_utf8_lossy(raw));
    let mut out = String::with_capacity(text.len());
    let mut hiding = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if let Some(n) = bare.strip_prefix("UMLTEST-BEGIN-") {
            if let Some(shown) = n
                .parse::<usize>()
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| commands.get(i))
            {
                hiding = None;
                match shown {
                    Shown::Command(cmd) => out.push_str(&format!("# {cmd}\n")),
                    Shown::CommandLine(cmd) => {
                        out.push_str(&format!("# {cmd}\n"));
                        hiding = Some(format!("UMLTEST-END-{n}:"));
                    }
                    Shown::Output => {}
                    Shown::Hidden => hiding = Some(format!("UMLTEST-END-{n}:")),
                }
                continue;
            }
        }
        if let Some(end) = &hiding {
            if bare.starts_with(end.as_str()) {
                hiding = None;
            }
            continue;
        }
        if bare.starts_with("UMLTEST-END-") {
            // The marker brings its own leading newline: taken off, output
            // without a final newline runs into the next command line
            // (`a# echo b`), as on a console with a `# ` prompt and in the sim.
            if out.ends_with('\n') {
                out.pop();
            }
            continue;
        }
        // The shell's job-control notice about the harness's job wrapper
        // (`[1]+  Done  (trap : INT; ...)`) is bookkeeping, not the scenario's.
        if bare.starts_with('[') && bare.contains(JOB_FILE_PREFIX) {
            continue;
        }
        // The harness init's readiness marker is the harness's, not the lab's.
        if bare == super::image::SHELL_READY {
            continue;
        }
        out.push_str(line);
    }
    out
}

/// Reads a daemon's pcap and trace files back into records: the n-th pcap record
/// is the frame of the n-th trace line (`<seq> <time> port <in> -> <outs>: ...`).
pub fn read_capture(pcap: &Path, trace: &Path) -> std::io::Result<Vec<TraceRecord>> {
    let bytes = match std::fs::read(pcap) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    let frames = parse_pcap(&bytes);
    let mut records = Vec::new();
    for (frame, line) in frames.into_iter().zip(text.lines()) {
        let Some((time, in_port, out_ports)) = parse_trace_head(line) else {
            continue;
        };
        records.push(TraceRecord {
            time,
            in_port,
            out_ports,
            frame,
        });
    }
    Ok(records)
}

/// The frames of a classic little-endian pcap file (truncated records end it).
pub fn parse_pcap(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    if bytes.get(..4) != Some(&0xa1b2_c3d4u32.to_le_bytes()[..]) {
        return frames;
    }
    let mut at = 24;
    while let Some(head) = bytes.get(at..at + 16) {
        let incl = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
        let Some(frame) = bytes.get(at + 16..at + 16 + incl) else {
            break;
        };
        frames.push(frame.to_vec());
        at += 16 + incl;
    }
    frames
}

/// `<seq> <secs.micros> port <in> -> <a,b|->: ...` → (time, in, outs).
pub fn parse_trace_head(line: &str) -> Option<(Duration, u32, Vec<u32>)> {
    let (head, _) = line.split_once(": ")?;
    let words: Vec<&str> = head.split(' ').collect();
    let [_seq, time, "port", in_port, "->", outs] = words.as_slice() else {
        return None;
    };
    let (secs, micros) = time.split_once('.')?;
    let time =
        Duration::from_secs(secs.parse().ok()?) + Duration::from_micros(micros.parse().ok()?);
    let out_ports = if *outs == "-" {
        Vec::new()
    } else {
        outs.split(',')
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<u32>>>()?
    };
    Some((time, in_port.parse().ok()?, out_ports))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn trace_heads_parse() {
        let line = "3 0.001000 port 1 -> 2,3: fe:fd:00:00:00:01 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 58: Request";
        assert_eq!(
            parse_trace_head(line),
            Some((Duration::from_micros(1000), 1, vec![2, 3]))
        );
        assert_eq!(
            parse_trace_head("1 2.000001 port 4 -> -: x"),
            Some((Duration::from_micros(2_000_001), 4, vec![]))
        );
        assert_eq!(parse_trace_head("garbage"), None);
    }

    #[test]
    fn pcap_frames_are_read_and_truncation_stops() {
        let mut p = 0xa1b2_c3d4u32.to_le_bytes().to_vec();
        p.resize(24, 0);
        for frame in [&[1u8, 2, 3][..], &[4u8][..]] {
            p.extend_from_slice(&[0; 8]);
            p.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            p.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            p.extend_from_slice(frame);
        }
        assert_eq!(parse_pcap(&p), vec![vec![1, 2, 3], vec![4]]);
        assert_eq!(parse_pcap(&p[..p.len() - 1]), vec![vec![1, 2, 3]]);
        assert!(parse_pcap(b"nope").is_empty());
    }

    #[test]
    fn transcript_shows_commands_and_drops_markers() {
        let raw = b"boot\r\nUMLTEST-SHELL-READY\r\nUMLTEST-BEGIN-1\r\nhi\r\n\r\nUMLTEST-END-1:0\r\nUMLTEST-BEGIN-2\r\n\r\nUMLTEST-END-2:1\r\n";
        assert_eq!(
            transcript(
                raw,
                &[
                    Shown::Command("echo hi".into()),
                    Shown::Command("false".into())
                ]
            ),
            "boot\n# echo hi\nhi\n# false\n"
        );
        // Output without a final newline: the next command line follows it.
        let raw = b"UMLTEST-BEGIN-1\r\na\r\nUMLTEST-END-1:0\r\nUMLTEST-BEGIN-2\r\nb\r\n\r\nUMLTEST-END-2:0\r\n";
        assert_eq!(
            transcript(
                raw,
                &[
                    Shown::Command("echo -n a".into()),
                    Shown::Command("echo b".into())
                ]
            ),
            "# echo -n a\na# echo b\nb\n"
        );
        // A background job: its line, not the wrapper's pid; the harness's waits
        // hidden; the job's output where it was collected.
        let raw = b"UMLTEST-BEGIN-1\r\n[1] 697\r\n697\r\n\r\nUMLTEST-END-1:0\r\nUMLTEST-BEGIN-2\r\n\r\nUMLTEST-END-2:0\r\nkernel line\r\n[1]+  Done  (trap : INT; echo ${?} 1>/tmp/umltest-job-1.rc)\r\nUMLTEST-BEGIN-3\r\n0\r\n\r\nUMLTEST-END-3:0\r\nUMLTEST-BEGIN-4\r\nlistening\r\n\r\nUMLTEST-END-4:0\r\n";
        assert_eq!(
            transcript(
                raw,
                &[
                    Shown::CommandLine("tcpdump".into()),
                    Shown::Hidden,
                    Shown::Hidden,
                    Shown::Output
                ]
            ),
            "# tcpdump\nkernel line\nlistening\n"
        );
    }

    #[test]
    fn allprint_gives_ports_and_endpoint_pids() {
        let text = "0000 DATA END WITH '.'\nPort 0001 untagged_vlan=0000 ACTIVE - Unnamed Allocatable\n Current User: root Access Control: (User: NONE - Group: NONE)\n IN:  pkts          0          bytes                    0\n  -- endpoint ID 0003 module unix prog   : UML vde_transport user=root pid=31870\nPort 0002 untagged_vlan=0000 ACTIVE\n  -- endpoint ID 0007 module unix prog   : no endpoint description\nPort 0005 x\n  -- endpoint ID 0009 module unix prog   : d pid=12\n.\n1000 Success\n";
        assert_eq!(parse_allprint(text), vec![(1, 31870), (5, 12)]);
        assert_eq!(
            process_group(std::process::id()),
            Some(nix::unistd::getpgrp().as_raw())
        );
    }

    #[test]
    fn fixed_ports_are_the_vde_nics_asking_for_a_number() {
        let argv: Vec<String> = [
            "mem=64M",
            "eth0=vde,sw1,,5",
            "eth1=vde,./sw2/",
            "eth2=vde,sw3,fe:fd:00:00:00:01,7",
            "eth3=tuntap,tap0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            fixed_ports(&argv),
            [("sw1".to_string(), 5), ("sw3".to_string(), 7)]
        );
    }

    #[test]
    fn vde_nics_are_recognised() {
        let w = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(uses_vde(&w("mem=64M eth0=vde,sw1")));
        assert!(!uses_vde(&w("eth0=daemon eth1=vdex")));
        assert!(!uses_vde(&w("-- eth0=vde,sw1")));
    }

    proptest! {
        #[test]
        fn capture_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), line in "\\PC*") {
            let _ = parse_pcap(&bytes);
            let _ = parse_trace_head(&line);
            let _ = transcript(&bytes, &[]);
            let _ = parse_allprint(&line);
        }
    }
}
