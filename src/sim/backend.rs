//! `impl Backend for SimBackend`: the engine's steps on the [`World`].
//!
//! Every wait is in virtual time: `run` with a 5 s timeout on `arping -0Bi
//! eth0` advances the clock by exactly 5 s, delivers SIGINT, and returns at
//! once in wall-clock terms.
//!
//! Booting again: a `boot` of a machine that halted, was killed or failed to
//! boot starts a fresh guest kernel over the same disk files (the uml backend
//! starts a new `linux.uml` with the same argv); `reboot -f` in the guest does
//! the same in the same process: UML's restart returns from `linux_main` to
//! `main()` in arch/um/os-Linux/main.c, which re-execs the binary with a copy
//! of its argv (the blank line real consoles show comes from there). The
//! virtual clock goes on; the console keeps what came before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::scenario::backend::{
    Backend, BackendArtifacts, BackendError, CommandOutcome, Fault, JobId, Lab, MachineSpec,
};
use crate::sim::boot;
use crate::sim::disk::DiskFaults;
use crate::sim::programs;
use crate::sim::world::{JobRef, MachineCore, PortFaults, Power, Switch, World};
use crate::uml::image::{self, default_cache_dir};
use crate::uml::manifest::Manifest;

/// The deterministic sim backend.
pub struct SimBackend {
    world: World,
    run_dir: PathBuf,
    /// The lab's external disks: readable host files (see `block::UbdSpec`).
    external: Vec<PathBuf>,
    specs: Vec<MachineSpec>,
    machines: BTreeMap<String, usize>,
    switches: BTreeMap<String, usize>,
    jobs: BTreeMap<JobId, JobRef>,
    next_job: u32,
    port_faults: BTreeMap<(String, String), PortFaults>,
    disk_faults: BTreeMap<(String, u32), DiskFaults>,
    /// Boots so far per machine.
    boots: BTreeMap<usize, u32>,
    /// Where the console of a machine's current process starts (after its
    /// first boot): `wait_console` looks from there, as the uml backend
    /// reads the new process's console.
    console_from: BTreeMap<usize, usize>,
}

impl Default for SimBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// The host time at virtual time 0, for files host-side steps write: one day
/// after the harness made the lab's disks ([`crate::scenario::disk::MKFS_TIME`],
/// 2023-11-14 22:13:20 UTC), so a careless copy's mtime is plausible and always
/// differs from theirs. The sim never reads the wall clock.
pub const FILE_TIME_EPOCH: u64 = crate::scenario::disk::MKFS_TIME + 86_400;

/// How many console lines a failure shows.
const LAST_LINES: usize = 12;

impl SimBackend {
    pub fn new() -> Self {
        Self {
            world: World::new(0, programs::lookup),
            run_dir: PathBuf::new(),
            external: Vec::new(),
            specs: Vec::new(),
            machines: BTreeMap::new(),
            switches: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_job: 1,
            port_faults: BTreeMap::new(),
            disk_faults: BTreeMap::new(),
            boots: BTreeMap::new(),
            console_from: BTreeMap::new(),
        }
    }

    /// Fault injection on the switch port of `machine`'s `nic` (applies now
    /// if it is plugged, else when it boots).
    pub fn set_port_faults(&mut self, machine: &str, nic: &str, faults: PortFaults) {
        self.port_faults
            .insert((machine.to_string(), nic.to_string()), faults);
        self.apply_port_faults();
    }

    /// Fault injection on `machine`'s ubd unit (when it boots, or now); writes
    /// are counted from here for [`DiskFaults::fail_write`].
    pub fn set_disk_faults(&mut self, machine: &str, unit: u32, faults: DiskFaults) {
        self.disk_faults.insert((machine.to_string(), unit), faults);
        if let Some(&m) = self.machines.get(machine) {
            if let Some(d) = self
                .world
                .machines
                .get_mut(m)
                .and_then(|m| m.core.disks.get_mut(&unit))
            {
                d.faults = faults;
                d.writes = 0;
            }
        }
    }

    /// The world, for tests and benchmarks.
    pub fn world(&self) -> &World {
        &self.world
    }

