//! `--backend uml` against the committed snapshots (which the sim records): both
//! sides go through the normalisation `--backend both` uses, then compare.
//!
//! - `*.trace`: the time column is dropped ([`normalize::trace`]); order, ports
//!   and frames stay.
//! - `*.console`: the boot log is the kernel's and the sim models only part of it
//!   (a scenario checks boot text with `wait_console` steps), so the view starts at
//!   the first `# command` line. Command lines are kept; outputs go through
//!   [`differential::normalize_output`] (no clock columns, round-trip times or
//!   job-control notices). Once a background command has started on a machine,
//!   only command lines are compared there: where the job's output lands among
//!   later commands' output is timing (the job's output is compared by its
//!   `wait_job` expectations and by the trace).
//!   A machine booted again shows `$ linux <argv>` (a new process) or the
//!   kernel's `reboot: Restarting system` (`reboot -f`, the same process) before
//!   its new boot log, which is skipped like the first up to the next command.
//! - everything else (disk diffs, `host.log`): exactly, but for the backing
//!   mtimes an mtime mismatch quotes ([`normalize::backing_mtimes`]).
//!
//! A real run never writes snapshots: they are the sim's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::differential;
use crate::scenario::normalize;
use crate::scenario::plan::{Action, Plan};
use crate::scenario::snapshot::{self, Mismatch};
use crate::sim::world::RESTART_LINE;

/// The background commands of each machine of `plan`.
pub fn background_commands(plan: &Plan) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for step in &plan.steps {
        if let Action::Spawn { on, command, .. } = &step.action {
            out.entry(on.clone()).or_default().insert(command.clone());
        }
    }
    out
}

/// The compared view of a console artifact (see the module doc).
pub fn console_view(text: &str, background: &BTreeSet<String>) -> String {
    let text = normalize::console(text);
    let mut out = String::new();
    let mut started = false;
    let mut concurrent = false;
    for line in text.lines() {
        // A machine booted again (a new process: the artifact shows its command
        // line again; or `reboot -f`: the kernel restarts in its process):
        // its boot log is the kernel's, as at the first boot.
        if line.starts_with("$ linux ") {
            started = false;
            continue;
        }
        if started && !concurrent && line == RESTART_LINE.trim_end() {
            out.push_str(line);
            out.push('\n');
            started = false;
            continue;
        }
        if let Some(command) = line.strip_prefix("# ") {
            let command = command.strip_suffix(" &").unwrap_or(command);
            started = true;
            concurrent |= background.contains(command);
            out.push_str(&format!("# {command}\n"));
        } else if started && !concurrent {
            out.push_str(&differential::normalize_output(line));
        }
    }
    out
}

/// An artifact as compared (see the module doc).
pub fn view(artifact: &str, text: &str, background: &BTreeMap<String, BTreeSet<String>>) -> String {
    if artifact.ends_with(".trace") {
        return normalize::trace(text);
    }
    if let Some(machine) = artifact.strip_suffix(".console") {
        let none = BTreeSet::new();
        return console_view(text, background.get(machine).unwrap_or(&none));
    }
    // A backing file's mtime, quoted by `check` output or a disk diff, is the
    // run's, not behaviour.
    normalize::backing_mtimes(text)
}

