//! The COW header codec: v1, v2, v3 and the "broken" 64-bit v3 layout.
//!
//! Source: `torvalds/linux arch/um/drivers/cow_user.c` (`read_cow_header`,
//! `write_cow_header`, `cow_sizes`) and `malattia/uml-utilities moo/cow.c`; digest
//! in `shared/spec/cow-format.md` §2–§4. Decoding never panics on any input (a
//! proptest feeds it random bytes); the error texts are the kernel's own messages.

use serde::Serialize;

/// `COW_MAGIC` (the source comment calls it "MOOO"). v2/v3 writers store it
/// big-endian, so such files start with the ASCII bytes `OOOM`.
pub const COW_MAGIC: u32 = 0x4f4f_4f4d;
/// `sizeof(struct cow_header_v1)`: packed, host (little-endian) order.
pub const V1_LEN: usize = 280;
/// `sizeof(struct cow_header_v2)`: packed, big-endian.
pub const V2_LEN: usize = 4120;
/// `sizeof(struct cow_header_v3)`: packed, big-endian. The only layout written.
pub const V3_LEN: usize = 4128;
/// `sizeof(struct cow_header_v3_broken)`: unpacked, with padding after `mtime`.
pub const V3_BROKEN_LEN: usize = 4136;
/// How many bytes `read_cow_header` reads: `sizeof(union cow_header)`.
pub const READ_LEN: usize = V3_BROKEN_LEN;
/// Backing-file field length of v1.
pub const PATH_LEN_V1: usize = 256;
/// Backing-file field length of v2 and v3.
pub const PATH_LEN_V3: usize = 4096;
/// The sector size the kernel and uml_mkcow write (`SECTOR_SIZE`).
pub const SECTOR_SIZE: u32 = 512;
/// The alignment the kernel (`PAGE_SIZE`) and uml_mkcow (`sysconf(_SC_PAGESIZE)`) write on x86.
pub const ALIGNMENT: u32 = 4096;

/// The kernel's message for a broken-v3 header, printed on every read of one.
pub const BROKEN_V3_MESSAGE: &str =
    "read_cow_header - broken V3 file with 64-bit layout - recovering content.";

/// Which header layout a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Version {
    /// v1: 280 bytes, host order, 256-byte path.
    V1,
    /// v2: 4120 bytes, big-endian, 4096-byte path.
    V2,
    /// v3: 4128 bytes, big-endian, alignment field; what everything writes today.
    V3,
    /// v3 as unpacked 64-bit builds wrote it before Dec 2005 (4136 bytes).
    V3Broken,
}

impl Version {
    /// The number stored in the version field.
    pub fn number(self) -> u32 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
            Version::V3 | Version::V3Broken => 3,
        }
    }

    /// The header struct's size, which is also where v1/v2 bitmaps start.
    pub fn header_len(self) -> usize {
        match self {
            Version::V1 => V1_LEN,
            Version::V2 => V2_LEN,
            Version::V3 => V3_LEN,
            Version::V3Broken => V3_BROKEN_LEN,
        }
    }

    /// Byte offset and width of the mtime field (for `check --fix-mtime`).
    pub fn mtime_offset(self) -> usize {
        match self {
            Version::V1 => 264,
            Version::V2 => 4104,
            Version::V3 | Version::V3Broken => 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Version::V1 => "V1",
            Version::V2 => "V2",
            Version::V3 | Version::V3Broken => "V3",
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Version::V3Broken => f.write_str("3 (broken 64-bit layout)"),
            v => write!(f, "{}", v.number()),
        }
    }
}

/// Why a header could not be decoded. The `Display` text is the kernel's
/// `read_cow_header` message where it prints one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than 8 bytes: not even magic and version.
    #[error("read_cow_header - short header")]
    Short { len: usize },
    /// The magic is neither byte order of `COW_MAGIC`. The kernel prints nothing
    /// here: this is how a plain image is told apart from a COW file.
    #[error("not a COW file: bad magic {found:#010x} at offset 0 (expected bytes 4f 4f 4f 4d)")]
    BadMagic { found: u32 },
    /// A version other than 1, 2 and 3.
    #[error("read_cow_header - invalid COW version")]
    InvalidVersion { version: u32 },
    /// The file ends inside the header of that version.
    #[error("read_cow_header - failed to read {} header", version.name())]
    Truncated { version: Version, len: usize },
    /// v3 with alignment 0 (the kernel prints this and then divides by zero).
    #[error("read_cow_header - invalid COW header, align == 0")]
    AlignZero,
    /// Sector size 0 (the kernel divides by zero in `cow_sizes`).
    #[error("invalid COW header: sectorsize is 0")]
    SectorSizeZero,
    /// Offsets that do not fit the kernel's `int`/`unsigned long` arithmetic.
    #[error("invalid COW header: size {size} with sectorsize {sectorsize} and alignment {alignment} overflows the bitmap/data offsets")]
    Overflow {
        size: u64,
        sectorsize: u32,
        alignment: u32,
    },
}

