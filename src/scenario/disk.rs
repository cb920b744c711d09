//! Host-side disk work done by the engine in the run folder, identically for
//! both backends: creating the scenario's disks (exact sparse sizes,
//! reproducible ext4) and the `write` and `copy` steps.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::uml::image::MKE2FS_CONF;
use sha2::{Digest, Sha256};

/// A host-side disk operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `mkfs.ext4` is not installed (e2fsprogs).
    #[error("mkfs.ext4 not found (install it with: apt-get install -y e2fsprogs)")]
    NoMkfs,
    #[error("mkfs.ext4 {path} failed ({status}): {stderr}")]
    Mkfs {
        path: PathBuf,
        status: String,
        stderr: String,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `path` as a sparse file of exactly `size` bytes (no block allocated),
/// like `truncate -s` or `dd bs=1 count=0 seek=SIZE`.
pub fn create_sparse(path: &Path, size: u64) -> Result<(), DiskError> {
    let file = File::create(path).map_err(io("create", path))?;
    file.set_len(size).map_err(io("set size of", path))
}

/// The creation time written into every filesystem the harness makes
/// (2023-11-14 22:13:20 UTC), through e2fsprogs' `E2FSPROGS_FAKE_TIME`.
pub const MKFS_TIME: u64 = 1_700_000_000;

/// A UUID derived from `label` (SHA-256, shaped as a version-4 UUID), so the same
/// disk name always gets the same filesystem UUID.
pub fn derived_uuid(label: &str) -> String {
    let digest = Sha256::digest(label.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Makes a reproducible ext4 filesystem of `size` bytes at `path` (created
/// sparse first): fixed UUID and directory hash seed derived from `label`, fixed
/// time, fixed options, and a mke2fs.conf of our own. The same `mkfs.ext4`
/// version gives byte-identical images on every run.
///
/// Images are cached in `$XDG_CACHE_HOME/umltest/ext4/` by everything that
/// determines their bytes (options, size, label, and the mkfs binary's identity),
/// and copied from there hole for hole: mke2fs syncs its output, which alone
/// takes longer than a whole sim run.
pub fn mkfs_ext4(path: &Path, size: u64, label: &str) -> Result<(), DiskError> {
    let mkfs = crate::uml::guest::find_program("mkfs.ext4").ok_or(DiskError::NoMkfs)?;
    let Some(cache) = cache_dir() else {
        return mkfs_ext4_uncached(&mkfs, path, size, label);
    };
    let cached = cache.join(format!("{}.img", cache_key(&mkfs, size, label)));
    if !cached.is_file() {
        // An unwritable cache (read-only home) only costs time.
        let tmp = match std::fs::create_dir_all(&cache)
            .and_then(|()| tempfile::Builder::new().prefix(".mkfs").tempfile_in(&cache))
        {
            Ok(tmp) => tmp,
            Err(_) => return mkfs_ext4_uncached(&mkfs, path, size, label),
        };
        mkfs_ext4_uncached(&mkfs, tmp.path(), size, label)?;
        // Another process may have made the same image meanwhile: same bytes.
        tmp.persist(&cached).map_err(|e| DiskError::Io {
            op: "store in cache",
            path: cached.clone(),
            source: e.error,
        })?;
    }
    copy_holes(&cached, path)
}

/// `$XDG_CACHE_HOME/umltest/ext4`, or `~/.cache/umltest/ext4`.
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("umltest").join("ext4"))
}

/// Everything that decides the image's bytes, hashed.
fn cache_key(mkfs: &Path, size: u64, label: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    h.update(MKE2FS_CONF.as_bytes());
    h.update(MKFS_TIME.to_le_bytes());
    h.update(size.to_le_bytes());
    h.update(label.as_bytes());
    h.update(mkfs.as_os_str().as_encoded_bytes());
    if let Ok(m) = std::fs::metadata(mkfs) {
        h.update(m.size().to_le_bytes());
        h.update(m.mtime().to_le_bytes());
        h.update(m.ino().to_le_bytes());
    }
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `from` to `to` keeping its holes exactly (only data extents are written).
pub fn copy_holes(from: &Path, to: &Path) -> Result<(), DiskError> {
    use std::os::unix::fs::FileExt;
    let src = File::open(from).map_err(io("open", from))?;
    let len = src.metadata().map_err(io("stat", from))?.len();
    let dst = File::create(to).map_err(io("create", to))?;
    let extents = crate::cow::merge::data_extents(&src, len).map_err(io("find data in", from))?;
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in extents {
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], pos)
                .map_err(io("read", from))?;
            dst.write_all_at(&buf[..n], pos).map_err(io("write", to))?;
            pos += n as u64;
        }
    }
    dst.set_len(len).map_err(io("set size of", to))
}

