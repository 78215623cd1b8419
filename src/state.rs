//! The Buddy's persistent state dir (its Fly volume, `/data` in the image):
//! config, gateway token, workspace, WhatsApp credentials, logs, and the
//! gateway's TMPDIR (its compile cache and lock live there, so both survive a
//! restart and a warm start takes seconds instead of tens of seconds).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};
use tracing::warn;

use crate::untrusted::{self, Dir, Kind};

const TMP: &str = "tmp";
const WORKSPACE: &str = "workspace";
const CREDENTIALS: &str = "credentials";
const LOGS: &str = "logs";
const COMPILE_CACHE: &str = "node-compile-cache";
/// Root's own corner of the volume: the journals of spells cut short
/// (mode 0700, never given to the gateway).
pub const JOURNALS: &str = ".spell-journals";
/// Root's count of boots refused in a row (see `boot::refusal`).
pub const REFUSALS: &str = ".supervisor-refusals";

/// Root's own corners of the state dir: spell journals, the refusal count,
/// the restore's request and what a restore kept aside. Never handed to the
/// gateway, never backed up.
pub fn is_roots_corner(name: &std::ffi::OsStr) -> bool {
    name == JOURNALS
        || name == REFUSALS
        || name
            .to_string_lossy()
            .starts_with(crate::backup::restore::WORK_PREFIX)
}

pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
        }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join(crate::config::render::CONFIG_FILE_NAME)
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join(TMP)
    }
    /// Node's compile cache, where openclaw's launcher looks for it: under
    /// the gateway's TMPDIR.
    pub fn compile_cache(&self) -> PathBuf {
        self.tmp().join(COMPILE_CACHE)
    }
    pub fn workspace(&self) -> PathBuf {
        self.root.join(WORKSPACE)
    }
    pub fn credentials(&self) -> PathBuf {
        self.root.join(CREDENTIALS)
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join(LOGS)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("state dir {path}: {what}: {source}")]
pub struct StateError {
    pub path: PathBuf,
    pub what: &'static str,
    pub source: io::Error,
}

fn ctx<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// What `prepare` did, for the boot log.
#[derive(Debug, Default)]
pub struct Prepared {
    pub seeded_files: u64,
    pub warm_files: u64,
    pub chowned: u64,
    /// What an older image or gateway left that this one replaces.
    pub migrated: Migrated,
}

/// The one-time carry-over of a volume written by an older image (Clawdbot,
/// upper-case persona names): what was renamed or removed, for the log.
#[derive(Debug, Default)]
pub struct Migrated {
    /// The persona files renamed, or kept both where both hold text.
    pub workspace: crate::config::workspace::Migration,
    pub replaced_generic: Vec<String>,
    pub removed: Vec<PathBuf>,
}

impl Migrated {
    /// Whether anything changed (what was `kept_both` is left as it was).
    pub fn changed(&self) -> bool {
        !(self.workspace.renamed.is_empty()
            && self.replaced_generic.is_empty()
            && self.removed.is_empty())
    }
}

/// What Clawdbot-era images left on a volume that nothing reads any more:
/// the config they rendered (with secrets: OpenClaw would still find a
/// `clawdbot.json` in its state dir), its backups, Clawdbot's lock dirs and
/// its jiti compile cache. (dir, name) pairs.
fn stale_entries(root: &Dir, tmp: &Dir) -> io::Result<Vec<(bool, OsString)>> {
    let old = crate::config::render::OLD_CONFIG_FILE_NAME;
    let mut out = Vec::new();
    for e in root.entries()? {
        let name = e.name.to_string_lossy();
        if name == old || name.starts_with(&format!("{old}.bak")) {
            out.push((false, e.name.clone()));
        }
    }
    for e in tmp.entries()? {
        let name = e.name.to_string_lossy();
        if name == "jiti" || name.starts_with("clawdbot-") {
            out.push((true, e.name.clone()));
        }
    }
    out.sort();
    Ok(out)
}

fn migrate(
    layout: &Layout,
    root: &Dir,
    dirs: &Dirs,
    image_workspace: Option<&Path>,
) -> Result<Migrated, StateError> {
    use crate::config::workspace;
    let ws = layout.workspace();
    let mut m = Migrated {
        workspace: workspace::migrate(&dirs.workspace)
            .map_err(ctx(&ws, "cannot rename the old persona files"))?,
        ..Default::default()
    };
    if let Some(img) = image_workspace.filter(|p| p.is_dir()) {
        m.replaced_generic = workspace::drop_generic(&dirs.workspace, img)
            .map_err(ctx(&ws, "cannot replace the gateway's generic files"))?;
    }
    let stale = stale_entries(root, &dirs.tmp).map_err(ctx(&layout.root, "cannot list"))?;
    for (in_tmp, name) in stale {
        let (dir, shown) = if in_tmp {
            (&dirs.tmp, layout.tmp().join(&name))
        } else {
            (root, layout.root.join(&name))
        };
        // Through the handle: a link there is removed, never followed.
        dir.remove_tree(&name)
            .map_err(ctx(&shown, "cannot remove what an older image left"))?;
        m.removed.push(shown);
    }
    Ok(m)
}

/// The state dir's own directories, opened.
struct Dirs {
    tmp: Dir,
    workspace: Dir,
}

