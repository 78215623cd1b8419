//! Step 3a of the swarm step: groups and modes. MyBuddyBook belongs to the
//! `mybuddybook` group, the SpellBook to `magicians`; directories are setgid
//! 2770 so what one Buddy writes stays the group's, and others get nothing.
//!
//! The walk is root's, on a tree every gateway writes while it runs, so it
//! goes through handles alone (see [`crate::untrusted`]): each directory is
//! opened from its parent's handle without following a link, listed through
//! its own handle, and each entry that needs a repair is opened the same
//! way and repaired through its descriptor (`fchown`/`fchmod`), once
//! `fstat` says it is what the listing said. A directory renamed and
//! replaced by a link mid-walk is then a link we refuse to open, never a
//! path into `/etc`. Links, FIFOs, sockets and devices are skipped and
//! reported, never followed and never a failed boot; so are files with
//! other hard links (their other name may be anywhere on the filesystem)
//! and anything on another filesystem.

use std::ffi::OsString;
use std::io::{self, ErrorKind};
use std::path::PathBuf;
use std::rc::Rc;

use nix::unistd::Gid;

use super::layout::Share;
use super::{DIR_MODE, FILE_GROUP_BITS, SwarmError, registry};
use crate::config::problem::Problem;
use crate::untrusted::{self, Dir, Kind, Meta};

/// One change the permission pass made (or would make).
#[derive(Debug, Clone)]
pub struct Repair {
    pub path: PathBuf,
    pub what: String,
}

/// What the walk left alone, and why (a link, a FIFO, another filesystem).
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub why: String,
}

/// What the permission pass did and found.
#[derive(Debug, Default)]
pub struct Walked {
    pub repairs: Vec<Repair>,
    /// The first [`MAX_REPORTED`] entries skipped.
    pub skipped: Vec<Skipped>,
    /// All of them.
    pub skipped_count: usize,
    /// Entries looked at.
    pub seen: usize,
}

/// Skipped entries kept for the report (a gateway could plant millions).
pub const MAX_REPORTED: usize = 50;
/// Deeper than this is not a tree a Buddy writes: left alone (and a walk
/// holds a descriptor per level).
pub const MAX_DEPTH: usize = 64;

struct Walk<'a> {
    gid: Gid,
    repair: bool,
    dev: u64,
    out: &'a mut Walked,
    problems: &'a mut Vec<Problem>,
}

/// The share's root: traversable by the gateways, writable by root alone
/// (a gateway that could write it could put a link where a book belongs,
/// or where the SpellBook mask is mounted). Repaired through its handle.
pub fn secure_root(
    root: &Dir,
    repair: bool,
) -> Result<Result<Option<Repair>, Problem>, SwarmError> {
    let md = root.meta().map_err(io_ctx(root.path(), "cannot stat"))?;
    let want = (md.mode | 0o111) & !0o022;
    if md.mode == want {
        return Ok(Ok(None));
    }
    if !repair {
        return Ok(Err(Problem::new(
            root.path(),
            "",
            format!(
                "mode is {:04o}, must be {want:04o}: traversable (a+x) by the gateways, writable by its owner alone",
                md.mode
            ),
        )));
    }
    untrusted::set_group_mode(root.fd(), None, Some(want))
        .map_err(io_ctx(root.path(), "cannot chmod"))?;
    Ok(Ok(Some(Repair {
        path: root.path().to_path_buf(),
        what: format!("mode {:04o} -> {want:04o}", md.mode),
    })))
}

fn io_ctx(path: &std::path::Path, what: &'static str) -> impl FnOnce(io::Error) -> SwarmError {
    let path = path.to_path_buf();
    move |source| SwarmError::Io { path, what, source }
}

/// Step 3a: every entry of MyBuddyBook belongs to `book_gid`, every entry of
/// the SpellBook to `magicians_gid`; directories are 2770, files group
/// read/write, nothing for others. With `repair` (root), fixes and reports
/// each change; without, reports each deviation as a problem, after
/// `problems` already found (all of them at once).
pub fn enforce_permissions(
    share: &Share,
    book_gid: Gid,
    magicians_gid: Gid,
    repair: bool,
    mut problems: Vec<Problem>,
) -> Result<Walked, SwarmError> {
    let mut out = Walked::default();
    for (top, gid) in [(&share.book, book_gid), (&share.spellbook, magicians_gid)] {
        let top_meta = top.meta().map_err(io_ctx(top.path(), "cannot stat"))?;
        let mut w = Walk {
            gid,
            repair,
            dev: top_meta.dev,
            out: &mut out,
            problems: &mut problems,
        };
        w.tree(top, top_meta)?;
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(SwarmError::Unsafe(problems))
    }
}

/// The mode a file must have: the owner's bits kept, the group may read and
/// write (and execute if the owner may), others nothing, no setuid/setgid.
/// The registry's good copy is root's and only readable by the group.
fn file_mode(m: &Meta, name: &OsString, top_level: bool) -> u32 {
    if top_level && m.uid == 0 && name == registry::GOOD_FILE {
        return 0o640;
    }
    (m.mode & 0o700) | FILE_GROUP_BITS | ((m.mode & 0o100) >> 3)
}

