//! The scenario engine: schema errors, the engine on a small deterministic
//! test-double backend, snapshots, and the `umltest run`/`check` commands.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use std::net::Ipv4Addr;

use umltest::net::wire::{ArpOp, ArpRepr, MacAddr};
use umltest::scenario::backend::{
    Backend, BackendArtifacts, BackendError, CommandOutcome, JobId, Lab, TraceRecord,
};
use umltest::scenario::{engine, resolve, snapshot};

use crate::util;

/// A deterministic test double: a "machine" is a console string and a tiny
/// command language, on a virtual clock. It implements the whole trait so the
/// engine's step semantics can be tested without the sim or a kernel.
///
/// Commands: `echo TEXT`, `exit N`, `sleep SECS` (virtual; interrupted at the
/// timeout with exit 130), `cat /proc/cmdline`; anything else is
/// `sh: X: not found`, exit 127. A machine whose argv holds `panic` fails to
/// boot the way a kernel does: the console says so and no shell comes up.
#[derive(Default)]
struct Double {
    lab: Option<Lab>,
    consoles: BTreeMap<String, String>,
    shells: BTreeSet<String>,
    now: Duration,
    jobs: BTreeMap<JobId, (String, String, Duration)>,
    traces: BTreeMap<String, Vec<TraceRecord>>,
    next_job: u32,
    calls: Vec<String>,
}

impl Double {
    fn argv(&self, machine: &str) -> Result<Vec<String>, BackendError> {
        self.lab
            .as_ref()
            .and_then(|l| l.machines.iter().find(|m| m.name == machine))
            .map(|m| m.argv.clone())
            .ok_or_else(|| BackendError::UnknownMachine(machine.to_string()))
    }

    fn shell(&self, machine: &str) -> Result<(), BackendError> {
        self.argv(machine)?;
        if self.shells.contains(machine) {
            Ok(())
        } else {
            Err(BackendError::Machine {
                machine: machine.into(),
                message: "no shell".into(),
                last_lines: self.consoles.get(machine).cloned().unwrap_or_default(),
            })
        }
    }

    /// Runs `command` for at most `budget`; returns the outcome and the time used.
    fn exec(&self, machine: &str, command: &str, budget: Duration) -> (CommandOutcome, Duration) {
        let done = |output: String, exit_code: i32| CommandOutcome {
            output,
            exit_code,
            interrupted: false,
        };
        let (program, rest) = command.split_once(' ').unwrap_or((command, ""));
        match program {
            "echo" => (done(format!("{rest}\n"), 0), Duration::ZERO),
            "exit" => (
                done(String::new(), rest.parse().unwrap_or(2)),
                Duration::ZERO,
            ),
            "cat" if rest == "/proc/cmdline" => (
                done(
                    format!("{}\n", self.argv(machine).unwrap_or_default().join(" ")),
                    0,
                ),
                Duration::ZERO,
            ),
            "sleep" => {
                let secs = Duration::from_secs(rest.parse().unwrap_or(0));
                if secs > budget {
                    let out = CommandOutcome {
                        output: "^C\n".into(),
                        exit_code: 130,
                        interrupted: true,
                    };
                    (out, budget)
                } else {
                    (done(String::new(), 0), secs)
                }
            }
            "arp-probe" => (done("probe sent\n".into(), 0), Duration::from_millis(1)),
            other => (
                done(format!("sh: {other}: not found\n"), 127),
                Duration::ZERO,
            ),
        }
    }

    /// An ARP probe (who-has 255.255.255.255 tell 0.0.0.0) from the machine's
    /// port, flooded to every other machine on each switch of the lab.
    fn probe(&mut self, machine: &str) {
        let Some(lab) = &self.lab else { return };
        let index = lab
            .machines
            .iter()
            .position(|m| m.name == machine)
            .unwrap_or(0);
        let src = MacAddr([0xfe, 0xfd, 0, 0, 0, index as u8 + 1]);
        let arp = ArpRepr {
            op: ArpOp::Request,
            sha: src,
            spa: Ipv4Addr::UNSPECIFIED,
            tha: MacAddr([0; 6]),
            tpa: Ipv4Addr::BROADCAST,
        };
        let frame = arp.to_frame(MacAddr([0xff; 6]), src, 16);
        let ports = lab.machines.len() as u32;
        for sw in &lab.switches {
            self.traces
                .entry(sw.name.clone())
                .or_default()
                .push(TraceRecord {
                    time: self.now,
                    in_port: index as u32 + 1,
                    out_ports: (1..=ports).filter(|&p| p != index as u32 + 1).collect(),
                    frame: frame.clone(),
                });
        }
    }

    /// `poke FILE SECTOR`: writes one byte into sector SECTOR of the COW disk
    /// FILE, through the COW layer as a guest's `dd` would.
    fn poke(&self, args: &str) -> CommandOutcome {
        let (file, sector) = args.split_once(' ').unwrap_or((args, "0"));
        let Some(lab) = &self.lab else {
            return CommandOutcome {
                output: "no lab\n".into(),
                exit_code: 1,
                interrupted: false,
            };
        };
        let written = umltest::cow::file::CowFile::open(&lab.run_dir.join(file), None, true)
            .and_then(|mut c| c.write_at(b"x", sector.parse::<u64>().unwrap_or(0) * 512));
        match written {
            Ok(()) => CommandOutcome {
                output: String::new(),
                exit_code: 0,
                interrupted: false,
            },
            Err(e) => CommandOutcome {
                output: format!("{e}\n"),
                exit_code: 1,
                interrupted: false,
            },
        }
    }

