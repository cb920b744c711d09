//! busybox 1.35 `printf`: the ash builtin (`printf ...`, errors prefixed
//! `sh: `) and the applet behind a path (`/usr/bin/printf`, prefix
//! `printf: `). Checked against the host's busybox-static (the same binary
//! as the guest's) by tests/sim.rs `printf_*`.
//!
//! What busybox does, and so what this does:
//! - the format is reused while arguments remain and the last pass used one;
//! - directives `%[-+ #0]*[width|*][.prec|.*][lLhz]*[diouxXfeEgGcs]`, `%b`,
//!   `%%`; anything else stops with `%...: invalid format` and status 1;
//! - numbers: C `strtoll`/`strtoull` base 0 (`0x10`, `010`), `'A`/`"A` is
//!   the code of the byte after the quote; a bad number prints `invalid
//!   number 'X'`, uses 0 and makes the status 1, output goes on;
//! - glibc printf's rendering of each directive (the ll added to integers).
//!
//! - memory as a `mem=` guest has it: glibc's `%f %e %g` build their digits
//!   in a buffer of 4 bytes per character (`__printf_fp`), so a precision
//!   whose buffer exceeds MemTotal prints nothing for the directive and makes
//!   the status 1 (`printf 'a%.*fb' 99999999 1` is `ab`, status 1, in a
//!   `mem=64M` UML 6.1 guest); widths and integer precisions are padding
//!   (glibc writes them out, 2 GiB for `%2147483647d`): here they are
//!   [`Chunk::Fill`], never built.
//!
//! Not modelled: `%*c` (busybox passes glibc the wrong arguments there: the
//! output is undefined); the 4 KiB stdio buffer (busybox flushes stdout
//! before every error message, so the order here is the order of events).

/// One piece of output, in the order the real program writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    Out(Vec<u8>),
    /// `n` copies of a byte (padding), written without being built.
    Fill(u8, u64),
    Err(String),
}

/// What a printf run wrote and its exit status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Printed {
    pub chunks: Vec<Chunk>,
    pub status: i32,
    /// A digit buffer fit under MemTotal but not in MemAvailable: touching
    /// it calls the OOM killer, and the output stops there.
    pub oom: bool,
}

impl Printed {
    /// Everything written to stdout (tests: fills are built here).
    pub fn stdout(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for c in &self.chunks {
            match c {
                Chunk::Out(b) => v.extend_from_slice(b),
                Chunk::Fill(b, n) => v.resize(v.len() + *n as usize, *b),
                Chunk::Err(_) => {}
            }
        }
        v
    }
    /// Everything written to stderr.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        for c in &self.chunks {
            if let Chunk::Err(e) = c {
                s.push_str(e);
            }
        }
        s
    }
    fn out(&mut self, bytes: &[u8]) {
        if let Some(Chunk::Out(last)) = self.chunks.last_mut() {
            last.extend_from_slice(bytes);
        } else {
            self.chunks.push(Chunk::Out(bytes.to_vec()));
        }
    }
    fn out_body(&mut self, body: Body) {
        for piece in body.0 {
            match piece {
                Piece::Bytes(b) => self.out(&b),
                Piece::Fill(_, 0) => {}
                // Short padding stays text (the usual `%5d`).
                Piece::Fill(b, n) if n <= 64 => self.out(&vec![b; n as usize]),
                Piece::Fill(b, n) => self.chunks.push(Chunk::Fill(b, n)),
            }
        }
    }
}

/// A directive's output: text and padding runs, never more than a few KiB
/// built whatever the width or precision.
#[derive(Debug, Default)]
struct Body(Vec<Piece>);

#[derive(Debug)]
enum Piece {
    Bytes(Vec<u8>),
    Fill(u8, u64),
}

impl Body {
    fn text(b: &[u8]) -> Self {
        Body(vec![Piece::Bytes(b.to_vec())])
    }
    fn len(&self) -> u64 {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Bytes(b) => b.len() as u64,
                Piece::Fill(_, n) => *n,
            })
            .sum()
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.push(Piece::Bytes(b.to_vec()));
    }
    fn fill(&mut self, b: u8, n: u64) {
        self.0.push(Piece::Fill(b, n));
    }
    fn extend(&mut self, other: Body) {
        self.0.extend(other.0);
    }
}

