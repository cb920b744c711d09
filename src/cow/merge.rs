//! Merging a COW file into an image (`uml_moo`, `cow-format.md` §10).
//!
//! Content is what the guest saw (the [`CowFile`] view) cut to the backing's
//! exact size, which is byte-identical to uml_moo's output whenever the backing
//! size is a multiple of 512 (uml_moo drops a partial last sector: we warn
//! instead). Unlike uml_moo (one 512-byte read and write per sector), this
//! reads only the interesting parts: the backing's data extents
//! (`SEEK_DATA`/`SEEK_HOLE`) and the dirty sectors; all-zero 4 KiB blocks are
//! left as holes, so the output is never more allocated than uml_moo's. One
//! thread reads and zero-checks 512 KiB batches while the other writes the
//! previous one. In place, the COW's data is read in spans of dirty runs less
//! than 16 KiB apart (the clean sectors between them are holes of the COW
//! file); once a span is found not to be in the page cache (`RWF_NOWAIT`),
//! the following spans are hinted to the kernel (`POSIX_FADV_WILLNEED`) up to
//! 8 MiB ahead, so a cold cache is read with many requests in flight rather
//! than one synchronous 4 KiB read per run; only the dirty sectors are
//! written, one `pwrite` per run (writing the clean sectors between them
//! would allocate the backing's holes).
//!
//! New image: written to a temporary file beside the output, then renamed.
//! In place (`-d`): the backing is the only file ever opened read-write, and a
//! journal `<COW>.merging` recording the backing's size and original mtime is
//! written before the first write to it; while it exists a re-run skips the
//! mtime check (which the merge's own writes would fail) and redoes the merge,
//! which is idempotent. It is removed at the end. That survives a kill at any
//! point; with [`merge_in_place_durable`] the journal and the backing are also
//! fsynced in the right order, which survives a power loss.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::file::{pread_zero_fill, CowFile, SECTOR};
use super::open::{open_backing, open_cow, refuse_self_backing, Access, Confine};
use super::{check_size_mtime, file::read_header, CowError};

/// Bytes read and zero-checked per step: small enough for them to stay in
/// the CPU's L2 cache between the read and the zero check.
const WINDOW: u64 = 256 << 10;
/// Holes are kept at the filesystem-block granularity.
const BLOCK: u64 = 4096;

/// Options of a merge.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// `-b`: the actual backing file, overriding the header's path.
    pub backing: Option<PathBuf>,
    /// Test hook: fail (as if killed) once this many writes have been made.
    pub fail_after_writes: Option<u64>,
    /// Test hook: once this many writes have been made, say so on stderr and
    /// stop for ever (a test then kills the process at a known point).
    pub pause_after_writes: Option<u64>,
    /// Open every file (the output, the journal, a backing file named in the
    /// header) through this confinement: the scenario engine's run folder.
    pub confine: Option<Confine>,
}

/// What a merge did and what the user should know.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MergeReport {
    /// Kernel-style messages printed while reading the header (broken v3).
    pub messages: Vec<String>,
    /// Warnings: partial tail sector, tiny backing, staleness after `-d`.
    pub warnings: Vec<String>,
    pub dirty_sectors: u64,
    /// Data bytes written to the output.
    pub bytes_written: u64,
    /// An interrupted in-place merge was found and completed.
    pub resumed: bool,
}

/// Warnings about the two sizes the real tools handle badly.
pub fn size_warnings(cow: &CowFile, backing_len: u64) -> Vec<String> {
    let mut w = Vec::new();
    let backing = cow.backing_path().display();
    let rem = backing_len % SECTOR;
    if rem != 0 {
        let last = backing_len / SECTOR;
        let floor = last * SECTOR;
        let how = if cow.is_dirty(last) {
            format!(
                "it is dirty: its first {rem} bytes were taken from the COW file, the guest's {} bytes beyond the backing's end are dropped",
                SECTOR - rem
            )
        } else {
            "it is clean: taken from the backing file".to_string()
        };
        w.push(format!(
            "warning: backing file \"{backing}\" is {backing_len} bytes, not a multiple of 512: the last sector (bytes {floor}..{backing_len}) is partial; {how}. uml_moo would drop these {rem} bytes and produce {floor} bytes"
        ));
    }
    if backing_len <= 32768 {
        w.push(format!(
            "warning: backing file \"{backing}\" is {backing_len} bytes (32 KiB or less, a bitmap of at most 8 bytes): the real UML 6.1 kernel hangs on its first write through a COW file over it"
        ));
    }
    w
}

