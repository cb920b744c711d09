//! One real `linux.uml` process: start, wait for its shell, run commands over the
//! console pipes, halt, and clean up.
//!
//! Process hygiene: the machine runs in its own process group (UML's helpers, such
//! as `vde_plug`, join it), with `PR_SET_PDEATHSIG` (SIGTERM) so the kernel stops it
//! when the thread that started it dies (umltest killed, Ctrl-C, a panic); the
//! harness itself always kills the whole group, never only the main process.
//! UML's SIGTERM handler usually kills its helpers, but not always (two helper
//! processes survived some runs, reparented to init), so each machine also gets a
//! watchdog in its process group: `sh -c 'read _; kill -KILL 0'` reading a pipe
//! only the harness holds. When the harness dies, however it dies, the pipe reaches
//! EOF and the watchdog kills the whole group, itself included. Halting is
//! graceful first (`sync; poweroff -f` in the guest shell, then mconsole `halt`);
//! the process group is killed only as a last resort, and the halt report says so.
//! Dropping a [`Machine`] kills whatever is still running.
//!
//! Start machines from a long-lived thread: the parent-death signal fires when the
//! *thread* that spawned the process exits.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::console::{self, EncodeError};
use super::guest::{find_program, MissingTool};
use super::mconsole::{self, MconsoleError};
use super::sandbox::Sandbox;
use crate::scenario::backend::CommandOutcome;

/// How long a command gets to finish after its ^C before the machine is declared stuck.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);
/// How long the shell may take to start a command before its timeout starts.
const START_GRACE: Duration = Duration::from_secs(10);
/// Lines of console shown in error messages.
const LAST_LINES: usize = 25;
/// How long a kernel restarted by `reboot -f` may take to bring up its shell.
const RESTART_BOOT: Duration = Duration::from_secs(60);

/// How a command's exchange ended.
enum Ended {
    Done(console::Exchange),
    /// The kernel restarted (`reboot -f`): the output before its line, and
    /// where the line is in the console.
    Restarted(String, usize),
}

/// The kernel's line when reboot(2) halts it.
const HALTED_LINE: &str = "reboot: System halted";

/// The kernel's restart line after exchange `begin`'s marker line in
/// `console[from..]`: the output before it, and its offset in `console`.
fn restarted(console: &[u8], from: usize, begin: &str) -> Option<(String, usize)> {
    after_begin(
        console,
        from,
        begin,
        crate::sim::world::RESTART_LINE.trim_end(),
    )
}

/// `line` after exchange `begin`'s marker line in `console[from..]`: the
/// output before it, and its offset in `console`.
fn after_begin(console: &[u8], from: usize, begin: &str, line: &str) -> Option<(String, usize)> {
    let hay = console.get(from..)?;
    let begin_at = find(hay, begin.as_bytes())?;
    let out_start = begin_at + hay.get(begin_at..)?.iter().position(|&b| b == b'\n')? + 1;
    let line = line.as_bytes();
    let at = out_start + find(hay.get(out_start..)?, line)?;
    let raw = hay.get(out_start..at)?;
    Some((
        console::normalize_newlines(&String::from_utf8_lossy(raw)),
        from + at,
    ))
}

/// Polling period for process exit while waiting on the console (the console
/// itself wakes waiters immediately).
const POLL: Duration = Duration::from_millis(50);

/// Machine driver failures; each carries the console's last lines.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    MissingTool(#[from] MissingTool),
    #[error("machine {machine}: cannot start {program}: {source}")]
    Spawn {
        machine: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("machine {machine}: {message}\nlast console lines:\n{last_lines}")]
    Failed {
        machine: String,
        message: String,
        last_lines: String,
    },
    #[error("machine {machine}: {source}")]
    Encode {
        machine: String,
        #[source]
        source: EncodeError,
    },
    #[error("machine {machine}: {context}: {source}")]
    Io {
        machine: String,
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What to start.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub name: String,
    /// `linux.uml`.
    pub linux: PathBuf,
    /// The run folder: the process's working directory.
    pub cwd: PathBuf,
    /// The effective argv (after [`super::args::effective_argv`]).
    pub argv: Vec<String>,
    /// The Landlock domain the process (and all it starts) runs in; `None`:
    /// unconfined (`umltest run --unconfined`, interop helpers).
    pub sandbox: Option<Arc<Sandbox>>,
    /// `TMPDIR` for UML's memory file (it must be a directory the sandbox allows).
    pub tmpdir: Option<PathBuf>,
}

