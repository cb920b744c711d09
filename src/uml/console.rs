//! The console protocol (pure core): how a command is typed into the guest's shell
//! and how its output and exit code are read back from the console transcript.
//!
//! The harness init runs an interactive busybox `ash` with the console as its
//! controlling tty, echo off and empty prompts. Each command is sent as one line:
//!
//! ```text
//! printf '%s-%s\n' UMLTEST BEGIN-7; command eval "$(printf '\145\143...')" </dev/null; printf '\n%s-%s:%d\n' UMLTEST END-7 $?
//! ```
//!
//! - The end marker starts with a newline of its own, so output that does not end
//!   in one (`printf x`, arping's usage errors) cannot glue itself to the marker;
//!   the reader takes that one newline off again.
//! - The command travels octal-escaped, so quotes, `$`, `%`, newlines and control
//!   characters reach the shell untouched by the tty (no ^C/^D/^U inside the line) and
//!   a syntax error in it cannot swallow the end marker (eval reports it, `$?` = 2;
//!   `command eval`, because a plain `eval` syntax error makes ash exit, and the
//!   shell is init: the kernel would panic).
//! - The markers as printed (`UMLTEST-BEGIN-7`) never appear in the line as typed
//!   (`UMLTEST BEGIN-7`), so even with echo on, the echo cannot be taken for output.
//! - stdin is `/dev/null`: a command that reads stdin cannot eat the next line.
//! - At a timeout the driver writes ^C: the tty sends SIGINT to the foreground job;
//!   the init's `trap : INT` keeps the shell on the line, and the end marker
//!   reports 130.
//!
//! Console output uses `\r\n`; [`normalize_newlines`] turns it into `\n`.
//!
//! The transcript is a [`Transcript`]: its first 16 MiB as printed, then only
//! the protocol's marker lines and a `[umltest: console truncated: N more
//! bytes]` line for what was dropped, so a guest printing without end costs
//! bounded memory and still ends its exchange.

/// Longest command accepted: the encoded line must fit the tty's 4095-byte line
/// buffer (canonical mode), and each byte takes 4 characters once escaped.
pub const MAX_COMMAND_LEN: usize = 900;

/// Why a command cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("command is {len} bytes long; the console protocol takes at most {MAX_COMMAND_LEN}")]
    TooLong { len: usize },
    #[error("command contains a NUL byte at offset {0}")]
    Nul(usize),
}

/// The line (with its `\n`) that runs `command` as protocol exchange number `seq`.
pub fn encode_command(command: &str, seq: u64) -> Result<String, EncodeError> {
    if command.len() > MAX_COMMAND_LEN {
        return Err(EncodeError::TooLong { len: command.len() });
    }
    if let Some(at) = command.bytes().position(|b| b == 0) {
        return Err(EncodeError::Nul(at));
    }
    let escaped: String = command.bytes().map(|b| format!("\\{b:03o}")).collect();
    Ok(format!(
        "printf '%s-%s\\n' UMLTEST BEGIN-{seq}; command eval \"$(printf '{escaped}')\" </dev/null; \
         printf '\\n%s-%s:%d\\n' UMLTEST END-{seq} $?\n"
    ))
}

/// The begin marker line as the guest prints it.
pub fn begin_marker(seq: u64) -> String {
    format!("UMLTEST-BEGIN-{seq}")
}

/// The end marker prefix as the guest prints it (`:<exit code>` follows).
pub fn end_marker(seq: u64) -> String {
    format!("UMLTEST-END-{seq}:")
}

/// A finished exchange found in the transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The command's output, `\n` line endings.
    pub output: String,
    pub exit_code: i32,
    /// Byte offset in the transcript just after the end marker's line.
    pub end: usize,
}

/// Looks for exchange `seq` in `transcript[from..]`. `None` until the end marker's
/// line is complete. Output is what lies between the begin and end marker lines.
pub fn find_exchange(transcript: &[u8], from: usize, seq: u64) -> Option<Exchange> {
    let hay = transcript.get(from..)?;
    let begin = begin_marker(seq);
    let begin_at = find_line(hay, begin.as_bytes(), 0)?;
    let out_start = line_end(hay, begin_at)?;
    let end = end_marker(seq);
    let end_at = find_line(hay, end.as_bytes(), out_start)?;
    let end_line_end = line_end(hay, end_at)?;
    let code_text = String::from_utf8_lossy(hay.get(end_at + end.len()..end_line_end)?);
    let exit_code = code_text.trim().parse().ok()?;
    let raw = hay.get(out_start..end_at)?;
    // The newline the end marker brings (a `\r\n` from the tty) is not output.
    let raw = raw
        .strip_suffix(b"\r\n")
        .or_else(|| raw.strip_suffix(b"\n"))
        .unwrap_or(raw);
    Some(Exchange {
        output: normalize_newlines(&String::from_utf8_lossy(raw)),
        exit_code,
        end: from + end_line_end,
    })
}

