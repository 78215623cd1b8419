//! Step 3a of the swarm step: groups and modes. MyBuddyBook belongs to the
//! `mybuddybook` group, the SpellBook to `magicians`; directories are setgid
//! 2770 so what one Buddy writes stays the group's, and others get nothing.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use nix::unistd::Gid;

use super::{DIR_MODE, FILE_GROUP_BITS, Paths, SwarmError, io_ctx};
use crate::config::problem::Problem;

/// One change the permission pass made (or would make).
#[derive(Debug, Clone)]
pub struct Repair {
    pub path: PathBuf,
    pub what: String,
}

/// Step 3a: every entry of MyBuddyBook belongs to `book_gid`, every entry of
/// the SpellBook to `magicians_gid`; directories are 2770, files group
/// read/write, nothing for others. With `repair` (root), fixes and reports
/// each change; without, reports each deviation as a problem.
pub fn enforce_permissions(
    p: &Paths,
    book_gid: Gid,
    magicians_gid: Gid,
    repair: bool,
) -> Result<Vec<Repair>, SwarmError> {
    let mut repairs = Vec::new();
    let mut problems = Vec::new();
    // The root itself: traversable by the gateways, not writable by them.
    let md = fs::metadata(&p.root).map_err(io_ctx(&p.root, "cannot stat"))?;
    let want_root = (md.mode() & 0o7777) | 0o111;
    if md.mode() & 0o111 != 0o111 {
        if repair {
            fs::set_permissions(&p.root, fs::Permissions::from_mode(want_root & 0o7777))
                .map_err(io_ctx(&p.root, "cannot chmod"))?;
            repairs.push(Repair {
                path: p.root.clone(),
                what: format!(
                    "mode {:04o} -> {:04o}",
                    md.mode() & 0o7777,
                    want_root & 0o7777
                ),
            });
        } else {
            problems.push(Problem::new(
                &p.root,
                "",
                "must be traversable (a+x) by the gateways",
            ));
        }
    }
    for (tree, gid) in [(p.book(), book_gid), (p.spellbook(), magicians_gid)] {
        let mut stack = vec![tree.clone()];
        while let Some(path) = stack.pop() {
            // Below the tree's root, an entry may vanish between its listing
            // and its turn: other Machines' gateways and probes write
            // temporary files and rename them away all the time. Gone is fine.
            let gone = |e: &std::io::Error| path != tree && e.kind() == ErrorKind::NotFound;
            let md = match fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(io_ctx(&path, "cannot stat")(e)),
            };
            if md.file_type().is_symlink() {
                // A link could point the gateway anywhere: not allowed in the share.
                problems.push(Problem::new(
                    &path,
                    "",
                    "symbolic links are not allowed in the swarm share; remove it",
                ));
                continue;
            }
            let mode = md.mode() & 0o7777;
            let want = if md.is_dir() {
                DIR_MODE
            } else {
                // Keep the owner's bits; the group may read and write (and
                // execute if the owner may); others get nothing.
                (mode & 0o700) | FILE_GROUP_BITS | ((mode & 0o100) >> 3)
            };
            if md.gid() != gid.as_raw() {
                if repair {
                    match nix::unistd::chown(&path, None, Some(gid)) {
                        Ok(()) => {}
                        Err(e) if gone(&e.into()) => continue,
                        Err(e) => return Err(io_ctx(&path, "cannot chgrp")(e.into())),
                    }
                    repairs.push(Repair {
                        path: path.clone(),
                        what: format!("group {} -> {}", md.gid(), gid.as_raw()),
                    });
                } else {
                    problems.push(Problem::new(
                        &path,
                        "",
                        format!("group is {}, must be {}", md.gid(), gid.as_raw()),
                    ));
                }
            }
            if mode != want {
                if repair {
                    match fs::set_permissions(&path, fs::Permissions::from_mode(want)) {
                        Ok(()) => {}
                        Err(e) if gone(&e) => continue,
                        Err(e) => return Err(io_ctx(&path, "cannot chmod")(e)),
                    }
                    repairs.push(Repair {
                        path: path.clone(),
                        what: format!("mode {mode:04o} -> {want:04o}"),
                    });
                } else {
                    problems.push(Problem::new(
                        &path,
                        "",
                        format!("mode is {mode:04o}, must be {want:04o}"),
                    ));
                }
            }
            if md.is_dir() {
                let entries = match fs::read_dir(&path) {
                    Ok(rd) => rd,
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(io_ctx(&path, "cannot list")(e)),
                };
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    if problems.is_empty() {
        Ok(repairs)
    } else {
        Err(SwarmError::Unsafe(problems))
    }
}
