//! The manifest of the default root image: one line per path of the image
//! [`super::image::build`] makes, sorted, with type, mode, owner, size, link
//! target and the contents of its text files. It is committed
//! (`src/uml/default-image.manifest`), regenerated from the real build's staging
//! tree by `umltest image manifest`, checked against the real image in CI, and
//! the sim builds its `image = "default"` disk from it ([`super::image::build_from_manifest`]).
//!
//! Line format (fields separated by one space; paths never hold spaces):
//!
//! ```text
//! /bin dir 0755 0:0
//! /bin/busybox bin 0755 0:0 2184024
//! /bin/sh link 0777 0:0 -> /bin/busybox
//! /etc/hostname text 0644 0:0 7 "(none)\n"
//! ```
//!
//! `bin` is a regular file holding a program or library copied from the host:
//! its size is the one on the host that wrote the manifest (informative: it
//! changes with every Debian point release, so comparisons leave it out) and its
//! bytes are not recorded; the sim's image has a placeholder of that size (its
//! blocks allocated, reading as zeros). `text`
//! is any other regular file (no NUL byte, UTF-8, at most [`TEXT_MAX`] bytes),
//! with its contents quoted: `\\`, `\"`, `\n`, `\t`, `\xNN` for other control bytes.
//!
//! Between hosts, only `bin` sizes are expected to differ. The names follow the
//! host's packages (busybox's applet list, the libraries `ldd` lists): on a host
//! whose busybox, arping or tcpdump is not Debian 12's, `--check` shows the
//! difference, which is wanted, as the sim models Debian 12's versions.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The committed manifest of the default image.
pub const DEFAULT_MANIFEST: &str = include_str!("default-image.manifest");

/// Where [`DEFAULT_MANIFEST`] lives in the source tree (for messages).
pub const DEFAULT_MANIFEST_PATH: &str = "src/uml/default-image.manifest";

/// The largest file recorded with its contents.
pub const TEXT_MAX: usize = 64 << 10;

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A program or library from the host: only its size is recorded.
    Binary {
        size: u64,
    },
    Text(Vec<u8>),
    Symlink(String),
}

/// One path of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Paths to items, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub items: BTreeMap<String, Item>,
}

/// A manifest file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}:{line}:{column}: {message}\n{text}\n{caret:>width$}", caret = "^", width = column)]
    Parse {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
        text: String,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot read its ext4 filesystem: {why}")]
    Ext4 { path: PathBuf, why: String },
}

/// True for contents the manifest records (see the module docs).
pub fn is_text(data: &[u8]) -> bool {
    data.len() <= TEXT_MAX && !data.contains(&0) && std::str::from_utf8(data).is_ok()
}

fn quote(data: &[u8]) -> String {
    let mut s = String::from("\"");
    // Text files are UTF-8 (is_text), so multi-byte characters pass as they are.
    for c in String::from_utf8_lossy(data).chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(s, "\\x{:02x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// Parses a quoted string starting at byte `at` of `line`; `Err((column, why))`.
fn unquote(line: &str, at: usize) -> Result<Vec<u8>, (usize, String)> {
    let rest = line.get(at..).unwrap_or("");
    let mut chars = rest.char_indices();
    if !matches!(chars.next(), Some((_, '"'))) {
        return Err((at + 1, "expected a quoted string".into()));
    }
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                if i + 1 != rest.len() {
                    return Err((at + i + 2, "text after the closing quote".into()));
                }
                return Ok(out.into_bytes());
            }
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((j, 'x')) => {
                    let hex = rest.get(j + 1..j + 3).unwrap_or("");
                    let byte = u8::from_str_radix(hex, 16)
                        .ok()
                        .filter(|b| *b < 0x20 || *b == 0x7f)
                        .ok_or((
                            at + j + 2,
                            "expected two hex digits of a control byte".into(),
                        ))?;
                    out.push(char::from(byte));
                    chars.next();
                    chars.next();
                }
                _ => {
                    return Err((
                        at + i + 2,
                        "unknown escape (\\\\ \\\" \\n \\t \\xNN)".into(),
                    ))
                }
            },
            c => out.push(c),
        }
    }
    Err((line.len() + 1, "unterminated quoted string".into()))
}

