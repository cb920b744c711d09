//! UML copy-on-write (COW) files, byte-compatible with the UML 6.1 kernel,
//! `uml_mkcow` and `uml_moo` (format digest: `shared/spec/cow-format.md`).
//!
//! - [`header`]: the pure codec: v1, v2, v3 and broken-v3 headers, `cow_sizes`,
//!   bit order. Never panics on any input.
//! - [`file`]: [`CowFile`], byte-granular read/write over COW + backing with the
//!   kernel's sector semantics.
//! - [`create`](mod@create): `uml_mkcow` and the backing-path absolutization.
//! - [`merge`](mod@merge): `uml_moo`, new image or in place (`-d`, resumable).
//! - [`inspect`]: info, diff, check/repair and rebase.
//! - [`open`]: non-blocking, type-checked opens, and the [`Confine`] the
//!   scenario engine passes so that nothing a lab wrote (a COW header, a
//!   journal) leads a tool outside the run folder.
//!
//! The backing file is only ever opened read-only, except by an in-place merge.

pub mod create;
pub mod file;
pub mod files;
pub mod header;
pub mod inspect;
pub mod merge;
pub mod open;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use create::{absolutize, create, CreateOptions};
pub use file::CowFile;
pub use header::{Header, HeaderError, Layout, Version};
pub use merge::{merge_in_place, merge_to_new, MergeOptions, MergeReport};
pub use open::{Access, Confine};