impl MachineConfig {
    /// A config for `linux.uml` found on PATH.
    pub fn new(name: &str, cwd: &Path, argv: Vec<String>) -> Result<Self, MissingTool> {
        Ok(Self {
            name: name.to_string(),
            linux: super::guest::require_program("linux.uml", "user-mode-linux")?,
            cwd: cwd.to_path_buf(),
            argv,
            sandbox: None,
            tmpdir: None,
        })
    }
}

/// How a machine was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltedBy {
    /// It had already exited.
    AlreadyDown,
    /// `sync; poweroff -f` in the guest's shell.
    Guest,
    /// mconsole `halt`.
    Mconsole,
    /// SIGKILL to its process group: neither the guest nor mconsole stopped it.
    Killed,
}

#[derive(Default)]
struct ConsoleState {
    /// Capped at [`crate::scenario::backend::CONSOLE_CAP`] (see [`console::Transcript`]).
    bytes: console::Transcript,
    /// Reader threads still running (stdout, stderr).
    open: u8,
}

/// The console transcript, appended by reader threads.
#[derive(Default)]
struct ConsoleBuf {
    state: Mutex<ConsoleState>,
    cond: Condvar,
}

impl ConsoleBuf {
    fn append(&self, data: &[u8]) {
        if let Ok(mut s) = self.state.lock() {
            s.bytes.append(data);
        }
        self.cond.notify_all();
    }
    fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.open = s.open.saturating_sub(1);
        }
        self.cond.notify_all();
    }
    fn snapshot(&self) -> Vec<u8> {
        self.state
            .lock()
            .map(|s| s.bytes.finish())
            .unwrap_or_default()
    }
}

/// A running (or finished) `linux.uml`.
pub struct Machine {
    name: String,
    argv: Vec<String>,
    cwd: PathBuf,
    child: Child,
    pgid: i32,
    stdin: Option<ChildStdin>,
    console: Arc<ConsoleBuf>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// The watchdog (see the module doc); dropping its stdin would fire it.
    watchdog: Option<Child>,
    status: Option<ExitStatus>,
    shell_ready: bool,
    halt_requested: bool,
    seq: u64,
    /// Transcript offset after the last finished exchange.
    read_from: usize,
}

enum Wait<T> {
    Found(T),
    Exited,
    Timeout,
}