impl HeaderError {
    /// What the kernel prints for this failure, in order (none for a bad magic).
    pub fn kernel_messages(&self) -> Vec<String> {
        match self {
            HeaderError::BadMagic { .. } => vec![],
            HeaderError::Truncated {
                version: Version::V3Broken,
                ..
            } => vec![BROKEN_V3_MESSAGE.to_string(), self.to_string()],
            e => vec![e.to_string()],
        }
    }
}

/// A decoded header, whatever its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    pub version: Version,
    /// True when the magic is stored big-endian (`4f 4f 4f 4d`), as v2/v3 writers do.
    pub magic_big_endian: bool,
    /// The backing file path, up to (not including) the first NUL of its field.
    #[serde(serialize_with = "ser_lossy")]
    pub backing_file: Vec<u8>,
    /// Backing file mtime in seconds, 32 bits.
    pub mtime: u32,
    /// Backing file size in bytes.
    pub size: u64,
    pub sectorsize: u32,
    /// v3: the alignment field; v1/v2: equal to `sectorsize` (as the kernel sets it).
    pub alignment: u32,
    /// v3: `cow_format` (never checked by the kernel; 0 = bitmap); v1/v2: 0.
    pub cow_format: u32,
}

fn ser_lossy<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(v))
}

/// Where the bitmap and the data area are (`cow_sizes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub bitmap_offset: u64,
    pub bitmap_len: u64,
    pub data_offset: u64,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_be_bytes(w)
}
fn le32(b: &[u8], at: usize) -> u32 {
    be32(b, at).swap_bytes()
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_be_bytes(w)
}
fn le64(b: &[u8], at: usize) -> u64 {
    be64(b, at).swap_bytes()
}
fn cstr(b: &[u8], at: usize, len: usize) -> Vec<u8> {
    let field = b.get(at..(at + len).min(b.len())).unwrap_or(&[]);
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

fn round_up(x: u64, n: u64) -> Option<u64> {
    x.checked_add(n - 1).map(|v| v / n * n)
}

impl Header {
    /// A fresh v3 header as the kernel and uml_mkcow write it.
    pub fn new_v3(backing_file: Vec<u8>, mtime: u32, size: u64) -> Header {
        Header {
            version: Version::V3,
            magic_big_endian: true,
            backing_file,
            mtime,
            size,
            sectorsize: SECTOR_SIZE,
            alignment: ALIGNMENT,
            cow_format: 0,
        }
    }

    /// `read_cow_header`: decodes the first bytes of a file (pass up to [`READ_LEN`]).
    pub fn decode(buf: &[u8]) -> Result<Header, HeaderError> {
        if buf.len() < 8 {
            return Err(HeaderError::Short { len: buf.len() });
        }
        // The magic's byte order only decides how `version` is read.
        let (magic_big_endian, version) = if le32(buf, 0) == COW_MAGIC {
            (false, le32(buf, 4))
        } else if be32(buf, 0) == COW_MAGIC {
            (true, be32(buf, 4))
        } else {
            return Err(HeaderError::BadMagic {
                found: be32(buf, 0),
            });
        };
        let n = buf.len();
        let truncated = |version| Err(HeaderError::Truncated { version, len: n });
        let header = match version {
            1 => {
                if n < V1_LEN {
                    return truncated(Version::V1);
                }
                let ss = le32(buf, 276);
                Header {
                    version: Version::V1,
                    magic_big_endian,
                    backing_file: cstr(buf, 8, PATH_LEN_V1),
                    mtime: le32(buf, 264),
                    size: le64(buf, 268),
                    sectorsize: ss,
                    alignment: ss,
                    cow_format: 0,
                }
            }
            2 => {
                if n < V2_LEN {
                    return truncated(Version::V2);
                }
                let ss = be32(buf, 4116);
                Header {
                    version: Version::V2,
                    magic_big_endian,
                    backing_file: cstr(buf, 8, PATH_LEN_V3),
                    mtime: be32(buf, 4104),
                    size: be64(buf, 4108),
                    sectorsize: ss,
                    alignment: ss,
                    cow_format: 0,
                }
            }
            // The kernel's rule: the packed layout's path starts at 32 and an
            // absolute path never starts with four zero bytes; in the unpacked
            // layout those four bytes are `cow_format` (0). Bytes past the end
            // of a short file count as zero here.
            3 if be32(buf, 32) != 0 => {
                if n < V3_LEN {
                    return truncated(Version::V3);
                }
                Header {
                    version: Version::V3,
                    magic_big_endian,
                    backing_file: cstr(buf, 32, PATH_LEN_V3),
                    mtime: be32(buf, 8),
                    size: be64(buf, 12),
                    sectorsize: be32(buf, 20),
                    alignment: be32(buf, 24),
                    cow_format: be32(buf, 28),
                }
            }
            3 => {
                if n < V3_BROKEN_LEN {
                    return truncated(Version::V3Broken);
                }
                Header {
                    version: Version::V3Broken,
                    magic_big_endian,
                    backing_file: cstr(buf, 36, PATH_LEN_V3),
                    // Only the first 32 bits of the declared s64 (see cow_user.c).
                    mtime: be32(buf, 8),
                    size: be64(buf, 16),
                    sectorsize: be32(buf, 24),
                    alignment: be32(buf, 28),
                    cow_format: be32(buf, 32),
                }
            }
            version => return Err(HeaderError::InvalidVersion { version }),
        };
        header.layout()?;
        Ok(header)
    }

    /// The messages the kernel prints while reading this (valid) header.
    pub fn kernel_messages(&self) -> Vec<String> {
        match self.version {
            Version::V3Broken => vec![BROKEN_V3_MESSAGE.to_string()],
            _ => vec![],
        }
    }

    /// `cow_sizes`, with checked arithmetic instead of the kernel's overflows.
    pub fn layout(&self) -> Result<Layout, HeaderError> {
        if self.sectorsize == 0 {
            return Err(HeaderError::SectorSizeZero);
        }
        if self.alignment == 0 {
            return Err(HeaderError::AlignZero);
        }
        let overflow = || HeaderError::Overflow {
            size: self.size,
            sectorsize: self.sectorsize,
            alignment: self.alignment,
        };
        let ss = u64::from(self.sectorsize);
        let (bitmap_offset, bitmap_len, data_offset) = match self.version {
            Version::V1 | Version::V2 => {
                let b = self.version.header_len() as u64;
                // The historical rounding bug: the byte count is rounded down.
                let len = self.size.checked_add(ss - 1).ok_or_else(overflow)? / (8 * ss);
                let d = round_up(b + len, ss).ok_or_else(overflow)?;
                (b, len, d)
            }
            Version::V3 | Version::V3Broken => {
                let a = u64::from(self.alignment);
                let b = round_up(self.version.header_len() as u64, a).ok_or_else(overflow)?;
                let sectors = self.size.div_ceil(ss);
                let len = sectors.div_ceil(8);
                let d =
                    round_up(b.checked_add(len).ok_or_else(overflow)?, a).ok_or_else(overflow)?;
                (b, len, d)
            }
        };
        // The kernel keeps data_offset in an `int`.
        if data_offset > i32::MAX as u64 {
            return Err(overflow());
        }
        Ok(Layout {
            bitmap_offset,
            bitmap_len,
            data_offset,
        })
    }

    /// Encodes this header in its own version's layout (v3 exactly as the kernel
    /// and uml_mkcow write it; v1/v2/broken-v3 as the old writers did). The path is
    /// cut to its field and the rest of the field is zeros.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.version.header_len()];
        let magic = if self.magic_big_endian {
            COW_MAGIC.to_be_bytes()
        } else {
            COW_MAGIC.to_le_bytes()
        };
        b[0..4].copy_from_slice(&magic);
        let version = self.version.number();
        let vbytes = if self.magic_big_endian {
            version.to_be_bytes()
        } else {
            version.to_le_bytes()
        };
        b[4..8].copy_from_slice(&vbytes);
        let put = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        let path = |limit: usize| &self.backing_file[..self.backing_file.len().min(limit - 1)];
        match self.version {
            Version::V1 => {
                put(&mut b, 8, path(PATH_LEN_V1));
                put(&mut b, 264, &self.mtime.to_le_bytes());
                put(&mut b, 268, &self.size.to_le_bytes());
                put(&mut b, 276, &self.sectorsize.to_le_bytes());
            }
            Version::V2 => {
                put(&mut b, 8, path(PATH_LEN_V3));
                put(&mut b, 4104, &self.mtime.to_be_bytes());
                put(&mut b, 4108, &self.size.to_be_bytes());
                put(&mut b, 4116, &self.sectorsize.to_be_bytes());
            }
            Version::V3 => {
                put(&mut b, 8, &self.mtime.to_be_bytes());
                put(&mut b, 12, &self.size.to_be_bytes());
                put(&mut b, 20, &self.sectorsize.to_be_bytes());
                put(&mut b, 24, &self.alignment.to_be_bytes());
                // cow_format is stored without byte swap (it is 0 anyway).
                put(&mut b, 28, &self.cow_format.to_ne_bytes());
                put(&mut b, 32, path(PATH_LEN_V3));
            }
            Version::V3Broken => {
                put(&mut b, 8, &self.mtime.to_be_bytes());
                put(&mut b, 16, &self.size.to_be_bytes());
                put(&mut b, 24, &self.sectorsize.to_be_bytes());
                put(&mut b, 28, &self.alignment.to_be_bytes());
                put(&mut b, 32, &self.cow_format.to_ne_bytes());
                put(&mut b, 36, path(PATH_LEN_V3));
            }
        }
        b
    }

    /// The mtime field as stored on disk (for rewriting just those 4 bytes).
    pub fn encode_mtime(&self, mtime: u32) -> [u8; 4] {
        match self.version {
            Version::V1 => mtime.to_le_bytes(),
            _ => mtime.to_be_bytes(),
        }
    }

    /// The backing path as an OS path.
    pub fn backing_path(&self) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&self.backing_file))
    }
}