/// Everything that can go wrong with a COW file. Each message names the file
/// (and offset where there is one); where the kernel or uml_moo has a message
/// for the condition, the text after the file name is theirs.
#[derive(Debug, thiserror::Error)]
pub enum CowError {
    /// An I/O operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The header could not be decoded.
    #[error("{}: {source}", path.display())]
    Header {
        path: PathBuf,
        #[source]
        source: HeaderError,
    },
    /// The path is a directory, FIFO, socket or device where a regular file is needed.
    #[error("{}: not a regular file (it is a {kind})", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    /// A backing file that is neither a regular file nor a block device.
    #[error("{}: backing file \"{}\" is a {kind}: a backing file must be a regular file or a block device", cow.display(), backing.display())]
    BadBacking {
        cow: PathBuf,
        backing: PathBuf,
        kind: &'static str,
    },
    /// A path outside the run folder, where a lab's files may not lead.
    #[error("{}: outside the run folder {}: {what}", path.display(), root.display())]
    Outside {
        path: PathBuf,
        root: PathBuf,
        what: &'static str,
    },
    /// A backing file (named by a COW header or `-b`) outside the run folder.
    #[error("{}: backing file \"{}\" is outside the run folder {}: {what}", cow.display(), backing.display(), root.display())]
    BackingOutside {
        cow: PathBuf,
        backing: PathBuf,
        root: PathBuf,
        what: &'static str,
    },
    /// The bitmap runs past the end of the file.
    #[error("{}: truncated COW file: the bitmap needs {need} bytes at offset {offset}, the file holds {have} of them", path.display())]
    TruncatedBitmap {
        path: PathBuf,
        offset: u64,
        need: u64,
        have: u64,
    },
    /// The backing file cannot be found or stat'ed.
    #[error("{}: backing file \"{}\": {source} (moved? pass the new path with -b, or run `umltest cow rebase`)", cow.display(), backing.display())]
    BackingMissing {
        cow: PathBuf,
        backing: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kernel's and uml_moo's size check.
    #[error("{}: Size mismatch ({header} vs {actual}) of COW header vs backing file \"{}\"", cow.display(), backing.display())]
    SizeMismatch {
        cow: PathBuf,
        backing: PathBuf,
        header: u64,
        actual: u64,
    },
    /// The kernel's and uml_moo's mtime check.
    #[error("{}: mtime mismatch ({header} vs {actual}) of COW header vs backing file \"{}\"", cow.display(), backing.display())]
    MtimeMismatch {
        cow: PathBuf,
        backing: PathBuf,
        header: i64,
        actual: i64,
    },
    /// A read or write beyond the device.
    #[error("{}: {len} bytes at offset {offset} are beyond the end of the {size}-byte device", path.display())]
    OutOfRange {
        path: PathBuf,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// A write to a COW opened read-only.
    #[error("{}: opened read-only", path.display())]
    ReadOnly { path: PathBuf },
    /// v1/v2 round the bitmap length down: the last sectors have no bit.
    #[error("{}: sector {sector} has no bit in the {bitmap_len}-byte v1/v2 bitmap (the historical rounding bug); it cannot be written", path.display())]
    NotCovered {
        path: PathBuf,
        sector: u64,
        bitmap_len: u64,
    },
    /// `create` over an existing file without `-f`.
    #[error("open COW file {}: File exists (pass -f to overwrite it)", path.display())]
    Exists { path: PathBuf },
    /// `absolutize`: the name does not fit the header.
    #[error("Backing file name \"{name}\" is too long - names are limited to 4095 characters")]
    NameTooLong { name: String },
    /// `absolutize`: the directory part cannot be resolved.
    #[error("absolutize : Can't cd to '{name}' - errno = {errno}")]
    CantCd { name: String, errno: i32 },
    /// `absolutize`: the absolute path does not fit the header.
    #[error("absolutize : unable to fit '{name}' into 4096 chars")]
    NoFit { name: String },
    /// An in-place merge journal that does not belong to this merge.
    #[error("{}: {what}", path.display())]
    Journal { path: PathBuf, what: String },
    /// An operation that would destroy something it should not.
    #[error("{}: {what}", path.display())]
    Refused { path: PathBuf, what: String },
    /// Injected failure (tests of crash safety).
    #[error("injected failure after {writes} writes")]
    Injected { writes: u64 },
}

impl CowError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> CowError {
        CowError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Opens a COW file, refusing anything but a regular file (opened
/// `O_NONBLOCK`, so a FIFO never blocks).
pub fn open_regular(path: &Path, writable: bool) -> Result<File, CowError> {
    let access = if writable {
        Access::ReadWrite
    } else {
        Access::Read
    };
    open::open_cow(path, access, None)
}

/// Size and mtime (seconds) of a backing file; a block device's size is its
/// length. Anything but a regular file or a block device is an error (a FIFO
/// is never opened: it would block).
pub fn backing_stat(path: &Path) -> std::io::Result<(u64, i64)> {
    let meta = std::fs::metadata(path)?;
    let ft = meta.file_type();
    let size = if ft.is_file() {
        meta.len()
    } else if std::os::unix::fs::FileTypeExt::is_block_device(&ft) {
        use std::io::Seek;
        let mut f = File::open(path)?;
        f.seek(std::io::SeekFrom::End(0))?
    } else {
        return Err(std::io::Error::other(format!(
            "it is a {}, not a regular file or a block device",
            open::kind_name(ft)
        )));
    };
    Ok((size, meta.mtime()))
}

/// The kernel's `backing_file_mismatch`: size first, then mtime. Returns the
/// backing file's size.
pub fn check_backing(cow: &Path, header: &Header, backing: &Path) -> Result<u64, CowError> {
    let (size, mtime) = backing_stat(backing).map_err(|source| CowError::BackingMissing {
        cow: cow.to_path_buf(),
        backing: backing.to_path_buf(),
        source,
    })?;
    check_size_mtime(cow, header, backing, size, mtime)?;
    Ok(size)
}

/// The comparison part of [`check_backing`].
pub fn check_size_mtime(
    cow: &Path,
    header: &Header,
    backing: &Path,
    size: u64,
    mtime: i64,
) -> Result<(), CowError> {
    if header.size != size {
        return Err(CowError::SizeMismatch {
            cow: cow.to_path_buf(),
            backing: backing.to_path_buf(),
            header: header.size,
            actual: size,
        });
    }
    if i64::from(header.mtime) != mtime {
        return Err(CowError::MtimeMismatch {
            cow: cow.to_path_buf(),
            backing: backing.to_path_buf(),
            header: i64::from(header.mtime),
            actual: mtime,
        });
    }
    Ok(())
}
