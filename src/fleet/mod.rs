//! What grows the swarm: [`spell`] is SpawnBuddy (validate, generate, cast),
//! [`deploy`] puts a Buddy on Fly.io, [`fly`] is the Machines API client.

pub mod apply;
pub mod deploy;
pub mod fly;
pub mod machine;
pub mod socket;
pub mod spell;
pub mod upgrade;
