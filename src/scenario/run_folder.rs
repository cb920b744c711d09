//! Run folders: `umltest run --out DIR` keeps one folder per run of a scenario
//! (`DIR/<name>`, and `<name>.again`, `<name>.uml`, `<name>.uml.first`), which
//! each run empties and refills. The name comes from the lab file, which is
//! untrusted (ARCHITECTURE.md, "Confinement"): `name = "src"` with `--out .`
//! used to delete `./src`. So a folder is used only when umltest made it (the
//! [`MARKER`] file inside it), never through a symbolic link, and only under an
//! exclusive `flock(2)` on its marker, held for as long as the run uses it (as
//! cargo locks its build folder): a second run on the same folder is refused
//! before it touches anything, instead of mixing its artifacts into the first's.
//!
//! A new folder is made complete (marker written, lock taken) under a
//! temporary name and renamed into place with `RENAME_NOREPLACE`, so a run
//! racing another for the same new folder either wins it or finds it locked.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Creates `path` (in a run folder) afresh for umltest's own output: whatever
/// is there is removed, never followed. A real guest may plant links in its run
/// folder (hostfs reaches it inside the sandbox), and artifacts are written
/// after the guests ran.
pub fn create_fresh(path: &Path) -> std::io::Result<File> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // A link made again in between makes this fail (EEXIST), not follow it.
    File::options()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The file that marks a folder as a run folder umltest made.
pub const MARKER: &str = ".umltest-run";

/// Why a run folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunFolderError {
    /// The folder exists and umltest did not make it.
    #[error("{} exists and umltest did not make it (no {MARKER} file in it); a run empties its run folder, so umltest leaves this one alone: choose another --out, or move it away yourself", dir.display())]
    NotOurs { dir: PathBuf },
    /// The folder's place holds a symbolic link.
    #[error("{} is a symbolic link; umltest never uses a run folder through a link: choose another --out, or remove the link yourself", dir.display())]
    Link { dir: PathBuf },
    /// The folder's place holds something other than a folder.
    #[error("{} exists and is not a folder; umltest leaves it alone: choose another --out, or move it away yourself", dir.display())]
    NotDir { dir: PathBuf },
    /// Another run holds the folder's lock.
    #[error("{} is in use by another umltest run{holder}; umltest does not share a run folder: wait for that run to end, or choose another --out", dir.display())]
    Busy { dir: PathBuf, holder: String },
    /// A file system call failed.
    #[error("run folder {}: {op}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
}

/// A run folder this process holds: made by umltest, locked until dropped.
#[derive(Debug)]
pub struct RunFolder {
    dir: PathBuf,
    /// The open marker; its `flock` goes with it when it is closed.
    _lock: File,
}

impl RunFolder {
    /// Takes `dir` as a run folder: makes it (with its marker) when nothing is
    /// there, takes it when umltest made it, and locks it; refuses anything
    /// else. The parent folder must exist. Nothing in `dir` is changed.
    pub fn claim(dir: &Path) -> Result<Self, RunFolderError> {
        match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(made) = Self::create(dir)? {
                    return Ok(made);
                }
                // Another run made it first: take it as an existing one.
            }
            Err(source) => {
                return Err(RunFolderError::Io {
                    dir: dir.to_path_buf(),
                    op: "stat",
                    source,
                })
            }
            Ok(_) => {}
        }
        Self::open_existing(dir)
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes `dir` complete under a temporary name and renames it into place;
    /// `None` when something appeared at `dir` meanwhile.
    fn create(dir: &Path) -> Result<Option<Self>, RunFolderError> {
        let io = |op, source| RunFolderError::Io {
            dir: dir.to_path_buf(),
            op,
            source,
        };
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.unwrap_or_default()))
            .suffix(".claim")
            .tempdir_in(parent)
            .map_err(|e| io("create it", e))?;
        // A temporary folder is private (0700); a run folder is what
        // create_dir gives under the usual umask.
        std::fs::set_permissions(
            temp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| io("set its mode", e))?;
        let lock =
            create_marker(&temp.path().join(MARKER)).map_err(|e| io("create its marker", e))?;
        lock_exclusive(&lock).map_err(|e| io("lock its marker", e))?;
        write_owner(&lock).map_err(|e| io("write its marker", e))?;
        match nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            temp.path(),
            nix::fcntl::AT_FDCWD,
            dir,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {
                // The folder is in place now: nothing left to remove.
                let _ = temp.keep();
                Ok(Some(RunFolder {
                    dir: dir.to_path_buf(),
                    _lock: lock,
                }))
            }
            Err(nix::errno::Errno::EEXIST) => Ok(None),
            Err(e) => Err(io("move it into place", e.into())),
        }
    }

    fn open_existing(dir: &Path) -> Result<Self, RunFolderError> {
        let meta = std::fs::symlink_metadata(dir).map_err(|source| RunFolderError::Io {
            dir: dir.to_path_buf(),
            op: "stat",
            source,
        })?;
        if meta.file_type().is_symlink() {
            return Err(RunFolderError::Link {
                dir: dir.to_path_buf(),
            });
        }
        if !meta.is_dir() {
            return Err(RunFolderError::NotDir {
                dir: dir.to_path_buf(),
            });
        }
        let not_ours = || RunFolderError::NotOurs {
            dir: dir.to_path_buf(),
        };
        // A marker that is a link (ELOOP) or not a plain file does not count.
        let marker = std::fs::File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(dir.join(MARKER))
            .map_err(|_| not_ours())?;
        if !marker.metadata().map_err(|_| not_ours())?.is_file() {
            return Err(not_ours());
        }
        match lock_exclusive(&marker) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                let mut text = String::new();
                let _ = (&marker).take(256).read_to_string(&mut text);
                let holder = text
                    .lines()
                    .find_map(|l| l.strip_prefix("pid "))
                    .map(|pid| format!(" (pid {})", pid.trim()))
                    .unwrap_or_default();
                return Err(RunFolderError::Busy {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(source) => {
                return Err(RunFolderError::Io {
                    dir: dir.to_path_buf(),
                    op: "lock its marker",
                    source,
                })
            }
        }
        write_owner(&marker).map_err(|source| RunFolderError::Io {
            dir: dir.to_path_buf(),
            op: "write its marker",
            source,
        })?;
        Ok(RunFolder {
            dir: dir.to_path_buf(),
            _lock: marker,
        })
    }
}

