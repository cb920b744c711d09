//! The guest's files: what redirections (`> /tmp/x`) and `dd of=FILE` write,
//! as Linux 6.1's tmpfs (`mm/shmem.c`) keeps them.
//!
//! - Sparse: data lives in 4 KiB pages; a page is used once written, holes
//!   cost nothing, so `dd seek=2147483647 bs=1M count=1` makes a 2 PiB file
//!   holding one MiB (as in a UML 6.1 guest).
//! - Sized as the guest's `/tmp` is (half of MemTotal: 26728 kB with
//!   `mem=64M`), never more than [`MAX_CAPACITY`]: a write past the size
//!   writes the part that fits, then fails with ENOSPC.
//! - A file ends at most at `i64::MAX` (`MAX_LFS_FILESIZE`): `ftruncate`
//!   beyond fails with EINVAL as a negative `off_t` does, a write whose end
//!   would pass it with EINVAL (`rw_verify_area`).
//!
//! Deliberate gap: the sim keeps one tmpfs for every path (the real guest
//! has a read-only root and tmpfs on `/tmp` and `/run`).

use std::collections::BTreeMap;

/// Page size of the guest.
pub const PAGE: u64 = 4096;
/// The largest tmpfs the sim keeps in memory, whatever `mem=` says (a guest
/// with `mem=4G` has a 2 GiB `/tmp`; the sim's fills up at this size).
pub const MAX_CAPACITY: u64 = 64 << 20;
/// `MAX_LFS_FILESIZE` on 64-bit.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Why a file operation failed (an errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsError {
    /// ENOSPC.
    NoSpace,
    /// EINVAL: an offset or length past `MAX_LFS_FILESIZE`.
    Invalid,
}

impl FsError {
    /// The `strerror` text.
    pub fn message(self) -> &'static str {
        match self {
            FsError::NoSpace => "No space left on device",
            FsError::Invalid => "Invalid argument",
        }
    }
}

#[derive(Debug, Clone, Default)]
struct File {
    len: u64,
    pages: BTreeMap<u64, Box<[u8]>>,
}

#[derive(Debug, Clone)]
pub struct Tmpfs {
    files: BTreeMap<String, File>,
    capacity: u64,
    used: u64,
}

impl Default for Tmpfs {
    fn default() -> Self {
        Self::new(MAX_CAPACITY)
    }
}

impl Tmpfs {
    /// A tmpfs of `capacity` bytes (capped at [`MAX_CAPACITY`]).
    pub fn new(capacity: u64) -> Self {
        Self {
            files: BTreeMap::new(),
            capacity: capacity.min(MAX_CAPACITY) / PAGE * PAGE,
            used: 0,
        }
    }

    pub fn contains(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    /// The file's size, if it exists.
    pub fn len(&self, path: &str) -> Option<u64> {
        self.files.get(path).map(|f| f.len)
    }

    /// Bytes of pages in use.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Creates the file if missing (`open(O_CREAT)`).
    pub fn create(&mut self, path: &str) {
        self.files.entry(path.to_string()).or_default();
    }

    /// `open(O_CREAT|O_TRUNC)`: the file exists and is empty.
    pub fn create_empty(&mut self, path: &str) {
        self.create(path);
        let _ = self.set_len(path, 0);
    }

    /// `ftruncate`: pages past the new end are freed, a longer file gets a hole.
    pub fn set_len(&mut self, path: &str, len: u64) -> Result<(), FsError> {
        if len > MAX_FILE_SIZE {
            return Err(FsError::Invalid);
        }
        let f = self.files.entry(path.to_string()).or_default();
        if len < f.len {
            let first_gone = len.div_ceil(PAGE);
            let gone = f.pages.split_off(&first_gone);
            self.used = self.used.saturating_sub(gone.len() as u64 * PAGE);
            // The page holding the new end keeps only bytes before it.
            let tail = (len % PAGE) as usize;
            if tail != 0 {
                if let Some(p) = f.pages.get_mut(&(len / PAGE)) {
                    p[tail..].fill(0);
                }
            }
        }
        f.len = len;
        Ok(())
    }

    /// Writes `data` at `at`; `Ok(n)` with `n < data.len()` when the tmpfs
    /// filled up part way, `Err(NoSpace)` when nothing fit.
    pub fn write(&mut self, path: &str, at: u64, data: &[u8]) -> Result<usize, FsError> {
        if data.is_empty() {
            self.create(path);
            return Ok(0);
        }
        at.checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::Invalid)?;
        let f = self.files.entry(path.to_string()).or_default();
        let mut done = 0usize;
        while done < data.len() {
            let pos = at + done as u64;
            let index = pos / PAGE;
            let off = (pos % PAGE) as usize;
            let n = (PAGE as usize - off).min(data.len() - done);
            let page = match f.pages.entry(index) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    if self.used + PAGE > self.capacity {
                        break;
                    }
                    self.used += PAGE;
                    e.insert(vec![0u8; PAGE as usize].into_boxed_slice())
                }
            };
            page[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        f.len = f.len.max(at + done as u64);
        if done == 0 {
            return Err(FsError::NoSpace);
        }
        Ok(done)
    }

