//! A capped text buffer: a machine's console and a command's output.
//!
//! The first [`CONSOLE_CAP`] bytes are kept; after that only the number of
//! bytes dropped is counted, and [`Console::artifact`] ends with
//! [`truncation_line`]. A guest printing without end (tcpdump for a day,
//! `printf '%2147483647d'`) costs at most the cap in memory.

use std::fmt;
use std::ops::Deref;

use crate::scenario::backend::{truncation_line, CONSOLE_CAP};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Console {
    text: String,
    dropped: u64,
    cap: usize,
}

impl Console {
    pub fn new() -> Self {
        Self::with_cap(CONSOLE_CAP)
    }

    /// A buffer that keeps `cap` bytes (tests use small ones).
    pub fn with_cap(cap: usize) -> Self {
        Self {
            text: String::new(),
            dropped: 0,
            cap,
        }
    }

    /// Appends `s`, or as much of it as fits (cut at a character boundary).
    pub fn push_str(&mut self, s: &str) {
        if self.dropped > 0 {
            self.dropped = self.dropped.saturating_add(s.len() as u64);
            return;
        }
        let room = self.cap.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return;
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&s[..cut]);
        self.dropped = (s.len() - cut) as u64;
    }

    pub fn push(&mut self, c: char) {
        self.push_str(c.encode_utf8(&mut [0; 4]));
    }

    /// Appends `n` copies of the ASCII byte `b` without building them past the cap.
    pub fn push_fill(&mut self, b: u8, n: u64) {
        let c = if b.is_ascii() { b as char } else { '\u{fffd}' };
        let room = if self.dropped > 0 {
            0
        } else {
            self.cap.saturating_sub(self.text.len()) / c.len_utf8()
        };
        let keep = n.min(room as u64);
        self.text.extend(std::iter::repeat_n(c, keep as usize));
        self.dropped = self
            .dropped
            .saturating_add((n - keep).saturating_mul(c.len_utf8() as u64));
    }

    /// True once something was dropped: more output is only counted.
    pub fn is_full(&self) -> bool {
        self.dropped > 0
    }

    /// Counts `n` bytes as dropped without looking at them (the console is full).
    pub fn drop_bytes(&mut self, n: u64) {
        self.dropped = self.dropped.saturating_add(n);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text as an artifact: cut text ends with the truncation line.
    pub fn artifact(&self) -> String {
        let mut s = self.text.clone();
        if self.dropped > 0 {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(&truncation_line(self.dropped));
        }
        s
    }
}

impl From<String> for Console {
    fn from(s: String) -> Self {
        let mut c = Console::new();
        c.push_str(&s);
        c
    }
}

impl Deref for Console {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_cap_and_counts_the_rest() {
        let mut c = Console::with_cap(8);
        c.push_str("hello ");
        c.push_str("wörld!");
        assert_eq!(c.as_str(), "hello w");
        assert_eq!(c.dropped(), 6);
        c.push_fill(b' ', 1 << 40);
        assert_eq!(c.dropped(), 6 + (1 << 40));
        assert_eq!(
            c.artifact(),
            format!(
                "hello w\n[umltest: console truncated: {} more bytes]\n",
                6u64 + (1 << 40)
            )
        );
    }

    #[test]
    fn fill_stops_at_the_cap() {
        let mut c = Console::with_cap(4);
        c.push_fill(b'0', 10);
        assert_eq!(c.as_str(), "0000");
        assert_eq!(c.dropped(), 6);
    }
}
