//! The restart policy: after the gateway exited, whether and when it starts
//! again. Pure bookkeeping over exits and clock readings, so the loop in
//! [`super::supervise`] only acts on the verdict.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::sys::Exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestartPolicy {
    /// Restart whenever the gateway exits (it has no reason to).
    Always,
    /// Restart after a non-zero exit or a death by signal.
    OnFailure,
    /// Exit with the gateway's status, like tini.
    Never,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub restart: RestartPolicy,
    /// None (the default): never give up; an outage outlasts any count.
    pub max_restarts: Option<u32>,
    pub restart_window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run at least this long counts as healthy and resets the backoff.
    pub reset_after: Duration,
    pub stop_timeout: Duration,
}

/// What to do after the gateway exited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The policy does not restart this exit: end with its code.
    Exit(i32),
    /// More than `max_restarts` exits within the window: end with `code`
    /// so the platform can replace the Machine.
    GiveUp { code: i32, crashes: usize },
    /// Start again after `delay`; `attempt` counts the exits since the last
    /// healthy run. `loop_began`: this exit made it a crash loop.
    Restart {
        delay: Duration,
        attempt: u32,
        loop_began: bool,
    },
}

/// Exits in a row without a healthy run that make a crash loop (logged and
/// shown in the registry; under the default policy it is never a reason
/// to give up).
pub const CRASH_LOOP_AFTER: u32 = 3;

/// The exits the policy remembers: those within the restart window, and how
/// many came in a row without a healthy run between them.
#[derive(Debug, Default)]
pub struct Restarts {
    crashes: VecDeque<Instant>,
    consecutive: u32,
    looping: bool,
}

impl Restarts {
    /// Records an exit after a run of `ran` and judges it.
    pub fn after_exit(
        &mut self,
        policy: &Policy,
        exit: Exit,
        ran: Duration,
        now: Instant,
    ) -> Verdict {
        let restart = match policy.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        };
        if !restart {
            return Verdict::Exit(exit.code());
        }
        if ran >= policy.reset_after {
            self.consecutive = 0;
            self.looping = false;
        }
        self.consecutive += 1;
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.restart_window)
        {
            self.crashes.pop_front();
        }
        if policy
            .max_restarts
            .is_some_and(|max| self.crashes.len() as u32 > max)
        {
            let code = if exit.success() { 1 } else { exit.code() };
            return Verdict::GiveUp {
                code,
                crashes: self.crashes.len(),
            };
        }
        let loop_began = !self.looping && self.consecutive >= CRASH_LOOP_AFTER;
        self.looping |= loop_began;
        Verdict::Restart {
            delay: self.backoff(policy),
            attempt: self.consecutive,
            loop_began,
        }
    }

    /// Whether the gateway is in a crash loop (until a healthy run).
    pub fn looping(&self) -> bool {
        self.looping
    }

    /// The gateway has now run for `reset_after`: a crash loop is over.
    /// Returns the exits in a row it took, if it was one.
    pub fn healthy(&mut self) -> Option<u32> {
        let was = std::mem::take(&mut self.looping).then_some(self.consecutive);
        self.consecutive = 0;
        was
    }

    /// Doubles from the initial delay with every exit in a row, up to the cap.
    fn backoff(&self, policy: &Policy) -> Duration {
        let shift = self.consecutive.saturating_sub(1).min(30);
        policy
            .backoff_initial
            .saturating_mul(1u32 << shift)
            .min(policy.backoff_max)
    }
}

/// The restart timing around the policy: when the next start is due after
/// an exit, and when a run in a crash loop has lasted long enough to end it.
#[derive(Debug, Default)]
pub struct Schedule {
    restarts: Restarts,
    restart_at: Option<Instant>,
    healthy_at: Option<Instant>,
}

impl Schedule {
    /// The gateway was started at `now`: in a crash loop, a run lasting
    /// `reset_after` ends it.
    pub fn started(&mut self, policy: &Policy, now: Instant) {
        self.healthy_at = self.restarts.looping().then(|| now + policy.reset_after);
    }

    /// The gateway exited on its own after a run of `ran`: the policy's
    /// verdict; a restart is scheduled by it.
    pub fn after_exit(
        &mut self,
        policy: &Policy,
        exit: Exit,
        ran: Duration,
        now: Instant,
    ) -> Verdict {
        let verdict = self.restarts.after_exit(policy, exit, ran, now);
        if let Verdict::Restart { delay, .. } = verdict {
            self.healthy_at = None;
            self.restart_at = Some(now + delay);
        }
        verdict
    }

    /// A stop or a start by other means: no restart is due any more.
    pub fn cancel_restart(&mut self) {
        self.restart_at = None;
    }

    /// The gateway is taken down for a repair: neither timer stands.
    pub fn cancel(&mut self) {
        self.restart_at = None;
        self.healthy_at = None;
    }

    pub fn restart_pending(&self) -> bool {
        self.restart_at.is_some()
    }