impl Manifest {
    /// The manifest text: a header comment, then one line per path.
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# The default root image (umltest image build), one line per path: type, mode, owner,\n\
             # size, contents of text files, link targets. `bin` sizes are this host's and are not\n\
             # compared; the sim fills them with placeholder bytes. Regenerate: umltest image manifest FILE\n",
        );
        for (path, item) in &self.items {
            let (kind, tail) = match &item.kind {
                Kind::Dir => ("dir", String::new()),
                Kind::Binary { size } => ("bin", format!(" {size}")),
                Kind::Text(data) => ("text", format!(" {} {}", data.len(), quote(data))),
                Kind::Symlink(target) => ("link", format!(" -> {target}")),
            };
            let _ = writeln!(
                s,
                "{path} {kind} {:04o} {}:{}{tail}",
                item.mode, item.uid, item.gid
            );
        }
        s
    }

    /// Parses [`Manifest::render`]'s format; `file` names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ManifestError> {
        let mut items = BTreeMap::new();
        let mut last: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let err = |column: usize, message: String| ManifestError::Parse {
                file: file.to_path_buf(),
                line: n + 1,
                column,
                message,
                text: line.to_string(),
            };
            let (path, item) = parse_line(line).map_err(|(c, m)| err(c, m))?;
            if last.as_ref().is_some_and(|l| *l >= path) {
                return Err(err(
                    1,
                    format!("{path} is out of order or repeated (sorted by path)"),
                ));
            }
            last = Some(path.clone());
            items.insert(path, item);
        }
        Ok(Self { items })
    }

    /// The committed manifest of the default image.
    pub fn default_image() -> Result<Self, ManifestError> {
        Self::parse(DEFAULT_MANIFEST, Path::new(DEFAULT_MANIFEST_PATH))
    }

    /// The lines by which `self` (expected) and `actual` differ, `-` expected
    /// and `+` actual; with `binary_sizes` false, `bin` sizes are not compared.
    pub fn differences(&self, actual: &Manifest, binary_sizes: bool) -> Vec<String> {
        let norm = |m: &Manifest| -> BTreeMap<String, String> {
            let mut m = m.clone();
            if !binary_sizes {
                for item in m.items.values_mut() {
                    if let Kind::Binary { size } = &mut item.kind {
                        *size = 0;
                    }
                }
            }
            m.render()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| (l.split(' ').next().unwrap_or("").to_string(), l.to_string()))
                .collect()
        };
        let (want, got) = (norm(self), norm(actual));
        let mut out = Vec::new();
        let paths: std::collections::BTreeSet<&String> = want.keys().chain(got.keys()).collect();
        for p in paths {
            match (want.get(p), got.get(p)) {
                (Some(a), Some(b)) if a == b => {}
                (a, b) => {
                    out.extend(a.map(|a| format!("-{a}")));
                    out.extend(b.map(|b| format!("+{b}")));
                }
            }
        }
        out
    }

    /// The manifest of an ext4 image file, read without mounting it (`ext4-view`).
    pub fn of_ext4(image: &Path) -> Result<Self, ManifestError> {
        use ext4_view::{Ext4, FileType};
        let e = |why: ext4_view::Ext4Error| ManifestError::Ext4 {
            path: image.to_path_buf(),
            why: why.to_string(),
        };
        let fs = Ext4::load_from_path(image).map_err(e)?;
        let mut items = BTreeMap::new();
        let root = ext4_view::PathBuf::try_from("/").map_err(|_| ManifestError::Ext4 {
            path: image.to_path_buf(),
            why: "no root".into(),
        })?;
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let meta = fs.symlink_metadata(&dir).map_err(e)?;
            let name = String::from_utf8_lossy(dir.as_ref()).into_owned();
            items.insert(
                name,
                Item {
                    kind: Kind::Dir,
                    mode: u32::from(meta.mode()) & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                },
            );
            for entry in fs.read_dir(&dir).map_err(e)? {
                let entry = entry.map_err(e)?;
                let name = entry.file_name();
                let bytes: &[u8] = name.as_ref();
                if bytes == b"." || bytes == b".." {
                    continue;
                }
                let path = entry.path();
                let meta = fs.symlink_metadata(&path).map_err(e)?;
                let kind = match meta.file_type() {
                    FileType::Directory => {
                        stack.push(path);
                        continue;
                    }
                    FileType::Symlink => Kind::Symlink(
                        String::from_utf8_lossy(fs.read_link(&path).map_err(e)?.as_ref())
                            .into_owned(),
                    ),
                    FileType::Regular => {
                        let data = fs.read(&path).map_err(e)?;
                        if is_text(&data) {
                            Kind::Text(data)
                        } else {
                            Kind::Binary { size: meta.len() }
                        }
                    }
                    other => {
                        return Err(ManifestError::Ext4 {
                            path: image.to_path_buf(),
                            why: format!(
                                "{}: a {other:?}, which a manifest cannot describe",
                                String::from_utf8_lossy(path.as_ref())
                            ),
                        })
                    }
                };
                items.insert(
                    String::from_utf8_lossy(path.as_ref()).into_owned(),
                    Item {
                        kind,
                        mode: u32::from(meta.mode()) & 0o7777,
                        uid: meta.uid(),
                        gid: meta.gid(),
                    },
                );
            }
        }
        Ok(Self { items })
    }
}