/// [`mkfs_ext4`] without the cache: runs `mkfs` (the path of `mkfs.ext4`).
pub fn mkfs_ext4_uncached(
    mkfs: &Path,
    path: &Path,
    size: u64,
    label: &str,
) -> Result<(), DiskError> {
    create_sparse(path, size)?;
    let conf_dir = tempfile::tempdir().map_err(io("create temp dir for", path))?;
    let conf = conf_dir.path().join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).map_err(io("write", &conf))?;
    let out = Command::new(mkfs)
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", MKFS_TIME.to_string())
        .args(["-F", "-q", "-t", "ext4", "-T", "umltest", "-U"])
        .arg(derived_uuid(&format!("umltest-fs:{label}")))
        .arg("-E")
        .arg(format!(
            "hash_seed={},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard",
            derived_uuid(&format!("umltest-hash:{label}"))
        ))
        .arg(path)
        .output()
        .map_err(io("run mkfs.ext4 on", path))?;
    if !out.status.success() {
        return Err(DiskError::Mkfs {
            path: path.to_path_buf(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Writes `bytes` at `offset` into an existing file without truncating it
/// (`dd conv=notrunc`); the file grows if the write ends past its end. `now`:
/// the modification time the write leaves (the sim's virtual clock); `None`
/// leaves the host's, as a real write does. Not fsynced: the run folder is
/// throwaway, and a crash loses the whole run anyway.
pub fn write_at(
    path: &Path,
    offset: u64,
    bytes: &[u8],
    now: Option<SystemTime>,
) -> Result<(), DiskError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    write_at_file(&file, path, offset, bytes, now)
}

/// [`write_at`] on an open file (`path` names it in messages).
pub fn write_at_file(
    mut file: &File,
    path: &Path,
    offset: u64,
    bytes: &[u8],
    now: Option<SystemTime>,
) -> Result<(), DiskError> {
    file.seek(SeekFrom::Start(offset))
        .map_err(io("seek in", path))?;
    file.write_all(bytes).map_err(io("write", path))?;
    if let Some(now) = now {
        file.set_modified(now).map_err(io("set mtime of", path))?;
    }
    Ok(())
}

/// Copies `from` to `to`. `sparse`: zero blocks become holes (`cp
/// --sparse=always`, `tar -S`); otherwise every block is written, so the copy is
/// fully allocated. `preserve`: the copy keeps the source's modification time
/// (`cp -a`); otherwise it gets the time of the copy, as a careless `cp` does:
/// `now` when given (the sim's virtual clock, so nothing depends on the wall
/// clock), else the host's. Not fsynced (the run folder is throwaway).
pub fn copy(
    from: &Path,
    to: &Path,
    preserve: bool,
    sparse: bool,
    now: Option<SystemTime>,
) -> Result<(), DiskError> {
    let src = File::open(from).map_err(io("open", from))?;
    let dst = File::create(to).map_err(io("create", to))?;
    copy_files(&src, &dst, from, to, preserve, sparse, now)
}

/// [`copy`] between open files (`from` and `to` name them in messages).
pub fn copy_files(
    src: &File,
    dst: &File,
    from: &Path,
    to: &Path,
    preserve: bool,
    sparse: bool,
    now: Option<SystemTime>,
) -> Result<(), DiskError> {
    use std::os::unix::fs::FileExt;
    const BLOCK: usize = 4096;
    let meta = src.metadata().map_err(io("stat", from))?;
    let len = meta.len();
    // Holes read as zeros, so only the source's data extents need reading. A
    // careless copy ends up with every block allocated: where the filesystem
    // can, that is done with one fallocate (same bytes, same allocation as
    // writing every zero block, a fraction of the time), else by writing them.
    let ranges = crate::cow::merge::data_extents(src, len).map_err(io("find data in", from))?;
    let ranges = if sparse || allocate_all(dst, len) {
        ranges
    } else {
        vec![(0, len)]
    };
    let mut buf = vec![0u8; BLOCK * 64];
    for (start, end) in ranges {
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            let chunk = buf.get_mut(..n).unwrap_or_default();
            src.read_exact_at(chunk, pos).map_err(io("read", from))?;
            let mut off = 0;
            for block in chunk.chunks(BLOCK) {
                if !(sparse && block.iter().all(|&b| b == 0)) {
                    dst.write_all_at(block, pos + off)
                        .map_err(io("write", to))?;
                }
                off += block.len() as u64;
            }
            pos += n as u64;
        }
    }
    // A trailing hole needs the size set explicitly.
    dst.set_len(len).map_err(io("set size of", to))?;
    // futimens on the open file: the real mtime the kernel's COW check reads.
    let mtime = match (preserve, now) {
        (true, _) => Some(meta.modified().map_err(io("stat", from))?),
        (false, now) => now,
    };
    if let Some(mtime) = mtime {
        dst.set_modified(mtime).map_err(io("set mtime of", to))?;
    }
    Ok(())
}

/// Allocates every block of `file` (of `len` bytes) without writing; false if
/// the filesystem cannot.
fn allocate_all(file: &File, len: u64) -> bool {
    let Ok(len) = i64::try_from(len) else {
        return false;
    };
    len == 0 || nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len).is_ok()
}

/// How much of a file's apparent size is allocated on the host, in words that
/// do not depend on the host filesystem's block size or metadata overhead:
/// "sparse" (at most half allocated), "fully allocated" (at least the apparent
/// size), else "partly allocated".
pub fn allocation(path: &Path) -> std::io::Result<&'static str> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let allocated = meta.blocks().saturating_mul(512);
    Ok(if allocated.saturating_mul(2) <= meta.len() {
        "sparse"
    } else if allocated >= meta.len() {
        "fully allocated"
    } else {
        "partly allocated"
    })
}

