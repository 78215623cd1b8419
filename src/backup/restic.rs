//! The one boundary to restic, the backup tool.
//!
//! Why restic (measured, see docs/BENCHMARKS.md and docs/operations.md): it
//! encrypts (AES-256-CTR + Poly1305 under the repository's key) and
//! deduplicates (content-defined chunks: a 2 MB SQLite file with one page
//! changed adds kilobytes, not megabytes), keeps snapshots by time (so
//! "restore as of" is a lookup), writes a snapshot only after its data (a
//! backup cut short is invisible, never half a snapshot), and checks what
//! it restores (`--verify`). rclone's crypt remote encrypts but neither
//! deduplicates nor keeps snapshots; Litestream 0.5 no longer encrypts.
//!
//! Its key and the bucket's key reach restic through an environment built
//! from nothing (`RESTIC_PASSWORD`, `AWS_*`), never a command line, and
//! nothing of what it prints is shown without the secrets taken out.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Settings;
use crate::config::secrets::REDACTED;

#[derive(Debug, thiserror::Error)]
pub enum ResticError {
    #[error("cannot run {program}: {source} (is restic installed? MYBUDDY_RESTIC names it)")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("restic {what} did not finish within {secs} s; stopped")]
    Timeout { what: String, secs: u64 },
    #[error("restic {what} was stopped: the supervisor is stopping")]
    Stopped { what: String },
    #[error("restic {what} failed ({status}): {message}")]
    Failed {
        what: String,
        status: String,
        message: String,
    },
    #[error("restic {what}: unexpected output: {message}")]
    Output { what: String, message: String },
}

impl ResticError {
    /// The repository is not there yet (and the storage answered).
    pub fn no_repository(&self) -> bool {
        matches!(self, ResticError::Failed { message, .. }
            if message.contains("Is there a repository at the following location?")
                && !message.contains("Access Denied")
                && !message.contains("connection refused")
                && !message.contains("timeout"))
    }
}

/// One snapshot, as `restic snapshots --json` gives it.
#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    pub time: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Snapshot {
    /// Its time, to the second (restic writes RFC 3339 with nanoseconds and
    /// the host's offset).
    pub fn at(&self) -> Option<std::time::SystemTime> {
        let t = self.time.trim();
        let n = t.len();
        let (base, offset) = if let Some(b) = t.strip_suffix('Z') {
            (b, 0i64)
        } else if n > 6 && t.is_char_boundary(n - 6) && matches!(&t[n - 6..n - 5], "+" | "-") {
            let (h, m) = t[n - 5..].split_once(':')?;
            let secs = h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60;
            (
                &t[..n - 6],
                if &t[n - 6..n - 5] == "-" { -secs } else { secs },
            )
        } else {
            (t, 0)
        };
        let whole = base.split('.').next()?;
        let local = humantime::parse_rfc3339(&format!("{whole}Z")).ok()?;
        let shift = Duration::from_secs(offset.unsigned_abs());
        Some(if offset >= 0 {
            local - shift
        } else {
            local + shift
        })
    }
}

/// What `restic backup --json` reports at its end.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub snapshot_id: String,
    #[serde(default)]
    pub files_new: u64,
    #[serde(default)]
    pub files_changed: u64,
    #[serde(default)]
    pub total_files_processed: u64,
    #[serde(default)]
    pub total_bytes_processed: u64,
    #[serde(default)]
    pub data_added: u64,
}

pub struct Restic<'a> {
    s: &'a Settings,
    /// Checked between waits: a stop of the supervisor ends restic.
    stop: &'a dyn Fn() -> bool,
}

impl<'a> Restic<'a> {
    pub fn new(s: &'a Settings, stop: &'a dyn Fn() -> bool) -> Self {
        Restic { s, stop }
    }

    fn command(&self, args: &[&str], cwd: Option<&Path>) -> Command {
        let mut c = Command::new(&self.s.restic);
        c.args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.s.cache)
            .env("TMPDIR", self.s.cache.join("tmp"))
            .env("RESTIC_CACHE_DIR", self.s.cache.join("restic"))
            .env("RESTIC_REPOSITORY", &self.s.repository)
            .env("RESTIC_PASSWORD", &self.s.password.0)
            .env("AWS_ACCESS_KEY_ID", &self.s.access_key.0)
            .env("AWS_SECRET_ACCESS_KEY", &self.s.secret_key.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // In the caller's process group: the supervisor's stop (a
            // signal to the cycle's group) reaches restic too.
            .stderr(Stdio::piped());
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        c
    }

