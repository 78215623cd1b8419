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
            let before = list_files(&to);
            copy_missing(&from, &to)?;
            created.extend(list_files(&to).into_iter().filter(|f| !before.contains(f)));
        }
    }
    if let Some(src) = seeds.template_dir.as_deref().filter(|s| s.is_dir()) {
        let dest = book.join("templates").join("_template");
        let before = list_files(&dest);
        fs::create_dir_all(&dest).map_err(io_ctx(&dest, "cannot create"))?;
        copy_missing(src, &dest)?;
        created.extend(
            list_files(&dest)
                .into_iter()
                .filter(|f| !before.contains(f)),
        );
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

fn copy_missing(src: &Path, dest: &Path) -> Result<(), SwarmError> {
    let opts = fs_extra::dir::CopyOptions {
        skip_exist: true,
        content_only: true,
        ..Default::default()
    };
    fs_extra::dir::copy(src, dest, &opts)
        .map(|_| ())
        .map_err(|e| io_ctx(dest, "cannot seed")(io::Error::other(e.to_string())))
}

fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