    fn apply_port_faults(&mut self) {
        for ((machine, nic), f) in &self.port_faults {
            let Some(&m) = self.machines.get(machine) else {
                continue;
            };
            let Some(mach) = self.world.machines.get(m) else {
                continue;
            };
            let Some(iface) = mach.core.stack.find(nic) else {
                continue;
            };
            let Some((sw, port)) = mach.core.links.get(iface).copied().flatten() else {
                continue;
            };
            if let Some(p) = self
                .world
                .switches
                .get_mut(sw)
                .and_then(|s| s.ports.get_mut(port))
            {
                p.faults = *f;
            }
        }
    }

    fn machine(&self, name: &str) -> Result<usize, BackendError> {
        self.machines
            .get(name)
            .copied()
            .ok_or_else(|| BackendError::UnknownMachine(name.to_string()))
    }

    fn last_lines(&self, m: usize) -> String {
        let console = self
            .world
            .machines
            .get(m)
            .map(|m| m.core.console.as_str())
            .unwrap_or("");
        let lines: Vec<&str> = console.lines().collect();
        lines[lines.len().saturating_sub(LAST_LINES)..].join("\n")
    }

    fn running(&self, name: &str) -> Result<usize, BackendError> {
        let m = self.machine(name)?;
        match self.world.machines.get(m).map(|m| &m.power) {
            Some(Power::Running) => Ok(m),
            Some(Power::Off) => Err(BackendError::Machine {
                machine: name.to_string(),
                message: "is not booted".into(),
                last_lines: self.last_lines(m),
            }),
            Some(Power::Down(why)) => Err(BackendError::Machine {
                machine: name.to_string(),
                message: format!("is not running ({why})"),
                last_lines: self.last_lines(m),
            }),
            None => Err(BackendError::UnknownMachine(name.to_string())),
        }
    }

    /// Boots machine `index` (again: its console so far stays, followed by
    /// `$ linux <argv>` when `again` holds that argv, i.e. a new process,
    /// or by nothing when its kernel restarted in the same process).
    fn boot_machine(
        &mut self,
        index: usize,
        name: &str,
        again: Option<&str>,
    ) -> Result<(), BackendError> {
        let Some(spec) = self.specs.get(index).cloned() else {
            return Err(BackendError::UnknownMachine(name.to_string()));
        };
        let boots = self.boots.entry(index).or_insert(0);
        *boots += 1;
        // The first boot draws from the streams it always did; a later one from
        // streams of its own, so no draw of the first repeats.
        let stream = |what: &str| match *boots {
            1 => format!("machine {}{what}", spec.name),
            n => format!("machine {}{what} boot {n}", spec.name),
        };
        let (main, ident, neigh) = (stream(""), stream(" ip ident"), stream(" neigh"));
        let rng = self.world.rng(&main);
        let mut booted = boot::boot(
            index,
            &spec.name,
            &spec.argv,
            &self.run_dir,
            &self.external,
            rng,
        );
        let ip_ident = self.world.rng(&ident).below(1 << 16) as u16;
        let neigh_rng = self.world.rng(&neigh);
        let Some(m) = self.world.machines.get(index) else {
            return Err(BackendError::UnknownMachine(name.to_string()));
        };
        if m.power != Power::Off {
            let mut console = m.core.console.clone();
            if let Some(argv) = again {
                console.push_str(&format!("$ linux {argv}\n"));
                self.console_from.insert(index, console.len());
            }
            console.push_str(&booted.core.console);
            booted.core.console = console;
        }
        booted.core.stack.ip_ident = ip_ident;
        booted.core.stack.seed_neigh(neigh_rng);
        for ((mname, unit), f) in &self.disk_faults {
            if mname == name {
                if let Some(d) = booted.core.disks.get_mut(unit) {
                    d.faults = *f;
                }
            }
        }
        self.world
            .boot_again(index, booted.core, booted.failed.is_none());
        if booted.failed.is_some() {
            return Ok(());
        }
        for plug in booted.plugs {
            let Some(&sw) = self.switches.get(&plug.switch) else {
                // A socket outside the lab: the transport fails to connect.
                continue;
            };
            if let Err(e) = self.world.plug(index, plug.iface, sw, plug.port) {
                let line = format!("vde_plug: {e}\n");
                if let Some(m) = self.world.machines.get_mut(index) {
                    m.core.console.push_str(&line);
                }
            }
        }
        Ok(())
    }

