//! Resonate: an announcement to the whole swarm, a file in
//! `mybuddybook/announcements/` with a machine-readable JSON header and a
//! human-readable text, written atomically so readers never see half of one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::config::jsonfile;
use crate::swarm::Paths;
use crate::swarm::registry;

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
    let dir = Paths::new(swarm).announcements();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ResonateError::Io { path, source }
    };
    fs::create_dir_all(&dir).map_err(io(&dir))?;
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
    let path = dir.join(name);
    let body = format!(
        "---\n{}\n---\n{text}\n",
        serde_json::to_string(&header).unwrap_or_default()
    );
    jsonfile::write_atomic(&path, body.as_bytes(), 0o660).map_err(io(&path))?;
    Ok(path)
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
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o660)
        .open(&path)
        .map_err(|source| ResonateError::Io {
            path: path.clone(),
            source,
        })?;
    // One write of one line: O_APPEND keeps concurrent lines whole.
    f.write_all(format!("- {} {line}\n", registry::now_rfc3339()).as_bytes())
        .map_err(|source| ResonateError::Io { path, source })
}
