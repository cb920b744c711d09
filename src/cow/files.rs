//! `cow diff --files`: which files of an ext2/3/4 disk a COW file adds, changes
//! or removes, by reading the filesystem twice without mounting it (the
//! `ext4-view` crate): once from the backing file alone, once through the COW.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ext4_view::{Ext4, Ext4Read, FileType};
use serde::Serialize;

use super::{CowError, CowFile};

/// What happened to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Changed,
    Removed,
}

impl Change {
    /// One-letter tag as `git status --short` shows them.
    pub fn tag(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Changed => 'M',
            Change::Removed => 'D',
        }
    }
}

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    pub path: String,
    pub change: Change,
    /// For `changed`: what differs (content, size, mode, owner, mtime, type, target).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<&'static str>,
}

/// Errors reading a filesystem view.
fn fs_err(path: &Path, view: &str, e: impl std::fmt::Display) -> CowError {
    CowError::Io {
        op: "read ext4 filesystem",
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("{view} view: {e}")),
    }
}

struct CowView(CowFile);

impl Ext4Read for CowView {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0
            .read_at(dst, start_byte)
            .map_err(|e| e.to_string().into())
    }
}

struct BackingView(std::fs::File);

impl Ext4Read for BackingView {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0.read_exact_at(dst, start_byte).map_err(|e| e.into())
    }
}

/// What is compared per path (file contents are compared separately).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    len: u64,
    mode: u16,
    owner: (u32, u32),
    mtime: (i64, u32),
    target: Option<Vec<u8>>,
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Regular => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        FileType::BlockDevice => "block",
        FileType::CharacterDevice => "char",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
    }
}

fn walk(fs: &Ext4) -> Result<BTreeMap<Vec<u8>, Entry>, ext4_view::Ext4Error> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<ext4_view::PathBuf> =
        vec![ext4_view::PathBuf::try_from("/").map_err(|_| ext4_view::Ext4Error::NotFound)?];
    while let Some(dir) = stack.pop() {
        for entry in fs.read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let bytes: &[u8] = name.as_ref();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let path = entry.path();
            let meta = fs.symlink_metadata(&path)?;
            let ft = meta.file_type();
            let target = if ft == FileType::Symlink {
                Some(fs.read_link(&path)?.as_ref().to_vec())
            } else {
                None
            };
            let m = meta.modified();
            out.insert(
                path.as_ref().to_vec(),
                Entry {
                    kind: kind_name(ft),
                    len: meta.len(),
                    mode: meta.mode(),
                    owner: (meta.uid(), meta.gid()),
                    mtime: (m.seconds(), m.nanoseconds()),
                    target,
                },
            );
            if ft == FileType::Directory {
                stack.push(path);
            }
        }
    }
    Ok(out)
}

/// Lists the files added, changed and removed by the COW file, sorted by path.
pub fn diff_files(cow_path: &Path, backing: Option<&Path>) -> Result<Vec<FileChange>, CowError> {
    diff_files_in(cow_path, backing, None)
}

/// [`diff_files`], every file opened through `confine` when given.
pub fn diff_files_in(
    cow_path: &Path,
    backing: Option<&Path>,
    confine: Option<&super::Confine>,
) -> Result<Vec<FileChange>, CowError> {
    let cow = CowFile::open_in(cow_path, backing, false, confine)?;
    let backing_path = cow.backing_path().to_path_buf();
    // The backing file CowFile checked, not whatever its path names now.
    let back = cow
        .backing_file()
        .try_clone()
        .map_err(|e| CowError::io("open backing file", &backing_path, e))?;
    let old_fs =
        Ext4::load(Box::new(BackingView(back))).map_err(|e| fs_err(&backing_path, "backing", e))?;
    let new_fs = Ext4::load(Box::new(CowView(cow))).map_err(|e| fs_err(cow_path, "COW", e))?;
    let old = walk(&old_fs).map_err(|e| fs_err(&backing_path, "backing", e))?;
    let new = walk(&new_fs).map_err(|e| fs_err(cow_path, "COW", e))?;
    let mut changes = Vec::new();
    let show = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
    for (path, n) in &new {
        match old.get(path) {
            None => changes.push(FileChange {
                path: show(path),
                change: Change::Added,
                what: vec![],
            }),
            Some(o) => {
                let mut what = Vec::new();
                if o.kind != n.kind {
                    what.push("type");
                }
                if o.len != n.len {
                    what.push("size");
                }
                if o.mode != n.mode {
                    what.push("mode");
                }
                if o.owner != n.owner {
                    what.push("owner");
                }
                if o.target != n.target {
                    what.push("target");
                }
                if n.kind == "file" && o.kind == "file" && o.len == n.len {
                    let p = ext4_view::Path::try_from(path.as_slice())
                        .map_err(|e| fs_err(cow_path, "COW", e))?;
                    let a = old_fs
                        .read(p)
                        .map_err(|e| fs_err(&backing_path, "backing", e))?;
                    let b = new_fs.read(p).map_err(|e| fs_err(cow_path, "COW", e))?;
                    if a != b {
                        what.push("content");
                    }
                }
                // A directory's mtime changes with its entries, which are listed themselves.
                if o.mtime != n.mtime && n.kind != "dir" {
                    what.push("mtime");
                }
                if !what.is_empty() {
                    changes.push(FileChange {
                        path: show(path),
                        change: Change::Changed,
                        what,
                    });
                }
            }
        }
    }
    for path in old.keys() {
        if !new.contains_key(path) {
            changes.push(FileChange {
                path: show(path),
                change: Change::Removed,
                what: vec![],
            });
        }
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changes)
}