/// How the program was invoked: it decides the error prefix and what a
/// missing format does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invocation {
    /// `printf` in ash: `sh: ` errors, no format is status 2.
    Builtin,
    /// A path to the busybox applet: `printf: ` errors, usage text, status 1.
    Applet,
}

const USAGE: &str = "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.\n\n\
Usage: printf FORMAT [ARG]...\n\nFormat and print ARG(s) according to FORMAT (a-la C printf)\n";

/// Runs printf on its arguments (argv without argv[0]), memory unlimited.
pub fn printf(how: Invocation, args: &[String]) -> Printed {
    printf_in(how, args, Memory::UNLIMITED)
}

/// A guest's memory as printf meets it, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
}

impl Memory {
    pub const UNLIMITED: Memory = Memory {
        total: u64::MAX,
        available: u64::MAX,
    };
}

/// Runs printf in a guest with `mem`.
pub fn printf_in(how: Invocation, args: &[String], mem: Memory) -> Printed {
    let prefix = match how {
        Invocation::Builtin => "sh",
        Invocation::Applet => "printf",
    };
    // C strings: an argument ends at its first NUL.
    let mut argv: Vec<&[u8]> = args
        .iter()
        .map(|a| {
            let b = a.as_bytes();
            b.split(|&c| c == 0).next().unwrap_or(b)
        })
        .collect();
    if argv.first() == Some(&&b"--"[..]) {
        argv.remove(0);
    }
    let mut run = Run {
        p: Printed::default(),
        prefix,
        conv_err: false,
        mem,
    };
    let Some((format, rest)) = argv.split_first() else {
        match how {
            Invocation::Builtin => {
                run.p.chunks.push(Chunk::Err(
                    "sh: usage: printf FORMAT [ARGUMENT...]\n".into(),
                ));
                run.p.status = 2;
            }
            Invocation::Applet => {
                run.p.chunks.push(Chunk::Err(USAGE.into()));
                run.p.status = 1;
            }
        }
        return run.p;
    };
    // The format is edited in place (size modifiers removed), as busybox does.
    let mut format = format.to_vec();
    let mut pos = 0;
    loop {
        match run.pass(&mut format, rest, pos) {
            Pass::Done(next) => {
                let used = next > pos;
                pos = next;
                if !(used && pos < rest.len()) {
                    break;
                }
            }
            Pass::Stop => break,
            Pass::Invalid => {
                run.p.status = 1;
                return run.p;
            }
        }
    }
    run.p.status = i32::from(run.conv_err);
    run.p
}

enum Pass {
    /// The format ended; the index of the next unused argument.
    Done(usize),
    /// `\c`: no more output.
    Stop,
    /// An invalid directive (already reported).
    Invalid,
}

struct Run<'a> {
    p: Printed,
    prefix: &'a str,
    conv_err: bool,
    mem: Memory,
}

#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    minus: bool,
    plus: bool,
    space: bool,
    hash: bool,
    zero: bool,
}

/// A width or precision as glibc gets it.
#[derive(Debug, Clone, Copy)]
enum Num {
    None,
    /// Written in the format (None: beyond INT_MAX, glibc's EOVERFLOW).
    Digits(Option<i32>),
    /// From a `*` argument.
    Star(i32),
}

fn byte_at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

