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

/// `<machine>.ubd<N>.diff` for every COW disk of every machine: the changed
/// sector ranges (read from the COW bitmap after the run). Disks named as the
/// command line names them; nothing host-specific.
pub fn disk_diffs(lab: &Lab) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    // Files are read through the run folder (and the external disks) only:
    // a COW header the lab wrote may name any host file.
    let confine = crate::cow::Confine::new(&lab.run_dir, &lab.external_paths()).ok();
    let confine = confine.as_ref();
    for machine in &lab.machines {
        let parsed = crate::cmdline::parse(&machine.argv);
        for dev in parsed.ubd.iter().filter(|d| !d.implicit) {
            let cow_path = lab.run_dir.join(&dev.file);
            let is_cow = dev.backing.is_some()
                || crate::cow::open::open(&cow_path, crate::cow::Access::Read, confine)
                    .ok()
                    .is_some_and(|f| crate::cow::file::read_header(&f, &cow_path).is_ok());
            if !is_cow {
                continue;
            }
            let over = dev
                .backing
                .as_deref()
                .map(|b| format!(" over {b}"))
                .unwrap_or_default();
            let mut text = format!("ubd{}: {}{over}\n", dev.index, dev.file);
            if !cow_path.exists() {
                text.push_str("not created\n");
            } else {
                let backing = dev.backing.as_ref().map(|b| lab.run_dir.join(b));
                match crate::cow::inspect::diff_in(&cow_path, backing.as_deref(), false, confine) {
                    Ok(diff) => {
                        text.push_str(&describe_diff(&diff));
                        text.push_str(&describe_files(
                            &cow_path,
                            backing.as_deref(),
                            &diff,
                            confine,
                        ));
                    }
                    Err(e) => text.push_str(&format!("cannot read it: {e}\n")),
                }
            }
            out.insert(
                format!("{}.ubd{}.diff", machine.name, dev.index),
                redact(&text, lab),
            );
        }
    }
    out
}

/// The changed sectors of a COW disk as ranges, one per line, with how many
/// bytes in each differ from the backing file.
pub fn describe_diff(diff: &crate::cow::inspect::Diff) -> String {
    let size = diff.device_size;
    let mut text = format!(
        "size: {size} bytes ({} sectors)\nchanged: {} sectors in {} ranges, {} bytes differ from the backing file\n",
        size.div_ceil(512),
        diff.dirty_sectors,
        diff.ranges.len(),
        diff.changed_bytes
    );
    for r in &diff.ranges {
        let sectors = if r.sectors == 1 {
            format!("sector {}", r.first_sector)
        } else {
            format!(
                "sectors {}-{}",
                r.first_sector,
                r.first_sector + r.sectors - 1
            )
        };
        let differ = match r.changed_bytes {
            1 => "1 byte differs".to_string(),
            n => format!("{n} bytes differ"),
        };
        text.push_str(&format!("{sectors}: {differ}\n"));
    }
    text
}

/// The files a COW disk adds, changes and removes (`umltest cow diff
/// --files`), when its backing file holds an ext2/3/4 filesystem; nothing for
/// other disks. Skipped when no byte differs: then no file can.
pub fn describe_files(
    cow: &Path,
    backing: Option<&Path>,
    diff: &crate::cow::inspect::Diff,
    confine: Option<&crate::cow::Confine>,
) -> String {
    if !is_ext_fs(&diff.backing, confine) {
        return String::new();
    }
    if diff.changed_bytes == 0 {
        return "files: none changed\n".to_string();
    }
    match crate::cow::files::diff_files_in(cow, backing, confine) {
        Ok(changes) if changes.is_empty() => "files: none changed\n".to_string(),
        Ok(changes) => {
            let count = |c| changes.iter().filter(|f| f.change == c).count();
            use crate::cow::files::Change;
            let mut text = format!(
                "files: {} added, {} changed, {} removed\n",
                count(Change::Added),
                count(Change::Changed),
                count(Change::Removed)
            );
            for f in &changes {
                text.push_str(&format!("{} {}", f.change.tag(), f.path));
                if !f.what.is_empty() {
                    text.push_str(&format!(" ({})", f.what.join(", ")));
                }
                text.push('\n');
            }
            text
        }
        // A half-written filesystem (a machine killed mid-write) may not read.
        Err(e) => format!("files: cannot read the filesystem: {e}\n"),
    }
}

/// Whether `path` starts with an ext2/3/4 superblock (magic 0xEF53 at 1080).
fn is_ext_fs(path: &Path, confine: Option<&crate::cow::Confine>) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 2];
    crate::cow::open::open(path, crate::cow::Access::Read, confine)
        .is_ok_and(|f| f.read_exact_at(&mut magic, 1080).is_ok())
        && magic == [0x53, 0xef]
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
        let file = std::io::BufWriter::new(super::run_folder::create_fresh(&path)?);
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