/// Sorted, disjoint `[start, end)` byte ranges of the backing's data extents.
pub fn data_extents(file: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        let start = match lseek(file, pos as i64, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            // No SEEK_DATA support: treat everything as data.
            Err(nix::errno::Errno::EINVAL) => return Ok(vec![(pos, len)]),
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = match lseek(file, start as i64, Whence::SeekHole) {
            Ok(e) => (e as u64).min(len),
            Err(e) => return Err(e.into()),
        };
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

/// Union of two sorted lists of disjoint ranges.
fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b.iter()).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in all {
        match out.last_mut() {
            Some((_, le)) if s <= *le => *le = (*le).max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn is_zero(b: &[u8]) -> bool {
    // SAFETY: u8 and u64 are plain integers; align_to only reinterprets the
    // aligned middle part, prefix and suffix stay bytes.
    let (pre, mid, suf) = unsafe { b.align_to::<u64>() };
    // OR-folding 512 bytes at a time (no early exit inside a chunk) lets the
    // compiler vectorise the check of the (mostly zero) backing data.
    pre.iter().all(|&x| x == 0)
        && suf.iter().all(|&x| x == 0)
        && mid
            .chunks(64)
            .all(|c| c.iter().fold(0u64, |a, &x| a | x) == 0)
}

struct Writer<'a> {
    file: &'a File,
    path: &'a Path,
    writes: u64,
    bytes: u64,
    fail_after: Option<u64>,
    pause_after: Option<u64>,
}

impl Writer<'_> {
    fn write(&mut self, data: &[u8], at: u64) -> Result<(), CowError> {
        if self.pause_after == Some(self.writes) {
            eprintln!(
                "umltest: test hook: merge paused after {} writes",
                self.writes
            );
            loop {
                std::thread::park();
            }
        }
        if self.fail_after == Some(self.writes) {
            return Err(CowError::Injected {
                writes: self.writes,
            });
        }
        self.file
            .write_all_at(data, at)
            .map_err(|e| CowError::io("write", self.path, e))?;
        self.writes += 1;
        self.bytes += data.len() as u64;
        Ok(())
    }
}

/// Appends to `out` the byte ranges of a `len`-byte window at file offset
/// `at` made of the 4 KiB blocks (aligned on the file) that `keep` accepts,
/// neighbours coalesced so that each range is one write.
fn keep_blocks(
    len: usize,
    at: u64,
    mut keep: impl FnMut(usize, usize) -> bool,
    out: &mut Vec<(usize, usize)>,
) {
    let mut run: Option<usize> = None;
    let mut i = 0usize;
    while i < len {
        let next_boundary = ((at + i as u64) / BLOCK + 1) * BLOCK;
        let j = ((next_boundary - at) as usize).min(len);
        if keep(i, j) {
            run.get_or_insert(i);
        } else if let Some(r) = run.take() {
            out.push((r, i));
        }
        i = j;
    }
    if let Some(r) = run {
        out.push((r, len));
    }
}

/// The `[start, end)` byte ranges split at `WINDOW` boundaries of the file.
fn windows(ranges: &[(u64, u64)]) -> impl Iterator<Item = (u64, usize)> + '_ {
    ranges.iter().flat_map(|&(start, end)| {
        let mut pos = start;
        std::iter::from_fn(move || {
            (pos < end).then(|| {
                let n = (end - pos).min(WINDOW - pos % WINDOW);
                let at = pos;
                pos += n;
                (at, n as usize)
            })
        })
    })
}

/// The windows of `ranges` grouped into batches of at most `BATCH` bytes:
/// the unit handed from the reader to the writer.
fn batches(ranges: &[(u64, u64)]) -> impl Iterator<Item = Vec<(u64, usize)>> + Send + '_ {
    group(windows(ranges))
}

/// `(offset, len)` pieces (each at most `BATCH` bytes) grouped into batches
/// of at most `BATCH` bytes.
fn group<I>(pieces: I) -> impl Iterator<Item = Vec<(u64, usize)>> + Send
where
    I: Iterator<Item = (u64, usize)> + Send,
{
    let mut it = pieces.peekable();
    std::iter::from_fn(move || {
        let mut group = Vec::new();
        let mut total = 0usize;
        while let Some(&(at, n)) = it.peek() {
            if total + n > BATCH {
                break;
            }
            group.push((at, n));
            total += n;
            it.next();
        }
        (!group.is_empty()).then_some(group)
    })
}

/// One batch read and judged, on its way to the writer.
struct Filled {
    buf: Vec<u8>,
    /// `(start, end, file offset)`: write `buf[start..end]` at the offset.
    keep: Vec<(usize, usize, u64)>,
}

/// Bytes handed from the reader to the writer at once. A hand-over costs a
/// futex wake-up, some 15 µs in this VM: one per dirty run (65k at 50%
/// dirty) made the merge four times slower, one per 4 MiB of the file still
/// cost the 1% case a third of its time. Per 512 KiB read, the hand-overs
/// are cheap and the batch is still in a cache when the writer copies it
/// (4 MiB batches: 1% case 5 ms slower).
const BATCH: usize = 512 << 10;
/// Buffers in flight between the reader and the writer.
const DEPTH: usize = 3;

