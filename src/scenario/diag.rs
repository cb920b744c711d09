//! Scenario-file diagnostics: a message, the file, and a byte span rendered as
//! `file:line:column` plus the source line with a caret under the span, like a
//! compiler message.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One problem in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// Byte range in the file's text; `None` when the problem has no position
    /// (e.g. the file cannot be read).
    pub span: Option<Range<usize>>,
    pub message: String,
    /// Text of the file, kept to render the source line; shared, since a
    /// file with 50k bad steps would otherwise hold 50k copies of itself.
    source: Arc<str>,
}

impl Diagnostic {
    pub fn new(file: &Path, source: &str, span: Option<Range<usize>>, message: String) -> Self {
        Self::shared(file, Arc::from(source), span, message)
    }

    /// A diagnostic over a source text other diagnostics share.
    pub fn shared(
        file: &Path,
        source: Arc<str>,
        span: Option<Range<usize>>,
        message: String,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            span,
            message,
            source,
        }
    }

    /// 1-based (line, column) of the span start, columns counted in characters.
    pub fn line_column(&self) -> Option<(usize, usize)> {
        let span = self.span.as_ref()?;
        Some(line_column(&self.source, span.start))
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
pub fn line_column(text: &str, at: usize) -> (usize, usize) {
    let at = floor_char_boundary(text, at.min(text.len()));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..at].chars().count() + 1;
    (line, column)
}

/// 1-based line numbers of byte offsets, from one pass over the text: asking
/// [`line_column`] for every step of a 50k-step file made `check` quadratic.
pub struct LineIndex {
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    /// The 1-based line holding byte offset `at` (the same as [`line_column`]'s).
    pub fn line(&self, at: usize) -> usize {
        self.starts.partition_point(|&s| s <= at).max(1)
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

impl fmt::Display for Diagnostic {
    /// ```text
    /// error: unknown machine `h3`
    ///  --> scenarios/lab.toml:14:6
    ///    |
    /// 14 | on = "h3"
    ///    |      ^^^^
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        let Some(span) = &self.span else {
            return write!(f, " --> {}", self.file.display());
        };
        let start = floor_char_boundary(&self.source, span.start.min(self.source.len()));
        let (line, column) = line_column(&self.source, start);
        writeln!(f, " --> {}:{}:{}", self.file.display(), line, column)?;
        let line_start = self.source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.source[start..]
            .find('\n')
            .map_or(self.source.len(), |i| start + i);
        let text = self.source[line_start..line_end].trim_end_matches('\r');
        let end = floor_char_boundary(&self.source, span.end.clamp(start, line_end));
        let width = self.source[start..end].chars().count().max(1);
        let gutter = " ".repeat(line.to_string().len());
        writeln!(f, "{gutter} |")?;
        writeln!(f, "{line} | {text}")?;
        write!(
            f,
            "{gutter} | {}{}",
            " ".repeat(column - 1),
            "^".repeat(width)
        )
    }
}

/// Every problem found in one scenario file (resolution keeps going after the
/// first, so a user sees them all at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_agrees_with_line_column() {
        let text = "a\n\nbc\né\n";
        let index = LineIndex::new(text);
        for at in 0..=text.len() + 2 {
            assert_eq!(index.line(at), line_column(text, at).0, "offset {at}");
        }
    }

    #[test]
    fn caret_under_span() {
        let src = "[scenario]\nname = \"x\"\non = \"h3\"\n";
        let at = src.find("\"h3\"").unwrap_or(0);
        let d = Diagnostic::new(
            Path::new("lab.toml"),
            src,
            Some(at..at + 4),
            "unknown machine `h3`".into(),
        );
        assert_eq!(
            d.to_string(),
            "error: unknown machine `h3`\n --> lab.toml:3:6\n  |\n3 | on = \"h3\"\n  |      ^^^^"
        );
    }

    #[test]
    fn span_past_end_and_inside_multibyte_char_do_not_panic() {
        let src = "é = 1";
        let d = Diagnostic::new(Path::new("x"), src, Some(1..99), "m".into());
        assert!(d.to_string().contains("x:1:1"));
        #[allow(clippy::reversed_empty_ranges)]
        let d = Diagnostic::new(Path::new("x"), "", Some(5..3), "m".into());
        assert!(d.to_string().contains("x:1:1"));
    }
}
