//! Showing the swarm's health truthfully: [`metrics`] what this supervisor
//! serves for Fly's Prometheus; [`status`] the swarm judged, Buddy by Buddy,
//! from the registry and the Machines API. (What each supervisor writes in
//! the registry is `swarm::presence`.)

pub mod metrics;
pub mod status;
