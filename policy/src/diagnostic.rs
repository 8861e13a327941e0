//! What is said about a policy: [`Finding`]s with their [`Severity`], and the line numbers they
//! (and refusals) cite.
//!
//! The vocabulary shared by loading (warnings), parsing (line numbers), the lint and
//! `policy check`: it depends on nothing else in the crate but [`PolicyError`], which it can
//! turn into a finding.

use std::fmt;

use serde::Serialize;

use crate::error::PolicyError;

/// How much a finding matters. Ordered from most to least serious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy is refused ([`Finding::from_error`]);
    /// [`Policy::lint`](crate::Policy::lint) itself finds none, since a policy that loads is one
    /// the helper serves.
    Error,
    /// Probably not what the author meant, or grants something risky: look at it.
    Warning,
    /// Worth knowing; often intended.
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// One finding of the lint, or a load warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The policy file it is about.
    pub file: String,
    /// The line it is about; 0 when it is about the file (or the policy) as a whole.
    pub line: u32,
    /// The rule it is about, if one.
    pub rule: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl Finding {
    /// A refused policy as a finding (severity [`Severity::Error`]), so that `policy check` can
    /// print refusals and lint findings alike.
    pub fn from_error(error: &PolicyError) -> Finding {
        let file = error.file();
        let line = error.line().unwrap_or(0);
        let shown = error.to_string();
        let prefix = format!("{file}:{line}: ");
        let message = shown.strip_prefix(&prefix).unwrap_or(&shown).to_owned();
        Finding {
            severity: Severity::Error,
            file,
            line,
            rule: None,
            message,
        }
    }

    /// Where it points: `file:line`, or `file` when it is about the file (or the policy) as a
    /// whole.
    pub fn at(&self) -> String {
        match self.line {
            0 => self.file.clone(),
            line => format!("{}:{line}", self.file),
        }
    }
}

impl fmt::Display for Finding {
    /// `file:line: severity: message` (`file: ...` when the line is 0).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.at(), self.severity, self.message)
    }
}

/// The byte offset of each line's start in one text, so finding the line of an offset is a
/// binary search rather than a scan from the top (which made a large policy quadratic to load).
#[derive(Debug)]
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        let starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        LineIndex { starts }
    }

    /// The 1-based line holding byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> u32 {
        // The number of line starts at or before the offset is the 1-based line number.
        let line = self.starts.partition_point(|&start| start <= offset);
        u32::try_from(line).unwrap_or(u32::MAX)
    }
}

/// The 1-based line holding byte `offset` of `text`, for a single question about a text.
pub(crate) fn line_of(text: &str, offset: usize) -> u32 {
    let end = offset.min(text.len());
    let newlines = text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    u32::try_from(newlines + 1).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::{LineIndex, line_of};

    #[test]
    fn line_index_agrees_with_counting() {
        for text in ["", "a", "\n", "a\nb", "a\n\nb\n", "\n\n\n", "é\nü\n"] {
            let index = LineIndex::new(text);
            for offset in 0..=text.len() + 2 {
                assert_eq!(
                    index.line(offset),
                    line_of(text, offset),
                    "{text:?} at {offset}"
                );
            }
        }
    }
}
