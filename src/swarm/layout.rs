//! Step 2 of the swarm step: the share's layout, created where missing and
//! seeded from the image, never touching what exists.
//!
//! All through directory handles (see [`crate::untrusted`]): a gateway can
//! put a link, a FIFO or a file at any name of MyBuddyBook, including the
//! names the swarm owns (`templates/_template`, the registry's lock). What
//! sits at one of those is moved aside to a quarantine name, reported, and
//! the real thing made in its place; nothing is ever created or written
//! through it.

use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::{BOOK, CHANGELOG, DIR_MODE, SPELLBOOK, SwarmError, registry};
use crate::untrusted::{self, Dir, Kind};

/// What the image ships to seed a new share.
#[derive(Debug, Clone, Default)]
pub struct Seeds {
    /// A tree shaped like the share (`mybuddybook/…`, `spellbook/spells/spawn_buddy.md`).
    pub share: Option<PathBuf>,
    /// The Buddy template directory, copied to `mybuddybook/templates/_template`.
    pub template_dir: Option<PathBuf>,
}

/// The share, opened: handles on its root and each book.
#[derive(Debug)]
pub struct Share {
    pub root: Dir,
    pub book: Dir,
    pub spellbook: Dir,
}

/// What the layout step made and moved aside.
#[derive(Debug, Default)]
pub struct Laid {
    pub created: Vec<PathBuf>,
    /// What sat at a name the swarm owns: (where, what it was, moved to).
    pub quarantined: Vec<(PathBuf, &'static str, String)>,
}

fn io_at(path: PathBuf, what: &'static str) -> impl FnOnce(io::Error) -> SwarmError {
    move |source| SwarmError::Io { path, what, source }
}

/// The directory `name` in `parent`, made if missing; anything else at
/// the name is moved aside first.
fn ensure_dir(parent: &Dir, name: &str, laid: &mut Laid) -> Result<Dir, SwarmError> {
    let shown = parent.shown(name);
    let e = parent
        .ensure_dir(name, DIR_MODE)
        .map_err(io_at(shown.clone(), "cannot create"))?;
    if let Some((kind, to)) = e.moved_aside {
        laid.moved(shown.clone(), kind, to);
    }
    if e.created {
        laid.created.push(shown);
    }
    Ok(e.dir)
}

impl Laid {
    fn moved(&mut self, path: PathBuf, kind: Kind, to: std::ffi::OsString) {
        let to = to.to_string_lossy().into_owned();
        warn!(path = %path.display(), found = kind.describe(), moved_to = %to, "swarm: a name the swarm owns held something else; moved aside");
        self.quarantined.push((path, kind.describe(), to));
    }

    fn seeded(&mut self, s: untrusted::Seeded) {
        for (path, kind, to) in s.moved_aside {
            self.moved(path, kind, to);
        }
        self.created.extend(s.created);
    }
}

/// Step 2: creates what is missing, touching nothing that exists, and
/// returns the share's handles. Without `spellbook` (a Buddy-role Machine
/// that does not mount it) the SpellBook is only an empty directory.
pub fn ensure_layout(
    root: Dir,
    seeds: &Seeds,
    spellbook: bool,
) -> Result<(Share, Laid), SwarmError> {
    let mut laid = Laid::default();
    let book = ensure_dir(&root, BOOK, &mut laid)?;
    let spell = ensure_dir(&root, SPELLBOOK, &mut laid)?;
    for name in ["wisdom", "announcements", "templates"] {
        ensure_dir(&book, name, &mut laid)?;
    }
    if spellbook {
        ensure_dir(&spell, "spells", &mut laid)?;
    }
    if let Some(src) = seeds.share.as_deref().filter(|s| s.is_dir()) {
        let books = [(BOOK, &book, true), (SPELLBOOK, &spell, spellbook)];
        for (name, dest, here) in books {
            let from = src.join(name);
            if here && from.is_dir() {
                seed(&from, dest, &mut laid)?;
            }
        }
    }
    if let Some(src) = seeds.template_dir.as_deref().filter(|s| s.is_dir()) {
        let templates = ensure_dir(&book, "templates", &mut laid)?;
        let dest = ensure_dir(&templates, "_template", &mut laid)?;
        seed(src, &dest, &mut laid)?;
    }
    if spellbook {
        let header = b"# SpellBook changelog\n\nOne line per spell cast: date, caster, spell, what changed.\n\n";
        let mut s = untrusted::Seeded::default();
        spell
            .seed_file(CHANGELOG, || Ok(header.to_vec()), 0o660, &mut s)
            .map_err(io_at(spell.shown(CHANGELOG), "cannot seed"))?;
        laid.seeded(s);
    }
    match registry::ensure(&book) {
        Ok(true) => laid.created.push(book.shown(registry::REGISTRY_FILE)),
        Ok(false) => {}
        Err(e) => {
            return Err(io_at(book.shown(registry::REGISTRY_FILE), "cannot create")(
                e,
            ));
        }
    }
    Ok((
        Share {
            root,
            book,
            spellbook: spell,
        },
        laid,
    ))
}

/// Copies every file of `src` (the image's, a trusted path) that `dest`
/// lacks. Every Machine seeds the same share, often at the same moment (a
/// swarm-wide deploy): each file appears whole or not at all, the first
/// Machine's copy wins, and what a Buddy has edited is never overwritten.
fn seed(src: &Path, dest: &Dir, laid: &mut Laid) -> Result<(), SwarmError> {
    let s = untrusted::seed_tree(src, dest, DIR_MODE, 0o660)
        .map_err(io_at(dest.path().to_path_buf(), "cannot seed"))?;
    laid.seeded(s);
    Ok(())
}