/// One line for the host log: a file's apparent size and [`allocation`].
pub fn size_report(path: &Path, name: &str) -> String {
    match std::fs::metadata(path) {
        Ok(meta) => format!(
            "{name}: {} bytes apparent, {} on disk\n",
            meta.len(),
            allocation(path).unwrap_or("unknown allocation")
        ),
        Err(e) => format!("{name}: cannot stat it: {e}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_stable_and_v4_shaped() {
        let u = derived_uuid("x");
        assert_eq!(u, derived_uuid("x"));
        assert_ne!(u, derived_uuid("y"));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn sparse_and_careless_copies() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("a");
        create_sparse(&a, 1 << 20)?;
        write_at(&a, 8192, b"hello", None)?;
        assert_eq!(allocation(&a)?, "sparse");
        let b = dir.path().join("b");
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(MKFS_TIME + 5);
        copy(&a, &b, false, false, Some(now))?;
        assert_eq!(std::fs::read(&a)?, std::fs::read(&b)?);
        assert_eq!(allocation(&b)?, "fully allocated");
        assert_eq!(std::fs::metadata(&b)?.modified()?, now);
        let c = dir.path().join("c");
        copy(&a, &c, true, true, Some(now))?;
        assert_eq!(std::fs::read(&a)?, std::fs::read(&c)?);
        assert_eq!(allocation(&c)?, "sparse");
        assert_eq!(
            std::fs::metadata(&a)?.modified()?,
            std::fs::metadata(&c)?.modified()?
        );
        Ok(())
    }
}
