//! What a cast has made, in order, and how each thing is taken back.
//!
//! A spell (SpawnBuddy over the Machines API, or `supervisor deploy`)
//! makes an app, secrets, a volume, a Machine, a record in the SpellBook,
//! a registry entry, an announcement. When a later step fails, everything
//! made is taken back, last first, and never what existed before. A cast
//! run by a Magician's supervisor (the spell socket) also keeps that list
//! on disk, in a root-only journal on the Magician's volume, written before
//! each API call that makes something: a cast cut short anyway (the
//! supervisor killed past its stop timeout, the Machine gone) is taken back
//! by the next boot's `supervisor rollback`.
//!
//! The journal lives on the gateway's own volume, so it is read as
//! hostile: trusted only in a directory and file root owns and nobody else
//! may write, and every name in it is checked against the strict patterns
//! an API path allows before anything is sent.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::fleet::fly::{Client, FlyError};
use crate::untrusted::{self, Dir, Kind};

/// One thing a cast made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "made", rename_all = "snake_case", deny_unknown_fields)]
pub enum Made {
    /// A Fly app this cast created (deleted, with all it holds).
    App {
        app: String,
    },
    /// Secrets an existing app did not have before.
    Secrets {
        app: String,
        names: Vec<String>,
    },
    Volume {
        app: String,
        id: String,
    },
    /// A Machine create was sent with this tag (an ambiguous or unanswered
    /// create may have made one): whatever Machine carries it.
    MachineTag {
        app: String,
        tag: String,
    },
    Machine {
        app: String,
        id: String,
    },
    /// A Buddy record at `dir/name` (the SpellBook's, or a checkout's).
    Record {
        dir: PathBuf,
        name: String,
    },
    /// A registry entry in the share at `swarm`.
    Registered {
        swarm: PathBuf,
        slug: String,
    },
    /// An announcement in `swarm`'s MyBuddyBook.
    Announced {
        swarm: PathBuf,
        name: String,
    },
}

static SLUG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9]{0,23}buddy-[a-z][a-z0-9]{0,23}$").expect("re"));
static VOLUME_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^vol_[a-z0-9]{1,40}$").expect("re"));
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9-]{1,60}-[0-9a-f]{8}$").expect("re"));
static SECRET: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Z][A-Z0-9_]{0,127}$").expect("re"));
static FILE_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$").expect("re"));

fn app_ok(app: &str) -> Result<(), String> {
    match app.strip_prefix("mybuddytalk-") {
        Some(slug) if SLUG.is_match(slug) => Ok(()),
        _ => Err(format!("{app:?} is not a Buddy's app name")),
    }
}

impl Made {
    /// Every field against the shape its use allows (an app name, a volume
    /// or Machine id, a plain file name): a journal is read from disk.
    pub fn check(&self) -> Result<(), String> {
        let shaped = |what: &str, re: &Regex, v: &str| {
            if re.is_match(v) {
                Ok(())
            } else {
                Err(format!("{what} {v:?} has not the shape of one"))
            }
        };
        let machine_id = &*crate::swarm::registry::MACHINE_ID;
        match self {
            Made::App { app } => app_ok(app),
            Made::Secrets { app, names } => {
                app_ok(app)?;
                names
                    .iter()
                    .try_for_each(|n| shaped("secret name", &SECRET, n))
            }
            Made::Volume { app, id } => app_ok(app).and(shaped("volume id", &VOLUME_ID, id)),
            Made::MachineTag { app, tag } => app_ok(app).and(shaped("cast tag", &TAG, tag)),
            Made::Machine { app, id } => app_ok(app).and(shaped("Machine id", machine_id, id)),
            Made::Record { dir, name } if dir.is_absolute() => shaped("record", &SLUG, name),
            Made::Record { dir, .. } => Err(format!(
                "record directory {:?} is not absolute",
                dir.display().to_string()
            )),
            Made::Registered { slug, .. } => shaped("registry key", &SLUG, slug),
            Made::Announced { name, .. } => shaped("announcement", &FILE_NAME, name),
        }
    }

