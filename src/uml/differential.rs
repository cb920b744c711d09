//! `--backend both`: the same scenario on the sim and on real kernels, and every
//! difference between their normalised results as a failure with both sides shown.
//!
//! Compared: each guest command's outcome, in step order (exit code, whether it
//! was interrupted, output), and each switch's trace in sequence order (time
//! dropped). Normalisation removes what only says when or where it ran: `\r`,
//! printk timestamps, tcpdump's wall-clock time column, the harness's job-control
//! notices. A [`Recorder`] wraps each backend to collect the outcomes.

use std::path::Path;
use std::time::Duration;

use crate::scenario::backend::{
    Backend, BackendArtifacts, BackendError, CommandOutcome, Fault, JobId, Lab,
};
use crate::scenario::engine::{self, EngineError, Failure, RunResult};
use crate::scenario::normalize;
use crate::scenario::plan::Plan;

/// One guest command and what it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub machine: String,
    pub command: String,
    pub outcome: CommandOutcome,
}

/// A backend that records every command outcome of the backend it wraps.
pub struct Recorder<B> {
    pub inner: B,
    pub outcomes: Vec<Recorded>,
    jobs: Vec<(JobId, String)>,
}

impl<B: Backend> Recorder<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            outcomes: Vec::new(),
            jobs: Vec::new(),
        }
    }

    fn keep(&mut self, machine: &str, command: &str, outcome: &CommandOutcome) {
        self.outcomes.push(Recorded {
            machine: machine.to_string(),
            command: command.to_string(),
            outcome: outcome.clone(),
        });
    }
}

impl<B: Backend> Backend for Recorder<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn start(&mut self, lab: &Lab) -> Result<(), BackendError> {
        self.inner.start(lab)
    }
    fn prepare_image(&mut self, image: &str, path: &Path, size: u64) -> Result<(), BackendError> {
        self.inner.prepare_image(image, path, size)
    }
    fn boot(&mut self, machines: &[String], timeout: Duration) -> Result<(), BackendError> {
        self.inner.boot(machines, timeout)
    }
    fn run(
        &mut self,
        machine: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutcome, BackendError> {
        let out = self.inner.run(machine, command, timeout)?;
        self.keep(machine, command, &out);
        Ok(out)
    }
    fn spawn(&mut self, machine: &str, command: &str) -> Result<JobId, BackendError> {
        let id = self.inner.spawn(machine, command)?;
        self.jobs.push((id, command.to_string()));
        Ok(id)
    }
    fn wait_job(
        &mut self,
        machine: &str,
        job: JobId,
        timeout: Duration,
    ) -> Result<CommandOutcome, BackendError> {
        let out = self.inner.wait_job(machine, job, timeout)?;
        let command = self
            .jobs
            .iter()
            .find(|(id, _)| *id == job)
            .map(|(_, c)| format!("{c} &"))
            .unwrap_or_default();
        self.keep(machine, &command, &out);
        Ok(out)
    }
    fn set_link(&mut self, machine: &str, nic: &str, up: bool) -> Result<(), BackendError> {
        self.inner.set_link(machine, nic, up)
    }
    fn wait_console(
        &mut self,
        machine: &str,
        pattern: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        self.inner.wait_console(machine, pattern, timeout)
    }
    fn sleep(&mut self, duration: Duration) -> Result<(), BackendError> {
        self.inner.sleep(duration)
    }
    fn halt(&mut self, machines: &[String], timeout: Duration) -> Result<(), BackendError> {
        self.inner.halt(machines, timeout)
    }
    fn kill(&mut self, machine: &str) -> Result<(), BackendError> {
        self.inner.kill(machine)
    }
    fn can_inject_faults(&self) -> bool {
        self.inner.can_inject_faults()
    }
    fn inject_fault(&mut self, machine: &str, fault: &Fault) -> Result<(), BackendError> {
        self.inner.inject_fault(machine, fault)
    }
    fn file_time(&self) -> Option<std::time::SystemTime> {
        self.inner.file_time()
    }
    fn finish(&mut self) -> Result<BackendArtifacts, BackendError> {
        self.inner.finish()
    }
}

/// A command's output as compared: see the module doc.
pub fn normalize_output(text: &str) -> String {
    normalize::console(text)
        .lines()
        // Job-control notices of the real shell (`[1]+  Done ...`) are not output.
        .filter(|l| !is_job_notice(l))
        .map(|l| timings(strip_clock(l)))
        .map(|l| l + "\n")
        .collect()
}

/// `[1]+  Done   ( x )`, `[2]-  Interrupt ...`: ash's job-status lines.
fn is_job_notice(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((n, rest)) = rest.split_once(']') else {
        return false;
    };
    let rest = rest.trim_start_matches(['+', '-']).trim_start();
    !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && ["Done", "Exit", "Interrupt", "Killed", "Terminated"]
            .iter()
            .any(|w| rest.starts_with(w))
}