    /// True once when the backoff has passed: start the gateway.
    pub fn restart_due(&mut self, now: Instant) -> bool {
        let due = self.restart_at.is_some_and(|t| now >= t);
        if due {
            self.restart_at = None;
        }
        due
    }

    /// Once the run has lasted `reset_after`: the crash loop's length, if
    /// it was one.
    pub fn recovered(&mut self, now: Instant) -> Option<u32> {
        if self.healthy_at.is_none_or(|t| now < t) {
            return None;
        }
        self.healthy_at = None;
        self.restarts.healthy()
    }

    /// In a crash loop (until a healthy run).
    pub fn looping(&self) -> bool {
        self.restarts.looping()
    }

    /// The earlier of the two timers.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.restart_at, self.healthy_at]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(restart: RestartPolicy, max_restarts: Option<u32>) -> Policy {
        Policy {
            restart,
            max_restarts,
            restart_window: Duration::from_secs(300),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(300),
            reset_after: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_then_gives_up() {
        let p = policy(RestartPolicy::Always, Some(3));
        let mut r = Restarts::default();
        let t = Instant::now();
        let mut delays = Vec::new();
        for i in 0..3 {
            match r.after_exit(
                &p,
                Exit::Code(1),
                Duration::ZERO,
                t + Duration::from_secs(i),
            ) {
                Verdict::Restart { delay, .. } => delays.push(delay.as_millis()),
                v => panic!("unexpected {v:?}"),
            }
        }
        assert_eq!(delays, [100, 200, 300]);
        assert_eq!(
            r.after_exit(
                &p,
                Exit::Code(3),
                Duration::ZERO,
                t + Duration::from_secs(4)
            ),
            Verdict::GiveUp {
                code: 3,
                crashes: 4
            }
        );
    }

    #[test]
    fn by_default_a_crash_loop_never_ends_the_supervision_and_a_healthy_run_ends_the_loop() {
        let p = policy(RestartPolicy::Always, None);
        let mut r = Restarts::default();
        let t = Instant::now();
        let mut began = Vec::new();
        for i in 0..1000u64 {
            match r.after_exit(
                &p,
                Exit::Code(1),
                Duration::ZERO,
                t + Duration::from_millis(i),
            ) {
                Verdict::Restart {
                    delay,
                    attempt,
                    loop_began,
                } => {
                    assert!(delay <= p.backoff_max);
                    if loop_began {
                        began.push(attempt);
                    }
                }
                v => panic!("exit {i}: {v:?}"),
            }
        }
        assert_eq!(began, [CRASH_LOOP_AFTER], "the loop is announced once");
        assert!(r.looping());
        assert_eq!(r.healthy(), Some(1000));
        assert!(!r.looping());
        assert_eq!(r.healthy(), None);
    }

    #[test]
    fn a_healthy_run_resets_the_backoff_and_old_exits_leave_the_window() {
        let p = policy(RestartPolicy::OnFailure, Some(1));
        let mut r = Restarts::default();
        let t = Instant::now();
        r.after_exit(&p, Exit::Code(1), Duration::ZERO, t);
        let later = t + Duration::from_secs(301);
        assert_eq!(
            r.after_exit(&p, Exit::Code(1), Duration::from_secs(61), later),
            Verdict::Restart {
                delay: Duration::from_millis(100),
                attempt: 1,
                loop_began: false
            }
        );
        assert_eq!(
            r.after_exit(&p, Exit::Code(0), Duration::ZERO, later),
            Verdict::Exit(0)
        );
    }

    #[test]
    fn the_schedule_restarts_after_the_backoff_and_ends_a_loop_after_a_healthy_run() {
        let p = policy(RestartPolicy::Always, None);
        let mut s = Schedule::default();
        let t = Instant::now();
        s.started(&p, t);
        assert_eq!(s.next_deadline(), None, "a first run has no timer");
        for i in 0..CRASH_LOOP_AFTER {
            let now = t + Duration::from_secs(u64::from(i));
            assert!(matches!(
                s.after_exit(&p, Exit::Code(1), Duration::ZERO, now),
                Verdict::Restart { .. }
            ));
            assert!(s.restart_pending());
            assert!(!s.restart_due(now));
            let due = s.next_deadline().expect("a restart is scheduled");
            assert!(s.restart_due(due));
            assert!(!s.restart_due(due), "due once");
            s.started(&p, due);
        }
        assert!(s.looping());
        let healthy = s
            .next_deadline()
            .expect("the loop ends after a healthy run");
        assert_eq!(s.recovered(healthy - Duration::from_millis(1)), None);
        assert_eq!(s.recovered(healthy), Some(CRASH_LOOP_AFTER));
        assert!(!s.looping());
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_repair_cancels_both_timers() {
        let p = policy(RestartPolicy::Always, None);
        let mut s = Schedule::default();
        let t = Instant::now();
        s.after_exit(&p, Exit::Code(1), Duration::ZERO, t);
        s.cancel();
        assert!(!s.restart_pending());
        assert_eq!(s.next_deadline(), None);
        assert!(!s.restart_due(t + Duration::from_secs(600)));
    }
}
