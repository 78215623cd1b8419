//! The share's mounts as children of the supervisor: one `juicefs mount`
//! per volume, in the foreground, started by the boot's share step and owned
//! by the one reaper like the gateway.
//!
//! Each mount runs with `JFS_SUPERVISOR` set. Without it `juicefs mount` is
//! two processes: a watchdog that restarts its FUSE child when the child
//! dies or looks stuck, and the child. A restarted child silently drops every
//! lock taken through the old one (upstream juicedata/juicefs#7462), which is
//! exactly what the registry's lock-and-replace cannot survive unnoticed.
//! With it set, juicefs treats its parent (us) as the supervisor and runs as
//! the one serving process: when it dies we see the exit, stop the gateway,
//! remount, run the swarm step again and start the gateway (see
//! `pid1::supervise`'s share cycle).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::{Volume, is_volume_root, juicefs, var};
use crate::pid1::sys::{self, SpawnSpec};

/// The mount flags that keep cross-Machine semantics right
/// (SWARM_SHARE_FACTS): no kernel caches (with the default 1 s a
/// write-temp-and-rename from another Machine gave ENOENT or lost registry
/// updates), a 3 s heartbeat so a dead Machine's locks are freed in ~14 s,
/// hourly metadata backups into the bucket, no usage report, no syslog (our
/// stderr is the Machine's log), and juicefs's internal files hidden so the
/// swarm step's permission walk sees only the share.
pub const MOUNT_FLAGS: &[&str] = &[
    "--no-usage-report",
    "--no-syslog",
    "--attr-cache",
    "0",
    "--entry-cache",
    "0",
    "--dir-entry-cache",
    "0",
    "--heartbeat",
    "3s",
    "--backup-meta",
    "1h",
    "--hide-internal",
    "--cache-size",
    "256",
];

/// How long a stopped mount gets to unmount cleanly before SIGKILL (a clean
/// unmount takes ~0.1 s; a busy one retries and exits ~1.6 s after the last
/// user left).
pub const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(5);

struct Mount {
    volume: Volume,
    point: PathBuf,
    /// The running `juicefs mount`, if any.
    pid: Option<Pid>,
    started: Instant,
    ready: bool,
}

/// Where a round of mounting stands.
#[derive(Debug)]
pub enum Progress {
    Ready,
    Pending,
    /// One volume failed (the others may be up); the message says which and why.
    Failed(String),
}

/// Every configured volume's mount, under `<swarm>/<volume>`.
pub struct Mounts {
    mounts: Vec<Mount>,
    /// How long one mount may take to come up (some failures hang for minutes).
    timeout: Duration,
    /// The signal mask the supervisor was started with, for the children.
    mask: SigSet,
    /// Each volume's block cache goes in `<cache>/<volume>` (root's, never
    /// under the gateway's state: a gateway could rewrite cached blocks).
    cache: PathBuf,
}

impl Mounts {
    pub fn new(
        volumes: Vec<Volume>,
        swarm: &Path,
        cache: &Path,
        timeout: Duration,
        mask: SigSet,
    ) -> Self {
        let mounts = volumes
            .into_iter()
            .map(|volume| Mount {
                point: swarm.join(volume.name),
                volume,
                pid: None,
                started: Instant::now(),
                ready: false,
            })
            .collect();
        Mounts {
            mounts,
            timeout,
            mask,
            cache: cache.to_path_buf(),
        }
    }

