//! The deterministic world: a virtual clock, one event queue ordered by
//! `(time, seq)`, machines with their jobs, and the switches between them.
//!
//! Everything that happens is an event: a frame reaching a switch, a frame
//! reaching a NIC, a program's timer, a machine's neighbour (ARP) timer.
//! Nothing reads the wall clock; every
//! random number comes from a stream derived from the scenario seed; every
//! collection that is iterated is ordered. Same seed, same events, same bytes.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::rc::Rc;
use std::time::Duration;

use crate::net::switch::{PortRequest, Switch as CoreSwitch, SwitchConfig};
use crate::scenario::backend::TraceRecord;
use crate::sim::console::Console;
use crate::sim::disk::Disk;
use crate::sim::rng::{self, Rng};
use crate::sim::shell::{self, Join, Simple, Target};
use crate::sim::stack::Stack;
use crate::sim::tmpfs::{FsError, Tmpfs};

/// Time a frame takes from a NIC into the switch, and from the switch to a NIC.
pub const WIRE_DELAY: Duration = Duration::from_micros(40);
/// Up to this much extra wire time, drawn per frame from the port's stream.
pub const WIRE_JITTER_US: u64 = 20;
/// Time the guest kernel takes to answer an ARP request.
pub const KERNEL_DELAY: Duration = Duration::from_micros(15);

/// Per-port fault injection, applied to frames entering the switch from that port.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PortFaults {
    /// Probability (0..=1) that a frame is lost.
    pub loss: f64,
    /// Probability (0..=1) that a frame is delivered twice.
    pub duplicate: f64,
    /// Extra delay for every frame.
    pub delay: Duration,
}

/// One NIC plugged into a sim switch.
#[derive(Debug)]
pub struct Port {
    /// The VDE port number.
    pub number: u16,
    pub machine: usize,
    pub iface: usize,
    pub faults: PortFaults,
    /// False while the cable is out (scenario `link down`).
    pub connected: bool,
    rng: Rng,
}

/// A lab switch: the shared `net::switch` core (the VDE daemon drives the same
/// one), the NICs plugged into it, and its trace.
#[derive(Debug)]
pub struct Switch {
    pub name: String,
    pub core: CoreSwitch,
    /// Plugged NICs; the endpoint id in the core is the index here.
    pub ports: Vec<Port>,
    pub trace: Vec<TraceRecord>,
    outs: Vec<u16>,
}

impl Switch {
    pub fn new(name: &str, hub: bool, numports: u32) -> Self {
        let config = SwitchConfig {
            numports: u16::try_from(numports).unwrap_or(u16::MAX),
            hub,
            ..SwitchConfig::default()
        };
        Self {
            name: name.into(),
            core: CoreSwitch::new(config),
            ports: Vec::new(),
            trace: Vec::new(),
            outs: Vec::new(),
        }
    }
}

/// The kernel's line when `reboot -f` restarts it (`kernel_restart`).
pub const RESTART_LINE: &str = "reboot: Restarting system\n";

/// What a program asked for during a call.
#[derive(Debug)]
pub enum Effect {
    /// Send a frame on an interface (a packet socket write).
    Send { iface: usize, frame: Vec<u8> },
    /// Start/stop receiving frames of an interface (a packet socket),
    /// promiscuous or not.
    Capture {
        iface: usize,
        on: bool,
        promisc: bool,
    },
    /// Wake the job at this time.
    WakeAt(Duration),
    /// Power the machine off (`halt`, `poweroff`, `shutdown -h now`).
    PowerOff,
    /// Restart the kernel (`reboot -f`): UML's `machine_restart` ends the
    /// kernel and its process re-execs itself with the same argv.
    Restart,
    /// The kernel panics with this line (`Kernel panic - not syncing: ...`).
    Panic(String),
    /// A kernel message for the console.
    Kernel(String),
}

/// The result of a program call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    Exit(i32),
    Pending,
}

/// Where a running program's output goes.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Target0,
    pub stderr: Target0,
}

/// A resolved output target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Target0 {
    #[default]
    Console,
    Null,
    File(String),
}

/// What a program sees of its machine while it runs.
pub struct Sys<'a> {
    pub now: Duration,
    pub m: &'a mut MachineCore,
    fx: &'a mut Vec<Effect>,
    out: &'a Output,
    job_out: &'a mut Console,
}

