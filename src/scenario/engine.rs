//! The engine: prepares the run folder, runs a [`Plan`]'s steps in order on a
//! [`Backend`], checks expectations (collecting every failure and going on
//! where that makes sense), and turns what the backend recorded into text
//! artifacts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::backend::{Backend, BackendError, CommandOutcome, JobId, Lab, MachineSpec};
use super::disk;
use super::plan::{Action, DiskContent, Expect, Plan, Step};
use super::units::format_duration;
use crate::cow::Access;

/// A problem found while running: a failed expectation, or a backend error that
/// stopped the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// (step number, line in the file) when a step failed.
    pub step: Option<(usize, usize)>,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            Some((n, line)) => write!(f, "step {n} (line {line}): {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunResult {
    pub failures: Vec<Failure>,
    /// Text artifacts by file name (`h1.console`, `sw1.trace`, ...), also written
    /// to the run folder.
    pub artifacts: BTreeMap<String, String>,
    /// How many steps ran (all of them unless a backend error stopped the run).
    pub steps_run: usize,
    /// A backend error stopped the run (at the start or at step `steps_run`).
    pub stopped: bool,
}

/// Why a scenario could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backend cannot run here (missing program): exit code 4.
    #[error(transparent)]
    Unavailable(BackendError),
    /// The lab has a step this backend cannot perform (a `fault` on real
    /// kernels): refused before anything runs.
    #[error("step {step} (line {line}) is a `{key}` step, which the {backend} backend cannot perform (only the sim injects faults): nothing was run")]
    Unsupported {
        backend: &'static str,
        key: &'static str,
        step: usize,
        line: usize,
    },
    /// The run folder could not be prepared.
    #[error("preparing the run folder {dir}: {message}")]
    RunFolder { dir: PathBuf, message: String },
}

impl Plan {
    /// The lab a backend runs: switches, and each machine's effective argv.
    pub fn lab(&self, run_dir: &Path, seed: u64) -> Lab {
        Lab {
            name: self.name.clone(),
            seed,
            run_dir: run_dir.to_path_buf(),
            switches: self.switches.clone(),
            external: self
                .disks
                .iter()
                .filter(|d| d.content == DiskContent::External)
                .map(|d| d.name.clone())
                .collect(),
            machines: self
                .machines
                .iter()
                .enumerate()
                .map(|(index, m)| MachineSpec {
                    name: m.name.clone(),
                    argv: crate::uml::args::effective_argv(&m.argv, &m.name, index),
                })
                .collect(),
        }
    }
}

/// The modification time of every disk the harness creates, so COW headers
/// (which record the backing file's mtime) come out the same on every run, and a
/// careless copy (which gets the current time) is always detectably different.
fn fixed_mtime() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(disk::MKFS_TIME)
}

/// Creates the scenario's disks in `run_dir` (which must exist).
fn prepare_disks(
    plan: &Plan,
    backend: &mut dyn Backend,
    run_dir: &Path,
) -> Result<(), EngineError> {
    let folder_err = |message: String| EngineError::RunFolder {
        dir: run_dir.to_path_buf(),
        message,
    };
    for d in &plan.disks {
        let path = run_dir.join(&d.name);
        match &d.content {
            DiskContent::Raw { size } => {
                disk::create_sparse(&path, *size).map_err(|e| folder_err(e.to_string()))?
            }
            DiskContent::Ext4 { size } => match disk::mkfs_ext4(&path, *size, &d.name) {
                Ok(()) => {}
                Err(disk::DiskError::NoMkfs) => {
                    return Err(EngineError::Unavailable(BackendError::Unavailable {
                        what: "mkfs.ext4 not found".into(),
                        package: "e2fsprogs".into(),
                    }))
                }
                Err(e) => return Err(folder_err(e.to_string())),
            },
            DiskContent::Image { image, size } => {
                match backend.prepare_image(image, &path, *size) {
                    Ok(()) => {}
                    Err(e @ BackendError::Unavailable { .. }) => {
                        return Err(EngineError::Unavailable(e))
                    }
                    Err(e) => return Err(folder_err(e.to_string())),
                }
            }
            DiskContent::External => {
                if !Path::new(&d.name).is_file() {
                    return Err(folder_err(format!(
                        "external disk {} does not exist",
                        d.name
                    )));
                }
                continue;
            }
            DiskContent::Cow { backing } => {
                // The backing disk was made above with its fixed mtime, so the
                // header (which records it) is the same on every run.
                let opts = crate::cow::create::CreateOptions {
                    force: false,
                    cwd: Some(run_dir.to_path_buf()),
                };
                crate::cow::create::create(Path::new(&d.name), Path::new(backing), &opts)
                    .map_err(|e| folder_err(e.to_string()))?;
                continue;
            }
        }
        let file = std::fs::File::options()
            .write(true)
            .open(&path)
            .map_err(|e| folder_err(format!("open {}: {e}", d.name)))?;
        file.set_modified(fixed_mtime())
            .map_err(|e| folder_err(format!("set mtime of {}: {e}", d.name)))?;
    }
    Ok(())
}

