//! The kernel boundary of the PID-1 path. Every syscall the supervisor makes
//! to manage processes lives here (signals, fork/exec, waitpid, privilege
//! drop, the SpellBook mount); swarm.rs holds the few for the share itself.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};

use crate::privileges::Credentials;

/// Signals that start a stop.
pub const STOP_SIGNALS: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];
/// Signals passed on to the gateway as they are. SIGHUP is not among them:
/// it would kill the gateway; the supervisor turns it into a reload.
pub const FORWARDED_SIGNALS: [Signal; 15] = [
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGQUIT,
    Signal::SIGWINCH,
    Signal::SIGALRM,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGURG,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
];

/// Every signal the supervisor reads from its signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in STOP_SIGNALS.iter().chain(FORWARDED_SIGNALS.iter()) {
        set.add(*s);
    }
    set.add(Signal::SIGHUP);
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGPWR);
    set.add(Signal::SIGSYS);
    set
}

/// Blocks the handled signals and opens a signalfd for them. Must run before
/// anything else: as PID 1 a signal without a handler and not blocked is
/// dropped by the kernel; blocked, it waits in the queue for us. Returns the
/// mask to restore in children.
pub fn take_signals() -> io::Result<(SignalFd, SigSet)> {
    let set = handled_signals();
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).map_err(io::Error::from)?;
    let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)?;
    Ok((fd, old))
}

/// Reads every queued signal (the fd is non-blocking).
pub fn read_signals(fd: &SignalFd) -> Vec<Signal> {
    let mut out = Vec::new();
    while let Ok(Some(info)) = fd.read_signal() {
        if let Ok(s) = Signal::try_from(info.ssi_signo as i32) {
            out.push(s);
        }
    }
    out
}

/// Waits until the signalfd is readable or `timeout` passes.
pub fn wait_readable(fd: &SignalFd, timeout: Option<Duration>) {
    let t = match timeout {
        None => PollTimeout::NONE,
        Some(d) => {
            // Round up so a deadline 0.4 ms away does not spin.
            let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    };
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    // EINTR only means "look again"; the loop does.
    let _ = poll(&mut fds, t);
}

pub fn is_pid1() -> bool {
    nix::unistd::getpid().as_raw() == 1
}

/// Not PID 1 (Fly's own init is, or a test): become a child subreaper so
/// orphans of the gateway are re-parented to us and we reap them.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Exit {
    /// The shell convention: the code, or 128 + signal number.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s as i32,
        }
    }
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "signal {}", s.as_str()),
        }
    }
}

/// The one reaper: collects every child that ended, our own and re-parented
/// orphans alike. Nothing else in the process calls waitpid on the
/// supervision path.
pub fn reap_all() -> Vec<(Pid, Exit)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid, Exit::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid, Exit::Signal(sig))),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    out
}

