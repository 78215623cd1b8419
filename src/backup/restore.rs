//! Bringing a Buddy's state back: the boot's `restore` step (a volume with
//! no state gets the newest backup before anything else is written to it)
//! and `supervisor backup restore` (into a directory, or at the next boot
//! of the Machine).
//!
//! A snapshot is restored into a root-only working dir on the volume
//! (`.restore-<time>`), every file read back against the repository
//! (`restic restore --verify`), every SQLite database checked whole
//! (`integrity_check`); only then is it moved into place, by rename, so a
//! boot cut short leaves either the old state or the new, never a mix. A
//! snapshot that fails any of this is refused, said why, and the next older
//! one is tried.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use super::Settings;
use super::restic::{Restic, Snapshot};
use crate::untrusted::{Dir, Kind};

/// The working dirs' names in the state dir (left out of backups).
pub const WORK_PREFIX: &str = ".restore-";
/// Root's request to the next boot: restore even though state is there
/// (written by `supervisor backup restore --next-boot`). Believed only if
/// root made it: the gateway owns the state dir and could plant one.
pub const REQUEST: &str = ".restore-request";

#[derive(Debug)]
pub enum Restored {
    /// The volume has state: nothing restored (the usual boot).
    StatePresent,
    /// No backup exists yet (a new Buddy).
    NoBackup,
    Done {
        snapshot: String,
        time: String,
        files: usize,
        /// Snapshots refused before this one, with why.
        refused: Vec<String>,
    },
}

/// Whether the state dir holds anything a boot did not make: any entry but
/// what backups leave out.
pub fn has_state(dir: &Dir) -> io::Result<bool> {
    Ok(dir
        .entries()?
        .iter()
        .any(|e| !super::excluded(&e.name.to_string_lossy())))
}

/// A root-made request, its `--at` time if it has one (`latest` or seconds
/// since the epoch).
fn read_request(dir: &Dir) -> Option<Option<SystemTime>> {
    let m = dir.stat(REQUEST).ok()??;
    let ours = m.kind == Kind::File
        && m.nlink == 1
        && (m.uid == 0 || m.uid == nix::unistd::geteuid().as_raw());
    if !ours {
        warn!(
            file = REQUEST,
            uid = m.uid,
            "restore: a restore request not made by root; ignored and removed"
        );
        let _ = dir.unlink(REQUEST);
        return None;
    }
    let text = String::from_utf8(dir.read(REQUEST, 256).ok()?).ok()?;
    Some(
        text.trim()
            .parse::<u64>()
            .ok()
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
    )
}

/// Asks the next boot to restore (as of `at`, else the newest backup).
pub fn request_next_boot(state: &Path, at: Option<SystemTime>) -> io::Result<()> {
    let dir = Dir::open(state)?;
    let text = at.map_or_else(
        || "latest\n".to_string(),
        |t| {
            format!(
                "{}\n",
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
            )
        },
    );
    dir.replace(REQUEST, text.as_bytes(), 0o600, true)
}

/// The snapshots to try, newest first, none newer than `at`.
pub fn candidates(all: Vec<Snapshot>, at: Option<SystemTime>) -> Vec<Snapshot> {
    let mut v: Vec<Snapshot> = all
        .into_iter()
        .filter(|s| at.is_none_or(|at| s.at().is_some_and(|t| t <= at)))
        .collect();
    v.reverse();
    v
}

/// The boot's step: see the module. Errors only when the backups cannot be
/// read at all (the boot goes on with a fresh state and says so).
pub fn at_boot(s: &Settings, state: &Path, stop: &dyn Fn() -> bool) -> Result<Restored, String> {
    let dir = Dir::open(state).map_err(|e| format!("{}: {e}", state.display()))?;
    let request = read_request(&dir);
    if request.is_none() && has_state(&dir).map_err(|e| format!("{}: {e}", state.display()))? {
        return Ok(Restored::StatePresent);
    }
    let at = request.flatten();
    let restic = Restic::new(s, stop);
    let all = match restic.snapshots(s.restore_timeout) {
        Ok(all) => all,
        Err(e) => {
            // The next boot tries again, as of now: what this run's fresh
            // state writes to the backups meanwhile never replaces the
            // Buddy's memories.
            let asked = request_next_boot(state, at.or_else(|| Some(SystemTime::now())));
            return Err(format!(
                "cannot list this Buddy's backups: {e}\n{}",
                match asked {
                    Ok(()) => "the next boot restores the newest backup made before this one (restart the Machine once the storage answers)".to_string(),
                    Err(e) => format!("and the request for the next boot could not be written: {e}"),
                }
            ));
        }
    };
    let restored = newest_whole(&restic, s, &dir, all, at)?;
    let _ = dir.unlink(REQUEST);
    Ok(restored)
}

/// The newest snapshot (none newer than `at`) that restores whole into
/// `dir`; each one refused before it is said and kept in `refused`.
fn newest_whole(
    restic: &Restic,
    s: &Settings,
    dir: &Dir,
    all: Vec<Snapshot>,
    at: Option<SystemTime>,
) -> Result<Restored, String> {
    if all.is_empty() {
        return Ok(Restored::NoBackup);
    }
    let mut refused = Vec::new();
    for snap in candidates(all, at) {
        match restore_snapshot(restic, s, dir, &snap) {
            Ok(files) => {
                return Ok(Restored::Done {
                    snapshot: snap.short_id,
                    time: snap.time,
                    files,
                    refused,
                });
            }
            Err(e) => {
                error!(snapshot = %snap.short_id, time = %snap.time, "restore: snapshot refused, trying the next older one:\n{e}");
                refused.push(format!("{} ({}): {e}", snap.short_id, snap.time));
            }
        }
    }
    Err(format!("every backup was refused:\n{}", refused.join("\n")))
}

