//! A Buddy never forgets (issue 22): its state dir, backed up off the
//! Machine while it runs and restored by the boot onto a volume that has
//! none.
//!
//! The layers, one file each:
//! - [`restic`]: the one boundary to the backup tool (restic: encrypted,
//!   deduplicating, snapshots by time; its key and the bucket's key reach
//!   it through its environment only);
//! - [`view`]: the state dir as root may read it (a private, read-only-for-
//!   links bind mount: `nosymfollow`, `nodev`, `nosuid`, `noexec`);
//! - [`cycle`]: one backup (consistent SQLite copies by SQLite's backup
//!   API, then `restic backup`), skipped when nothing changed;
//! - [`restore`]: the boot's `restore` step and `supervisor backup restore`;
//! - [`schedule`]: the supervisor's side: a cycle every interval as a
//!   child of the one reaper, its lag logged, never holding the gateway.
//!
//! Settings (the Buddy app's secrets, all four or none; never the gateway's):
//! `MYBUDDY_BACKUP_REPOSITORY` (`s3:https://host/bucket`, the Buddy's own
//! bucket), `MYBUDDY_BACKUP_PASSWORD` (the repository's key),
//! `MYBUDDY_BACKUP_ACCESS_KEY` and `MYBUDDY_BACKUP_SECRET_KEY` (a key that
//! reaches that prefix only). Tunables (not secret): `MYBUDDY_BACKUP_INTERVAL`
//! (seconds, default 30), `MYBUDDY_BACKUP_CACHE` (root's private working dir,
//! default `/var/cache/mybuddy-backup`, never on the state volume),
//! `MYBUDDY_RESTORE_TIMEOUT` (seconds, default 600), `MYBUDDY_RESTIC` (the
//! binary, default `restic` on PATH).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::problem::{Problem, Problems};
use crate::config::render::Secret;

pub mod cycle;
pub mod restic;
pub mod restore;
pub mod schedule;
pub mod view;

pub const REPOSITORY: &str = "MYBUDDY_BACKUP_REPOSITORY";
pub const PASSWORD: &str = "MYBUDDY_BACKUP_PASSWORD";
pub const ACCESS_KEY: &str = "MYBUDDY_BACKUP_ACCESS_KEY";
pub const SECRET_KEY: &str = "MYBUDDY_BACKUP_SECRET_KEY";

/// The backup's secrets: every Buddy's app holds its own four (deploy sets
/// them all or none; check-config refuses them in fly.toml).
pub const SECRETS: [&str; 4] = [REPOSITORY, PASSWORD, ACCESS_KEY, SECRET_KEY];

/// The backup's tunables: not secret, but the supervisor's alone too.
pub const TUNABLES: [&str; 4] = [
    "MYBUDDY_BACKUP_INTERVAL",
    "MYBUDDY_BACKUP_CACHE",
    "MYBUDDY_RESTORE_TIMEOUT",
    "MYBUDDY_RESTIC",
];

/// Whether `name` is one of the backup's settings: the supervisor's and
/// restic's alone, never a gateway's (its agent could read the key and
/// every backup of its Human with it, or delete them).
pub fn is_backup_setting(name: &str) -> bool {
    SECRETS.contains(&name) || TUNABLES.contains(&name)
}

/// `supervisor backup` on a Buddy whose backups are off (no settings): a
/// deploy of it goes on without a backup first.
pub const OFF_EXIT: i32 = 3;

pub const DEFAULT_CACHE: &str = "/var/cache/mybuddy-backup";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_RESTORE_TIMEOUT: Duration = Duration::from_secs(600);

/// Where a Buddy's backups go and how.
#[derive(Debug, Clone)]
pub struct Settings {
    /// restic's repository: `s3:<endpoint>/<bucket>[/<prefix>]`.
    pub repository: String,
    pub password: Secret,
    pub access_key: Secret,
    pub secret_key: Secret,
    pub interval: Duration,
    /// Root's private working dir: the view's mount point, the SQLite
    /// copies, restic's cache, the last cycle's result.
    pub cache: PathBuf,
    pub restore_timeout: Duration,
    pub restic: PathBuf,
}

