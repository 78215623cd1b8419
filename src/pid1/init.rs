//! `supervisor init`: the supervision loop without a Buddy, for any other
//! container of the swarm and as the like-for-like comparison with tini.

use nix::sys::signal::SigSet;
use nix::sys::signalfd::SignalFd;
use tracing::error;

use super::supervise::{Hooks, Policy, Supervisor};
use super::sys::{self, SpawnSpec};

/// `supervisor init`: the supervision loop alone, for a program that is not a
/// Buddy. Like tini: the child gets our environment and working directory
/// untouched and every signal (SIGHUP included); we reap, stop it with a
/// timeout and restart it as the policy says.
pub fn run(command: Vec<String>, policy: Policy, sfd: &SignalFd, mask: SigSet) -> i32 {
    struct Plain;
    impl Hooks for Plain {
        fn reload(&mut self) -> bool {
            false
        }
    }
    if !sys::is_pid1()
        && let Err(e) = sys::become_subreaper()
    {
        error!(error = %e, "cannot become a child subreaper");
        return 1;
    }
    let Some((program, args)) = command.split_first() else {
        error!("init: no command given");
        return 2;
    };
    let spec = SpawnSpec {
        program: program.into(),
        args: args.to_vec(),
        env: std::env::vars().collect(),
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
        credentials: None,
        mask_dir: None,
        harden: false,
        stdio: None,
        oom_score_adj: None,
    };
    Supervisor::new(sfd, mask, spec, policy, &mut Plain).run()
}
