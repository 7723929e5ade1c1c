//! A problem with a rule file, located in it: what compiling and linting rules report.

use std::fmt;
use std::path::PathBuf;

/// A problem with a rule file, located in it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    /// The problem `message` at byte `offset` of the file `file` whose text is `text`.
    pub(crate) fn at(file: &std::path::Path, text: &str, offset: usize, message: String) -> Self {
        let before = text.get(..offset.min(text.len())).unwrap_or(text);
        Diagnostic {
            file: file.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}
