//! Stale gateway locks. Clawdbot takes `$TMPDIR/clawdbot-<uid>/gateway.<hash>.lock`
//! (JSON: pid, createdAt, configPath, startTime) and, after a crash, the file
//! stays and can block the next start. Before each (re)start the supervisor
//! removes a lock whose owner is gone — pid dead, or pid reused by a process
//! with another start time — and never one held by a live owner.

use std::fs;
use std::path::{Path, PathBuf};

use crate::pid1::sys;

/// The lock directory the gateway will use for `uid` with `tmpdir` as TMPDIR.
pub fn lock_dir(tmpdir: &Path, uid: u32) -> PathBuf {
    tmpdir.join(format!("clawdbot-{uid}"))
}

/// Start time of a process in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), the same figure Clawdbot records.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and ')'; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Owner alive (same pid and start time): keep.
    Held(i32),
    /// Owner gone: removed.
    Removed { pid: Option<i32>, why: &'static str },
}

/// Decides about one lock file, removing it if its owner is gone.
pub fn clear_if_stale(path: &Path) -> std::io::Result<Verdict> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Verdict::Removed {
                pid: None,
                why: "already gone",
            });
        }
        Err(e) => return Err(e),
    };
    let payload: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let pid = payload
        .get("pid")
        .and_then(|p| p.as_i64())
        .and_then(|p| i32::try_from(p).ok());
    let recorded_start = payload.get("startTime").and_then(|s| s.as_u64());
    let why = match pid {
        None => "unreadable lock (no pid)",
        Some(p) if !sys::pid_alive(p) => "owner process is gone",
        Some(p) => match (recorded_start, start_time(p)) {
            (Some(rec), Some(now)) if rec != now => "pid reused by another process",
            _ => return Ok(Verdict::Held(p)),
        },
    };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(Verdict::Removed { pid, why })
}

/// Clears every stale `gateway.*.lock` in `dir`. Returns (path, verdict) for
/// each lock seen, for the log.
pub fn clear_stale(dir: &Path) -> Vec<(PathBuf, std::io::Result<Verdict>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("gateway.") && name.ends_with(".lock") {
            let path = e.path();
            let v = clear_if_stale(&path);
            out.push((path, v));
        }
    }
    out
}