    fn console(&mut self, machine: &str) -> &mut String {
        self.consoles.entry(machine.to_string()).or_default()
    }
}

impl Backend for Double {
    fn name(&self) -> &'static str {
        "double"
    }
    fn start(&mut self, lab: &Lab) -> Result<(), BackendError> {
        self.calls.push("start".into());
        self.lab = Some(lab.clone());
        Ok(())
    }
    fn boot(&mut self, machines: &[String], _timeout: Duration) -> Result<(), BackendError> {
        for m in machines {
            let argv = self.argv(m)?;
            self.calls.push(format!("boot {m}"));
            if argv.iter().any(|a| a == "panic") {
                self.console(m)
                    .push_str("Kernel panic - not syncing: Attempted to kill init!\n");
            } else {
                self.console(m).push_str("Linux version 6.1 (double)\n");
                self.shells.insert(m.clone());
            }
        }
        Ok(())
    }
    fn run(
        &mut self,
        machine: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutcome, BackendError> {
        self.shell(machine)?;
        self.calls.push(format!("run {machine} {command}"));
        let (mut out, used) = self.exec(machine, command, timeout);
        if let Some(args) = command.strip_prefix("poke ") {
            out = self.poke(args);
        }
        if command == "arp-probe" {
            self.probe(machine);
        }
        self.now += used;
        let line = format!("# {command}\n{}", out.output);
        self.console(machine).push_str(&line);
        Ok(out)
    }
    fn spawn(&mut self, machine: &str, command: &str) -> Result<JobId, BackendError> {
        self.shell(machine)?;
        self.calls.push(format!("spawn {machine} {command}"));
        self.next_job += 1;
        let id = JobId(self.next_job);
        self.jobs
            .insert(id, (machine.into(), command.into(), self.now));
        self.console(machine).push_str(&format!("# {command} &\n"));
        Ok(id)
    }
    fn wait_job(
        &mut self,
        machine: &str,
        job: JobId,
        timeout: Duration,
    ) -> Result<CommandOutcome, BackendError> {
        let (owner, command, started) =
            self.jobs
                .remove(&job)
                .ok_or_else(|| BackendError::Machine {
                    machine: machine.into(),
                    message: format!("no job {job:?}"),
                    last_lines: String::new(),
                })?;
        // Time already spent since the spawn counts against the command.
        let elapsed = self.now - started;
        let (mut out, used) = self.exec(&owner, &command, elapsed + timeout);
        self.now = started + used.max(elapsed);
        if out.interrupted {
            out.output = "^C\n".into();
        }
        self.console(&owner).push_str(&out.output);
        Ok(out)
    }
    fn set_link(&mut self, machine: &str, nic: &str, up: bool) -> Result<(), BackendError> {
        self.shell(machine)?;
        self.calls.push(format!("link {machine} {nic} {up}"));
        Ok(())
    }
    fn wait_console(
        &mut self,
        machine: &str,
        pattern: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        self.argv(machine)?;
        let seen = self
            .consoles
            .get(machine)
            .is_some_and(|c| c.contains(pattern));
        if !seen {
            self.now += timeout;
        }
        Ok(seen)
    }
    fn sleep(&mut self, duration: Duration) -> Result<(), BackendError> {
        self.now += duration;
        Ok(())
    }
    fn halt(&mut self, machines: &[String], _timeout: Duration) -> Result<(), BackendError> {
        for m in machines {
            self.shell(m)?;
            self.shells.remove(m);
            self.console(m).push_str("reboot: System halted\n");
        }
        Ok(())
    }
    fn kill(&mut self, machine: &str) -> Result<(), BackendError> {
        self.argv(machine)?;
        self.shells.remove(machine);
        self.calls.push(format!("kill {machine}"));
        Ok(())
    }
    fn finish(&mut self) -> Result<BackendArtifacts, BackendError> {
        Ok(BackendArtifacts {
            consoles: self.consoles.clone(),
            traces: self.traces.clone(),
        })
    }
}

fn plan(text: &str) -> umltest::scenario::plan::Plan {
    match resolve::parse(Path::new("lab.toml"), text) {
        Ok(p) => p,
        Err(d) => panic!("scenario should resolve:\n{d}"),
    }
}

/// Renders the diagnostics of a scenario that must not resolve.
fn errors(text: &str) -> String {
    match resolve::parse(Path::new("bad.toml"), text) {
        Ok(p) => panic!("scenario should not resolve, got {p:#?}"),
        Err(d) => d.to_string(),
    }
}

const LAB: &str = r#"
[scenario]
name = "double-lab"
seed = 7

[[switch]]
name = "sw1"

[[disk]]
name = "data.img"
size = "1M"

[[machine]]
name = "h1"
cmdline = "mem=64M ubd0=data.img eth0=vde,sw1"

[[machine]]
name = "h2"
cmdline = "mem=64M eth0=vde,sw1"

[[step]]
boot = ["h1", "h2"]

[[step]]
on = "h1"
run = "echo hello"
expect = { exit = 0, stdout = "hello" }

[[step]]
on = "h2"
run = "sleep 100"
timeout = "2s"
expect = { exit = 130, interrupted = true }