impl Run<'_> {
    fn error(&mut self, msg: &str) {
        self.p
            .chunks
            .push(Chunk::Err(format!("{}: {msg}\n", self.prefix)));
    }

    fn invalid_number(&mut self, arg: &[u8]) {
        let arg = String::from_utf8_lossy(arg).into_owned();
        self.error(&format!("invalid number '{arg}'"));
    }

    /// One pass over the format, taking arguments from `args[pos..]`.
    fn pass(&mut self, f: &mut Vec<u8>, args: &[&[u8]], mut pos: usize) -> Pass {
        let mut i = 0;
        while i < f.len() {
            match f[i] {
                b'%' => {
                    let start = i;
                    i += 1;
                    match byte_at(f, i) {
                        b'%' => {
                            self.p.out(b"%");
                            i += 1;
                            continue;
                        }
                        b'b' => {
                            if let Some(arg) = args.get(pos) {
                                pos += 1;
                                if self.esc_string(arg) {
                                    return Pass::Stop;
                                }
                            }
                            i += 1;
                            continue;
                        }
                        _ => {}
                    }
                    let mut flags = Flags::default();
                    loop {
                        match byte_at(f, i) {
                            b'-' => flags.minus = true,
                            b'+' => flags.plus = true,
                            b' ' => flags.space = true,
                            b'#' => flags.hash = true,
                            b'0' => flags.zero = true,
                            _ => break,
                        }
                        i += 1;
                    }
                    let mut width = Num::None;
                    if byte_at(f, i) == b'*' {
                        i += 1;
                        width = Num::Star(self.star(args, &mut pos));
                    } else if byte_at(f, i).is_ascii_digit() {
                        width = Num::Digits(digits(f, &mut i));
                    }
                    let mut prec = Num::None;
                    if byte_at(f, i) == b'.' {
                        i += 1;
                        if byte_at(f, i) == b'*' {
                            i += 1;
                            prec = Num::Star(self.star(args, &mut pos));
                        } else {
                            prec = Num::Digits(digits(f, &mut i));
                        }
                    }
                    while matches!(byte_at(f, i), b'l' | b'L' | b'h' | b'z') {
                        f.remove(i);
                    }
                    let conv = byte_at(f, i);
                    if conv == 0 || !b"diouxXfeEgGcs".contains(&conv) {
                        let rest = String::from_utf8_lossy(&f[start..]).into_owned();
                        self.error(&format!("{rest}: invalid format"));
                        return Pass::Invalid;
                    }
                    i += 1;
                    let arg: &[u8] = match args.get(pos) {
                        Some(a) => {
                            pos += 1;
                            a
                        }
                        None => b"",
                    };
                    self.direc(conv, flags, width, prec, arg);
                    if self.p.oom {
                        return Pass::Stop;
                    }
                }
                b'\\' => {
                    i += 1;
                    if byte_at(f, i) == b'c' {
                        return Pass::Stop;
                    }
                    let (b, next) = escape(f, i);
                    self.p.out(&[b]);
                    i = next;
                }
                c => {
                    self.p.out(&[c]);
                    i += 1;
                }
            }
        }
        Pass::Done(pos)
    }

    /// A `*` width or precision: busybox's `bb_strtoi(arg, 10)`; a bad one is
    /// reported and is 0 (but does not change the exit status). No argument: 0.
    fn star(&mut self, args: &[&[u8]], pos: &mut usize) -> i32 {
        let Some(arg) = args.get(*pos) else {
            return 0;
        };
        *pos += 1;
        let (neg, digits) = match arg.strip_prefix(b"-") {
            Some(d) => (true, d),
            None => (false, *arg),
        };
        let value = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(digits).ok()?.parse::<i64>().ok())
            .flatten()
            .map(|v| if neg { -v } else { v })
            .and_then(|v| i32::try_from(v).ok());
        match value {
            Some(v) => v,
            None => {
                self.invalid_number(arg);
                0
            }
        }
    }

    /// `%b`: the argument with escapes; true at `\c`.
    fn esc_string(&mut self, s: &[u8]) -> bool {
        let mut i = 0;
        while i < s.len() {
            let c = s[i];
            i += 1;
            if c != b'\\' {
                self.p.out(&[c]);
                continue;
            }
            // %b also takes 4-digit octals, \0NNN.
            if byte_at(s, i) == b'0' {
                if (b'0'..=b'7').contains(&byte_at(s, i + 1)) {
                    i += 1;
                }
            } else if byte_at(s, i) == b'c' {
                return true;
            }
            let (b, next) = escape(s, i);
            self.p.out(&[b]);
            i = next;
        }
        false
    }

    fn direc(&mut self, conv: u8, flags: Flags, width: Num, prec: Num, arg: &[u8]) {
        // glibc: a negative `*` width means `-`, a negative `.*` no precision.
        let mut flags = flags;
        let width = match width {
            Num::None => Some(0),
            Num::Digits(w) => w,
            Num::Star(w) => {
                if w < 0 {
                    flags.minus = true;
                }
                Some(w.unsigned_abs().min(i32::MAX as u32) as i32)
            }
        };
        let prec = match prec {
            Num::None => Some(None),
            Num::Digits(p) => p.map(Some),
            Num::Star(p) => Some((p >= 0).then_some(p)),
        };
        // The argument is converted (and reported) before glibc sees the
        // directive; a width or precision beyond INT_MAX then makes glibc
        // print nothing for it and fail with EOVERFLOW (status 1, no message).
        enum Val<'a> {
            Bytes(&'a [u8]),
            Int(bool, u64),
            Float(f64),
        }
        let val = match conv {
            b'c' => Val::Bytes(&arg[..arg.len().min(1)]),
            b's' => Val::Bytes(arg),
            b'd' | b'i' => {
                let v = self.signed(arg);
                Val::Int(v < 0, v.unsigned_abs())
            }
            b'o' | b'u' | b'x' | b'X' => Val::Int(false, self.unsigned(arg)),
            _ => Val::Float(self.double(arg)),
        };
        let (Some(width), Some(prec)) = (width, prec) else {
            self.conv_err = true;
            return;
        };
        let width = width as u64;
        let body = match val {
            // %c of an empty argument is its terminating NUL.
            Val::Bytes(b) if conv == b'c' => pad(
                Body::text(if b.is_empty() { b"\0" } else { b }),
                b"",
                flags,
                width,
                false,
            ),
            Val::Bytes(b) => {
                let b = match prec {
                    Some(p) => &b[..b.len().min(p as usize)],
                    None => b,
                };
                pad(Body::text(b), b"", flags, width, false)
            }
            Val::Int(neg, mag) => fmt_int(conv, neg, mag, flags, width, prec),
            Val::Float(v) => {
                // glibc's digit buffer: 4 bytes a character; malloc fails
                // past MemTotal and the directive prints nothing.
                let buffer = (u64::try_from(prec.unwrap_or(6)).unwrap_or(0) + 350) * 4;
                if v.is_finite() && buffer > self.mem.total {
                    self.conv_err = true;
                    return;
                }
                if v.is_finite() && buffer > self.mem.available {
                    self.p.oom = true;
                    return;
                }
                fmt_float(conv, v, flags, width, prec)
            }
        };
        self.p.out_body(body);
    }

    /// The argument as busybox's `%d` takes it.
    fn signed(&mut self, arg: &[u8]) -> i64 {
        let arg = skip_space(arg);
        let quoted = char_code(arg);
        let a: &[u8] = quoted.as_deref().unwrap_or(arg);
        let b = a.strip_prefix(b"+").unwrap_or(a);
        match strtoll(b) {
            Some(v) => v,
            None => {
                self.conv_err = true;
                self.invalid_number(a);
                0
            }
        }
    }

    /// The argument as busybox's `%u`/`%x` takes it (negatives wrap).
    fn unsigned(&mut self, arg: &[u8]) -> u64 {
        let arg = skip_space(arg);
        let quoted = char_code(arg);
        let a: &[u8] = quoted.as_deref().unwrap_or(arg);
        let b = a.strip_prefix(b"+").unwrap_or(a);
        let v = if b.first().is_some_and(u8::is_ascii_alphanumeric) {
            c_integer(b).and_then(|(neg, m)| (!neg).then_some(m))
        } else {
            None
        };
        match v.or_else(|| strtoll(b).map(|v| v as u64)) {
            Some(v) => v,
            None => {
                self.conv_err = true;
                self.invalid_number(a);
                0
            }
        }
    }

    /// The argument as busybox's `%f` takes it: strtod, trailing junk is 0.
    fn double(&mut self, arg: &[u8]) -> f64 {
        let quoted = char_code(arg);
        let a: &[u8] = quoted.as_deref().unwrap_or(arg);
        let (v, end, range) = strtod(a);
        if end < a.len() {
            self.conv_err = true;
            self.invalid_number(a);
            return 0.0;
        }
        if range {
            self.conv_err = true;
            self.invalid_number(a);
        }
        v
    }
}

