//! [`CowFile`]: byte-granular random read/write over a COW file and its backing
//! file, with the UML 6.1 ubd driver's semantics (`cow-format.md` §6):
//!
//! - the unit is the 512-byte sector, whatever the header's `sectorsize` says;
//! - the device size is the backing file's size rounded up to 512;
//! - a sector whose bit is set is read from the COW at `data_offset + s*512`,
//!   otherwise from the backing at `s*512`; reads past either file's end are
//!   zero-filled;
//! - writes always go to the COW file (partial sectors are completed from the
//!   current view first), and the bitmap bytes are written after the data.
//!
//! Difference from the kernel: the kernel writes the bitmap as two 64-bit words
//! around the first sector of each request (and hangs on COW files whose bitmap
//! is 8 bytes or less); this writes exactly the bitmap bytes that changed, which
//! leaves the same bytes on disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::header::{set_bit, test_bit, Header, Layout, READ_LEN};
use super::open::{open_backing, open_cow, refuse_self_backing, Access, Confine};
use super::CowError;

/// The kernel's sector unit.
pub const SECTOR: u64 = 512;

/// Rounds up to a multiple of 512 (`ROUND_BLOCK`).
pub fn round_sector(n: u64) -> u64 {
    n.div_ceil(SECTOR) * SECTOR
}