/// Sends `sig` to one process; ESRCH (already gone) is not an error.
pub fn signal_pid(pid: Pid, sig: Signal) -> io::Result<()> {
    match kill(pid, sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends `sig` to a whole process group (the gateway and everything it
/// started); ESRCH means the group is empty.
pub fn signal_group(pgid: Pid, sig: Signal) -> io::Result<()> {
    match killpg(pgid, sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether any process (zombies included) is still in the group.
pub fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// Whether a process exists (for stale lock detection).
pub fn pid_alive(pid: i32) -> bool {
    pid > 0 && !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// What the child is and who it runs as.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// None: keep the supervisor's identity (not root, or a dev run).
    pub credentials: Option<Credentials>,
    /// Hide this directory behind an empty read-only tmpfs in a private mount
    /// namespace (a Buddy-role gateway and the SpellBook).
    pub mask_dir: Option<PathBuf>,
}

/// Starts the child in its own session and process group, with the original
/// signal mask, the given groups, gid and uid, and no_new_privs. std's
/// Command reports an exec failure (ENOENT...) as an error of spawn and
/// collects that failed child itself before returning, which is safe here:
/// the reaper only runs from the supervision loop on this same thread.
pub fn spawn(spec: &SpawnSpec, original_mask: &SigSet) -> io::Result<Pid> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd);
    // Everything the child-side code needs is allocated here, before fork:
    // between fork and exec only async-signal-safe calls are allowed.
    let mask = *original_mask;
    let creds = spec.credentials.clone();
    let groups: Vec<Gid> = creds.as_ref().map(|c| c.groups.clone()).unwrap_or_default();
    let mask_dir: Option<CString> = match &spec.mask_dir {
        Some(p) => Some(path_cstring(p)?),
        None => None,
    };
    let tmpfs = c"tmpfs";
    let tmpfs_opts = c"mode=000,size=4k";
    unsafe {
        cmd.pre_exec(move || {
            // Since Rust 1.66 a child inherits our blocked mask; the gateway
            // must see SIGTERM, so give it back what we were started with.
            pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&mask), None)?;
            // Own session and group: signals reach the whole tree, and a
            // terminal's Ctrl-C reaches only us (we forward it).
            nix::unistd::setsid()?;
            if let Some(dir) = &mask_dir {
                use nix::mount::{MsFlags, mount};
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                // Private, so the mask never propagates back to the host.
                mount(
                    None::<&std::ffi::CStr>,
                    c"/",
                    None::<&std::ffi::CStr>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&std::ffi::CStr>,
                )?;
                mount(
                    Some(tmpfs),
                    dir.as_c_str(),
                    Some(tmpfs),
                    MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    Some(tmpfs_opts),
                )?;
            }
            if let Some(c) = &creds {
                // Order matters: groups, then gid, then uid (after setuid we
                // could no longer change the others).
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(c.gid)?;
                nix::unistd::setuid(c.uid)?;
            }
            nix::sys::prctl::set_no_new_privs()?;
            // Files the gateway creates in MyBuddyBook (setgid dirs) stay
            // writable by every Buddy's gateway, and readable by nobody else.
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(Pid::from_raw(child.id() as i32))
}

fn path_cstring(p: &Path) -> io::Result<CString> {
    CString::new(<Path as AsRef<OsStr>>::as_ref(p).as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Changes a path's owner (the state dir must belong to the gateway user).
pub fn chown(path: &Path, uid: Uid, gid: Gid) -> io::Result<()> {
    nix::unistd::chown(path, Some(uid), Some(gid)).map_err(io::Error::from)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Waits for one specific helper child. Only used during boot, before the
/// supervision loop (the one reaper) exists and while no other child runs.
pub fn wait_helper(pid: Pid) -> io::Result<Exit> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(Exit::Code(c)),
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(Exit::Signal(s)),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Starts `f` in a forked child that has dropped to `creds` (groups, gid,
/// uid); [`probe_result`] collects what it returned (0-127). Boot only: the
/// program is still single-threaded (so the child may allocate) and no
/// supervision loop runs yet, so waiting for these pids steals nobody's status.
pub fn probe_as(creds: &Credentials, f: impl FnOnce() -> i32) -> io::Result<Pid> {
    let groups = creds.groups.clone();
    let (uid, gid) = (creds.uid, creds.gid);
    // SAFETY: single-threaded at this point; the child only drops privileges,
    // runs `f` and leaves with _exit.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            let ok = nix::unistd::setgroups(&groups).is_ok()
                && nix::unistd::setgid(gid).is_ok()
                && nix::unistd::setuid(uid).is_ok();
            let code = if ok { f() & 0x7f } else { 0x80 };
            unsafe { nix::libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => Ok(child),
    }
}

/// Waits for a probe started by [`probe_as`].
pub fn probe_result(pid: Pid) -> io::Result<i32> {
    match wait_helper(pid)? {
        Exit::Code(0x80) => Err(io::Error::other("the probe could not drop privileges")),
        Exit::Code(c) => Ok(c),
        Exit::Signal(s) => Err(io::Error::other(format!(
            "the probe died by {}",
            s.as_str()
        ))),
    }
}

/// Starts a throw-away child that tries what a Buddy-role gateway's spawn
/// would do: a private mount namespace with a tmpfs over `dir`. It succeeds
/// with CAP_SYS_ADMIN (a Fly Machine), not under plain Docker. Collect with
/// [`mask_probe_result`].
pub fn mask_probe(dir: &Path) -> Option<Pid> {
    let target = path_cstring(dir).ok()?;
    // SAFETY: as in probe_as; the child makes three syscalls and _exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            use nix::mount::{MsFlags, mount};
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_ok()
                && mount(
                    None::<&std::ffi::CStr>,
                    c"/",
                    None::<&std::ffi::CStr>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&std::ffi::CStr>,
                )
                .is_ok()
                && mount(
                    Some(c"tmpfs"),
                    target.as_c_str(),
                    Some(c"tmpfs"),
                    MsFlags::MS_RDONLY,
                    Some(c"mode=000,size=4k"),
                )
                .is_ok();
            unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => Some(child),
        Err(_) => None,
    }
}

pub fn mask_probe_result(pid: Option<Pid>) -> bool {
    pid.is_some_and(|p| matches!(wait_helper(p), Ok(Exit::Code(0))))
}

/// Gives back the resident pages of our own program text once boot is over.
/// Boot runs a lot of code once (argument parsing, rendering, the swarm
/// checks) that the supervision loop never touches again; those clean,
/// file-backed pages would otherwise count in our RSS for the Buddy's whole
/// life. Only the executable (r-xp) mapping is released: it is never written,
/// so the kernel simply re-reads a page from the page cache if it is needed
/// again. Read-only data is left alone (relocations were written into parts of
/// it). Returns the bytes released.
pub fn release_boot_text() -> usize {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let mut released = 0;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "r-xp" || Path::new(f[5]) != exe {
            continue;
        }
        let Some((a, b)) = f[0].split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        else {
            continue;
        };
        let Some(ptr) = std::ptr::NonNull::new(start as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: a private, read-only, executable file mapping of our own
        // binary: dropping its pages loses nothing, they fault back in.
        if unsafe {
            nix::sys::mman::madvise(ptr, end - start, nix::sys::mman::MmapAdvise::MADV_DONTNEED)
        }
        .is_ok()
        {
            released += end - start;
        }
    }
    released
}
