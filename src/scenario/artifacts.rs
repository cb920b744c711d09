//! Text artifacts from what a backend recorded: `<machine>.console` (the
//! effective command line, then the transcript) and `<switch>.trace` (one line per
//! frame, [`crate::net::wire::trace_line`]), with `<switch>.pcap` written beside
//! them. Host-specific text (the run folder's path) is redacted so artifacts
//! compare across hosts.

use std::collections::BTreeMap;

use std::path::Path;

use super::backend::{BackendArtifacts, Lab, TraceRecord};
use crate::net::wire::{trace_line, PcapWriter};

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
    for switch in &lab.switches {
        let records = recorded
            .traces
            .get(&switch.name)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        out.insert(format!("{}.trace", switch.name), render_trace(records));
    }
    out
}

/// A port number as the trace shows it (ports are `u16` in the switch; a
/// backend reporting more is clamped rather than wrapped).
fn port(p: u32) -> u16 {
    u16::try_from(p).unwrap_or(u16::MAX)
}

/// One trace line per frame, numbered from 1.
pub fn render_trace(records: &[TraceRecord]) -> String {
    let mut text = String::new();
    for (i, r) in records.iter().enumerate() {
        let outs: Vec<u16> = r.out_ports.iter().map(|&p| port(p)).collect();
        text.push_str(&trace_line(
            i as u64 + 1,
            r.time,
            port(r.in_port),
            &outs,
            &r.frame,
        ));
        text.push('\n');
    }
    text
}

/// Writes `<switch>.pcap` for every switch of the lab into `dir`.
pub fn write_pcaps(lab: &Lab, recorded: &BackendArtifacts, dir: &Path) -> std::io::Result<()> {
    for switch in &lab.switches {
        let path = dir.join(format!("{}.pcap", switch.name));
        let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut pcap = PcapWriter::new(file)?;
        for r in recorded
            .traces
            .get(&switch.name)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            pcap.write_frame(r.time, &r.frame)?;
        }
        pcap.flush()?;
    }
    Ok(())
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
