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
}
