//! The supervision loop: one thread, one signalfd, one reaper.
//!
//! Everything that happens to the supervisor arrives as a signal on the
//! signalfd (SIGCHLD included) or as a deadline passing (stop timeout, restart
//! backoff). The loop reaps with `waitpid(-1)` and routes the gateway's status
//! to the restart policy; orphans are reaped and logged. No threads, no async
//! runtime: nothing else can wait on a child, so nothing races the reaper.

use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use super::drain::{Drain, DrainStep, GroupStop};
pub use super::restart::{Policy, RestartPolicy};
use super::restart::{Schedule, Verdict};
use super::sys::{self, Exit, SpawnSpec};

/// What the boot provides to the loop.
pub trait Hooks {
    /// SIGHUP: re-render the config in place. False: not ours to handle,
    /// forward SIGHUP to the child like any other signal.
    fn reload(&mut self) -> bool;
    /// A signal the child must never get: `Some(why)` drops it with a warning.
    fn withheld(&self, _sig: Signal) -> Option<&'static str> {
        None
    }
    /// Once, right after the first start: boot work that need not delay the
    /// gateway (it takes seconds to listen; this runs meanwhile). `Some(code)`
    /// fails the boot: the gateway is stopped and the supervisor exits with it.
    fn after_first_start(&mut self) -> Option<i32> {
        None
    }
    /// Something happened in the gateway's life (see [`Life`]).
    fn life(&mut self, _event: Life) {}
    /// The reaper collected a child that is not the gateway. True: it was
    /// one the gateway depends on (a share mount): the loop stops the
    /// gateway and calls [`Hooks::repair`] until the dependency is back.
    fn child_ended(&mut self, _pid: Pid, _exit: Exit) -> bool {
        false
    }
    /// Descriptors the loop also waits on (the spell socket's).
    fn listeners(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        Vec::new()
    }
    /// One of [`Hooks::listeners`] is readable: take what waits there
    /// (never blocking the loop).
    fn accept(&mut self) {}
    /// A stop has begun (the supervisor exits by the stop timeout): ask the
    /// other children that must end first (spells) to finish.
    fn stopping(&mut self) {}
    /// Whether such children still run: the exit waits for them until the
    /// stop timeout.
    fn busy(&self) -> bool {
        false
    }
    /// The gateway has ended during a stop (or for good): work that must
    /// follow it (the final backup) may begin; [`Hooks::busy`] holds the
    /// exit for it until the stop timeout.
    fn gateway_stopped(&mut self) {}
    /// The stop timeout is over: kill what [`Hooks::busy`] waits for.
    fn kill_busy(&mut self) {}
    /// When the hooks next want [`Hooks::tick`] (their periodic work: the
    /// backups).
    fn next_tick(&self) -> Option<Instant> {
        None
    }
    /// [`Hooks::next_tick`] is due (never blocking the loop).
    fn tick(&mut self) {}
    /// One step of bringing back what [`Hooks::child_ended`] reported gone,
    /// called from the loop (never blocking it for long).
    fn repair(&mut self) -> Repair {
        Repair::Ready
    }
}

/// Where a repair stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Back: (re)start the gateway on it.
    Ready,
    /// Under way: ask again after this long.
    Pending(Duration),
    /// This attempt failed: try again after this long. Meanwhile the
    /// gateway runs without it (a Buddy keeps talking to its Human).
    Failed { retry_in: Duration },
}

