//! MyBuddyTalk: the supervisor that boots and runs one Buddy (an OpenClaw
//! gateway), and the tooling that defines, checks and grows the swarm.
//!
//! A folder per concern, a file per idea; `main.rs` is a thin CLI over them:
//! - [`config`]: the gateway's config, rendered from template + personal
//!   config + policy + secrets + token, with the problem list it reports;
//! - [`pid1`]: the kernel boundary and the supervision loop: what makes the
//!   supervisor a correct PID 1 (or subreaper) for the gateway;
//! - [`swarm`]: the share every Buddy mounts, its registry and announcements;
//! - [`fleet`]: what grows the swarm: spells and deployment;
//! - [`buddy`] and [`state`]: a Buddy's identity and its persistent state;
//!   [`boot`]: the boot steps; [`check`]: `check-config`; [`cli`]: commands;
//! - [`backup`]: the state backed up off the Machine, restored by the boot;
//! - [`health`]: the metrics Fly scrapes;
//! - [`untrusted`]: root's only way into what a gateway can write (the
//!   share, the state dir): directory handles, no link ever followed.

pub mod backup;
pub mod boot;
pub mod buddy;
pub mod check;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod health;
pub mod logging;
pub mod pid1;
pub mod state;
pub mod swarm;
pub mod untrusted;
