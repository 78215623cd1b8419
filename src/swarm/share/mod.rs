//! The share's engine (issue 14): which mode a deployment uses (a mounted
//! directory, or JuiceFS volumes) and each volume's settings, from the
//! environment; `share format` and `share check`. MyBuddyBook and the
//! SpellBook are separate volumes with separate credentials, so a Machine
//! that holds only MyBuddyBook's cannot reach the SpellBook at all.
//!
//! Names: `MYBUDDY_SHARE` (`dir` | `juicefs`), then per volume
//! `MYBUDDY_<V>_META_URL` and `MYBUDDY_<V>_META_PASSWORD` (what a Machine
//! needs to mount it; V is `BOOK` or `SPELLBOOK`) and, for `share format`
//! only, `MYBUDDY_<V>_BUCKET`, `_ACCESS_KEY`, `_SECRET_KEY` (JuiceFS keeps
//! the bucket and its key in the volume's metadata from then on).
//!
//! Passwords and keys go to juicefs through its environment (`META_PASSWORD`,
//! `ACCESS_KEY`, `SECRET_KEY`), never its command line, and are never
//! printed: a URL that carries a password is refused for that reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::problem::{Problem, Problems};
use crate::config::render::Secret;

pub mod admin;
pub mod mounts;

pub use admin::{Formatted, Health, check, format, status};