impl Sys<'_> {
    fn write_bytes(&mut self, target: &Target0, s: &[u8]) -> Result<(), FsError> {
        match target {
            Target0::Console => {
                if self.m.console.is_full() && self.job_out.is_full() {
                    // Both are past the cap: count, do not convert.
                    self.m.console.drop_bytes(s.len() as u64);
                    self.job_out.drop_bytes(s.len() as u64);
                    return Ok(());
                }
                // The console is text: bytes that are not UTF-8 show as U+FFFD.
                let s = String::from_utf8_lossy(s);
                self.job_out.push_str(&s);
                self.m.console.push_str(&s);
                Ok(())
            }
            Target0::Null => Ok(()),
            Target0::File(path) => {
                let n = self.m.files.append(path, s)?;
                if n < s.len() {
                    return Err(FsError::NoSpace);
                }
                Ok(())
            }
        }
    }
    fn write_fill(&mut self, target: &Target0, b: u8, n: u64) -> Result<(), FsError> {
        match target {
            Target0::Console => {
                self.job_out.push_fill(b, n);
                self.m.console.push_fill(b, n);
                Ok(())
            }
            Target0::Null => Ok(()),
            Target0::File(_) => {
                // A full tmpfs stops this within its (bounded) size.
                let chunk = [b; 4096];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    self.write_bytes(target, &chunk[..k])?;
                    left -= k as u64;
                }
                Ok(())
            }
        }
    }
    /// Writes to the program's stdout.
    pub fn out(&mut self, s: &str) {
        let _ = self.out_bytes(s.as_bytes());
    }
    /// Writes bytes to the program's stdout (a file gets them as they are);
    /// a full tmpfs fails the write.
    pub fn out_bytes(&mut self, s: &[u8]) -> Result<(), FsError> {
        let t = self.out.stdout.clone();
        self.write_bytes(&t, s)
    }
    /// Writes `n` copies of byte `b` to stdout without building them (padding
    /// of `printf '%2147483647d'`).
    pub fn out_fill(&mut self, b: u8, n: u64) -> Result<(), FsError> {
        let t = self.out.stdout.clone();
        self.write_fill(&t, b, n)
    }
    /// True when bytes written to stdout now are lost anyway (`/dev/null`, or
    /// a console past its cap): a program may count them instead of making them.
    pub fn stdout_discards(&self) -> bool {
        match &self.out.stdout {
            Target0::Null => true,
            Target0::Console => self.m.console.is_full() && self.job_out.is_full(),
            Target0::File(_) => false,
        }
    }
    /// Counts `n` bytes written to a discarding stdout ([`Sys::stdout_discards`]).
    pub fn out_discarded(&mut self, n: u64) {
        if self.out.stdout == Target0::Console {
            self.m.console.drop_bytes(n);
            self.job_out.drop_bytes(n);
        }
    }
    /// Writes to the program's stderr.
    pub fn err(&mut self, s: &str) {
        let t = self.out.stderr.clone();
        let _ = self.write_bytes(&t, s.as_bytes());
    }
    /// What the shell itself prints on the console (`Killed`), whatever the
    /// command's redirections.
    pub fn shell_msg(&mut self, s: &str) {
        let _ = self.write_bytes(&Target0::Console, s.as_bytes());
    }
    pub fn send(&mut self, iface: usize, frame: Vec<u8>) {
        self.fx.push(Effect::Send { iface, frame });
    }
    pub fn capture(&mut self, iface: usize, on: bool, promisc: bool) {
        self.fx.push(Effect::Capture { iface, on, promisc });
    }
    pub fn wake_at(&mut self, at: Duration) {
        self.fx.push(Effect::WakeAt(at));
    }
    pub fn power_off(&mut self) {
        self.fx.push(Effect::PowerOff);
    }
    pub fn restart(&mut self) {
        self.fx.push(Effect::Restart);
    }
    /// The kernel panics (`why` after `Kernel panic - not syncing: `).
    pub fn panic(&mut self, why: &str) {
        self.fx
            .push(Effect::Panic(format!("Kernel panic - not syncing: {why}")));
    }
    pub fn kernel(&mut self, line: String) {
        self.fx.push(Effect::Kernel(line));
    }
}

/// An emulated guest program: a state machine driven by the world.
pub trait Program {
    /// Runs until it exits or waits (for a timer or for frames).
    fn start(&mut self, sys: &mut Sys) -> Poll;
    /// Its timer fired.
    fn wake(&mut self, _sys: &mut Sys) -> Poll {
        Poll::Pending
    }
    /// A frame seen on a captured interface (`outgoing` for our own sends).
    fn frame(&mut self, _sys: &mut Sys, _iface: usize, _frame: &[u8], _outgoing: bool) -> Poll {
        Poll::Pending
    }
    /// SIGINT (Ctrl-C); the default dies of it (status 130).
    fn interrupt(&mut self, _sys: &mut Sys) -> Poll {
        Poll::Exit(130)
    }
}

