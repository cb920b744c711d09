//! Opening the files a COW tool touches, so that no input makes it hang or
//! write where it should not.
//!
//! - Every open is `O_NONBLOCK` and checked with `fstat` afterwards: a COW file
//!   must be a regular file, a backing file a regular file or a block device.
//!   A FIFO would otherwise block `open()` for ever (uml_moo has no such
//!   check: it refuses a FIFO only because its size, 0, is not the header's).
//! - Under a [`Confine`] (the scenario engine: the lab wrote the COW headers and
//!   journals it merges) a path resolves beneath the run folder one component at
//!   a time with `O_NOFOLLOW`, as `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//!   does, so neither `..` nor a link leads out; the lab's declared external
//!   disks are the only files outside it, and they are only ever opened
//!   read-only. Without one (the CLI), the user's paths are opened as named.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

use super::CowError;

/// The run folder a lab's COW work is confined to, and the host files (its
/// external disks) it may read.
#[derive(Debug, Clone)]
pub struct Confine {
    /// Canonical path of the run folder.
    root: PathBuf,
    /// The run folder's absolute path as given (before symlinks are resolved).
    given: PathBuf,
    dir: Arc<OwnedFd>,
    /// (dev, ino) of each readable host file, with its path for messages.
    read_only: Vec<((u64, u64), PathBuf)>,
}

/// What an open is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

impl Confine {
    /// Confines to `root` (which must exist); `read_only` are the host files
    /// (external disks) that may be opened for reading. A missing one is left
    /// out: opening it fails as any missing file does.
    pub fn new(root: &Path, read_only: &[PathBuf]) -> std::io::Result<Confine> {
        let given = std::path::absolute(root)?;
        let canonical = std::fs::canonicalize(root)?;
        let dir = openat(
            nix::fcntl::AT_FDCWD,
            &canonical,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let read_only = read_only
            .iter()
            .filter_map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some(((m.dev(), m.ino()), p.clone()))
            })
            .collect();
        Ok(Confine {
            root: canonical,
            given,
            dir: Arc::new(dir),
            read_only,
        })
    }

    /// The run folder (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` relative to the run folder, if it names something beneath it: an
    /// absolute path under the folder, or a relative one (relative to the
    /// folder, a machine's working directory), with no `..` in it.
    pub fn beneath(&self, path: &Path) -> Option<PathBuf> {
        let rel = if path.is_absolute() {
            path.strip_prefix(&self.root)
                .or_else(|_| path.strip_prefix(&self.given))
                .ok()?
        } else {
            path
        };
        let mut out = PathBuf::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                _ => return None,
            }
        }
        (!out.as_os_str().is_empty()).then_some(out)
    }

    fn outside(&self, path: &Path, access: Access) -> CowError {
        CowError::Outside {
            path: path.to_path_buf(),
            root: self.root.clone(),
            what: match access {
                Access::Read => "only the run folder and the lab's external disks can be read",
                Access::ReadWrite => {
                    "only files in the run folder can be written (external disks are read-only)"
                }
            },
        }
    }

    /// The directory holding `path` (beneath the run folder, no link followed)
    /// and the last component's name.
    pub fn parent_of(&self, path: &Path) -> Result<(File, OsString), CowError> {
        let rel = self
            .beneath(path)
            .ok_or_else(|| self.outside(path, Access::ReadWrite))?;
        let mut comps: Vec<&std::ffi::OsStr> = rel.iter().collect();
        let name = comps.pop().unwrap_or_default().to_os_string();
        let mut dir: OwnedFd = self
            .dir
            .try_clone()
            .map_err(|e| CowError::io("open", &self.root, e))?;
        for c in comps {
            dir = openat(
                dir.as_fd(),
                c,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| CowError::io("open directory of", path, e.into()))?;
        }
        Ok((File::from(dir), name))
    }

    /// Creates (or truncates) the regular file `path` beneath the run folder
    /// for writing, without following a link.
    pub fn create(&self, path: &Path) -> Result<File, CowError> {
        let (dir, name) = self.parent_of(path)?;
        let fd = openat(
            dir.as_fd(),
            name.as_os_str(),
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| match e {
            nix::errno::Errno::ELOOP => CowError::Refused {
                path: path.to_path_buf(),
                what:
                    "is a symbolic link: files in a run folder are opened without following links"
                        .into(),
            },
            e => CowError::io("create", path, e.into()),
        })?;
        regular(File::from(fd), path)
    }

    /// Opens the regular file `path` (beneath the run folder, no link
    /// followed; or an external disk, read only).
    pub fn open_file(&self, path: &Path, access: Access) -> Result<File, CowError> {
        regular(self.open(path, access)?, path)
    }

    /// Opens `path` beneath the run folder without following a link, or an
    /// external disk (read only); anything else is refused.
    fn open(&self, path: &Path, access: Access) -> Result<File, CowError> {
        if self.beneath(path).is_some() {
            let (dir, name) = self.parent_of(path)?;
            return match openat(
                dir.as_fd(),
                name.as_os_str(),
                flags(access) | OFlag::O_NOFOLLOW,
                Mode::empty(),
            ) {
                Ok(fd) => Ok(File::from(fd)),
                Err(nix::errno::Errno::ELOOP) => Err(CowError::Refused {
                    path: path.to_path_buf(),
                    what: "is a symbolic link: files in a run folder are opened without following links".into(),
                }),
                Err(e) => Err(CowError::io(open_op(access), path, e.into())),
            };
        }
        if access == Access::Read {
            // Checked by identity before the open (opening a device can have
            // effects) and again after it (the path could have changed).
            let id = |m: &std::fs::Metadata| (m.dev(), m.ino());
            let known = |m: &std::fs::Metadata| self.read_only.iter().any(|(k, _)| *k == id(m));
            match std::fs::metadata(path) {
                Ok(m) if known(&m) => {
                    let f = open_host(path, access)?;
                    let m = f.metadata().map_err(|e| CowError::io("stat", path, e))?;
                    if known(&m) {
                        return Ok(f);
                    }
                }
                // A missing file is reported as missing, not as outside.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(CowError::io(open_op(access), path, e))
                }
                _ => {}
            }
        }
        Err(self.outside(path, access))
    }
}

