//! `umltest run`: run scenario files on a backend, compare their artifacts with
//! the committed snapshots, report like a test runner.
//!
//! Exit codes: 0 all passed, 100 some failed, 4 nothing ran (backend missing, no
//! Landlock for the uml backend without `--unconfined`, no scenario selected by
//! `--filter`), 2 a bad scenario file or usage (or a run folder that cannot be
//! used: see [`crate::scenario::run_folder`]). The last
//! line is always `N passed, N failed`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::scenario::backend::Backend;
use crate::scenario::engine::{self, EngineError};
use crate::scenario::plan::Plan;
use crate::scenario::resolve;
use crate::scenario::run_folder::{RunFolder, RunFolderError};
use crate::scenario::snapshot::{self, UpdateMode};

/// Exit code: some scenario failed.
pub const EXIT_FAILED: u8 = 100;
/// Exit code: nothing ran.
pub const EXIT_NOTHING_RAN: u8 = 4;
/// Exit code: a bad scenario file or usage.
pub const EXIT_BAD_SCENARIO: u8 = 2;

/// Longest unix socket path (`sun_path` holds 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// The deterministic in-process simulation.
    Sim,
    /// Real linux.uml processes.
    Uml,
    /// Both, comparing their normalized artifacts.
    Both,
}

impl BackendKind {
    fn flag(self) -> &'static str {
        match self {
            BackendKind::Sim => "sim",
            BackendKind::Uml => "uml",
            BackendKind::Both => "both",
        }
    }
}

/// `--partition hash:K/N`: run only the scenarios whose name hashes to shard K of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub k: u64,
    pub n: u64,
}

impl std::str::FromStr for Partition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("invalid partition `{s}`: expected hash:K/N with 1 <= K <= N");
        let spec = s.strip_prefix("hash:").ok_or_else(err)?;
        let (k, n) = spec.split_once('/').ok_or_else(err)?;
        let k: u64 = k.parse().map_err(|_| err())?;
        let n: u64 = n.parse().map_err(|_| err())?;
        if n == 0 || k == 0 || k > n {
            return Err(err());
        }
        Ok(Partition { k, n })
    }
}

impl Partition {
    /// True if the scenario named `name` belongs to this shard (a stable hash of the name).
    pub fn contains(&self, name: &str) -> bool {
        let digest = Sha256::digest(name.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % self.n == self.k - 1
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Scenario files, or folders whose *.toml files are scenarios.
    #[arg(required = true, value_name = "SCENARIO|DIR")]
    pub paths: Vec<PathBuf>,
    /// The backend that runs the machines.
    #[arg(long, value_enum, default_value = "sim")]
    pub backend: BackendKind,
    /// Accept the artifacts as the new snapshots (like INSTA_UPDATE=always).
    #[arg(long)]
    pub update: bool,
    /// Folder for the run folders (default: a fresh folder in the system temp
    /// dir, removed when everything passed, kept and printed otherwise).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run only shard K of N of the scenarios (by a hash of their names), like nextest.
    #[arg(long, value_name = "hash:K/N")]
    pub partition: Option<Partition>,
    /// Write a JUnit XML report.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Override every scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// List the selected scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Run only scenarios whose name or file path contains this text.
    #[arg(long, value_name = "PATTERN")]
    pub filter: Option<String>,
    /// Run each scenario twice and fail if any artifact differs.
    #[arg(long)]
    pub check_determinism: bool,
    /// Run the real kernels (uml backend) without the Landlock sandbox that
    /// confines them to their run folder: only for trusted labs on a host
    /// without Landlock.
    #[arg(long)]
    pub unconfined: bool,
}

/// Scenario files named by `paths`: files as given, folders' `*.toml` sorted.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries =
                std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(format!(
                "{}: no such scenario file or folder",
                path.display()
            ));
        }
    }
    Ok(files)
}

/// Loads every file, printing all diagnostics; `None` if any was bad.
pub fn load_all(files: &[PathBuf]) -> Option<Vec<Plan>> {
    let mut plans = Vec::new();
    let mut bad = false;
    for file in files {
        match resolve::load(file) {
            Ok(plan) => plans.push(plan),
            Err(diags) => {
                eprintln!("{diags}\n");
                bad = true;
            }
        }
    }
    (!bad).then_some(plans)
}