/// A ubd device whose file could not be opened: the kernel registered it
/// (its size stage passed), so it is in `/sys/block` and `lsblk` with that
/// size, read-write, but every open fails (as linux.uml 6.1 shows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenDisk {
    pub errno: i32,
    /// What the kernel logged when the open failed at boot.
    pub lines: Vec<String>,
    /// Bytes (the size stage's, rounded up to 512).
    pub size: u64,
    pub serial: Option<String>,
}

/// A machine's state apart from its jobs (what programs may touch).
pub struct MachineCore {
    pub name: String,
    pub console: Console,
    pub stack: Stack,
    pub disks: BTreeMap<u32, Disk>,
    /// Devices that exist (their size stage passed) but fail to open.
    pub broken_disks: BTreeMap<u32, BrokenDisk>,
    /// Files written by redirections (`> /tmp/x`) and `dd`, readable by `cat`.
    pub files: Tmpfs,
    pub proc_cmdline: String,
    /// Memory in bytes (`mem=`), for /proc/meminfo.
    pub mem: u64,
    /// `/proc/mounts` as busybox `mount` lists it.
    pub mounts: String,
    pub rng: Rng,
    /// Per interface: the switch and port index it is plugged into.
    pub links: Vec<Option<(usize, usize)>>,
}

impl MachineCore {
    /// Opening a device that failed to open at boot: the errno, and the lines
    /// the kernel logged then.
    pub fn disks_broken(&mut self, dev: &str) -> Option<(i32, Vec<String>)> {
        // The kernel logs the failed open again, but the harness init ran
        // `dmesg -n 1`: nothing of it reaches the console (as on linux.uml).
        self.broken_disks
            .iter()
            .find(|(u, _)| crate::sim::disk::dev_name(**u) == dev)
            .map(|(_, b)| (b.errno, b.lines.clone()))
    }

    /// A machine that has not booted: no devices, empty console.
    pub fn empty(name: &str, rng: Rng) -> Self {
        Self {
            name: name.to_string(),
            console: Console::new(),
            stack: Stack::new(Vec::new()),
            disks: BTreeMap::new(),
            broken_disks: BTreeMap::new(),
            files: Tmpfs::default(),
            proc_cmdline: String::new(),
            mem: 0,
            mounts: String::new(),
            rng,
            links: Vec::new(),
        }
    }
}

/// A running command line.
pub struct Job {
    list: Vec<Simple>,
    pc: usize,
    status: i32,
    running: Option<(Box<dyn Program>, Output)>,
    pub output: Console,
    pub done: Option<i32>,
    pub interrupted: bool,
    wake_at: Option<Duration>,
    /// (interface, promiscuous) per open capture.
    captures: Vec<(usize, bool)>,
}

/// A machine's life cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Power {
    Off,
    Running,
    /// Halted cleanly, panicked, or killed: the reason is on the console.
    Down(String),
}

pub struct Machine {
    pub core: MachineCore,
    pub power: Power,
    pub jobs: BTreeMap<u32, Job>,
    next_job: u32,
    /// The time of the pending neighbour-timer event, if one is queued.
    neigh_timer: Option<Duration>,
}

#[derive(Debug)]
enum EventKind {
    ToSwitch {
        switch: usize,
        port: usize,
        frame: Rc<[u8]>,
    },
    ToNic {
        machine: usize,
        iface: usize,
        frame: Rc<[u8]>,
    },
    Wake {
        machine: usize,
        job: u32,
    },
    /// The kernel sends a frame it prepared earlier (an ARP reply).
    Tx {
        machine: usize,
        iface: usize,
        frame: Vec<u8>,
    },
    /// A machine's earliest neighbour timer is due.
    NeighTimer {
        machine: usize,
    },
}