/// Reads the header (and its kernel messages) from an open file.
pub fn read_header(file: &File, path: &Path) -> Result<Header, CowError> {
    let mut buf = vec![0u8; READ_LEN];
    let n = pread_full(file, &mut buf, 0).map_err(|e| CowError::io("read", path, e))?;
    buf.truncate(n);
    Header::decode(&buf).map_err(|source| CowError::Header {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the whole bitmap, checking the file's length first (a corrupt size
/// field must not make us allocate gigabytes).
pub fn read_bitmap(file: &File, path: &Path, layout: &Layout) -> Result<Vec<u8>, CowError> {
    let file_len = file
        .metadata()
        .map_err(|e| CowError::io("stat", path, e))?
        .len();
    let truncated = |have: u64| CowError::TruncatedBitmap {
        path: path.to_path_buf(),
        offset: layout.bitmap_offset,
        need: layout.bitmap_len,
        have,
    };
    let available = file_len.saturating_sub(layout.bitmap_offset);
    if available < layout.bitmap_len {
        return Err(truncated(available));
    }
    let len = usize::try_from(layout.bitmap_len).map_err(|_| truncated(available))?;
    let mut bitmap = vec![0u8; len];
    let have = pread_full(file, &mut bitmap, layout.bitmap_offset)
        .map_err(|e| CowError::io("read bitmap of", path, e))?;
    if have < len {
        return Err(truncated(have as u64));
    }
    Ok(bitmap)
}

/// `pread` until `buf` is full or EOF; returns the bytes read.
pub fn pread_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `pread` the whole buffer, zero-filling whatever lies past EOF (as `do_io` does).
pub fn pread_zero_fill(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let n = pread_full(file, buf, offset)?;
    buf[n..].fill(0);
    Ok(())
}

/// A COW file opened over its backing file.
#[derive(Debug)]
pub struct CowFile {
    cow: File,
    backing: File,
    cow_path: PathBuf,
    backing_path: PathBuf,
    header: Header,
    layout: Layout,
    bitmap: Vec<u8>,
    /// Backing size rounded up to 512: what the guest sees.
    size: u64,
    writable: bool,
}

impl CowFile {
    /// Assembles a COW device from already opened and checked files: reads the
    /// header and the whole bitmap. `backing_len` is the backing file's size
    /// (the device size is derived from it, as the kernel does, not from the header).
    pub fn from_files(
        cow: File,
        cow_path: &Path,
        backing: File,
        backing_path: &Path,
        backing_len: u64,
        writable: bool,
    ) -> Result<CowFile, CowError> {
        let header = read_header(&cow, cow_path)?;
        let layout = header.layout().map_err(|source| CowError::Header {
            path: cow_path.to_path_buf(),
            source,
        })?;
        let bitmap = read_bitmap(&cow, cow_path, &layout)?;
        Ok(CowFile {
            cow,
            backing,
            cow_path: cow_path.to_path_buf(),
            backing_path: backing_path.to_path_buf(),
            header,
            layout,
            bitmap,
            size: round_sector(backing_len),
            writable,
        })
    }

    /// Opens `cow_path` over its backing file (`backing` overrides the header's
    /// path, like `uml_moo -b`), checking size then mtime like the kernel.
    /// The backing file is always opened read-only.
    pub fn open(
        cow_path: &Path,
        backing: Option<&Path>,
        writable: bool,
    ) -> Result<CowFile, CowError> {
        CowFile::open_in(cow_path, backing, writable, None)
    }

    /// [`CowFile::open`], with every file (the header's backing file too)
    /// opened through `confine` when given. A backing file that is the COW
    /// file itself is refused.
    pub fn open_in(
        cow_path: &Path,
        backing: Option<&Path>,
        writable: bool,
        confine: Option<&Confine>,
    ) -> Result<CowFile, CowError> {
        let access = if writable {
            Access::ReadWrite
        } else {
            Access::Read
        };
        let cow = open_cow(cow_path, access, confine)?;
        let header = read_header(&cow, cow_path)?;
        let backing_path = backing
            .map(Path::to_path_buf)
            .unwrap_or_else(|| header.backing_path());
        let b = open_backing(cow_path, &backing_path, Access::Read, confine)?;
        refuse_self_backing(cow_path, &cow, &b)?;
        super::check_size_mtime(cow_path, &header, &backing_path, b.size, b.mtime)?;
        CowFile::from_files(cow, cow_path, b.file, &backing_path, b.size, writable)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn layout(&self) -> Layout {
        self.layout
    }
    pub fn bitmap(&self) -> &[u8] {
        &self.bitmap
    }
    pub fn cow_path(&self) -> &Path {
        &self.cow_path
    }
    pub fn backing_path(&self) -> &Path {
        &self.backing_path
    }
    pub fn cow_file(&self) -> &File {
        &self.cow
    }
    pub fn backing_file(&self) -> &File {
        &self.backing
    }
    /// The device size in bytes (backing size rounded up to 512).
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn is_writable(&self) -> bool {
        self.writable
    }
    /// Number of 512-byte sectors of the device.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR
    }
    /// True if sector `s` is held by the COW file.
    pub fn is_dirty(&self, sector: u64) -> bool {
        test_bit(&self.bitmap, sector)
    }

    /// Coalesced runs `(first sector, count)` of dirty sectors of the device.
    pub fn dirty_runs(&self) -> Vec<(u64, u64)> {
        dirty_runs(&self.bitmap, self.sectors())
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), CowError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(CowError::OutOfRange {
                path: self.cow_path.clone(),
                offset,
                len: len as u64,
                size: self.size,
            }),
        }
    }

    /// Reads `buf.len()` bytes of the device at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), CowError> {
        self.check_range(offset, buf.len())?;
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let sector = at / SECTOR;
            let dirty = self.is_dirty(sector);
            // Extend the run while the following sectors have the same bit.
            let mut end_sector = sector + 1;
            let last_sector = (offset + buf.len() as u64 - 1) / SECTOR;
            while end_sector <= last_sector && self.is_dirty(end_sector) == dirty {
                end_sector += 1;
            }
            let run_end = (end_sector * SECTOR).min(offset + buf.len() as u64);
            let n = (run_end - at) as usize;
            let chunk = &mut buf[pos..pos + n];
            if dirty {
                pread_zero_fill(&self.cow, chunk, self.layout.data_offset + at)
                    .map_err(|e| CowError::io("read", &self.cow_path, e))?;
            } else {
                pread_zero_fill(&self.backing, chunk, at)
                    .map_err(|e| CowError::io("read", &self.backing_path, e))?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset` of the device: the data goes to the COW file,
    /// then the bitmap bytes that changed.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), CowError> {
        if !self.writable {
            return Err(CowError::ReadOnly {
                path: self.cow_path.clone(),
            });
        }
        self.check_range(offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let first = offset / SECTOR;
        let end = (offset + data.len() as u64).div_ceil(SECTOR);
        // The v1/v2 rounding bug can leave the last sectors without a bit.
        if end > self.bitmap.len() as u64 * 8 {
            return Err(CowError::NotCovered {
                path: self.cow_path.clone(),
                sector: (self.bitmap.len() as u64 * 8).max(first),
                bitmap_len: self.layout.bitmap_len,
            });
        }
        let start_byte = first * SECTOR;
        let mut buf = vec![0u8; ((end - first) * SECTOR) as usize];
        let head = (offset - start_byte) as usize;
        let tail = head + data.len();
        // Complete partial first/last sectors from the current view.
        if head != 0 {
            self.read_at(&mut buf[..SECTOR as usize], start_byte)?;
        }
        if tail % SECTOR as usize != 0 {
            let at = buf.len() - SECTOR as usize;
            self.read_at(&mut buf[at..], start_byte + at as u64)?;
        }
        buf[head..tail].copy_from_slice(data);
        self.cow
            .write_all_at(&buf, self.layout.data_offset + start_byte)
            .map_err(|e| CowError::io("write", &self.cow_path, e))?;
        for s in first..end {
            set_bit(&mut self.bitmap, s);
        }
        let b0 = (first / 8) as usize;
        let b1 = ((end - 1) / 8) as usize + 1;
        self.cow
            .write_all_at(&self.bitmap[b0..b1], self.layout.bitmap_offset + b0 as u64)
            .map_err(|e| CowError::io("write bitmap of", &self.cow_path, e))?;
        Ok(())
    }

    /// `fsync` of the COW file (the kernel fsyncs `fds[0]`, which for a COW device
    /// is the read-only backing file: a no-op for the data written).
    pub fn flush(&self) -> Result<(), CowError> {
        self.cow
            .sync_all()
            .map_err(|e| CowError::io("fsync", &self.cow_path, e))
    }
}

/// Coalesced runs `(first sector, count)` of set bits among the first `sectors` sectors.
pub fn dirty_runs(bitmap: &[u8], sectors: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, &byte) in bitmap.iter().enumerate() {
        if byte == 0 {
            continue;
        }
        for bit in 0..8 {
            let s = i as u64 * 8 + bit;
            if s >= sectors {
                return runs;
            }
            if byte & (1 << bit) != 0 {
                match runs.last_mut() {
                    Some((start, count)) if *start + *count == s => *count += 1,
                    _ => runs.push((s, 1)),
                }
            }
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_runs_coalesce_across_bytes() {
        assert_eq!(dirty_runs(&[0x09, 0x02], 16), vec![(0, 1), (3, 1), (9, 1)]);
        assert_eq!(dirty_runs(&[0xf0, 0x0f, 0x80], 24), vec![(4, 8), (23, 1)]);
        assert_eq!(dirty_runs(&[0xff], 5), vec![(0, 5)]);
        assert_eq!(dirty_runs(&[], 5), vec![]);
    }
}