    /// Runs restic to its end within `limit`; its stdout.
    pub fn run(
        &self,
        args: &[&str],
        cwd: Option<&Path>,
        limit: Duration,
    ) -> Result<Vec<u8>, ResticError> {
        let what = args.first().copied().unwrap_or_default().to_string();
        for d in ["tmp", "restic"] {
            let _ = std::fs::create_dir_all(self.s.cache.join(d));
        }
        let mut child = self
            .command(args, cwd)
            .spawn()
            .map_err(|source| ResticError::Spawn {
                program: self.s.restic.clone(),
                source,
            })?;
        let reader = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let out = reader(Box::new(child.stdout.take().expect("piped")));
        let err = reader(Box::new(child.stderr.take().expect("piped")));
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait().ok().flatten() {
                break st;
            }
            let (timed_out, stopped) = (Instant::now() >= deadline, (self.stop)());
            if timed_out || stopped {
                let _ = child.kill();
                let _ = child.wait();
                return Err(if stopped {
                    ResticError::Stopped { what }
                } else {
                    ResticError::Timeout {
                        what,
                        secs: limit.as_secs(),
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            return Err(ResticError::Failed {
                what,
                status: status.to_string(),
                message: self.redact(&last_lines(&String::from_utf8_lossy(&stderr), 6)),
            });
        }
        Ok(stdout)
    }

    /// Secrets taken out of what restic said (it should never print them;
    /// this holds if it ever does).
    pub fn redact(&self, text: &str) -> String {
        let mut t = text.to_string();
        for s in [&self.s.password, &self.s.access_key, &self.s.secret_key] {
            if s.0.len() >= 4 {
                t = t.replace(&s.0, REDACTED);
            }
        }
        t
    }

    /// Makes the repository if its prefix holds none (a Buddy's first
    /// backup). Storage that does not answer is an error, never a reason to
    /// make a new repository.
    pub fn ensure_repository(&self, limit: Duration) -> Result<bool, ResticError> {
        match self.run(&["cat", "config", "--no-lock"], None, limit) {
            Ok(_) => Ok(false),
            Err(e) if e.no_repository() => {
                self.run(&["init"], None, limit)?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Every snapshot, oldest first (none where no repository was made
    /// yet: a Buddy that never backed up).
    pub fn snapshots(&self, limit: Duration) -> Result<Vec<Snapshot>, ResticError> {
        let out = match self.run(&["snapshots", "--json", "--no-lock"], None, limit) {
            Err(e) if e.no_repository() => return Ok(Vec::new()),
            r => r?,
        };
        let mut v: Vec<Snapshot> =
            serde_json::from_slice(&out).map_err(|e| ResticError::Output {
                what: "snapshots".into(),
                message: e.to_string(),
            })?;
        v.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(v)
    }

    /// `restic backup` of `targets` (relative to `cwd`) without `excludes`.
    pub fn backup(
        &self,
        cwd: &Path,
        targets: &[&str],
        exclude_file: &Path,
        host: &str,
        limit: Duration,
    ) -> Result<Summary, ResticError> {
        let ex = exclude_file.display().to_string();
        let mut args = vec![
            "backup",
            "--json",
            "--quiet",
            "--host",
            host,
            "--tag",
            "mybuddy",
            "--exclude-file",
            &ex,
        ];
        args.extend_from_slice(targets);
        let out = self.run(&args, Some(cwd), limit)?;
        let text = String::from_utf8_lossy(&out);
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message_type"] == "summary")
            .filter_map(|v| serde_json::from_value::<Summary>(v).ok())
            .next_back()
            .ok_or_else(|| ResticError::Output {
                what: "backup".into(),
                message: "no summary".into(),
            })
    }

    /// Restores snapshot `id` under `target`, every file read back and
    /// checked against the repository (`--verify`).
    pub fn restore(&self, id: &str, target: &Path, limit: Duration) -> Result<(), ResticError> {
        let t = target.display().to_string();
        let out = self.run(
            &["restore", id, "--target", &t, "--verify", "--no-lock"],
            None,
            limit,
        )?;
        // restic 0.14 reports verification errors on its output and may
        // still exit 0 for some of them.
        let said = String::from_utf8_lossy(&out);
        if said.contains("error") || said.contains("Error") {
            return Err(ResticError::Failed {
                what: "restore".into(),
                status: "verify".into(),
                message: self.redact(&last_lines(&said, 6)),
            });
        }
        Ok(())
    }

    /// Keeps what a Human could want back (every snapshot of the last two
    /// hours, then hourly for two days, daily for a month, weekly for a
    /// quarter) and frees the rest.
    pub fn forget_and_prune(&self, limit: Duration) -> Result<(), ResticError> {
        self.run(&["unlock"], None, limit)?;
        self.run(
            &[
                "forget",
                "--prune",
                "--quiet",
                "--keep-within",
                "2h",
                "--keep-hourly",
                "48",
                "--keep-daily",
                "31",
                "--keep-weekly",
                "13",
            ],
            None,
            limit,
        )
        .map(|_| ())
    }
}

/// What restic said about why: its `Fatal:`/`panic:`/error lines (a Go
/// panic ends with a stack trace that says nothing to an operator), else
/// its last `n` lines.
fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let why: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            let l = l.trim_start();
            [
                "Fatal",
                "panic:",
                "error",
                "Error",
                "Is there a repository",
                "s3:",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .take(n)
        .collect();
    if why.is_empty() {
        lines[lines.len().saturating_sub(n)..].join("\n")
    } else {
        why.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_panic_is_said_by_its_reason_not_its_stack() {
        let said = "panic: write /var/cache/mybuddy-backup/tmp/restic-temp-pack-1: no space left on device\n\ngoroutine 52 [running]:\ngithub.com/restic/restic/internal/archiver.NewTreeSaver.func1()\n\tgithub.com/restic/restic/internal/archiver/tree_saver.go:32 +0x29\n";
        assert_eq!(
            last_lines(said, 6),
            "panic: write /var/cache/mybuddy-backup/tmp/restic-temp-pack-1: no space left on device"
        );
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
    }

    #[test]
    fn snapshot_times_with_nanoseconds_and_offsets() {
        let s = |t: &str| Snapshot {
            id: "x".into(),
            short_id: "x".into(),
            time: t.into(),
            hostname: String::new(),
            tags: vec![],
        };
        let utc = s("2026-12-06T03:16:40.972469462Z").at().unwrap();
        let plus = s("2026-12-06T04:16:40.972469462+01:00").at().unwrap();
        assert_eq!(utc, plus);
        let want = humantime::parse_rfc3339("2026-12-06T03:16:40Z").unwrap();
        assert!(utc.duration_since(want).unwrap() < Duration::from_secs(1));
    }
}