#[derive(Debug)]
struct Event {
    time: Duration,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    // Reversed: BinaryHeap is a max-heap, the earliest event must come first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// Looks up a program by name: the guest image's programs (one table, in
/// `programs`). `None` means `sh: X: not found`.
pub type ProgramTable = fn(&str, &[String]) -> Option<Box<dyn Program>>;

pub struct World {
    pub now: Duration,
    seq: u64,
    queue: BinaryHeap<Event>,
    pub seed: u64,
    pub machines: Vec<Machine>,
    pub switches: Vec<Switch>,
    programs: ProgramTable,
    fx: Vec<Effect>,
    /// Machines whose kernel restarted (`reboot -f`) and that wait to boot
    /// again: the backend boots them (it holds their argv and disks' folder).
    pub restarts: Vec<usize>,
    /// Events dispatched so far, against [`MAX_EVENTS`].
    events: u64,
}

/// Most events one lab may dispatch. A 24 h `arping` at one request a second
/// is about 350 000; `arping -W 0.000001` would be 10^11 in a day (hours of
/// wall time and gigabytes of trace): the run stops with an error instead.
pub const MAX_EVENTS: u64 = 1_000_000;

/// Which job to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRef {
    pub machine: usize,
    pub job: u32,
}

impl World {
    pub fn new(seed: u64, programs: ProgramTable) -> Self {
        Self {
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            seed,
            machines: Vec::new(),
            switches: Vec::new(),
            programs,
            fx: Vec::new(),
            restarts: Vec::new(),
            events: 0,
        }
    }

    /// True once the lab used up [`MAX_EVENTS`]: nothing more happens.
    pub fn out_of_events(&self) -> bool {
        self.events >= MAX_EVENTS
    }

    pub fn rng(&self, name: &str) -> Rng {
        rng::stream(self.seed, name)
    }

    pub fn add_switch(&mut self, switch: Switch) -> usize {
        self.switches.push(switch);
        self.switches.len() - 1
    }

    pub fn add_machine(&mut self, core: MachineCore) -> usize {
        self.machines.push(Machine {
            core,
            power: Power::Off,
            jobs: BTreeMap::new(),
            next_job: 1,
            neigh_timer: None,
        });
        self.machines.len() - 1
    }

    /// Plugs interface `iface` of `machine` into `switch`, at VDE port `port`
    /// (0: the first free one). Returns the port number or the switch's refusal.
    pub fn plug(
        &mut self,
        machine: usize,
        iface: usize,
        switch: usize,
        port: u32,
    ) -> Result<u16, crate::net::switch::SwitchError> {
        let now = self.now;
        let seed = self.seed;
        let Some(sw) = self.switches.get_mut(switch) else {
            return Err(crate::net::switch::SwitchError::NoSuchPort { port: 0 });
        };
        let id = sw.ports.len() as u32;
        let desc = format!("{} eth{}", machine, iface);
        let number = sw
            .core
            .add_endpoint(PortRequest::from_number(port), id, None, &desc, now)?;
        let rng = rng::stream(seed, &format!("switch {} port {}", sw.name, number));
        sw.ports.push(Port {
            number,
            machine,
            iface,
            faults: PortFaults::default(),
            connected: true,
            rng,
        });
        let index = sw.ports.len() - 1;
        if let Some(m) = self.machines.get_mut(machine) {
            let links = &mut m.core.links;
            if links.len() <= iface {
                links.resize(iface + 1, None);
            }
            links[iface] = Some((switch, index));
        }
        Ok(number)
    }

    /// Takes a NIC's cable out of its switch (`up == false`) or puts it back
    /// into the same port. Returns false if the NIC is not plugged anywhere.
    pub fn set_cable(&mut self, machine: usize, iface: usize, up: bool) -> bool {
        let now = self.now;
        let Some((switch, index)) = self
            .machines
            .get(machine)
            .and_then(|m| m.core.links.get(iface).copied().flatten())
        else {
            return false;
        };
        let Some(sw) = self.switches.get_mut(switch) else {
            return false;
        };
        let Some(port) = sw.ports.get_mut(index) else {
            return false;
        };
        if port.connected == up {
            return true;
        }
        port.connected = up;
        let (number, id) = (port.number, index as u32);
        if up {
            let desc = format!("{machine} eth{iface}");
            let _ = sw
                .core
                .add_endpoint(PortRequest::Number(number), id, None, &desc, now);
        } else {
            sw.core.remove_endpoint(id);
        }
        true
    }

