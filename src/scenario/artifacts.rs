//! Text artifacts from what a backend recorded: `<machine>.console` (the
//! effective command line, then the transcript). Host-specific text (the run
//! folder's path) is redacted so artifacts compare across hosts.

use std::collections::BTreeMap;

use super::backend::{BackendArtifacts, Lab};

/// What the run folder's path becomes in artifacts.
pub const RUN_DIR_TOKEN: &str = "$RUN";

/// All text artifacts of a run, by file name.
pub fn render(lab: &Lab, recorded: &BackendArtifacts) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for machine in &lab.machines {
        let transcript = recorded
            .consoles
            .get(&machine.name)
            .map(String::as_str)
            .unwrap_or("");
        let mut text = format!("$ linux {}\n", machine.argv.join(" "));
        text.push_str(&transcript.replace("\r\n", "\n"));
        if !text.ends_with('\n') {
            text.push('\n');
        }
        out.insert(format!("{}.console", machine.name), redact(&text, lab));
    }
    out
}

/// Replaces the run folder's path with [`RUN_DIR_TOKEN`].
pub fn redact(text: &str, lab: &Lab) -> String {
    let dir = lab.run_dir.display().to_string();
    if dir.is_empty() {
        text.to_string()
    } else {
        text.replace(&dir, RUN_DIR_TOKEN)
    }
}
