//! Taking a process group down within the stop timeout: the signal now,
//! SIGKILL at the deadline, and for the supervisor's own end a grace after
//! the SIGKILL before it exits whatever is left.
//!
//! Pure bookkeeping over clock readings: the types say *when* and *what*;
//! the loop in [`super::supervise`] sends the signals (through
//! [`super::sys`]) and asks the kernel whether the group is gone.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

/// After SIGKILL, how long to wait for the kernel to finish the group off
/// before the supervisor exits anyway.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// A gateway's group asked to stop (for a repair of what it depends on):
/// SIGKILL once the stop timeout has passed. Its end arrives as SIGCHLD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStop {
    pub pgid: Pid,
    deadline: Instant,
    killed: bool,
}

impl GroupStop {
    /// The stop signal was sent to `pgid` at `now`.
    pub fn new(pgid: Pid, now: Instant, timeout: Duration) -> Self {
        GroupStop {
            pgid,
            deadline: now + timeout,
            killed: false,
        }
    }

    /// When the loop must wake for it; none once killed (nothing is left to
    /// do but wait for SIGCHLD).
    pub fn deadline(&self) -> Option<Instant> {
        (!self.killed).then_some(self.deadline)
    }

    /// True once, when the deadline has passed: the caller sends SIGKILL.
    pub fn kill_due(&mut self, now: Instant) -> bool {
        let due = !self.killed && now >= self.deadline;
        self.killed |= due;
        due
    }
}

/// The supervisor's way out: a stop was asked for, or the gateway ended for
/// good. The gateway's group (if one ran) and the running spells get the
/// stop timeout; then SIGKILL and [`KILL_GRACE`]; then the supervisor exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// None: no gateway was running; only the spells drain.
    group: Option<Pid>,
    deadline: Instant,
    killed: bool,
    /// The exit code, known once the gateway itself has ended.
    code: Option<i32>,
}

/// What a passing deadline asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStep {
    /// Not yet.
    Wait,
    /// The stop timeout has passed: SIGKILL the group (if any) and the
    /// spells; the grace begins.
    Kill(Option<Pid>),
    /// Still not gone after the grace: exit anyway.
    GiveUp,
}

impl Drain {
    /// Begins at `now`; `code` is None while the gateway still runs.
    pub fn new(group: Option<Pid>, code: Option<i32>, now: Instant, timeout: Duration) -> Self {
        Drain {
            group,
            deadline: now + timeout,
            killed: false,
            code,
        }
    }

    pub fn group(&self) -> Option<Pid> {
        self.group
    }

    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// The gateway ended with `code` while draining.
    pub fn gateway_ended(&mut self, code: i32) {
        self.code = Some(code);
    }

    /// A second stop while a final exit drains: no more waiting.
    pub fn hurry(&mut self, now: Instant) {
        self.deadline = self.deadline.min(now);
    }

    /// When the loop must wake: the deadline, or sooner while the gateway is
    /// gone but the rest of its group is not (no SIGCHLD tells when an
    /// orphan of another parent's group goes, so it is polled).
    pub fn wake_at(&self, now: Instant) -> Instant {
        if self.code.is_some() && !self.killed {
            self.deadline.min(now + Duration::from_millis(50))
        } else {
            self.deadline
        }
    }

    pub fn on_time(&mut self, now: Instant) -> DrainStep {
        if now < self.deadline {
            DrainStep::Wait
        } else if !self.killed {
            self.killed = true;
            self.deadline = now + KILL_GRACE;
            DrainStep::Kill(self.group)
        } else {
            DrainStep::GiveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn a_group_stop_kills_once_at_its_deadline() {
        let t = Instant::now();
        let mut s = GroupStop::new(Pid::from_raw(42), t, T);
        assert_eq!(s.deadline(), Some(t + T));
        assert!(!s.kill_due(t + T - Duration::from_millis(1)));
        assert!(s.kill_due(t + T));
        assert!(!s.kill_due(t + T * 2), "SIGKILL is sent once");
        assert_eq!(s.deadline(), None, "nothing left to wake for");
    }

    #[test]
    fn a_drain_kills_at_the_stop_timeout_then_gives_up_after_the_grace() {
        let t = Instant::now();
        let g = Some(Pid::from_raw(42));
        let mut d = Drain::new(g, None, t, T);
        assert_eq!(
            d.wake_at(t),
            t + T,
            "the gateway runs: its SIGCHLD wakes us"
        );
        assert_eq!(d.on_time(t + T / 2), DrainStep::Wait);
        assert_eq!(d.on_time(t + T), DrainStep::Kill(g));
        assert_eq!(d.wake_at(t + T), t + T + KILL_GRACE);
        assert_eq!(d.on_time(t + T + KILL_GRACE / 2), DrainStep::Wait);
        assert_eq!(d.on_time(t + T + KILL_GRACE), DrainStep::GiveUp);
        assert_eq!(d.code(), None);
    }

    #[test]
    fn once_the_gateway_ended_the_rest_of_its_group_is_polled() {
        let t = Instant::now();
        let mut d = Drain::new(Some(Pid::from_raw(42)), None, t, T);
        d.gateway_ended(143);
        assert_eq!(d.code(), Some(143));
        assert_eq!(d.wake_at(t), t + Duration::from_millis(50));
        assert_eq!(
            d.wake_at(t + T - Duration::from_millis(10)),
            t + T,
            "never past the deadline"
        );
    }

    #[test]
    fn a_second_stop_hurries_a_final_drain() {
        let t = Instant::now();
        let mut d = Drain::new(None, Some(0), t, T);
        d.hurry(t + Duration::from_secs(1));
        assert_eq!(d.on_time(t + Duration::from_secs(1)), DrainStep::Kill(None));
    }
}