    fn push(&mut self, time: Duration, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Event {
            time,
            seq: self.seq,
            kind,
        });
    }

    /// Starts a command line on a machine; it runs until it first waits.
    pub fn spawn(&mut self, machine: usize, command: &str) -> Option<JobRef> {
        let m = self.machines.get_mut(machine)?;
        let id = m.next_job;
        m.next_job += 1;
        m.core.console.push_str(&format!("# {command}\n"));
        let mut job = Job {
            list: Vec::new(),
            pc: 0,
            status: 0,
            running: None,
            output: Console::new(),
            done: None,
            interrupted: false,
            wake_at: None,
            captures: Vec::new(),
        };
        match shell::parse(command) {
            Ok(list) => job.list = list,
            Err(e) => {
                let msg = e.ash_message();
                m.core.console.push_str(&msg);
                job.output.push_str(&msg);
                job.done = Some(2);
            }
        }
        if m.power != Power::Running {
            job.done = Some(-1);
        }
        m.jobs.insert(id, job);
        let r = JobRef { machine, job: id };
        self.advance(r, None);
        Some(r)
    }

    /// Runs the job's list from where it stands, after the current program
    /// returned `poll` (None: nothing is running yet).
    fn advance(&mut self, r: JobRef, mut poll: Option<Poll>) {
        let programs = self.programs;
        loop {
            let Some(m) = self.machines.get_mut(r.machine) else {
                return;
            };
            let Some(job) = m.jobs.get_mut(&r.job) else {
                return;
            };
            if job.done.is_some() {
                return;
            }
            match poll {
                Some(Poll::Pending) => return,
                Some(Poll::Exit(code)) => {
                    job.running = None;
                    job.status = code;
                }
                None => {}
            }
            if job.running.is_some() {
                return;
            }
            // Next simple command whose join condition holds.
            let next = loop {
                let Some(simple) = job.list.get(job.pc) else {
                    break None;
                };
                job.pc += 1;
                let run = match simple.join {
                    Join::Always => true,
                    Join::And => job.status == 0,
                    Join::Or => job.status != 0,
                };
                if run {
                    break Some(simple.clone());
                }
            };
            let Some(simple) = next else {
                job.done = Some(job.status);
                let caps = std::mem::take(&mut job.captures);
                for (iface, promisc) in caps {
                    if promisc {
                        Self::promisc(&mut m.core, iface, false);
                    }
                }
                return;
            };
            let argv: Vec<String> = simple.words.iter().map(|w| w.expand(job.status)).collect();
            let resolve = |t: &Target| match t {
                Target::Console | Target::Stdout => Target0::Console,
                Target::Null => Target0::Null,
                Target::File { path, .. } => Target0::File(path.clone()),
            };
            let stdout = resolve(&simple.stdout);
            let stderr = match simple.stderr {
                Target::Stdout => stdout.clone(),
                ref t => resolve(t),
            };
            // The shell opens each file before the program runs: `>`
            // empties it, `>>` creates it.
            for t in [&simple.stdout, &simple.stderr] {
                match t {
                    Target::File {
                        path,
                        append: false,
                    } => m.core.files.create_empty(path),
                    Target::File { path, append: true } => m.core.files.create(path),
                    _ => {}
                }
            }
            let output = Output { stdout, stderr };
            let Some(name) = argv.first().cloned() else {
                poll = Some(Poll::Exit(job.status));
                continue;
            };
            let args = argv.get(1..).unwrap_or_default();
            match programs(&name, args) {
                Some(prog) => {
                    job.running = Some((prog, output));
                    poll = Some(self.call(r, |p, sys| p.start(sys)));
                }
                None => {
                    let msg = format!("sh: {name}: not found\n");
                    let mut sys_out = Console::new();
                    let mut fx = Vec::new();
                    let mut sys = Sys {
                        now: self.now,
                        m: &mut m.core,
                        fx: &mut fx,
                        out: &output,
                        job_out: &mut sys_out,
                    };
                    sys.err(&msg);
                    job.output.push_str(&sys_out);
                    poll = Some(Poll::Exit(127));
                }
            }
        }
    }

    /// Calls the job's running program with its machine, then applies effects.
    fn call(&mut self, r: JobRef, f: impl FnOnce(&mut dyn Program, &mut Sys) -> Poll) -> Poll {
        let mut fx = std::mem::take(&mut self.fx);
        fx.clear();
        let Some(m) = self.machines.get_mut(r.machine) else {
            return Poll::Exit(1);
        };
        let Some(job) = m.jobs.get_mut(&r.job) else {
            return Poll::Exit(1);
        };
        let Some((mut prog, output)) = job.running.take() else {
            return Poll::Exit(job.status);
        };
        let poll = {
            let mut sys = Sys {
                now: self.now,
                m: &mut m.core,
                fx: &mut fx,
                out: &output,
                job_out: &mut job.output,
            };
            f(prog.as_mut(), &mut sys)
        };
        job.running = Some((prog, output));
        if poll != Poll::Pending {
            job.wake_at = None;
        }
        // The program may have changed the neighbour table (`ip neigh flush`).
        self.arm_neigh(r.machine);
        for e in fx.drain(..) {
            match e {
                Effect::Send { iface, frame } => {
                    self.transmit(r.machine, iface, frame, Duration::ZERO)
                }
                Effect::Capture { iface, on, promisc } => {
                    let Some(m) = self.machines.get_mut(r.machine) else {
                        continue;
                    };
                    let Some(job) = m.jobs.get_mut(&r.job) else {
                        continue;
                    };
                    if on {
                        job.captures.push((iface, promisc));
                        if promisc {
                            Self::promisc(&mut m.core, iface, true);
                        }
                    } else if let Some(at) = job.captures.iter().position(|&c| c.0 == iface) {
                        let (_, was_promisc) = job.captures.remove(at);
                        if was_promisc {
                            Self::promisc(&mut m.core, iface, false);
                        }
                    }
                }
                Effect::WakeAt(at) => {
                    if let Some(job) = self
                        .machines
                        .get_mut(r.machine)
                        .and_then(|m| m.jobs.get_mut(&r.job))
                    {
                        job.wake_at = Some(at);
                    }
                    self.push(
                        at.max(self.now),
                        EventKind::Wake {
                            machine: r.machine,
                            job: r.job,
                        },
                    );
                }
                Effect::PowerOff => {
                    self.power_down(r.machine, "reboot: System halted\n".into(), None);
                }
                Effect::Restart => {
                    self.power_down(r.machine, RESTART_LINE.into(), None);
                    self.restarts.push(r.machine);
                }
                Effect::Panic(line) => {
                    self.power_down(r.machine, format!("{line}\n"), None);
                }
                Effect::Kernel(line) => {
                    if let Some(m) = self.machines.get_mut(r.machine) {
                        m.core.console.push_str(&line);
                    }
                }
            }
        }
        self.fx = fx;
        poll
    }

    /// Counts a promiscuous capture in or out; the kernel logs the 0↔1 edges.
    fn promisc(core: &mut MachineCore, iface: usize, on: bool) {
        let Some(i) = core.stack.ifaces.get_mut(iface) else {
            return;
        };
        let before = i.promisc;
        i.promisc = if on {
            before + 1
        } else {
            before.saturating_sub(1)
        };
        let verb = match (before, i.promisc) {
            (0, 1) => "entered",
            (1, 0) => "left",
            _ => return,
        };
        let line = format!("device {} {verb} promiscuous mode\n", i.name);
        core.console.push_str(&line);
    }

    /// Stops a machine: every job ends (`status` for a clean halt, None when
    /// killed), the console gets `line`.
    pub fn power_down(&mut self, machine: usize, line: String, status: Option<i32>) {
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        if m.power != Power::Running {
            return;
        }
        m.core.console.push_str(&line);
        m.power = Power::Down(line.trim_end().to_string());
        for job in m.jobs.values_mut() {
            if job.done.is_none() {
                job.running = None;
                job.done = Some(status.unwrap_or(job.status));
            }
        }
        // The process is gone: its files close and their host locks go, so a
        // later machine (or a host step) can open them. No fsync: every write
        // already reached the host's page cache, which is all a later reader
        // needs, and the run folder is throwaway (200 fsyncs were most of a
        // 200-machine run).
        m.core.disks.clear();
        // Its NICs' transports close, and the switch frees their ports (a
        // port that a later boot asks for by number is free again).
        for (switch, index) in std::mem::take(&mut m.core.links).into_iter().flatten() {
            if let Some(sw) = self.switches.get_mut(switch) {
                if let Some(port) = sw.ports.get_mut(index) {
                    port.connected = false;
                }
                sw.core.remove_endpoint(index as u32);
            }
        }
    }

    /// A machine that halted, was killed or restarted its kernel runs `core`
    /// from now on: a fresh kernel state (the backend booted it) over the
    /// same disk files; the clock goes on.
    pub fn boot_again(&mut self, machine: usize, core: MachineCore, running: bool) {
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        m.core = core;
        m.neigh_timer = None;
        m.power = if running {
            Power::Running
        } else {
            Power::Down("the kernel did not come up again (see the console)".into())
        };
    }

    /// Sends a frame from a machine's interface now; it reaches the switch
    /// after `delay` plus the wire time.
    pub fn transmit(&mut self, machine: usize, iface: usize, frame: Vec<u8>, delay: Duration) {
        let now = self.now;
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        if m.power != Power::Running {
            return;
        }
        let Some(dev) = m.core.stack.ifaces.get_mut(iface) else {
            return;
        };
        if !dev.up {
            return;
        }
        dev.counters.tx_packets += 1;
        dev.counters.tx_bytes += frame.len() as u64;
        let carrier = dev.carrier;
        let frame: Rc<[u8]> = frame.into();
        // Packet sockets see outgoing frames too (tcpdump shows our replies).
        self.deliver_captures(machine, iface, &frame, true);
        if !carrier {
            return;
        }
        let link = self
            .machines
            .get(machine)
            .and_then(|m| m.core.links.get(iface).copied().flatten());
        if let Some((switch, port)) = link {
            // A port's delay fault holds the frame back before the switch sees it.
            let fault_delay = self
                .switches
                .get(switch)
                .and_then(|s| s.ports.get(port))
                .map(|p| p.faults.delay)
                .unwrap_or_default();
            self.push(
                now.saturating_add(delay)
                    .saturating_add(WIRE_DELAY)
                    .saturating_add(fault_delay),
                EventKind::ToSwitch {
                    switch,
                    port,
                    frame,
                },
            );
        }
    }

    fn deliver_captures(&mut self, machine: usize, iface: usize, frame: &Rc<[u8]>, outgoing: bool) {
        let listeners: Vec<u32> = match self.machines.get(machine) {
            Some(m) => m
                .jobs
                .iter()
                .filter(|(_, j)| j.done.is_none() && j.captures.iter().any(|c| c.0 == iface))
                .map(|(&id, _)| id)
                .collect(),
            None => return,
        };
        for job in listeners {
            let r = JobRef { machine, job };
            let f = Rc::clone(frame);
            let poll = self.call(r, |p, sys| p.frame(sys, iface, &f, outgoing));
            self.advance(r, Some(poll));
        }
    }

    /// Runs events until `stop` holds or the next event is after `until`;
    /// the clock then stands at the stop time or at `until`.
    pub fn run_until(&mut self, until: Duration, mut stop: impl FnMut(&World) -> bool) -> bool {
        loop {
            if stop(self) {
                return true;
            }
            if self.out_of_events() {
                return false;
            }
            match self.queue.peek() {
                Some(e) if e.time <= until => {}
                _ => {
                    self.now = self.now.max(until);
                    return stop(self);
                }
            }
            self.events += 1;
            let Some(ev) = self.queue.pop() else {
                continue;
            };
            self.now = self.now.max(ev.time);
            self.dispatch(ev.kind);
        }
    }

    fn dispatch(&mut self, kind: EventKind) {
        match kind {
            EventKind::Wake { machine, job } => {
                let due = self
                    .machines
                    .get(machine)
                    .and_then(|m| m.jobs.get(&job))
                    .is_some_and(|j| j.done.is_none() && j.wake_at == Some(self.now));
                if due {
                    let r = JobRef { machine, job };
                    if let Some(j) = self
                        .machines
                        .get_mut(machine)
                        .and_then(|m| m.jobs.get_mut(&job))
                    {
                        j.wake_at = None;
                    }
                    let poll = self.call(r, |p, sys| p.wake(sys));
                    self.advance(r, Some(poll));
                }
            }
            EventKind::ToSwitch {
                switch,
                port,
                frame,
            } => self.switch_in(switch, port, frame),
            EventKind::ToNic {
                machine,
                iface,
                frame,
            } => self.nic_in(machine, iface, frame),
            EventKind::Tx {
                machine,
                iface,
                frame,
            } => self.transmit(machine, iface, frame, Duration::ZERO),
            EventKind::NeighTimer { machine } => {
                let now = self.now;
                let Some(m) = self.machines.get_mut(machine) else {
                    return;
                };
                // A later event than the one armed last: superseded.
                if m.power != Power::Running || m.neigh_timer != Some(now) {
                    return;
                }
                m.neigh_timer = None;
                let frames = m.core.stack.run_timers(now);
                for (iface, frame) in frames {
                    self.transmit(machine, iface, frame, Duration::ZERO);
                }
                self.arm_neigh(machine);
            }
        }
    }

    /// Queues an event for the machine's earliest neighbour timer unless
    /// one at that time or earlier is queued already (a stale one is
    /// recognised when it fires and re-arms).
    fn arm_neigh(&mut self, machine: usize) {
        let now = self.now;
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        if m.power != Power::Running {
            return;
        }
        let Some(at) = m.core.stack.next_timer() else {
            return;
        };
        let at = at.max(now);
        if m.neigh_timer
            .is_some_and(|armed| armed <= at && armed >= now)
        {
            return;
        }
        m.neigh_timer = Some(at);
        self.push(at, EventKind::NeighTimer { machine });
    }

    fn switch_in(&mut self, switch: usize, port: usize, frame: Rc<[u8]>) {
        let now = self.now;
        let Some(sw) = self.switches.get_mut(switch) else {
            return;
        };
        let Some(p) = sw.ports.get_mut(port) else {
            return;
        };
        if !p.connected {
            return;
        }
        // Faults act on the way in, before forwarding and tracing.
        let faults = p.faults;
        if faults.loss > 0.0 && p.rng.chance(faults.loss) {
            return;
        }
        let copies = if faults.duplicate > 0.0 && p.rng.chance(faults.duplicate) {
            2
        } else {
            1
        };
        let in_port = p.number;
        let mut deliveries = Vec::new();
        for _ in 0..copies {
            let mut outs = std::mem::take(&mut sw.outs);
            sw.core.forward_into(in_port, &frame, now, &mut outs);
            sw.trace.push(TraceRecord {
                time: now,
                in_port: u32::from(in_port),
                out_ports: outs.iter().map(|&o| u32::from(o)).collect(),
                frame: frame.to_vec(),
            });
            for &o in &outs {
                for ep in sw.core.endpoints(o) {
                    let Some(op) = sw.ports.get_mut(ep.id as usize) else {
                        continue;
                    };
                    let jitter = Duration::from_nanos(op.rng.below(WIRE_JITTER_US * 1000));
                    deliveries.push((op.machine, op.iface, WIRE_DELAY + jitter));
                }
            }
            sw.outs = outs;
        }
        for (machine, iface, d) in deliveries {
            self.push(
                now.saturating_add(d),
                EventKind::ToNic {
                    machine,
                    iface,
                    frame: Rc::clone(&frame),
                },
            );
        }
    }

    fn nic_in(&mut self, machine: usize, iface: usize, frame: Rc<[u8]>) {
        let now = self.now;
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        if m.power != Power::Running {
            return;
        }
        let Some(dev) = m.core.stack.ifaces.get_mut(iface) else {
            return;
        };
        if !dev.running() {
            return;
        }
        dev.counters.rx_packets += 1;
        dev.counters.rx_bytes += frame.len().saturating_sub(14) as u64;
        self.deliver_captures(machine, iface, &frame, false);
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        let (_, replies) = m.core.stack.receive(iface, &frame, now);
        self.arm_neigh(machine);
        let Some(m) = self.machines.get_mut(machine) else {
            return;
        };
        if replies.is_empty() {
            return;
        }
        // One delay for the batch: the kernel sends them in order, and the
        // queue keeps insertion order for equal times.
        let jitter = Duration::from_nanos(m.core.rng.below(10_000));
        for reply in replies {
            self.push(
                now.saturating_add(KERNEL_DELAY).saturating_add(jitter),
                EventKind::Tx {
                    machine,
                    iface,
                    frame: reply,
                },
            );
        }
    }

    /// Delivers SIGINT to a job's running program (Ctrl-C at a step timeout);
    /// like ash, the rest of the command line does not run.
    pub fn interrupt(&mut self, r: JobRef) {
        let running = self
            .machines
            .get(r.machine)
            .and_then(|m| m.jobs.get(&r.job))
            .is_some_and(|j| j.done.is_none() && j.running.is_some());
        if !running {
            return;
        }
        let poll = self.call(r, |p, sys| p.interrupt(sys));
        let Some(job) = self
            .machines
            .get_mut(r.machine)
            .and_then(|m| m.jobs.get_mut(&r.job))
        else {
            return;
        };
        job.interrupted = true;
        let code = match poll {
            Poll::Exit(c) => c,
            Poll::Pending => 130,
        };
        job.running = None;
        job.status = code;
        job.pc = job.list.len();
        self.advance(r, None);
    }

    pub fn job(&self, r: JobRef) -> Option<&Job> {
        self.machines.get(r.machine)?.jobs.get(&r.job)
    }

    /// Takes a finished job out of its machine.
    pub fn take_job(&mut self, r: JobRef) -> Option<Job> {
        self.machines.get_mut(r.machine)?.jobs.remove(&r.job)
    }
}