/// Removes what an earlier run left in `dir`, so a run starts from nothing.
/// `dir` must be a run folder umltest made ([`super::run_folder`]): anything
/// else is refused, never deleted.
pub fn clear_run_folder(dir: &Path) -> Result<(), EngineError> {
    super::run_folder::clear(dir).map_err(|e| EngineError::RunFolder {
        dir: dir.to_path_buf(),
        message: format!("cannot clear it: {e}"),
    })
}

/// Runs `plan` on `backend` in `run_dir` (created if missing) with `seed`.
pub fn run(
    plan: &Plan,
    backend: &mut dyn Backend,
    run_dir: &Path,
    seed: u64,
) -> Result<RunResult, EngineError> {
    if !backend.can_inject_faults() {
        if let Some(step) = plan
            .steps
            .iter()
            .find(|s| matches!(s.action, Action::Fault { .. }))
        {
            return Err(EngineError::Unsupported {
                backend: backend.name(),
                key: "fault",
                step: step.number,
                line: step.line,
            });
        }
    }
    std::fs::create_dir_all(run_dir).map_err(|e| EngineError::RunFolder {
        dir: run_dir.to_path_buf(),
        message: e.to_string(),
    })?;
    prepare_disks(plan, backend, run_dir)?;
    let lab = plan.lab(run_dir, seed);
    let mut result = RunResult::default();
    match backend.start(&lab) {
        Ok(()) => {}
        Err(e @ BackendError::Unavailable { .. }) => return Err(EngineError::Unavailable(e)),
        Err(e) => {
            result.failures.push(Failure {
                step: None,
                message: format!(
                    "the {} backend could not start the lab: {e}",
                    backend.name()
                ),
            });
            result.stopped = true;
        }
    }
    let mut runner = Runner {
        backend,
        run_dir,
        external: plan.lab(run_dir, seed).external_paths(),
        jobs: BTreeMap::new(),
        host_log: String::new(),
    };
    let mut trace_checks = Vec::new();
    if result.failures.is_empty() {
        for step in &plan.steps {
            if let Action::ExpectTrace { .. } = step.action {
                trace_checks.push(step);
                result.steps_run += 1;
                continue;
            }
            result.steps_run += 1;
            match runner.step(step) {
                Ok(problems) => {
                    result
                        .failures
                        .extend(problems.into_iter().map(|message| Failure {
                            step: Some((step.number, step.line)),
                            message,
                        }))
                }
                Err(e @ BackendError::Unavailable { .. }) => {
                    return Err(EngineError::Unavailable(e))
                }
                Err(e) => {
                    result.failures.push(Failure {
                        step: Some((step.number, step.line)),
                        message: format!(
                            "{}: the {} backend stopped the run: {e}",
                            step.action.describe(),
                            runner.backend.name()
                        ),
                    });
                    result.stopped = true;
                    break;
                }
            }
        }
    }
    let recorded = match runner.backend.finish() {
        Ok(a) => a,
        Err(e) => {
            result.failures.push(Failure {
                step: None,
                message: format!(
                    "the {} backend failed to finish: {e}",
                    runner.backend.name()
                ),
            });
            Default::default()
        }
    };
    let mut artifacts = super::artifacts::render(&lab, &recorded);
    artifacts.extend(super::artifacts::disk_diffs(&lab));
    if !runner.host_log.is_empty() {
        artifacts.insert(HOST_LOG.to_string(), std::mem::take(&mut runner.host_log));
    }
    if let Err(e) = super::artifacts::write_pcaps(&lab, &recorded, run_dir) {
        result.failures.push(Failure {
            step: None,
            message: format!("cannot write the pcap files: {e}"),
        });
    }
    for step in trace_checks {
        if let Action::ExpectTrace {
            switch,
            contains,
            lacks,
        } = &step.action
        {
            let text = artifacts.get(&format!("{switch}.trace"));
            for problem in check_trace(switch, text.map(String::as_str), contains, lacks) {
                result.failures.push(Failure {
                    step: Some((step.number, step.line)),
                    message: problem,
                });
            }
        }
    }
    for (name, text) in &artifacts {
        let path = run_dir.join(name);
        let written = super::run_folder::create_fresh(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
        if let Err(e) = written {
            result.failures.push(Failure {
                step: None,
                message: format!("cannot write artifact {}: {e}", path.display()),
            });
        }
    }
    result.artifacts = artifacts;
    Ok(result)
}

fn check_trace(
    switch: &str,
    text: Option<&str>,
    contains: &[String],
    lacks: &[String],
) -> Vec<String> {
    let Some(text) = text else {
        return vec![format!("no trace was recorded for switch {switch}")];
    };
    let mut problems = Vec::new();
    for c in contains {
        if !text.contains(c.as_str()) {
            problems.push(format!("the trace of {switch} lacks {c:?}"));
        }
    }
    for l in lacks {
        if text.contains(l.as_str()) {
            problems.push(format!(
                "the trace of {switch} contains {l:?}, which it should not"
            ));
        }
    }
    problems
}

/// The artifact recording every host-side step (`$ <step>`, then its output).
pub const HOST_LOG: &str = "host.log";

struct Runner<'a> {
    backend: &'a mut dyn Backend,
    run_dir: &'a Path,
    /// The lab's external disks: host files its steps may read, never write.
    external: Vec<PathBuf>,
    jobs: BTreeMap<String, JobId>,
    /// The [`HOST_LOG`] artifact so far.
    host_log: String,
}