/// True if `path` (relative to `root`, or absolute) names something beneath
/// `root` by its letters alone: no `..`, no other root.
pub fn lexically_beneath(root: &Path, path: &Path) -> bool {
    let rel = match path.strip_prefix(root) {
        Ok(r) => r,
        Err(_) if path.is_absolute() => return false,
        Err(_) => path,
    };
    rel.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && rel.components().any(|c| matches!(c, Component::Normal(_)))
}

fn flags(access: Access) -> OFlag {
    let rw = match access {
        Access::Read => OFlag::O_RDONLY,
        Access::ReadWrite => OFlag::O_RDWR,
    };
    rw | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC
}

fn open_op(access: Access) -> &'static str {
    match access {
        Access::Read => "open",
        Access::ReadWrite => "open for writing",
    }
}

fn open_host(path: &Path, access: Access) -> Result<File, CowError> {
    openat(nix::fcntl::AT_FDCWD, path, flags(access), Mode::empty())
        .map(File::from)
        .map_err(|e| CowError::io(open_op(access), path, e.into()))
}

/// Opens `path` (confined or as named), never blocking.
pub fn open(path: &Path, access: Access, confine: Option<&Confine>) -> Result<File, CowError> {
    match confine {
        Some(c) => c.open(path, access),
        None => open_host(path, access),
    }
}

/// The name of a file type that is not a regular file.
pub(crate) fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

fn regular(f: File, path: &Path) -> Result<File, CowError> {
    let meta = f.metadata().map_err(|e| CowError::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(CowError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(meta.file_type()),
        });
    }
    Ok(f)
}

/// Opens a COW file: a regular file only.
pub fn open_cow(path: &Path, access: Access, confine: Option<&Confine>) -> Result<File, CowError> {
    let f = open(path, access, confine).map_err(|e| match e {
        CowError::Io { path, source, .. } => CowError::Io {
            op: "open COW file",
            path,
            source,
        },
        other => other,
    })?;
    regular(f, path)
}

/// A backing file, open, with its size (a block device's is its length) and
/// mtime in seconds.
#[derive(Debug)]
pub struct Backing {
    pub file: File,
    pub size: u64,
    pub mtime: i64,
    pub id: (u64, u64),
}