    /// Appends at the end (`>>`, and each write after `>`).
    pub fn append(&mut self, path: &str, data: &[u8]) -> Result<usize, FsError> {
        let at = self.len(path).unwrap_or(0);
        self.write(path, at, data)
    }

    /// Reads into `buf` from `at`; returns the bytes read (0 at the end).
    pub fn read(&self, path: &str, at: u64, buf: &mut [u8]) -> usize {
        let Some(f) = self.files.get(path) else {
            return 0;
        };
        let n = f.len.saturating_sub(at).min(buf.len() as u64) as usize;
        let mut done = 0usize;
        while done < n {
            let pos = at + done as u64;
            let off = (pos % PAGE) as usize;
            let k = (PAGE as usize - off).min(n - done);
            match f.pages.get(&(pos / PAGE)) {
                Some(p) => buf[done..done + k].copy_from_slice(&p[off..off + k]),
                None => buf[done..done + k].fill(0),
            }
            done += k;
        }
        n
    }

    /// The whole file if it is at most `limit` bytes long (tests, small files).
    pub fn contents(&self, path: &str, limit: usize) -> Option<Vec<u8>> {
        let len = self.len(path)?;
        let n = usize::try_from(len).ok().filter(|&n| n <= limit)?;
        let mut v = vec![0u8; n];
        self.read(path, 0, &mut v);
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_cost_only_their_pages() {
        let mut fs = Tmpfs::new(26728 << 10);
        fs.set_len("/tmp/f", 2147483647 << 20).unwrap();
        assert_eq!(
            fs.write("/tmp/f", 2147483647 << 20, &[1u8; 1 << 20]),
            Ok(1 << 20)
        );
        assert_eq!(fs.len("/tmp/f"), Some(2251799813685248));
        assert_eq!(fs.used(), 1 << 20);
        let mut b = [9u8; 4];
        assert_eq!(fs.read("/tmp/f", 4096, &mut b), 4);
        assert_eq!(b, [0; 4]);
    }

    /// `dd if=/dev/zero of=/tmp/z bs=1M count=100` in a `mem=64M` UML 6.1
    /// guest stops with a 27369472-byte file (26728 kB).
    #[test]
    fn a_full_tmpfs_writes_what_fits_then_fails() {
        let mut fs = Tmpfs::new(26728 << 10);
        let mb = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            match fs.append("/tmp/z", &mb) {
                Ok(n) => total += n,
                Err(e) => {
                    assert_eq!(e, FsError::NoSpace);
                    break;
                }
            }
        }
        assert_eq!(total, 27369472);
        fs.set_len("/tmp/z", 0).unwrap();
        assert_eq!(fs.used(), 0);
    }

    #[test]
    fn offsets_past_the_largest_file_are_invalid() {
        let mut fs = Tmpfs::default();
        assert_eq!(fs.set_len("/a", u64::MAX), Err(FsError::Invalid));
        assert_eq!(
            fs.write("/a", MAX_FILE_SIZE - 1, b"xy"),
            Err(FsError::Invalid)
        );
    }
}
