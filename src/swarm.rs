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

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::Gid;
use tracing::{info, warn};

use crate::privileges::Credentials;
use crate::problem::Problem;
use crate::registry;
use crate::sys;

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
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
}

fn io_ctx<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> SwarmError + 'a {
    move |source| SwarmError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Whether `path` is itself a mount point, per /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let canon = path.canonicalize()?;
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| Path::new(&unescape_mountinfo(mp)) == canon)
    }))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Step 1: the share must be mounted.
pub fn check_mounted(root: &Path, allow_unmounted: bool) -> Result<(), SwarmError> {
    fs::create_dir_all(root).map_err(io_ctx(root, "cannot create"))?;
    let mounted = is_mount_point(root).map_err(io_ctx(root, "cannot inspect mounts"))?;
    if mounted {
        return Ok(());
    }
    if allow_unmounted {
        warn!(swarm = %root.display(), "the swarm dir is not a mount point (allowed by --swarm-dir-unmounted): shared data stays on this machine");
        return Ok(());
    }
    Err(SwarmError::NotMounted(root.to_path_buf()))
}

/// What the image ships to seed a new share.
#[derive(Debug, Clone, Default)]
pub struct Seeds {
    /// A tree shaped like the share (`mybuddybook/…`, `spellbook/spells/spawn_buddy.md`).
    pub share: Option<PathBuf>,
    /// The Buddy template directory, copied to `mybuddybook/templates/_template`.
    pub template_dir: Option<PathBuf>,
}