impl Runner<'_> {
    /// Runs one step; `Ok` holds the failed expectations (empty when it passed).
    fn step(&mut self, step: &Step) -> Result<Vec<String>, BackendError> {
        let timeout = step.timeout.unwrap_or(Duration::from_secs(10));
        let describe = step.action.describe();
        let outcome = match &step.action {
            Action::Boot(machines) => {
                self.backend.boot(machines, timeout)?;
                return Ok(Vec::new());
            }
            Action::Run { on, command } => self.backend.run(on, command, timeout)?,
            Action::Spawn { on, command, id } => {
                let job = self.backend.spawn(on, command)?;
                self.jobs.insert(id.clone(), job);
                return Ok(Vec::new());
            }
            Action::WaitJob { id, on } => {
                let Some(job) = self.jobs.remove(id) else {
                    return Ok(vec![format!(
                        "{describe}: the background command was not started"
                    )]);
                };
                self.backend.wait_job(on, job, timeout)?
            }
            Action::WaitConsole { on, pattern } => {
                let seen = self.backend.wait_console(on, pattern, timeout)?;
                return Ok(if seen {
                    Vec::new()
                } else {
                    vec![format!(
                        "{describe}: not seen within {}",
                        format_duration(timeout)
                    )]
                });
            }
            Action::Sleep(d) => {
                self.backend.sleep(*d)?;
                return Ok(Vec::new());
            }
            Action::Link { on, nic, up } => {
                self.backend.set_link(on, nic, *up)?;
                return Ok(Vec::new());
            }
            Action::Halt(machines) => {
                self.backend.halt(machines, timeout)?;
                return Ok(Vec::new());
            }
            Action::Kill(machine) => {
                self.backend.kill(machine)?;
                return Ok(Vec::new());
            }
            Action::Fault { on, fault } => {
                self.backend.inject_fault(on, fault)?;
                return Ok(Vec::new());
            }
            Action::Write { .. }
            | Action::Copy { .. }
            | Action::Mkcow { .. }
            | Action::Merge { .. }
            | Action::Check { .. } => {
                let outcome = self.host_step(&step.action);
                self.host_log
                    .push_str(&format!("$ {describe}\n{}", outcome.output));
                if outcome.exit_code != 0 {
                    self.host_log
                        .push_str(&format!("(exit {})\n", outcome.exit_code));
                }
                outcome
            }
            Action::ExpectTrace { .. } => return Ok(Vec::new()),
        };
        // Host-side steps without `expect` must succeed; guest commands without
        // `expect` are only recorded (their console is an artifact).
        let default_expect = Expect {
            exit: Some(0),
            ..Expect::default()
        };
        let expect = match (&step.expect, is_host_step(&step.action)) {
            (Some(e), _) => e,
            (None, true) => &default_expect,
            (None, false) => return Ok(Vec::new()),
        };
        let problems = check_expect(expect, &outcome);
        if problems.is_empty() {
            return Ok(Vec::new());
        }
        let mut message = describe;
        for p in problems {
            message.push_str("\n  ");
            message.push_str(&p);
        }
        message.push('\n');
        message.push_str(&indent_output(&outcome));
        Ok(vec![message])
    }

    /// Disk work on the host, in the run folder, reported like a command.
    /// Every file is opened through a [`Confine`](crate::cow::Confine) of the
    /// run folder: beneath it without following links, or an external disk
    /// read-only, whatever a COW header or a merge journal names.
    fn host_step(&mut self, action: &Action) -> CommandOutcome {
        let result = match crate::cow::Confine::new(self.run_dir, &self.external) {
            Ok(confine) => self.host_step_in(action, &confine),
            Err(e) => Err(format!(
                "open the run folder {}: {e}",
                self.run_dir.display()
            )),
        };
        let run_dir = self.run_dir.display().to_string();
        // Messages may name the folder as given or resolved (a confinement
        // error names the canonical path).
        let canonical = std::fs::canonicalize(self.run_dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| run_dir.clone());
        let redact = |text: String| {
            text.replace(&run_dir, super::artifacts::RUN_DIR_TOKEN)
                .replace(&canonical, super::artifacts::RUN_DIR_TOKEN)
        };
        match result.map(redact).map_err(redact) {
            Ok(output) => CommandOutcome {
                output,
                exit_code: 0,
                interrupted: false,
            },
            Err(message) => CommandOutcome {
                output: format!("{message}\n"),
                exit_code: 1,
                interrupted: false,
            },
        }
    }

    fn host_step_in(
        &mut self,
        action: &Action,
        confine: &crate::cow::Confine,
    ) -> Result<String, String> {
        let path = |name: &str| self.run_dir.join(name);
        let now = self.backend.file_time();
        match action {
            Action::Write {
                file,
                offset,
                bytes,
            } => confine
                .open_file(&path(file), Access::ReadWrite)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    disk::write_at_file(&f, &path(file), *offset, bytes, now)
                        .map_err(|e| e.to_string())
                })
                .map(|()| String::new()),
            Action::Copy {
                from,
                to,
                preserve,
                sparse,
            } => confine
                .open_file(&path(from), Access::Read)
                .and_then(|src| Ok((src, confine.create(&path(to))?)))
                .map_err(|e| e.to_string())
                .and_then(|(src, dst)| {
                    disk::copy_files(&src, &dst, &path(from), &path(to), *preserve, *sparse, now)
                        .map_err(|e| e.to_string())
                })
                .map(|()| {
                    let mtime = if *preserve {
                        "mtime kept"
                    } else {
                        "mtime set to the time of the copy"
                    };
                    format!(
                        "{}{}{to}: {mtime}\n",
                        disk::size_report(&path(from), from),
                        disk::size_report(&path(to), to)
                    )
                }),
            Action::Mkcow { cow, backing } => {
                let opts = crate::cow::create::CreateOptions {
                    force: false,
                    cwd: Some(self.run_dir.to_path_buf()),
                };
                crate::cow::create::create(Path::new(cow), Path::new(backing), &opts)
                    .map(|_| String::new())
                    .map_err(|e| e.to_string())
            }
            Action::Merge { cow, into, backing } => {
                let opts = crate::cow::merge::MergeOptions {
                    backing: backing.as_deref().map(path),
                    confine: Some(confine.clone()),
                    ..Default::default()
                };
                let report = match into {
                    Some(into) => crate::cow::merge::merge_to_new(&path(cow), &path(into), &opts),
                    None => crate::cow::merge::merge_in_place(&path(cow), &opts),
                };
                report
                    .map(|r| {
                        let mut out = String::new();
                        for line in r.messages.iter().chain(&r.warnings) {
                            out.push_str(line);
                            out.push('\n');
                        }
                        out.push_str(&format!("{} changed sectors merged\n", r.dirty_sectors));
                        out
                    })
                    .map_err(|e| e.to_string())
            }
            Action::Check { cow } => {
                // `umltest cow check`: header, bitmap, backing size and mtime.
                crate::cow::inspect::check_in(&path(cow), None, false, Some(confine))
                    .map_err(|e| e.to_string())
                    .and_then(|check| {
                        let mut out = String::new();
                        for f in &check.findings {
                            let level = match f.severity {
                                crate::cow::inspect::Severity::Ok => "ok",
                                crate::cow::inspect::Severity::Warning => "warning",
                                crate::cow::inspect::Severity::Error => "error",
                            };
                            out.push_str(&format!("{level}: {}\n", f.what));
                        }
                        if check.passed() {
                            Ok(out)
                        } else {
                            Err(out.trim_end().to_string())
                        }
                    })
            }
            _ => Ok(String::new()),
        }
    }
}