/// One line: `PATH TYPE MODE UID:GID [SIZE] [-> TARGET | "TEXT"]`.
fn parse_line(line: &str) -> Result<(String, Item), (usize, String)> {
    // Byte offsets of the first fields, for carets.
    let mut fields = Vec::new();
    let mut at = 0;
    for part in line.splitn(6, ' ') {
        fields.push((at, part));
        at += part.len() + 1;
    }
    let field = |i: usize, what: &str| {
        fields
            .get(i)
            .copied()
            .filter(|(_, f)| !f.is_empty())
            .ok_or((line.len() + 1, format!("missing {what}")))
    };
    let (_, path) = field(0, "path")?;
    if !path.starts_with('/') || path.contains("//") || path.split('/').any(|c| c == "..") {
        return Err((1, format!("{path}: expected an absolute path without `..`")));
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err((path.len(), format!("{path}: trailing slash")));
    }
    let (kat, kind) = field(1, "type (dir, bin, text, link)")?;
    let (mat, mode) = field(2, "mode")?;
    let mode = u32::from_str_radix(mode, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && mode.len() == 4)
        .ok_or((mat + 1, format!("{mode}: expected four octal digits")))?;
    let (oat, owner) = field(3, "owner")?;
    let (uid, gid) = owner
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
        .ok_or((oat + 1, format!("{owner}: expected UID:GID")))?;
    let size = |i: usize| -> Result<(usize, u64), (usize, String)> {
        let (sat, s) = field(i, "size")?;
        s.parse()
            .map(|v| (sat, v))
            .map_err(|_| (sat + 1, format!("{s}: expected a size in bytes")))
    };
    let end = |i: usize| match fields.get(i) {
        Some((at, _)) => Err((at + 1, "unexpected text at the end of the line".to_string())),
        None => Ok(()),
    };
    let kind = match kind {
        "dir" => {
            end(4)?;
            Kind::Dir
        }
        "bin" => {
            let (_, size) = size(4)?;
            end(5)?;
            Kind::Binary { size }
        }
        "text" => {
            let (sat, want) = size(4)?;
            let (qat, _) = field(5, "quoted contents")?;
            let data = unquote(line, qat)?;
            if data.len() as u64 != want {
                return Err((
                    sat + 1,
                    format!("size {want} but the contents hold {} bytes", data.len()),
                ));
            }
            Kind::Text(data)
        }
        "link" => {
            let (aat, arrow) = field(4, "`->`")?;
            if arrow != "->" {
                return Err((
                    aat + 1,
                    format!("{arrow}: expected `->` and the link target"),
                ));
            }
            let (tat, _) = field(5, "link target")?;
            let target = line.get(tat..).unwrap_or("");
            Kind::Symlink(target.to_string())
        }
        other => {
            return Err((
                kat + 1,
                format!("{other}: unknown type (dir, bin, text, link)"),
            ))
        }
    };
    Ok((
        path.to_string(),
        Item {
            kind,
            mode,
            uid,
            gid,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_manifest_parses_and_renders_to_itself() {
        let m = Manifest::default_image().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.render(), DEFAULT_MANIFEST);
        // What the sim's guest and the issue rely on.
        let text = |p: &str| match m.items.get(p).map(|i| &i.kind) {
            Some(Kind::Text(d)) => String::from_utf8_lossy(d).into_owned(),
            other => panic!("{p}: {other:?}"),
        };
        assert!(text("/etc/passwd").starts_with("root:x:0:0:root:/root:/bin/sh\n"));
        assert!(text("/etc/group").starts_with("root:x:0:\n"));
        assert_eq!(text("/etc/hostname"), "(none)\n");
        assert!(text("/init").starts_with("#!/bin/sh\n"));
        assert!(matches!(
            m.items.get("/bin/sh").map(|i| &i.kind),
            Some(Kind::Symlink(t)) if t == "/bin/busybox"
        ));
        assert!(matches!(
            m.items.get("/usr/sbin/arping").map(|i| &i.kind),
            Some(Kind::Binary { .. })
        ));
        assert!(m.items.contains_key("/lost+found"));
    }

    #[test]
    fn quoting_round_trips() {
        for data in ["", "a\"b\\c\n\td\x01\x7f é"] {
            let q = quote(data.as_bytes());
            let line = format!("/f text 0644 0:0 {} {q}", data.len());
            let (_, item) = parse_line(&line).unwrap_or_else(|e| panic!("{line}: {e:?}"));
            assert_eq!(item.kind, Kind::Text(data.as_bytes().to_vec()));
        }
    }

    #[test]
    fn bad_lines_are_refused_with_a_caret() {
        let cases = [
            ("/a dir 755 0:0", 8, "four octal digits"),
            ("/a file 0755 0:0", 4, "unknown type"),
            ("/a text 0644 0:0 3 \"ab\"", 18, "contents hold 2 bytes"),
            ("/a text 0644 0:0 2 \"ab", 23, "unterminated"),
            ("/a link 0777 0:0 /b", 18, "expected `->`"),
            ("a dir 0755 0:0", 1, "absolute path"),
            ("/a dir 0755 0:x", 13, "UID:GID"),
            ("/a dir 0755 0:0 9", 17, "unexpected text"),
        ];
        for (line, column, msg) in cases {
            let text = format!("# header\n{line}\n");
            let err = Manifest::parse(&text, Path::new("m")).unwrap_err();
            let shown = err.to_string();
            assert!(
                shown.starts_with(&format!("m:2:{column}: ")),
                "{line}: {shown}"
            );
            assert!(shown.contains(msg), "{line}: {shown}");
            assert!(
                shown.ends_with(&format!("{line}\n{:>column$}", "^")),
                "{shown}"
            );
        }
        let err = Manifest::parse("/b dir 0755 0:0\n/a dir 0755 0:0\n", Path::new("m"));
        assert!(err.is_err_and(|e| e.to_string().contains("out of order")));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC*") {
            let _ = Manifest::parse(&text, Path::new("m"));
        }

        #[test]
        fn text_contents_round_trip(data in "[^\\x00]{0,200}", mode in 0u32..0o7777) {
            let mut m = Manifest::default();
            m.items.insert(
                "/f".into(),
                Item { kind: Kind::Text(data.clone().into_bytes()), mode, uid: 0, gid: 0 },
            );
            let back = Manifest::parse(&m.render(), Path::new("m"));
            proptest::prop_assert_eq!(back.ok(), Some(m));
        }
    }

    #[test]
    fn differences_leave_out_binary_sizes_when_asked() {
        let parse = |t: &str| Manifest::parse(t, Path::new("m")).unwrap_or_else(|e| panic!("{e}"));
        let a = parse("/a bin 0755 0:0 10\n/b dir 0755 0:0\n");
        let b = parse("/a bin 0755 0:0 11\n/c dir 0755 0:0\n");
        assert_eq!(
            a.differences(&b, false),
            vec!["-/b dir 0755 0:0", "+/c dir 0755 0:0"]
        );
        assert_eq!(a.differences(&b, true).len(), 4);
        assert!(a.differences(&a, true).is_empty());
    }
}