/// Step 2: creates what is missing, touching nothing that exists. Returns the
/// paths it created.
pub fn ensure_layout(p: &Paths, seeds: &Seeds) -> Result<Vec<PathBuf>, SwarmError> {
    let mut created = Vec::new();
    let book = p.book();
    let spell = p.spellbook();
    for dir in [
        book.join("wisdom"),
        book.join("announcements"),
        book.join("templates"),
        spell.join("spells"),
    ] {
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(io_ctx(&dir, "cannot create"))?;
            created.push(dir);
        }
    }
    if let Some(src) = seeds.share.as_deref().filter(|s| s.is_dir()) {
        let before = list_files(&p.root);
        copy_missing(src, &p.root)?;
        created.extend(
            list_files(&p.root)
                .into_iter()
                .filter(|f| !before.contains(f)),
        );
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
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(&changelog)
    {
        Ok(mut f) => {
            f.write_all(b"# SpellBook changelog\n\nOne line per spell cast: date, caster, spell, what changed.\n\n")
                .map_err(io_ctx(&changelog, "cannot write"))?;
            created.push(changelog);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_ctx(&changelog, "cannot create")(e)),
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
        let mut stack = vec![tree];
        while let Some(path) = stack.pop() {
            let md = fs::symlink_metadata(&path).map_err(io_ctx(&path, "cannot stat"))?;
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
                    nix::unistd::chown(&path, None, Some(gid))
                        .map_err(|e| io_ctx(&path, "cannot chgrp")(e.into()))?;
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
                    fs::set_permissions(&path, fs::Permissions::from_mode(want))
                        .map_err(io_ctx(&path, "cannot chmod"))?;
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
                for e in fs::read_dir(&path)
                    .map_err(io_ctx(&path, "cannot list"))?
                    .flatten()
                {
                    stack.push(e.path());
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(repairs)
    } else {
        Err(SwarmError::Unsafe(problems))
    }
}

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
/// [`probe_access`] reads its verdict.
pub fn start_probe(p: &Paths, creds: &Credentials) -> Result<sys::Probe<i32>, SwarmError> {
    let spell = p.spellbook();
    let spells = spell.join("spells");
    let spawn = spell.join(SPAWN_SPELL);
    let spawn_exists = spawn.exists();
    let changelog = p.changelog();
    let book = p.book();
    // Unique per probe: two probes run at once.
    let probe_file = book.join(format!(
        ".access-probe-{}-{}",
        std::process::id(),
        creds.groups.len()
    ));
    let registry = registry::path_in(&book);
    sys::probe_as(creds, move || {
        let mut b = 0;
        if fs::read_dir(&spell).is_ok() {
            b |= 1;
        }
        // The spells folder, and the seeded spell when the share has it.
        if fs::read_dir(&spells).is_ok() && (!spawn_exists || fs::read(&spawn).is_ok()) {
            b |= 2;
        }
        if fs::read(&changelog).is_ok() {
            b |= 4;
        }
        if fs::write(&probe_file, b"probe").is_ok() && fs::remove_file(&probe_file).is_ok() {
            b |= 8;
        }
        if fs::OpenOptions::new().append(true).open(&registry).is_ok() {
            b |= 16;
        }
        b
    })
    .map_err(io_ctx(&p.root, "cannot run the access probe"))
}

pub fn probe_access(p: &Paths, probe: sys::Probe<i32>) -> Result<Access, SwarmError> {
    probe
        .result()
        .map(Access::from_bits)
        .map_err(io_ctx(&p.root, "the access probe failed"))
}

/// Checks both roles' access against the rules (the two probes run at the
/// same time, and with `mask` the SpellBook mount probe too); every
/// violation is listed. Returns whether the mask is available.
pub fn verify_access(
    p: &Paths,
    buddy: &Credentials,
    magician: &Credentials,
    mask: bool,
) -> Result<bool, SwarmError> {
    let bp = start_probe(p, buddy)?;
    let mp = start_probe(p, magician);
    let mask_probe = mask.then(|| sys::mask_probe(&p.spellbook()));
    // Join every probe before judging, so none is left running.
    let b = probe_access(p, bp);
    let m = mp.and_then(|probe| probe_access(p, probe));
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
            &p.spellbook(),
            "",
            format!("a Buddy-role gateway ({}) can read the SpellBook; it must belong to the magicians group with no access for others", who(buddy)),
        ));
    }
    if !(m.list_spellbook && m.read_spell && m.read_changelog) {
        problems.push(Problem::new(
            &p.spellbook(),
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
                &p.book(),
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

/// Everything `swarm check` and the boot's swarm step do, in order.
#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    pub allow_unmounted: bool,
    pub repair: bool,
    pub seeds: Seeds,
    /// Probe whether the SpellBook can be masked (only a Buddy-role gateway needs it).
    pub want_mask: bool,
}

#[derive(Debug)]
pub struct Report {
    pub created: Vec<PathBuf>,
    pub repairs: Vec<Repair>,
    pub verified: bool,
    /// Whether a Buddy-role gateway gets the tmpfs mask over the SpellBook.
    pub can_mask: bool,
}

/// Runs steps 1-4. `gateway` is the uid/gid the gateways run as (None when
/// not root: nothing can be repaired or probed then).
pub fn prepare(opts: &Options, gateway: Option<&Credentials>) -> Result<Report, SwarmError> {
    let p = Paths::new(&opts.root);
    check_mounted(&p.root, opts.allow_unmounted)?;
    let created = ensure_layout(&p, &opts.seeds)?;
    for c in &created {
        info!(path = %c.display(), "swarm: created");
    }
    let book_gid = crate::privileges::swarm_gid(crate::privileges::BOOK_GROUP);
    let magicians_gid = crate::privileges::swarm_gid(crate::privileges::MAGICIANS_GROUP);
    let root = sys::is_root();
    let repairs = enforce_permissions(&p, book_gid, magicians_gid, opts.repair && root)?;
    for r in &repairs {
        info!(path = %r.path.display(), change = %r.what, "swarm: repaired");
    }
    let (verified, can_mask) = match gateway {
        Some(c) if root => {
            let buddy = with_groups(c, vec![book_gid]);
            let magician = with_groups(c, vec![book_gid, magicians_gid]);
            let can_mask = verify_access(&p, &buddy, &magician, opts.want_mask)?;
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
        created,
        repairs,
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