impl Walk<'_> {
    fn skip(&mut self, path: PathBuf, why: impl Into<String>) {
        self.out.skipped_count += 1;
        if self.out.skipped.len() < MAX_REPORTED {
            self.out.skipped.push(Skipped {
                path,
                why: why.into(),
            });
        }
    }

    /// Group and mode of one open inode, checked and (with repair) fixed
    /// through its descriptor.
    fn fix(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        path: &std::path::Path,
        m: &Meta,
        want: u32,
    ) -> Result<(), SwarmError> {
        let gid = self.gid.as_raw();
        let group_ok = m.gid == gid;
        let mode_ok = m.mode == want;
        if group_ok && mode_ok {
            return Ok(());
        }
        if !self.repair {
            if !group_ok {
                self.problems.push(Problem::new(
                    path,
                    "",
                    format!("group is {}, must be {gid}", m.gid),
                ));
            }
            if !mode_ok {
                self.problems.push(Problem::new(
                    path,
                    "",
                    format!("mode is {:04o}, must be {want:04o}", m.mode),
                ));
            }
            return Ok(());
        }
        untrusted::set_group_mode(fd, (!group_ok).then_some(gid), Some(want))
            .map_err(io_ctx(path, "cannot repair"))?;
        if !group_ok {
            self.out.repairs.push(Repair {
                path: path.to_path_buf(),
                what: format!("group {} -> {gid}", m.gid),
            });
        }
        if !mode_ok {
            self.out.repairs.push(Repair {
                path: path.to_path_buf(),
                what: format!("mode {:04o} -> {want:04o}", m.mode),
            });
        }
        Ok(())
    }

    /// The book at `top` and everything below it, depth first. A pending
    /// entry holds its parent's handle, so the open descriptors are one per
    /// level, not one per directory.
    fn tree(&mut self, top: &Dir, top_meta: Meta) -> Result<(), SwarmError> {
        self.fix(top.fd(), top.path(), &top_meta, DIR_MODE)?;
        let top = Rc::new(top.try_clone().map_err(io_ctx(top.path(), "cannot open"))?);
        let mut stack: Vec<(Rc<Dir>, OsString, usize)> = Vec::new();
        self.list(&top, 1, &mut stack)?;
        while let Some((parent, name, depth)) = stack.pop() {
            self.out.seen += 1;
            let path = parent.shown(&name);
            // Other Machines' gateways and probes write temporary files and
            // rename them away all the time: gone is fine.
            let m = match parent.stat(&name) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    self.skip(path, format!("cannot stat: {e}"));
                    continue;
                }
            };
            if m.dev != self.dev {
                self.skip(path, "on another filesystem (a mount inside the share)");
                continue;
            }
            match m.kind {
                Kind::Dir if depth > MAX_DEPTH => {
                    self.skip(path, format!("deeper than {MAX_DEPTH} levels"));
                }
                Kind::Dir => {
                    let d = match parent.dir(&name) {
                        Ok(d) => d,
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => {
                            self.skip(path, format!("replaced while we looked ({e})"));
                            continue;
                        }
                    };
                    let m = d.meta().map_err(io_ctx(&path, "cannot stat"))?;
                    if m.dev != self.dev {
                        self.skip(path, "on another filesystem (a mount inside the share)");
                        continue;
                    }
                    self.fix(d.fd(), &path, &m, DIR_MODE)?;
                    let d = Rc::new(d);
                    self.list(&d, depth + 1, &mut stack)?;
                }
                Kind::File => {
                    let top_level = Rc::ptr_eq(&parent, &top);
                    let want = file_mode(&m, &name, top_level);
                    if m.gid == self.gid.as_raw() && m.mode == want {
                        continue;
                    }
                    if m.nlink > 1 {
                        self.skip(path, "has other hard links (their names may be outside the share): not repaired");
                        continue;
                    }
                    let f = match parent.open_file(&name, false) {
                        Ok(f) => f,
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => {
                            self.skip(path, format!("replaced while we looked ({e})"));
                            continue;
                        }
                    };
                    let m = untrusted::meta_of(&f).map_err(io_ctx(&path, "cannot stat"))?;
                    if m.nlink > 1 || m.dev != self.dev {
                        self.skip(
                            path,
                            "replaced by a hard link while we looked: not repaired",
                        );
                        continue;
                    }
                    let want = file_mode(&m, &name, top_level);
                    use std::os::fd::AsFd;
                    self.fix(f.as_fd(), &path, &m, want)?;
                }
                other => self.skip(
                    path,
                    format!(
                        "{}: not allowed in the swarm share; left alone, never followed",
                        other.describe()
                    ),
                ),
            }
        }
        Ok(())
    }

    fn list(
        &mut self,
        d: &Rc<Dir>,
        depth: usize,
        stack: &mut Vec<(Rc<Dir>, OsString, usize)>,
    ) -> Result<(), SwarmError> {
        match d.entries() {
            Ok(entries) => {
                stack.extend(entries.into_iter().map(|e| (d.clone(), e.name, depth)));
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => {
                self.skip(d.path().to_path_buf(), format!("cannot list: {e}"));
                Ok(())
            }
        }
    }
}
