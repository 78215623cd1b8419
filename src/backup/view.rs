//! The state dir as the backup reads it.
//!
//! The state dir is the gateway's: anything in it may be a link to
//! `/proc/1/environ`, a FIFO, a device node, swapped between a check and a
//! use. The backup runs as root (it must read files the gateway made 0600),
//! so it never reads the state dir itself: a backup cycle is a one-shot
//! child that, in a mount namespace of its own, binds the state dir's
//! directory handle (opened `O_NOFOLLOW` on the trusted path) onto a mount
//! point in root's private cache with `nosymfollow` (the kernel refuses to
//! follow any symbolic link under it, whoever opens what: SQLite, restic,
//! us), `nodev` (no device node opens), `nosuid` and `noexec`. What is left,
//! a FIFO that blocks an open, only stalls that one cycle until its
//! deadline; the supervisor is never the one waiting.
//!
//! Every syscall here runs in the cycle's own process, never in PID 1.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use crate::untrusted::Dir;

/// The view's mount point under the cache dir.
pub const MOUNT_POINT: &str = "view/state";

/// Makes the state dir (a trusted path: `/data`) readable at
/// `<cache>/view/state` for this process alone; returns that path. Root
/// only (the caller checks).
pub fn enter(state: &Path, cache: &Path) -> io::Result<PathBuf> {
    let point = cache.join(MOUNT_POINT);
    std::fs::create_dir_all(&point)?;
    // A mount namespace of our own: the view exists for this process and
    // its children (restic, SQLite) only, and goes away with them.
    unshare(CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
    // Nothing we mount propagates back to the Machine's namespace (the
    // image's / is shared by default under systemd-like setups).
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    // Opened in the new namespace (a bind from a handle of another
    // namespace is EINVAL). The handle, not the path: /proc/self/fd/N names
    // the very directory opened with O_NOFOLLOW, whatever was renamed since.
    let dir = Dir::open(state)?;
    let src = format!("/proc/self/fd/{}", dir.fd().as_raw_fd());
    mount(
        Some(src.as_str()),
        &point,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    // Flags on a bind take a remount (the first mount ignores them).
    let guard = MsFlags::from_bits_retain(nix::libc::MS_NOSYMFOLLOW)
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NOEXEC;
    mount(
        None::<&str>,
        &point,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | guard,
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    Ok(point)
}
