//! MyBuddyTalk: the supervisor that boots and runs one Buddy (a Clawdbot
//! gateway), and the tooling that defines, checks and grows the swarm.
//!
//! One module per concern; `main.rs` is a thin CLI over them.

pub mod boot;
pub mod buddy;
pub mod check;
pub mod cli;
pub mod gateway_lock;
pub mod jsonfile;
pub mod logging;
pub mod policy;
pub mod privileges;
pub mod problem;
pub mod registry;
pub mod render;
pub mod resonate;
pub mod secrets;
pub mod spell;
pub mod state;
pub mod supervise;
pub mod swarm;
pub mod sys;
pub mod token;