/// The gateway taken down around a repair of what it depends on.
#[derive(Debug, Clone, Copy)]
enum Cycle {
    /// SIGTERM sent to the gateway's group; SIGKILL at the stop timeout.
    Stopping { stop: GroupStop, then: AfterStop },
    /// Asking [`Hooks::repair`] at `at`. `degraded`: the gateway was started
    /// without the repaired dependency and must be restarted once it is back.
    Repairing { at: Instant, degraded: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    Repair,
    Start,
}

/// What the loop tells the hooks about the gateway's life (the registry's
/// states come from these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// It was started (`start`: how many times so far).
    Started { pid: Pid, start: u32 },
    /// It ended, whatever follows (the events below say what does).
    Exited { end: End },
    /// It ended and is started again after a backoff.
    Restarting { end: End },
    /// `exits` in a row without a healthy run; still restarting.
    CrashLooping { exits: u32, end: End },
    /// Ran for the healthy interval after a crash loop of `exits`.
    Recovered { exits: u32 },
    /// A stop was asked for with `signal`.
    Stopping { signal: Signal },
    /// It ended for good; the supervisor exits once its group is gone.
    Ended { end: End, why: Ending },
}

/// How one run of the gateway ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub exit: Exit,
    /// The kernel's OOM killer took it (see [`super::memory::OomWatch`]).
    pub oom: bool,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.oom {
            write!(f, "killed for memory (OOM, {})", self.exit)
        } else {
            self.exit.fmt(f)
        }
    }
}

/// Why the gateway will not be started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A stop was asked for with this signal.
    Asked(Signal),
    /// The restart policy says not to (`never`, or `on-failure` after a
    /// clean exit).
    Policy,
    /// `--max-restarts` crashes in the window: given up.
    GaveUp { crashes: usize },
}

struct Running {
    pid: Pid,
    started: Instant,
}

pub struct Supervisor<'a> {
    sfd: &'a SignalFd,
    mask: SigSet,
    spec: SpawnSpec,
    policy: Policy,
    hooks: &'a mut dyn Hooks,
    gateway: Option<Running>,
    /// A stop or a final exit in progress.
    draining: Option<Drain>,
    /// When the gateway starts again and when a crash loop is over.
    schedule: Schedule,
    starts: u32,
    stop_requested: bool,
    /// The exit code when the boot failed after the gateway had started.
    exit_override: Option<i32>,
    /// When to give back the boot code's pages (see [`RELEASE_AFTER`]).
    release_at: Option<Instant>,
    /// A repair of the gateway's dependencies in progress.
    cycle: Option<Cycle>,
    /// The signal of the stop that was asked for.
    stop_signal: Option<Signal>,
    /// Tells the gateway's OOM kills from other deaths.
    oom: super::memory::OomWatch,
    /// Gateways the kernel killed for memory, since the supervisor started.
    pub oom_kills: u32,
}

/// How long after the first start the boot code's resident pages are given
/// back. Not at once: the madvise and the faults it causes would sit on the
/// start's critical path, and a gateway that dies at once restarts through
/// the same code.
const RELEASE_AFTER: Duration = Duration::from_secs(1);

impl<'a> Supervisor<'a> {
    pub fn new(
        sfd: &'a SignalFd,
        mask: SigSet,
        spec: SpawnSpec,
        policy: Policy,
        hooks: &'a mut dyn Hooks,
    ) -> Self {
        Supervisor {
            sfd,
            mask,
            spec,
            policy,
            hooks,
            gateway: None,
            draining: None,
            schedule: Schedule::default(),
            starts: 0,
            stop_requested: false,
            exit_override: None,
            release_at: None,
            cycle: None,
            stop_signal: None,
            oom: super::memory::OomWatch::new(),
            oom_kills: 0,
        }
    }