impl Machine {
    /// Starts `linux.uml ARGV` in the run folder, with address randomisation off
    /// (`setarch <arch> -R`), console on pipes. Returns at once; see [`Self::wait_ready`].
    pub fn start(config: &MachineConfig) -> Result<Self, MachineError> {
        let mut cmd = match find_program("setarch") {
            Some(setarch) => {
                let mut c = Command::new(setarch);
                c.arg(std::env::consts::ARCH).arg("-R").arg(&config.linux);
                c
            }
            None => Command::new(&config.linux),
        };
        cmd.args(&config.argv)
            .current_dir(&config.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(dir) = &config.tmpdir {
            // UML makes its memory file in $TMPDIR (arch/um/os-Linux/mem.c).
            cmd.env("TMPDIR", dir);
        }
        let sandbox = config.sandbox.clone();
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; it makes the kernel
        // signal the machine when the thread that started it dies. SIGTERM, not
        // SIGKILL: UML's SIGTERM handler kills its helper processes and removes its
        // umid dir, while after a SIGKILL two helpers survive, reparented to init
        // (seen with 6.1.176; `a_killed_harness_leaves_no_linux_uml_behind`).
        // `restrict_self` makes two syscalls on a ruleset built before the fork.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                match &sandbox {
                    Some(s) => s.restrict_self(),
                    None => Ok(()),
                }
            });
        }
        let mut child = cmd.spawn().map_err(|source| MachineError::Spawn {
            machine: config.name.clone(),
            program: config.linux.clone(),
            source,
        })?;
        let pgid = child.id() as i32;
        let console = Arc::new(ConsoleBuf::default());
        let mut readers = Vec::new();
        let pipes: Vec<Box<dyn Read + Send>> = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Ok(mut s) = console.state.lock() {
            s.open = pipes.len() as u8;
        }
        for mut pipe in pipes {
            let console = Arc::clone(&console);
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => console.append(buf.get(..n).unwrap_or_default()),
                    }
                }
                console.close();
            }));
        }
        let watchdog = start_watchdog(pgid);
        Ok(Self {
            name: config.name.clone(),
            argv: config.argv.clone(),
            cwd: config.cwd.clone(),
            watchdog,
            stdin: child.stdin.take(),
            child,
            pgid,
            console,
            readers,
            status: None,
            shell_ready: false,
            halt_requested: false,
            seq: 0,
            read_from: 0,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The effective argv it runs with.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The host pid of the UML main process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exit status, once the process has exited.
    pub fn status(&mut self) -> Option<ExitStatus> {
        self.poll_exit();
        self.status
    }

    fn poll_exit(&mut self) -> bool {
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                // UML's helpers (vde_plug, ...) may outlive it in the group.
                self.killpg();
            }
        }
        self.status.is_some()
    }

    fn killpg(&self) {
        // SAFETY: plain syscall on the process group this machine created.
        unsafe {
            libc::killpg(self.pgid, libc::SIGKILL);
        }
    }

    /// Waits until `check` finds something in the transcript, the process exits,
    /// or the deadline passes. `check` runs with the console locked, on every
    /// append: it should look only at what it has not seen (see [`Scan`]).
    fn wait_for<T>(
        &mut self,
        deadline: Instant,
        mut check: impl FnMut(&[u8]) -> Option<T>,
    ) -> Wait<T> {
        let console = Arc::clone(&self.console);
        loop {
            let closed = {
                let Ok(state) = console.state.lock() else {
                    return Wait::Exited;
                };
                if let Some(found) = check(state.bytes.bytes()) {
                    return Wait::Found(found);
                }
                let now = Instant::now();
                if now >= deadline {
                    return Wait::Timeout;
                }
                let wait = POLL.min(deadline - now);
                match console.cond.wait_timeout(state, wait) {
                    Ok((state, _)) => {
                        if let Some(found) = check(state.bytes.bytes()) {
                            return Wait::Found(found);
                        }
                        state.open == 0
                    }
                    Err(_) => return Wait::Exited,
                }
            };
            if self.poll_exit() || closed {
                // Let the readers drain what the process wrote last.
                self.join_readers_briefly();
                let bytes = self.console.snapshot();
                return match check(&bytes) {
                    Some(found) => Wait::Found(found),
                    None => Wait::Exited,
                };
            }
        }
    }

    /// After the process exited (or its console closed): reap it, kill leftovers
    /// of its group, and give the readers a moment to drain the pipes. A reader
    /// kept blocked by a helper that left the group is detached, not waited for.
    fn join_readers_briefly(&mut self) {
        if self.status.is_none() {
            self.killpg();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for r in self.readers.drain(..) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    fn failure(&mut self, message: String) -> MachineError {
        let bytes = self.console.snapshot();
        let mut message = message;
        if let Some(panic) = console::panic_text(&bytes) {
            message = format!("{message}: the kernel panicked:\n{panic}");
        }
        MachineError::Failed {
            machine: self.name.clone(),
            message,
            last_lines: console::last_lines(&bytes, LAST_LINES),
        }
    }

    fn exit_text(&mut self) -> String {
        match self.status {
            Some(s) => format!("linux.uml exited ({s})"),
            None => "linux.uml closed its console".into(),
        }
    }

    /// Waits for the harness init's shell (its readiness marker on the console).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), MachineError> {
        self.wait_console_text(super::image::SHELL_READY, timeout)?
            .then_some(())
            .ok_or_else(|| self.failure(format!("no shell within {timeout:?}")))?;
        self.shell_ready = true;
        let bytes = self.console.snapshot();
        if let Some(at) = find(&bytes, super::image::SHELL_READY.as_bytes()) {
            self.read_from = at;
        }
        Ok(())
    }

    /// Waits until the console shows `pattern`; false at the timeout. An exit of
    /// the machine before it shows is an error (with the panic text, if any).
    pub fn wait_console_text(
        &mut self,
        pattern: &str,
        timeout: Duration,
    ) -> Result<bool, MachineError> {
        let needle = pattern.as_bytes().to_vec();
        let mut scan = Scan::default();
        match self.wait_for(Instant::now() + timeout, |b| scan.find(b, 0, &needle)) {
            Wait::Found(_) => Ok(true),
            Wait::Timeout => Ok(false),
            Wait::Exited => {
                let why = self.exit_text();
                Err(self.failure(format!("{why} before the console showed {pattern:?}")))
            }
        }
    }

    /// Waits until `pattern` has appeared `count` times on the console; false at the
    /// timeout or when the machine exits first.
    pub fn wait_console_count(&mut self, pattern: &str, count: usize, timeout: Duration) -> bool {
        let needle = pattern.as_bytes().to_vec();
        // Counted incrementally: a match starting within a needle's length
        // of the old end was not complete before.
        let (mut scanned, mut n) = (0usize, 0usize);
        let check = |b: &[u8]| {
            if !needle.is_empty() {
                let start = scanned.saturating_sub(needle.len() - 1).min(b.len());
                n += b
                    .get(start..)
                    .unwrap_or_default()
                    .windows(needle.len())
                    .filter(|w| *w == needle.as_slice())
                    .count();
                scanned = b.len();
            }
            (n >= count).then_some(())
        };
        matches!(
            self.wait_for(Instant::now() + timeout, check),
            Wait::Found(())
        )
    }

    /// Waits for the process to exit by itself; false at the timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.poll_exit() {
                self.join_readers_briefly();
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL.min(deadline - Instant::now()));
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), MachineError> {
        let name = self.name.clone();
        let stdin = self.stdin.as_mut().ok_or_else(|| MachineError::Io {
            machine: name.clone(),
            context: "console input",
            source: std::io::Error::other("console input already closed"),
        })?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .map_err(|source| MachineError::Io {
                machine: name,
                context: "write to the console",
                source,
            })
    }

    /// Runs `command` in the guest shell. At `timeout` it gets ^C (SIGINT), and
    /// what it printed until then and its exit code (130 if SIGINT killed it) are
    /// returned with `interrupted` set.
    pub fn run(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutcome, MachineError> {
        if !self.shell_ready {
            return Err(self.failure(format!(
                "cannot run {command:?}: no harness shell (own init=, or not booted)"
            )));
        }
        self.seq += 1;
        let seq = self.seq;
        let line =
            console::encode_command(command, seq).map_err(|source| MachineError::Encode {
                machine: self.name.clone(),
                source,
            })?;
        self.write(line.as_bytes())?;
        let from = self.read_from;
        let mut interrupted = false;
        // The timeout counts from the moment the shell starts the command (its
        // begin marker), not from the write: a loaded host can take a while to
        // schedule the guest, and a step's timeout is about the command.
        let begin = console::begin_marker(seq);
        let mut scan = Scan::default();
        let begun = self.wait_for(Instant::now() + timeout + START_GRACE, |b| {
            scan.find(b, from, begin.as_bytes()).map(|_| ())
        });
        if let Wait::Exited = begun {
            let why = self.exit_text();
            return Err(self.failure(format!("{why} while running {command:?}")));
        }
        let mut deadline = Instant::now() + timeout;
        // The whole exchange is parsed only once its end marker is there, and
        // a restart only once the kernel's restart line is: each read scans
        // only new bytes, not a 16 MiB console again.
        let end = console::end_marker(seq);
        let restart_line = crate::sim::world::RESTART_LINE.trim_end();
        let mut end_scan = Scan::default();
        let mut restart_scan = Scan::default();
        let (mut ended, mut restart_seen) = (false, false);
        loop {
            let check = |b: &[u8]| {
                ended = ended || end_scan.find(b, from, end.as_bytes()).is_some();
                if ended {
                    if let Some(ex) = console::find_exchange(b, from, seq) {
                        return Some(Ended::Done(ex));
                    }
                }
                restart_seen = restart_seen
                    || restart_scan
                        .find(b, from, restart_line.as_bytes())
                        .is_some();
                if restart_seen {
                    restarted(b, from, &begin).map(|(out, at)| Ended::Restarted(out, at))
                } else {
                    None
                }
            };
            match self.wait_for(deadline, check) {
                Wait::Found(Ended::Done(ex)) => {
                    self.read_from = ex.end;
                    return Ok(CommandOutcome {
                        output: ex.output,
                        exit_code: ex.exit_code,
                        interrupted,
                    });
                }
                Wait::Found(Ended::Restarted(output, at)) => {
                    // `reboot -f`: the kernel re-execs in this process and the
                    // harness init starts a new shell; the command line never
                    // reports a status.
                    let mut scan = Scan::default();
                    return match self.wait_for(Instant::now() + RESTART_BOOT, |b| {
                        scan.find(b, at, super::image::SHELL_READY.as_bytes())
                    }) {
                        Wait::Found(ready) => {
                            self.read_from = ready;
                            Ok(CommandOutcome {
                                output,
                                exit_code: 0,
                                interrupted,
                            })
                        }
                        Wait::Timeout => Err(self.failure(format!(
                            "no shell within {RESTART_BOOT:?} after {command:?} restarted the kernel"
                        ))),
                        Wait::Exited => {
                            let why = self.exit_text();
                            Err(self.failure(format!(
                                "{why} while booting again after {command:?} restarted the kernel"
                            )))
                        }
                    };
                }
                Wait::Timeout if !interrupted => {
                    // ^C on the console tty: SIGINT to the foreground job, like a user.
                    self.write(b"\x03")?;
                    interrupted = true;
                    deadline = Instant::now() + INTERRUPT_GRACE;
                }
                Wait::Timeout => {
                    return Err(self.failure(format!(
                        "{command:?} still running {INTERRUPT_GRACE:?} after ^C at its {timeout:?} timeout"
                    )))
                }
                Wait::Exited => {
                    // `halt -f`/`poweroff -f`: the command line ends with the
                    // kernel, which says so; the shell never reports a status.
                    let console = self.console.snapshot();
                    if let Some((output, _)) = after_begin(&console, from, &begin, HALTED_LINE) {
                        return Ok(CommandOutcome {
                            output,
                            exit_code: 0,
                            interrupted,
                        });
                    }
                    let why = self.exit_text();
                    return Err(self.failure(format!("{why} while running {command:?}")));
                }
            }
        }
    }

    /// Writes raw bytes to the console (e.g. for a scenario's own init).
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), MachineError> {
        self.write(bytes)
    }

    /// The mconsole socket of this machine, if its argv names a umid.
    pub fn mconsole_socket(&self) -> Option<PathBuf> {
        super::args::mconsole_socket(&self.argv, &self.cwd)
    }

    /// An mconsole command to this machine.
    pub fn mconsole(&self, command: &str) -> Result<mconsole::Reply, MconsoleError> {
        let socket = self
            .mconsole_socket()
            .ok_or_else(|| MconsoleError::NotFound(self.name.clone(), "no umid=".into()))?;
        mconsole::Client::connect(&socket)?.command(command, Duration::from_secs(5))
    }

    /// Starts a graceful halt without waiting (`sync; poweroff -f` to the shell), so
    /// several machines can power off at once; [`Self::halt`] then waits.
    pub fn request_halt(&mut self) {
        if self.shell_ready && !self.halt_requested && !self.poll_exit() {
            self.halt_requested = self.write(b"sync; poweroff -f\n").is_ok();
        }
    }

    /// Halts gracefully: `sync; poweroff -f` through the shell, else mconsole
    /// `halt`, each given `timeout`; SIGKILL only as a last resort.
    pub fn halt(&mut self, timeout: Duration) -> HaltedBy {
        if self.poll_exit() {
            self.join_readers_briefly();
            return HaltedBy::AlreadyDown;
        }
        self.request_halt();
        if self.halt_requested && self.wait_exit(timeout) {
            return HaltedBy::Guest;
        }
        if self.mconsole("halt").is_ok() && self.wait_exit(timeout) {
            return HaltedBy::Mconsole;
        }
        self.kill();
        HaltedBy::Killed
    }

    /// Kills the machine's process group (fault injection, or the last resort).
    pub fn kill(&mut self) {
        self.killpg();
        self.join_readers_briefly();
    }

    /// The raw console bytes so far.
    pub fn console_bytes(&self) -> Vec<u8> {
        self.console.snapshot()
    }

    /// The console transcript with `\n` line endings, preceded by the effective
    /// command line (the console artifact).
    pub fn transcript(&self) -> String {
        format!(
            "linux.uml {}\n{}",
            self.argv.join(" "),
            console::normalize_newlines(&String::from_utf8_lossy(&self.console.snapshot()))
        )
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !self.poll_exit() {
            self.killpg();
            let _ = self.child.wait();
        }
        self.stdin = None;
        if let Some(mut w) = self.watchdog.take() {
            // Already killed with the group; reap it.
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Starts the watchdog of process group `pgid` (see the module doc). `None` if it
/// cannot join the group (the machine already exited).
fn start_watchdog(pgid: i32) -> Option<Child> {
    let sh = find_program("sh")?;
    Command::new(sh)
        .args(["-c", "read _; kill -KILL 0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(pgid)
        .spawn()
        .ok()
}

/// An incremental search of a growing transcript: each call looks only at
/// bytes the last one did not (plus a needle's length of overlap), so a
/// command printing megabytes costs linear time, not a rescan per read.
#[derive(Default)]
struct Scan {
    scanned: usize,
}

impl Scan {
    /// The position of `needle` in `hay[from..]`, searching only new bytes.
    fn find(&mut self, hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
        let start = self
            .scanned
            .saturating_sub(needle.len())
            .max(from)
            .min(hay.len());
        self.scanned = hay.len();
        find(hay.get(start..)?, needle).map(|i| start + i)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Starts several machines from this thread and waits for all their shells; they
/// boot in parallel because each is its own process. On a failure, the others are
/// dropped (killed).
pub fn start_all(
    configs: &[MachineConfig],
    boot_timeout: Duration,
) -> Result<Vec<Machine>, MachineError> {
    let mut machines = configs
        .iter()
        .map(Machine::start)
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + boot_timeout;
    for m in &mut machines {
        m.wait_ready(deadline.saturating_duration_since(Instant::now()))?;
    }
    Ok(machines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_after_the_begin_marker_ends_the_exchange() {
        let console = b"old\r\nUMLTEST-BEGIN-3\r\ngoing\r\nreboot: Restarting system\r\n\r\nCore dump limits :\r\n";
        let (output, at) = restarted(console, 0, "UMLTEST-BEGIN-3").expect("restart seen");
        assert_eq!(output, "going\n");
        assert!(console[at..].starts_with(b"reboot: Restarting system"));
        // Not before the command began, nor for another exchange.
        assert_eq!(restarted(console, 0, "UMLTEST-BEGIN-4"), None);
        let earlier = b"reboot: Restarting system\r\nUMLTEST-BEGIN-3\r\ngoing\r\n";
        assert_eq!(restarted(earlier, 0, "UMLTEST-BEGIN-3"), None);
        // Only what lies after `from` counts.
        assert_eq!(
            restarted(console, 5, "UMLTEST-BEGIN-3").map(|r| r.1),
            Some(at)
        );
        assert_eq!(
            restarted(console, console.len() + 1, "UMLTEST-BEGIN-3"),
            None
        );
    }
}
