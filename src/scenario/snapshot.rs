//! The snapshot store: `snapshots/<scenario>/<artifact>.snap` in insta's `.snap`
//! format (a `---` header with `source:` and `expression:`, then the content),
//! so `cargo insta review` works on them.
//!
//! Update modes follow insta's `INSTA_UPDATE`: `always` writes `.snap` files,
//! `auto` (the default) writes `.snap.new` beside a mismatching snapshot unless
//! `CI` is set, `no` writes nothing.
//!
//! The folder comes with a lab, so it is untrusted: [`Store`] reads, writes
//! and removes its files without following links, and writes by rename.

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
) -> Result<Vec<Mismatch>, SnapshotError> {
    let mut store = Store::open(dir)?;
    let mut mismatches = Vec::new();
    for (name, content) in artifacts {
        let snap_name = format!("{name}.snap");
        let new_name = format!("{name}.snap.new");
        let snap = dir.join(&snap_name);
        let old = store.read(&snap_name)?;
        let old_content = old.as_deref().and_then(parse_snap);
        if old_content.is_some_and(|o| normalized(o) == normalized(content)) {
            store.remove(&new_name)?;
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
                store.write(&snap_name, &render_snap(source, name, content))?;
                store.remove(&new_name)?;
            }
            UpdateMode::New => store.write(&new_name, &render_snap(source, name, content))?,
            UpdateMode::No => {}
        }
        mismatches.push(Mismatch {
            artifact: name.clone(),
            snapshot: snap,
            detail,
        });
    }
    let mut stale: Vec<(String, String)> = store
        .list()?
        .into_iter()
        .filter_map(|file| {
            let artifact = file.strip_suffix(".snap")?.to_string();
            (!artifacts.contains_key(&artifact)).then_some((artifact, file))
        })
        .collect();
    stale.sort();
    for (artifact, file) in stale {
        if mode == UpdateMode::Always {
            store.remove(&file)?;
        }
        mismatches.push(Mismatch {
            detail: format!("stale snapshot: the run made no artifact {artifact}"),
            artifact,
            snapshot: dir.join(file),
        });
    }
    Ok(mismatches)
}

/// The longest snapshot file read: artifacts are text, and a lab folder must
/// not make umltest read a huge file into memory.
pub const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;

/// Why the snapshot store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A snapshot folder or file is a symbolic link.
    #[error("{} is a symbolic link: snapshots are never read or written through links (a lab folder could point one at any of your files); replace it with a real {what}", path.display())]
    Link { path: PathBuf, what: &'static str },
    /// A snapshot is not a regular file, or too large.
    #[error("{} is not a snapshot: {why}", path.display())]
    NotSnapshot { path: PathBuf, why: String },
    /// A file system call failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
}

/// One scenario's snapshot folder (`<base>/snapshots/<name>`), reached from
/// `<base>` without following a link in its last two components, and every
/// file in it opened, replaced and removed relative to that handle, never
/// through a link (O_NOFOLLOW, `*at` calls): a course folder shipping
/// `snapshots/lab/h1.console.snap.new -> ~/.bashrc` used to get `~/.bashrc`
/// overwritten.
pub struct Store {
    path: PathBuf,
    /// The folder, or `None` while it does not exist.
    dir: Option<std::os::fd::OwnedFd>,
}

