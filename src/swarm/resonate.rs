//! Resonate: an announcement to the whole swarm, a file in
//! `mybuddybook/announcements/` with a machine-readable JSON header and a
//! human-readable text, written atomically so readers never see half of one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::swarm::registry;
use crate::swarm::{BOOK, CHANGELOG, Paths, SPELLBOOK};
use crate::untrusted::Dir;

pub const MAX_MESSAGE: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum ResonateError {
    #[error("the message is empty: say something")]
    Empty,
    #[error("the message has {0} characters; at most {MAX_MESSAGE}")]
    TooLong(usize),
    #[error("{path}: {source} (is the swarm share mounted and writable?)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes one announcement and returns its path. `header` gains `from`, `at`
/// and `kind`; `text` is the human-readable part.
pub fn announce(
    swarm: &Path,
    from: &str,
    kind: &str,
    mut header: Value,
    text: &str,
) -> Result<PathBuf, ResonateError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ResonateError::Empty);
    }
    let n = text.chars().count();
    if n > MAX_MESSAGE {
        return Err(ResonateError::TooLong(n));
    }
    let shown = Paths::new(swarm).announcements();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ResonateError::Io { path, source }
    };
    // Through handles: a spell (root) announces here too, and every name
    // below the share's root is a gateway's to replace.
    let book = Dir::open(swarm)
        .and_then(|r| r.dir(BOOK))
        .map_err(io(&shown))?;
    let dir = match book.dir("announcements") {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => book
            .mkdir("announcements", super::DIR_MODE)
            .and_then(|_| book.dir("announcements"))
            .map_err(io(&shown))?,
        Err(e) => return Err(io(&shown)(e)),
    };
    let at = registry::now_rfc3339();
    if let Some(h) = header.as_object_mut() {
        h.insert("kind".into(), json!(kind));
        h.insert("from".into(), json!(from));
        h.insert("at".into(), json!(at));
    }
    // Sortable by time, unique per writer: timestamp, sender, a random tail.
    let stamp: String = at.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let tail = &crate::config::token::generate().unwrap_or_default()[..6];
    let name = format!("{stamp}-{}-{kind}-{tail}.md", from.to_lowercase());
    let path = shown.join(&name);
    let body = format!(
        "---\n{}\n---\n{text}\n",
        serde_json::to_string(&header).unwrap_or_default()
    );
    // Whole or not at all, and never over anything (the name is new).
    match dir.create_whole(&name, body.as_bytes(), 0o660) {
        Ok(true) => Ok(path),
        Ok(false) => Err(io(&path)(std::io::ErrorKind::AlreadyExists.into())),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Reads an announcement's header back (for tools and tests).
pub fn read_header(path: &Path) -> Option<Value> {
    let text = fs::read_to_string(path).ok()?;
    let rest = text.strip_prefix("---\n")?;
    let (json, _) = rest.split_once("\n---\n")?;
    serde_json::from_str(json).ok()
}

/// Appends one line to the SpellBook's changelog.
pub fn changelog(swarm: &Path, line: &str) -> Result<(), ResonateError> {
    let path = Paths::new(swarm).changelog();
    let mut f = Dir::open(swarm)
        .and_then(|r| r.dir(SPELLBOOK))
        .and_then(|sb| sb.open_append(CHANGELOG, 0o660))
        .map_err(|source| ResonateError::Io {
            path: path.clone(),
            source,
        })?;
    // One write of one line: O_APPEND keeps concurrent lines whole.
    f.write_all(format!("- {} {line}\n", registry::now_rfc3339()).as_bytes())
        .map_err(|source| ResonateError::Io { path, source })
}
