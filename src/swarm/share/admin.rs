//! The share's one-shot juicefs commands: `status` (bounded by a timeout:
//! a metadata engine that does not answer makes juicefs wait for minutes),
//! `format` and `check`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{
    ShareConfig, ShareError, Volume, is_volume_root, juicefs, juicefs_cmd, tail, var, verr,
};

/// `juicefs status`: the volume's settings, or why it cannot be read.
pub fn status(v: &Volume, timeout: Duration) -> Result<serde_json::Value, ShareError> {
    let mut cmd = juicefs_cmd(v);
    cmd.args(["status", "--no-color"]).arg(&v.meta_url);
    let o = bounded(cmd, timeout)
        .map_err(|e| verr(v, format!("cannot run {}: {e}", juicefs().display())))?;
    let pw = v.password.as_ref().map_or("", |p| p.0.as_str());
    let Some(o) = o else {
        return Err(verr(
            v,
            format!(
                "metadata at {} did not answer within {timeout:?} (is the database up and reachable from here?)",
                v.meta_url
            ),
        ));
    };
    if !o.status.success() {
        return Err(verr(
            v,
            format!(
                "metadata at {} not readable: {} (is the URL right, the password {} set, the database up?)",
                v.meta_url,
                tail(&o.stderr, &[pw]),
                var(v.var, "META_PASSWORD")
            ),
        ));
    }
    serde_json::from_slice(&o.stdout)
        .map_err(|e| verr(v, format!("juicefs status gave no JSON: {e}")))
}

/// Runs `cmd` to its end or until `timeout` (then kills it: None). The
/// output is read on threads so a full pipe cannot stall the command.
/// The wait is for this one child's pid, not waitpid(-1): on the PID-1 path
/// (a failed mount's diagnosis) it runs on the loop's own thread, so the
/// reaper cannot race it, and it never collects anyone else's exit.
fn bounded(
    mut cmd: std::process::Command,
    timeout: Duration,
) -> std::io::Result<Option<std::process::Output>> {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let pipes = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .map(|p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    });
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let [out, err] = pipes.map(|h| h.join().unwrap_or_default());
    Ok(status.map(|status| std::process::Output {
        status,
        stdout: out,
        stderr: err,
    }))
}

/// What `share format` did to one volume.
#[derive(Debug, PartialEq, Eq)]
pub enum Formatted {
    Created,
    AlreadyFormatted,
}

/// Formats volume `v` (once: an existing volume is checked, not touched)
/// with trash off, then sets its root's group and mode (2770, setgid) in a
/// mount of its own at a temporary mount point.
pub fn format(
    v: &Volume,
    env: &dyn Fn(&str) -> Option<String>,
    timeout: Duration,
) -> Result<Formatted, ShareError> {
    if let Ok(st) = status(v, timeout) {
        // With trash on, a write-temp-and-rename from another Machine is
        // read stale and locked updates get lost (SWARM_SHARE_FACTS).
        let trash = st["Setting"]["TrashDays"].as_i64().unwrap_or(-1);
        if trash != 0 {
            return Err(verr(
                v,
                format!(
                    "formatted with trash days {trash}; run `juicefs config {} --trash-days 0` (renames from other Machines are read stale with trash on)",
                    v.meta_url
                ),
            ));
        }
        set_root(v, timeout)?;
        return Ok(Formatted::AlreadyFormatted);
    }
    let need = |what: &str| {
        env(&var(v.var, what)).ok_or_else(|| {
            verr(
                v,
                format!(
                    "not formatted, and {} is not set (format needs the bucket URL and its keys)",
                    var(v.var, what)
                ),
            )
        })
    };
    let (bucket, access, secret) = (need("BUCKET")?, need("ACCESS_KEY")?, need("SECRET_KEY")?);
    let o = juicefs_cmd(v)
        .env("ACCESS_KEY", &access)
        .env("SECRET_KEY", &secret)
        .args(["format", "--no-update", "--storage", "s3", "--bucket"])
        .arg(&bucket)
        .args(["--trash-days", "0"])
        .arg(&v.meta_url)
        .arg(v.name)
        .output()
        .map_err(|e| verr(v, format!("cannot run juicefs format: {e}")))?;
    if !o.status.success() {
        let pw = v.password.as_ref().map_or("", |p| p.0.as_str());
        return Err(verr(
            v,
            format!(
                "juicefs format failed: {}",
                tail(&o.stderr, &[pw, &access, &secret])
            ),
        ));
    }
    set_root(v, timeout)?;
    Ok(Formatted::Created)
}

/// Mounts `v` at a fresh temporary directory, gives its root the volume's
/// group and mode 2770, and unmounts (SIGTERM to the foreground mount).
fn set_root(v: &Volume, timeout: Duration) -> Result<(), ShareError> {
    use std::os::unix::fs::PermissionsExt;
    let point = tempfile::Builder::new()
        .prefix(&format!(".mybuddy-format-{}-", v.name))
        .tempdir()
        .map_err(|e| verr(v, format!("cannot make a temporary mount point: {e}")))?;
    let mut child = juicefs_cmd(v)
        .args(["mount", "--no-usage-report", "--no-syslog"])
        .arg(&v.meta_url)
        .arg(point.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| verr(v, format!("cannot run juicefs mount: {e}")))?;
    let start = Instant::now();
    let mounted = loop {
        if is_volume_root(point.path()) {
            break true;
        }
        if start.elapsed() > timeout || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let result = if mounted {
        std::os::unix::fs::chown(point.path(), Some(0), Some(v.gid))
            .and_then(|()| {
                std::fs::set_permissions(point.path(), std::fs::Permissions::from_mode(0o2770))
            })
            .map_err(|e| verr(v, format!("cannot set the root's group and mode: {e}")))
    } else {
        Err(verr(
            v,
            format!("did not mount within {timeout:?} to set its root"),
        ))
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let end = Instant::now() + timeout;
    while child.try_wait().ok().flatten().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// One volume's health, for `share check`.
#[derive(Debug, serde::Serialize)]
pub struct Health {
    pub volume: String,
    pub mount_point: PathBuf,
    pub mounted: bool,
    /// Whether its metadata answered, and what it said (or why not).
    pub metadata_ok: bool,
    pub metadata: String,
}

/// `share check`: is each configured volume mounted at its place under
/// `swarm`, and does its metadata answer.
pub fn check(cfg: &ShareConfig, swarm: &Path, timeout: Duration) -> Vec<Health> {
    cfg.volumes
        .iter()
        .map(|v| {
            let point = swarm.join(v.name);
            let (metadata_ok, metadata) = match status(v, timeout) {
                Ok(s) => (
                    true,
                    format!(
                        "{} sessions",
                        s["Sessions"].as_array().map_or(0, |a| a.len())
                    ),
                ),
                Err(e) => (false, e.to_string()),
            };
            Health {
                volume: v.name.to_string(),
                mounted: is_volume_root(&point),
                mount_point: point,
                metadata_ok,
                metadata,
            }
        })
        .collect()
}
