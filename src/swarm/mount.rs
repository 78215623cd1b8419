//! Step 1 of the swarm step: the share must be a mounted filesystem, never a
//! plain directory of the container's root filesystem (which is reset at
//! every restart and shared with nobody).

use std::fs;
use std::io;
use std::path::Path;

use tracing::warn;

use super::{SwarmError, io_ctx};

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

/// JuiceFS mode: every volume the share step mounted is there (its mount
/// point is the volume's root), so nothing below writes to the image's disk.
pub fn check_volumes(root: &Path, volumes: &[&str]) -> Result<(), SwarmError> {
    for v in volumes {
        let point = root.join(v);
        if !super::share::is_volume_root(&point) {
            return Err(SwarmError::VolumeNotMounted(point));
        }
    }
    Ok(())
}