/// The backend for `kind`, or why it cannot be had here.
fn make_backend(kind: BackendKind, unconfined: bool) -> Result<Box<dyn Backend>, String> {
    if matches!(kind, BackendKind::Uml | BackendKind::Both) && !unconfined {
        if let Some(why) = no_sandbox(crate::uml::sandbox::abi()) {
            return Err(why);
        }
    }
    match kind {
        BackendKind::Sim => Ok(Box::new(crate::sim::SimBackend::new())),
        // The traces keep what `both` compares: the snapshots are the sim's,
        // which models no kernel background traffic.
        BackendKind::Uml => Ok(Box::new(
            crate::uml::backend::UmlBackend::new()
                .capture_only(crate::uml::backend::COMPARED_ETHERTYPES)
                .unconfined(unconfined),
        )),
        // `both` runs each scenario through uml::differential::run_both (see
        // run_once); this backend is only the fallback handle of the loop.
        BackendKind::Both => Ok(Box::new(crate::sim::SimBackend::new())),
    }
}

/// Why the uml backend cannot run confined here (exit 4 unless `--unconfined`).
fn no_sandbox(abi: Result<u32, crate::uml::sandbox::SandboxError>) -> Option<String> {
    abi.err().map(|e| format!(
        "the uml backend runs each linux.uml confined to its run folder by Landlock, and {e}; pass --unconfined to run trusted labs without it"
    ))
}