    /// Takes it back; Ok says what was done. Gone already counts as done
    /// (a rollback may run twice: once in the cast, again from its journal).
    pub fn undo(&self, client: Option<&Client>) -> Result<String, String> {
        self.check()?;
        let api = || client.ok_or_else(|| "no Fly API client to take it back".to_string());
        let gone = |r: Result<(), FlyError>, done: String| match r {
            Ok(()) => Ok(done),
            Err(e) if e.status() == Some(404) => Ok(format!("{done} (gone already)")),
            Err(e) => Err(format!("{done}: {e}")),
        };
        match self {
            Made::App { app } => gone(api()?.delete_app(app), format!("deleted the Fly app {app}")),
            Made::Secrets { app, names } => {
                let unset: Vec<(String, Option<&crate::config::render::Secret>)> =
                    names.iter().map(|k| (k.clone(), None)).collect();
                gone(
                    api()?.set_secrets(app, &unset).map(|_| ()),
                    format!("unset {} secrets on {app}", names.len()),
                )
            }
            Made::Volume { app, id } => gone(
                api()?.delete_volume(app, id),
                format!("deleted the volume {id}"),
            ),
            Made::MachineTag { app, tag } => {
                let c = api()?;
                let found = match c.machines_tagged(app, crate::fleet::apply::META_CAST, tag) {
                    Ok(m) => m,
                    Err(e) if e.status() == Some(404) => Vec::new(),
                    Err(e) => return Err(format!("cannot look for the Machine tagged {tag}: {e}")),
                };
                let mut done = Vec::new();
                for m in found {
                    gone(c.destroy_machine(app, &m.id), String::new())?;
                    done.push(m.id);
                }
                Ok(if done.is_empty() {
                    format!("no Machine carries the tag {tag}")
                } else {
                    format!("destroyed the Machine {} (tag {tag})", done.join(", "))
                })
            }
            Made::Machine { app, id } => gone(
                api()?.destroy_machine(app, id),
                format!("destroyed the Machine {id}"),
            ),
            Made::Record { dir, name } => {
                let shown = dir.join(name);
                Dir::open(dir)
                    .and_then(|d| d.remove_tree(name))
                    .map(|_| format!("removed {}", shown.display()))
                    .map_err(|e| format!("{}: {e}", shown.display()))
            }
            Made::Registered { swarm, slug } => {
                let book = crate::swarm::Paths::new(swarm).book();
                crate::swarm::registry::remove(&book, slug)
                    .map(|_| format!("removed {slug} from the registry"))
                    .map_err(|e| e.to_string())
            }
            Made::Announced { swarm, name } => {
                let shown = crate::swarm::Paths::new(swarm).announcements().join(name);
                match Dir::open(swarm)
                    .and_then(|r| r.dir(crate::swarm::BOOK))
                    .and_then(|b| b.dir("announcements"))
                    .and_then(|a| a.unlink(name))
                {
                    Ok(()) => Ok(format!("removed {}", shown.display())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Ok(format!("removed {} (gone already)", shown.display()))
                    }
                    Err(e) => Err(format!("{}: {e}", shown.display())),
                }
            }
        }
    }
}

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// What cast it (for the log of a rollback).
    what: String,
    made: Vec<Made>,
}

/// What a cast has made so far; kept in `file` as it grows, when it has one.
pub struct Journal {
    file: Option<(Dir, String)>,
    record: Record,
}

/// Largest journal read back (a cast makes a handful of things).
const MAX_BYTES: u64 = 64 * 1024;

impl Journal {
    /// A journal in memory only.
    pub fn memory(what: &str) -> Journal {
        Journal {
            file: None,
            record: Record {
                what: what.to_string(),
                made: Vec::new(),
            },
        }
    }