/// arping's round-trip times (`time=192.266 usec`, `rtt min/avg/max/std-dev = ...`)
/// measure the host, not the protocol: replaced by `T`.
fn timings(line: &str) -> String {
    if let Some(rest) = line.strip_prefix("rtt min/avg/max/std-dev = ") {
        let unit = rest.rsplit(' ').next().unwrap_or("");
        return format!("rtt min/avg/max/std-dev = T {unit}");
    }
    let Some(at) = line.find(" time=") else {
        return line.to_string();
    };
    let after = &line[at + 6..];
    let value_end = after
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(after.len());
    let rest = &after[value_end..];
    // Units change with the magnitude (usec, msec, sec): not compared either.
    let rest = ["usec", "msec", "sec"]
        .iter()
        .find_map(|u| rest.strip_prefix(&format!(" {u}")))
        .unwrap_or(rest);
    format!("{} time=T{rest}", &line[..at])
}

/// Drops a leading `HH:MM:SS.ffffff ` (tcpdump's time column).
fn strip_clock(line: &str) -> &str {
    let b = line.as_bytes();
    let is_clock = b.len() > 16
        && b.iter().take(15).enumerate().all(|(i, c)| match i {
            2 | 5 => *c == b':',
            8 => *c == b'.',
            _ => c.is_ascii_digit(),
        })
        && b.get(15) == Some(&b' ');
    if is_clock {
        line.get(16..).unwrap_or(line)
    } else {
        line
    }
}

/// Every difference between the two runs' command outcomes and traces.
pub fn compare(
    sim: &[Recorded],
    sim_artifacts: &RunResult,
    uml: &[Recorded],
    uml_artifacts: &RunResult,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (i, pair) in sim.iter().zip(uml.iter()).enumerate() {
        let (s, u) = pair;
        let what = format!("command {} on {} ({:?})", i + 1, s.machine, s.command);
        if s.command != u.command || s.machine != u.machine {
            diffs.push(format!(
                "{what}: the runs diverged: the uml run ran {:?} on {}",
                u.command, u.machine
            ));
            break;
        }
        if s.outcome.exit_code != u.outcome.exit_code {
            diffs.push(format!(
                "{what}: exit code: sim {}, uml {}",
                s.outcome.exit_code, u.outcome.exit_code
            ));
        }
        if s.outcome.interrupted != u.outcome.interrupted {
            diffs.push(format!(
                "{what}: interrupted: sim {}, uml {}",
                s.outcome.interrupted, u.outcome.interrupted
            ));
        }
        let (so, uo) = (
            normalize_output(&s.outcome.output),
            normalize_output(&u.outcome.output),
        );
        if so != uo {
            diffs.push(format!(
                "{what}: output differs:\n--- sim\n{so}--- uml\n{uo}---"
            ));
        }
    }
    if sim.len() != uml.len() {
        diffs.push(format!(
            "the sim ran {} commands, the uml run {}",
            sim.len(),
            uml.len()
        ));
    }
    for (name, sim_text) in &sim_artifacts.artifacts {
        if !name.ends_with(".trace") {
            continue;
        }
        let uml_text = uml_artifacts
            .artifacts
            .get(name)
            .map(String::as_str)
            .unwrap_or("");
        diffs.extend(compare_traces(
            name,
            &normalize::trace(sim_text),
            &normalize::trace(uml_text),
        ));
    }
    diffs
}

/// Frame-by-frame differences of two normalised traces.
pub fn compare_traces(name: &str, sim: &str, uml: &str) -> Vec<String> {
    let (s, u): (Vec<&str>, Vec<&str>) = (sim.lines().collect(), uml.lines().collect());
    let mut diffs = Vec::new();
    for i in 0..s.len().max(u.len()) {
        match (s.get(i), u.get(i)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                diffs.push(format!("{name} frame {}:\n  sim: {a}\n  uml: {b}", i + 1))
            }
            (Some(a), None) => diffs.push(format!(
                "{name} frame {} missing on uml:\n  sim: {a}",
                i + 1
            )),
            (None, Some(b)) => diffs.push(format!(
                "{name} frame {} missing on the sim:\n  uml: {b}",
                i + 1
            )),
            (None, None) => {}
        }
    }
    diffs
}

/// The run folders of `--backend both`: the sim's `run_dir`, the real run's
/// `<run_dir>.uml`, and `<run_dir>.uml.first` for a first attempt that stopped.
pub fn folders(run_dir: &Path) -> [std::path::PathBuf; 3] {
    let sibling = |suffix: &str| {
        run_dir.with_file_name(format!(
            "{}{suffix}",
            run_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ))
    };
    [
        run_dir.to_path_buf(),
        sibling(".uml"),
        sibling(".uml.first"),
    ]
}

