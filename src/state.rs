//! The Buddy's persistent state dir (its Fly volume, `/data` in the image):
//! config, gateway token, workspace, WhatsApp credentials, logs, and the
//! gateway's TMPDIR (its compile cache and lock live there, so both survive a
//! restart and a warm start takes seconds instead of tens of seconds).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use crate::pid1::sys;

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
        self.root.join("tmp")
    }
    /// Node's compile cache, where openclaw's launcher looks for it: under
    /// the gateway's TMPDIR.
    pub fn compile_cache(&self) -> PathBuf {
        self.tmp().join("node-compile-cache")
    }
    pub fn workspace(&self) -> PathBuf {
        self.root.join("workspace")
    }
    pub fn credentials(&self) -> PathBuf {
        self.root.join("credentials")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
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
/// its jiti compile cache.
fn stale_entries(layout: &Layout) -> Vec<PathBuf> {
    let old = crate::config::render::OLD_CONFIG_FILE_NAME;
    let mut out = Vec::new();
    for e in fs::read_dir(&layout.root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == old || name.starts_with(&format!("{old}.bak")) {
            out.push(e.path());
        }
    }
    for e in fs::read_dir(layout.tmp()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "jiti" || name.starts_with("clawdbot-") {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

fn migrate(layout: &Layout, image_workspace: Option<&Path>) -> Result<Migrated, StateError> {
    use crate::config::workspace;
    let ws = layout.workspace();
    let mut m = Migrated {
        workspace: workspace::migrate(&ws)
            .map_err(ctx(&ws, "cannot rename the old persona files"))?,
        ..Default::default()
    };
    if let Some(img) = image_workspace.filter(|p| p.is_dir()) {
        m.replaced_generic = workspace::drop_generic(&ws, img)
            .map_err(ctx(&ws, "cannot replace the gateway's generic files"))?;
    }
    for p in stale_entries(layout) {
        let r = if p.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(ctx(&p, "cannot remove what an older image left"))?;
        m.removed.push(p);
    }
    Ok(m)
}

/// Creates the layout (0700 directories), seeds the workspace from the image
/// without overwriting anything the Buddy has written since, and gives the
/// whole tree to the gateway user (when we are root and have one).
pub fn prepare(
    layout: &Layout,
    image_workspace: Option<&Path>,
    warm_cache: Option<&Path>,
    owner: Option<(Uid, Gid)>,
) -> Result<Prepared, StateError> {
    let mut out = Prepared::default();
    for dir in [
        layout.root.clone(),
        layout.tmp(),
        layout.workspace(),
        layout.credentials(),
        layout.logs(),
    ] {
        fs::create_dir_all(&dir).map_err(ctx(&dir, "cannot create"))?;
        // OpenClaw's security audit wants the state private; credentials above all.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(ctx(&dir, "cannot set mode 0700"))?;
    }
    out.migrated = migrate(layout, image_workspace)?;
    if let Some(src) = image_workspace.filter(|p| p.is_dir()) {
        out.seeded_files = seed(src, &layout.workspace())?;
    }
    if let Some(src) = warm_cache {
        let dest = layout.compile_cache();
        fs::create_dir_all(&dest).map_err(ctx(&dest, "cannot create"))?;
        out.warm_files = seed(src, &dest)?;
    }
    if let Some((uid, gid)) = owner {
        out.chowned = chown_tree(&layout.root, uid, gid)?;
    }
    Ok(out)
}

/// Copies what the image ships into `dest`, skipping every file that exists:
/// the Buddy's memory and edits always win over the image's starter text.
pub fn seed(src: &Path, dest: &Path) -> Result<u64, StateError> {
    let before = count_files(dest);
    let opts = fs_extra::dir::CopyOptions {
        skip_exist: true,
        content_only: true,
        ..Default::default()
    };
    fs_extra::dir::copy(src, dest, &opts)
        .map_err(|e| ctx(dest, "cannot seed from the image")(io::Error::other(e.to_string())))?;
    Ok(count_files(dest).saturating_sub(before))
}

fn count_files(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// Gives every entry not already owned by (uid, gid) to them; symlinks are
/// not followed. Returns how many entries changed.
pub fn chown_tree(root: &Path, uid: Uid, gid: Gid) -> Result<u64, StateError> {
    let mut changed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).map_err(ctx(&p, "cannot stat"))?;
        if md.file_type().is_symlink() {
            continue;
        }
        if md.uid() != uid.as_raw() || md.gid() != gid.as_raw() {
            sys::chown(&p, uid, gid).map_err(ctx(&p, "cannot chown"))?;
            changed += 1;
        }
        if md.is_dir() {
            for e in fs::read_dir(&p).map_err(ctx(&p, "cannot list"))?.flatten() {
                stack.push(e.path());
            }
        }
    }
    Ok(changed)
}
