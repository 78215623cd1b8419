//! What grows the swarm: [`spell`] is SpawnBuddy (validate, generate, cast),
//! [`deploy`] puts a Buddy on Fly.io.

pub mod deploy;
pub mod spell;