/// Runs the merge as two threads: one reads each window and decides which of
/// its blocks to write (`fill`, which appends ranges of the buffer), the
/// calling thread writes them. The kernel's write path (page-cache
/// allocation, delayed allocation) is most of the time; reading the next
/// window on the other core hides the copy out of the source's page cache.
fn pipeline<I, F>(batches: I, fill: F, w: &mut Writer) -> Result<(), CowError>
where
    I: Iterator<Item = Vec<(u64, usize)>> + Send,
    F: Fn(&mut [u8], u64, &mut Vec<(usize, usize)>) -> Result<(), CowError> + Sync,
{
    use std::sync::mpsc::sync_channel;
    let (full_tx, full_rx) = sync_channel::<Result<Filled, CowError>>(DEPTH);
    let (free_tx, free_rx) = sync_channel::<Filled>(DEPTH);
    for _ in 0..DEPTH {
        let _ = free_tx.send(Filled {
            buf: vec![0u8; BATCH],
            keep: Vec::new(),
        });
    }
    let fill = &fill;
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut keep = Vec::new();
            for group in batches {
                // The writer hung up (it failed): stop.
                let Ok(mut f) = free_rx.recv() else { return };
                f.keep.clear();
                let mut off = 0usize;
                let mut r = Ok(());
                for (at, n) in group {
                    keep.clear();
                    r = fill(&mut f.buf[off..off + n], at, &mut keep);
                    if r.is_err() {
                        break;
                    }
                    for &(a, b) in &keep {
                        match f.keep.last_mut() {
                            // A run that goes on across windows: one write.
                            Some(last)
                                if last.1 == off + a
                                    && last.2 + (last.1 - last.0) as u64 == at + a as u64 =>
                            {
                                last.1 = off + b
                            }
                            _ => f.keep.push((off + a, off + b, at + a as u64)),
                        }
                    }
                    off += n;
                }
                let r = r.map(|()| f);
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        // Dropping the channel ends on return (also on an error) lets the
        // reader stop before the scope joins it.
        let (full_rx, free_tx) = (full_rx, free_tx);
        for r in full_rx.iter() {
            let f = r?;
            for &(a, b, at) in &f.keep {
                w.write(&f.buf[a..b], at)?;
            }
            let _ = free_tx.send(f);
        }
        Ok(())
    })
}

fn sector_ranges(runs: &[(u64, u64)], limit: u64) -> Vec<(u64, u64)> {
    runs.iter()
        .map(|&(s, n)| (s * SECTOR, ((s + n) * SECTOR).min(limit)))
        .filter(|(s, e)| s < e)
        .collect()
}

/// `uml_moo [-b BACKING] COW NEW`: writes the merged image to `out` (through
/// an unnamed `O_TMPFILE` in its directory, linked and renamed over `out` at
/// the end, so a killed merge leaves nothing behind).
pub fn merge_to_new(
    cow_path: &Path,
    out: &Path,
    opts: &MergeOptions,
) -> Result<MergeReport, CowError> {
    let confine = opts.confine.as_ref();
    let cow = CowFile::open_in(cow_path, opts.backing.as_deref(), false, confine)?;
    let backing_len = cow.header().size;
    let mut report = MergeReport {
        messages: cow.header().kernel_messages(),
        warnings: size_warnings(&cow, backing_len),
        ..MergeReport::default()
    };
    let runs = cow.dirty_runs();
    report.dirty_sectors = runs.iter().map(|r| r.1).sum();
    let extents = data_extents(cow.backing_file(), backing_len)
        .map_err(|e| CowError::io("seek data of", cow.backing_path(), e))?;
    let work = union(&extents, &sector_ranges(&runs, backing_len));

    let (dir, name) = output_dir(out, confine)?;
    // What `out` names now (not following a link: the rename replaces a link).
    let existing = nix::sys::stat::fstatat(
        &dir,
        name.as_os_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ok();
    if let Some(st) = existing {
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(CowError::NotRegular {
                path: out.to_path_buf(),
                kind: "directory",
            });
        }
        // Replacing the backing (or the COW) with the merge would silently make
        // every other COW over it stale: that is what -d is for.
        for (what, file) in [("backing", cow.backing_file()), ("COW", cow.cow_file())] {
            let same = file
                .metadata()
                .is_ok_and(|m| (m.dev(), m.ino()) == (st.st_dev, st.st_ino));
            if same {
                return Err(CowError::Refused {
                    path: out.to_path_buf(),
                    what: format!("refusing to replace the {what} file with the merged image (use -d to merge in place)"),
                });
            }
        }
    }
    let tmp = TempOut::create(&dir, out)?;
    tmp.file
        .set_len(backing_len)
        .map_err(|e| CowError::io("resize", out, e))?;
    let mut w = Writer {
        file: &tmp.file,
        path: out,
        writes: 0,
        bytes: 0,
        fail_after: opts.fail_after_writes,
        pause_after: opts.pause_after_writes,
    };
    pipeline(
        batches(&work),
        |buf, at, keep| {
            cow.read_at(buf, at)?;
            keep_blocks(buf.len(), at, |i, j| !is_zero(&buf[i..j]), keep);
            Ok(())
        },
        &mut w,
    )?;
    report.bytes_written = w.bytes;
    tmp.file
        .set_permissions(std::fs::Permissions::from_mode(
            0o644 & !super::create::umask(),
        ))
        .map_err(|e| CowError::io("chmod", out, e))?;
    tmp.persist(&dir, &name, out)?;
    Ok(report)
}