fn create_marker(path: &Path) -> std::io::Result<File> {
    std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn lock_exclusive(file: &File) -> std::io::Result<()> {
    // SAFETY: flock on a file descriptor this File owns; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The marker's text: what it is for, and who holds it now (for the message a
/// second run gets).
fn write_owner(mut file: &File) -> std::io::Result<()> {
    file.set_len(0)?;
    let text = format!(
        "A run folder made by umltest: each run empties it and fills it again.\npid {}\n",
        std::process::id()
    );
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())
}

/// Empties a run folder, keeping its marker; refuses a folder without one
/// (never made or claimed by umltest). Links inside are removed, not followed.
pub fn clear(dir: &Path) -> Result<(), RunFolderError> {
    let io = |op, source| RunFolderError::Io {
        dir: dir.to_path_buf(),
        op,
        source,
    };
    let marker = std::fs::symlink_metadata(dir.join(MARKER));
    if !marker.is_ok_and(|m| m.is_file()) {
        return Err(RunFolderError::NotOurs {
            dir: dir.to_path_buf(),
        });
    }
    for entry in std::fs::read_dir(dir).map_err(|e| io("list it", e))? {
        let entry = entry.map_err(|e| io("list it", e))?;
        if entry.file_name() == MARKER {
            continue;
        }
        let kind = entry.file_type().map_err(|e| io("stat an entry", e))?;
        // remove_dir_all does not follow links, at the top or below.
        let removed = if kind.is_dir() {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        removed.map_err(|e| io("empty it", e))?;
    }
    Ok(())
}

/// Moves everything but the marker from run folder `from` into run folder
/// `to` (emptied first): both stay claimed, and locked by this process.
pub fn move_contents(from: &Path, to: &Path) -> Result<(), RunFolderError> {
    clear(to)?;
    let io = |op, source| RunFolderError::Io {
        dir: from.to_path_buf(),
        op,
        source,
    };
    for entry in std::fs::read_dir(from).map_err(|e| io("list it", e))? {
        let entry = entry.map_err(|e| io("list it", e))?;
        if entry.file_name() == MARKER {
            continue;
        }
        std::fs::rename(entry.path(), to.join(entry.file_name()))
            .map_err(|e| io("move an entry", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_new_and_own_folders_and_refuses_others() {
        let out = tempfile::tempdir().expect("tempdir");
        let dir = out.path().join("lab");
        let held = RunFolder::claim(&dir).expect("claim a new folder");
        assert!(dir.join(MARKER).is_file());
        assert!(matches!(
            RunFolder::claim(&dir),
            Err(RunFolderError::Busy { .. })
        ));
        std::fs::write(dir.join("artifact"), "x").expect("write");
        std::fs::create_dir(dir.join("sub")).expect("mkdir");
        clear(&dir).expect("clear");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, [MARKER]);
        drop(held);
        RunFolder::claim(&dir).expect("claim again once released");

        let users = out.path().join("src");
        std::fs::create_dir(&users).expect("mkdir");
        std::fs::write(users.join("main.rs"), "fn main() {}").expect("write");
        assert!(matches!(
            RunFolder::claim(&users),
            Err(RunFolderError::NotOurs { .. })
        ));
        assert!(matches!(clear(&users), Err(RunFolderError::NotOurs { .. })));
        assert!(users.join("main.rs").is_file());

        let link = out.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        assert!(matches!(
            RunFolder::claim(&link),
            Err(RunFolderError::Link { .. })
        ));
        let fake = out.path().join("fake");
        std::fs::create_dir(&fake).expect("mkdir");
        std::os::unix::fs::symlink(dir.join(MARKER), fake.join(MARKER)).expect("symlink");
        assert!(matches!(
            RunFolder::claim(&fake),
            Err(RunFolderError::NotOurs { .. })
        ));
    }

    #[test]
    fn contents_move_between_claimed_folders_and_links_inside_are_not_followed() {
        let out = tempfile::tempdir().expect("tempdir");
        let victim = out.path().join("victim");
        std::fs::create_dir(&victim).expect("mkdir");
        std::fs::write(victim.join("keep"), "x").expect("write");
        let (a, b) = (out.path().join("a"), out.path().join("b"));
        let _held = [RunFolder::claim(&a), RunFolder::claim(&b)].map(|r| r.expect("claim"));
        std::fs::write(a.join("h1.console"), "first").expect("write");
        std::os::unix::fs::symlink(&victim, a.join("link")).expect("symlink");
        std::fs::write(b.join("old"), "x").expect("write");
        move_contents(&a, &b).expect("move");
        assert_eq!(
            std::fs::read_to_string(b.join("h1.console")).expect("read"),
            "first"
        );
        assert!(!b.join("old").exists() && !a.join("h1.console").exists());
        assert!(a.join(MARKER).is_file() && b.join(MARKER).is_file());
        clear(&b).expect("clear");
        assert!(
            victim.join("keep").is_file(),
            "the link was removed, not followed"
        );
    }
}