    /// A journal kept at `path`, whose directory must be root's (ours)
    /// alone: a journal in a directory a gateway controls could be rewritten
    /// into a list of apps to delete.
    pub fn at(path: &Path, what: &str) -> Result<Journal, String> {
        let (dir, name) = open_private(path)?;
        let mut j = Journal::memory(what);
        j.file = Some((dir, name));
        j.save()?;
        Ok(j)
    }

    fn save(&self) -> Result<(), String> {
        let Some((dir, name)) = &self.file else {
            return Ok(());
        };
        let text = serde_json::to_vec_pretty(&self.record).unwrap_or_default();
        dir.replace(name, &text, 0o600, true).map_err(|e| {
            format!(
                "{}: cannot write the journal: {e}",
                dir.shown(name).display()
            )
        })
    }

    /// Records `m` (on disk first, when kept there): call it before the
    /// call that makes the thing when that call may make it without saying
    /// so, else right after.
    pub fn push(&mut self, m: Made) -> Result<(), String> {
        self.record.made.push(m);
        self.save()
    }

    /// Replaces the last record (a `MachineTag` becomes the `Machine` the
    /// create answered with).
    pub fn replace_last(&mut self, m: Made) -> Result<(), String> {
        self.record.made.pop();
        self.push(m)
    }

    /// Forgets the last record (its call made nothing after all).
    pub fn pop(&mut self) -> Result<(), String> {
        self.record.made.pop();
        self.save()
    }

    pub fn is_empty(&self) -> bool {
        self.record.made.is_empty()
    }

    /// Takes back everything, last made first: a line each (`undone: …` or
    /// `could not undo: …`). What could not be undone stays in the file for
    /// the next boot to try again; a journal with nothing left is removed.
    pub fn undo_all(mut self, client: Option<&Client>) -> Vec<String> {
        let mut notes = Vec::new();
        let mut left = Vec::new();
        for m in std::mem::take(&mut self.record.made).into_iter().rev() {
            match m.undo(client) {
                Ok(n) => notes.push(format!("undone: {n}")),
                Err(n) => {
                    notes.push(format!("could not undo: {n}"));
                    left.push(m);
                }
            }
        }
        left.reverse();
        self.record.made = left;
        if self.record.made.is_empty() {
            self.remove();
        } else if let Err(e) = self.save() {
            notes.push(format!("could not keep what is left to undo: {e}"));
        }
        notes
    }

    /// The cast succeeded: nothing to take back.
    pub fn done(self) {
        self.remove();
    }

    fn remove(&self) {
        if let Some((dir, name)) = &self.file {
            let _ = dir.unlink(name);
        }
    }
}

/// The journal's directory, opened and checked: root's, mode 0700.
fn open_private(path: &Path) -> Result<(Dir, String), String> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("{}: not a journal path", path.display()));
    };
    let name = name.to_string_lossy().into_owned();
    let dir = Dir::open(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let m = dir
        .meta()
        .map_err(|e| format!("{}: {e}", parent.display()))?;
    if m.uid != nix::unistd::geteuid().as_raw() || m.mode & 0o077 != 0 {
        return Err(format!(
            "{}: the journals' directory is not ours alone (uid {}, mode {:04o}): refused",
            parent.display(),
            m.uid,
            m.mode
        ));
    }
    Ok((dir, name))
}

/// Makes the journals' directory in `state` (the Magician's volume, the
/// gateway's own): root's, 0700; whatever the gateway put at its name is
/// moved aside. Returns its path.
pub fn prepare_dir(state: &Path, name: &str) -> std::io::Result<PathBuf> {
    let root = Dir::open(state)?;
    let me = nix::unistd::geteuid().as_raw();
    let mut e = root.ensure_dir(name, 0o700)?;
    if e.dir.meta()?.uid != me {
        // The gateway's, not ours (it owns the volume and can make one):
        // whatever it holds is no journal of ours. Moved aside, made anew.
        let to = root.quarantine(name)?;
        tracing::warn!(dir = %state.join(name).display(), moved_to = %to.to_string_lossy(), "spells: a journal directory we did not make; moved aside");
        e = root.ensure_dir(name, 0o700)?;
    }
    untrusted::set_group_mode(e.dir.fd(), None, Some(0o700))?;
    Ok(state.join(name))
}