/// Position of the first occurrence of `marker` at the start of a line, at or after `from`.
fn find_line(hay: &[u8], marker: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at <= hay.len() {
        let rel = find(hay.get(at..)?, marker)?;
        let pos = at + rel;
        let line_start = pos == 0 || matches!(hay.get(pos - 1), Some(b'\n') | Some(b'\r'));
        if line_start {
            return Some(pos);
        }
        at = pos + 1;
    }
    None
}

/// Offset just after the `\n` ending the line that contains `pos`.
fn line_end(hay: &[u8], pos: usize) -> Option<usize> {
    let rel = hay.get(pos..)?.iter().position(|&b| b == b'\n')?;
    Some(pos + rel + 1)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `\r\n` (and a stray `\r` before `\n` from the tty's ONLCR on already-`\r\n` text)
/// becomes `\n`.
pub fn normalize_newlines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' {
            // Drop every \r that precedes a \n (possibly several: \r\r\n).
            let mut crs = 1;
            while chars.peek() == Some(&'\r') {
                chars.next();
                crs += 1;
            }
            if chars.peek() != Some(&'\n') {
                out.extend(std::iter::repeat_n('\r', crs));
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The last `n` lines of a transcript (for error messages).
pub fn last_lines(transcript: &[u8], n: usize) -> String {
    let text = normalize_newlines(&String::from_utf8_lossy(transcript));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines.get(start..).unwrap_or_default().join("\n")
}

/// The kernel panic message in a transcript, if the kernel panicked
/// (`Kernel panic - not syncing: ...`), with the lines just before it.
pub fn panic_text(transcript: &[u8]) -> Option<String> {
    let text = normalize_newlines(&String::from_utf8_lossy(transcript));
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("Kernel panic - not syncing"))?;
    let start = at.saturating_sub(3);
    Some(lines.get(start..=at).unwrap_or_default().join("\n"))
}

/// The starts of the lines kept past the cap: the protocol's (begin and end
/// markers, the shell's readiness line), and the kernel's lines that end a
/// command without an end marker (`reboot -f`, `halt -f`, a panic).
const KEPT_PREFIXES: [&[u8]; 3] = [b"UMLTEST-", b"reboot: ", b"Kernel panic - "];
/// Longest of [`KEPT_PREFIXES`].
const KEPT_PREFIX_MAX: usize = 15;

/// The first kept line start in `hay`, if any.
fn find_kept(hay: &[u8]) -> Option<usize> {
    KEPT_PREFIXES.iter().filter_map(|p| find(hay, p)).min()
}
/// Longest marker line kept once the transcript is past its cap.
const MARKER_LINE_MAX: usize = 64;
/// Most bytes of marker lines kept past the cap: a guest printing forged
/// markers in a loop cannot grow the transcript without end.
const MARKER_BUDGET: usize = 1 << 20;

/// A console transcript bounded in memory: the first `cap` bytes as they
/// came; after that, output is counted and dropped, and only the protocol's
/// marker lines are kept so exchanges still end. Where bytes were dropped,
/// [`crate::scenario::backend::truncation_line`] (with `\r\n`) says how many,
/// just before the next marker line or at the end.
#[derive(Debug, Clone)]
pub struct Transcript {
    bytes: Vec<u8>,
    cap: usize,
    /// Dropped since the last truncation line.
    dropped: u64,
    /// The last bytes of dropped output (a marker may straddle two reads).
    carry: Vec<u8>,
    /// Bytes of a marker line still to keep.
    keeping: usize,
    marker_bytes: usize,
}

impl Default for Transcript {
    fn default() -> Self {
        Self::with_cap(crate::scenario::backend::CONSOLE_CAP)
    }
}

impl Transcript {
    pub fn with_cap(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
            dropped: 0,
            carry: Vec::new(),
            keeping: 0,
            marker_bytes: 0,
        }
    }

    /// Appends what the console printed.
    pub fn append(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.keeping > 0 {
                let line = data
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(data.len(), |i| i + 1);
                let n = line.min(self.keeping);
                self.bytes.extend_from_slice(&data[..n]);
                self.marker_bytes += n;
                self.keeping = if data[n - 1] == b'\n' {
                    0
                } else {
                    self.keeping - n
                };
                data = &data[n..];
                continue;
            }
            if self.bytes.len() < self.cap && self.dropped == 0 && self.carry.is_empty() {
                let n = (self.cap - self.bytes.len()).min(data.len());
                self.bytes.extend_from_slice(&data[..n]);
                data = &data[n..];
                if !data.is_empty() {
                    // The cap may cut a marker line: its start goes back to
                    // be scanned with what follows.
                    let start = self
                        .bytes
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1);
                    let line = &self.bytes[start..];
                    let marker = KEPT_PREFIXES
                        .iter()
                        .any(|p| line.starts_with(p) || p.starts_with(line));
                    if marker && line.len() <= MARKER_LINE_MAX {
                        self.carry = self.bytes.split_off(start);
                    }
                }
                continue;
            }
            let mut combined = std::mem::take(&mut self.carry);
            combined.extend_from_slice(data);
            let marker = (self.marker_bytes < MARKER_BUDGET)
                .then(|| find_kept(&combined))
                .flatten();
            match marker {
                Some(at) => {
                    self.dropped += at as u64;
                    // A newline of the marker's own goes with the dropped
                    // bytes: the reader takes one off the output.
                    self.flush_dropped(b"\r\n\r\n");
                    self.keeping = MARKER_LINE_MAX;
                    // The marker line is kept by the loop above.
                    let rest = combined.split_off(at);
                    self.append(&rest);
                    return;
                }
                None => {
                    let keep = combined.len().min(KEPT_PREFIX_MAX - 1);
                    self.dropped += (combined.len() - keep) as u64;
                    self.carry = combined.split_off(combined.len() - keep);
                    return;
                }
            }
        }
    }

    /// Writes the truncation line for what was dropped so far.
    fn flush_dropped(&mut self, end: &[u8]) {
        if self.dropped == 0 {
            return;
        }
        if !self.bytes.ends_with(b"\n") {
            self.bytes.extend_from_slice(b"\r\n");
        }
        let line = crate::scenario::backend::truncation_line(self.dropped);
        self.bytes.extend_from_slice(line.trim_end().as_bytes());
        self.bytes.extend_from_slice(end);
        self.dropped = 0;
    }

    /// The transcript so far (marker searches run on this).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole transcript, with the truncation line for output dropped
    /// since the last marker.
    pub fn finish(&self) -> Vec<u8> {
        let mut t = self.clone();
        t.dropped += t.carry.len() as u64;
        t.carry.clear();
        t.flush_dropped(b"\r\n");
        t.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `reboot -f` and `halt -f` end a command with a kernel line, not an end
    /// marker: past the cap those lines are kept too, or the reader would
    /// wait for the step's timeout.
    #[test]
    fn transcript_past_its_cap_keeps_the_kernels_reboot_and_panic_lines() {
        let mut t = Transcript::with_cap(8);
        t.append(&[b'y'; 100]);
        t.append(b"\r\nrebo");
        t.append(b"ot: Restarting system\r\n");
        t.append(&[b'z'; 50]);
        t.append(b"\r\nKernel panic - not syncing: Attempted to kill init!\r\n");
        let text = String::from_utf8_lossy(&t.finish()).into_owned();
        assert!(
            text.contains("\r\nreboot: Restarting system\r\n"),
            "{text:?}"
        );
        assert!(
            text.contains("\r\nKernel panic - not syncing: Attempted to kill init!\r\n"),
            "{text:?}"
        );
        assert!(!text.contains("zzz"), "{text:?}");
    }

    #[test]
    fn transcript_past_its_cap_keeps_markers_and_counts_the_rest() {
        let mut t = Transcript::with_cap(20);
        t.append(b"UMLTEST-BEGIN-1\r\n");
        t.append(b"0123456789");
        // The end marker split across reads, after 1000 bytes of output.
        t.append(&[b'x'; 1000]);
        t.append(b"\r\nUMLTEST-E");
        t.append(b"ND-1:0\r\nmore");
        let bytes = t.finish();
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(
            text,
            "UMLTEST-BEGIN-1\r\n012\r\n[umltest: console truncated: 1009 more bytes]\r\n\r\n\
             UMLTEST-END-1:0\r\n[umltest: console truncated: 4 more bytes]\r\n"
        );
        let ex = find_exchange(t.bytes(), 0, 1).unwrap_or_else(|| panic!("no exchange"));
        assert_eq!(
            ex.output,
            "012\n[umltest: console truncated: 1009 more bytes]\n"
        );
        assert_eq!(ex.exit_code, 0);
    }

    #[test]
    fn a_cap_inside_a_marker_line_keeps_the_marker() {
        let mut t = Transcript::with_cap(10);
        t.append(b"boot\r\nUMLTEST-BEGIN-1\r\nout\r\nUMLTEST-END-1:3\r\n");
        let ex = find_exchange(t.bytes(), 0, 1).unwrap_or_else(|| panic!("{:?}", t.bytes()));
        assert_eq!(ex.output, "[umltest: console truncated: 5 more bytes]\n");
        assert_eq!(ex.exit_code, 3);
    }

    #[test]
    fn forged_markers_cannot_grow_a_full_transcript_without_end() {
        let mut t = Transcript::with_cap(8);
        for _ in 0..100_000 {
            t.append(b"UMLTEST-forged line that goes on and on and on and on and on\n");
        }
        assert!(
            t.bytes().len() <= 8 + MARKER_BUDGET + 200,
            "{}",
            t.bytes().len()
        );
    }

    #[test]
    fn encoded_line_hides_markers_and_escapes_everything() {
        let line = encode_command("echo 'a b' \"$X\" %d\n\x03", 7).unwrap_or_default();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        assert!(!line.contains("UMLTEST-BEGIN-7"));
        assert!(!line.contains("UMLTEST-END-7"));
        assert!(!line.contains('\x03'));
        assert!(line.contains("\\145\\143\\150\\157"), "{line}");
        assert_eq!(
            encode_command(&"x".repeat(901), 1),
            Err(EncodeError::TooLong { len: 901 })
        );
        assert_eq!(encode_command("a\0b", 1), Err(EncodeError::Nul(1)));
    }

    #[test]
    fn exchange_is_found_with_echo_and_crlf() {
        let line = encode_command("echo hi", 3).unwrap_or_default();
        // With echo on, the typed line comes first; it must not count as a marker.
        let transcript = format!(
            "noise\r\n{}\rUMLTEST-BEGIN-3\r\nhi\r\nthere\r\n\r\nUMLTEST-END-3:0\r\nrest",
            line.replace('\n', "\r\n")
        );
        let ex = find_exchange(transcript.as_bytes(), 0, 3).unwrap_or_else(|| panic!("none"));
        assert_eq!(ex.output, "hi\nthere\n");
        assert_eq!(ex.exit_code, 0);
        assert_eq!(&transcript[ex.end..], "rest");
        // Incomplete: no end marker line yet.
        assert_eq!(
            find_exchange(b"UMLTEST-BEGIN-3\r\nhi\r\nUMLTEST-END-3:13", 0, 3),
            None
        );
        // Another exchange's markers do not match.
        assert_eq!(
            find_exchange(b"UMLTEST-BEGIN-31\nUMLTEST-END-31:0\n", 0, 3),
            None
        );
        let ex = find_exchange(b"UMLTEST-BEGIN-4\n\nUMLTEST-END-4:130\n", 0, 4);
        assert_eq!(
            ex.map(|e| (e.output, e.exit_code)),
            Some((String::new(), 130))
        );
        // Output without a final newline (`printf x`) stays apart from the marker.
        let ex = find_exchange(b"UMLTEST-BEGIN-5\r\nx\r\nUMLTEST-END-5:1\r\n", 0, 5);
        assert_eq!(
            ex.map(|e| (e.output, e.exit_code)),
            Some(("x".to_string(), 1))
        );
    }

    #[test]
    fn panic_and_last_lines() {
        let t = b"a\nb\nVFS: Cannot open root device\r\nKernel panic - not syncing: VFS: Unable to mount root fs\nafter\n";
        assert_eq!(
            panic_text(t).as_deref(),
            Some("a\nb\nVFS: Cannot open root device\nKernel panic - not syncing: VFS: Unable to mount root fs")
        );
        assert_eq!(
            last_lines(t, 2),
            "Kernel panic - not syncing: VFS: Unable to mount root fs\nafter"
        );
        assert_eq!(panic_text(b"fine\n"), None);
        assert_eq!(normalize_newlines("a\r\r\nb\rc\r\n"), "a\nb\rc\n");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), from in 0usize..400, seq in 0u64..5) {
            let _ = find_exchange(&bytes, from, seq);
            let _ = panic_text(&bytes);
            let _ = last_lines(&bytes, 3);
        }

        #[test]
        fn encoding_round_trips_through_octal(cmd in "[^\\x00]{0,50}") {
            let line = encode_command(&cmd, 1).unwrap_or_default();
            let marker = "\"$(printf '";
            let start = line.find(marker).map(|i| i + marker.len()).unwrap_or(0);
            let rest = &line[start..];
            let escaped = &rest[..rest.find('\'').unwrap_or(0)];
            let decoded: Vec<u8> = escaped
                .split('\\')
                .filter(|s| !s.is_empty())
                .map(|o| u8::from_str_radix(o, 8).unwrap_or(0))
                .collect();
            prop_assert_eq!(decoded, cmd.as_bytes().to_vec());
        }
    }
}
