//! A machine's ubd disks as the emulated programs see them: byte I/O through
//! the block layer, the guest's soft block size, and seeded write faults.

use std::io;

use crate::block::{BlockDevice, Ubd};

/// Fault injection on a disk: the `n`-th write (1-based, counted in guest
/// blocks) fails with EIO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskFaults {
    pub fail_write: Option<u64>,
}

/// A configured and opened ubd device.
pub struct Disk {
    pub unit: u32,
    pub size: u64,
    pub read_only: bool,
    /// `/sys/block/ubdX/serial`: `(null)` when none was given.
    pub serial: Option<String>,
    pub io: Ubd,
    pub faults: DiskFaults,
    /// Guest block writes done so far (for [`DiskFaults::fail_write`]).
    pub writes: u64,
    /// Whether this is the root device (mounted on `/`).
    pub root: bool,
    /// The first bytes of the device, read at boot for `blkid`/`lsblk`.
    pub fs: Option<FsInfo>,
    /// The real kernel hangs on the first write to this COW device (a bitmap
    /// of 8 bytes or less, cow-format.md §6): a writer stalls forever.
    pub hangs_on_write: bool,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("unit", &self.unit)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// What `blkid` finds on a device (ext2/3/4 superblock fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub kind: &'static str,
    pub uuid: String,
    pub block_size: u32,
    pub label: Option<String>,
}

impl Disk {
    /// `/dev/ubd` + letter.
    pub fn dev_name(&self) -> String {
        dev_name(self.unit)
    }

    /// The block size the guest kernel writes with: the largest power of two up
    /// to 4096 dividing the device size (cow-format.md, appendix).
    pub fn guest_block(&self) -> u64 {
        guest_block(self.size)
    }

    /// A guest write of `data` at `offset`, as the guest's page cache does it:
    /// whole guest blocks (read-modify-write at the edges), each one a counted
    /// write that may hit the injected fault. Blocks before a failure stay written.
    pub fn guest_write(&mut self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let bs = self.guest_block();
        // Callers trim to the device; anything past its end is ignored here.
        let end = (offset + data.len() as u64).min(self.size);
        if offset >= end {
            return Ok(());
        }
        let mut block = offset - offset % bs;
        let mut buf = vec![0u8; bs as usize];
        while block < end {
            let block_end = (block + bs).min(self.size);
            let len = (block_end - block) as usize;
            let buf = &mut buf[..len];
            let (from, to) = (offset.max(block), end.min(block_end));
            if from > block || to < block_end {
                self.io.read_at(buf, block).map_err(io::Error::other)?;
            }
            let src = (from - offset) as usize..(to - offset) as usize;
            buf[(from - block) as usize..(to - block) as usize].copy_from_slice(&data[src]);
            self.writes += 1;
            if self.faults.fail_write == Some(self.writes) {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.io.write_at(buf, block).map_err(io::Error::other)?;
            block += bs;
        }
        Ok(())
    }
}

impl Disk {
    /// Reads up to `buf.len()` bytes at `offset`, short at the end of the device.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        if n > 0 {
            self.io
                .read_at(&mut buf[..n], offset)
                .map_err(io::Error::other)?;
        }
        Ok(n)
    }
}

/// `ubd` + letter for a unit (0 → `ubda`).
pub fn dev_name(unit: u32) -> String {
    let letter = char::from(b'a' + (unit.min(25) as u8));
    format!("ubd{letter}")
}

/// The largest power of two up to 4096 that divides `size` (512 at least).
pub fn guest_block(size: u64) -> u64 {
    let mut bs = 4096;
    while bs > 512 && size % bs != 0 {
        bs /= 2;
    }
    bs
}

/// Reads an ext2/3/4 superblock from the first 2 KiB of a device.
pub fn probe_fs(head: &[u8]) -> Option<FsInfo> {
    let sb = head.get(1024..2048)?;
    let le16 = |at: usize| u16::from_le_bytes([sb[at], sb[at + 1]]);
    let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    if le16(0x38) != 0xef53 {
        return None;
    }
    let compat = le32(0x5c);
    let incompat = le32(0x60);
    let ro_compat = le32(0x64);
    // ext4 if it uses any ext4-only feature (extents, 64bit, flex_bg, huge_file...).
    let kind = if incompat & (0x40 | 0x80 | 0x200) != 0 || ro_compat & (0x8 | 0x20 | 0x40) != 0 {
        "ext4"
    } else if compat & 0x4 != 0 {
        "ext3"
    } else {
        "ext2"
    };
    let u = &sb[0x68..0x78];
    let uuid = format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]
    );
    let label_raw = &sb[0x78..0x88];
    let label_len = label_raw.iter().position(|&b| b == 0).unwrap_or(16);
    let label =
        (label_len > 0).then(|| String::from_utf8_lossy(&label_raw[..label_len]).into_owned());
    let block_size = 1024u32.checked_shl(le32(0x18)).unwrap_or(1024);
    Some(FsInfo {
        kind,
        uuid,
        block_size,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_block_follows_the_device_size() {
        assert_eq!(guest_block(64 << 20), 4096);
        assert_eq!(guest_block((64 << 20) + 1), 512);
        assert_eq!(guest_block(300 * (1 << 20) + 512), 512);
        assert_eq!(guest_block(2048 * 3), 2048);
    }

    #[test]
    fn dev_names() {
        assert_eq!(dev_name(0), "ubda");
        assert_eq!(dev_name(15), "ubdp");
    }

    proptest::proptest! {
        #[test]
        fn probe_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2100)) {
            let _ = probe_fs(&bytes);
        }
    }
}
