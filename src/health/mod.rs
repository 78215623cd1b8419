//! Showing the swarm's health truthfully: [`metrics`] what this supervisor
//! serves for Fly's Prometheus. (What each supervisor writes in the
//! registry is `swarm::presence`.)

pub mod metrics;
