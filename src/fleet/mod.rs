//! What grows the swarm: [`spell`] is SpawnBuddy (validate, generate, cast),
//! [`upgrade`] is UpgradeBuddy, [`apply`] puts a Buddy on its Fly Machine
//! over the Machines API ([`fly`], the client) with [`machine`]'s one
//! definition, [`deploy`] runs a checkout's scripts/deploy, [`socket`] lets
//! a Magician's gateway cast through its supervisor.

pub mod apply;
pub mod deploy;
pub mod fly;
pub mod journal;
pub mod machine;
pub mod replace;
pub mod socket;
pub mod spell;
pub mod upgrade;
