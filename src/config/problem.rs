//! A list of problems found in the user's input, reported all at once.
//!
//! Render, policy and check-config all collect problems instead of stopping at
//! the first one: an operator fixing a Buddy wants the whole list in one go.
//! A problem names the file and the place inside it (a JSON path such as
//! `channels.whatsapp.allowFrom[0]`, or `line 3 column 5`) and never carries a
//! secret value.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub file: PathBuf,
    /// JSON path, `line N column M`, or empty when the whole file is meant.
    pub location: String,
    pub message: String,
}

impl Problem {
    pub fn new(file: &Path, location: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            file: file.to_path_buf(),
            location: location.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.location,
                self.message
            )
        }
    }
}

/// Several problems, shown one per line under a one-line headline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems {
    pub headline: String,
    pub items: Vec<Problem>,
}

impl Problems {
    pub fn new(headline: impl Into<String>, items: Vec<Problem>) -> Self {
        Problems {
            headline: headline.into(),
            items,
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.items.len();
        write!(
            f,
            "{} ({} problem{}):",
            self.headline,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.items {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// JSON path segments, rendered the way Clawdbot names config paths
/// (`a.b[0].c`), so our messages and the gateway's point at the same place.
pub fn json_path(segments: &[PathSeg]) -> String {
    let mut out = String::new();
    for seg in segments {
        match seg {
            PathSeg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathSeg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    if out.is_empty() {
        out.push_str("(root)");
    }
    out
}

/// The inverse of [`json_path`]: `a.b[0].c` -> segments.
pub fn parse_json_path(path: &str) -> Vec<PathSeg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(PathSeg::Key(key.to_string()));
        }
        while let Some(end) = rest.find(']') {
            // A key may itself hold `]`: a bracket pair that is not an
            // index is skipped, never sliced past.
            if let Some(Ok(i)) = rest.get(1..end).map(str::parse) {
                out.push(PathSeg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}
