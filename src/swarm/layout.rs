//! Step 2 of the swarm step: the share's layout, created where missing and
//! seeded from the image, never touching what exists.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Paths, SwarmError, io_ctx, registry};

/// What the image ships to seed a new share.
#[derive(Debug, Clone, Default)]
pub struct Seeds {
    /// A tree shaped like the share (`mybuddybook/…`, `spellbook/spells/spawn_buddy.md`).
    pub share: Option<PathBuf>,
    /// The Buddy template directory, copied to `mybuddybook/templates/_template`.
    pub template_dir: Option<PathBuf>,
}

/// Step 2: creates what is missing, touching nothing that exists. Returns the
/// paths it created. Without `spellbook` (a Buddy-role Machine that does not
/// mount it) the SpellBook is only an empty directory.
pub fn ensure_layout(
    p: &Paths,
    seeds: &Seeds,
    spellbook: bool,
) -> Result<Vec<PathBuf>, SwarmError> {
    let mut created = Vec::new();
    let book = p.book();
    let spell = p.spellbook();
    let mut dirs = vec![
        book.join("wisdom"),
        book.join("announcements"),
        book.join("templates"),
    ];
    dirs.push(if spellbook {
        spell.join("spells")
    } else {
        spell.clone()
    });
    for dir in dirs {
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(io_ctx(&dir, "cannot create"))?;
            created.push(dir);
        }
    }
    if let Some(src) = seeds.share.as_deref().filter(|s| s.is_dir()) {
        let books = [(super::BOOK, true), (super::SPELLBOOK, spellbook)];
        for (name, here) in books {
            let (from, to) = (src.join(name), p.root.join(name));
            if !here || !from.is_dir() {
                continue;
            }
            seed_missing(&from, &to, &mut created)?;
        }
    }
    if let Some(src) = seeds.template_dir.as_deref().filter(|s| s.is_dir()) {
        let dest = book.join("templates").join("_template");
        seed_missing(src, &dest, &mut created)?;
    }
    let changelog = p.changelog();
    let opened = spellbook.then(|| {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o660)
            .open(&changelog)
    });
    match opened {
        None => {}
        Some(Ok(mut f)) => {
            f.write_all(b"# SpellBook changelog\n\nOne line per spell cast: date, caster, spell, what changed.\n\n")
                .map_err(io_ctx(&changelog, "cannot write"))?;
            created.push(changelog);
        }
        Some(Err(e)) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Some(Err(e)) => return Err(io_ctx(&changelog, "cannot create")(e)),
    }
    // The registry is created under its lock, so two Buddies booting at once
    // cannot both decide it is missing and clobber each other.
    let reg = registry::path_in(&book);
    if !reg.exists() {
        let l = registry::lock(&book)?;
        if !reg.exists() {
            l.commit()?;
            created.push(reg);
        }
    }
    Ok(created)
}

/// Copies every file of `src` that `dest` lacks, and records each one it
/// created. Every Machine seeds the same share, often at the same moment
/// (a swarm-wide deploy), so a file appears whole or not at all and the
/// first Machine's copy wins: each is written to a temporary name and
/// hard-linked into place, which fails if the name exists (JuiceFS and
/// every local filesystem do this atomically). What a Buddy has edited is
/// never overwritten.
fn seed_missing(src: &Path, dest: &Path, created: &mut Vec<PathBuf>) -> Result<(), SwarmError> {
    fs::create_dir_all(dest).map_err(io_ctx(dest, "cannot create"))?;
    let entries = fs::read_dir(src).map_err(io_ctx(src, "cannot read the seed"))?;
    for e in entries {
        let e = e.map_err(io_ctx(src, "cannot read the seed"))?;
        let (from, to) = (e.path(), dest.join(e.file_name()));
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            seed_missing(&from, &to, created)?;
            continue;
        }
        if to.symlink_metadata().is_ok() {
            continue;
        }
        let tmp = dest.join(format!(".seed-{:016x}", rand::random::<u64>()));
        let linked = fs::copy(&from, &tmp).and_then(|_| fs::hard_link(&tmp, &to));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => created.push(to),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_ctx(&to, "cannot seed")(e)),
        }
    }
    Ok(())
}