    /// Runs until the supervisor should exit; returns its exit code.
    pub fn run(mut self) -> i32 {
        if let Err(code) = self.start() {
            return code;
        }
        self.release_at = Some(Instant::now() + RELEASE_AFTER);
        if let Some(code) = self.hooks.after_first_start() {
            self.exit_override = Some(code);
            if let Some(code) = self.on_stop(Signal::SIGTERM) {
                return code;
            }
        }
        loop {
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if sys::wait_readable(self.sfd, &self.hooks.listeners(), timeout) {
                self.hooks.accept();
            }
            for sig in sys::read_signals(self.sfd) {
                if let Some(code) = self.on_signal(sig) {
                    return code;
                }
            }
            if let Some(code) = self.on_timers() {
                return code;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let drain = self.draining.map(|d| d.wake_at(Instant::now()));
        let cycle = match &self.cycle {
            Some(Cycle::Stopping { stop, .. }) => stop.deadline(),
            Some(Cycle::Repairing { at, .. }) => Some(*at),
            None => None,
        };
        [
            drain,
            self.schedule.next_deadline(),
            self.release_at,
            cycle,
            self.hooks.next_tick(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Starts the gateway. Err carries the exit code when it cannot start.
    fn start(&mut self) -> Result<(), i32> {
        match sys::spawn(&self.spec, &self.mask) {
            Ok(pid) => {
                self.starts += 1;
                // Kills of anything else before now are not this run's.
                self.oom.new_kills();
                info!(pid = pid.as_raw(), program = %self.spec.program.display(), start = self.starts, "gateway started");
                self.hooks.life(Life::Started {
                    pid,
                    start: self.starts,
                });
                self.gateway = Some(Running {
                    pid,
                    started: Instant::now(),
                });
                self.schedule.started(&self.policy, Instant::now());
                Ok(())
            }
            Err(e) => {
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                error!(program = %self.spec.program.display(), error = %e, exit = code, "cannot start the gateway");
                Err(code)
            }
        }
    }

    fn on_signal(&mut self, sig: Signal) -> Option<i32> {
        match sig {
            Signal::SIGCHLD => return self.on_children(),
            Signal::SIGTERM | Signal::SIGINT => return self.on_stop(sig),
            Signal::SIGHUP if self.hooks.reload() => {}
            other => match (self.hooks.withheld(other), &self.gateway) {
                (Some(why), _) => warn!(signal = other.as_str(), "signal dropped: {why}"),
                (None, Some(g)) => {
                    info!(
                        signal = other.as_str(),
                        pid = g.pid.as_raw(),
                        "forwarding signal to the gateway"
                    );
                    if let Err(e) = sys::signal_pid(g.pid, other) {
                        warn!(signal = other.as_str(), error = %e, "forwarding failed");
                    }
                }
                (None, None) => info!(
                    signal = other.as_str(),
                    "signal dropped: no gateway running"
                ),
            },
        }
        None
    }

    fn on_stop(&mut self, sig: Signal) -> Option<i32> {
        if self.stop_requested {
            if let Some(g) = &self.gateway {
                info!(
                    signal = sig.as_str(),
                    "stop already in progress; forwarding again"
                );
                let _ = sys::signal_group(g.pid, sig);
            }
            return None;
        }
        self.stop_requested = true;
        self.stop_signal = Some(sig);
        self.schedule.cancel_restart();
        // A repair in progress is abandoned: the stop takes the gateway down.
        self.cycle = None;
        // Spells running get the same stop timeout to finish or take back
        // what they made.
        self.hooks.stopping();
        self.hooks.life(Life::Stopping { signal: sig });
        match &self.gateway {
            Some(g) => {
                info!(
                    signal = sig.as_str(),
                    pid = g.pid.as_raw(),
                    timeout_ms = self.policy.stop_timeout.as_millis() as u64,
                    "stopping the gateway"
                );
                if let Err(e) = sys::signal_group(g.pid, sig) {
                    warn!(error = %e, "cannot signal the gateway group");
                }
                self.draining = Some(Drain::new(
                    Some(g.pid),
                    None,
                    Instant::now(),
                    self.policy.stop_timeout,
                ));
                None
            }
            None => match &mut self.draining {
                // A final exit is already draining the group: just hurry it.
                Some(d) => {
                    d.hurry(Instant::now());
                    None
                }
                None if self.hooks.busy() => {
                    info!(
                        signal = sig.as_str(),
                        timeout_ms = self.policy.stop_timeout.as_millis() as u64,
                        "stop requested while no gateway runs; waiting for the spells"
                    );
                    self.draining = Some(Drain::new(
                        None,
                        Some(0),
                        Instant::now(),
                        self.policy.stop_timeout,
                    ));
                    None
                }
                None => {
                    info!(
                        signal = sig.as_str(),
                        "stop requested while no gateway runs; exiting"
                    );
                    Some(0)
                }
            },
        }
    }

    fn on_children(&mut self) -> Option<i32> {
        for (pid, exit) in sys::reap_all() {
            match &self.gateway {
                Some(g) if g.pid == pid => {
                    let ran = g.started.elapsed();
                    self.gateway = None;
                    if let Some(code) = self.on_gateway_exit(pid, exit, ran) {
                        return Some(code);
                    }
                }
                _ if self.hooks.child_ended(pid, exit) => self.begin_cycle(),
                _ => debug!(pid = pid.as_raw(), status = %exit, "reaped orphan"),
            }
        }
        self.check_drained()
    }

    /// Something the gateway depends on is gone: stop the gateway (its view
    /// of the share is dead: a remount in our namespace does not reach the
    /// private one a Buddy-role gateway lives in), then repair.
    fn begin_cycle(&mut self) {
        if self.stop_requested || self.draining.is_some() {
            return;
        }
        match &mut self.cycle {
            Some(Cycle::Stopping { then, .. }) => {
                *then = AfterStop::Repair;
                return;
            }
            // The repair picks up whatever else has gone meanwhile.
            Some(Cycle::Repairing { .. }) => return,
            None => {}
        }
        self.schedule.cancel();
        let now = Instant::now();
        self.cycle = Some(match &self.gateway {
            Some(g) => {
                warn!(
                    pid = g.pid.as_raw(),
                    timeout_ms = self.policy.stop_timeout.as_millis() as u64,
                    "stopping the gateway to repair what it depends on"
                );
                let _ = sys::signal_group(g.pid, Signal::SIGTERM);
                Cycle::Stopping {
                    stop: GroupStop::new(g.pid, now, self.policy.stop_timeout),
                    then: AfterStop::Repair,
                }
            }
            None => Cycle::Repairing {
                at: now,
                degraded: false,
            },
        });
    }

    /// The repair's timers: the gateway's stop deadline, the next repair step.
    fn cycle_timer(&mut self, now: Instant) -> Option<i32> {
        if let Some(Cycle::Stopping { stop, .. }) = &mut self.cycle
            && stop.kill_due(now)
        {
            warn!(
                pgid = stop.pgid.as_raw(),
                "stop timeout reached; killing the gateway's process group"
            );
            let _ = sys::signal_group(stop.pgid, Signal::SIGKILL);
            return None;
        }
        match self.cycle? {
            Cycle::Repairing { at, degraded } if now >= at => match self.hooks.repair() {
                Repair::Pending(d) => {
                    self.cycle = Some(Cycle::Repairing {
                        at: now + d,
                        degraded,
                    })
                }
                Repair::Ready => match &self.gateway {
                    Some(g) => {
                        info!(
                            pid = g.pid.as_raw(),
                            "repaired: restarting the gateway that ran without it"
                        );
                        let _ = sys::signal_group(g.pid, Signal::SIGTERM);
                        self.cycle = Some(Cycle::Stopping {
                            stop: GroupStop::new(g.pid, now, self.policy.stop_timeout),
                            then: AfterStop::Start,
                        });
                    }
                    None => {
                        info!("repaired: starting the gateway");
                        self.cycle = None;
                        self.schedule.cancel_restart();
                        if let Err(code) = self.start() {
                            return Some(code);
                        }
                    }
                },
                Repair::Failed { retry_in } => {
                    self.cycle = Some(Cycle::Repairing {
                        at: now + retry_in,
                        degraded: true,
                    });
                    if self.gateway.is_none() && !self.schedule.restart_pending() {
                        warn!(
                            retry_in_ms = retry_in.as_millis() as u64,
                            "repair failed; starting the gateway without it meanwhile"
                        );
                        if let Err(code) = self.start() {
                            return Some(code);
                        }
                    }
                }
            },
            _ => {}
        }
        None
    }

    /// How the gateway's run ended: an OOM kill is told apart (logged and
    /// counted) from any other SIGKILL.
    fn end_of(&mut self, pid: Pid, exit: Exit) -> End {
        let oom = exit == Exit::Signal(Signal::SIGKILL) && self.oom.new_kills() > 0;
        if oom {
            self.oom_kills += 1;
            warn!(
                pid = pid.as_raw(),
                oom_kills = self.oom_kills,
                counter = %self.oom.source(),
                "gateway killed for memory (the kernel's OOM killer)"
            );
        }
        End { exit, oom }
    }

    fn on_gateway_exit(&mut self, pid: Pid, exit: Exit, ran: Duration) -> Option<i32> {
        let ran_ms = ran.as_millis() as u64;
        let end = self.end_of(pid, exit);
        self.hooks.life(Life::Exited { end });
        if let Some(d) = &mut self.draining {
            info!(pid = pid.as_raw(), status = %exit, ran_ms, "gateway stopped");
            d.gateway_ended(exit.code());
            let why = Ending::Asked(self.stop_signal.unwrap_or(Signal::SIGTERM));
            self.hooks.life(Life::Ended { end, why });
            self.hooks.gateway_stopped();
            return None;
        }
        if let Some(Cycle::Stopping { stop, then }) = self.cycle
            && stop.pgid == pid
        {
            info!(pid = pid.as_raw(), status = %exit, ran_ms, "gateway stopped for the repair");
            if sys::group_alive(pid) {
                let _ = sys::signal_group(pid, Signal::SIGKILL);
            }
            match then {
                AfterStop::Repair => {
                    self.cycle = Some(Cycle::Repairing {
                        at: Instant::now(),
                        degraded: false,
                    })
                }
                AfterStop::Start => {
                    self.cycle = None;
                    if let Err(code) = self.start() {
                        return Some(code);
                    }
                }
            }
            return None;
        }
        let now = Instant::now();
        match self.schedule.after_exit(&self.policy, exit, ran, now) {
            Verdict::Exit(code) => {
                info!(pid = pid.as_raw(), status = %exit, ran_ms, policy = ?self.policy.restart, "gateway exited; not restarting");
                self.hooks.life(Life::Ended {
                    end,
                    why: Ending::Policy,
                });
                self.begin_final_drain(pid, code)
            }
            Verdict::GiveUp { code, crashes } => {
                error!(
                    pid = pid.as_raw(), status = %exit, crashes,
                    window_s = self.policy.restart_window.as_secs(), exit = code,
                    "gateway is crash-looping; giving up so the platform can replace the machine"
                );
                self.hooks.life(Life::Ended {
                    end,
                    why: Ending::GaveUp { crashes },
                });
                self.begin_final_drain(pid, code)
            }
            Verdict::Restart {
                delay,
                attempt,
                loop_began,
            } => {
                // Leftovers of the dead gateway's group would hold its ports.
                if sys::group_alive(pid) {
                    warn!(
                        pgid = pid.as_raw(),
                        "killing what is left of the dead gateway's process group"
                    );
                    let _ = sys::signal_group(pid, Signal::SIGKILL);
                }
                info!(
                    pid = pid.as_raw(), status = %exit, ran_ms, restart_in_ms = delay.as_millis() as u64,
                    attempt, "gateway exited; restarting"
                );
                if loop_began {
                    warn!(
                        exits = attempt,
                        backoff_max_ms = self.policy.backoff_max.as_millis() as u64,
                        gives_up = self.policy.max_restarts.is_some(),
                        "gateway is crash-looping; restarting it with capped backoff until it runs again"
                    );
                    self.hooks.life(Life::CrashLooping {
                        exits: attempt,
                        end,
                    });
                } else {
                    self.hooks.life(if self.schedule.looping() {
                        Life::CrashLooping {
                            exits: attempt,
                            end,
                        }
                    } else {
                        Life::Restarting { end }
                    });
                }
                None
            }
        }
    }

    /// The gateway has ended for good: give the rest of its group a stop
    /// timeout to finish, SIGTERM first.
    fn begin_final_drain(&mut self, pgid: Pid, code: i32) -> Option<i32> {
        // We exit after this: spells get the same time to finish.
        self.hooks.stopping();
        self.hooks.gateway_stopped();
        self.draining = Some(Drain::new(
            Some(pgid),
            Some(code),
            Instant::now(),
            self.policy.stop_timeout,
        ));
        if sys::group_alive(pgid) {
            info!(
                pgid = pgid.as_raw(),
                "terminating the rest of the gateway's process group"
            );
            let _ = sys::signal_group(pgid, Signal::SIGTERM);
        }
        self.check_drained()
    }

    fn check_drained(&mut self) -> Option<i32> {
        let d = self.draining.as_ref()?;
        let code = d.code()?;
        if d.group().is_some_and(sys::group_alive) || self.hooks.busy() {
            return None;
        }
        // The last orphans may exit with the gateway: every one is reaped
        // and logged, as in the loop.
        for (pid, exit) in sys::reap_all() {
            debug!(pid = pid.as_raw(), status = %exit, "reaped orphan");
        }
        let code = self.exit_override.unwrap_or(code);
        info!(exit = code, "supervisor exiting");
        Some(code)
    }

    /// Whatever deadline has passed: the boot pages' release, the stop
    /// timeout, a restart's backoff.
    fn on_timers(&mut self) -> Option<i32> {
        let now = Instant::now();
        if self.release_at.is_some_and(|t| now >= t) {
            self.release_at = None;
            let released = sys::release_boot_text();
            debug!(
                kib = released / 1024,
                "released the boot code's resident pages"
            );
        }
        if self.hooks.next_tick().is_some_and(|t| now >= t) {
            self.hooks.tick();
        }
        if self.draining.is_some() {
            return self.drain_timer(now);
        }
        if let Some(code) = self.cycle_timer(now) {
            return Some(code);
        }
        if let Some(exits) = self.schedule.recovered(now)
            && let Some(g) = &self.gateway
        {
            info!(
                pid = g.pid.as_raw(),
                exits,
                up_s = g.started.elapsed().as_secs(),
                "gateway recovered: running again after a crash loop"
            );
            self.hooks.life(Life::Recovered { exits });
        }
        if self.schedule.restart_due(now)
            && let Err(code) = self.start()
        {
            return Some(code);
        }
        None
    }

    /// A drain past its deadline: SIGKILL for the group, then after a grace
    /// period exit whether or not the kernel has finished it off.
    fn drain_timer(&mut self, now: Instant) -> Option<i32> {
        let d = self.draining.as_mut()?;
        match d.on_time(now) {
            DrainStep::Wait => {}
            DrainStep::Kill(group) => {
                if let Some(pgid) = group {
                    warn!(
                        pgid = pgid.as_raw(),
                        timeout_ms = self.policy.stop_timeout.as_millis() as u64,
                        "stop timeout reached; killing the gateway's process group"
                    );
                    let _ = sys::signal_group(pgid, Signal::SIGKILL);
                }
                self.hooks.kill_busy();
            }
            DrainStep::GiveUp => {
                let code = self
                    .exit_override
                    .or(d.code())
                    .unwrap_or(128 + Signal::SIGKILL as i32);
                error!(
                    pgid = d.group().map(|p| p.as_raw()),
                    exit = code,
                    "still alive after SIGKILL; exiting anyway"
                );
                return Some(code);
            }
        }
        self.check_drained()
    }
}