/// One scenario's result.
struct Outcome {
    name: String,
    file: PathBuf,
    seconds: f64,
    /// Failure reports (empty: passed).
    failures: Vec<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let files = match expand_paths(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("umltest: error: {e}");
            return Ok(ExitCode::from(EXIT_BAD_SCENARIO));
        }
    };
    let Some(plans) = load_all(&files) else {
        return Ok(ExitCode::from(EXIT_BAD_SCENARIO));
    };
    let mut selected: Vec<Plan> = plans
        .into_iter()
        .filter(|p| {
            args.filter
                .as_deref()
                .is_none_or(|f| p.name.contains(f) || p.file.to_string_lossy().contains(f))
        })
        .collect();
    let before_partition = selected.len();
    if let Some(part) = args.partition {
        selected.retain(|p| part.contains(&p.name));
    }
    if args.list {
        for p in &selected {
            println!("{}\t{}", p.name, p.file.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if before_partition == 0 {
        eprintln!("umltest: no scenario matches the filter");
        println!("0 passed, 0 failed");
        return Ok(ExitCode::from(EXIT_NOTHING_RAN));
    }
    if selected.is_empty() {
        println!("0 passed, 0 failed");
        write_junit(args.junit.as_deref(), &[])?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.update && args.backend == BackendKind::Uml {
        eprintln!(
            "umltest: error: --update with --backend uml: snapshots are recorded on the sim (--backend sim or both)"
        );
        return Ok(ExitCode::from(EXIT_BAD_SCENARIO));
    }
    let mut backend = match make_backend(args.backend, args.unconfined) {
        Ok(b) => b,
        Err(why) => {
            eprintln!("umltest: {why}: nothing ran");
            println!("0 passed, 0 failed");
            return Ok(ExitCode::from(EXIT_NOTHING_RAN));
        }
    };
    let (out, fresh) = match &args.out {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (dir.clone(), false)
        }
        None => {
            let dir = tempfile::Builder::new().prefix("umltest-").tempdir()?;
            (dir.keep(), true)
        }
    };
    let out = std::path::absolute(&out)?;
    // Every run folder of every selected scenario, claimed (made or checked to
    // be umltest's, and locked) before anything runs, and held to the end.
    let held = match claim_run_folders(&selected, &out, &args) {
        Ok(held) => held,
        Err(problems) => {
            for p in problems {
                eprintln!("umltest: error: {p}");
            }
            if fresh {
                let _ = std::fs::remove_dir_all(&out);
            }
            println!("0 passed, 0 failed");
            return Ok(ExitCode::from(EXIT_BAD_SCENARIO));
        }
    };
    let mode = match args.backend {
        BackendKind::Uml => UpdateMode::No,
        _ => UpdateMode::from_env(args.update),
    };
    let mut outcomes = Vec::new();
    let mut unavailable = 0;
    for plan in &selected {
        let seed = args.seed.unwrap_or(plan.seed);
        let run_dir = out.join(&plan.name);
        warn_long_paths(plan, &run_dir);
        let started = Instant::now();
        let mut failures = Vec::new();
        let ran = if args.backend == BackendKind::Both {
            crate::uml::differential::run_both(plan, &run_dir, seed, args.unconfined)
        } else {
            run_once(plan, backend.as_mut(), &run_dir, seed)
        };
        match ran {
            Err(EngineError::Unavailable(e)) => {
                eprintln!("umltest: {}: cannot run here: {e}", plan.name);
                unavailable += 1;
                continue;
            }
            Err(e @ EngineError::Unsupported { .. }) => {
                eprintln!("umltest: {} ({}): {e}", plan.name, plan.file.display());
                unavailable += 1;
                continue;
            }
            Err(e) => failures.push(e.to_string()),
            Ok(result) => {
                failures.extend(result.failures.iter().map(ToString::to_string));
                let dir = snapshot::snapshot_dir(&plan.file, &plan.name);
                let source = snapshot::source_name(&plan.file);
                // The snapshots are the sim's: a real run is compared with them
                // normalised, and never writes them.
                let compared = if args.backend == BackendKind::Uml {
                    crate::uml::snapshots::compare(&dir, plan, &result.artifacts)
                } else {
                    snapshot::compare(&dir, &source, &result.artifacts, mode)
                };
                match compared {
                    Ok(mismatches) => {
                        if mode == UpdateMode::Always {
                            if !mismatches.is_empty() {
                                eprintln!(
                                    "updated {} snapshots in {}",
                                    mismatches.len(),
                                    dir.display()
                                );
                            }
                        } else {
                            failures.extend(mismatches.iter().map(|m| {
                                format!(
                                    "artifact {} differs from its snapshot:\n{}",
                                    m.artifact, m.detail
                                )
                            }));
                        }
                    }
                    Err(e) => failures.push(format!("snapshot store {}: {e}", dir.display())),
                }
                if args.check_determinism {
                    let again_dir = out.join(format!("{}.again", plan.name));
                    match run_once(
                        plan,
                        make_backend(args.backend, args.unconfined)
                            .map_err(anyhow::Error::msg)?
                            .as_mut(),
                        &again_dir,
                        seed,
                    ) {
                        Ok(again) => {
                            failures.extend(compare_digests(&result.artifacts, &again.artifacts))
                        }
                        Err(e) => failures.push(format!("second run (determinism check): {e}")),
                    }
                }
            }
        }
        let outcome = Outcome {
            name: plan.name.clone(),
            file: plan.file.clone(),
            seconds: started.elapsed().as_secs_f64(),
            failures,
        };
        report(&outcome, &args, seed, &run_dir);
        outcomes.push(outcome);
        // A fresh backend per scenario: nothing carries over between labs.
        backend = make_backend(args.backend, args.unconfined).map_err(anyhow::Error::msg)?;
    }
    write_junit(args.junit.as_deref(), &outcomes)?;
    drop(held);
    let failed = outcomes.iter().filter(|o| !o.failures.is_empty()).count() + unavailable;
    let passed = outcomes.len() + unavailable - failed;
    if outcomes.is_empty() {
        println!("0 passed, 0 failed");
        return Ok(ExitCode::from(EXIT_NOTHING_RAN));
    }
    if failed > 0 {
        eprintln!("run folders kept in {}", out.display());
    } else if fresh {
        let _ = std::fs::remove_dir_all(&out);
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// The run folders one scenario uses in `out` (see [`crate::scenario::run_folder`]).
fn run_folder_names(name: &str, args: &RunArgs) -> Vec<String> {
    let mut names = vec![name.to_string()];
    if args.check_determinism {
        names.push(format!("{name}.again"));
    }
    if args.backend == BackendKind::Both {
        let [_, uml, first] = crate::uml::differential::folders(Path::new(name));
        names.extend([uml, first].map(|p| p.to_string_lossy().into_owned()));
    }
    names
}

/// Claims every run folder `plans` need in `out`, or says each reason why not:
/// two scenarios needing one folder (they would overwrite each other's
/// artifacts), a folder umltest did not make, one another run holds.
fn claim_run_folders(
    plans: &[Plan],
    out: &Path,
    args: &RunArgs,
) -> Result<Vec<RunFolder>, Vec<String>> {
    let mut owner: BTreeMap<String, &Plan> = BTreeMap::new();
    let mut problems = Vec::new();
    for plan in plans {
        for folder in run_folder_names(&plan.name, args) {
            if let Some(other) = owner.get(&folder) {
                problems.push(format!(
                    "{} (scenario `{}`) and {} (scenario `{}`) both need the run folder {}: rename one of the scenarios",
                    other.file.display(),
                    other.name,
                    plan.file.display(),
                    plan.name,
                    out.join(&folder).display()
                ));
            } else {
                owner.insert(folder, plan);
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // In one order, stopping at the first folder another run holds: of runs
    // started together on one --out, the one that gets the first folder gets
    // them all, instead of each getting some and all refusing.
    let mut held = Vec::new();
    for folder in owner.keys() {
        match RunFolder::claim(&out.join(folder)) {
            Ok(f) => held.push(f),
            Err(e @ RunFolderError::Busy { .. }) => {
                problems.push(e.to_string());
                break;
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(held)
    } else {
        Err(problems)
    }
}

fn run_once(
    plan: &Plan,
    backend: &mut dyn Backend,
    run_dir: &Path,
    seed: u64,
) -> Result<engine::RunResult, EngineError> {
    engine::clear_run_folder(run_dir)?;
    engine::run(plan, backend, run_dir, seed)
}

/// SHA-256 of every artifact of two runs; a sentence per difference.
pub fn compare_digests(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let digest = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| (k.clone(), format!("{:x}", Sha256::digest(v.as_bytes()))))
            .collect()
    };
    let (da, db) = (digest(a), digest(b));
    let mut problems = Vec::new();
    for name in da
        .keys()
        .chain(db.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (da.get(name), db.get(name)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => problems.push(format!(
                "not deterministic: artifact {name} has digest {} on the first run and {} on the second",
                x.map_or("(missing)", String::as_str),
                y.map_or("(missing)", String::as_str)
            )),
        }
    }
    problems
}

/// The longest unix socket path the lab will use (switch control sockets and
/// mconsole sockets); warn when it cannot work.
fn warn_long_paths(plan: &Plan, run_dir: &Path) {
    let lab = plan.lab(run_dir, plan.seed);
    let longest = plan
        .switches
        .iter()
        .map(|s| run_dir.join(&s.name).join("ctl"))
        .chain(
            lab.machines
                .iter()
                .filter_map(|m| crate::uml::args::mconsole_socket(&m.argv, run_dir)),
        )
        .map(|p| p.display().to_string())
        .max_by_key(String::len);
    if let Some(path) = longest {
        if path.len() > MAX_SOCKET_PATH {
            eprintln!(
                "umltest: warning: the socket path {path} is {} bytes, longer than unix sockets allow ({MAX_SOCKET_PATH}); use a shorter --out",
                path.len()
            );
        }
    }
}

/// The command that reruns one scenario exactly.
fn reproduce(file: &Path, args: &RunArgs, seed: u64) -> String {
    format!(
        "umltest run {} --backend {} --seed {seed}",
        file.display(),
        args.backend.flag()
    )
}

fn report(o: &Outcome, args: &RunArgs, seed: u64, run_dir: &Path) {
    if o.failures.is_empty() {
        println!("PASS {} ({}) {:.3}s", o.name, o.file.display(), o.seconds);
        return;
    }
    println!("FAIL {} ({}) {:.3}s", o.name, o.file.display(), o.seconds);
    for f in &o.failures {
        for (i, line) in f.lines().enumerate() {
            println!("{}{line}", if i == 0 { "  - " } else { "    " });
        }
    }
    println!("  run folder: {}", run_dir.display());
    println!("  reproduce: {}", reproduce(&o.file, args, seed));
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters, even escaped.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn write_junit(path: Option<&Path>, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let failures = outcomes.iter().filter(|o| !o.failures.is_empty()).count();
    let total: f64 = outcomes.iter().map(|o| o.seconds).sum();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"umltest\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">\n  <testsuite name=\"umltest run\" tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">\n",
        outcomes.len(),
        outcomes.len()
    );
    for o in outcomes {
        xml.push_str(&format!(
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
            xml_escape(&o.name),
            xml_escape(&o.file.display().to_string()),
            o.seconds
        ));
        if o.failures.is_empty() {
            xml.push_str("/>\n");
        } else {
            let first = o.failures[0].lines().next().unwrap_or("");
            xml.push_str(&format!(
                ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                xml_escape(first),
                xml_escape(&o.failures.join("\n"))
            ));
        }
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    std::fs::write(path, xml).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_landlock_is_refused_with_the_way_out() {
        let missing = crate::uml::sandbox::SandboxError::Unsupported(
            std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        );
        let why = no_sandbox(Err(missing)).expect("refused");
        assert!(why.contains("this kernel offers no Landlock"), "{why}");
        assert!(why.contains("pass --unconfined"), "{why}");
        assert_eq!(no_sandbox(Ok(7)), None);
    }

    #[test]
    fn partition_parses_and_splits() {
        assert_eq!("hash:1/2".parse(), Ok(Partition { k: 1, n: 2 }));
        for bad in [
            "1/2", "hash:0/2", "hash:3/2", "hash:1/0", "hash:a/b", "hash:1",
        ] {
            assert!(bad.parse::<Partition>().is_err(), "{bad}");
        }
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        let p1 = Partition { k: 1, n: 2 };
        let p2 = Partition { k: 2, n: 2 };
        for n in names {
            assert_ne!(p1.contains(n), p2.contains(n), "{n} in exactly one shard");
        }
    }

    #[test]
    fn xml_escapes() {
        assert_eq!(
            xml_escape("a<b>&\"'\u{1}"),
            "a&lt;b&gt;&amp;&quot;&apos;\u{fffd}"
        );
    }
}
