//! Step 3b of the swarm step: what the gateways can really do on the share,
//! probed as their uid and groups, and whether the SpellBook mask can be
//! mounted. Mode bits alone would miss ACLs, root-squashing network
//! filesystems and the like.

use super::layout::Share;
use super::{BOOK, CHANGELOG, SPELLBOOK, SwarmError, io_ctx, registry};
use crate::config::problem::Problem;
use crate::pid1::privileges::Credentials;
use crate::pid1::sys;

/// What one probe as a gateway identity could do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub list_spellbook: bool,
    pub read_spell: bool,
    pub read_changelog: bool,
    pub write_book: bool,
    pub write_registry: bool,
}

impl Access {
    fn from_bits(b: i32) -> Access {
        Access {
            list_spellbook: b & 1 != 0,
            read_spell: b & 2 != 0,
            read_changelog: b & 4 != 0,
            write_book: b & 8 != 0,
            write_registry: b & 16 != 0,
        }
    }
}

/// Step 3b: a real access check. A probe thread drops to `creds` and tries
/// to list and read the SpellBook and to write MyBuddyBook; mode bits alone
/// would miss ACLs, root-squashing network filesystems and the like.
/// [`probe_access`] reads its verdict. The probe starts from root's handle
/// on the share's root (a trusted directory) and opens every name itself,
/// as the gateway, without following links and without blocking (a FIFO a
/// gateway planted at `registry.json` must not hang the boot).
pub fn start_probe(share: &Share, creds: &Credentials) -> Result<sys::Probe<i32>, SwarmError> {
    let spawn_exists = share
        .spellbook
        .dir("spells")
        .ok()
        .and_then(|d| d.stat(SPAWN_FILE).ok().flatten())
        .is_some();
    let root = share
        .root
        .try_clone()
        .map_err(io_ctx(share.root.path(), "cannot open"))?;
    let probe_file = probe_name();
    sys::probe_as(creds, move || {
        let mut b = 0;
        // Opening a directory for reading is the permission check itself.
        let sb = root.dir(SPELLBOOK);
        if sb.as_ref().is_ok_and(|d| d.entries().is_ok()) {
            b |= 1;
        }
        if let Ok(sb) = &sb {
            // The spells folder, and the seeded spell when the share has it.
            let spells = sb.dir("spells");
            let listed = spells.as_ref().is_ok_and(|d| d.entries().is_ok());
            let read = !spawn_exists
                || spells
                    .as_ref()
                    .is_ok_and(|d| d.read(SPAWN_FILE, 1 << 20).is_ok());
            if listed && read {
                b |= 2;
            }
            if sb.read(CHANGELOG, 16 << 20).is_ok() {
                b |= 4;
            }
        }
        if let Ok(book) = root.dir(BOOK) {
            let wrote = book
                .create_new(&probe_file, 0o660)
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"probe"));
            if wrote.is_ok() && book.unlink(&probe_file).is_ok() {
                b |= 8;
            }
            if book.open_file(registry::REGISTRY_FILE, true).is_ok() {
                b |= 16;
            }
        }
        b
    })
    .map_err(io_ctx(share.root.path(), "cannot run the access probe"))
}

/// A name no other probe uses: two probes run at once here, and every
/// Machine probes the same MyBuddyBook, each supervisor often with the same
/// pid (PID 1 of its container), so neither the pid nor the role is unique.
fn probe_name() -> String {
    format!(".access-probe-{:016x}", rand::random::<u64>())
}

pub fn probe_access(share: &Share, probe: sys::Probe<i32>) -> Result<Access, SwarmError> {
    probe
        .result()
        .map(Access::from_bits)
        .map_err(io_ctx(share.root.path(), "the access probe failed"))
}

/// The seeded spell's name in `spellbook/spells/`.
const SPAWN_FILE: &str = "spawn_buddy.md";

/// Checks both roles' access against the rules (the two probes run at the
/// same time, and with `mask` the SpellBook mount probe too); every
/// violation is listed. Returns whether the mask is available.
pub fn verify_access(
    share: &Share,
    buddy: &Credentials,
    magician: &Credentials,
    mask: bool,
    spellbook_here: bool,
) -> Result<bool, SwarmError> {
    let bp = start_probe(share, buddy)?;
    let mp = start_probe(share, magician);
    // A path for the mount syscall: a name in the share's root, which only
    // root can write (see `permissions::secure_root`).
    let mask_probe = mask.then(|| sys::mask_probe(share.spellbook.path()));
    // Join every probe before judging, so none is left running.
    let b = probe_access(share, bp);
    let m = mp.and_then(|probe| probe_access(share, probe));
    let can_mask = matches!(
        mask_probe.map(|m| m.and_then(sys::Probe::result)),
        Some(Ok(true))
    );
    let (b, m) = (b?, m?);
    let mut problems = Vec::new();
    let who = |c: &Credentials| {
        format!(
            "uid {} with groups {:?}",
            c.uid,
            c.groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>()
        )
    };
    if b.list_spellbook || b.read_spell || b.read_changelog {
        problems.push(Problem::new(
            share.spellbook.path(),
            "",
            format!("a Buddy-role gateway ({}) can read the SpellBook; it must belong to the magicians group with no access for others", who(buddy)),
        ));
    }
    // (Where the SpellBook is not mounted, a Buddy-role Machine on JuiceFS,
    // there is nothing for a Magician to read.)
    if spellbook_here && !(m.list_spellbook && m.read_spell && m.read_changelog) {
        problems.push(Problem::new(
            share.spellbook.path(),
            "",
            format!(
                "a Magician's gateway ({}) cannot read the SpellBook and its spells",
                who(magician)
            ),
        ));
    }
    for (role, a, c) in [("Buddy", b, buddy), ("Magician", m, magician)] {
        if !(a.write_book && a.write_registry) {
            problems.push(Problem::new(
                share.book.path(),
                "",
                format!(
                    "a {role}-role gateway ({}) cannot write MyBuddyBook or its registry",
                    who(c)
                ),
            ));
        }
    }
    if problems.is_empty() {
        Ok(can_mask)
    } else {
        Err(SwarmError::Unsafe(problems))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_files_are_unique_across_probes_and_machines() {
        let names: std::collections::HashSet<String> =
            (0..64).map(|_| super::probe_name()).collect();
        assert_eq!(names.len(), 64);
    }
}