[[step]]
on = "h2"
run = "cat /proc/cmdline"
expect = { stdout_matches = "umid=h2 uml_dir=\\S+ init=/init$" }

[[step]]
write = "data.img"
offset = "512K"
data = "marker"

[[step]]
on = "h1"
run = "arp-probe"

[[step]]
expect_trace = "sw1"
contains = "Request who-has 255.255.255.255 tell 0.0.0.0"
lacks = "Reply"

[[step]]
on = "h1"
run = "sleep 1"
background = true
id = "bg"

[[step]]
wait_job = "bg"
expect = { exit = 0 }

[[step]]
halt = ["h1", "h2"]
"#;

#[test]
fn engine_runs_steps_in_order_and_records_consoles() {
    let dir = util::tempdir();
    let plan = plan(LAB);
    let mut backend = Double::default();
    let result = match engine::run(&plan, &mut backend, dir.path(), plan.seed) {
        Ok(r) => r,
        Err(e) => panic!("engine: {e}"),
    };
    assert_eq!(
        result.failures,
        vec![],
        "all expectations hold; artifacts: {:#?}",
        result.artifacts
    );
    assert_eq!(result.steps_run, 10);
    assert_eq!(
        backend.calls,
        [
            "start",
            "boot h1",
            "boot h2",
            "run h1 echo hello",
            "run h2 sleep 100",
            "run h2 cat /proc/cmdline",
            "run h1 arp-probe",
            "spawn h1 sleep 1"
        ]
    );
    let h2 = &result.artifacts["h2.console"];
    insta::assert_snapshot!("engine_h2_console", h2);
    insta::assert_snapshot!("engine_sw1_trace", &result.artifacts["sw1.trace"]);
    // The pcap beside it: global header plus one 16-byte record header and 58-byte frame.
    let pcap = std::fs::read(dir.path().join("sw1.pcap")).unwrap_or_default();
    assert_eq!(pcap.len(), 24 + 16 + 58);
    // The run folder's path never shows in an artifact.
    assert!(!h2.contains(&dir.path().display().to_string()));
    // The host-side write landed at its offset, the disk kept its exact size.
    let data = std::fs::read(dir.path().join("data.img")).unwrap_or_default();
    assert_eq!(data.len(), 1 << 20);
    assert_eq!(&data[512 << 10..(512 << 10) + 6], b"marker");
    // Artifacts are also files in the run folder.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("h2.console"))
            .ok()
            .as_ref(),
        Some(h2)
    );
}