/// Opens the backing file of `cow`: a regular file or a block device only. A
/// missing or unreadable one is [`CowError::BackingMissing`].
pub fn open_backing(
    cow: &Path,
    path: &Path,
    access: Access,
    confine: Option<&Confine>,
) -> Result<Backing, CowError> {
    let file = open(path, access, confine).map_err(|e| match e {
        CowError::Io { source, .. } => CowError::BackingMissing {
            cow: cow.to_path_buf(),
            backing: path.to_path_buf(),
            source,
        },
        CowError::Outside { root, what, .. } => CowError::BackingOutside {
            cow: cow.to_path_buf(),
            backing: path.to_path_buf(),
            root,
            what,
        },
        other => other,
    })?;
    let meta = file.metadata().map_err(|e| CowError::io("stat", path, e))?;
    let ft = meta.file_type();
    let size = if ft.is_file() {
        meta.len()
    } else if ft.is_block_device() {
        use std::io::Seek;
        (&file)
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| CowError::io("seek to the end of", path, e))?
    } else {
        return Err(CowError::BadBacking {
            cow: cow.to_path_buf(),
            backing: path.to_path_buf(),
            kind: kind_name(ft),
        });
    };
    Ok(Backing {
        file,
        size,
        mtime: meta.mtime(),
        id: (meta.dev(), meta.ino()),
    })
}

/// Refuses a backing file that is the COW file itself (by inode: a hard link
/// or another name of it counts): merging it would write into its own header.
pub fn refuse_self_backing(cow_path: &Path, cow: &File, backing: &Backing) -> Result<(), CowError> {
    let m = cow
        .metadata()
        .map_err(|e| CowError::io("stat", cow_path, e))?;
    if (m.dev(), m.ino()) == backing.id {
        return Err(CowError::Refused {
            path: cow_path.to_path_buf(),
            what: "its backing file is the COW file itself (same device and inode): refusing to use it".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_resolves_beneath_the_root_only() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("run");
        std::fs::create_dir(&root)?;
        std::fs::write(root.join("a.img"), b"a")?;
        let outside = dir.path().join("host.img");
        std::fs::write(&outside, b"host")?;
        let ext = dir.path().join("ext.img");
        std::fs::write(&ext, b"ext")?;
        // The root reached through a link: both spellings are beneath it.
        let alias = dir.path().join("alias");
        std::os::unix::fs::symlink(&root, &alias)?;
        let c = Confine::new(&alias, std::slice::from_ref(&ext))?;
        assert_eq!(
            c.beneath(&alias.join("a.img")),
            Some(PathBuf::from("a.img"))
        );
        assert_eq!(
            c.beneath(&root.join("./a.img")),
            Some(PathBuf::from("a.img"))
        );
        assert_eq!(c.beneath(Path::new("a.img")), Some(PathBuf::from("a.img")));
        assert_eq!(c.beneath(&root.join("../host.img")), None);
        assert_eq!(c.beneath(Path::new("../host.img")), None);
        assert_eq!(c.beneath(&outside), None);
        assert_eq!(c.beneath(&root), None);
        assert!(open(&root.join("a.img"), Access::ReadWrite, Some(&c)).is_ok());
        for access in [Access::Read, Access::ReadWrite] {
            let e = open(&root.join("../host.img"), access, Some(&c)).expect_err("outside");
            assert!(matches!(e, CowError::Outside { .. }), "{e}");
        }
        // An external disk: read only.
        assert!(open(&ext, Access::Read, Some(&c)).is_ok());
        let e = open(&ext, Access::ReadWrite, Some(&c)).expect_err("write external");
        assert!(
            e.to_string().contains("external disks are read-only"),
            "{e}"
        );
        // A link in the run folder is not followed, even to an external disk.
        std::os::unix::fs::symlink(&ext, root.join("l.img"))?;
        let e = open(&root.join("l.img"), Access::Read, Some(&c)).expect_err("link");
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        // Nor is a linked directory on the way.
        std::os::unix::fs::symlink(dir.path(), root.join("up"))?;
        let e = open(&root.join("up/host.img"), Access::Read, Some(&c)).expect_err("dir link");
        assert!(matches!(e, CowError::Io { .. }), "{e}");
        assert!(lexically_beneath(&root, Path::new("a.img")));
        assert!(!lexically_beneath(&root, &outside));
        assert!(!lexically_beneath(&root, Path::new("x/../../a")));
        Ok(())
    }
}