/// Journals left in `dir` by casts cut short: (file name, what it cast,
/// what it made). Only files root wrote and nobody else can are taken; the
/// rest is named and left alone.
pub fn pending(dir: &Path) -> Result<Vec<(String, String, Vec<Made>)>, String> {
    let (d, _) = open_private(&dir.join("x"))?;
    let mut out = Vec::new();
    let me = nix::unistd::geteuid().as_raw();
    for e in d.entries().map_err(|e| format!("{}: {e}", dir.display()))? {
        let name = e.name.to_string_lossy().into_owned();
        if !name.starts_with("cast-") || !name.ends_with(".json") {
            continue;
        }
        let Ok(f) = d.open_file(&name, false) else {
            continue;
        };
        let ok = untrusted::meta_of(&f).is_ok_and(|m| {
            m.kind == Kind::File && m.uid == me && m.mode & 0o077 == 0 && m.nlink == 1
        });
        if !ok {
            tracing::warn!(journal = %dir.join(&name).display(), "rollback: a journal we did not write; left alone");
            continue;
        }
        let r: Result<Record, String> = untrusted::read_bounded(f, MAX_BYTES)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
        match r {
            Ok(r) => match r.made.iter().find_map(|m| m.check().err()) {
                None => out.push((name, r.what, r.made)),
                Some(why) => {
                    tracing::warn!(journal = %dir.join(&name).display(), why, "rollback: a journal with a bad entry; left alone")
                }
            },
            Err(why) => {
                tracing::warn!(journal = %dir.join(&name).display(), why, "rollback: an unreadable journal; left alone")
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Takes back what every journal in `dir` records (the next boot's
/// rollback of casts cut short). Lines for the log.
pub fn rollback(dir: &Path, client: Option<&Client>) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    for (name, what, made) in pending(dir)? {
        notes.push(format!(
            "{what} was cut short ({name}): taking back {} thing(s)",
            made.len()
        ));
        let (d, n) = open_private(&dir.join(&name))?;
        let j = Journal {
            file: Some((d, n)),
            record: Record { what, made },
        };
        notes.extend(j.undo_all(client).into_iter().map(|l| format!("  {l}")));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_their_shape_are_taken() {
        let ok = [
            Made::App {
                app: "mybuddytalk-norabuddy-lyra".into(),
            },
            Made::Volume {
                app: "mybuddytalk-norabuddy-lyra".into(),
                id: "vol_0003".into(),
            },
            Made::Machine {
                app: "mybuddytalk-norabuddy-lyra".into(),
                id: "e784079b449483".into(),
            },
            Made::MachineTag {
                app: "mybuddytalk-norabuddy-lyra".into(),
                tag: "norabuddy-lyra-0a1b2c3d".into(),
            },
        ];
        for m in ok {
            assert_eq!(m.check(), Ok(()), "{m:?}");
        }
        let bad = [
            Made::App {
                app: "mybuddytalk-a/../../apps/victim".into(),
            },
            Made::App {
                app: "victim-app".into(),
            },
            Made::Volume {
                app: "mybuddytalk-norabuddy-lyra".into(),
                id: "vol_1?force=true".into(),
            },
            Made::Machine {
                app: "mybuddytalk-norabuddy-lyra".into(),
                id: "../x".into(),
            },
            Made::Record {
                dir: "/mnt/swarm/spellbook/buddies".into(),
                name: "..".into(),
            },
            Made::Secrets {
                app: "mybuddytalk-norabuddy-lyra".into(),
                names: vec!["A B".into()],
            },
        ];
        for m in bad {
            assert!(m.check().is_err(), "{m:?}");
        }
    }
}