/// Runs `plan` on the sim in `run_dir` and on real kernels in `<run_dir>.uml`, and
/// returns the sim's result (its artifacts go to the snapshots) with every failure
/// of the uml run and every difference added. The three folders (see [`folders`])
/// must be claimed run folders ([`crate::scenario::run_folder`]).
///
/// A real run that stops early (a guest dead before its shell, a step the
/// backend could not perform) where the sim went on is run once more in a fresh
/// folder, the first attempt kept in `<run_dir>.uml.first` and reported on
/// stderr: under load a real guest can die before init for reasons of the
/// host (seen once: an ENOMEM panic in a lab that passed 12 of 12 runs on a
/// quiet machine). A lab that really stops on uml stops both times and fails.
/// `unconfined`: the real kernels run without the Landlock sandbox.
pub fn run_both(
    plan: &Plan,
    run_dir: &Path,
    seed: u64,
    unconfined: bool,
) -> Result<RunResult, EngineError> {
    let [_, uml_dir, first_dir] = folders(run_dir);
    for dir in [run_dir, uml_dir.as_path(), first_dir.as_path()] {
        engine::clear_run_folder(dir)?;
    }
    let run_uml = || {
        // Without linux.uml nothing runs at all (exit code 4).
        let mut uml = Recorder::new(
            super::backend::UmlBackend::new()
                .capture_only(super::backend::COMPARED_ETHERTYPES)
                .unconfined(unconfined),
        );
        engine::run(plan, &mut uml, &uml_dir, seed).map(|r| (uml, r))
    };
    let (mut uml, mut uml_result) = run_uml()?;
    let mut sim = Recorder::new(crate::sim::SimBackend::new());
    let mut result = engine::run(plan, &mut sim, run_dir, seed)?;
    if uml_result.stopped && !result.stopped {
        // The failure that stopped it: at the last step run, else (a lab that
        // could not start) the first one.
        let why = uml_result
            .failures
            .iter()
            .find(|f| f.step.map(|(n, _)| n) == Some(uml_result.steps_run))
            .or(uml_result.failures.first())
            .map(|f| f.to_string())
            .unwrap_or_default();
        let first_line = why.lines().next().unwrap_or_default();
        eprintln!(
            "umltest: {}: the uml run stopped at step {} where the sim went on ({first_line}); running it once more (first attempt kept in {})",
            plan.name,
            uml_result.steps_run,
            first_dir.display()
        );
        // Both folders stay claimed and locked: the contents move, not the folder.
        crate::scenario::run_folder::move_contents(&uml_dir, &first_dir).map_err(|e| {
            EngineError::RunFolder {
                dir: uml_dir.clone(),
                message: format!(
                    "cannot keep the first attempt in {}: {e}",
                    first_dir.display()
                ),
            }
        })?;
        (uml, uml_result) = run_uml()?;
    }
    for f in &uml_result.failures {
        result.failures.push(Failure {
            step: f.step,
            message: format!("on the uml backend: {}", f.message),
        });
    }
    for d in compare(&sim.outcomes, &result, &uml.outcomes, &uml_result) {
        result.failures.push(Failure {
            step: None,
            message: format!("sim and uml differ: {d}"),
        });
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpdump_clock_and_job_notices_are_normalised() {
        assert_eq!(
            normalize_output(
                "02:57:43.280631 fe:fd > ff\r\n[1]+  Done   ( x )\r\nkeep [1] this\r\n"
            ),
            "fe:fd > ff\nkeep [1] this\n"
        );
        assert_eq!(strip_clock("00:00:04.501096 a"), "a");
        assert_eq!(
            normalize_output("42 bytes from x: index=0 time=5.063 msec\nrtt min/avg/max/std-dev = 5.063/5.397/5.731/0.334 ms\n"),
            "42 bytes from x: index=0 time=T\nrtt min/avg/max/std-dev = T ms\n"
        );
        assert_eq!(timings("time=1"), "time=1");
        assert_eq!(strip_clock("0:00:04.501096 a"), "0:00:04.501096 a");
    }

    #[test]
    fn trace_differences_name_the_frame() {
        let d = compare_traces(
            "sw1.trace",
            "1 port 1 -> 2: a\n2 port 2 -> 1: b\n",
            "1 port 1 -> 2: a\n",
        );
        assert_eq!(
            d,
            vec!["sw1.trace frame 2 missing on uml:\n  sim: 2 port 2 -> 1: b".to_string()]
        );
    }
}
