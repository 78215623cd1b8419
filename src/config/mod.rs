//! The gateway's config, from the repository's files to the file the gateway
//! reads: [`render`] merges the template and the Buddy's config and runs the
//! pipeline; [`policy`] holds the MyBuddy rules; [`secrets`] substitutes
//! `${VAR}` references with the gateway's own grammar and escapes values;
//! [`token`] keeps the gateway token; [`workspace`] knows which persona and
//! memory files the gateway reads; [`jsonfile`] reads and writes JSON with
//! located errors; [`problem`] is the list every check reports at once.

pub mod jsonfile;
pub mod policy;
pub mod problem;
pub mod render;
pub mod secrets;
pub mod token;
pub mod workspace;