/// The directory `out` goes in (confined: beneath the run folder, no link
/// followed) and its file name.
fn output_dir(out: &Path, confine: Option<&Confine>) -> Result<(File, OsString), CowError> {
    if let Some(c) = confine {
        return c.parent_of(out);
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .ok_or_else(|| CowError::NotRegular {
            path: out.to_path_buf(),
            kind: "directory",
        })?
        .to_os_string();
    let f = File::open(&dir).map_err(|e| CowError::io("open directory", &dir, e))?;
    Ok((f, name))
}

/// Prefix of the names of merge temporary files (`<prefix><pid>-<n>`), so a
/// later merge can tell a dead process's leftover from a running merge's file.
const TEMP_PREFIX: &str = ".umltest-merge-";

/// The merge's output before it is complete: an `O_TMPFILE` (no name: a
/// killed merge leaves nothing), or where the filesystem has none, a file
/// named after our pid that the next merge in that directory removes once we
/// are gone.
struct TempOut {
    file: File,
    /// The name of the fallback file (removed on drop unless persisted).
    named: Option<(File, OsString)>,
}

impl TempOut {
    fn create(dir: &File, out: &Path) -> Result<TempOut, CowError> {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::Mode;
        let shown = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mode = Mode::from_bits_truncate(0o600);
        let proc_fd = Path::new("/proc/self/fd").is_dir();
        if proc_fd {
            match openat(
                dir,
                ".",
                OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
                mode,
            ) {
                Ok(fd) => {
                    return Ok(TempOut {
                        file: File::from(fd),
                        named: None,
                    })
                }
                Err(
                    nix::errno::Errno::EOPNOTSUPP
                    | nix::errno::Errno::EISDIR
                    | nix::errno::Errno::EINVAL,
                ) => {}
                Err(e) => return Err(CowError::io("create temporary file in", shown, e.into())),
            }
        }
        remove_dead_temps(dir);
        let dir2 = dir.try_clone().map_err(|e| CowError::io("dup", out, e))?;
        for n in 0u32.. {
            let name = OsString::from(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
            match openat(
                dir,
                name.as_os_str(),
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_RDWR
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                mode,
            ) {
                Ok(fd) => {
                    return Ok(TempOut {
                        file: File::from(fd),
                        named: Some((dir2, name)),
                    })
                }
                Err(nix::errno::Errno::EEXIST) if n < 1000 => continue,
                Err(e) => return Err(CowError::io("create temporary file in", shown, e.into())),
            }
        }
        Err(CowError::io(
            "create temporary file in",
            shown,
            std::io::Error::from_raw_os_error(libc::EEXIST),
        ))
    }

    /// Gives the file the name `name` in `dir` (replacing what was there).
    fn persist(mut self, dir: &File, name: &OsString, out: &Path) -> Result<(), CowError> {
        use nix::fcntl::{renameat, AT_FDCWD};
        use std::os::fd::AsRawFd;
        // Renames `tmp` over `name`; a failed rename leaves no temporary name.
        let rename_into = |tmp: &OsString| {
            renameat(dir, tmp.as_os_str(), dir, name.as_os_str()).map_err(|e| {
                let _ = nix::unistd::unlinkat(
                    dir,
                    tmp.as_os_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
                CowError::io("rename temporary file to", out, e.into())
            })
        };
        if let Some((_, tmp)) = self.named.take() {
            return rename_into(&tmp);
        }
        // linkat cannot replace: link to a fresh name, then rename over `out`.
        let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        for n in 0u32..1000 {
            let tmp = OsString::from(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
            match nix::unistd::linkat(
                AT_FDCWD,
                proc_path.as_str(),
                dir,
                tmp.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
            ) {
                Ok(()) => return rename_into(&tmp),
                Err(nix::errno::Errno::EEXIST) => continue,
                Err(e) => return Err(CowError::io("link temporary file to", out, e.into())),
            }
        }
        Err(CowError::io(
            "link temporary file to",
            out,
            std::io::Error::from_raw_os_error(libc::EEXIST),
        ))
    }
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if let Some((dir, name)) = self.named.take() {
            let _ = nix::unistd::unlinkat(
                &dir,
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Removes `.umltest-merge-<pid>-<n>` files in `dir` whose process is gone.
fn remove_dead_temps(dir: &File) {
    use std::os::fd::AsRawFd;
    let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        if gone {
            let _ = nix::unistd::unlinkat(
                dir,
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// The record of an in-place merge in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The backing file being written (absolute).
    pub backing: PathBuf,
    /// Its size, which the merge never changes.
    pub size: u64,
    /// Its mtime before the merge's first write.
    pub mtime: i64,
}

/// Where the journal of an in-place merge of `cow` lives.
pub fn journal_path(cow: &Path) -> PathBuf {
    let mut name = cow.as_os_str().to_os_string();
    name.push(".merging");
    PathBuf::from(name)
}

/// A journal larger than this is not one of ours (they are a few hundred
/// bytes): it is not read into memory.
const JOURNAL_MAX: u64 = 64 << 10;

/// The journal of an in-place merge, reached through its directory without
/// following links (confined: beneath the run folder). It is written under a
/// temporary name and renamed into place, so it is either absent or complete.
struct JournalFile<'a> {
    path: &'a Path,
    dir: File,
    name: OsString,
    tmp: OsString,
}

impl<'a> JournalFile<'a> {
    fn at(path: &'a Path, confine: Option<&Confine>) -> Result<JournalFile<'a>, CowError> {
        let (dir, name) = output_dir(path, confine)?;
        let mut tmp = name.clone();
        tmp.push(".new");
        let j = JournalFile {
            path,
            dir,
            name,
            tmp,
        };
        // A journal that was still being written when its merge was killed,
        // before the first write to the backing: nothing to keep.
        let _ = nix::unistd::unlinkat(
            &j.dir,
            j.tmp.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        Ok(j)
    }

    /// Its bytes, or `None` if there is none.
    fn read(&self) -> Result<Option<Vec<u8>>, CowError> {
        use nix::fcntl::{openat, OFlag};
        use std::io::Read;
        let err = |e: std::io::Error| CowError::io("read merge journal", self.path, e);
        let fd = match openat(
            &self.dir,
            self.name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(err(e.into())),
        };
        let f = File::from(fd);
        let meta = f.metadata().map_err(err)?;
        if !meta.is_file() || meta.len() > JOURNAL_MAX {
            return Err(CowError::Journal {
                path: self.path.to_path_buf(),
                what: format!(
                    "not a merge journal (a {} of {} bytes): remove it",
                    if meta.is_file() {
                        "file"
                    } else {
                        super::open::kind_name(meta.file_type())
                    },
                    meta.len()
                ),
            });
        }
        let mut bytes = Vec::new();
        f.take(JOURNAL_MAX).read_to_end(&mut bytes).map_err(err)?;
        Ok(Some(bytes))
    }

    fn write(&self, text: &[u8], sync: bool) -> Result<(), CowError> {
        use nix::fcntl::{openat, renameat, OFlag};
        let err = |e: std::io::Error| CowError::io("write merge journal", self.path, e);
        let fd = openat(
            &self.dir,
            self.tmp.as_os_str(),
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| CowError::io("create merge journal", self.path, e.into()))?;
        let mut f = File::from(fd);
        f.write_all(text)
            .and_then(|_| if sync { f.sync_all() } else { Ok(()) })
            .map_err(err)?;
        renameat(
            &self.dir,
            self.tmp.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
        )
        .map_err(|e| err(e.into()))?;
        if sync {
            self.sync_dir();
        }
        Ok(())
    }

    fn remove(&self) -> Result<(), CowError> {
        match nix::unistd::unlinkat(
            &self.dir,
            self.name.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(CowError::io("remove merge journal", self.path, e.into())),
        }
    }

    /// Best effort: a rename or unlink is durable once its directory is synced.
    fn sync_dir(&self) {
        let _ = self.dir.sync_all();
    }
}

/// The journal of an interrupted in-place merge of `cow`, if there is one:
/// its record, or why it cannot be read (empty or cut short).
pub fn find_journal(
    cow: &Path,
    confine: Option<&Confine>,
) -> Result<Option<Result<Journal, String>>, CowError> {
    let jpath = journal_path(cow);
    let Some(bytes) = JournalFile::at(&jpath, confine)?.read()? else {
        return Ok(None);
    };
    Ok(Some(
        serde_json::from_slice::<Journal>(&bytes).map_err(|e| e.to_string()),
    ))
}

/// `uml_moo [-b BACKING] -d COW`: merges the COW into its backing file in place.
/// Resumable after a kill: see the module docs.
pub fn merge_in_place(cow_path: &Path, opts: &MergeOptions) -> Result<MergeReport, CowError> {
    merge_in_place_durable(cow_path, opts, false)
}

/// [`merge_in_place`]; with `sync`, the journal is fsynced before the first
/// write to the backing and the backing before the journal is removed, so the
/// merge also resumes after a power loss (uml_moo syncs nothing).
pub fn merge_in_place_durable(
    cow_path: &Path,
    opts: &MergeOptions,
    sync: bool,
) -> Result<MergeReport, CowError> {
    merge_in_place_reading(cow_path, opts, sync, |f| f)
}

/// Positional reads of a file: the in-place merge reads the COW's data area
/// through this, so a test can count (or fail) its reads.
pub trait ReadAt: Sync {
    /// `pread(2)`: reads at most `buf.len()` bytes at `offset`; 0 at EOF.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
    /// A hint that `[offset, offset + len)` will be read soon (no effect on
    /// the result): the kernel may start reading it from the disk.
    fn will_need(&self, _offset: u64, _len: u64) {}
    /// Fills `buf` from `offset` if all of it is in the page cache (`Ok(true)`),
    /// without waiting for the disk; `Ok(false)`: not all cached, or cannot
    /// tell (the caller then reads with [`ReadAt::read_at`] and hints ahead).
    fn read_cached(&self, _buf: &mut [u8], _offset: u64) -> std::io::Result<bool> {
        Ok(false)
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn will_need(&self, offset: u64, len: u64) {
        // Best effort: only a hint, and asynchronous (the pages are read in
        // the background, the pread that needs them waits for them).
        let _ = nix::fcntl::posix_fadvise(
            self,
            offset as libc::off_t,
            len as libc::off_t,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }
    fn read_cached(&self, buf: &mut [u8], offset: u64) -> std::io::Result<bool> {
        use std::os::fd::AsRawFd;
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec over `buf`, which lives and is exclusively
        // borrowed for the call; the fd is open for reading.
        let n = unsafe {
            libc::preadv2(
                self.as_raw_fd(),
                &iov,
                1,
                offset as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        // EAGAIN (not cached), EOPNOTSUPP (an older kernel or another
        // filesystem) or a short read: let the caller read normally.
        Ok(n >= 0 && n as usize == buf.len())
    }
}

/// `pread` through `r` until `buf` is full, zero-filling past EOF.
fn read_full_at(r: &impl ReadAt, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match r.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// Dirty ranges closer than this in the COW's data area are read with one
/// `pread`, the clean sectors between them included. Those are holes in a
/// COW file that only UML or umltest wrote, which the kernel zero-fills
/// without touching the disk, but at a cost per page (`cat` of a 1 GiB COW
/// at 10% dirty spends 0.8 s of system time on its holes). Measured warm at
/// 10% and 50% dirty: 0, 4 and 16 KiB alike, 64 KiB slower at 10%.
const GAP: u64 = 16 << 10;
/// Bytes of the COW's data the reader asks the kernel to read ahead of it
/// (`POSIX_FADV_WILLNEED`, one hint per read span) once it met a span that
/// was not in the page cache: on a cold cache the disk then works on many
/// spans at once instead of one 4 KiB block per synchronous `pread`. A warm
/// merge gives no hints (one syscall per span saved).
const AHEAD: u64 = 8 << 20;

/// The spans the in-place merge reads the COW's data with, as device offsets:
/// the dirty `ranges` cut at `BATCH` bytes, neighbours at most `GAP` apart
/// joined.
fn read_spans(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in ranges {
        let mut pos = s;
        while pos < e {
            match out.last_mut() {
                // Joined only if the span then reaches into this range (not
                // just over the gap before it).
                Some(last) if pos - last.1 <= GAP && pos < last.0 + BATCH as u64 => {
                    last.1 = e.min(last.0 + BATCH as u64);
                    pos = last.1;
                }
                _ => {
                    let end = e.min(pos + BATCH as u64);
                    out.push((pos, end));
                    pos = end;
                }
            }
        }
    }
    out
}

/// [`merge_in_place_durable`], reading the COW's data area through
/// `reader(cow file)` (a test counts the reads with it).
pub fn merge_in_place_reading<R: ReadAt>(
    cow_path: &Path,
    opts: &MergeOptions,
    sync: bool,
    wrap: impl FnOnce(File) -> R,
) -> Result<MergeReport, CowError> {
    let confine = opts.confine.as_ref();
    let cow_file = open_cow(cow_path, Access::Read, confine)?;
    let header = read_header(&cow_file, cow_path)?;
    let backing_path = opts
        .backing
        .clone()
        .unwrap_or_else(|| header.backing_path());
    // The one file a merge writes, opened once: confined, it must lie in the
    // run folder (an external disk or a host file named by a header is refused).
    let backing = open_backing(cow_path, &backing_path, Access::ReadWrite, confine)?;
    refuse_self_backing(cow_path, &cow_file, &backing)?;
    let (size, mtime) = (backing.size, backing.mtime);
    let backing_abs = match confine {
        Some(c) => c
            .beneath(&backing_path)
            .map(|rel| c.root().join(rel))
            .unwrap_or_else(|| backing_path.clone()),
        None => std::fs::canonicalize(&backing_path)
            .map_err(|e| CowError::io("resolve", &backing_path, e))?,
    };
    let jpath = journal_path(cow_path);
    let journal = JournalFile::at(&jpath, confine)?;
    let mut resumed = false;
    let mut warnings = Vec::new();
    match journal.read()? {
        Some(bytes) => match serde_json::from_slice::<Journal>(&bytes) {
            Ok(j) => {
                if j.backing != backing_abs || j.size != header.size {
                    return Err(CowError::Journal {
                        path: jpath.clone(),
                        what: format!(
                            "an interrupted merge into \"{}\" ({} bytes) is recorded here, not into \"{}\"",
                            j.backing.display(),
                            j.size,
                            backing_abs.display()
                        ),
                    });
                }
                // The merge's own writes changed the mtime: check the size and
                // the mtime recorded before the first write.
                check_size_mtime(cow_path, &header, &backing_path, size, j.mtime)?;
                resumed = true;
            }
            // Empty or cut short: its writer was stopped before the backing's
            // first write, which comes after the whole journal. Whether that
            // writer was this code (which renames a complete journal into
            // place) cannot be known, but a backing that still has the size
            // and mtime the COW header records provably holds no merged data.
            Err(e) => {
                if check_size_mtime(cow_path, &header, &backing_path, size, mtime).is_err() {
                    return Err(CowError::Journal {
                        path: jpath.clone(),
                        what: format!(
                            "unreadable merge journal ({e}), and the backing file \"{}\" no longer has the mtime the COW header records ({} vs {mtime}): an interrupted merge may have written part of it. Remove the journal only if no merge of this COW file was interrupted",
                            backing_path.display(),
                            header.mtime
                        ),
                    });
                }
                journal.remove()?;
                warnings.push(format!(
                    "removed the incomplete merge journal {}: the backing file still has the size and mtime the COW header records, so nothing had been merged",
                    jpath.display()
                ));
            }
        },
        None => check_size_mtime(cow_path, &header, &backing_path, size, mtime)?,
    }
    let backing_rw = backing.file;
    let reader = backing_rw
        .try_clone()
        .map_err(|e| CowError::io("dup", &backing_path, e))?;
    let cow = CowFile::from_files(cow_file, cow_path, reader, &backing_path, size, false)?;
    warnings.extend(size_warnings(&cow, size));
    let mut report = MergeReport {
        messages: header.kernel_messages(),
        warnings,
        resumed,
        ..MergeReport::default()
    };
    let runs = cow.dirty_runs();
    report.dirty_sectors = runs.iter().map(|r| r.1).sum();
    if !resumed && !runs.is_empty() {
        let j = Journal {
            backing: backing_abs.clone(),
            size,
            mtime,
        };
        let text = serde_json::to_vec_pretty(&j).map_err(|e| CowError::Journal {
            path: jpath.clone(),
            what: e.to_string(),
        })?;
        journal.write(&text, sync)?;
    }
    let mut w = Writer {
        file: &backing_rw,
        path: &backing_path,
        writes: 0,
        bytes: 0,
        fail_after: opts.fail_after_writes,
        pause_after: opts.pause_after_writes,
    };
    let data_offset = cow.layout().data_offset;
    let ranges = sector_ranges(&runs, size);
    let spans = read_spans(&ranges);
    let data = wrap(
        cow.cow_file()
            .try_clone()
            .map_err(|e| CowError::io("dup", cow_path, e))?,
    );
    // Read-ahead bookkeeping of the (single) reader thread: whether a span
    // was found uncached (from then on it hints ahead), the next span to
    // hint, and the bytes hinted beyond what was read.
    let cold = std::sync::atomic::AtomicBool::new(false);
    let hinted = std::sync::atomic::AtomicUsize::new(0);
    let ahead = std::sync::atomic::AtomicU64::new(0);
    pipeline(
        group(spans.iter().map(|&(s, e)| (s, (e - s) as usize))),
        |buf, pos, keep| {
            use std::sync::atomic::Ordering::Relaxed;
            let n = buf.len();
            let cached = !cold.load(Relaxed)
                && data
                    .read_cached(buf, data_offset + pos)
                    .map_err(|e| CowError::io("read", cow_path, e))?;
            if !cached {
                cold.store(true, Relaxed);
                let mut h = hinted.load(Relaxed);
                let mut a = ahead.load(Relaxed).saturating_sub(n as u64);
                while h < spans.len() && a < AHEAD {
                    let (s, e) = spans[h];
                    if e > pos + n as u64 {
                        data.will_need(data_offset + s, e - s);
                        a += e - s;
                    }
                    h += 1;
                }
                hinted.store(h, Relaxed);
                ahead.store(a, Relaxed);
                read_full_at(&data, buf, data_offset + pos)
                    .map_err(|e| CowError::io("read", cow_path, e))?;
            }
            // The dirty ranges in this span: only they are written.
            let first = ranges.partition_point(|r| r.1 <= pos);
            for &(rs, re) in ranges[first..].iter().take_while(|r| r.0 < pos + n as u64) {
                let (rs, re) = (rs.max(pos), re.min(pos + n as u64));
                let (i, j) = ((rs - pos) as usize, (re - pos) as usize);
                let piece = &buf[i..j];
                // Like uml_moo -d: a zero block only needs writing if the
                // backing holds something else there (this also keeps holes
                // holes).
                let mut zero_blocks = false;
                let mut k = 0usize;
                while k < piece.len() {
                    let next = ((((rs + k as u64) / BLOCK) + 1) * BLOCK - rs) as usize;
                    let next = next.min(piece.len());
                    zero_blocks |= is_zero(&piece[k..next]);
                    k = next;
                }
                if !zero_blocks {
                    keep.push((i, j));
                    continue;
                }
                let mut old = vec![0u8; piece.len()];
                pread_zero_fill(cow.backing_file(), &mut old, rs)
                    .map_err(|e| CowError::io("read", &backing_path, e))?;
                let from = keep.len();
                keep_blocks(
                    piece.len(),
                    rs,
                    |x, y| !(is_zero(&piece[x..y]) && is_zero(&old[x..y])),
                    keep,
                );
                for k in &mut keep[from..] {
                    *k = (k.0 + i, k.1 + i);
                }
            }
            Ok(())
        },
        &mut w,
    )?;
    report.bytes_written = w.bytes;
    if sync {
        backing_rw
            .sync_all()
            .map_err(|e| CowError::io("fsync", &backing_path, e))?;
    }
    journal.remove()?;
    if sync {
        journal.sync_dir();
    }
    if !runs.is_empty() {
        report.warnings.push(format!(
            "{} and every other COW file over \"{}\" are now stale: the backing file changed (its mtime no longer matches their headers)",
            cow_path.display(),
            backing_path.display()
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges_overlaps() {
        assert_eq!(
            union(&[(0, 10), (20, 30)], &[(5, 12), (30, 31), (40, 50)]),
            vec![(0, 12), (20, 31), (40, 50)]
        );
    }

    #[test]
    fn read_spans_join_near_runs_only() {
        let g = GAP;
        assert_eq!(
            read_spans(&[(0, 512), (512 + g, 1024 + g), (2048 + 2 * g, 4096 + 2 * g)]),
            vec![(0, 1024 + g), (2048 + 2 * g, 4096 + 2 * g)]
        );
        // A long run is cut at BATCH bytes; its tail joins the next run.
        let b = BATCH as u64;
        assert_eq!(
            read_spans(&[(100, 100 + b + 10), (200 + b, 300 + b)]),
            vec![(100, 100 + b), (100 + b, 300 + b)]
        );
        assert_eq!(read_spans(&[]), vec![]);
    }

    #[test]
    fn is_zero_checks_every_byte() {
        let mut b = vec![0u8; 4099];
        assert!(is_zero(&b));
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[1] = 1;
        assert!(!is_zero(&b[1..]));
    }

    proptest::proptest! {
        /// Batches hand over exactly the given ranges, in order, at most
        /// BATCH bytes each, every window inside its 256 KiB window of the file.
        #[test]
        fn batches_cover_the_ranges_exactly(
            mut cuts in proptest::collection::vec(0u64..3 * BATCH as u64, 0..12),
        ) {
            cuts.sort_unstable();
            cuts.dedup();
            let ranges: Vec<(u64, u64)> = cuts.chunks_exact(2).map(|c| (c[0], c[1])).collect();
            let mut covered: Vec<(u64, u64)> = Vec::new();
            for group in batches(&ranges) {
                proptest::prop_assert!(!group.is_empty());
                proptest::prop_assert!(group.iter().map(|w| w.1).sum::<usize>() <= BATCH);
                for (at, n) in group {
                    let end = at + n as u64;
                    proptest::prop_assert!(n > 0);
                    proptest::prop_assert_eq!(at / WINDOW, (end - 1) / WINDOW);
                    match covered.last_mut() {
                        Some(last) if last.1 == at => last.1 = end,
                        _ => covered.push((at, end)),
                    }
                }
            }
            proptest::prop_assert_eq!(covered, ranges);
        }

        /// Read spans cover every dirty byte and no more than GAP-sized
        /// gaps, each at most BATCH bytes, sorted, disjoint, starting and
        /// ending on dirty bytes, and as few as the rules allow (a span ends
        /// only at a gap over GAP or where the next dirty byte is BATCH away).
        #[test]
        fn read_spans_cover_the_ranges(
            mut cuts in proptest::collection::vec(0u64..4 * BATCH as u64, 0..40),
        ) {
            cuts.sort_unstable();
            cuts.dedup();
            let ranges: Vec<(u64, u64)> = cuts.chunks_exact(2).map(|c| (c[0], c[1])).collect();
            let spans = read_spans(&ranges);
            for w in spans.windows(2) {
                proptest::prop_assert!(w[0].1 <= w[1].0);
                proptest::prop_assert!(
                    w[1].0 - w[0].1 > GAP || w[1].0 >= w[0].0 + BATCH as u64,
                    "{:?} could have been one span", w
                );
            }
            for &(s, e) in &spans {
                proptest::prop_assert!(s < e && e - s <= BATCH as u64);
                // A span starts and ends on dirty bytes.
                proptest::prop_assert!(ranges.iter().any(|r| r.0 <= s && s < r.1));
                proptest::prop_assert!(ranges.iter().any(|r| r.0 < e && e <= r.1));
            }
            for &(s, e) in &ranges {
                // Each dirty byte range lies in the union of the spans.
                let mut pos = s;
                for &(a, b) in &spans {
                    if a <= pos && pos < b {
                        pos = b.min(e);
                    }
                }
                proptest::prop_assert_eq!(pos, e, "{:?} not covered by {:?}", (s, e), &spans);
            }
        }

        /// The vectorised check agrees with a byte loop for any length,
        /// alignment and position of a single non-zero byte.
        #[test]
        fn is_zero_agrees_with_a_byte_loop(
            len in 0usize..9000,
            start in 0usize..16,
            at in proptest::option::of(0usize..9000),
            byte in 1u8..,
        ) {
            let mut b = vec![0u8; len + 16];
            if let Some(p) = at.filter(|&p| p < len) {
                b[start + p] = byte;
            }
            let s = &b[start..start + len];
            proptest::prop_assert_eq!(is_zero(s), s.iter().all(|&x| x == 0));
        }
    }
}
