//! One backup of a Buddy's state: a one-shot run (`supervisor backup
//! cycle`, a child of the supervisor's reaper; `supervisor backup now`).
//!
//! 1. In a mount namespace of its own, the state dir's handle is bound at
//!    `<cache>/view/state` with no link ever followed ([`super::view`]).
//! 2. The tree is walked (what the boot rebuilds left out, see
//!    [`super::excluded`]) into a fingerprint of every entry's name, type,
//!    size, mode, owner and modification time. The same fingerprint as the last backup
//!    that succeeded: nothing to do (most cycles of a quiet Buddy).
//! 3. Every SQLite database gets a consistent copy at `<cache>/view/sqlite/
//!    <its path>` through SQLite's online backup API (one step under a read
//!    lock: a transaction the gateway commits meanwhile is in the copy
//!    whole or not at all), checked with `quick_check`. The live files
//!    (`-wal`, `-shm`, `-journal` with them) are left out of the backup: a
//!    raw copy of a database being written is not a database.
//! 4. `restic backup state sqlite` from `<cache>/view`: encrypted, only new
//!    chunks sent. A snapshot exists only once its data does.
//! 5. Once a day: `forget --prune` by the retention policy.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Settings;
use super::restic::{Restic, ResticError, Summary};
use crate::untrusted::Dir;

/// The longest a cycle may take before the supervisor ends it; restic is
/// given what is left of it.
pub const DEADLINE: Duration = Duration::from_secs(300);
/// How long a copy waits for the gateway to let go of a write lock.
const SQLITE_BUSY: Duration = Duration::from_secs(20);
/// The most entries a state dir may hold before the walk stops (a gateway
/// filling its dir with millions of files stalls its own backup only).
const MAX_ENTRIES: usize = 1_000_000;
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The last cycle, as the supervisor and `backup now` read it
/// (`<cache>/last-cycle.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// `backed-up`, `unchanged` or `failed`.
    pub result: String,
    #[serde(default)]
    pub snapshot: String,
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub bytes_added: u64,
    /// SQLite databases copied through the backup API.
    #[serde(default)]
    pub databases: Vec<String>,
    /// What was left out and why (not a database, a write lock held).
    #[serde(default)]
    pub skipped: Vec<String>,
    #[serde(default)]
    pub error: String,
    pub ms: u64,
    /// When this cycle began (seconds since the epoch): what it backed up
    /// is the state as of then.
    pub started: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("backup cache {path}: {source}")]
    Cache { path: PathBuf, source: io::Error },
    #[error("state dir {path}: {source}")]
    State { path: PathBuf, source: io::Error },
    #[error("cannot make the backup's view of the state dir: {0}")]
    View(io::Error),
    #[error(transparent)]
    Restic(#[from] ResticError),
    /// restic 0.14 fails on a full disk with a bare nil-pointer panic: the
    /// reason is ours to say.
    #[error(
        "{source}\n(the backup's working dir {path} is full: {free_kib} KiB free; give MYBUDDY_BACKUP_CACHE room)"
    )]
    Full {
        path: PathBuf,
        free_kib: u64,
        source: ResticError,
    },
}

/// Below this much free space the working dir is called full.
const FULL_BELOW: u64 = 64 << 20;

/// The free space of the filesystem `path` is on, when it is nearly none.
fn nearly_full(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    (free < FULL_BELOW).then_some(free / 1024)
}

pub fn last_path(cache: &Path) -> PathBuf {
    cache.join("last-cycle.json")
}