#[test]
fn failed_expectations_are_collected_and_the_run_goes_on() {
    let dir = util::tempdir();
    let plan = plan(
        r#"
[scenario]
name = "fails"
[[machine]]
name = "h1"
cmdline = "mem=64M"
[[step]]
boot = "h1"
[[step]]
on = "h1"
run = "nosuch"
expect = { exit = 0, stdout = "x", stdout_lacks = "not found" }
[[step]]
on = "h1"
run = "echo still running"
expect = { stdout = "still" }
[[step]]
wait_console = "never printed"
on = "h1"
timeout = "1s"
"#,
    );
    let mut backend = Double::default();
    let result = engine::run(&plan, &mut backend, dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    let report: Vec<String> = result.failures.iter().map(ToString::to_string).collect();
    insta::assert_snapshot!("engine_failures", report.join("\n"));
    assert!(backend
        .calls
        .contains(&"run h1 echo still running".to_string()));
}

#[test]
fn a_backend_error_stops_the_run_but_artifacts_are_kept() {
    let dir = util::tempdir();
    let plan = plan(
        r#"
[scenario]
name = "panics"
[[machine]]
name = "h1"
cmdline = "mem=64M panic"
[[step]]
boot = "h1"
[[step]]
wait_console = "Kernel panic"
on = "h1"
[[step]]
on = "h1"
run = "echo unreachable"
[[step]]
halt = "h1"
"#,
    );
    let mut backend = Double::default();
    let result = engine::run(&plan, &mut backend, dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.steps_run, 3, "stopped at the failing step");
    assert_eq!(result.failures.len(), 1, "{:?}", result.failures);
    let first = result.failures[0].to_string();
    assert!(
        first.starts_with(
            "step 3 (line 12): run on h1: echo unreachable: the double backend stopped the run"
        ),
        "{first}"
    );
    assert!(result.artifacts["h1.console"].contains("Kernel panic"));
}

/// A lab with a `fault` step is refused up front by a backend that cannot
/// inject faults (every one but the sim): it never runs without them, and
/// nothing boots only to stop at the fault.
#[test]
fn a_lab_with_a_fault_step_is_refused_by_a_backend_without_faults() {
    let dir = util::tempdir();
    let plan = plan(
        r#"
[scenario]
name = "faulty"
[[machine]]
name = "h1"
cmdline = "mem=64M"
[[step]]
boot = "h1"
[[step]]
fault = "eth0"
on    = "h1"
loss  = 0.5
[[step]]
on = "h1"
run = "echo unreachable"
"#,
    );
    let mut backend = Double::default();
    let err = engine::run(&plan, &mut backend, &dir.path().join("run"), 1)
        .err()
        .unwrap_or_else(|| panic!("the lab ran without its fault"));
    assert_eq!(
        err.to_string(),
        "step 2 (line 9) is a `fault` step, which the double backend cannot perform (only the sim injects faults): nothing was run"
    );
    assert!(backend.calls.is_empty(), "nothing ran: {:?}", backend.calls);
    assert!(!dir.path().join("run").exists(), "no run folder");
}

#[test]
fn snapshot_mismatch_gives_a_unified_diff_and_update_writes_insta_files() {
    let dir = util::tempdir();
    let snaps = dir.path().join("snapshots/lab");
    let mut artifacts = BTreeMap::new();
    artifacts.insert("h1.console".to_string(), "one\ntwo\nthree\n".to_string());
    let m = snapshot::compare(
        &snaps,
        "scenarios/lab.toml",
        &artifacts,
        snapshot::UpdateMode::Always,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.len(), 1, "first run: no snapshot yet");
    let snap = std::fs::read_to_string(snaps.join("h1.console.snap")).unwrap_or_default();
    assert_eq!(
        snap,
        "---\nsource: scenarios/lab.toml\nexpression: h1.console\n---\none\ntwo\nthree\n"
    );
    let same = snapshot::compare(
        &snaps,
        "scenarios/lab.toml",
        &artifacts,
        snapshot::UpdateMode::No,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(same, vec![]);
    artifacts.insert("h1.console".to_string(), "one\nTWO\nthree\n".to_string());
    let m = snapshot::compare(
        &snaps,
        "scenarios/lab.toml",
        &artifacts,
        snapshot::UpdateMode::New,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.len(), 1);
    let detail = m[0]
        .detail
        .replace(&dir.path().display().to_string(), "$DIR");
    insta::assert_snapshot!("snapshot_mismatch_diff", detail);
    assert!(
        snaps.join("h1.console.snap.new").is_file(),
        "pending file for cargo insta review"
    );
    // A snapshot whose artifact is gone is stale.
    artifacts.clear();
    artifacts.insert("h2.console".to_string(), "x\n".to_string());
    let m = snapshot::compare(&snaps, "s", &artifacts, snapshot::UpdateMode::No)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        m.iter()
            .any(|m| m.artifact == "h1.console" && m.detail.starts_with("stale")),
        "{m:?}"
    );
}

/// Bad scenario files and the exact message a user sees.
#[rstest::rstest]
#[case::syntax_error("syntax_error", "[scenario]\nname = \"x\nseed = 1\n")]
#[case::unknown_key("unknown_key", "[scenario]\nname = \"x\"\n\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M\"\nmemory = \"64M\"\n")]
#[case::unknown_step_key(
    "unknown_step_key",
    "[scenario]\nname = \"x\"\n[[step]]\nbot = [\"h1\"]\n"
)]
#[case::unknown_machine("unknown_machine", "[scenario]\nname = \"x\"\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M\"\n[[step]]\nboot = [\"h1\", \"h3\"]\n[[step]]\non = \"h4\"\nrun = \"true\"\n")]
#[case::cmdline_error(
    "cmdline_error",
    "[scenario]\nname = \"x\"\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M ubd0='fs.ext4\"\n"
)]
#[case::outside_run_folder("outside_run_folder", "[scenario]\nname = \"x\"\n[[disk]]\nname = \"../fs.ext4\"\nsize = \"1M\"\n[[disk]]\nname = \"/srv/fs.ext4\"\nsize = \"1M\"\n")]
#[case::bad_size(
    "bad_size",
    "[scenario]\nname = \"x\"\n[[disk]]\nname = \"d.img\"\nsize = \"300Q\"\n"
)]
#[case::two_kinds("two_kinds", "[scenario]\nname = \"x\"\n[[machine]]\nname = \"h1\"\ncmdline = \"\"\n[[step]]\nboot = \"h1\"\nhalt = \"h1\"\n")]
#[case::option_of_other_kind("option_of_other_kind", "[scenario]\nname = \"x\"\n[[machine]]\nname = \"h1\"\ncmdline = \"\"\n[[step]]\nboot = \"h1\"\nexpect = { exit = 0 }\n")]
#[case::bad_duration_and_regex("bad_duration_and_regex", "[scenario]\nname = \"x\"\n[[machine]]\nname = \"h1\"\ncmdline = \"\"\n[[step]]\non = \"h1\"\nrun = \"x\"\ntimeout = \"5 parsecs\"\n[[step]]\non = \"h1\"\nrun = \"x\"\nexpect = { stdout_matches = \"(\" }\n")]
#[case::duplicate_names("duplicate_names", "[scenario]\nname = \"x\"\n[[switch]]\nname = \"h1\"\n[[machine]]\nname = \"h1\"\ncmdline = \"\"\n")]
#[case::unknown_job_and_switch("unknown_job_and_switch", "[scenario]\nname = \"x\"\n[[switch]]\nname = \"sw1\"\n[[step]]\nwait_job = \"bg\"\n[[step]]\nexpect_trace = \"sw2\"\ncontains = \"ARP\"\n")]
#[case::bad_faults("bad_faults", "[scenario]\nname = \"x\"\n[[machine]]\nname = \"h1\"\ncmdline = \"\"\n[[step]]\nfault = \"eth0\"\non = \"h1\"\nloss = 1.5\n[[step]]\nfault = \"eth0\"\non = \"h1\"\nfail_write = 2\n[[step]]\nfault = \"ubd1\"\non = \"h1\"\ndelay = \"5ms\"\n[[step]]\nfault = \"ubd1\"\non = \"h1\"\nfail_write = 0\n[[step]]\nfault = \"sda\"\non = \"h1\"\n")]
#[case::unknown_fault_key("unknown_fault_key", "[scenario]\nname = \"x\"\n[[machine]]\nname = \"h1\"\ncmdline = \"\"\n[[step]]\nfault = \"eth0\"\non = \"h1\"\njitter = \"1ms\"\n")]
fn bad_scenarios_explain_themselves(#[case] name: &str, #[case] text: &str) {
    insta::assert_snapshot!(format!("bad_{name}"), errors(text));
}

