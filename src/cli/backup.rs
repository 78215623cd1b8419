//! `supervisor backup`: the Buddy's backups, for the operator (on the
//! Machine through `fly ssh console`, or from a workstation with the
//! Buddy's backup secrets exported) and for the supervisor (`cycle`).

use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use super::{IMAGE_STATE_DIR, fail};
use crate::backup::{self, cycle, restic::Restic, restore};

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up the state dir now, even if nothing changed (waits for a running cycle)
    Now(StateArg),
    /// List this Buddy's backups, oldest first
    List,
    /// Restore a backup: into a new directory, or into the state dir at the Machine's next boot
    Restore(RestoreArgs),
    /// One scheduled cycle (the supervisor runs it every interval)
    #[command(hide = true)]
    Cycle(StateArg),
}

#[derive(Debug, Args)]
pub struct StateArg {
    /// The Buddy's state dir
    #[arg(long = "state", env = "MYBUDDY_STATE_DIR", default_value = IMAGE_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The newest backup at or before this time (RFC 3339, e.g. "2026-12-06 03:00:00", UTC)
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub at: Option<SystemTime>,
    /// Restore into this new (or empty) directory: a ready state dir
    #[arg(
        long,
        conflicts_with = "next_boot",
        required_unless_present = "next_boot"
    )]
    pub target: Option<PathBuf>,
    /// Restore into the state dir at the next boot (the state there now is kept aside); then restart the Machine
    #[arg(long)]
    pub next_boot: bool,
    #[command(flatten)]
    pub state: StateArg,
}

pub(super) fn cmd_backup(c: BackupCommand) -> i32 {
    let s = match backup::from_env(&crate::config::render::process_env) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!(
                "backups are off: no {} (the Buddy's backup secrets)",
                backup::SECRETS.join(", ")
            );
            return backup::OFF_EXIT;
        }
        Err(p) => return fail(p),
    };
    match c {
        BackupCommand::Cycle(a) => run_cycle(&s, a, false, true),
        BackupCommand::Now(a) => run_cycle(&s, a, true, false),
        BackupCommand::List => {
            let never = || false;
            match Restic::new(&s, &never).snapshots(s.restore_timeout) {
                Ok(v) => {
                    println!("{:<10} {:<36} HOST", "ID", "TIME");
                    for snap in &v {
                        println!("{:<10} {:<36} {}", snap.short_id, snap.time, snap.hostname);
                    }
                    eprintln!("{} backup(s) in {}", v.len(), s.repository);
                    0
                }
                Err(e) => fail(e),
            }
        }
        BackupCommand::Restore(a) => {
            if a.next_boot {
                return match restore::request_next_boot(&a.state.state_dir, a.at) {
                    Ok(()) => {
                        println!(
                            "the next boot restores {} into {} (what is there now is kept in {}replaced-*); restart the Machine: fly machine restart",
                            a.at.map_or("the newest backup".to_string(), |t| format!(
                                "the newest backup at or before {}",
                                humantime::format_rfc3339_seconds(t)
                            )),
                            a.state.state_dir.display(),
                            restore::WORK_PREFIX
                        );
                        0
                    }
                    Err(e) => fail(format!("{}: {e}", a.state.state_dir.display())),
                };
            }
            let target = a.target.expect("clap: required unless --next-boot");
            match restore::into_dir(&s, &target, a.at) {
                Ok(restore::Restored::Done {
                    snapshot,
                    time,
                    files,
                    ..
                }) => {
                    println!(
                        "restored backup {snapshot} ({time}) into {}: {files} entries",
                        target.display()
                    );
                    0
                }
                Ok(_) => fail(format!("no backup in {} to restore", s.repository)),
                Err(e) => fail(e),
            }
        }
    }
}

fn run_cycle(s: &backup::Settings, a: StateArg, force: bool, quiet: bool) -> i32 {
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let t = std::time::Instant::now();
    let never = || false;
    match cycle::run(s, &a.state_dir, &s.host(), force, &never) {
        Ok(o) => {
            if !quiet {
                println!(
                    "{}: snapshot {} ({} files, {} bytes new, {} databases copied) in {} ms",
                    o.result,
                    o.snapshot,
                    o.files,
                    o.bytes_added,
                    o.databases.len(),
                    o.ms
                );
                for k in &o.skipped {
                    eprintln!("left out of the database copies (kept as a plain file): {k}");
                }
            }
            0
        }
        Err(e) => {
            cycle::record_failure(s, started, t.elapsed().as_millis() as u64, &e.to_string());
            if !quiet {
                return fail(e);
            }
            1
        }
    }
}