    /// Runs the world until `stop` holds (true) or `deadline` (false); a
    /// kernel restarted meanwhile (`reboot -f`, in the foreground or in a
    /// background job) boots again at once, and the world goes on. A lab that
    /// used up its events is an error ([`SimBackend::check_events`], naming
    /// `machine`).
    fn run_until(
        &mut self,
        machine: &str,
        deadline: Duration,
        mut stop: impl FnMut(&World) -> bool,
    ) -> Result<bool, BackendError> {
        loop {
            let hit = self
                .world
                .run_until(deadline, |w| stop(w) || !w.restarts.is_empty());
            self.check_events(machine)?;
            if self.world.restarts.is_empty() {
                return Ok(hit);
            }
            self.restart_kernels()?;
            if stop(&self.world) {
                return Ok(true);
            }
        }
    }

    /// Boots again, in the same process, the machines whose kernel restarted
    /// (`reboot -f`) while the world ran.
    fn restart_kernels(&mut self) -> Result<(), BackendError> {
        for index in std::mem::take(&mut self.world.restarts) {
            let name = self
                .specs
                .get(index)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            self.boot_machine(index, &name, None)?;
        }
        self.apply_port_faults();
        Ok(())
    }

    /// The error once the lab used up its events ([`crate::sim::world::MAX_EVENTS`]).
    fn check_events(&self, machine: &str) -> Result<(), BackendError> {
        if !self.world.out_of_events() {
            return Ok(());
        }
        let m = self.machines.get(machine).copied();
        Err(BackendError::Machine {
            machine: machine.to_string(),
            message: format!(
                "the sim stopped at {:.6} s of virtual time: the lab used up its {} events \
                 (a flood of frames or timers, e.g. `arping -W 0.000001`)",
                self.world.now.as_secs_f64(),
                crate::sim::world::MAX_EVENTS
            ),
            last_lines: m.map(|m| self.last_lines(m)).unwrap_or_default(),
        })
    }

    /// Runs the world until job `r` ends or `timeout` passes, then SIGINT.
    /// A lab out of events is an error for `machine`, once the job is taken.
    fn finish_job(
        &mut self,
        machine: &str,
        r: JobRef,
        timeout: Duration,
    ) -> Result<CommandOutcome, BackendError> {
        let deadline = self.world.now.saturating_add(timeout);
        let done = |w: &World| w.job(r).is_none_or(|j| j.done.is_some());
        // A command line that restarted the kernel ends with it (the shell
        // never reports a status; the job's is what it had then).
        let hit = self.run_until(machine, deadline, done);
        if !matches!(hit, Ok(true)) {
            self.world.interrupt(r);
        }
        let out = match self.world.take_job(r) {
            Some(job) => CommandOutcome {
                output: job.output.artifact(),
                exit_code: job.done.unwrap_or(130),
                interrupted: job.interrupted,
            },
            None => CommandOutcome {
                output: String::new(),
                exit_code: 1,
                interrupted: false,
            },
        };
        hit?;
        Ok(out)
    }
}

impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }

    /// The default image's names, modes, owners, sizes, link targets and text
    /// files, from the committed manifest, with placeholder bytes for its
    /// programs: no guest program is needed, only e2fsprogs. Built once per
    /// size and cached like the real image.
    fn prepare_image(&mut self, image: &str, path: &Path, size: u64) -> Result<(), BackendError> {
        let io = |context: String| {
            move |e: &dyn std::fmt::Display| BackendError::Io {
                context,
                source: std::io::Error::other(e.to_string()),
            }
        };
        if image != "default" {
            return Err(io(format!("disk image {image:?}"))(
                &"only image = \"default\" is known",
            ));
        }
        let manifest = Manifest::default_image().map_err(|e| io("default image".into())(&e))?;
        image::build_from_manifest(&manifest, size, default_cache_dir().as_deref(), path).map_err(
            |e| match e {
                image::ImageError::MissingTool(m) => BackendError::Unavailable {
                    what: format!("{} not found", m.program),
                    package: m.package.to_string(),
                },
                other => io(format!("root image {}", path.display()))(&other),
            },
        )?;
        // mkfs works in whole KiB; a size like 300M+1 keeps its last byte.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io(format!("open {}", path.display()))(&e))?;
        let len = file
            .metadata()
            .map_err(|e| io(format!("stat {}", path.display()))(&e))?
            .len();
        if len < size {
            file.set_len(size)
                .map_err(|e| io(format!("extend {}", path.display()))(&e))?;
        }
        Ok(())
    }

    fn start(&mut self, lab: &Lab) -> Result<(), BackendError> {
        self.world = World::new(lab.seed, programs::lookup);
        self.run_dir = lab.run_dir.clone();
        self.external = lab.external_paths();
        self.specs = lab.machines.clone();
        self.machines.clear();
        self.switches.clear();
        self.boots.clear();
        self.console_from.clear();
        for s in &lab.switches {
            let i = self
                .world
                .add_switch(Switch::new(&s.name, s.hub, s.numports));
            self.switches.insert(s.name.clone(), i);
        }
        for (i, m) in lab.machines.iter().enumerate() {
            self.machines.insert(m.name.clone(), i);
            let rng = self.world.rng(&format!("machine {}", m.name));
            self.world.add_machine(MachineCore::empty(&m.name, rng));
        }
        Ok(())
    }

    fn boot(&mut self, machines: &[String], _timeout: Duration) -> Result<(), BackendError> {
        // Nothing boots if one of them still runs.
        for name in machines {
            let index = self.machine(name)?;
            if self
                .world
                .machines
                .get(index)
                .is_some_and(|m| m.power == Power::Running)
            {
                return Err(BackendError::Machine {
                    machine: name.clone(),
                    message: "is already running: halt or kill it before booting it again".into(),
                    last_lines: self.last_lines(index),
                });
            }
        }
        for name in machines {
            let index = self.machine(name)?;
            match self.world.machines.get(index).map(|m| &m.power) {
                Some(Power::Down(_)) => {
                    // A new `linux.uml` process: the uml backend's transcript
                    // shows the command line again, then its boot log.
                    let argv = self.specs.get(index).map(|s| s.argv.join(" "));
                    self.boot_machine(index, name, argv.as_deref())?;
                }
                _ => self.boot_machine(index, name, None)?,
            }
        }
        self.apply_port_faults();
        Ok(())
    }

    fn run(
        &mut self,
        machine: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutcome, BackendError> {
        let m = self.running(machine)?;
        let Some(r) = self.world.spawn(m, command) else {
            return Err(BackendError::UnknownMachine(machine.to_string()));
        };
        let out = self.finish_job(machine, r, timeout)?;
        // A panic during the command is the machine's failure, as on real UML.
        if let Some(Power::Down(why)) = self.world.machines.get(m).map(|mm| &mm.power) {
            if why.starts_with("Kernel panic") {
                return Err(BackendError::Machine {
                    machine: machine.to_string(),
                    message: format!("the kernel panicked while running {command:?}: {why}"),
                    last_lines: self.last_lines(m),
                });
            }
        }
        Ok(out)
    }

    fn spawn(&mut self, machine: &str, command: &str) -> Result<JobId, BackendError> {
        let m = self.running(machine)?;
        let Some(r) = self.world.spawn(m, command) else {
            return Err(BackendError::UnknownMachine(machine.to_string()));
        };
        let id = JobId(self.next_job);
        self.next_job += 1;
        self.jobs.insert(id, r);
        Ok(id)
    }

    fn wait_job(
        &mut self,
        machine: &str,
        job: JobId,
        timeout: Duration,
    ) -> Result<CommandOutcome, BackendError> {
        let m = self.machine(machine)?;
        match self.jobs.remove(&job) {
            Some(r) if r.machine == m => self.finish_job(machine, r, timeout),
            _ => Err(BackendError::Machine {
                machine: machine.to_string(),
                message: format!("has no background job {}", job.0),
                last_lines: self.last_lines(m),
            }),
        }
    }

    fn set_link(&mut self, machine: &str, nic: &str, up: bool) -> Result<(), BackendError> {
        let m = self.machine(machine)?;
        let iface = self
            .world
            .machines
            .get(m)
            .and_then(|mm| mm.core.stack.find(nic));
        match iface {
            Some(i) if self.world.set_cable(m, i, up) => Ok(()),
            _ => Err(BackendError::Machine {
                machine: machine.to_string(),
                message: format!("has no {nic} plugged into a switch of the lab"),
                last_lines: self.last_lines(m),
            }),
        }
    }

    fn wait_console(
        &mut self,
        machine: &str,
        pattern: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        let m = self.machine(machine)?;
        let deadline = self.world.now.saturating_add(timeout);
        // Only the current boot's console counts (a `boot` of a halted
        // machine starts a new process, whose transcript starts after the
        // `$ linux <argv>` line), and only text the last look did not cover
        // is searched: a full 16 MiB console is not scanned again on each of
        // a day's events.
        let boot_from = self.console_from.get(&m).copied().unwrap_or(0);
        let mut scanned = 0usize;
        let seen = |w: &World| {
            let Some(mm) = w.machines.get(m) else {
                return false;
            };
            let text = mm.core.console.as_str();
            let mut from = scanned
                .saturating_sub(pattern.len())
                .max(boot_from)
                .min(text.len());
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            scanned = text.len();
            text[from..].contains(pattern)
        };
        self.run_until(machine, deadline, seen)
    }

    fn sleep(&mut self, duration: Duration) -> Result<(), BackendError> {
        let until = self.world.now.saturating_add(duration);
        self.run_until("(any)", until, |_| false)?;
        Ok(())
    }

    fn halt(&mut self, machines: &[String], _timeout: Duration) -> Result<(), BackendError> {
        for name in machines {
            let m = self.machine(name)?;
            self.world
                .power_down(m, "reboot: System halted\n".into(), None);
        }
        Ok(())
    }

    fn kill(&mut self, machine: &str) -> Result<(), BackendError> {
        let m = self.machine(machine)?;
        self.world.power_down(m, String::new(), Some(137));
        if let Some(mm) = self.world.machines.get_mut(m) {
            mm.power = Power::Down("killed".into());
        }
        Ok(())
    }

    fn can_inject_faults(&self) -> bool {
        true
    }
    fn inject_fault(&mut self, machine: &str, fault: &Fault) -> Result<(), BackendError> {
        let m = self.machine(machine)?;
        let argv = self
            .specs
            .get(m)
            .map(|s| s.argv.clone())
            .unwrap_or_default();
        let parsed = crate::cmdline::parse(&argv);
        let missing = |what: String| BackendError::Machine {
            machine: machine.to_string(),
            message: format!("has no {what} on its command line to inject a fault into"),
            last_lines: String::new(),
        };
        match fault {
            Fault::Port {
                nic,
                loss,
                duplicate,
                delay,
            } => {
                if !parsed.net.iter().any(|d| &d.name == nic) {
                    return Err(missing(nic.clone()));
                }
                self.set_port_faults(
                    machine,
                    nic,
                    PortFaults {
                        loss: *loss,
                        duplicate: *duplicate,
                        delay: *delay,
                    },
                );
            }
            Fault::Disk { unit, fail_write } => {
                if !parsed.ubd.iter().any(|d| d.index == *unit && !d.implicit) {
                    return Err(missing(format!("ubd{unit}")));
                }
                self.set_disk_faults(
                    machine,
                    *unit,
                    DiskFaults {
                        fail_write: *fail_write,
                    },
                );
            }
        }
        Ok(())
    }

    fn file_time(&self) -> Option<std::time::SystemTime> {
        // Saturating: a virtual clock past SystemTime's range has no file time.
        std::time::UNIX_EPOCH
            .checked_add(Duration::from_secs(FILE_TIME_EPOCH))?
            .checked_add(self.world.now)
    }

    fn finish(&mut self) -> Result<BackendArtifacts, BackendError> {
        // The end of a lab powers off what still runs, as the uml backend
        // does (`poweroff -f`, which a UML kernel turns into a halt).
        let running: Vec<usize> = (0..self.world.machines.len()).collect();
        for m in running {
            self.world
                .power_down(m, "reboot: System halted\n".into(), None);
        }
        let mut out = BackendArtifacts::default();
        for spec in &self.specs {
            let console = self
                .machines
                .get(&spec.name)
                .and_then(|&i| self.world.machines.get(i))
                .map(|m| m.core.console.artifact())
                .unwrap_or_default();
            out.consoles.insert(spec.name.clone(), console);
        }
        for s in &mut self.world.switches {
            out.traces
                .insert(s.name.clone(), std::mem::take(&mut s.trace));
        }
        // Drop the machines (their disks closed at power-down).
        self.world.machines.clear();
        Ok(out)
    }
}