#[test]
fn external_disks_are_read_only() {
    let e = errors("[scenario]\nname = \"x\"\n[[disk]]\nname = \"/srv/base.img\"\nexternal = true\n[[step]]\nwrite = \"/srv/base.img\"\ndata = \"x\"\n");
    assert!(e.contains("is an external disk: it is read-only"), "{e}");
    // Reading it (a copy source) is fine.
    let p = plan("[scenario]\nname = \"x\"\n[[disk]]\nname = \"/srv/base.img\"\nexternal = true\n[[step]]\ncopy = \"/srv/base.img\"\nto = \"b.img\"\n");
    assert_eq!(p.steps.len(), 1);
}

#[test]
fn reference_document_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/scenario-reference.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = umltest::scenario::reference::markdown();
    assert!(
        committed == generated,
        "docs/scenario-reference.md is stale: regenerate it with\n  cargo run -q -- check --reference > docs/scenario-reference.md"
    );
}

fn write_scenarios(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let p = dir.join(format!("{n}.toml"));
            let text = format!("[scenario]\nname = \"{n}\"\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M\"\n[[step]]\nboot = \"h1\"\n");
            std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
            p
        })
        .collect()
}

#[test]
fn list_filter_and_partition() {
    let dir = util::tempdir();
    write_scenarios(dir.path(), &["alpha", "beta", "gamma", "delta", "epsilon"]);
    let listed = util::umltest(dir.path(), &["run", "--list", "."]);
    listed.expect_code(0);
    let names: Vec<String> = listed
        .stdout()
        .lines()
        .filter_map(|l| l.split('\t').next().map(str::to_string))
        .collect();
    assert_eq!(
        names,
        ["alpha", "beta", "delta", "epsilon", "gamma"],
        "sorted by file"
    );
    let filtered = util::umltest(dir.path(), &["run", "--list", "--filter", "ta", "."]);
    filtered.expect_code(0);
    assert_eq!(
        filtered.stdout().lines().count(),
        2,
        "beta, delta: {}",
        filtered.dump()
    );
    // Shards are disjoint and cover everything.
    let mut seen = Vec::new();
    for k in 1..=3 {
        let part = format!("hash:{k}/3");
        let shard = util::umltest(
            dir.path(),
            &["run", "--list", "--partition", part.as_str(), "."],
        );
        shard.expect_code(0);
        seen.extend(shard.stdout().lines().map(|l| l.to_string()));
    }
    seen.sort();
    assert_eq!(seen.len(), 5, "{seen:?}");
    seen.dedup();
    assert_eq!(seen.len(), 5, "{seen:?}");
    // A filter that matches nothing: nothing ran.
    let none = util::umltest(dir.path(), &["run", "--filter", "zzz", "."]);
    none.expect_code(4);
    assert_eq!(none.stdout().lines().last(), Some("0 passed, 0 failed"));
}

#[test]
fn an_empty_partition_shard_passes() {
    let dir = util::tempdir();
    write_scenarios(dir.path(), &["only"]);
    // One scenario, two shards: exactly one shard is empty.
    let codes: Vec<String> = (1..=2)
        .map(|k| {
            let part = format!("hash:{k}/2");
            let junit = dir.path().join(format!("junit{k}.xml"));
            let r = util::umltest(
                dir.path(),
                &[
                    "run",
                    "--partition",
                    part.as_str(),
                    "--junit",
                    junit.to_str().unwrap_or(""),
                    ".",
                ],
            );
            format!("{:?} {}", r.code(), r.stdout().lines().last().unwrap_or(""))
        })
        .collect();
    assert!(
        codes.contains(&"Some(0) 0 passed, 0 failed".to_string()),
        "{codes:?}"
    );
}

