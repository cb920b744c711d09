//! The kernel's command-line buffer and the C library routines the UML option
//! parsers run on it (`simple_strtoul`, `memparse`, `strsep`, `strchr`).
//!
//! The parsers are modelled on one mutable byte buffer, as in the kernel: the
//! generic parser writes NULs at word ends and the option handlers keep offsets
//! into it, split fields in place and read C strings from it later. Quirks such as a
//! short MAC address "continuing into the next word" fall out of this naturally.
//! Every access is bounds-checked: reading past the end yields NUL bytes.

/// The kernel's `static_command_line`: a NUL-terminated, mutable byte buffer.
#[derive(Debug, Clone)]
pub(crate) struct Buf {
    bytes: Vec<u8>,
}

impl Buf {
    pub(crate) fn new(text: &[u8]) -> Self {
        let mut bytes = text.to_vec();
        // Room for the terminator plus a little zeroed slack that readers running
        // past the end see (the kernel reads whatever follows the allocation).
        bytes.extend_from_slice(&[0; 8]);
        Self { bytes }
    }

    /// The byte at `at` (NUL past the end).
    pub(crate) fn at(&self, at: usize) -> u8 {
        self.bytes.get(at).copied().unwrap_or(0)
    }

    pub(crate) fn set(&mut self, at: usize, byte: u8) {
        if let Some(b) = self.bytes.get_mut(at) {
            *b = byte;
        }
    }

    /// Length of the C string at `at`.
    pub(crate) fn strlen(&self, at: usize) -> usize {
        let mut n = 0;
        while self.at(at + n) != 0 {
            n += 1;
        }
        n
    }

    /// The C string at `at`, lossily decoded.
    pub(crate) fn cstr(&self, at: usize) -> String {
        let len = self.strlen(at);
        let end = (at + len).min(self.bytes.len());
        String::from_utf8_lossy(self.bytes.get(at.min(end)..end).unwrap_or(&[])).into_owned()
    }

    /// `strchr(at, c)` for a non-NUL `c`.
    pub(crate) fn strchr(&self, at: usize, c: u8) -> Option<usize> {
        let mut p = at;
        loop {
            match self.at(p) {
                0 => return None,
                b if b == c => return Some(p),
                _ => p += 1,
            }
        }
    }

    /// `strsep(&p, delims)`: returns the token start and advances `p` past the
    /// delimiter (writing a NUL there), or sets it to `None` at the end of the string.
    pub(crate) fn strsep(&mut self, p: &mut Option<usize>, delims: &[u8]) -> Option<usize> {
        let start = (*p)?;
        let mut q = start;
        loop {
            let b = self.at(q);
            if b == 0 {
                *p = None;
                return Some(start);
            }
            if delims.contains(&b) {
                self.set(q, 0);
                *p = Some(q + 1);
                return Some(start);
            }
            q += 1;
        }
    }

    /// `memmove(dst, src, n)` within the buffer.
    pub(crate) fn memmove(&mut self, dst: usize, src: usize, n: usize) {
        let chunk: Vec<u8> = (0..n).map(|i| self.at(src + i)).collect();
        for (i, b) in chunk.into_iter().enumerate() {
            self.set(dst + i, b);
        }
    }

    /// `simple_strtoul(buf + at, &end, base)`.
    pub(crate) fn strtoul(&self, at: usize, base: u32) -> (u64, usize) {
        strtoul_with(|i| self.at(i), at, base)
    }
}

/// `simple_strtoull` over any byte source: base 0 picks 16 for `0x` followed by a
/// hex digit, 8 for a leading `0`, else 10; base 16 skips a `0x` prefix; no sign, no
/// leading blanks; overflow wraps (the kernel flags it but keeps going).
pub(crate) fn strtoul_with(get: impl Fn(usize) -> u8, at: usize, base: u32) -> (u64, usize) {
    let mut p = at;
    let mut base = base;
    let is_x = |b: u8| b.eq_ignore_ascii_case(&b'x');
    if base == 0 {
        if get(p) == b'0' {
            if is_x(get(p + 1)) && get(p + 2).is_ascii_hexdigit() {
                base = 16;
            } else {
                base = 8;
            }
        } else {
            base = 10;
        }
    }
    if base == 16 && get(p) == b'0' && is_x(get(p + 1)) {
        p += 2;
    }
    let mut value: u64 = 0;
    loop {
        let digit = match get(p) {
            b @ b'0'..=b'9' => u32::from(b - b'0'),
            b @ (b'a'..=b'f' | b'A'..=b'F') => u32::from(b.to_ascii_lowercase() - b'a') + 10,
            _ => break,
        };
        if digit >= base {
            break;
        }
        value = value
            .wrapping_mul(u64::from(base))
            .wrapping_add(u64::from(digit));
        p += 1;
    }
    (value, p)
}

/// `strtoul` over a Rust string; returns the value and the number of bytes used.
pub(crate) fn strtoul_str(s: &str, base: u32) -> (u64, usize) {
    let b = s.as_bytes();
    strtoul_with(|i| b.get(i).copied().unwrap_or(0), 0, base)
}

/// `memparse`: a number (base 0) and an optional K/M/G/T/P/E suffix (any case).
/// Returns the value and the bytes used (the suffix counts).
pub(crate) fn memparse(s: &str) -> (u64, usize) {
    let (mut value, mut used) = strtoul_str(s, 0);
    let shift = match s.as_bytes().get(used).map(u8::to_ascii_uppercase) {
        Some(b'E') => 60,
        Some(b'P') => 50,
        Some(b'T') => 40,
        Some(b'G') => 30,
        Some(b'M') => 20,
        Some(b'K') => 10,
        _ => 0,
    };
    if shift > 0 {
        // Bits shifted out are lost, as in C.
        value = shl_lossy(value, shift);
        used += 1;
    }
    (value, used)
}

fn shl_lossy(v: u64, shift: u32) -> u64 {
    if shift >= 64 {
        0
    } else {
        v << shift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strtoul_bases() {
        assert_eq!(strtoul_str("010", 0), (8, 3));
        assert_eq!(strtoul_str("0x1f=", 0), (31, 4));
        assert_eq!(strtoul_str("0x=", 0), (0, 1));
        assert_eq!(strtoul_str("08", 0), (0, 1));
        assert_eq!(strtoul_str("fe:", 16), (0xfe, 2));
        assert_eq!(strtoul_str("0x12", 16), (0x12, 4));
        assert_eq!(strtoul_str("x", 10), (0, 0));
        assert_eq!(strtoul_str("-1", 10), (0, 0));
    }

    #[test]
    fn memparse_suffixes() {
        assert_eq!(memparse("64M"), (64 << 20, 3));
        assert_eq!(memparse("64m"), (64 << 20, 3));
        assert_eq!(memparse("0x4000000"), (0x4000000, 9));
        assert_eq!(memparse("64X"), (64, 2));
        assert_eq!(memparse("1E"), (1 << 60, 2));
        assert_eq!(memparse("2048E"), (0, 5));
        assert_eq!(memparse(""), (0, 0));
    }

    #[test]
    fn strsep_splits_in_place() {
        let mut b = Buf::new(b"a,b:c");
        let mut p = Some(0);
        assert_eq!(b.strsep(&mut p, b",:"), Some(0));
        assert_eq!(b.strsep(&mut p, b",:"), Some(2));
        assert_eq!(b.strsep(&mut p, b",:"), Some(4));
        assert_eq!(b.strsep(&mut p, b",:"), None);
        assert_eq!(b.cstr(0), "a");
        assert_eq!(b.cstr(4), "c");
    }
}