/// Compares a real run's `artifacts` with the snapshots in `dir`, both sides
/// normalised; writes nothing. A missing snapshot is a mismatch (the sim records
/// them: `umltest run --backend sim --update`).
pub fn compare(
    dir: &Path,
    plan: &Plan,
    artifacts: &BTreeMap<String, String>,
) -> Result<Vec<Mismatch>, snapshot::SnapshotError> {
    let background = background_commands(plan);
    let store = snapshot::Store::open(dir)?;
    let mut mismatches = Vec::new();
    for (name, content) in artifacts {
        let snap = dir.join(format!("{name}.snap"));
        let text = match store.read(&format!("{name}.snap"))? {
            Some(text) => text,
            None => {
                mismatches.push(Mismatch {
                    artifact: name.clone(),
                    detail: format!(
                        "no snapshot {} (snapshots are recorded on the sim: umltest run --backend sim --update)",
                        snap.display()
                    ),
                    snapshot: snap,
                });
                continue;
            }
        };
        let Some(old) = snapshot::parse_snap(&text) else {
            mismatches.push(Mismatch {
                artifact: name.clone(),
                detail: format!(
                    "{} is not an insta snapshot (no `---` header)",
                    snap.display()
                ),
                snapshot: snap,
            });
            continue;
        };
        let (old, new) = (
            view(name, old, &background),
            view(name, content, &background),
        );
        if old.trim_end_matches('\n') != new.trim_end_matches('\n') {
            let label = format!("{name}, normalised");
            mismatches.push(Mismatch {
                artifact: name.clone(),
                detail: snapshot::unified_diff(&old, &new, &snap, &label),
                snapshot: snap,
            });
        }
    }
    Ok(mismatches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIM: &str = "$ linux mem=64M\nLinux version 6.1\nRun /init as init process\n# ip link set eth0 up\n# arping -c 1 1.1.1.1\n42 bytes from x: index=0 time=192.266 usec\n# tcpdump -i eth0\nlistening on eth0\n00:00:01.001081 a > b\n# ip neigh\nreboot: System halted\n";
    const UML: &str = "$ linux mem=64M\r\nCore dump limits :\r\nLinux version 6.1\r\nUMLTEST-SHELL-READY\r\n# ip link set eth0 up\r\n# arping -c 1 1.1.1.1\r\n42 bytes from x: index=0 time=5.1 msec\r\n# tcpdump -i eth0 &\r\n# ip neigh\r\n[1]+  Done  ( x )\r\nlistening on eth0\r\n05:05:12.812781 a > b\r\nreboot: System halted\r\n";

    fn bg() -> BTreeSet<String> {
        ["tcpdump -i eth0".to_string()].into()
    }

    #[test]
    fn the_views_of_a_sim_and_a_real_console_agree() {
        assert_eq!(console_view(SIM, &bg()), console_view(UML, &bg()));
        assert_eq!(
            console_view(SIM, &bg()),
            "# ip link set eth0 up\n# arping -c 1 1.1.1.1\n42 bytes from x: index=0 time=T\n# tcpdump -i eth0\n# ip neigh\n"
        );
    }

    #[test]
    fn boot_logs_of_a_machine_booted_again_are_skipped() {
        let sim = "$ linux mem=64M\nLinux version 6.1\n# echo a\na\nreboot: System halted\n$ linux mem=64M\nLinux version 6.1\nmtime mismatch (1 vs 2) of COW header vs backing file\nRun /init as init process\n# echo b; reboot -f\nb\nreboot: Restarting system\nLinux version 6.1\nRun /init as init process\n# echo c\nc\n";
        let uml = "$ linux mem=64M\r\nCore dump limits :\r\nLinux version 6.1\r\n# echo a\r\na\r\nreboot: System halted\r\n\r\n$ linux mem=64M\r\nCore dump limits :\r\nLinux version 6.1\r\nRandom: x\r\nmtime mismatch (1 vs 99) of COW header vs backing file\r\n# echo b; reboot -f\r\nb\r\nreboot: Restarting system\r\n\r\nCore dump limits :\r\nBusyBox v1.35.0\r\n# echo c\r\nc\r\n";
        let none = BTreeSet::new();
        assert_eq!(
            console_view(sim, &none),
            "# echo a\na\nreboot: System halted\n# echo b; reboot -f\nb\nreboot: Restarting system\n# echo c\nc\n"
        );
        assert_eq!(console_view(sim, &none), console_view(uml, &none));
        // Output after the restart line's command still counts.
        let other = uml.replace("\r\nc\r\n", "\r\nd\r\n");
        assert_ne!(console_view(sim, &none), console_view(&other, &none));
    }

    #[test]
    fn different_output_or_commands_show() {
        let other = UML.replace("index=0", "index=1");
        assert_ne!(console_view(SIM, &bg()), console_view(&other, &bg()));
        let other = UML.replace("# ip neigh", "# ip route");
        assert_ne!(console_view(SIM, &bg()), console_view(&other, &bg()));
        // Without the background rule, the job's interleaved output would count.
        assert_ne!(
            console_view(SIM, &BTreeSet::new()),
            console_view(UML, &BTreeSet::new())
        );
    }

    #[test]
    fn compare_reads_snapshots_and_shows_a_normalised_diff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = |name: &str, content: &str| {
            std::fs::write(
                dir.path().join(format!("{name}.snap")),
                snapshot::render_snap("x.toml", name, content),
            )
            .expect("write snap");
        };
        snap(
            "sw1.trace",
            "1 1.001040 port 1 -> 2: a\n2 2.000000 port 2 -> 1: b\n",
        );
        snap("h1.console", SIM);
        let plan = crate::scenario::resolve::parse(
            Path::new("x.toml"),
            "[scenario]\nname = \"x\"\n[[machine]]\nname = \"h1\"\ncmdline = \"mem=64M\"\n[[step]]\nboot = [\"h1\"]\n[[step]]\non = \"h1\"\nrun = \"tcpdump -i eth0\"\nbackground = true\nid = \"c\"\n",
        );
        let plan = plan.unwrap_or_else(|d| panic!("{d}"));
        let mut artifacts = BTreeMap::new();
        artifacts.insert(
            "sw1.trace".to_string(),
            "1 5.204765 port 1 -> 2: a\n2 6.2 port 2 -> 1: b\n".to_string(),
        );
        artifacts.insert("h1.console".to_string(), UML.to_string());
        assert_eq!(
            compare(dir.path(), &plan, &artifacts).expect("compare"),
            vec![]
        );
        artifacts.insert(
            "sw1.trace".to_string(),
            "1 5.204765 port 1 -> 2: a\n2 6.2 port 2 -> 3: b\n".to_string(),
        );
        artifacts.insert("h2.console".to_string(), String::new());
        let m = compare(dir.path(), &plan, &artifacts).expect("compare");
        let names: Vec<&str> = m.iter().map(|m| m.artifact.as_str()).collect();
        assert_eq!(names, ["h2.console", "sw1.trace"]);
        assert!(m[0].detail.contains("no snapshot"), "{}", m[0].detail);
        assert!(
            m[1].detail.contains("-2 port 2 -> 1: b\n+2 port 2 -> 3: b"),
            "{}",
            m[1].detail
        );
    }

    proptest! {
        #[test]
        fn views_never_panic(s in "\\PC*") {
            let _ = console_view(&s, &bg());
            let _ = view("a.trace", &s, &BTreeMap::new());
        }
    }
}