/// Restores one snapshot into a working dir in the state dir, checks it,
/// and moves it into place (what was there moved aside first, for a
/// requested restore). The number of files placed.
fn restore_snapshot(
    restic: &Restic,
    s: &Settings,
    dir: &Dir,
    snap: &Snapshot,
) -> Result<usize, String> {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let work_name = format!("{WORK_PREFIX}{secs}-{}", snap.short_id);
    dir.remove_tree(&work_name).map_err(|e| e.to_string())?;
    dir.mkdir(&work_name, 0o700).map_err(|e| e.to_string())?;
    let work_path = dir.shown(&work_name);
    let result = (|| {
        restic
            .restore(&snap.id, &work_path, s.restore_timeout)
            .map_err(|e| e.to_string())?;
        check_tree(&work_path)?;
        let work = dir.dir(&work_name).map_err(|e| e.to_string())?;
        place(dir, &work, secs).map_err(|e| format!("moving the restored state into place: {e}"))
    })();
    let _ = dir.remove_tree(&work_name);
    result
}

/// A restored tree is whole: `state/` is there and every database copy
/// passes SQLite's full `integrity_check`.
pub fn check_tree(work: &Path) -> Result<(), String> {
    if !work.join("state").is_dir() {
        return Err("the snapshot holds no state/ tree (not a MyBuddy backup)".into());
    }
    for db in files_under(&work.join("sqlite")) {
        let c = rusqlite::Connection::open_with_flags(
            &db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(|e| format!("{}: {e}", db.display()))?;
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| format!("{}: {e}", db.display()))?;
        if ok != "ok" {
            return Err(format!("{}: integrity_check: {ok}", db.display()));
        }
    }
    Ok(())
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// Moves `work/state/*` into the state dir and each database copy
/// `work/sqlite/<path>` to `<path>`; whatever is in the way goes into
/// `.restore-replaced-<time>` (kept for the operator).
fn place(dir: &Dir, work: &Dir, secs: u64) -> io::Result<usize> {
    let restored = work.dir("state")?;
    let aside_name = format!("{WORK_PREFIX}replaced-{secs}");
    let mut aside: Option<Dir> = None;
    let mut move_aside = |name: &OsStr| -> io::Result<()> {
        if aside.is_none() {
            dir.mkdir(&aside_name, 0o700)?;
            aside = Some(dir.dir(&aside_name)?);
        }
        dir.rename_into(name, aside.as_ref().expect("made"), name)
    };
    let mut files = 0;
    for e in restored.entries()? {
        if dir.stat(&e.name)?.is_some() {
            move_aside(&e.name)?;
        }
        restored.rename_into(&e.name, dir, &e.name)?;
        files += 1;
    }
    if work.stat("sqlite")?.is_some() {
        files += place_databases(&work.dir("sqlite")?, dir)?;
    }
    if aside.is_some() {
        info!(aside = %dir.shown(&aside_name).display(), "restore: the state that was there is kept aside");
    }
    Ok(files)
}

fn place_databases(copies: &Dir, dest: &Dir) -> io::Result<usize> {
    let mut n = 0;
    for e in copies.entries()? {
        match e.kind {
            Some(Kind::Dir) => {
                dest.ensure_dir(&e.name, 0o700)?;
                n += place_databases(&copies.dir(&e.name)?, &dest.dir(&e.name)?)?;
            }
            // SQLite's side files of the check: not part of the state.
            Some(Kind::File)
                if ["-wal", "-shm", "-journal"]
                    .iter()
                    .any(|x| e.name.to_string_lossy().ends_with(x)) => {}
            Some(Kind::File) => {
                // A stale journal of the old database must not be applied
                // to the copy.
                for suffix in ["-wal", "-shm", "-journal"] {
                    let mut j = e.name.clone();
                    j.push(suffix);
                    if dest.stat(&j)?.is_some() {
                        dest.unlink(&j)?;
                    }
                }
                copies.rename_into(&e.name, dest, &e.name)?;
                n += 1;
            }
            _ => {}
        }
    }
    Ok(n)
}

/// Restores snapshot `snap` into `target` (new or empty) as a ready state
/// dir: the operator's way from a workstation.
pub fn into_dir(s: &Settings, target: &Path, at: Option<SystemTime>) -> Result<Restored, String> {
    std::fs::create_dir_all(target).map_err(|e| format!("{}: {e}", target.display()))?;
    let dir = Dir::open(target).map_err(|e| format!("{}: {e}", target.display()))?;
    if has_state(&dir).map_err(|e| e.to_string())? {
        return Err(format!(
            "{} is not empty: restore into a new directory (nothing there was changed)",
            target.display()
        ));
    }
    let never = || false;
    let restic = Restic::new(s, &never);
    let all = restic
        .snapshots(s.restore_timeout)
        .map_err(|e| e.to_string())?;
    newest_whole(&restic, s, &dir, all, at)
}
