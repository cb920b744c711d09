//! Looking at COW files: `info`, `diff`, `check` (with the mtime repair) and
//! `rebase`. Read-only except [`fix_mtime`] (4 bytes of the COW header) and
//! [`rebase`] (the COW header); the backing file is never written.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::file::{dirty_runs, read_header, CowFile, SECTOR};
use super::header::{Header, Layout};
use super::{backing_stat, check_size_mtime, Access, Confine, CowError};

/// The backing file as found on disk, next to what the header expects.
#[derive(Debug, Clone, Serialize)]
pub struct BackingStatus {
    pub path: PathBuf,
    pub exists: bool,
    pub size: Option<u64>,
    pub mtime: Option<i64>,
    pub size_matches: Option<bool>,
    pub mtime_matches: Option<bool>,
    /// The stat error, if any.
    pub error: Option<String>,
}

/// Everything `cow info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub path: PathBuf,
    pub header: Header,
    pub layout: Layout,
    pub file_len: u64,
    /// `data_offset + size`: the length uml_mkcow gives the file.
    pub expected_len: u64,
    pub dirty_sectors: u64,
    pub dirty_ranges: u64,
    pub backing: BackingStatus,
    /// Kernel messages while reading the header (broken v3).
    pub messages: Vec<String>,
}

fn backing_status(header: &Header, path: &Path, confine: Option<&Confine>) -> BackingStatus {
    let stat = match confine {
        None => backing_stat(path),
        Some(_) => super::open::open_backing(path, path, Access::Read, confine)
            .map(|b| (b.size, b.mtime))
            .map_err(|e| match e {
                CowError::BackingMissing { source, .. } => source,
                CowError::BackingOutside { root, what, .. } => std::io::Error::other(format!(
                    "outside the run folder {}: {what}",
                    root.display()
                )),
                other => std::io::Error::other(other.to_string()),
            }),
    };
    match stat {
        Ok((size, mtime)) => BackingStatus {
            path: path.to_path_buf(),
            exists: true,
            size: Some(size),
            mtime: Some(mtime),
            size_matches: Some(size == header.size),
            mtime_matches: Some(mtime == i64::from(header.mtime)),
            error: None,
        },
        Err(e) => BackingStatus {
            path: path.to_path_buf(),
            exists: false,
            size: None,
            mtime: None,
            size_matches: None,
            mtime_matches: None,
            error: Some(e.to_string()),
        },
    }
}

/// Reads the header and the whole bitmap (which must be complete).
fn read_meta(
    path: &Path,
    confine: Option<&Confine>,
) -> Result<(File, Header, Layout, Vec<u8>, u64), CowError> {
    let file = super::open::open_cow(path, Access::Read, confine)?;
    let header = read_header(&file, path)?;
    let layout = header.layout().map_err(|source| CowError::Header {
        path: path.to_path_buf(),
        source,
    })?;
    let file_len = file
        .metadata()
        .map_err(|e| CowError::io("stat", path, e))?
        .len();
    let bitmap = super::file::read_bitmap(&file, path, &layout)?;
    Ok((file, header, layout, bitmap, file_len))
}

/// `cow info`.
pub fn info(path: &Path, backing: Option<&Path>) -> Result<Info, CowError> {
    let (_f, header, layout, bitmap, file_len) = read_meta(path, None)?;
    let sectors = header.size.div_ceil(SECTOR);
    let runs = dirty_runs(&bitmap, sectors);
    let backing_path = backing
        .map(Path::to_path_buf)
        .unwrap_or_else(|| header.backing_path());
    Ok(Info {
        path: path.to_path_buf(),
        backing: backing_status(&header, &backing_path, None),
        expected_len: layout.data_offset + header.size,
        dirty_sectors: runs.iter().map(|r| r.1).sum(),
        dirty_ranges: runs.len() as u64,
        messages: header.kernel_messages(),
        header,
        layout,
        file_len,
    })
}

/// One coalesced range of dirty sectors.
#[derive(Debug, Clone, Serialize)]
pub struct DiffRange {
    pub first_sector: u64,
    pub sectors: u64,
    pub offset: u64,
    pub len: u64,
    /// Bytes whose COW content differs from the backing's.
    pub changed_bytes: u64,
    /// `--hexdump`: rows `(offset, backing bytes, cow bytes)` that differ.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<HexRow>,
}

