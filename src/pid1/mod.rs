//! What makes the supervisor a correct PID 1 (or child subreaper under Fly's
//! init) for the gateway: [`sys`] is the kernel boundary (every syscall of
//! the PID-1 path, each with why); [`supervise`] the loop (signals, the one
//! reaper, stop, reload), [`restart`] its restart policy and timing,
//! [`drain`] the stop timeout and the way out; [`privileges`]
//! the identity the gateway runs as; [`memory`] the heap cap, OOM scores and
//! OOM kills; [`init`] the loop without a Buddy.
//! (OpenClaw reclaims its own stale locks in `$STATE/tmp/openclaw-<uid>/`;
//! the state step removes what Clawdbot left there once.)

pub mod drain;
pub mod init;
pub mod memory;
pub mod privileges;
pub mod restart;
pub mod supervise;
pub mod sys;
