//! The snapshot store: `snapshots/<scenario>/<artifact>.snap` in insta's `.snap`
//! format (a `---` header with `source:` and `expression:`, then the content),
//! so `cargo insta review` works on them.
//!
//! Update modes follow insta's `INSTA_UPDATE`: `always` writes `.snap` files,
//! `auto` (the default) writes `.snap.new` beside a mismatching snapshot unless
//! `CI` is set, `no` writes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Whether and how mismatching snapshots are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// Write `.snap` files (accept the new artifacts).
    Always,
    /// Write `.snap.new` files for review.
    New,
    /// Write nothing.
    No,
}

impl UpdateMode {
    /// `--update` wins; else `INSTA_UPDATE` (`always`, `new`, `no`, `auto`); `auto`
    /// and unset mean `new`, or `no` when `CI` is set.
    pub fn from_env(update_flag: bool) -> Self {
        if update_flag {
            return UpdateMode::Always;
        }
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        match std::env::var("INSTA_UPDATE").as_deref() {
            Ok("always") | Ok("1") => UpdateMode::Always,
            Ok("new") => UpdateMode::New,
            Ok("no") | Ok("0") => UpdateMode::No,
            _ if ci => UpdateMode::No,
            _ => UpdateMode::New,
        }
    }
}

/// One artifact whose snapshot is missing, different, or stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub artifact: String,
    pub snapshot: PathBuf,
    /// A unified diff (old = snapshot, new = artifact), or a sentence.
    pub detail: String,
}

/// The folder holding a scenario's snapshots: `snapshots/<name>` beside the
/// `scenarios/` folder that holds the file, else `snapshots/<name>` beside the file.
pub fn snapshot_dir(scenario_file: &Path, name: &str) -> PathBuf {
    let parent = scenario_file.parent().unwrap_or(Path::new(""));
    let base = if parent.file_name().is_some_and(|n| n == "scenarios") {
        parent.parent().unwrap_or(Path::new("")).to_path_buf()
    } else {
        parent.to_path_buf()
    };
    base.join("snapshots").join(name)
}

/// The `source:` of a snapshot: the scenario path as given when relative, so it
/// does not depend on where the repository is checked out.
pub fn source_name(scenario_file: &Path) -> String {
    if scenario_file.is_relative() {
        return scenario_file.to_string_lossy().replace('\\', "/");
    }
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rel) = scenario_file.strip_prefix(&cwd) {
            return rel.to_string_lossy().into_owned();
        }
    }
    scenario_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The `.snap` file text for an artifact.
pub fn render_snap(source: &str, artifact: &str, content: &str) -> String {
    let mut s = format!("---\nsource: {source}\nexpression: {artifact}\n---\n{content}");
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// The content of a `.snap` file (everything after the header), or `None` if
/// the text has no insta header.
pub fn parse_snap(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("---\n")?;
    let end = rest.find("\n---\n")?;
    Some(&rest[end + 5..])
}

/// Content as compared: `\r\n` as `\n`, trailing newlines ignored (insta does the same).
fn normalized(text: &str) -> String {
    text.replace("\r\n", "\n")
        .trim_end_matches('\n')
        .to_string()
}

/// Compares `artifacts` with the snapshots in `dir`, writing files per `mode`.
/// Snapshots without an artifact are stale and reported (removed in `Always`).
pub fn compare(
    dir: &Path,
    source: &str,
    artifacts: &BTreeMap<String, String>,
    mode: UpdateMode,
) -> std::io::Result<Vec<Mismatch>> {
    let mut mismatches = Vec::new();
    for (name, content) in artifacts {
        let snap = dir.join(format!("{name}.snap"));
        let new = dir.join(format!("{name}.snap.new"));
        let old = match std::fs::read_to_string(&snap) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let old_content = old.as_deref().and_then(parse_snap);
        if old_content.is_some_and(|o| normalized(o) == normalized(content)) {
            remove_if_exists(&new)?;
            continue;
        }
        let detail = match (&old, old_content) {
            (None, _) => format!("no snapshot yet: {}", snap.display()),
            (Some(_), None) => format!(
                "{} is not an insta snapshot (no `---` header)",
                snap.display()
            ),
            (Some(_), Some(o)) => unified_diff(o, content, &snap, name),
        };
        match mode {
            UpdateMode::Always => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(&snap, render_snap(source, name, content))?;
                remove_if_exists(&new)?;
            }
            UpdateMode::New => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(&new, render_snap(source, name, content))?;
            }
            UpdateMode::No => {}
        }
        mismatches.push(Mismatch {
            artifact: name.clone(),
            snapshot: snap,
            detail,
        });
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut stale: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let file = e.file_name().to_string_lossy().into_owned();
                let artifact = file.strip_suffix(".snap")?.to_string();
                (!artifacts.contains_key(&artifact)).then_some((artifact, e.path()))
            })
            .collect();
        stale.sort();
        for (artifact, path) in stale {
            if mode == UpdateMode::Always {
                std::fs::remove_file(&path)?;
            }
            mismatches.push(Mismatch {
                detail: format!("stale snapshot: the run made no artifact {artifact}"),
                artifact,
                snapshot: path,
            });
        }
    }
    Ok(mismatches)
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A unified diff of snapshot (`-`) against the new artifact (`+`).
pub fn unified_diff(old: &str, new: &str, snap: &Path, artifact: &str) -> String {
    let old = normalized(old) + "\n";
    let new = normalized(new) + "\n";
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(
            &snap.display().to_string(),
            &format!("{artifact} (this run)"),
        )
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snap_roundtrip() {
        let s = render_snap("scenarios/a.toml", "h1.console", "x\ny\n");
        assert_eq!(
            s,
            "---\nsource: scenarios/a.toml\nexpression: h1.console\n---\nx\ny\n"
        );
        assert_eq!(parse_snap(&s), Some("x\ny\n"));
        assert_eq!(parse_snap("x"), None);
    }

    #[test]
    fn snapshot_dir_beside_scenarios_folder() {
        assert_eq!(
            snapshot_dir(Path::new("scenarios/a.toml"), "a"),
            Path::new("snapshots/a")
        );
        assert_eq!(
            snapshot_dir(Path::new("/x/lab.toml"), "a"),
            Path::new("/x/snapshots/a")
        );
    }
}
