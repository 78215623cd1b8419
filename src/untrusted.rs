//! Root's only way into what a gateway can write: the swarm share and the
//! Buddy's own state dir.
//!
//! Every gateway runs an agent that executes shell commands as the gateway's
//! user, so every name there may be swapped, at any moment, for a symbolic
//! link to `/etc`, a FIFO that blocks whoever opens it, or a hard link to
//! someone else's file. A path string walked by root is a path the attacker
//! chooses. So root never hands one to the kernel: it opens a directory it
//! trusts (a path from its own configuration, `/mnt/swarm`, `/data`) and goes
//! on from that handle one name at a time, with `O_NOFOLLOW`, and changes
//! owners and modes through the handle it opened (`fchown`/`fchmod`), never
//! by name. A regular file is used only once `fstat` on the open descriptor
//! says so, and every open is `O_NONBLOCK` (opening a FIFO returns at once,
//! and the `fstat` then refuses it). Multi-name paths go through `openat2`
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`: the kernel
//! itself refuses a link, a `..` out of the tree or a mount crossing, at
//! every step. JuiceFS (FUSE) takes all of these like a local filesystem.
//!
//! Locks a gateway can take too are taken with a deadline: a gateway that
//! holds one must never stop root.
//!
//! The syscalls are rustix's (one typed wrapper per syscall; already in the
//! tree through tempfile): see docs/architecture.md, Dependencies, for why not cap-std.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// What a name is, as `fstat`/`fstatat` (never following a link) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Device,
}

impl Kind {
    fn of(mode: u32) -> Kind {
        match FileType::from_raw_mode(mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            _ => Kind::Device,
        }
    }

    /// How it reads in a report ("a symbolic link").
    pub fn describe(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::Device => "a device node",
        }
    }
}

/// The few facts of an inode root acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits with setuid/setgid/sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
}

impl Meta {
    fn from(st: &rfs::Stat) -> Meta {
        Meta {
            kind: Kind::of(st.st_mode),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            size: st.st_size.max(0) as u64,
            mtime: st.st_mtime,
        }
    }
}

/// A name in a directory listing, with its type when the filesystem says.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: OsString,
    /// None: the filesystem did not say (`DT_UNKNOWN`); stat it.
    pub kind: Option<Kind>,
}

/// An open directory. The path is for messages only: nothing is ever
/// resolved through it again.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Flags of every directory open: no link followed at the last name (the
/// names before it are the kernel's business through `openat2`), no
/// controlling terminal, closed on exec.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY
}

/// Flags of every file open: as for directories, and non-blocking so a
/// FIFO or device at the name returns at once (then refused by `fstat`).
fn file_flags() -> OFlags {
    OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK
}

/// An error that says "something planted is in the way": a link where a
/// directory or file should be (ELOOP), not a directory (ENOTDIR), another
/// filesystem (EXDEV), a FIFO or device ([`not_regular`]).
pub fn is_planted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(c) if c == Errno::LOOP.raw_os_error()
            || c == Errno::NOTDIR.raw_os_error()
            || c == Errno::XDEV.raw_os_error()
    ) || e.kind() == io::ErrorKind::InvalidData
}

fn not_regular(kind: Kind) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} where a regular file belongs", kind.describe()),
    )
}

/// A single, plain name: no separator, not `.` or `..`, not empty.
fn plain_name(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(name)
}

impl Dir {
    /// Opens a directory named by our own configuration (`--swarm`,
    /// `--state-dir`), the one path-based open: its parents are the image's
    /// and root's. Even so, the last name must not be a link.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rfs::open(path, dir_flags(), Mode::empty())?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// A second handle on the same directory (for a probe thread).
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)?,
            path: self.path.clone(),
        })
    }

    /// Where this directory was when it was opened (messages only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`, for messages.
    pub fn shown(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// This directory's own facts.
    pub fn meta(&self) -> io::Result<Meta> {
        Ok(Meta::from(&rfs::fstat(&self.fd)?))
    }

    /// What `name` is, without following it; None when there is nothing.
    pub fn stat(&self, name: impl AsRef<OsStr>) -> io::Result<Option<Meta>> {
        let name = plain_name(name.as_ref())?;
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::from(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the subdirectory `name` (one name, never a link).
    pub fn dir(&self, name: impl AsRef<OsStr>) -> io::Result<Dir> {
        let name = plain_name(name.as_ref())?;
        let fd = rfs::openat(&self.fd, name, dir_flags(), Mode::empty())?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Opens the directory at `rel` beneath this one: every name a real
    /// directory on this filesystem, no link anywhere on the way, no `..`.
    pub fn dir_at(&self, rel: &Path) -> io::Result<Dir> {
        let fd = self.open_beneath(rel, dir_flags(), Mode::empty())?;
        Ok(Dir {
            fd,
            path: self.path.join(rel),
        })
    }

    /// `openat2` confined beneath this directory, without links or mount
    /// crossings; where the kernel lacks `openat2` (before 5.6), the same
    /// walk one name at a time.
    fn open_beneath(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let names = rel
            .components()
            .map(|c| match c {
                Component::Normal(n) => Ok(n),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a plain relative path", rel.display()),
                )),
            })
            .collect::<io::Result<Vec<&OsStr>>>()?;
        let Some((last, parents)) = names.split_last() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
        };
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let resolve = resolve | ResolveFlags::NO_XDEV;
        for _ in 0..8 {
            match rfs::openat2(&self.fd, rel, flags, mode, resolve) {
                // A rename elsewhere on the filesystem raced the lookup:
                // the kernel asks us to try again.
                Err(Errno::AGAIN) => continue,
                Err(Errno::NOSYS) => break,
                r => return r.map_err(Into::into),
            }
        }
        let mut here = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)?;
        let dev = rfs::fstat(&here)?.st_dev;
        for n in parents {
            here = rfs::openat(&here, *n, dir_flags(), Mode::empty())?;
            if rfs::fstat(&here)?.st_dev != dev {
                return Err(Errno::XDEV.into());
            }
        }
        let fd = rfs::openat(&here, *last, flags, mode)?;
        if rfs::fstat(&fd)?.st_dev != dev {
            return Err(Errno::XDEV.into());
        }
        Ok(fd)
    }

    /// Creates the subdirectory `name` (mode before umask). Ok(true) when
    /// this call made it; Ok(false) when a directory was there already.
    /// Anything else at the name is an error ([`is_planted`]).
    pub fn mkdir(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<bool> {
        let name = plain_name(name.as_ref())?;
        match rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) => {
                // The umask narrowed it: say the mode exactly (through the
                // handle of what we just made; if it was swapped already,
                // the open refuses).
                let d = self.dir(name)?;
                rfs::fchmod(&d.fd, Mode::from_raw_mode(mode))?;
                Ok(true)
            }
            Err(Errno::EXIST) => match self.stat(name)? {
                Some(m) if m.kind == Kind::Dir => Ok(false),
                Some(m) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} where a directory belongs", m.kind.describe()),
                )),
                None => Err(Errno::NOENT.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the regular file at `rel` (one name or a path beneath) for
    /// reading, or for appending with `append`.
    pub fn open_file(&self, rel: impl AsRef<Path>, append: bool) -> io::Result<File> {
        let rel = rel.as_ref();
        let access = if append {
            OFlags::WRONLY | OFlags::APPEND
        } else {
            OFlags::RDONLY
        };
        let fd = if rel.components().count() == 1 {
            let name = plain_name(rel.as_os_str())?;
            rfs::openat(&self.fd, name, access | file_flags(), Mode::empty())?
        } else {
            self.open_beneath(rel, access | file_flags(), Mode::empty())?
        };
        regular(fd)
    }

    /// The whole regular file at `rel`, at most `max` bytes (more is an
    /// error: a gateway could fill the share to exhaust our memory).
    pub fn read(&self, rel: impl AsRef<Path>, max: u64) -> io::Result<Vec<u8>> {
        let f = self.open_file(rel.as_ref(), false)?;
        read_bounded(f, max)
    }

    /// Creates `name`, which must not exist in any form (a link there is
    /// EEXIST, never followed).
    pub fn create_new(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        let name = plain_name(name.as_ref())?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(&self.fd, name, flags, Mode::from_raw_mode(mode))?;
        Ok(File::from(fd))
    }

    /// Opens `name` for writing, creating it if missing: the lock files.
    /// A link at the name is refused (ELOOP), anything but a regular file
    /// after the open too.
    pub fn open_or_create(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        let name = plain_name(name.as_ref())?;
        let flags = OFlags::RDWR | OFlags::CREATE | file_flags();
        let fd = rfs::openat(&self.fd, name, flags, Mode::from_raw_mode(mode))?;
        own_mode(regular(fd)?, mode)
    }

    /// Opens `name` for appending, creating it if missing (the changelog:
    /// one `write` per line keeps concurrent lines whole). Links refused,
    /// anything but a regular file too.
    pub fn open_append(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        let name = plain_name(name.as_ref())?;
        let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | file_flags();
        let fd = rfs::openat(&self.fd, name, flags, Mode::from_raw_mode(mode))?;
        own_mode(regular(fd)?, mode)
    }

    /// A temporary name in this directory no other writer uses (every
    /// Machine writes the same share, each supervisor often with pid 1).
    pub fn temp_name(prefix: &str) -> OsString {
        OsString::from(format!("{prefix}{:016x}", rand::random::<u64>()))
    }

    /// Writes `bytes` to a new temporary file here and returns its name.
    fn write_temp(
        &self,
        prefix: &str,
        bytes: &[u8],
        mode: u32,
        sync: bool,
        owner: Option<(u32, u32)>,
    ) -> io::Result<OsString> {
        let tmp = Self::temp_name(prefix);
        let mut f = self.create_new(&tmp, mode)?;
        let written = f
            .write_all(bytes)
            .and_then(|_| if sync { f.sync_all() } else { Ok(()) })
            // Given away through the handle, before the file has a name
            // anyone else reads.
            .and_then(|_| owner.map_or(Ok(()), |(u, g)| set_owner(&f, u, g)))
            // The umask may have taken bits the file needs (group write).
            .and_then(|_| rfs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(Into::into));
        if let Err(e) = written {
            let _ = self.unlink(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    /// Replaces `name` with `bytes` atomically (a temporary file renamed
    /// over it: a reader sees the old file or the new one, and a link at
    /// the name is replaced, never followed). `sync`: flushed to disk first.
    pub fn replace(
        &self,
        name: impl AsRef<OsStr>,
        bytes: &[u8],
        mode: u32,
        sync: bool,
    ) -> io::Result<()> {
        self.replace_owned(name, bytes, mode, sync, None)
    }

    /// [`Dir::replace`], the new file given to `owner` (uid, gid) before it
    /// takes the name: never a moment where the name is root's, and never a
    /// chown by name afterwards (which a link swapped in would redirect).
    pub fn replace_owned(
        &self,
        name: impl AsRef<OsStr>,
        bytes: &[u8],
        mode: u32,
        sync: bool,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        let name = plain_name(name.as_ref())?;
        let tmp = self.write_temp(".tmp-", bytes, mode, sync, owner)?;
        if let Err(e) = rfs::renameat(&self.fd, &tmp, &self.fd, name) {
            let _ = self.unlink(&tmp);
            return Err(e.into());
        }
        if sync {
            // Without this the rename itself may not survive a power cut.
            rfs::fsync(&self.fd)?;
        }
        Ok(())
    }

    /// Creates `name` holding `bytes`, whole or not at all, only if nothing
    /// is there: a temporary file hard-linked into place (the first of
    /// several writers wins). Ok(false): something was there already.
    pub fn create_whole(
        &self,
        name: impl AsRef<OsStr>,
        bytes: &[u8],
        mode: u32,
    ) -> io::Result<bool> {
        let name = plain_name(name.as_ref())?;
        let tmp = self.write_temp(".seed-", bytes, mode, false, None)?;
        let linked = rfs::linkat(&self.fd, &tmp, &self.fd, name, AtFlags::empty());
        let _ = self.unlink(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> io::Result<()> {
        let (from, to) = (plain_name(from.as_ref())?, plain_name(to.as_ref())?);
        rfs::renameat(&self.fd, from, &self.fd, to).map_err(Into::into)
    }

    /// Moves `name` into `dest` as `to` (both handles on one filesystem).
    pub fn rename_into(
        &self,
        from: impl AsRef<OsStr>,
        dest: &Dir,
        to: impl AsRef<OsStr>,
    ) -> io::Result<()> {
        let (from, to) = (plain_name(from.as_ref())?, plain_name(to.as_ref())?);
        rfs::renameat(&self.fd, from, &dest.fd, to).map_err(Into::into)
    }

    /// Removes the name `name` (a link itself, never what it points to).
    pub fn unlink(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = plain_name(name.as_ref())?;
        rfs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(Into::into)
    }

    /// Removes `name` and everything below it, through handles (a link
    /// inside is removed as a name, never followed). Missing is fine.
    pub fn remove_tree(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = plain_name(name.as_ref())?;
        match self.stat(name)? {
            None => Ok(()),
            Some(m) if m.kind != Kind::Dir => self.unlink(name),
            Some(_) => {
                let sub = self.dir(name)?;
                for e in sub.entries()? {
                    sub.remove_tree(&e.name)?;
                }
                match rfs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Every name in the directory but `.` and `..`.
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut d = rfs::Dir::read_from(&self.fd)?;
        let mut out = Vec::new();
        while let Some(e) = d.read() {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let kind = match e.file_type() {
                FileType::Unknown => None,
                t => Some(Kind::of(t.as_raw_mode())),
            };
            out.push(Entry {
                name: OsStr::from_bytes(name).to_os_string(),
                kind,
            });
        }
        Ok(out)
    }

    /// Moves whatever sits at `name` aside, to `name.quarantined-<time>-<n>`
    /// in the same directory (a rename moves a link itself, never its
    /// target), so the swarm can put the real thing there. Returns the new
    /// name.
    pub fn quarantine(&self, name: impl AsRef<OsStr>) -> io::Result<OsString> {
        let name = plain_name(name.as_ref())?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let to = OsString::from(format!(
            "{}.quarantined-{secs}-{:08x}",
            name.to_string_lossy(),
            rand::random::<u32>()
        ));
        self.rename(name, &to)?;
        Ok(to)
    }
}

/// What [`Dir::ensure_dir`] found and did.
#[derive(Debug)]
pub struct Ensured {
    pub dir: Dir,
    pub created: bool,
    /// What sat at the name instead of a directory, and where it went.
    pub moved_aside: Option<(Kind, OsString)>,
}

/// What [`seed_tree`] made and moved aside (paths for messages).
#[derive(Debug, Default)]
pub struct Seeded {
    pub created: Vec<PathBuf>,
    /// How many of `created` are files.
    pub files: u64,
    pub moved_aside: Vec<(PathBuf, Kind, OsString)>,
}

impl Dir {
    /// The directory `name`, made (with exactly `mode`) if missing; a link,
    /// file or FIFO at the name is moved aside first ([`Dir::quarantine`]),
    /// never followed or written through.
    pub fn ensure_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<Ensured> {
        let name = plain_name(name.as_ref())?;
        let mut moved_aside = None;
        for _ in 0..3 {
            match self.mkdir(name, mode) {
                Ok(created) => match self.dir(name) {
                    Ok(dir) => {
                        return Ok(Ensured {
                            dir,
                            created,
                            moved_aside,
                        });
                    }
                    // Swapped between the mkdir and the open: again.
                    Err(e) if is_planted(&e) => continue,
                    Err(e) => return Err(e),
                },
                Err(e) if is_planted(&e) => {
                    let kind = self.stat(name)?.map_or(Kind::File, |m| m.kind);
                    match self.quarantine(name) {
                        Ok(to) => moved_aside = Some((kind, to)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "cannot make it a directory: something keeps replacing it",
        ))
    }
}

impl Dir {
    /// `name` made holding `bytes()` unless a regular file is there already
    /// (kept: a Buddy may have edited it); anything else at the name (a
    /// link, a FIFO) is moved aside first. Whole or not at all, the first
    /// of several writers winning ([`Dir::create_whole`]); `bytes` is read
    /// only when the file is made.
    pub fn seed_file(
        &self,
        name: impl AsRef<OsStr>,
        bytes: impl FnOnce() -> io::Result<Vec<u8>>,
        mode: u32,
        out: &mut Seeded,
    ) -> io::Result<()> {
        let name = plain_name(name.as_ref())?;
        let shown = self.shown(name);
        match self.stat(name)? {
            Some(m) if m.kind == Kind::File => return Ok(()),
            Some(m) => match self.quarantine(name) {
                Ok(to) => out.moved_aside.push((shown.clone(), m.kind, to)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            },
            None => {}
        }
        if self.create_whole(name, &bytes()?, mode)? {
            out.created.push(shown);
            out.files += 1;
        }
        Ok(())
    }
}

/// Copies every file of `src` (a trusted tree: the image's) that `dest`
/// lacks, directories made with `dir_mode` and files with `file_mode`.
/// What exists is kept (a Buddy's edits always win over the image's
/// starter text); what is not a regular file at a name the seed has (a
/// link, a FIFO) is moved aside and the file made. Each file appears whole
/// or not at all, the first of several writers winning
/// ([`Dir::create_whole`]).
pub fn seed_tree(src: &Path, dest: &Dir, dir_mode: u32, file_mode: u32) -> io::Result<Seeded> {
    let mut out = Seeded::default();
    seed_into(src, dest, dir_mode, file_mode, &mut out)?;
    Ok(out)
}

fn seed_into(
    src: &Path,
    dest: &Dir,
    dir_mode: u32,
    file_mode: u32,
    out: &mut Seeded,
) -> io::Result<()> {
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let name = e.file_name();
        let from = e.path();
        let shown = dest.shown(&name);
        if e.file_type()?.is_dir() {
            let sub = dest.ensure_dir(&name, dir_mode)?;
            if let Some((kind, to)) = sub.moved_aside {
                out.moved_aside.push((shown.clone(), kind, to));
            }
            if sub.created {
                out.created.push(shown);
            }
            seed_into(&from, &sub.dir, dir_mode, file_mode, out)?;
            continue;
        }
        dest.seed_file(&name, || std::fs::read(&from), file_mode, out)?;
    }
    Ok(())
}

/// What [`copy_out`] took and left.
#[derive(Debug, Default)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
    /// Names left behind (links, FIFOs, too big, too deep), for the report.
    pub left: Vec<(PathBuf, String)>,
}

/// Copies the tree under `src` (hostile: the share) into `dest`, a new
/// private directory of ours, so that root's path-based code (the render,
/// the Machine's files) reads only what was checked: directories and
/// regular files alone, each file at most `max_file` bytes, `max_total` in
/// all, 8 levels at most. Links and the rest are left behind, named.
pub fn copy_out(src: &Dir, dest: &Path, max_file: u64, max_total: u64) -> io::Result<Copied> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dest)?;
    let mut out = Copied::default();
    copy_into(src, dest, 0, max_file, max_total, &mut out)?;
    Ok(out)
}

fn copy_into(
    src: &Dir,
    dest: &Path,
    depth: usize,
    max_file: u64,
    max_total: u64,
    out: &mut Copied,
) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    for e in src.entries()? {
        let shown = src.shown(&e.name);
        let Some(m) = src.stat(&e.name)? else {
            continue;
        };
        match m.kind {
            Kind::Dir if depth < 8 => {
                let to = dest.join(&e.name);
                std::fs::DirBuilder::new().mode(0o700).create(&to)?;
                copy_into(&src.dir(&e.name)?, &to, depth + 1, max_file, max_total, out)?;
            }
            Kind::File => {
                let bytes = match src.read(&e.name, max_file) {
                    Ok(b) => b,
                    Err(err) if is_planted(&err) => {
                        out.left.push((shown, err.to_string()));
                        continue;
                    }
                    Err(err) => return Err(err),
                };
                out.bytes += bytes.len() as u64;
                if out.bytes > max_total {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: more than {max_total} bytes in all",
                            src.path().display()
                        ),
                    ));
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(dest.join(&e.name))?;
                f.write_all(&bytes)?;
                out.files += 1;
            }
            other => out.left.push((
                shown,
                if other == Kind::Dir {
                    "deeper than 8 levels".into()
                } else {
                    format!("{}: left behind", other.describe())
                },
            )),
        }
    }
    Ok(())
}

/// `fd` as a File if it is a regular file; anything else is refused.
fn regular(fd: OwnedFd) -> io::Result<File> {
    let kind = Kind::of(rfs::fstat(&fd)?.st_mode);
    if kind != Kind::File {
        return Err(not_regular(kind));
    }
    Ok(File::from(fd))
}

/// A file we may just have created: the mode exactly, not narrowed by the
/// umask (only if it is ours; another writer's file keeps its mode).
fn own_mode(f: File, mode: u32) -> io::Result<File> {
    let st = rfs::fstat(&f)?;
    if st.st_uid == nix::unistd::geteuid().as_raw() && st.st_mode & 0o7777 != mode {
        rfs::fchmod(&f, Mode::from_raw_mode(mode))?;
    }
    Ok(f)
}

/// Reads `f` to its end, at most `max` bytes.
pub fn read_bounded(f: File, max: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(out)
}

/// The facts of an open file or directory.
pub fn meta_of(f: impl AsFd) -> io::Result<Meta> {
    Ok(Meta::from(&rfs::fstat(f)?))
}

/// Gives the open file or directory `f` the group `gid` (owner unchanged)
/// and the mode `mode`, through the descriptor: the inode root changes is
/// the one it opened and checked, whatever has been renamed since.
pub fn set_group_mode(f: impl AsFd, gid: Option<u32>, mode: Option<u32>) -> io::Result<()> {
    let f = f.as_fd();
    if let Some(g) = gid {
        rfs::fchown(f, None, Some(rfs::Gid::from_raw(g)))?;
    }
    if let Some(m) = mode {
        // After the chown, which clears setuid/setgid bits of files.
        rfs::fchmod(f, Mode::from_raw_mode(m))?;
    }
    Ok(())
}

/// Gives `f` to `uid`:`gid`, through the descriptor.
pub fn set_owner(f: impl AsFd, uid: u32, gid: u32) -> io::Result<()> {
    rfs::fchown(
        f,
        Some(rfs::Uid::from_raw(uid)),
        Some(rfs::Gid::from_raw(gid)),
    )
    .map_err(Into::into)
}

/// Takes an exclusive `flock` on `f`, waiting at most until `deadline`: a
/// lock a gateway holds (it can open the same file) must never hold root
/// for good. Polls: a blocking flock cannot be interrupted by a deadline.
pub fn lock_until(f: &File, deadline: Instant) -> io::Result<()> {
    let mut pause = Duration::from_millis(2);
    loop {
        match rfs::flock(f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "held by another process past the deadline",
            ));
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
