//! Reading JSON input files with errors that say file, line, column and what
//! was expected, and writing files atomically.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::config::problem::Problem;

/// Reads and parses a JSON file. The error is a [`Problem`] so callers can
/// collect it with others instead of stopping.
pub fn read_json(path: &Path) -> Result<Value, Problem> {
    let text = fs::read_to_string(path).map_err(|e| {
        Problem::new(
            path,
            "",
            format!("cannot read: {e} (check the path and its permissions)"),
        )
    })?;
    parse_json(path, &text)
}

pub fn parse_json(path: &Path, text: &str) -> Result<Value, Problem> {
    serde_json::from_str(text).map_err(|e| {
        // serde_json's Display appends "at line L column C"; we put the
        // position up front, where editors and CI annotations look for it.
        let msg = e.to_string();
        let what = msg
            .rsplit_once(" at line ")
            .map(|(m, _)| m.to_string())
            .unwrap_or(msg);
        Problem::new(
            path,
            format!("line {} column {}", e.line(), e.column()),
            format!("invalid JSON: {what}"),
        )
    })
}

/// Reads a JSON file that must hold an object.
pub fn read_json_object(path: &Path) -> Result<Value, Problem> {
    let v = read_json(path)?;
    if !v.is_object() {
        return Err(Problem::new(
            path,
            "(root)",
            format!(
                "expected a JSON object {{...}}, found {}",
                crate::config::jsonfile::kind(&v)
            ),
        ));
    }
    Ok(v)
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees either the old
/// file or the new one, never a torn one: temp file in the same directory,
/// fsync, rename over the target, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, bytes, mode, true)
}

/// The same atomic replace (a reader sees the old file or the new one) for a
/// file rebuilt from its sources at every boot, the rendered config: without
/// the two fsyncs (half of a render's time), since after a power cut the next
/// boot writes it again before anything reads it.
pub fn replace_derived(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, bytes, mode, false)
}

fn replace(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    // The umask may have narrowed the mode at creation; say it exactly.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if durable {
        // Without this the rename itself may not survive a power cut.
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
