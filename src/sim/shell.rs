//! The guest shell's grammar, as far as labs use it: lists joined by `;`,
//! `&&`, `||` and newlines, words with `'…'`/`"…"` quoting and backslash
//! escapes, `$?`, and redirections (`>`, `>>`, `2>&1`, `2>FILE`).
//!
//! Parsing happens once per command; `$?` is expanded when each part runs.

use thiserror::Error;

/// A syntax error, with the byte offset in the command where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShellError {
    #[error("syntax error: unterminated quoted string (opened at byte {at})")]
    Unterminated { at: usize },
    #[error("syntax error: unexpected \"{token}\" at byte {at}")]
    Unexpected { token: String, at: usize },
    #[error("syntax error: redirection without a file name at byte {at}")]
    MissingTarget { at: usize },
}

impl ShellError {
    /// The message as busybox ash prints it (`sh: syntax error: ...`).
    pub fn ash_message(&self) -> String {
        match self {
            ShellError::Unterminated { .. } => {
                "sh: syntax error: unterminated quoted string\n".into()
            }
            ShellError::Unexpected { token, .. } => {
                format!("sh: syntax error: unexpected \"{token}\"\n")
            }
            ShellError::MissingTarget { .. } => "sh: syntax error: unexpected newline\n".into(),
        }
    }
}

/// How a list element is joined to the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// First element, `;` or newline: always runs.
    Always,
    /// `&&`: runs if the previous status is 0.
    And,
    /// `||`: runs if the previous status is not 0.
    Or,
}

/// Where a stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Console,
    Null,
    File {
        path: String,
        append: bool,
    },
    /// `2>&1`: stderr follows stdout.
    Stdout,
}

/// One word: text with `$?` kept as a marker until it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Status,
}

impl Word {
    /// The word with `$?` replaced by `status`.
    pub fn expand(&self, status: i32) -> String {
        let mut s = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => s.push_str(t),
                Piece::Status => s.push_str(&status.to_string()),
            }
        }
        s
    }
}

/// A simple command with its redirections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simple {
    pub join: Join,
    pub words: Vec<Word>,
    pub stdout: Target,
    pub stderr: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(Word),
    Semi,
    And,
    Or,
    /// `>`/`>>` with the fd (1 or 2); the target follows as a word or `&1`.
    Redirect {
        fd: u8,
        append: bool,
        dup: Option<u8>,
    },
}

fn tokenize(src: &str) -> Result<Vec<(Tok, usize)>, ShellError> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' => i += 1,
            b'\n' | b';' => {
                toks.push((Tok::Semi, i));
                i += 1;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'&' if b.get(i + 1) == Some(&b'&') => {
                toks.push((Tok::And, i));
                i += 2;
            }
            b'|' if b.get(i + 1) == Some(&b'|') => {
                toks.push((Tok::Or, i));
                i += 2;
            }
            b'&' | b'|' | b'(' | b')' | b'<' => {
                return Err(ShellError::Unexpected {
                    token: (c as char).to_string(),
                    at: i,
                })
            }
            b'>' => {
                let (tok, len) = redirect(b, i, 1);
                toks.push((tok, i));
                i += len;
            }
            b'1' | b'2' if b.get(i + 1) == Some(&b'>') && starts_word(b, i) => {
                let (tok, len) = redirect(b, i + 1, c - b'0');
                toks.push((tok, i));
                i += 1 + len;
            }
            _ => {
                let start = i;
                let mut pieces: Vec<Piece> = Vec::new();
                let mut text = String::new();
                let flush = |text: &mut String, pieces: &mut Vec<Piece>| {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(text)));
                    }
                };
                while i < b.len()
                    && !matches!(b[i], b' ' | b'\t' | b'\n' | b';' | b'>' | b'<')
                    && !(b[i] == b'&' || b[i] == b'|')
                {
                    match b[i] {
                        b'\'' => {
                            let open = i;
                            let end = src[i + 1..]
                                .find('\'')
                                .ok_or(ShellError::Unterminated { at: open })?;
                            text.push_str(&src[i + 1..i + 1 + end]);
                            i += end + 2;
                        }
                        b'"' => {
                            let open = i;
                            i += 1;
                            loop {
                                match b.get(i) {
                                    None => return Err(ShellError::Unterminated { at: open }),
                                    Some(b'"') => {
                                        i += 1;
                                        break;
                                    }
                                    Some(b'\\')
                                        if matches!(b.get(i + 1), Some(b'"' | b'\\' | b'$')) =>
                                    {
                                        text.push(b[i + 1] as char);
                                        i += 2;
                                    }
                                    Some(b'$') if b.get(i + 1) == Some(&b'?') => {
                                        flush(&mut text, &mut pieces);
                                        pieces.push(Piece::Status);
                                        i += 2;
                                    }
                                    Some(_) => {
                                        let ch = src[i..].chars().next().unwrap_or(' ');
                                        text.push(ch);
                                        i += ch.len_utf8();
                                    }
                                }
                            }
                        }
                        b'\\' => {
                            if let Some(ch) = src.get(i + 1..).and_then(|r| r.chars().next()) {
                                if ch != '\n' {
                                    text.push(ch);
                                }
                                i += 1 + ch.len_utf8();
                            } else {
                                i += 1;
                            }
                        }
                        b'$' if b.get(i + 1) == Some(&b'?') => {
                            flush(&mut text, &mut pieces);
                            pieces.push(Piece::Status);
                            i += 2;
                        }
                        _ => {
                            let ch = src[i..].chars().next().unwrap_or(' ');
                            text.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                flush(&mut text, &mut pieces);
                if pieces.is_empty() {
                    // `''` is an empty word.
                    pieces.push(Piece::Text(String::new()));
                }
                toks.push((Tok::Word(Word(pieces)), start));
            }
        }
    }
    Ok(toks)
}