/// Decimal digits of a width or precision in the format (None past INT_MAX).
fn digits(f: &[u8], i: &mut usize) -> Option<i32> {
    let mut v: Option<i32> = Some(0);
    while byte_at(f, *i).is_ascii_digit() {
        let d = i32::from(f[*i] - b'0');
        v = v.and_then(|v| v.checked_mul(10)?.checked_add(d));
        *i += 1;
    }
    v
}

fn skip_space(a: &[u8]) -> &[u8] {
    let n = a.iter().take_while(|&&c| is_c_space(c)).count();
    &a[n..]
}

/// `'A` or `"A`: the decimal code of the byte after the quote (0 if none).
fn char_code(a: &[u8]) -> Option<Vec<u8>> {
    matches!(a.first(), Some(b'\'' | b'"')).then(|| byte_at(a, 1).to_string().into_bytes())
}

/// A whole C integer, base 0: `[-]0x1f`, `[-]017`, `[-]15`; (negative, magnitude).
fn c_integer(s: &[u8]) -> Option<(bool, u64)> {
    let (neg, s) = match s.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, s.strip_prefix(b"+").unwrap_or(s)),
    };
    let (digits, radix) = if let Some(h) = s.strip_prefix(b"0x").or(s.strip_prefix(b"0X")) {
        (h, 16)
    } else if s.len() > 1 && s[0] == b'0' {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.iter().all(|&c| (c as char).is_digit(radix)) {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    Some((neg, u64::from_str_radix(text, radix).ok()?))
}

/// busybox `bb_strtoll(s, NULL, 0)` without errors: the whole string, in range.
fn strtoll(s: &[u8]) -> Option<i64> {
    let first = if s.first() == Some(&b'-') {
        byte_at(s, 1)
    } else {
        byte_at(s, 0)
    };
    if !first.is_ascii_alphanumeric() {
        return None;
    }
    let (neg, m) = c_integer(s)?;
    if neg {
        0i64.checked_sub_unsigned(m)
    } else {
        i64::try_from(m).ok()
    }
}

/// glibc `strtod` in the C locale: (value, bytes used, ERANGE).
fn strtod(s: &[u8]) -> (f64, usize, bool) {
    let mut i = s.iter().take_while(|&&c| is_c_space(c)).count();
    let neg = match byte_at(s, i) {
        b'-' => {
            i += 1;
            true
        }
        b'+' => {
            i += 1;
            false
        }
        _ => false,
    };
    let signed = |v: f64| if neg { -v } else { v };
    let rest = &s[i..];
    let starts = |w: &[u8]| rest.len() >= w.len() && rest[..w.len()].eq_ignore_ascii_case(w);
    if starts(b"inf") {
        let n = if starts(b"infinity") { 8 } else { 3 };
        return (signed(f64::INFINITY), i + n, false);
    }
    if starts(b"nan") {
        let mut end = i + 3;
        if byte_at(s, end) == b'(' {
            let mut k = end + 1;
            while byte_at(s, k).is_ascii_alphanumeric() || byte_at(s, k) == b'_' {
                k += 1;
            }
            if byte_at(s, k) == b')' {
                end = k + 1;
            }
        }
        return (signed(f64::NAN), end, false);
    }
    if byte_at(s, i) == b'0' && matches!(byte_at(s, i + 1), b'x' | b'X') {
        if let Some((v, end, range)) = hex_float(s, i + 2) {
            return (signed(v), end, range);
        }
    }
    // Decimal: digits, a point, digits (one digit at least), an exponent.
    let mut k = i;
    let mut nonzero = false;
    let mut ndigits = 0;
    while byte_at(s, k).is_ascii_digit() {
        nonzero |= s[k] != b'0';
        ndigits += 1;
        k += 1;
    }
    if byte_at(s, k) == b'.' {
        k += 1;
        while byte_at(s, k).is_ascii_digit() {
            nonzero |= s[k] != b'0';
            ndigits += 1;
            k += 1;
        }
    }
    if ndigits == 0 {
        // No conversion: the end is the start of the string.
        return (0.0, 0, false);
    }
    k = exponent(s, k, b'e');
    let text = std::str::from_utf8(&s[i..k]).unwrap_or("0");
    let v: f64 = text.parse().unwrap_or(0.0);
    // Overflow, or a nonzero number that is subnormal or 0 (inexact).
    let range = v.is_infinite() || (nonzero && v.abs() < f64::MIN_POSITIVE);
    (signed(v), k, range)
}

/// `[eEpP][+-]?digits` at `k` if complete, else `k`.
fn exponent(s: &[u8], k: usize, letter: u8) -> usize {
    if byte_at(s, k).to_ascii_lowercase() != letter {
        return k;
    }
    let mut j = k + 1;
    if matches!(byte_at(s, j), b'+' | b'-') {
        j += 1;
    }
    if !byte_at(s, j).is_ascii_digit() {
        return k;
    }
    while byte_at(s, j).is_ascii_digit() {
        j += 1;
    }
    j
}

/// A hex float after `0x` at `k`: None without any hex digit (then glibc
/// reads just the `0`).
fn hex_float(s: &[u8], k: usize) -> Option<(f64, usize, bool)> {
    let mut m: u64 = 0;
    let mut sticky = false;
    let mut exp: i64 = 0;
    let mut any = false;
    let mut j = k;
    let mut frac = false;
    loop {
        let c = byte_at(s, j);
        if c == b'.' && !frac {
            frac = true;
            j += 1;
            continue;
        }
        let Some(d) = (c as char).to_digit(16) else {
            break;
        };
        any = true;
        if m < 1 << 60 {
            m = m << 4 | u64::from(d);
            if frac {
                exp -= 4;
            }
        } else {
            sticky |= d != 0;
            if !frac {
                exp += 4;
            }
        }
        j += 1;
    }
    if !any {
        return None;
    }
    let end = exponent(s, j, b'p');
    if end > j {
        let digits = s[j + 1..end]
            .iter()
            .filter(|c| c.is_ascii_digit())
            .fold(0i64, |a, &c| (a * 10 + i64::from(c - b'0')).min(1 << 20));
        if s[j + 1] == b'-' {
            exp -= digits;
        } else {
            exp += digits;
        }
    }
    let (v, range) = scale2(m, sticky, exp);
    Some((v, end, range))
}

/// `m * 2^exp` (plus a sticky bit below m) rounded to nearest even: (value, ERANGE).
fn scale2(m: u64, sticky: bool, exp: i64) -> (f64, bool) {
    if m == 0 {
        return (0.0, false);
    }
    let lz = m.leading_zeros();
    let m = m << lz;
    let e = exp - i64::from(lz) + 63; // the value is in [2^e, 2^(e+1))
    if e > 1023 {
        return (f64::INFINITY, true);
    }
    // Bits of m to drop: 11 for a normal number, more for a subnormal one.
    let shift = if e >= -1022 { 11 } else { 11 + (-1022 - e) };
    let (keep, rem_half, rem_below, inexact) = if shift > 64 {
        (0u64, false, true, true)
    } else {
        let m = u128::from(m);
        let keep = (m >> shift) as u64;
        let rem = m & ((1u128 << shift) - 1);
        let half = 1u128 << (shift - 1);
        (
            keep,
            rem >= half,
            rem & (half - 1) != 0 || sticky,
            rem != 0 || sticky,
        )
    };
    let up = rem_half && (rem_below || keep & 1 == 1);
    let mut keep = keep + u64::from(up);
    let mut e = e;
    if e >= -1022 {
        if keep == 1 << 53 {
            keep >>= 1;
            e += 1;
            if e > 1023 {
                return (f64::INFINITY, true);
            }
        }
        let bits = ((e + 1023) as u64) << 52 | (keep & ((1 << 52) - 1));
        (f64::from_bits(bits), false)
    } else {
        // Subnormal: keep < 2^52 (2^52 after rounding is the smallest normal).
        let v = f64::from_bits(keep);
        (v, inexact)
    }
}

/// Pads `body` (after `prefix`) to the width: spaces, or zeros after the
/// prefix when `zeros`.
fn pad(body: Body, prefix: &[u8], flags: Flags, width: u64, zeros: bool) -> Body {
    let len = prefix.len() as u64 + body.len();
    let fill = width.saturating_sub(len);
    let mut v = Body::default();
    if flags.minus {
        v.bytes(prefix);
        v.extend(body);
        v.fill(b' ', fill);
    } else if zeros {
        v.bytes(prefix);
        v.fill(b'0', fill);
        v.extend(body);
    } else {
        v.fill(b' ', fill);
        v.bytes(prefix);
        v.extend(body);
    }
    v
}

/// glibc `%lld`-style integers.
fn fmt_int(conv: u8, neg: bool, mag: u64, flags: Flags, width: u64, prec: Option<i32>) -> Body {
    let mut digits = match conv {
        b'o' => format!("{mag:o}"),
        b'x' => format!("{mag:x}"),
        b'X' => format!("{mag:X}"),
        _ => mag.to_string(),
    };
    if prec == Some(0) && mag == 0 {
        digits.clear();
    }
    // Precision zeros are padding too (`%.2147483647d`).
    let lead = prec.map_or(0, |p| (p.max(0) as u64).saturating_sub(digits.len() as u64));
    if conv == b'o' && flags.hash && lead == 0 && !digits.starts_with('0') {
        digits.insert(0, '0');
    }
    let prefix: &[u8] = match conv {
        b'd' | b'i' if neg => b"-",
        b'd' | b'i' if flags.plus => b"+",
        b'd' | b'i' if flags.space => b" ",
        b'x' if flags.hash && mag != 0 => b"0x",
        b'X' if flags.hash && mag != 0 => b"0X",
        _ => b"",
    };
    let zeros = flags.zero && prec.is_none();
    let mut body = Body::default();
    body.fill(b'0', lead);
    body.bytes(digits.as_bytes());
    pad(body, prefix, flags, width, zeros)
}

/// The exact decimal digits of a double end within these many places, so
/// more precision is zeros (and Rust's formatter is spared huge precisions).
const MAX_FIXED: usize = 1100;
const MAX_EXP: usize = 800;

fn fixed(a: f64, p: usize, hash: bool) -> Body {
    let mut b = Body::text(format!("{:.*}", p.min(MAX_FIXED), a).as_bytes());
    if p > MAX_FIXED {
        b.fill(b'0', (p - MAX_FIXED) as u64);
    }
    if hash && p == 0 {
        b.bytes(b".");
    }
    b
}

/// `d.ddde±XX` and the decimal exponent.
fn scientific(a: f64, p: usize, hash: bool, upper: bool) -> (Body, i32) {
    let s = format!("{:.*e}", p.min(MAX_EXP), a);
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut b = Body::text(mant.as_bytes());
    if p > MAX_EXP {
        b.fill(b'0', (p - MAX_EXP) as u64);
    }
    if hash && p == 0 {
        b.bytes(b".");
    }
    let e = if upper { 'E' } else { 'e' };
    let sign = if exp < 0 { '-' } else { '+' };
    b.bytes(format!("{e}{sign}{:02}", exp.unsigned_abs()).as_bytes());
    (b, exp)
}

/// glibc `%f %e %E %g %G`.
fn fmt_float(conv: u8, v: f64, flags: Flags, width: u64, prec: Option<i32>) -> Body {
    let upper = matches!(conv, b'E' | b'G');
    let prefix: &[u8] = if v.is_sign_negative() {
        b"-"
    } else if flags.plus {
        b"+"
    } else if flags.space {
        b" "
    } else {
        b""
    };
    if !v.is_finite() {
        let body = match (v.is_nan(), upper) {
            (true, false) => "nan",
            (true, true) => "NAN",
            (false, false) => "inf",
            (false, true) => "INF",
        };
        return pad(Body::text(body.as_bytes()), prefix, flags, width, false);
    }
    let a = v.abs();
    let p = prec.map_or(6, |p| p as usize);
    let body = match conv {
        b'f' => fixed(a, p, flags.hash),
        b'e' | b'E' => scientific(a, p, flags.hash, upper).0,
        _ => {
            // Without `#` the zeros past a double's exact digits are
            // stripped anyway: no need to make them.
            let p = if flags.hash {
                p.max(1)
            } else {
                p.clamp(1, MAX_EXP)
            };
            let (sci, x) = scientific(a, p - 1, flags.hash, upper);
            let s = if (x as i64) < p as i64 && x >= -4 {
                fixed(a, (p as i64 - 1 - x as i64) as usize, flags.hash)
            } else {
                sci
            };
            if flags.hash {
                s
            } else {
                let text: Vec<u8> =
                    s.0.into_iter()
                        .flat_map(|piece| match piece {
                            Piece::Bytes(b) => b,
                            Piece::Fill(c, n) => vec![c; n as usize],
                        })
                        .collect();
                Body::text(strip_zeros(&String::from_utf8_lossy(&text)).as_bytes())
            }
        }
    };
    pad(body, prefix, flags, width, flags.zero)
}

/// `%g` without `#`: trailing zeros of the fraction go, then a bare point.
fn strip_zeros(s: &str) -> String {
    let (mant, exp) = match s.find(['e', 'E']) {
        Some(at) => s.split_at(at),
        None => (s, ""),
    };
    if !mant.contains('.') {
        return s.to_string();
    }
    let mant = mant.trim_end_matches('0').trim_end_matches('.');
    format!("{mant}{exp}")
}

/// busybox `bb_process_escape_sequence` on `s[q..]` (after the backslash):
/// the byte and where the sequence ends. An unknown one is `\` and ends at `q`.
fn escape(s: &[u8], q: usize) -> (u8, usize) {
    let start = q;
    let mut q = q;
    let mut num_digits = 0u32;
    let mut n = 0u32;
    let mut base = 8u32;
    if byte_at(s, q) == b'x' {
        q += 1;
        base = 16;
        num_digits += 1;
    }
    loop {
        let ch = byte_at(s, q);
        let mut d = u32::from(ch).wrapping_sub(u32::from(b'0'));
        if d >= 10 {
            d = u32::from(ch | 0x20).wrapping_sub(u32::from(b'a'));
            if (d as i32) >= 0 {
                d += 10;
            }
        }
        if d >= base {
            if base == 16 {
                num_digits -= 1;
                if num_digits == 0 {
                    // `\x` without a hex digit: a backslash; the x stays.
                    return (b'\\', start);
                }
            }
            break;
        }
        let r = n * base + d;
        if r > 255 {
            break;
        }
        n = r;
        q += 1;
        num_digits += 1;
        if num_digits >= 3 {
            break;
        }
    }
    if num_digits == 0 {
        let c = match byte_at(s, q) {
            b'a' => 7,
            b'b' => 8,
            b'e' => 27,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 11,
            b'\\' => b'\\',
            _ => return (b'\\', q),
        };
        return (c, q + 1);
    }
    (n as u8, q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(args: &[&str]) -> (Vec<u8>, String, i32) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let p = printf(Invocation::Builtin, &args);
        (p.stdout(), p.stderr(), p.status)
    }

    /// Each expectation was printed by the host's busybox 1.35 (`busybox sh -c`).
    #[test]
    fn cases_checked_on_busybox() {
        assert_eq!(
            run(&["%d\n", "0x10", "010", "'A", "-5", "+3", " 7"]).0,
            b"16\n8\n65\n-5\n3\n7\n"
        );
        assert_eq!(run(&["%s-%s\n", "a", "b", "c"]).0, b"a-b\nc-\n");
        assert_eq!(run(&["%b|", "a\\cb", "x"]).0, b"a");
        assert_eq!(run(&["\\x41\\101\\0101\\q\n"]).0, b"AA\x081\\q\n");
        assert_eq!(run(&["%c%c\n", "abc", ""]).0, b"a\0\n");
        assert_eq!(
            run(&["%d|%d|", "1", "x"]),
            (b"1|0|".to_vec(), "sh: invalid number 'x'\n".into(), 1)
        );
        assert_eq!(
            run(&["a%ld%zk%lb", "1"]),
            (b"a1".to_vec(), "sh: %k%lb: invalid format\n".into(), 1)
        );
        assert_eq!(run(&["%*d|", "x", "5"]).2, 0);
        assert_eq!(
            run(&[".%99999999999d|", "5"]),
            (b".|".to_vec(), String::new(), 1)
        );
        assert_eq!(
            run(&["%.0f %.0f %.2f %.1f\n", "2.5", "3.5", "0.125", "0.25"]).0,
            b"2 4 0.12 0.2\n"
        );
        assert_eq!(
            run(&[
                "%#g %g %g %G %g\n",
                "1",
                "100000",
                "1000000",
                "1e-5",
                "0.0001234567"
            ])
            .0,
            b"1.00000 100000 1e+06 1E-05 0.000123457\n"
        );
        assert_eq!(
            run(&["%g|", "0x1p-1074"]),
            (b"4.94066e-324|".to_vec(), String::new(), 0)
        );
        assert_eq!(
            run(&[]),
            (vec![], "sh: usage: printf FORMAT [ARGUMENT...]\n".into(), 2)
        );
    }

    proptest! {
        #[test]
        fn never_panics(raw in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 0..5)) {
            let args: Vec<String> = raw.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
            let _ = printf(Invocation::Builtin, &args);
            let _ = printf(Invocation::Applet, &args);
        }

        #[test]
        fn never_panics_on_directives(f in "[%*.0-9lhzbcdiouxXeEfgGs\\\\+# -]{0,16}", args in proptest::collection::vec("[0-9a-fx.+-]{0,6}", 0..4)) {
            let mut v = vec![f];
            v.extend(args);
            let _ = printf(Invocation::Builtin, &v);
        }
    }
}