pub fn read_last(cache: &Path) -> Option<Outcome> {
    let bytes = std::fs::read(last_path(cache)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Root's private working dir: made 0700, refused inside the state dir.
pub fn prepare_cache(s: &Settings, state: &Path) -> Result<(), CycleError> {
    let err = |source| CycleError::Cache {
        path: s.cache.clone(),
        source,
    };
    if let Ok(m) = std::fs::symlink_metadata(&s.cache) {
        // Made 0700 below: never a shared directory (/tmp) or someone else's.
        let shared = m.mode() & 0o1002 != 0;
        if !m.is_dir() || shared || m.uid() != nix::unistd::geteuid().as_raw() {
            return Err(err(io::Error::other(
                "is not a directory of the backup's own (a shared or someone else's directory, or not a directory): give MYBUDDY_BACKUP_CACHE a dir of its own",
            )));
        }
    }
    std::fs::create_dir_all(&s.cache).map_err(err)?;
    std::fs::set_permissions(&s.cache, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    let (c, st) = (
        s.cache.canonicalize().map_err(err)?,
        state.canonicalize().unwrap_or_else(|_| state.to_path_buf()),
    );
    if c.starts_with(&st) {
        return Err(err(io::Error::other(
            "is inside the state dir, which the gateway writes: put it elsewhere (MYBUDDY_BACKUP_CACHE)",
        )));
    }
    Ok(())
}

/// One cycle in this process (see the module's steps). `force`: back up
/// even when nothing changed (`backup now`, before an upgrade).
pub fn run(
    s: &Settings,
    state: &Path,
    host: &str,
    force: bool,
    stop: &dyn Fn() -> bool,
) -> Result<Outcome, CycleError> {
    let t = Instant::now();
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if !nix::unistd::geteuid().is_root() {
        return Err(CycleError::View(io::Error::other(
            "a backup needs root: it reads the state dir through a private bind mount",
        )));
    }
    prepare_cache(s, state)?;
    let cache_err = |source| CycleError::Cache {
        path: s.cache.clone(),
        source,
    };
    // One cycle at a time (a `backup now` over ssh waits for the scheduled
    // one): the lock is in root's private dir, nobody else can hold it.
    let lock = std::fs::File::create(s.cache.join("cycle.lock")).map_err(cache_err)?;
    crate::untrusted::lock_until(&lock, Instant::now() + DEADLINE).map_err(cache_err)?;

    if let Err(source) = Dir::open(state) {
        return Err(CycleError::State {
            path: state.to_path_buf(),
            source,
        });
    }
    let view = super::view::enter(state, &s.cache).map_err(CycleError::View)?;
    let tree = walk(&view);
    let copies = s.cache.join("view/sqlite");
    let fp = fingerprint(&tree);
    let fp_path = s.cache.join("fingerprint");
    let last_fp = std::fs::read_to_string(&fp_path).unwrap_or_default();
    let mut out = Outcome {
        started,
        ..Outcome::default()
    };
    if !force && last_fp == fp {
        out.result = "unchanged".into();
        out.ms = t.elapsed().as_millis() as u64;
        write_last(s, &out);
        return Ok(out);
    }

    // Fresh copies each time: a database the gateway removed is not
    // resurrected from an old copy.
    let _ = std::fs::remove_dir_all(&copies);
    std::fs::create_dir_all(&copies).map_err(cache_err)?;
    let mut excludes = Vec::new();
    let anchor = |rel: &Path| format!("{}/{}", view_anchor(&s.cache), glob_escape(rel));
    for name in tree.excluded_top.iter() {
        excludes.push(anchor(Path::new(name)));
    }
    for rel in &tree.databases {
        let dest = copies.join(rel);
        match copy_database(&view.join(rel), &dest) {
            Ok(()) => {
                out.databases.push(rel.display().to_string());
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut r = rel.clone().into_os_string();
                    r.push(suffix);
                    excludes.push(anchor(Path::new(&r)));
                }
            }
            // Kept as a plain file: whatever it is, it is the gateway's.
            Err(e) => out.skipped.push(format!("{}: {e}", rel.display())),
        }
    }
    let exclude_file = s.cache.join("exclude");
    std::fs::write(&exclude_file, excludes.join("\n") + "\n").map_err(cache_err)?;

    let restic = Restic::new(s, stop);
    let left = |t: Instant| {
        DEADLINE
            .saturating_sub(t.elapsed())
            .max(Duration::from_secs(5))
    };
    let marker = s.cache.join("repository");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(s.repository.as_str()) {
        restic.ensure_repository(left(t))?;
        let _ = std::fs::write(&marker, &s.repository);
    }
    let summary: Summary = restic
        .backup(
            &s.cache.join("view"),
            &["state", "sqlite"],
            &exclude_file,
            host,
            left(t),
        )
        .map_err(|source| match nearly_full(&s.cache) {
            Some(free_kib) => CycleError::Full {
                path: s.cache.clone(),
                free_kib,
                source,
            },
            None => CycleError::Restic(source),
        })?;
    let _ = std::fs::write(&fp_path, &fp);
    out.result = "backed-up".into();
    out.snapshot = summary.snapshot_id.chars().take(8).collect();
    out.files = summary.total_files_processed;
    out.bytes = summary.total_bytes_processed;
    out.bytes_added = summary.data_added;
    out.ms = t.elapsed().as_millis() as u64;
    write_last(s, &out);
    prune_if_due(s, &restic);
    Ok(out)
}

fn write_last(s: &Settings, out: &Outcome) {
    let path = last_path(&s.cache);
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, serde_json::to_vec(out).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// A failed cycle is recorded too (the supervisor reads why).
pub fn record_failure(s: &Settings, started: u64, ms: u64, error: &str) {
    write_last(
        s,
        &Outcome {
            result: "failed".into(),
            error: error.to_string(),
            ms,
            started,
            ..Outcome::default()
        },
    );
}

fn prune_if_due(s: &Settings, restic: &Restic) {
    let stamp = s.cache.join("pruned");
    let due = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .map_or(true, |t| t.elapsed().unwrap_or_default() >= PRUNE_EVERY);
    if !due {
        return;
    }
    match restic.forget_and_prune(DEADLINE) {
        Ok(()) => {
            let _ = std::fs::write(&stamp, b"");
        }
        Err(e) => tracing::warn!(error = %e, "backup: forget/prune failed; tried again next cycle"),
    }
}

/// The view's absolute path as restic sees it (its exclude patterns are
/// matched against absolute paths).
fn view_anchor(cache: &Path) -> String {
    let c = cache.canonicalize().unwrap_or_else(|_| cache.to_path_buf());
    format!("{}/state", c.join("view").display())
}

/// A name taken literally in a restic (Go `filepath.Match`) pattern.
fn glob_escape(p: &Path) -> String {
    let mut out = String::new();
    for ch in p.to_string_lossy().chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Tree {
    /// (path, type, size, mode, uid, modification time ns) per entry.
    entries: Vec<(PathBuf, u32, u64, u32, u32, i128)>,
    /// Regular files named `*.sqlite` (relative paths).
    pub databases: Vec<PathBuf>,
    /// Top-level names left out that exist.
    pub excluded_top: Vec<String>,
}

/// Walks the view (no link is followed: `symlink_metadata` and the mount's
/// `nosymfollow`), in name order, bounded.
pub fn walk(root: &Path) -> Tree {
    let mut tree = Tree::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            if tree.entries.len() >= MAX_ENTRIES {
                return tree;
            }
            let r = rel.join(&name);
            if rel.as_os_str().is_empty() && super::excluded(&name.to_string_lossy()) {
                tree.excluded_top.push(name.to_string_lossy().into_owned());
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(root.join(&r)) else {
                continue;
            };
            // SQLite's shared-memory index changes when anyone reads the
            // database (our own copy does): not a change of the state.
            if m.is_file() && name.to_string_lossy().ends_with(".sqlite-shm") {
                continue;
            }
            // A directory's own times change with its entries, which are
            // fingerprinted themselves (and with SQLite's readers).
            let mtime = if m.is_dir() {
                0
            } else {
                i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
            };
            tree.entries.push((
                r.clone(),
                m.mode() & 0o170000,
                if m.is_dir() { 0 } else { m.len() },
                m.mode() & 0o7777,
                m.uid(),
                mtime,
            ));
            if m.is_dir() {
                stack.push(r);
            } else if m.is_file() && name.to_string_lossy().ends_with(".sqlite") {
                tree.databases.push(r);
            }
        }
    }
    tree
}

fn fingerprint(tree: &Tree) -> String {
    let mut h = Sha256::new();
    let sorted: BTreeMap<_, _> = tree.entries.iter().map(|e| (&e.0, e)).collect();
    for (p, e) in sorted {
        h.update(p.as_os_str().as_encoded_bytes());
        h.update(format!("\0{}\0{}\0{}\0{}\0{}\n", e.1, e.2, e.3, e.4, e.5).as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A consistent copy of a live database through SQLite's backup API.
pub fn copy_database(src: &Path, dest: &Path) -> Result<(), String> {
    use rusqlite::{Connection, OpenFlags, backup::StepResult};
    if let Some(d) = dest.parent() {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_file(dest);
    let from = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(|e| e.to_string())?;
    from.busy_timeout(SQLITE_BUSY).map_err(|e| e.to_string())?;
    let mut to = Connection::open(dest).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + SQLITE_BUSY;
    {
        let b = rusqlite::backup::Backup::new(&from, &mut to).map_err(|e| e.to_string())?;
        loop {
            // -1: every page in one step, under one read transaction.
            match b.step(-1).map_err(|e| e.to_string())? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => return Err("the database stayed locked".into()),
            }
            if Instant::now() >= deadline {
                return Err("the database stayed locked".into());
            }
        }
    }
    let ok: String = to
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if ok != "ok" {
        return Err(format!("the copy fails quick_check: {ok}"));
    }
    drop(to);
    let _ = std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o600));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_changes_with_a_write_and_not_without() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("workspace/memory")).unwrap();
        std::fs::write(d.path().join("workspace/memory/a.md"), "teal").unwrap();
        std::fs::write(d.path().join("openclaw.json"), "{}").unwrap();
        std::fs::create_dir(d.path().join("tmp")).unwrap();
        let a = fingerprint(&walk(d.path()));
        assert_eq!(a, fingerprint(&walk(d.path())));
        // Left out: the rendered config, the gateway's TMPDIR.
        std::fs::write(d.path().join("openclaw.json"), "{\"x\":1}").unwrap();
        std::fs::write(d.path().join("tmp/cache"), "x").unwrap();
        assert_eq!(a, fingerprint(&walk(d.path())));
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(d.path().join("workspace/memory/a.md"), "cyan").unwrap();
        assert_ne!(a, fingerprint(&walk(d.path())));
        let t = walk(d.path());
        assert_eq!(t.excluded_top, vec!["openclaw.json", "tmp"]);
    }

    #[test]
    fn a_copy_of_a_database_being_written_is_whole_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("live.sqlite");
        let w = rusqlite::Connection::open(&src).unwrap();
        w.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        // An open write transaction is not in the copy; what was committed is.
        w.execute_batch("BEGIN; INSERT INTO t VALUES (2);").unwrap();
        let dest = d.path().join("copy/live.sqlite");
        copy_database(&src, &dest).unwrap();
        let c = rusqlite::Connection::open(&dest).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        w.execute_batch("COMMIT").unwrap();
        // Not a database: refused, said why.
        std::fs::write(d.path().join("fake.sqlite"), "not a database at all").unwrap();
        let e = copy_database(
            &d.path().join("fake.sqlite"),
            &d.path().join("copy/fake.sqlite"),
        )
        .unwrap_err();
        assert!(e.contains("not a database"), "{e}");
    }

    #[test]
    fn names_are_taken_literally_in_excludes() {
        assert_eq!(
            glob_escape(Path::new("a*b/[x]?.sqlite")),
            "a\\*b/\\[x\\]\\?.sqlite"
        );
    }
}