/// A 16-byte row that differs.
#[derive(Debug, Clone, Serialize)]
pub struct HexRow {
    pub offset: u64,
    #[serde(serialize_with = "ser_hex")]
    pub backing: Vec<u8>,
    #[serde(serialize_with = "ser_hex")]
    pub cow: Vec<u8>,
}

fn ser_hex<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let mut out = String::with_capacity(v.len() * 2);
    for b in v {
        out.push_str(&format!("{b:02x}"));
    }
    s.serialize_str(&out)
}

/// `cow diff`.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub cow: PathBuf,
    pub backing: PathBuf,
    pub device_size: u64,
    pub dirty_sectors: u64,
    pub changed_bytes: u64,
    pub ranges: Vec<DiffRange>,
}

/// At most this many hexdump rows are kept per range (the count stays exact).
pub const MAX_HEX_ROWS: usize = 64;

/// `cow diff`: changed sector ranges and bytes changed vs the backing file.
pub fn diff(path: &Path, backing: Option<&Path>, hexdump: bool) -> Result<Diff, CowError> {
    diff_in(path, backing, hexdump, None)
}

/// [`diff`], every file opened through `confine` when given.
pub fn diff_in(
    path: &Path,
    backing: Option<&Path>,
    hexdump: bool,
    confine: Option<&Confine>,
) -> Result<Diff, CowError> {
    let cow = CowFile::open_in(path, backing, false, confine)?;
    let data_offset = cow.layout().data_offset;
    let mut ranges = Vec::new();
    let chunk = 1usize << 20;
    let mut a = vec![0u8; chunk];
    let mut b = vec![0u8; chunk];
    for (first, count) in cow.dirty_runs() {
        let offset = first * SECTOR;
        let len = count * SECTOR;
        let mut changed = 0u64;
        let mut rows = Vec::new();
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(chunk as u64) as usize;
            let at = offset + pos;
            super::file::pread_zero_fill(cow.backing_file(), &mut a[..n], at)
                .map_err(|e| CowError::io("read", cow.backing_path(), e))?;
            super::file::pread_zero_fill(cow.cow_file(), &mut b[..n], data_offset + at)
                .map_err(|e| CowError::io("read", path, e))?;
            changed += a[..n].iter().zip(&b[..n]).filter(|(x, y)| x != y).count() as u64;
            if hexdump {
                for (i, (ra, rb)) in a[..n].chunks(16).zip(b[..n].chunks(16)).enumerate() {
                    if ra != rb && rows.len() < MAX_HEX_ROWS {
                        rows.push(HexRow {
                            offset: at + i as u64 * 16,
                            backing: ra.to_vec(),
                            cow: rb.to_vec(),
                        });
                    }
                }
            }
            pos += n as u64;
        }
        ranges.push(DiffRange {
            first_sector: first,
            sectors: count,
            offset,
            len,
            changed_bytes: changed,
            rows,
        });
    }
    Ok(Diff {
        cow: path.to_path_buf(),
        backing: cow.backing_path().to_path_buf(),
        device_size: cow.size(),
        dirty_sectors: ranges.iter().map(|r| r.sectors).sum(),
        changed_bytes: ranges.iter().map(|r| r.changed_bytes).sum(),
        ranges,
    })
}

/// Severity of a `check` finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Error,
}

/// One line of `cow check`.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
}

/// The result of `cow check`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub path: PathBuf,
    pub findings: Vec<Finding>,
    /// Set when `--fix-mtime` rewrote the header: (old, new).
    pub fixed_mtime: Option<(u32, u32)>,
}

impl Check {
    /// True if nothing is an error.
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.severity != Severity::Error)
    }
}