fn starts_word(b: &[u8], i: usize) -> bool {
    i == 0 || matches!(b[i - 1], b' ' | b'\t' | b'\n' | b';')
}

/// `>`, `>>`, `>&1` starting at `b[i] == b'>'`; returns the token and its length.
fn redirect(b: &[u8], i: usize, fd: u8) -> (Tok, usize) {
    let append = b.get(i + 1) == Some(&b'>');
    let mut len = if append { 2 } else { 1 };
    let mut dup = None;
    if b.get(i + len) == Some(&b'&') {
        if let Some(d @ (b'1' | b'2')) = b.get(i + len + 1) {
            dup = Some(d - b'0');
            len += 2;
        }
    }
    (Tok::Redirect { fd, append, dup }, len)
}

/// Parses a command line into its list of simple commands.
pub fn parse(src: &str) -> Result<Vec<Simple>, ShellError> {
    let toks = tokenize(src)?;
    let mut out: Vec<Simple> = Vec::new();
    let mut cur = Simple {
        join: Join::Always,
        words: Vec::new(),
        stdout: Target::Console,
        stderr: Target::Console,
    };
    let mut next_join = Join::Always;
    let mut it = toks.into_iter().peekable();
    let mut started = false;
    while let Some((tok, at)) = it.next() {
        match tok {
            Tok::Word(w) => {
                if !started {
                    cur.join = next_join;
                    started = true;
                }
                cur.words.push(w);
            }
            Tok::Redirect { fd, append, dup } => {
                if !started {
                    cur.join = next_join;
                    started = true;
                }
                let target = match dup {
                    Some(1) => Target::Stdout,
                    Some(_) => Target::Console,
                    None => match it.next() {
                        Some((Tok::Word(w), _)) => {
                            let path = w.expand(0);
                            if path == "/dev/null" {
                                Target::Null
                            } else {
                                Target::File { path, append }
                            }
                        }
                        _ => return Err(ShellError::MissingTarget { at }),
                    },
                };
                if fd == 2 {
                    cur.stderr = target;
                } else {
                    cur.stdout = target;
                }
            }
            Tok::Semi | Tok::And | Tok::Or => {
                let join = match tok {
                    Tok::And => Join::And,
                    Tok::Or => Join::Or,
                    _ => Join::Always,
                };
                if !started {
                    // An empty element: a blank line is fine, a leading `;`,
                    // `&&` or `||` is the syntax error ash reports.
                    let newline = src.as_bytes().get(at) == Some(&b'\n');
                    if join != Join::Always || !newline {
                        let token = match join {
                            Join::And => "&&",
                            Join::Or => "||",
                            Join::Always => ";",
                        };
                        return Err(ShellError::Unexpected {
                            token: token.into(),
                            at,
                        });
                    }
                    continue;
                }
                out.push(std::mem::replace(
                    &mut cur,
                    Simple {
                        join: Join::Always,
                        words: Vec::new(),
                        stdout: Target::Console,
                        stderr: Target::Console,
                    },
                ));
                started = false;
                next_join = join;
            }
        }
    }
    if started {
        out.push(cur);
    } else if next_join != Join::Always {
        return Err(ShellError::Unexpected {
            token: "end of file".into(),
            at: src.len(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &Simple) -> Vec<String> {
        s.words.iter().map(|w| w.expand(7)).collect()
    }

    #[test]
    fn lists_quotes_status_and_redirections() {
        let l =
            parse("echo 'a  b' \"c $?\" d\\ e; false || echo x && cat f > /tmp/o 2>&1").unwrap();
        assert_eq!(l.len(), 4);
        assert_eq!(words(&l[0]), ["echo", "a  b", "c 7", "d e"]);
        assert_eq!(
            (l[1].join, l[2].join, l[3].join),
            (Join::Always, Join::Or, Join::And)
        );
        assert_eq!(
            l[3].stdout,
            Target::File {
                path: "/tmp/o".into(),
                append: false
            }
        );
        assert_eq!(l[3].stderr, Target::Stdout);
    }

    #[test]
    fn errors_name_the_offset() {
        assert_eq!(parse("echo 'x"), Err(ShellError::Unterminated { at: 5 }));
        assert!(matches!(parse("&& x"), Err(ShellError::Unexpected { .. })));
        assert!(matches!(
            parse("x >"),
            Err(ShellError::MissingTarget { at: 2 })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse(&s);
        }
    }
}
