//! Splitting one string into argv the way a POSIX shell does (`sh -c 'linux ...'`):
//! blanks separate words, single quotes keep everything literally, double quotes
//! keep blanks and honour `\` before `$`, `` ` ``, `"`, `\` and newline, and an
//! unquoted backslash quotes the next character (`\<newline>` is a line
//! continuation). No expansion of any kind is done: `$HOME`, `*` and `~` stay as
//! they are, which is what a scenario file means when it writes them.

use thiserror::Error;

/// Why a string could not be split into words.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SplitError {
    /// A `'` or `"` was opened at `offset` (a byte offset into the input) and
    /// never closed.
    #[error("unterminated {quote} quote opened at byte {offset}")]
    UnterminatedQuote { quote: char, offset: usize },
    /// The input ends with a lone backslash at `offset`, which escapes nothing.
    #[error("trailing backslash at byte {offset} escapes nothing")]
    TrailingBackslash { offset: usize },
}

impl SplitError {
    /// The byte offset into the input where the problem starts.
    pub fn offset(&self) -> usize {
        match self {
            SplitError::UnterminatedQuote { offset, .. } => *offset,
            SplitError::TrailingBackslash { offset } => *offset,
        }
    }
}

/// Splits `input` into words as a POSIX shell would (quotes and backslashes
/// honoured, no expansions). Empty quoted strings (`''`, `""`) are words.
pub fn split_shell_words(input: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word exists once any character or quote of it was seen (so `''` is a word).
    let mut in_word = false;
    let mut chars = input.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => match chars.next() {
                Some((_, '\n')) => {} // line continuation
                Some((_, next)) => {
                    word.push(next);
                    in_word = true;
                }
                None => return Err(SplitError::TrailingBackslash { offset: at }),
            },
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, inner)) => word.push(inner),
                        None => {
                            return Err(SplitError::UnterminatedQuote {
                                quote: '\'',
                                offset: at,
                            })
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.peek() {
                            Some(&(_, next @ ('$' | '`' | '"' | '\\'))) => {
                                word.push(next);
                                chars.next();
                            }
                            Some(&(_, '\n')) => {
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        Some((_, inner)) => word.push(inner),
                        None => {
                            return Err(SplitError::UnterminatedQuote {
                                quote: '"',
                                offset: at,
                            })
                        }
                    }
                }
            }
            other => {
                word.push(other);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Quotes `word` so that [`split_shell_words`] (and `sh`) gives it back unchanged.
pub fn quote_shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-+=,.:/@%^".contains(&b) || !b.is_ascii());
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        split_shell_words(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn splits_like_sh() {
        assert_eq!(split("  a  b\tc\n"), ["a", "b", "c"]);
        assert_eq!(split(r#"ubd2="a b" x"#), ["ubd2=a b", "x"]);
        assert_eq!(split(r#"'it''s' "\$x \a" \ y"#), ["its", r"$x \a", " y"]);
        assert_eq!(split(r#"Q1='"a b c"'"#), [r#"Q1="a b c""#]);
        assert_eq!(split("'' \"\""), ["", ""]);
        assert_eq!(split("a\\\nb"), ["ab"]);
        assert!(split("").is_empty());
    }

    #[test]
    fn reports_unterminated_quotes_with_offsets() {
        assert_eq!(
            split_shell_words("mem=64M ubd0='x"),
            Err(SplitError::UnterminatedQuote {
                quote: '\'',
                offset: 13
            })
        );
        assert_eq!(split_shell_words("a \"b").map_err(|e| e.offset()), Err(2));
        assert_eq!(
            split_shell_words("a\\"),
            Err(SplitError::TrailingBackslash { offset: 1 })
        );
    }

    #[test]
    fn quoting_round_trips() {
        for w in ["", "a b", "it's", "$x", "\\", "\"", "eth0=vde,sw,,5", "é"] {
            assert_eq!(split(&quote_shell_word(w)), [w]);
        }
    }
}