/// What an mtime mismatch means and how to repair it.
pub fn mtime_explanation(cow: &Path, header_mtime: u32, actual: i64) -> String {
    format!(
        "the backing file's mtime ({actual}) differs from the one recorded when the COW file was created ({header_mtime}). \
This is the classic result of copying or extracting the backing image without preserving times \
(cp without -a/-p, rsync without -t, tar without --atime-preserve/-p): the kernel then refuses the disk \
(\"mtime mismatch ({header_mtime} vs {actual}) of COW header vs backing file\"). If the backing content is unchanged, \
`umltest cow check --fix-mtime {}` rewrites the COW header's mtime (never the backing file's, which other COW files may depend on); \
if the backing file was modified, this COW file is stale",
        cow.display()
    )
}

/// `cow check [--fix-mtime]`.
pub fn check(path: &Path, backing: Option<&Path>, fix_mtime: bool) -> Result<Check, CowError> {
    check_in(path, backing, fix_mtime, None)
}

/// [`check`], every file opened through `confine` when given. A journal of an
/// interrupted in-place merge is an error (finish the merge), and
/// `--fix-mtime` is refused then: the header's mtime is what lets the merge
/// finish, and rewriting it would leave the backing half-merged for good.
pub fn check_in(
    path: &Path,
    backing: Option<&Path>,
    fix_mtime: bool,
    confine: Option<&Confine>,
) -> Result<Check, CowError> {
    let mut findings = Vec::new();
    let mut push = |severity, what: String| findings.push(Finding { severity, what });
    let (file, header, layout, _bitmap, file_len) = read_meta(path, confine)?;
    let journal = super::merge::find_journal(path, confine)?;
    let finish = format!("finish it with `umltest cow merge -d {}`", path.display());
    match &journal {
        Some(Ok(j)) => push(
            Severity::Error,
            format!(
                "an in-place merge into \"{}\" was interrupted ({} exists): the backing file may be half-merged; {finish} (it resumes where it stopped)",
                j.backing.display(),
                super::merge::journal_path(path).display()
            ),
        ),
        Some(Err(e)) => push(
            Severity::Error,
            format!(
                "an incomplete merge journal {} exists ({e}): an in-place merge was interrupted before writing it; {finish} (it starts afresh if the backing file is untouched)",
                super::merge::journal_path(path).display()
            ),
        ),
        None => {}
    }
    push(
        Severity::Ok,
        format!(
            "COW version {} header: backing \"{}\", size {}, mtime {}, sectorsize {}",
            header.version,
            header.backing_path().display(),
            header.size,
            header.mtime,
            header.sectorsize
        ),
    );
    for m in header.kernel_messages() {
        push(Severity::Warning, m);
    }
    if header.sectorsize != 512 {
        push(
            Severity::Warning,
            format!(
                "sectorsize {} is not 512: the kernel maps bits to 512-byte sectors while uml_moo uses {}; they disagree on this file",
                header.sectorsize, header.sectorsize
            ),
        );
    }
    let covered = layout.bitmap_len * 8;
    let sectors = header.size.div_ceil(SECTOR);
    if covered < sectors {
        push(
            Severity::Warning,
            format!(
                "the {}-byte v{} bitmap covers {covered} of the {sectors} sectors (the historical rounding bug): the kernel and uml_moo read past the bitmap for the last {} sectors, and they cannot be written through this file",
                layout.bitmap_len,
                header.version.number(),
                sectors - covered
            ),
        );
    }
    let expected = layout.data_offset + header.size;
    if file_len < expected {
        push(
            Severity::Warning,
            format!(
                "file is {file_len} bytes, shorter than data_offset + size = {expected}: sectors past the end read as zeros (truncated copy?)"
            ),
        );
    }
    let backing_path = backing
        .map(Path::to_path_buf)
        .unwrap_or_else(|| header.backing_path());
    let status = backing_status(&header, &backing_path, confine);
    let mut fixed = None;
    match (status.size, status.mtime) {
        (Some(size), Some(mtime)) => {
            if size != header.size {
                push(
                    Severity::Error,
                    format!(
                        "Size mismatch ({} vs {size}) of COW header vs backing file \"{}\": this COW file does not belong to this backing file",
                        header.size,
                        backing_path.display()
                    ),
                );
            } else if mtime != i64::from(header.mtime) && journal.is_some() {
                push(
                    Severity::Error,
                    format!(
                        "mtime mismatch ({} vs {mtime}) of COW header vs backing file \"{}\": the interrupted merge wrote to the backing file{}",
                        header.mtime,
                        backing_path.display(),
                        if fix_mtime {
                            "; --fix-mtime refused: the header's mtime is what lets the merge finish"
                        } else {
                            ""
                        }
                    ),
                );
            } else if mtime != i64::from(header.mtime) {
                match u32::try_from(mtime) {
                    Ok(new) if fix_mtime => {
                        file_write_mtime(path, &header, new, confine)?;
                        fixed = Some((header.mtime, new));
                        push(
                            Severity::Ok,
                            format!(
                                "fixed: COW header mtime {} -> {new} (backing file \"{}\" untouched)",
                                header.mtime,
                                backing_path.display()
                            ),
                        );
                    }
                    Ok(_) => push(
                        Severity::Error,
                        format!(
                            "mtime mismatch ({} vs {mtime}) of COW header vs backing file \"{}\": {}",
                            header.mtime,
                            backing_path.display(),
                            mtime_explanation(path, header.mtime, mtime)
                        ),
                    ),
                    Err(_) => push(
                        Severity::Error,
                        format!(
                            "mtime mismatch ({} vs {mtime}) of COW header vs backing file \"{}\": the backing mtime does not fit the header's 32 bits; it cannot be repaired",
                            header.mtime,
                            backing_path.display()
                        ),
                    ),
                }
            } else {
                push(
                    Severity::Ok,
                    format!(
                        "backing file \"{}\": size and mtime match",
                        backing_path.display()
                    ),
                );
            }
        }
        _ => push(
            Severity::Error,
            format!(
                "backing file \"{}\": {} (moved? pass -b PATH, or `umltest cow rebase {} NEW_BACKING`)",
                backing_path.display(),
                status.error.unwrap_or_default(),
                path.display()
            ),
        ),
    }
    drop(file);
    Ok(Check {
        path: path.to_path_buf(),
        findings,
        fixed_mtime: fixed,
    })
}