    pub fn volumes(&self) -> Vec<&'static str> {
        self.mounts.iter().map(|m| m.volume.name).collect()
    }

    /// The pids of the running mounts (what `/proc` shows as the share).
    pub fn pids(&self) -> Vec<Pid> {
        self.mounts.iter().filter_map(|m| m.pid).collect()
    }

    /// Whether every volume is mounted and its process runs.
    pub fn all_ready(&self) -> bool {
        self.mounts.iter().all(|m| m.ready && m.pid.is_some())
    }

    /// Starts a `juicefs mount` for every volume that has none running.
    pub fn start_missing(&mut self) -> Result<(), String> {
        for m in self.mounts.iter_mut().filter(|m| m.pid.is_none()) {
            prepare_point(&m.point).map_err(|e| format!("volume {}: {e}", m.volume.name))?;
            let spec = spec(&m.volume, &m.point, &self.cache.join(m.volume.name));
            let pid = sys::spawn(&spec, &self.mask).map_err(|e| {
                format!(
                    "volume {}: cannot start {}: {e}",
                    m.volume.name,
                    juicefs().display()
                )
            })?;
            info!(volume = m.volume.name, pid = pid.as_raw(), point = %m.point.display(), "share: mounting");
            m.pid = Some(pid);
            m.started = Instant::now();
            m.ready = false;
        }
        Ok(())
    }

    /// Checks each starting mount once: ready when its mount point's root is
    /// the volume's root (inode 1); failed when its process ended first or it
    /// took longer than the timeout (then it is killed).
    pub fn poll(&mut self) -> Progress {
        let mut pending = false;
        for m in self.mounts.iter_mut().filter(|m| !m.ready) {
            let Some(pid) = m.pid else {
                pending = true;
                continue;
            };
            if is_volume_root(&m.point) {
                m.ready = true;
                info!(
                    volume = m.volume.name,
                    pid = pid.as_raw(),
                    ms = m.started.elapsed().as_millis() as u64,
                    "share: mounted"
                );
                continue;
            }
            let why = if sys::has_ended(pid) {
                // The zombie stays for the reaper, which forgets it (not current).
                m.pid = None;
                "juicefs mount ended before the volume was mounted".to_string()
            } else if m.started.elapsed() > self.timeout {
                let _ = sys::signal_group(pid, Signal::SIGKILL);
                m.pid = None;
                format!("not mounted within {:?}", self.timeout)
            } else {
                pending = true;
                continue;
            };
            return Progress::Failed(format!(
                "volume {} at {}: {why}. {}",
                m.volume.name,
                m.point.display(),
                diagnose(&m.volume)
            ));
        }
        if pending {
            Progress::Pending
        } else {
            Progress::Ready
        }
    }

    /// Starts what is missing and waits until every volume is mounted (the
    /// boot's share step).
    pub fn mount_all(&mut self) -> Result<(), String> {
        self.start_missing()?;
        loop {
            match self.poll() {
                Progress::Ready => return Ok(()),
                Progress::Pending => std::thread::sleep(Duration::from_millis(20)),
                Progress::Failed(e) => return Err(e),
            }
        }
    }

    /// The reaper collected `pid`: if it was one of our mounts, that volume
    /// is gone (its locks with it) and its name is returned.
    pub fn ended(&mut self, pid: Pid) -> Option<&'static str> {
        let m = self.mounts.iter_mut().find(|m| m.pid == Some(pid))?;
        m.pid = None;
        m.ready = false;
        Some(m.volume.name)
    }

    /// SIGTERM to every mount (a clean unmount), then waits for them within
    /// [`UNMOUNT_TIMEOUT`], SIGKILL after. Runs after the supervision loop
    /// (or instead of it when the boot failed): the reaper here is the
    /// loop's own `reap_all`, nothing else is left to collect.
    pub fn stop(&mut self) {
        let live: Vec<(Pid, &'static str)> = self
            .mounts
            .iter_mut()
            .filter_map(|m| {
                m.ready = false;
                m.pid.take().map(|p| (p, m.volume.name))
            })
            .collect();
        if live.is_empty() {
            return;
        }
        let t = Instant::now();
        for (pid, volume) in &live {
            info!(volume, pid = pid.as_raw(), "share: unmounting");
            let _ = sys::signal_pid(*pid, Signal::SIGTERM);
        }
        let mut left: Vec<(Pid, &'static str)> = live;
        let mut killed = false;
        while !left.is_empty() {
            for (pid, exit) in sys::reap_all() {
                if let Some(i) = left.iter().position(|(p, _)| *p == pid) {
                    let (_, volume) = left.remove(i);
                    info!(volume, status = %exit, ms = t.elapsed().as_millis() as u64, "share: unmounted");
                }
            }
            if left.is_empty() {
                break;
            }
            if t.elapsed() > UNMOUNT_TIMEOUT && !killed {
                for (pid, volume) in &left {
                    warn!(
                        volume,
                        pid = pid.as_raw(),
                        "share: no clean unmount within {UNMOUNT_TIMEOUT:?}; killing it"
                    );
                    let _ = sys::signal_group(*pid, Signal::SIGKILL);
                }
                killed = true;
            }
            if t.elapsed() > UNMOUNT_TIMEOUT * 2 {
                error!(volumes = ?left.iter().map(|(_, v)| *v).collect::<Vec<_>>(), "share: mount processes still alive after SIGKILL; leaving them");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mounts {
    /// A boot that fails after the share step, or a run that ends, leaves
    /// no mount behind.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a mount failed, asked of its metadata engine directly (juicefs's own
/// lines are in the log above; this names the cause in the boot's error):
/// a wrong password, an unreachable database, or a metadata engine that is
/// fine (then the storage or the mount point is to blame).
fn diagnose(v: &Volume) -> String {
    match super::status(v, DIAGNOSE_TIMEOUT) {
        Ok(_) => {
            "Its metadata answers: see juicefs's lines above for the storage or the mount point"
                .to_string()
        }
        Err(e) => {
            let e = e.to_string();
            let hint = if e.contains("WRONGPASS") || e.contains("NOAUTH") {
                format!("{} is wrong or missing. ", var(v.var, "META_PASSWORD"))
            } else {
                String::new()
            };
            format!("{hint}Metadata check: {e}")
        }
    }
}

/// How long the failure diagnosis may wait for the metadata engine.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The mount point: created if missing, and whatever is left on it from a
/// mount that died (ENOTCONN) or an earlier one in this namespace detached,
/// so that our new mount is the one the path shows.
fn prepare_point(point: &Path) -> std::io::Result<()> {
    match std::fs::metadata(point) {
        Ok(_) if is_volume_root(point) => sys::detach_mount(point),
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTCONN) => sys::detach_mount(point),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(point),
        Err(e) => Err(e),
    }
}

/// `juicefs mount` for one volume: as root (FUSE needs it), in its own
/// process group, with nothing of ours in its environment but PATH and its
/// own password (never on the command line: `ps` shows that to everyone).
fn spec(v: &Volume, point: &Path, cache: &Path) -> SpawnSpec {
    let mut env = vec![
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        // We are its supervisor: no watchdog process of its own (see above).
        (
            "JFS_SUPERVISOR".to_string(),
            "mybuddy-supervisor".to_string(),
        ),
    ];
    if let Some(p) = &v.password {
        env.push(("META_PASSWORD".to_string(), p.0.clone()));
    }
    let mut args: Vec<String> = vec!["mount".into()];
    args.extend(MOUNT_FLAGS.iter().map(|s| s.to_string()));
    args.push("--cache-dir".into());
    args.push(cache.display().to_string());
    args.push(v.meta_url.clone());
    args.push(point.display().to_string());
    SpawnSpec::helper(juicefs(), args, env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::render::Secret;

    #[test]
    fn the_password_goes_to_the_environment_and_never_to_the_command_line() {
        let v = Volume {
            name: "mybuddybook",
            var: "BOOK",
            gid: 10100,
            meta_url: "redis://127.0.0.1:6379/1".into(),
            password: Some(Secret("s3cr3t-pw".into())),
        };
        let s = spec(
            &v,
            Path::new("/mnt/swarm/mybuddybook"),
            Path::new("/var/cache/juicefs/mybuddybook"),
        );
        assert!(!s.args.iter().any(|a| a.contains("s3cr3t")), "{:?}", s.args);
        assert!(
            s.env
                .contains(&("META_PASSWORD".into(), "s3cr3t-pw".into()))
        );
        assert!(s.env.iter().any(|(k, _)| k == "JFS_SUPERVISOR"));
        assert_eq!(s.env.len(), 3, "nothing else of ours: {:?}", s.env);
        for f in ["--attr-cache", "--entry-cache", "--dir-entry-cache"] {
            let i = s.args.iter().position(|a| a == f).unwrap();
            assert_eq!(s.args[i + 1], "0", "{f}");
        }
        assert_eq!(
            &s.args[s.args.len() - 2..],
            ["redis://127.0.0.1:6379/1", "/mnt/swarm/mybuddybook"]
        );
    }
}