fn is_host_step(action: &Action) -> bool {
    matches!(
        action,
        Action::Write { .. }
            | Action::Copy { .. }
            | Action::Mkcow { .. }
            | Action::Merge { .. }
            | Action::Check { .. }
    )
}

/// Every way `outcome` misses `expect`, as readable sentences.
pub fn check_expect(expect: &Expect, outcome: &CommandOutcome) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(code) = expect.exit {
        if code != outcome.exit_code {
            problems.push(format!("expected exit {code}, got {}", outcome.exit_code));
        }
    }
    for text in &expect.stdout {
        if !outcome.output.contains(text.as_str()) {
            problems.push(format!("expected the output to contain {text:?}"));
        }
    }
    for text in &expect.stdout_lacks {
        if outcome.output.contains(text.as_str()) {
            problems.push(format!("expected the output not to contain {text:?}"));
        }
    }
    if let Some(re) = &expect.stdout_matches {
        match regex::RegexBuilder::new(re).multi_line(true).build() {
            Ok(r) if r.is_match(&outcome.output) => {}
            Ok(_) => problems.push(format!("expected the output to match /{re}/")),
            Err(e) => problems.push(format!("invalid regular expression /{re}/: {e}")),
        }
    }
    if let Some(want) = expect.interrupted {
        if want != outcome.interrupted {
            problems.push(if want {
                "expected the command to be still running at its timeout".to_string()
            } else {
                "the command was still running at its timeout and got SIGINT".to_string()
            });
        }
    }
    problems
}

fn indent_output(outcome: &CommandOutcome) -> String {
    let mut s = format!(
        "  exit {}{}; output:",
        outcome.exit_code,
        if outcome.interrupted {
            " (interrupted)"
        } else {
            ""
        }
    );
    if outcome.output.is_empty() {
        s.push_str(" (none)");
    }
    for line in outcome.output.lines() {
        s.push_str("\n  | ");
        s.push_str(line);
    }
    s
}
