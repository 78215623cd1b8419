//! The supervisor's side of the backups: a cycle every interval, each a
//! child (`supervisor backup cycle`) of the one reaper in its own process
//! group, ended at its deadline or at the supervisor's stop. Its outcome is
//! read back from root's private cache when the reaper reports the exit.
//!
//! Nothing here waits: a cycle stuck on storage that does not answer holds
//! only itself. What the Buddy's operator sees is the lag (the time since
//! the state of the last backup that succeeded): logged once when backups
//! start failing, once when they catch up.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{SigSet, Signal, killpg};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use super::Settings;
use super::cycle::{self, DEADLINE};
use crate::pid1::sys::{self, Exit, SpawnSpec};

/// The lag past which a still failing backup is said again.
const LAG_WARN: Duration = Duration::from_secs(600);

pub struct Scheduler {
    s: Settings,
    state: PathBuf,
    mask: SigSet,
    running: Option<(Pid, Instant)>,
    /// When the running cycle began (its outcome must be newer).
    spawned: SystemTime,
    next_at: Instant,
    /// The state as of this moment is in the backup.
    backed_up_at: SystemTime,
    /// The last cycle that succeeded, as of when (None: none yet).
    last_backup: Option<SystemTime>,
    /// Since when cycles fail (None: the last one succeeded).
    failing_since: Option<Instant>,
    lag_warned: bool,
    stopping: bool,
    /// A final backup is owed once the gateway has stopped.
    final_wanted: bool,
    final_running: bool,
    gateway_gone: bool,
}

impl Scheduler {
    pub fn new(s: Settings, state: PathBuf, mask: SigSet) -> Self {
        let next_at = Instant::now() + s.interval;
        Scheduler {
            s,
            state,
            mask,
            running: None,
            spawned: SystemTime::UNIX_EPOCH,
            next_at,
            backed_up_at: SystemTime::now(),
            last_backup: None,
            failing_since: None,
            lag_warned: false,
            stopping: false,
            final_wanted: false,
            final_running: false,
            gateway_gone: false,
        }
    }

    /// How far the backup is behind the state (for logs and metrics).
    pub fn lag(&self) -> Duration {
        self.backed_up_at.elapsed().unwrap_or_default()
    }

    /// When the state was last known backed up whole (the supervisor's
    /// start until a cycle succeeds: the lag's baseline).
    pub fn backed_up_at(&self) -> SystemTime {
        self.backed_up_at
    }

    /// The state as of the last cycle that succeeded (None: none yet).
    pub fn last_backup(&self) -> Option<SystemTime> {
        self.last_backup
    }

    pub fn next_wake(&self) -> Option<Instant> {
        match self.running {
            Some((_, started)) => Some(started + DEADLINE),
            None if self.stopping => None,
            None => Some(self.next_at),
        }
    }

    /// Called when [`Scheduler::next_wake`] is due: starts a cycle, or
    /// ends one past its deadline.
    pub fn tick(&mut self) {
        let now = Instant::now();
        if let Some((pid, started)) = self.running {
            if now >= started + DEADLINE {
                warn!(
                    pid = pid.as_raw(),
                    secs = DEADLINE.as_secs(),
                    "backup: the cycle ran past its deadline; ended"
                );
                let _ = killpg(pid, Signal::SIGKILL);
            }
            return;
        }
        if self.stopping || now < self.next_at {
            return;
        }
        self.next_at = now + self.s.interval;
        self.spawn(now);
    }

    fn spawn(&mut self, now: Instant) {
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        // Only what the cycle needs: the backup's settings (restic's keys
        // among them) and PATH; nothing of the gateway's, the share's or
        // the Fly token.
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| {
                super::is_backup_setting(k)
                    || matches!(k.as_str(), "PATH" | "MYBUDDY_LOG_FORMAT" | "NO_COLOR")
            })
            .collect();
        let args = vec![
            "backup".into(),
            "cycle".into(),
            "--state".into(),
            self.state.display().to_string(),
        ];
        let spec = SpawnSpec::helper(exe, args, env);
        match sys::spawn(&spec, &self.mask) {
            Ok(pid) => {
                self.running = Some((pid, now));
                self.spawned = SystemTime::now();
            }
            Err(e) => self.failed(&format!("cannot start the backup cycle: {e}")),
        }
    }

    /// The reaper collected `pid`: true if it was our cycle.
    pub fn ended(&mut self, pid: Pid, exit: Exit) -> bool {
        if self.running.is_none_or(|(p, _)| p != pid) {
            return false;
        }
        self.running = None;
        let last_of_run = std::mem::take(&mut self.final_running);
        let since = self
            .spawned
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // This cycle's outcome, not one an earlier cycle left.
        let last = cycle::read_last(&self.s.cache).filter(|o| o.started + 1 >= since);
        match last {
            Some(o) if exit.success() && o.result != "failed" => {
                let was_failing = self.failing_since.take();
                self.backed_up_at = SystemTime::UNIX_EPOCH + Duration::from_secs(o.started);
                self.last_backup = Some(self.backed_up_at);
                self.lag_warned = false;
                if let Some(since) = was_failing {
                    info!(
                        failing_s = since.elapsed().as_secs(),
                        "backup: caught up; backups succeed again"
                    );
                }
                if o.result == "backed-up" {
                    info!(snapshot = %o.snapshot, files = o.files, bytes_added = o.bytes_added, databases = o.databases.len(), ms = o.ms, last_of_run, "backup done");
                } else if last_of_run {
                    info!(
                        ms = o.ms,
                        "backup: nothing changed since the last backup; the final state is in it"
                    );
                } else {
                    debug!(ms = o.ms, "backup: nothing changed");
                }
                for s in &o.skipped {
                    warn!("backup: left out of the database copies (kept as a plain file): {s}");
                }
            }
            Some(o) if o.result == "failed" => self.failed(&o.error),
            _ => self.failed(&format!("the cycle ended with {exit}")),
        }
        // A cycle that was running at the stop: the final one follows.
        if self.gateway_gone && self.final_wanted {
            self.gateway_stopped();
        }
        true
    }

    fn failed(&mut self, why: &str) {
        let lag = self.lag();
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            error!(
                lag_s = lag.as_secs(),
                retry_s = self.s.interval.as_secs(),
                "backup failed; the Buddy goes on and the backup is retried every interval (said again only past {} min of lag or when it catches up):\n{why}",
                LAG_WARN.as_secs() / 60
            );
        } else if lag >= LAG_WARN && !self.lag_warned {
            self.lag_warned = true;
            error!(lag_s = lag.as_secs(), "backup still failing:\n{why}");
        } else {
            debug!("backup failed again: {why}");
        }
    }

    /// The supervisor stops: no new scheduled cycle; a running one goes on
    /// (the stop timeout bounds it) and one more, the final backup, follows
    /// once the gateway has stopped writing.
    pub fn stop(&mut self) {
        self.stopping = true;
        self.final_wanted = true;
    }

    /// The gateway has stopped: the final backup now (or after the running
    /// cycle).
    pub fn gateway_stopped(&mut self) {
        self.gateway_gone = true;
        if self.final_wanted && self.running.is_none() {
            self.final_wanted = false;
            self.final_running = true;
            info!("backup: the final backup of this run, after the gateway stopped");
            self.spawn(Instant::now());
        }
    }

    pub fn busy(&self) -> bool {
        self.running.is_some() || (self.final_wanted && self.gateway_gone)
    }

    pub fn kill(&mut self) {
        if let Some((pid, _)) = self.running {
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}