/// Creates the layout (0700 directories), seeds the workspace from the image
/// without overwriting anything the Buddy has written since, and gives the
/// whole tree to the gateway user (when we are root and have one).
///
/// The state dir is the gateway's: its agent can have put a link, a FIFO
/// or a hard link anywhere in it during its last run. Everything here goes
/// through handles ([`crate::untrusted`]): a link where one of our
/// directories belongs is moved aside, never written through or chmod'ed;
/// a file is read only if it is a regular file, bounded.
pub fn prepare(
    layout: &Layout,
    image_workspace: Option<&Path>,
    warm_cache: Option<&Path>,
    owner: Option<(Uid, Gid)>,
) -> Result<Prepared, StateError> {
    let mut out = Prepared::default();
    // Our own configuration's path (the volume's mount point): trusted.
    fs::create_dir_all(&layout.root).map_err(ctx(&layout.root, "cannot create"))?;
    let root = Dir::open(&layout.root).map_err(ctx(&layout.root, "cannot open"))?;
    // OpenClaw's security audit wants the state private; credentials above all.
    untrusted::set_group_mode(root.fd(), None, Some(0o700))
        .map_err(ctx(&layout.root, "cannot set mode 0700"))?;
    let mut opened = Vec::new();
    for name in [TMP, WORKSPACE, CREDENTIALS, LOGS] {
        let shown = layout.root.join(name);
        let e = root
            .ensure_dir(name, 0o700)
            .map_err(ctx(&shown, "cannot create"))?;
        if let Some((kind, to)) = &e.moved_aside {
            warn!(path = %shown.display(), found = kind.describe(), moved_to = %to.to_string_lossy(), "state: one of the state's directories was something else; moved aside");
        }
        untrusted::set_group_mode(e.dir.fd(), None, Some(0o700))
            .map_err(ctx(&shown, "cannot set mode 0700"))?;
        opened.push(e.dir);
    }
    let mut it = opened.into_iter();
    let (tmp, workspace) = (it.next().expect("tmp"), it.next().expect("workspace"));
    let dirs = Dirs { tmp, workspace };
    out.migrated = migrate(layout, &root, &dirs, image_workspace)?;
    if let Some(src) = image_workspace.filter(|p| p.is_dir()) {
        let s = untrusted::seed_tree(src, &dirs.workspace, 0o700, 0o600)
            .map_err(ctx(&layout.workspace(), "cannot seed from the image"))?;
        out.seeded_files = s.files;
    }
    if let Some(src) = warm_cache {
        let dest = layout.compile_cache();
        let e = dirs
            .tmp
            .ensure_dir(COMPILE_CACHE, 0o700)
            .map_err(ctx(&dest, "cannot create"))?;
        let s = untrusted::seed_tree(src, &e.dir, 0o700, 0o600)
            .map_err(ctx(&dest, "cannot seed from the image"))?;
        out.warm_files = s.files;
    }
    if let Some((uid, gid)) = owner {
        out.chowned = chown_tree(&root, uid, gid)?;
    }
    Ok(out)
}

/// Gives every entry not already owned by (uid, gid) to them, through
/// handles: links are left alone, so are files with other hard links (their
/// other name may be anywhere on the filesystem) and the spell journals
/// (root's). Returns how many entries changed.
pub fn chown_tree(root: &Dir, uid: Uid, gid: Gid) -> Result<u64, StateError> {
    let (uid, gid) = (uid.as_raw(), gid.as_raw());
    let mut changed = 0;
    let dev = root.meta().map_err(ctx(root.path(), "cannot stat"))?.dev;
    let give = |fd: std::os::fd::BorrowedFd<'_>, m: &untrusted::Meta, path: &Path| {
        if m.uid == uid && m.gid == gid {
            return Ok(false);
        }
        untrusted::set_owner(fd, uid, gid).map_err(ctx(path, "cannot chown"))?;
        Ok::<bool, StateError>(true)
    };
    let top = root.meta().map_err(ctx(root.path(), "cannot stat"))?;
    changed += give(root.fd(), &top, root.path())? as u64;
    let mut stack: Vec<(std::rc::Rc<Dir>, OsString)> = Vec::new();
    let first = std::rc::Rc::new(root.try_clone().map_err(ctx(root.path(), "cannot open"))?);
    for e in first.entries().map_err(ctx(root.path(), "cannot list"))? {
        if !is_roots_corner(&e.name) {
            stack.push((first.clone(), e.name));
        }
    }
    while let Some((parent, name)) = stack.pop() {
        let path = parent.shown(&name);
        let Some(m) = parent.stat(&name).map_err(ctx(&path, "cannot stat"))? else {
            continue;
        };
        if m.dev != dev || (m.uid == uid && m.gid == gid && m.kind != Kind::Dir) {
            continue;
        }
        match m.kind {
            Kind::Dir => {
                let d = parent.dir(&name).map_err(ctx(&path, "cannot open"))?;
                let dm = d.meta().map_err(ctx(&path, "cannot stat"))?;
                changed += give(d.fd(), &dm, &path)? as u64;
                let d = std::rc::Rc::new(d);
                for e in d.entries().map_err(ctx(&path, "cannot list"))? {
                    stack.push((d.clone(), e.name));
                }
            }
            Kind::File if m.nlink > 1 => {
                warn!(path = %path.display(), "state: a file with other hard links is not given to the gateway");
            }
            Kind::File => {
                let f = parent
                    .open_file(&name, false)
                    .map_err(ctx(&path, "cannot open"))?;
                let fm = untrusted::meta_of(&f).map_err(ctx(&path, "cannot stat"))?;
                if fm.nlink == 1 {
                    changed += give(f.as_fd(), &fm, &path)? as u64;
                }
            }
            // Links, FIFOs, sockets: the gateway's own doing; left alone.
            _ => {}
        }
    }
    Ok(changed)
}