/// The settings from the environment: `Ok(None)` when none of the secrets
/// is set (backups off), every problem at once otherwise.
pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Settings>, Problems> {
    let here = Path::new("(environment)");
    let get = |n: &str| env(n).filter(|v| !v.is_empty());
    let have: Vec<&str> = SECRETS.into_iter().filter(|n| get(n).is_some()).collect();
    if have.is_empty() {
        return Ok(None);
    }
    let mut problems = Vec::new();
    for n in SECRETS.iter().filter(|n| !have.contains(n)) {
        problems.push(Problem::new(
            here,
            *n,
            format!(
                "missing: the backup needs all of {} or none (set with the Buddy's secrets; scripts/swarm-local env prints them for a local share)",
                SECRETS.join(", ")
            ),
        ));
    }
    let repository = get(REPOSITORY).unwrap_or_default();
    if !repository.is_empty()
        && let Err(e) = check_repository(&repository)
    {
        problems.push(Problem::new(here, REPOSITORY, e));
    }
    let secs = |name: &str, default: Duration, problems: &mut Vec<Problem>| match get(name) {
        None => default,
        Some(v) => match v.parse::<u64>() {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => {
                problems.push(Problem::new(
                    here,
                    name,
                    format!("{v:?} is not a number of seconds above 0"),
                ));
                default
            }
        },
    };
    let interval = secs("MYBUDDY_BACKUP_INTERVAL", DEFAULT_INTERVAL, &mut problems);
    let restore_timeout = secs(
        "MYBUDDY_RESTORE_TIMEOUT",
        DEFAULT_RESTORE_TIMEOUT,
        &mut problems,
    );
    let cache = PathBuf::from(get("MYBUDDY_BACKUP_CACHE").unwrap_or_else(|| DEFAULT_CACHE.into()));
    if !cache.is_absolute() {
        problems.push(Problem::new(
            here,
            "MYBUDDY_BACKUP_CACHE",
            "must be an absolute path (root's private working dir, off the state volume)",
        ));
    }
    if !problems.is_empty() {
        return Err(Problems::new("the backup is not configured", problems));
    }
    Ok(Some(Settings {
        repository,
        password: Secret(get(PASSWORD).unwrap_or_default()),
        access_key: Secret(get(ACCESS_KEY).unwrap_or_default()),
        secret_key: Secret(get(SECRET_KEY).unwrap_or_default()),
        interval,
        cache,
        restore_timeout,
        restic: get("MYBUDDY_RESTIC").map_or_else(|| PathBuf::from("restic"), PathBuf::from),
    }))
}

impl Settings {
    /// The name restic records as the snapshots' host: the repository's
    /// last path segment, the Buddy's own bucket (stable across Machines, so
    /// a new Machine's first backup finds its parent).
    pub fn host(&self) -> String {
        self.repository
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("mybuddy")
            .to_string()
    }
}

/// `s3:http(s)://host[:port]/bucket[/prefix]`: a Buddy's backups live in a
/// bucket of their own (its key reaches nothing else), and a URL never
/// carries a key (it is logged).
fn check_repository(r: &str) -> Result<(), String> {
    let Some(url) = r.strip_prefix("s3:") else {
        return Err(format!(
            "{r:?} is not an S3 repository: write s3:https://HOST/BUCKET (on Fly: s3:https://fly.storage.tigris.dev/<the Buddy app's own bucket>)"
        ));
    };
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(format!(
            "{r:?}: the endpoint must start with https:// (or http:// for a local server)"
        ));
    };
    let mut parts = rest.split('/');
    let host = parts.next().unwrap_or_default();
    if host.contains('@') {
        return Err(format!(
            "{}: carries credentials; they go in {ACCESS_KEY} and {SECRET_KEY}",
            redact_userinfo(r)
        ));
    }
    let path: Vec<&str> = parts.filter(|p| !p.is_empty()).collect();
    if host.is_empty() || path.is_empty() {
        return Err(format!(
            "{r:?}: needs the Buddy's own bucket after the host (s3:https://HOST/BUCKET)"
        ));
    }
    Ok(())
}

fn redact_userinfo(r: &str) -> String {
    match (r.find("://"), r.find('@')) {
        (Some(a), Some(b)) if b > a => format!("{}***{}", &r[..a + 3], &r[b..]),
        _ => r.to_string(),
    }
}

/// The names in the state dir a backup leaves out: what the boot rebuilds
/// (the rendered config, which holds the secrets), caches and logs, root's
/// own corners, and the restore's working dirs.
pub fn excluded(name: &str) -> bool {
    name == crate::config::render::CONFIG_FILE_NAME
        || crate::state::is_roots_corner(std::ffi::OsStr::new(name))
        // The gateway's caches (its control UI's assets, npm's logs).
        || matches!(name, "tmp" | "logs" | "lost+found" | "cache" | ".npm" | ".cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn none_set_is_off_some_set_names_every_missing_one() {
        assert!(from_env(&env_of(&[])).unwrap().is_none());
        let e = from_env(&env_of(&[(PASSWORD, "pw")]))
            .unwrap_err()
            .to_string();
        for n in [REPOSITORY, ACCESS_KEY, SECRET_KEY] {
            assert!(e.contains(n), "{e}");
        }
        assert!(!e.contains("pw\""), "{e}");
    }

    #[test]
    fn a_repository_is_an_s3_prefix_without_credentials() {
        let full = |r: &'static str| {
            vec![
                (REPOSITORY, r),
                (PASSWORD, "p"),
                (ACCESS_KEY, "a"),
                (SECRET_KEY, "s"),
            ]
        };
        let ok = full("s3:http://127.0.0.1:9000/backups/roel-galahad");
        assert!(from_env(&env_of(&ok)).unwrap().is_some());
        for bad in [
            "/var/backups",
            "s3:http://127.0.0.1:9000/",
            "s3:ftp://h/b/p",
            "s3:https://AKIA:SECRETVALUE@h/b/p",
        ] {
            let pairs = full(bad);
            let e = from_env(&env_of(&pairs)).unwrap_err().to_string();
            assert!(e.contains(REPOSITORY), "{bad}: {e}");
            assert!(!e.contains("SECRETVALUE"), "{e}");
        }
    }
}