/// The two volumes: (directory under the swarm dir, variable infix, group).
pub const VOLUMES: [(&str, &str, u32); 2] = [
    (
        super::BOOK,
        crate::config::secrets::SHARE_INFIXES[0],
        crate::pid1::privileges::BOOK_GID,
    ),
    (
        super::SPELLBOOK,
        crate::config::secrets::SHARE_INFIXES[1],
        crate::pid1::privileges::MAGICIANS_GID,
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `/mnt/swarm` is a directory something else mounted (local runs, tests).
    Dir,
    /// The supervisor mounts JuiceFS volumes at `/mnt/swarm/<volume>`.
    JuiceFs,
}

/// One JuiceFS volume as a Machine sees it.
#[derive(Debug, Clone)]
pub struct Volume {
    /// `mybuddybook` or `spellbook`: the volume's name and its directory.
    pub name: &'static str,
    /// `BOOK` or `SPELLBOOK`, as in `MYBUDDY_BOOK_META_URL`.
    pub var: &'static str,
    /// The group its root belongs to.
    pub gid: u32,
    pub meta_url: String,
    pub password: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct ShareConfig {
    pub mode: Mode,
    /// The volumes configured (JuiceFS mode): MyBuddyBook always, the
    /// SpellBook only where its credentials are.
    pub volumes: Vec<Volume>,
}

pub(crate) fn var(infix: &str, what: &str) -> String {
    format!("MYBUDDY_{infix}_{what}")
}

// The names are the config layer's (the render refuses them in a Buddy's
// config, which must not depend on the share): one definition, below both.
pub use crate::config::secrets::{SHARE_SETTINGS as SETTINGS, is_share_setting};

/// The share's secrets a Machine of `role` holds (its Fly app's secrets):
/// the metadata URL and password of every volume the role mounts, nothing
/// else. The bucket keys never reach a Machine: JuiceFS keeps them in the
/// volume's metadata, and only `share format` needs them. `scripts/deploy`
/// imports exactly these and the boot refuses a Buddy-role Machine that
/// holds the SpellBook's.
pub fn machine_secrets(role: crate::buddy::Role) -> Vec<String> {
    VOLUMES
        .iter()
        .filter(|(name, _, _)| *name == super::BOOK || role == crate::buddy::Role::Magician)
        .flat_map(|(_, infix, _)| [var(infix, "META_URL"), var(infix, "META_PASSWORD")])
        .collect()
}

/// The share's settings a Machine of `role` must not hold: every other one
/// (the SpellBook's for a Buddy, the bucket keys for all). `scripts/deploy`
/// unsets any it finds on the app.
pub fn forbidden_secrets(role: crate::buddy::Role) -> Vec<String> {
    let allowed = machine_secrets(role);
    VOLUMES
        .iter()
        .flat_map(|(_, infix, _)| SETTINGS.iter().map(|what| var(infix, what)))
        .filter(|n| !allowed.contains(n))
        .collect()
}

/// Reads the share's configuration; every problem at once.
pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<ShareConfig, Problems> {
    let mut problems = Vec::new();
    let here = Path::new("(environment)");
    let mode = match env("MYBUDDY_SHARE").as_deref() {
        None | Some("dir") => Mode::Dir,
        Some("juicefs") => Mode::JuiceFs,
        Some(other) => {
            problems.push(Problem::new(
                here,
                "MYBUDDY_SHARE",
                format!(
                    "{other:?} is not a share mode: \"dir\" (a mounted directory) or \"juicefs\""
                ),
            ));
            Mode::Dir
        }
    };
    let mut volumes = Vec::new();
    for (name, infix, gid) in VOLUMES {
        let url = env(&var(infix, "META_URL"));
        if mode == Mode::Dir {
            continue;
        }
        let Some(url) = url else {
            if name == super::BOOK {
                problems.push(Problem::new(
                    here,
                    var(infix, "META_URL"),
                    "missing: every Buddy mounts MyBuddyBook (its metadata URL, e.g. rediss://host:6379/1)",
                ));
            }
            continue;
        };
        if url_has_password(&url) {
            problems.push(Problem::new(
                here,
                var(infix, "META_URL"),
                format!(
                    "carries a password: put it in {} instead (a URL ends up in logs and process lists)",
                    var(infix, "META_PASSWORD")
                ),
            ));
            continue;
        }
        volumes.push(Volume {
            name,
            var: infix,
            gid,
            meta_url: url,
            password: env(&var(infix, "META_PASSWORD")).map(Secret),
        });
    }
    if problems.is_empty() {
        Ok(ShareConfig { mode, volumes })
    } else {
        Err(Problems::new("the share is not configured", problems))
    }
}

/// `scheme://user:password@host` or `scheme://:password@host`.
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// The juicefs binary: `MYBUDDY_JUICEFS`, else `juicefs` on PATH.
pub fn juicefs() -> PathBuf {
    std::env::var_os("MYBUDDY_JUICEFS").map_or_else(|| PathBuf::from("juicefs"), PathBuf::from)
}

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("volume {volume}: {what}")]
    Volume { volume: String, what: String },
    #[error(transparent)]
    Config(#[from] Problems),
}

pub(crate) fn verr(v: &Volume, what: impl Into<String>) -> ShareError {
    ShareError::Volume {
        volume: v.name.to_string(),
        what: what.into(),
    }
}

/// A juicefs command for volume `v`, with nothing of ours in its
/// environment but PATH and the volume's password.
pub(crate) fn juicefs_cmd(v: &Volume) -> Command {
    let mut c = Command::new(juicefs());
    c.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .stdin(Stdio::null());
    if let Some(p) = &v.password {
        c.env("META_PASSWORD", &p.0);
    }
    c
}

/// The last lines juicefs printed, without anything secret in them.
pub(crate) fn tail(out: &[u8], secrets: &[&str]) -> String {
    let mut text = String::from_utf8_lossy(out).into_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(s, crate::config::secrets::REDACTED);
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// A JuiceFS volume's root is inode 1.
pub fn is_volume_root(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|m| m.ino() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn a_buddy_configures_mybuddybook_only_and_every_problem_is_reported() {
        let c = from_env(&env_of(&[
            ("MYBUDDY_SHARE", "juicefs"),
            ("MYBUDDY_BOOK_META_URL", "rediss://db.upstash.io:6379/1"),
            ("MYBUDDY_BOOK_META_PASSWORD", "pw"),
        ]))
        .unwrap();
        assert_eq!(c.mode, Mode::JuiceFs);
        assert_eq!(c.volumes.len(), 1);
        assert_eq!(c.volumes[0].name, "mybuddybook");
        assert!(!format!("{c:?}").contains("pw\""), "{c:?}");

        let e = from_env(&env_of(&[
            ("MYBUDDY_SHARE", "juicefs"),
            (
                "MYBUDDY_SPELLBOOK_META_URL",
                "redis://:hunter2@127.0.0.1:6379/1",
            ),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("MYBUDDY_BOOK_META_URL: missing"), "{e}");
        assert!(
            e.contains("MYBUDDY_SPELLBOOK_META_URL: carries a password"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");

        let e = from_env(&env_of(&[("MYBUDDY_SHARE", "nfs")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"nfs\" is not a share mode"), "{e}");
        assert_eq!(from_env(&env_of(&[])).unwrap().mode, Mode::Dir);
    }

    #[test]
    fn a_buddy_machine_holds_mybuddybook_s_credentials_only_and_no_machine_holds_bucket_keys() {
        use crate::buddy::Role;
        assert_eq!(
            machine_secrets(Role::Buddy),
            ["MYBUDDY_BOOK_META_URL", "MYBUDDY_BOOK_META_PASSWORD"]
        );
        assert_eq!(machine_secrets(Role::Magician).len(), 4);
        let forbidden = forbidden_secrets(Role::Buddy);
        assert!(forbidden.contains(&"MYBUDDY_SPELLBOOK_META_PASSWORD".to_string()));
        assert!(forbidden.contains(&"MYBUDDY_BOOK_SECRET_KEY".to_string()));
        assert_eq!(forbidden.len(), 10 - 2);
        assert_eq!(forbidden_secrets(Role::Magician).len(), 10 - 4);
        for role in [Role::Buddy, Role::Magician] {
            for n in machine_secrets(role) {
                assert!(is_share_setting(&n) && !forbidden_secrets(role).contains(&n));
            }
        }
    }

    #[test]
    fn passwords_in_urls_are_recognised() {
        assert!(url_has_password("redis://:pw@127.0.0.1:6379/1"));
        assert!(url_has_password("rediss://default:pw@x.upstash.io:6379"));
        assert!(!url_has_password("redis://127.0.0.1:6379/1"));
        assert!(!url_has_password("redis://user@127.0.0.1:6379/1"));
        assert!(!url_has_password(
            "rediss://host:6379/1?tls-ca-cert-file=/a@b"
        ));
    }
}