fn file_write_mtime(
    path: &Path,
    header: &Header,
    mtime: u32,
    confine: Option<&Confine>,
) -> Result<(), CowError> {
    let f = super::open::open_cow(path, Access::ReadWrite, confine)?;
    f.write_all_at(
        &header.encode_mtime(mtime),
        header.version.mtime_offset() as u64,
    )
    .and_then(|_| f.sync_all())
    .map_err(|e| CowError::io("write header of", path, e))
}

/// What `rebase` did.
#[derive(Debug, Clone, Serialize)]
pub struct Rebase {
    pub old: PathBuf,
    pub new: PathBuf,
}

/// `cow rebase COW NEW_BACKING`: after the kernel's size and mtime checks,
/// rewrite the header's backing path (absolute, as `absolutize` makes it). The
/// header keeps its version and layout (the kernel's switch always writes a v3
/// header, which would corrupt a v1/v2 file).
pub fn rebase(path: &Path, new_backing: &Path) -> Result<Rebase, CowError> {
    let (file, header, _layout, _bitmap, _len) = read_meta(path, None)?;
    drop(file);
    let (size, mtime) = backing_stat(new_backing).map_err(|source| CowError::BackingMissing {
        cow: path.to_path_buf(),
        backing: new_backing.to_path_buf(),
        source,
    })?;
    check_size_mtime(path, &header, new_backing, size, mtime)?;
    let cwd = std::env::current_dir().map_err(|e| CowError::io("getcwd for", new_backing, e))?;
    let abs = super::create::absolutize(new_backing, &cwd, false)?;
    let limit = match header.version {
        super::Version::V1 => super::header::PATH_LEN_V1,
        _ => super::header::PATH_LEN_V3,
    };
    if abs.len() >= limit {
        return Err(CowError::NoFit {
            name: String::from_utf8_lossy(&abs).into_owned(),
        });
    }
    let mut new = header.clone();
    new.backing_file = abs;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| CowError::io("open COW file for writing", path, e))?;
    f.write_all_at(&new.encode(), 0)
        .and_then(|_| f.sync_all())
        .map_err(|e| CowError::io("write header of", path, e))?;
    Ok(Rebase {
        old: header.backing_path(),
        new: new.backing_path(),
    })
}

/// The inode identity of a path (for tests and "same file" checks).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
