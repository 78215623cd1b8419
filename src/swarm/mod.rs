//! The swarm share at `/mnt/swarm`: MyBuddyBook (every Buddy reads and
//! writes) and the SpellBook (Magicians only).
//!
//! The gateway is an AI agent that runs shell commands, so the boundary that
//! matters is the gateway process: a Buddy-role gateway must not be able to
//! list or read the SpellBook however it tries. Three layers enforce it:
//! ownership and modes (repaired at boot when we are root), a real access
//! probe as the gateway's uid and groups (the boot refuses when it fails), and,
//! where mounting is allowed, an empty read-only tmpfs over the SpellBook in
//! the Buddy-role gateway's own mount namespace.
//!
//! The share's layers, one file each: [`mount`] (is the share there),
//! [`layout`] (what it holds, seeded from the image), [`permissions`] (groups
//! and modes), [`access`] (probes as the gateways' identities and the
//! SpellBook mask), [`registry`] and [`resonate`] (what the Buddies write
//! there). [`prepare`] is the boot's swarm step: those layers in order.

/// Where every image mounts the share.
pub const IMAGE_SWARM_DIR: &str = "/mnt/swarm";

use std::io;
use std::path::{Path, PathBuf};

use nix::unistd::Gid;
use tracing::{info, warn};

use crate::config::problem::Problem;
use crate::pid1::privileges::{self, Credentials};
use crate::pid1::sys;
use crate::untrusted;

pub mod access;
pub mod layout;
pub mod mount;
pub mod permissions;
pub mod presence;
pub mod registry;
pub mod reporter;
pub mod resonate;
pub mod share;

pub use layout::{Seeds, Share};

pub const BOOK: &str = "mybuddybook";
pub const SPELLBOOK: &str = "spellbook";
pub const SPAWN_SPELL: &str = "spells/spawn_buddy.md";
pub const CHANGELOG: &str = "changelog.md";

/// Directory and file modes: group-shared, setgid so new files keep the
/// group, nothing for others.
pub const DIR_MODE: u32 = 0o2770;
pub const FILE_GROUP_BITS: u32 = 0o060;

#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> Self {
        Paths {
            root: root.to_path_buf(),
        }
    }
    pub fn book(&self) -> PathBuf {
        self.root.join(BOOK)
    }
    pub fn spellbook(&self) -> PathBuf {
        self.root.join(SPELLBOOK)
    }
    pub fn announcements(&self) -> PathBuf {
        self.book().join("announcements")
    }
    pub fn changelog(&self) -> PathBuf {
        self.spellbook().join(CHANGELOG)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error(
        "{0} is not a mount point: shared data written here would live on this container's root filesystem and vanish at the next restart. Mount the swarm share there (a volume, bind mount or network filesystem), or pass --swarm-dir-unmounted for a local development run"
    )]
    NotMounted(PathBuf),
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("the swarm share's permissions are unsafe:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Unsafe(Vec<Problem>),
    #[error(
        "{0} is not the root of its JuiceFS volume: the share step mounts it before this step (is the mount still running?)"
    )]
    VolumeNotMounted(PathBuf),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
}

pub(crate) fn io_ctx<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(io::Error) -> SwarmError + 'a {
    move |source| SwarmError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Everything `swarm check` and the boot's swarm step do, in order.
#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    pub allow_unmounted: bool,
    /// JuiceFS mode: the volumes mounted under the root (each must be its
    /// volume's root; the root itself is a plain directory). None: the root
    /// is one mounted directory holding both books.
    pub volumes: Option<Vec<&'static str>>,
    pub repair: bool,
    pub seeds: Seeds,
    /// Probe whether the SpellBook can be masked (only a Buddy-role gateway needs it).
    pub want_mask: bool,
}

#[derive(Debug)]
pub struct Report {
    pub created: Vec<PathBuf>,
    pub repairs: Vec<permissions::Repair>,
    /// What was moved aside from names the swarm owns: (where, what, to).
    pub quarantined: Vec<(PathBuf, &'static str, String)>,
    /// What the permission walk left alone (links, FIFOs…): the first few,
    /// and how many in all.
    pub skipped: Vec<permissions::Skipped>,
    pub skipped_count: usize,
    pub verified: bool,
    /// Whether a Buddy-role gateway gets the tmpfs mask over the SpellBook.
    pub can_mask: bool,
}

/// Runs steps 1-4. `gateway` is the uid/gid the gateways run as (None when
/// not root: nothing can be repaired or probed then). Everything below the
/// share's root goes through handles (see [`crate::untrusted`]); nothing a
/// gateway planted fails it, only the share's own permissions can.
pub fn prepare(opts: &Options, gateway: Option<&Credentials>) -> Result<Report, SwarmError> {
    let p = Paths::new(&opts.root);
    match &opts.volumes {
        None => mount::check_mounted(&p.root, opts.allow_unmounted)?,
        Some(v) => mount::check_volumes(&p.root, v)?,
    }
    // A Buddy-role Machine on JuiceFS has no SpellBook volume: its
    // `spellbook` is an empty local directory, kept (and masked) so the
    // gateway meets the same walls everywhere, and never seeded.
    let spellbook_here = opts.volumes.as_ref().is_none_or(|v| v.contains(&SPELLBOOK));
    let root = sys::is_root();
    let repair = opts.repair && root;
    let root_dir = untrusted::Dir::open(&p.root).map_err(io_ctx(&p.root, "cannot open"))?;
    let (mut repairs, root_problems) = match permissions::secure_root(&root_dir, repair)? {
        Ok(r) => (r.into_iter().collect::<Vec<_>>(), Vec::new()),
        Err(p) => (Vec::new(), vec![p]),
    };
    let (share, laid) = layout::ensure_layout(root_dir, &opts.seeds, spellbook_here)?;
    for c in &laid.created {
        info!(path = %c.display(), "swarm: created");
    }
    let book_gid = privileges::swarm_gid(privileges::BOOK_GROUP);
    let magicians_gid = privileges::swarm_gid(privileges::MAGICIANS_GROUP);
    let walked =
        permissions::enforce_permissions(&share, book_gid, magicians_gid, repair, root_problems)?;
    repairs.extend(walked.repairs);
    for r in &repairs {
        info!(path = %r.path.display(), change = %r.what, "swarm: repaired");
    }
    for s in &walked.skipped {
        warn!(path = %s.path.display(), why = %s.why, "swarm: left alone");
    }
    if walked.skipped_count > walked.skipped.len() {
        warn!(
            more = walked.skipped_count - walked.skipped.len(),
            "swarm: more entries left alone (not listed)"
        );
    }
    let (verified, can_mask) = match gateway {
        Some(c) if root => {
            let buddy = with_groups(c, vec![book_gid]);
            let magician = with_groups(c, vec![book_gid, magicians_gid]);
            let can_mask =
                access::verify_access(&share, &buddy, &magician, opts.want_mask, spellbook_here)?;
            if opts.want_mask && !can_mask {
                info!(
                    "swarm: mounting is not allowed here (no CAP_SYS_ADMIN, as under plain Docker); the SpellBook is protected by its permissions alone"
                );
            }
            (true, can_mask)
        }
        _ => {
            warn!("swarm: not root, access to the SpellBook cannot be verified by a probe");
            (false, false)
        }
    };
    Ok(Report {
        created: laid.created,
        repairs,
        quarantined: laid.quarantined,
        skipped: walked.skipped,
        skipped_count: walked.skipped_count,
        verified,
        can_mask,
    })
}

fn with_groups(c: &Credentials, groups: Vec<Gid>) -> Credentials {
    Credentials {
        groups,
        ..c.clone()
    }
}