fn nofollow_dir() -> nix::fcntl::OFlag {
    use nix::fcntl::OFlag;
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

impl Store {
    /// Opens `dir`; a missing folder is an empty store until a write makes it.
    pub fn open(dir: &Path) -> Result<Self, SnapshotError> {
        let mut store = Store {
            path: dir.to_path_buf(),
            dir: None,
        };
        store.dir = store.walk(false)?;
        Ok(store)
    }

    /// Opens (with `create`, makes) the folder's last two components under
    /// its base, refusing links.
    fn walk(&self, create: bool) -> Result<Option<std::os::fd::OwnedFd>, SnapshotError> {
        use nix::sys::stat::Mode;
        let parts: Vec<&std::ffi::OsStr> = self
            .path
            .components()
            .rev()
            .take(2)
            .map(|c| c.as_os_str())
            .collect();
        let base = self
            .path
            .ancestors()
            .nth(parts.len())
            .filter(|b| !b.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let io = |path: &Path, op, e: nix::errno::Errno| SnapshotError::Io {
            path: path.to_path_buf(),
            op,
            source: e.into(),
        };
        let mut at = nix::fcntl::open(
            base,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(base, "open", e))?;
        // Messages name the path as given (`snapshots/lab`, not `./snapshots/lab`).
        let mut here = self
            .path
            .ancestors()
            .nth(parts.len())
            .unwrap_or(Path::new(""))
            .to_path_buf();
        for part in parts.into_iter().rev() {
            here.push(part);
            let opened = match nix::fcntl::openat(&at, part, nofollow_dir(), Mode::empty()) {
                Err(nix::errno::Errno::ENOENT) if create => {
                    match nix::sys::stat::mkdirat(&at, part, Mode::from_bits_truncate(0o777)) {
                        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                        Err(e) => return Err(io(&here, "create", e)),
                    }
                    nix::fcntl::openat(&at, part, nofollow_dir(), Mode::empty())
                }
                other => other,
            };
            at = match opened {
                Ok(fd) => fd,
                Err(nix::errno::Errno::ENOENT) => return Ok(None),
                Err(nix::errno::Errno::ELOOP) => {
                    return Err(SnapshotError::Link {
                        path: here,
                        what: "folder",
                    })
                }
                Err(nix::errno::Errno::ENOTDIR) if is_link_at(&at, part) => {
                    return Err(SnapshotError::Link {
                        path: here,
                        what: "folder",
                    })
                }
                Err(e) => return Err(io(&here, "open", e)),
            };
        }
        Ok(Some(at))
    }

    /// The text of snapshot file `file`, or `None` when there is none.
    pub fn read(&self, file: &str) -> Result<Option<String>, SnapshotError> {
        use nix::fcntl::OFlag;
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = self.path.join(file);
        // O_NONBLOCK: a FIFO must not hang the run (it is refused below).
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(dir, file, flags, nix::sys::stat::Mode::empty()) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(nix::errno::Errno::ELOOP) => {
                return Err(SnapshotError::Link { path, what: "file" })
            }
            Err(e) => {
                return Err(SnapshotError::Io {
                    path,
                    op: "open",
                    source: e.into(),
                })
            }
        };
        let file = std::fs::File::from(fd);
        let io = |path: &Path, op, source| SnapshotError::Io {
            path: path.to_path_buf(),
            op,
            source,
        };
        let meta = file.metadata().map_err(|e| io(&path, "stat", e))?;
        if !meta.is_file() {
            return Err(SnapshotError::NotSnapshot {
                path,
                why: "not a regular file".into(),
            });
        }
        if meta.len() > MAX_SNAPSHOT_BYTES {
            return Err(SnapshotError::NotSnapshot {
                path,
                why: format!(
                    "{} bytes, more than the {} MiB a snapshot may have",
                    meta.len(),
                    MAX_SNAPSHOT_BYTES >> 20
                ),
            });
        }
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(&file, MAX_SNAPSHOT_BYTES),
            &mut text,
        )
        .map_err(|e| io(&path, "read", e))?;
        Ok(Some(text))
    }

    /// Writes `text` as snapshot file `file`: to a temporary name, then
    /// renamed over it (a rename replaces a link, never writes through it). A
    /// link at `file` is refused.
    pub fn write(&mut self, file: &str, text: &str) -> Result<(), SnapshotError> {
        use nix::fcntl::OFlag;
        if self.dir.is_none() {
            self.dir = self.walk(true)?;
        }
        let path = self.path.join(file);
        let io = |op, source: std::io::Error| SnapshotError::Io {
            path: path.clone(),
            op,
            source,
        };
        let Some(dir) = &self.dir else {
            return Err(io(
                "create",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        };
        if is_link_at(dir, file.as_ref()) {
            return Err(SnapshotError::Link { path, what: "file" });
        }
        let temp = format!(".{file}.{}.tmp", std::process::id());
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
        // A leftover of a killed run (same pid, reused) would make O_EXCL fail.
        let _ = nix::unistd::unlinkat(dir, temp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        let fd = nix::fcntl::openat(dir, temp.as_str(), flags, mode)
            .map_err(|e| io("create a temporary file", e.into()))?;
        let mut out = std::fs::File::from(fd);
        let written = std::io::Write::write_all(&mut out, text.as_bytes());
        drop(out);
        let renamed = written.map_err(|e| io("write", e)).and_then(|()| {
            nix::fcntl::renameat(dir, temp.as_str(), dir, file)
                .map_err(|e| io("rename into place", e.into()))
        });
        if renamed.is_err() {
            let _ =
                nix::unistd::unlinkat(dir, temp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        renamed
    }

    /// Removes snapshot file `file` if it exists; a link there is refused.
    pub fn remove(&self, file: &str) -> Result<(), SnapshotError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = self.path.join(file);
        if is_link_at(dir, file.as_ref()) {
            return Err(SnapshotError::Link { path, what: "file" });
        }
        match nix::unistd::unlinkat(dir, file, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(SnapshotError::Io {
                path,
                op: "remove",
                source: e.into(),
            }),
        }
    }

    /// The names in the folder (none while it does not exist).
    pub fn list(&self) -> Result<Vec<String>, SnapshotError> {
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        let io = |source| SnapshotError::Io {
            path: self.path.clone(),
            op: "list",
            source,
        };
        // The folder as this handle sees it: /proc/self/fd/N is the open
        // folder itself, whatever its path now points at.
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(dir));
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&proc_path).map_err(io)? {
            names.push(
                entry
                    .map_err(io)?
                    .file_name()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        Ok(names)
    }
}

/// True when `name` in `dir` is a symbolic link (not followed).
fn is_link_at(dir: &std::os::fd::OwnedFd, name: &std::ffi::OsStr) -> bool {
    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
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
    fn the_store_never_goes_through_links() {
        let base = tempfile::tempdir().expect("tempdir");
        let victim = base.path().join("victim");
        std::fs::write(&victim, "mine\n").expect("write");
        let dir = base.path().join("snapshots/lab");
        let mut store = Store::open(&dir).expect("open a missing folder");
        assert_eq!(store.read("a.snap").expect("read"), None);
        store
            .write("a.snap", "new\n")
            .expect("write makes the folders");
        assert_eq!(store.read("a.snap").expect("read"), Some("new\n".into()));
        std::os::unix::fs::symlink(&victim, dir.join("b.snap")).expect("symlink");
        let store = Store::open(&dir).expect("open");
        for e in [
            store.read("b.snap").map(|_| ()),
            Store::open(&dir).and_then(|mut s| s.write("b.snap", "x")),
            store.remove("b.snap"),
        ] {
            assert!(matches!(e, Err(SnapshotError::Link { .. })), "{e:?}");
        }
        let linked = base.path().join("snapshots/linked");
        std::os::unix::fs::symlink(base.path(), &linked).expect("symlink");
        assert!(matches!(
            Store::open(&linked),
            Err(SnapshotError::Link { .. })
        ));
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "mine\n");
        let mut names = store.list().expect("list");
        names.sort();
        assert_eq!(names, ["a.snap", "b.snap"]);
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
