//! Diagnostics: a problem found in a config file, located by line and column, rendered as
//! `FILE:LINE:COL: severity: message` (the form editors and CI annotate), and the [`Checker`]
//! every config section reports its problems to while it validates itself.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem found in a config file, located by 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub line: usize,
    pub col: usize,
    pub span: Range<usize>,
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at `span` of `source` (its line and column computed from the span's start).
    pub fn at(source: &str, span: Range<usize>, severity: Severity, message: String) -> Diagnostic {
        let (line, col) = line_col(source, span.start);
        Diagnostic {
            severity,
            line,
            col,
            span,
            message,
        }
    }

    /// `FILE:LINE:COL: error: message`, the form editors and CI annotate.
    pub fn render(&self, file: &str) -> String {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        format!("{file}:{}:{}: {sev}: {}", self.line, self.col, self.message)
    }
}

/// 1-based (line, column in characters) of byte offset `at` in `source`.
pub fn line_col(source: &str, at: usize) -> (usize, usize) {
    let at = at.min(source.len());
    let mut at = at;
    while !source.is_char_boundary(at) {
        at -= 1;
    }
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, source[line_start..at].chars().count() + 1)
}

/// Put diagnostics in file order, an error before a warning at the same place (stable: the
/// order they were found in breaks any other tie).
pub fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by_key(|d| (d.span.start, std::cmp::Reverse(d.severity)));
}

/// Collects diagnostics with their positions while a config is validated.
pub(crate) struct Checker<'a> {
    source: &'a str,
    diags: Vec<Diagnostic>,
    /// Key-values set aside after a schema error (already reported), with their keys.
    set_aside: Vec<(Range<usize>, String)>,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(source: &'a str) -> Checker<'a> {
        Checker {
            source,
            diags: Vec::new(),
            set_aside: Vec::new(),
        }
    }
    /// An error, unless it is about a key set aside within `span` (a missing `name` after
    /// `name = 5` was reported as a schema error says nothing new).
    pub(crate) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let message = message.into();
        let about_set_aside = self
            .set_aside
            .iter()
            .any(|(r, key)| span.start <= r.start && r.end <= span.end && message.contains(&format!("`{key}`")));
        if !about_set_aside {
            self.diags
                .push(Diagnostic::at(self.source, span, Severity::Error, message));
        }
    }
    /// The key-value `key` at `region` was set aside after a schema error: the later stages see
    /// it as missing, which is not a further error.
    pub(crate) fn set_aside(&mut self, region: Range<usize>, key: String) {
        self.set_aside.push((region, key));
    }
    pub(crate) fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags
            .push(Diagnostic::at(self.source, span, Severity::Warning, message.into()));
    }
    /// The line of byte offset `at` (for "first defined on line N").
    pub(crate) fn line_of(&self, at: usize) -> usize {
        line_col(self.source, at).0
    }
    /// How many errors so far (a section compares before and after itself).
    pub(crate) fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.severity == Severity::Error).count()
    }
    pub(crate) fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }
    /// Every diagnostic, in file order (see [`sort`]).
    pub(crate) fn finish(self) -> Vec<Diagnostic> {
        let mut diags = self.diags;
        sort(&mut diags);
        diags
    }
}