#[test]
fn bad_files_and_usage_exit_2() {
    let dir = util::tempdir();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[scenario]\nname = \"x\"\nbogus = 1\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = util::umltest(dir.path(), &["check", "bad.toml"]);
    r.expect_code(2);
    assert!(r.stderr().contains("bad.toml:3:1"), "{}", r.dump());
    let r = util::umltest(dir.path(), &["run", "bad.toml"]);
    r.expect_code(2);
    let r = util::umltest(dir.path(), &["run", "--partition", "hash:3/2", "."]);
    r.expect_code(2);
    let r = util::umltest(dir.path(), &["run", "missing.toml"]);
    r.expect_code(2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The parser never panics, whatever the text.
    #[test]
    fn parser_never_panics(text in "\\PC*") {
        let _ = resolve::parse(Path::new("p.toml"), &text);
    }

    /// Nor on text that looks like a scenario with random values in it
    /// (regression: `cmdline::parse` once panicked on `"𐠀="`).
    #[test]
    fn parser_never_panics_on_near_scenarios(
        name in "\\PC{0,8}", cmd in "\\PC{0,30}", size in "\\PC{0,8}", on in "\\PC{0,4}", t in "\\PC{0,6}"
    ) {
        let text = format!(
            "[scenario]\nname = {name:?}\n[[disk]]\nname = \"d\"\nsize = {size:?}\n[[machine]]\nname = \"h1\"\ncmdline = {cmd:?}\n[[step]]\non = {on:?}\nrun = \"x\"\ntimeout = {t:?}\n"
        );
        let _ = resolve::parse(Path::new("p.toml"), &text);
    }
}

#[test]
fn mkfs_ext4_is_reproducible_and_sparse() {
    let Some(mkfs) = util::tool("mkfs.ext4", "e2fsprogs") else {
        return;
    };
    let dir = util::tempdir();
    let (a, b) = (dir.path().join("a.ext4"), dir.path().join("b.ext4"));
    for p in [&a, &b] {
        umltest::scenario::disk::mkfs_ext4(p, 16 << 20, "fs.ext4")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let (da, db) = (
        std::fs::read(&a).unwrap_or_default(),
        std::fs::read(&b).unwrap_or_default(),
    );
    assert_eq!(da.len(), 16 << 20);
    assert!(da == db, "two images of the same disk differ");
    // The cached copy is exactly what mkfs makes.
    let direct = dir.path().join("direct.ext4");
    umltest::scenario::disk::mkfs_ext4_uncached(&mkfs, &direct, 16 << 20, "fs.ext4")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        std::fs::read(&direct).unwrap_or_default() == da,
        "cache differs from mkfs"
    );
    // The ext4 magic, and the UUID derived from the disk's name.
    assert_eq!(&da[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
    let uuid = umltest::scenario::disk::derived_uuid("umltest-fs:fs.ext4").replace('-', "");
    let got: String = da[1024 + 0x68..1024 + 0x78]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(got, uuid);
    assert_eq!(umltest::scenario::disk::allocation(&a).ok(), Some("sparse"));
}

#[test]
fn host_side_disk_steps() {
    let dir = util::tempdir();
    let plan = plan(
        r#"
[scenario]
name = "disks"
[[disk]]
name = "base.img"
size = "1M+1"
[[disk]]
name = "a.cow"
backing = "base.img"
[[step]]
mkcow = "b.cow"
backing = "base.img"
[[step]]
check = "a.cow"
expect = { exit = 0, stdout = "ok: COW version 3 header" }
[[step]]
merge = "a.cow"
into = "merged.img"
[[step]]
copy = "base.img"
to = "careless.img"
[[step]]
copy = "base.img"
to = "careful.img"
preserve = true
sparse = true
[[step]]
mkcow = "b.cow"
backing = "base.img"
expect = { exit = 1 }
"#,
    );
    let mut backend = Double::default();
    let result = engine::run(&plan, &mut backend, dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.failures, vec![]);
    let p = |n: &str| dir.path().join(n);
    let len = |n: &str| std::fs::metadata(p(n)).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len("base.img"), (1 << 20) + 1, "exact size, `+1` included");
    assert_eq!(len("merged.img"), len("base.img"));
    assert!(p("b.cow").is_file());
    use umltest::scenario::disk::allocation;
    assert_eq!(allocation(&p("careless.img")).ok(), Some("fully allocated"));
    assert_eq!(allocation(&p("careful.img")).ok(), Some("sparse"));
    let mtime = |n: &str| std::fs::metadata(p(n)).and_then(|m| m.modified()).ok();
    assert_eq!(mtime("careful.img"), mtime("base.img"));
    assert_ne!(mtime("careless.img"), mtime("base.img"));
}

#[test]
fn cmdline_names_resolve_to_disks_and_switches() {
    let e = errors(
        "[scenario]\nname = \"x\"\n[[switch]]\nname = \"sw1\"\n[[disk]]\nname = \"fs.ext4\"\nsize = \"1M\"\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M ubd0=h1.cow,fs.ext3 ubd1=../etc/passwd eth0=vde,sw2\"\n[[machine]]\nname = \"h2\"\ncmdline = \"ubd0=h2.cow,fs.ext4 eth0=vde,sw1\"\n",
    );
    insta::assert_snapshot!("bad_cmdline_names", e);
}

#[test]
fn cow_disks_get_a_diff_of_changed_sectors() {
    let dir = util::tempdir();
    let plan = plan(
        r#"
[scenario]
name = "cow-diff"
[[disk]]
name = "base.img"
size = "1M"
[[disk]]
name = "a.cow"
backing = "base.img"
[[machine]]
name = "h1"
cmdline = "mem=64M ubd0=a.cow ubd1=base.img ubd2=never.cow,base.img"
[[step]]
boot = "h1"
[[step]]
on = "h1"
run = "poke a.cow 5"
expect = { exit = 0 }
[[step]]
on = "h1"
run = "poke a.cow 6"
[[step]]
on = "h1"
run = "poke a.cow 100"
[[step]]
halt = "h1"
[[step]]
check = "a.cow"
expect = { stdout = "ok: " }
"#,
    );
    let mut backend = Double::default();
    let result = engine::run(&plan, &mut backend, dir.path(), 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.failures, vec![]);
    let names: Vec<&String> = result.artifacts.keys().collect();
    assert_eq!(
        names,
        ["h1.console", "h1.ubd0.diff", "h1.ubd2.diff", "host.log"],
        "plain ubd1 has no diff"
    );
    assert!(
        result.artifacts["host.log"].starts_with("$ check a.cow\nok: COW version 3 header"),
        "{}",
        result.artifacts["host.log"]
    );
    insta::assert_snapshot!("cow_diff_ubd0", &result.artifacts["h1.ubd0.diff"]);
    assert_eq!(
        result.artifacts["h1.ubd2.diff"],
        "ubd2: never.cow over base.img\nnot created\n"
    );
}

/// Every lab in `scenarios/` (one test per file): it passes against its committed
/// snapshots and runs twice with identical artifact digests.
#[rstest::rstest]
fn scenario_file(#[files("scenarios/*.toml")] file: PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rel = file.strip_prefix(root).unwrap_or(&file);
    let out = std::process::Command::new(util::umltest_bin())
        .current_dir(root)
        .args(["run", "--check-determinism"])
        .arg(rel)
        // Never write .snap.new files into the repository from a test.
        .env("INSTA_UPDATE", "no")
        .output()
        .unwrap_or_else(|e| panic!("spawn umltest: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "umltest run --check-determinism {}\nstatus: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        rel.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().last(), Some("1 passed, 0 failed"));
}

/// `--backend both` wraps each backend in a `Recorder`, which must change
/// nothing: every lab gives the same failures and artifacts through it as
/// without it (a method left to the trait's default once made the sim refuse
/// `fault` steps and give careless copies the host's clock in `both` runs).
#[rstest::rstest]
fn the_recorder_of_backend_both_changes_nothing(#[files("scenarios/*.toml")] file: PathBuf) {
    use umltest::uml::differential::Recorder;
    let plan = resolve::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let dir = util::tempdir();
    let mut plain = umltest::sim::SimBackend::new();
    let direct = engine::run(&plan, &mut plain, &dir.path().join("direct"), plan.seed)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut recorder = Recorder::new(umltest::sim::SimBackend::new());
    let recorded = engine::run(
        &plan,
        &mut recorder,
        &dir.path().join("recorded"),
        plan.seed,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        direct.failures.is_empty(),
        "{}: {:?}",
        file.display(),
        direct.failures
    );
    assert_eq!(direct.failures, recorded.failures, "{}", file.display());
    assert_eq!(
        direct.artifacts.keys().collect::<Vec<_>>(),
        recorded.artifacts.keys().collect::<Vec<_>>()
    );
    for (name, text) in &direct.artifacts {
        assert_eq!(
            text,
            &recorded.artifacts[name],
            "{}: artifact {name}",
            file.display()
        );
    }
}

const SMALL_LAB: &str = r#"[scenario]
name = "small"
seed = 3

[[disk]]
name = "fs.ext4"
size = "32M"
image = "default"

[[machine]]
name = "h1"
cmdline = "mem=64M ubd0=h1.cow,fs.ext4 root=/dev/ubda"

[[step]]
boot = "h1"

[[step]]
on = "h1"
run = "echo hello"
expect = { stdout = "hello" }

[[step]]
halt = "h1"
"#;

/// A scenario on the sim, run through the CLI: snapshots written with
/// `--update`, then a changed snapshot makes the run fail with exit 100, a
/// unified diff, the reproducing command with its seed, and a JUnit failure.
#[test]
fn snapshot_mismatch_fails_the_run_with_a_diff() {
    if util::tool("mkfs.ext4", "e2fsprogs").is_none() {
        return;
    }
    let dir = util::tempdir();
    let scenarios = dir.path().join("scenarios");
    std::fs::create_dir_all(&scenarios).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(scenarios.join("small.toml"), SMALL_LAB).unwrap_or_else(|e| panic!("{e}"));
    let first = util::umltest(dir.path(), &["run", "--update", "scenarios/small.toml"]);
    first.expect_code(0);
    let snap = dir.path().join("snapshots/small/h1.console.snap");
    let text = std::fs::read_to_string(&snap).unwrap_or_default();
    assert!(
        text.starts_with(
            "---\nsource: scenarios/small.toml\nexpression: h1.console\n---\n$ linux mem=64M"
        ),
        "{text}"
    );
    // Same artifacts again: passes, with the determinism check.
    util::umltest(
        dir.path(),
        &["run", "--check-determinism", "scenarios/small.toml"],
    )
    .expect_code(0);

    std::fs::write(&snap, text.replace("# echo hello", "# echo bye"))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("out");
    let junit = dir.path().join("junit.xml");
    // Like insta, a run under CI writes no `.snap.new`; the pending file for
    // review is the local behaviour, so this run gets CI's variable removed.
    let under_ci = util::umltest_env(
        dir.path(),
        &["run", "scenarios/small.toml"],
        &[("CI", Some("true"))],
    );
    under_ci.expect_code(100);
    assert!(
        !dir.path()
            .join("snapshots/small/h1.console.snap.new")
            .exists(),
        "no pending snapshot under CI\n{}",
        under_ci.dump()
    );
    let failed = util::umltest_env(
        dir.path(),
        &[
            "run",
            "scenarios/small.toml",
            "--seed",
            "3",
            "--out",
            out.to_str().unwrap_or(""),
            "--junit",
            junit.to_str().unwrap_or(""),
        ],
        &[("CI", None)],
    );
    failed.expect_code(100);
    let stdout = failed.stdout();
    assert!(
        stdout.contains("FAIL small (scenarios/small.toml)"),
        "{}",
        failed.dump()
    );
    assert!(
        stdout.contains("-# echo bye\n    +# echo hello"),
        "{}",
        failed.dump()
    );
    assert!(
        stdout.contains("reproduce: umltest run scenarios/small.toml --backend sim --seed 3"),
        "{}",
        failed.dump()
    );
    assert_eq!(stdout.lines().last(), Some("0 passed, 1 failed"));
    assert!(
        dir.path()
            .join("snapshots/small/h1.console.snap.new")
            .is_file(),
        "pending snapshot for review"
    );
    assert!(out.join("small/h1.console").is_file(), "run folder kept");
    let xml = std::fs::read_to_string(&junit).unwrap_or_default();
    assert!(
        xml.contains("<testcase name=\"small\" classname=\"scenarios/small.toml\""),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"artifact h1.console differs from its snapshot:\">"),
        "{xml}"
    );
}

#[test]
fn a_run_folder_too_long_for_unix_sockets_is_reported() {
    if util::tool("mkfs.ext4", "e2fsprogs").is_none() {
        return;
    }
    let dir = util::tempdir();
    std::fs::write(dir.path().join("small.toml"), SMALL_LAB).unwrap_or_else(|e| panic!("{e}"));
    let long = dir.path().join("o".repeat(100));
    let r = util::umltest(
        dir.path(),
        &[
            "run",
            "small.toml",
            "--update",
            "--out",
            long.to_str().unwrap_or(""),
        ],
    );
    r.expect_code(0);
    assert!(
        r.stderr()
            .contains("longer than unix sockets allow (107); use a shorter --out"),
        "{}",
        r.dump()
    );
}

/// The per-COW diff artifact lists the ext4 files a COW disk adds, changes and
/// removes (an image changed with debugfs, its changed blocks written through
/// a COW); a disk whose bytes did not change says so without reading the
/// filesystem.
#[test]
fn cow_diff_artifact_lists_changed_ext4_files() {
    use umltest::cow::create::{create, CreateOptions};
    let dir = util::tempdir();
    let d = dir.path();
    std::fs::write(d.join("new.txt"), "new\n").unwrap_or_else(|e| panic!("{e}"));
    let tree = [("etc/hosts", "hello\n"), ("gone", "gone\n")];
    let edits = [
        "rm /gone",
        "write new.txt /new",
        "sif /etc/hosts mode 0100600",
    ];
    if util::ext4_base_and_edited(d, &tree, &edits).is_none() {
        return;
    }
    let opts = CreateOptions::default();
    create(&d.join("x.cow"), &d.join("base.ext4"), &opts).unwrap_or_else(|e| panic!("{e}"));
    create(&d.join("same.cow"), &d.join("base.ext4"), &opts).unwrap_or_else(|e| panic!("{e}"));
    util::write_changed_blocks(d, &d.join("x.cow"));
    let files = |cow: &str| {
        let path = d.join(cow);
        let diff =
            umltest::cow::inspect::diff(&path, None, false).unwrap_or_else(|e| panic!("{e}"));
        umltest::scenario::artifacts::describe_files(&path, None, &diff, None)
    };
    assert_eq!(
        files("x.cow"),
        "files: 1 added, 1 changed, 1 removed\nM /etc/hosts (mode)\nD /gone\nA /new\n"
    );
    assert_eq!(files("same.cow"), "files: none changed\n");
    // Not an ext filesystem: no file section at all.
    std::fs::write(d.join("raw.img"), vec![0u8; 1 << 16]).unwrap_or_else(|e| panic!("{e}"));
    create(&d.join("raw.cow"), &d.join("raw.img"), &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(files("raw.cow"), "");
}

/// `check` takes `run` after a machine is booted again (it does not track
/// which machines run); booting a machine that still runs stops the run on
/// the backend, naming it.
#[test]
fn check_accepts_booting_again_and_a_run_refuses_booting_a_running_machine() {
    if util::tool("mkfs.ext4", "e2fsprogs").is_none() {
        return;
    }
    let dir = util::tempdir();
    let head = "[scenario]\nname = \"again\"\n[[disk]]\nname = \"fs.ext4\"\nsize = \"64M\"\nimage = \"default\"\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M ubd0=h1.cow,fs.ext4 root=/dev/ubda\"\n[[step]]\nboot = \"h1\"\n";
    let again = format!("{head}[[step]]\nhalt = \"h1\"\n[[step]]\nboot = \"h1\"\n[[step]]\non = \"h1\"\nrun = \"echo again\"\nexpect = {{ exit = 0, stdout = \"again\" }}\n");
    std::fs::write(dir.path().join("again.toml"), again).unwrap_or_else(|e| panic!("{e}"));
    util::umltest(dir.path(), &["check", "again.toml"]).expect_code(0);
    let twice = format!("{head}[[step]]\nboot = \"h1\"\n");
    std::fs::write(
        dir.path().join("twice.toml"),
        twice.replace("\"again\"", "\"twice\""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    util::umltest(dir.path(), &["check", "twice.toml"]).expect_code(0);
    let r = util::umltest(dir.path(), &["run", "--out", "out", "twice.toml"]);
    r.expect_code(100);
    assert!(
        r.stdout()
            .contains("machine h1: is already running: halt or kill it before booting it again"),
        "{}",
        r.dump()
    );
}