/// Bit `s % 8` (LSB first) of byte `s / 8` marks sector `s` as held by the COW file.
pub fn test_bit(bitmap: &[u8], sector: u64) -> bool {
    usize::try_from(sector / 8)
        .ok()
        .and_then(|i| bitmap.get(i))
        .is_some_and(|byte| byte & (1 << (sector % 8)) != 0)
}

/// Sets sector `s`'s bit; returns false if the bitmap does not cover it.
pub fn set_bit(bitmap: &mut [u8], sector: u64) -> bool {
    match usize::try_from(sector / 8)
        .ok()
        .and_then(|i| bitmap.get_mut(i))
    {
        Some(byte) => {
            *byte |= 1 << (sector % 8);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v3(size: u64) -> Header {
        Header::new_v3(b"/srv/cowdemo/base.img".to_vec(), 1704164645, size)
    }

    /// The digest's hexdump (§12), made with the real uml_mkcow.
    #[test]
    fn v3_encodes_like_uml_mkcow_hexdump() {
        let b = v3(1 << 20).encode();
        assert_eq!(b.len(), 0x1020);
        let want: &[u8] = &[
            0x4f, 0x4f, 0x4f, 0x4d, 0, 0, 0, 3, 0x65, 0x93, 0x7d, 0x25, 0, 0, 0, 0, 0, 0x10, 0, 0,
            0, 0, 2, 0, 0, 0, 0x10, 0, 0, 0, 0, 0,
        ];
        assert_eq!(&b[..32], want);
        assert_eq!(&b[32..54], b"/srv/cowdemo/base.img\0");
        assert!(b[54..].iter().all(|&c| c == 0));
        assert_eq!(Header::decode(&b), Ok(v3(1 << 20)));
    }

    /// The digest's worked examples (§4), each verified with the real tools.
    #[test]
    fn cow_sizes_matches_worked_examples() {
        for (size, len, data) in [
            (0u64, 0u64, 8192u64),
            (1000, 1, 12288),
            (32768, 8, 12288),
            (65536, 16, 12288),
            (1048576, 256, 12288),
            (67108865, 16385, 28672),
        ] {
            let l = v3(size).layout().expect("layout");
            assert_eq!(
                (l.bitmap_offset, l.bitmap_len, l.data_offset),
                (8192, len, data)
            );
        }
        let mut h = v3(1 << 20);
        h.version = Version::V1;
        h.alignment = 512;
        let l = h.layout().expect("v1");
        assert_eq!(
            (l.bitmap_offset, l.bitmap_len, l.data_offset),
            (280, 256, 1024)
        );
        h.version = Version::V2;
        let l = h.layout().expect("v2");
        assert_eq!(
            (l.bitmap_offset, l.bitmap_len, l.data_offset),
            (4120, 256, 4608)
        );
        // The v1/v2 rounding bug: 1000 bytes = 2 sectors, but 0 bitmap bytes.
        h.size = 1000;
        assert_eq!(h.layout().expect("v2").bitmap_len, 0);
    }

    #[test]
    fn bit_order_is_lsb_first() {
        // Bitmap bytes 09 02 mark sectors 0, 3 and 9 (verified with uml_moo).
        let bm = [0x09, 0x02];
        let set: Vec<u64> = (0..16).filter(|&s| test_bit(&bm, s)).collect();
        assert_eq!(set, vec![0, 3, 9]);
        let mut m = [0u8; 2];
        for s in [0, 3, 9] {
            assert!(set_bit(&mut m, s));
        }
        assert_eq!(m, bm);
        assert!(!set_bit(&mut m, 16));
        assert!(!test_bit(&m, 16));
    }

    #[test]
    fn broken_v3_detected_by_zero_word_at_32() {
        let mut h = v3(1 << 20);
        h.version = Version::V3Broken;
        let b = h.encode();
        assert_eq!(b.len(), V3_BROKEN_LEN);
        assert_eq!(&b[32..36], &[0, 0, 0, 0]);
        let d = Header::decode(&b).expect("decode");
        assert_eq!(d, h);
        assert_eq!(d.kernel_messages(), vec![BROKEN_V3_MESSAGE.to_string()]);
        assert_eq!(d.layout().expect("layout").bitmap_offset, 8192);
        // Truncated broken v3: both messages, in the kernel's order.
        let e = Header::decode(&b[..4130]).expect_err("short");
        assert_eq!(
            e.kernel_messages(),
            vec![
                BROKEN_V3_MESSAGE.to_string(),
                "read_cow_header - failed to read V3 header".to_string()
            ]
        );
    }

    #[test]
    fn errors_carry_kernel_messages() {
        assert_eq!(
            Header::decode(b"OOOM").expect_err("short").to_string(),
            "read_cow_header - short header"
        );
        assert!(matches!(
            Header::decode(&[0u8; 5000]),
            Err(HeaderError::BadMagic { found: 0 })
        ));
        let mut b = v3(100).encode();
        b[7] = 9;
        assert_eq!(
            Header::decode(&b).expect_err("version").to_string(),
            "read_cow_header - invalid COW version"
        );
        let b = v3(100).encode();
        assert_eq!(
            Header::decode(&b[..4000]).expect_err("trunc").to_string(),
            "read_cow_header - failed to read V3 header"
        );
        let mut h = v3(100);
        h.alignment = 0;
        assert_eq!(
            Header::decode(&h.encode()).expect_err("align").to_string(),
            "read_cow_header - invalid COW header, align == 0"
        );
    }

    #[test]
    fn little_endian_magic_reads_version_little_endian() {
        let mut h = v3(4096);
        h.magic_big_endian = false;
        let b = h.encode();
        assert_eq!(&b[..8], &[0x4d, 0x4f, 0x4f, 0x4f, 3, 0, 0, 0]);
        assert_eq!(Header::decode(&b), Ok(h));
    }

    fn any_header() -> impl Strategy<Value = Header> {
        (
            prop_oneof![
                Just(Version::V1),
                Just(Version::V2),
                Just(Version::V3),
                Just(Version::V3Broken)
            ],
            any::<bool>(),
            proptest::collection::vec(1u8..=255, 1..300),
            any::<u32>(),
            0u64..(1 << 40),
            prop_oneof![Just(512u32), Just(1024), Just(4096)],
            prop_oneof![Just(512u32), Just(4096), Just(65536)],
        )
            .prop_map(|(version, mbe, mut path, mtime, size, ss, align)| {
                path[0] = b'/';
                let limit = if version == Version::V1 { 255 } else { 4095 };
                path.truncate(limit);
                Header {
                    version,
                    magic_big_endian: mbe,
                    backing_file: path,
                    mtime,
                    size,
                    sectorsize: ss,
                    alignment: if matches!(version, Version::V1 | Version::V2) {
                        ss
                    } else {
                        align
                    },
                    cow_format: 0,
                }
            })
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = Header::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_cow_magic(mut bytes in proptest::collection::vec(any::<u8>(), 8..5000), v in 0u32..5) {
            bytes[..4].copy_from_slice(b"OOOM");
            bytes[4..8].copy_from_slice(&v.to_be_bytes());
            if let Ok(h) = Header::decode(&bytes) {
                prop_assert!(h.layout().is_ok());
            }
        }

        #[test]
        fn encode_decode_roundtrip(h in any_header()) {
            let b = h.encode();
            prop_assert_eq!(b.len(), h.version.header_len());
            prop_assert_eq!(Header::decode(&b), Ok(h));
        }
    }
}
