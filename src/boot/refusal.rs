//! A refused boot is seen, not spun.
//!
//! A boot step that fails (exit 78: a missing secret, a policy problem) is
//! not something a restart fixes, and fly.toml's restart policy is
//! `always`: exiting at once would start the Machine again every second or
//! two, for as long as nobody looks. So a refusal is recorded in the
//! registry where the share is reachable (`refused`, with the first line of
//! why), and the supervisor waits before it exits: not at all after the
//! first refusal (the operator sees the error at once), then
//! [`RunConfig::refusal_backoff`] doubling up to its max. The count of
//! refusals in a row lives on the volume (the rootfs is reset on every
//! restart), in a root-only file the state step never hands to the
//! gateway; a boot that starts the gateway removes it.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signalfd::SignalFd;
use tracing::{info, warn};

use super::{Boot, Failed, REGISTRY_FLUSH};
use crate::pid1::sys;
use crate::state::REFUSALS;
use crate::swarm;
use crate::untrusted::{Dir, Kind};

/// The wait before exiting after the `n`th refusal in a row.
pub fn wait_after(n: u32, first: Duration, max: Duration) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    let doublings = (n - 2).min(20);
    (first * 2u32.pow(doublings)).min(max)
}

/// Counts one more refusal in `state` and returns how many in a row. A file
/// at the name that is not root's own plain file (the gateway owns the
/// volume and can put one there) counts as none.
pub fn count(state: &Path) -> u32 {
    // A first boot can fail before the state step made the dir (on Fly it
    // is the volume's mount point, there already).
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state);
    let Ok(dir) = made.and_then(|()| Dir::open(state)) else {
        warn!(state = %state.display(), "cannot count this refusal on the volume; the next one waits as if it were the first");
        return 1;
    };
    let before = dir
        .stat(REFUSALS)
        .ok()
        .flatten()
        .filter(|m| {
            m.kind == Kind::File && m.nlink == 1 && m.uid == nix::unistd::geteuid().as_raw()
        })
        .and_then(|_| dir.read(REFUSALS, 32).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| t.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let n = before.saturating_add(1);
    if let Err(e) = dir.replace(REFUSALS, format!("{n}\n").as_bytes(), 0o600, true) {
        warn!(state = %state.display(), error = %e, "cannot count this refusal on the volume; the next one waits as if it were the first");
    }
    n
}

/// A boot that got as far as starting the gateway: the count starts over.
pub fn clear(state: &Path) {
    if let Ok(dir) = Dir::open(state) {
        let _ = dir.unlink(REFUSALS);
    }
}

impl Boot {
    /// The boot failed at `f`: record it where the share is reachable, then
    /// wait as the count of refusals in a row says (a stop ends the wait).
    pub(super) fn refused(&mut self, f: &Failed, sfd: &SignalFd) {
        let n = count(&self.cfg.state_dir);
        self.record_refusal(f);
        // Whatever was mounted goes before the wait.
        self.mounts = None;
        let wait = wait_after(n, self.cfg.refusal_backoff.0, self.cfg.refusal_backoff.1);
        if wait.is_zero() {
            return;
        }
        warn!(
            refusals = n,
            wait_s = wait.as_secs(),
            step = f.step,
            "boot refused {n} times in a row: waiting before the exit so the restart policy does not spin; fix what the step said (a stop ends the wait)"
        );
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            sys::wait_readable(sfd, &[], Some(left));
            for s in sys::read_signals(sfd) {
                if sys::STOP_SIGNALS.contains(&s) {
                    info!(
                        signal = s.as_str(),
                        "stop requested while a refused boot waits; exiting"
                    );
                    return;
                }
            }
            // The share's mounts ended with their unmount.
            for (pid, exit) in sys::reap_all() {
                tracing::debug!(pid = pid.as_raw(), status = %exit, "reaped");
            }
        }
    }

    /// `refused` in the registry, when the Buddy is known and the share
    /// reachable: mounted for the purpose when the failure came before the
    /// share step (a missing secret), never retried when the share itself
    /// is what failed.
    fn record_refusal(&mut self, f: &Failed) {
        let identity = match crate::buddy::load(&self.cfg.buddy_dir) {
            Ok(b) => b.identity,
            Err(e) => {
                warn!(error = %e, "refusal not recorded in the registry: the Buddy's own files do not say who it is");
                return;
            }
        };
        self.role = identity.role;
        if self.mounts.is_none()
            && matches!(f.step, "restore" | "render" | "state")
            && let Err(e) = self.mount_share()
        {
            warn!("refusal not recorded in the registry: the share does not mount:\n{e}");
            return;
        }
        let book = swarm::Paths::new(&self.cfg.swarm_dir).book();
        if !book.is_dir() {
            warn!(book = %book.display(), "refusal not recorded in the registry: MyBuddyBook is not there");
            return;
        }
        swarm::presence::record_refusal(
            book,
            &identity,
            &format!("{} step: {}", f.step, f.why),
            REGISTRY_FLUSH,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_exits_at_once_then_the_wait_doubles_to_its_cap() {
        let (first, max) = (Duration::from_secs(10), Duration::from_secs(300));
        let waits: Vec<u64> = (1..=8)
            .map(|n| wait_after(n, first, max).as_secs())
            .collect();
        assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(wait_after(u32::MAX, first, max), max);
    }
}
