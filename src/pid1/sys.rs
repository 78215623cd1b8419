//! The kernel boundary of the PID-1 path. Every syscall the supervisor makes
//! to manage processes lives here (signals, clone/exec, waitpid, privilege
//! drop, the per-thread credentials of the access probes, the SpellBook mount,
//! giving back boot pages); swarm.rs holds the few for the share itself.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};

use crate::pid1::privileges::Credentials;

/// Signals that start a stop.
pub const STOP_SIGNALS: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];
/// Signals passed on to the gateway as they are. SIGUSR2 makes OpenClaw
/// restart in place (`commands.restart`). SIGHUP is not among them: it would
/// kill the gateway; the supervisor turns it into a reload.
pub const FORWARDED_SIGNALS: [Signal; 14] = [
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
    // Taken and dropped: forwarded, SIGUSR1 would open Node's inspector on
    // 127.0.0.1:9229 (code execution for anyone on the Machine); left to the
    // default action, it would kill a supervisor that is not PID 1.
    set.add(Signal::SIGUSR1);
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

/// Whether a stop signal waits in our queue, without taking it: the
/// signals are blocked and go to the signalfd, so `sigpending` sees them
/// until the loop reads them (a long boot step checks this to end early).
pub fn stop_waiting() -> bool {
    let mut set = std::mem::MaybeUninit::<nix::libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set it is given.
    if unsafe { nix::libc::sigpending(set.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: filled by the successful call above.
    let set = unsafe { set.assume_init() };
    STOP_SIGNALS
        .iter()
        // SAFETY: a valid set and signal number.
        .any(|s| unsafe { nix::libc::sigismember(&set, *s as i32) } == 1)
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

/// Waits until the signalfd (or one of `extra`: the spell socket's
/// listener and its wake-up) is readable or `timeout` passes. Whether any of
/// `extra` is readable.
pub fn wait_readable(
    fd: &SignalFd,
    extra: &[std::os::fd::BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> bool {
    let t = match timeout {
        None => PollTimeout::NONE,
        Some(d) => {
            // Round up so a deadline 0.4 ms away does not spin.
            let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    };
    let mut fds = vec![PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    fds.extend(extra.iter().map(|e| PollFd::new(*e, PollFlags::POLLIN)));
    // EINTR only means "look again"; the loop does.
    let _ = poll(&mut fds, t);
    fds.iter()
        .skip(1)
        .any(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
}

/// Who is on the other end of a Unix socket: (uid, pid) as the kernel
/// recorded them at connect (SO_PEERCRED), not as the caller claims. The
/// spell socket lets only its gateway's uid cast.
pub fn peer_credentials(conn: &std::os::unix::net::UnixStream) -> io::Result<(u32, i32)> {
    let c = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok((c.uid(), c.pid()))
}

/// Set by SIGTERM/SIGINT in a spell run (see [`catch_stop`]).
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: nix::libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A spell run (the supervisor's child, or a command line): SIGTERM and
/// SIGINT set a flag the spell checks between its calls instead of killing
/// it mid-cast, so it can take back what it made (the supervisor sends
/// SIGTERM when it stops, and waits for it until the stop timeout).
pub fn catch_stop() -> io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, sigaction};
    let act = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in STOP_SIGNALS {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(s, &act) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Whether a stop was asked for since [`catch_stop`].
pub fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

pub fn is_pid1() -> bool {
    nix::unistd::getpid().as_raw() == 1
}

/// Not PID 1 (Fly's own init is, or a test): become a child subreaper so
/// orphans of the gateway are re-parented to us and we reap them.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Sets our own `oom_score_adj` (inherited by every child, see
/// [`SpawnSpec::oom_score_adj`]). Lowering it needs CAP_SYS_RESOURCE:
/// Err when not root.
pub fn set_own_oom_score_adj(value: i32) -> io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", value.to_string())
}

/// Whether something listens on `port` on loopback: a TCP connect, refused
/// at once while the gateway does not listen yet, closed at once when it
/// does (the loop asks every 500 ms while the gateway boots; 100 ms at most
/// on a loopback that never answers).
pub fn port_answers(port: u16) -> bool {
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
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

/// Whether our child `pid` has ended, without collecting it: `waitid` with
/// WNOWAIT leaves the zombie for [`reap_all`], so a share mount can be
/// watched while it comes up without a second reaper taking the gateway's
/// (or anyone's) exit status from the loop.
pub fn has_ended(pid: Pid) -> bool {
    use nix::sys::wait::{Id, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) => return true,
            Err(Errno::EINTR) => continue,
            // Already collected (or not ours): it is not running either.
            Err(_) => return true,
        }
    }
}

/// Detaches whatever is mounted at `path` (MNT_DETACH: a FUSE mount whose
/// process died answers ENOTCONN to everything, and a new mount on top of it
/// fails; detaching lets the next mount take the path at once, while anyone
/// still inside the dead one keeps only their errors).
pub fn detach_mount(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => Ok(()), // EINVAL: nothing mounted there
        Err(e) => Err(e.into()),
    }
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
    /// The gateway: no_new_privs and umask 007. A plain `init` child keeps
    /// both as they were, as under tini (it may need sudo, or its own umask).
    pub harden: bool,
    /// Its stdout and stderr (a spell run's: the caller's connection).
    pub stdio: Option<std::os::fd::RawFd>,
    /// Its `oom_score_adj` (None: ours, inherited). The gateway's is the
    /// default, so that it, not the supervisor, is what the OOM killer takes.
    pub oom_score_adj: Option<i32>,
}

impl SpawnSpec {
    /// One of the supervisor's own helpers (a share mount, a spell, a
    /// backup cycle): root's like us, in `/`, not hardened like the gateway,
    /// its output ours.
    pub fn helper(program: PathBuf, args: Vec<String>, env: Vec<(String, String)>) -> SpawnSpec {
        SpawnSpec {
            program,
            args,
            env,
            cwd: PathBuf::from("/"),
            credentials: None,
            mask_dir: None,
            harden: false,
            stdio: None,
            oom_score_adj: None,
        }
    }
}

/// Starts the child in its own session and process group, with the original
/// signal mask, the given groups, gid and uid, and (for the gateway)
/// no_new_privs and umask 007.
///
/// The child is made with `clone(CLONE_VM | CLONE_VFORK)`, as posix_spawn
/// does: it borrows our memory until its execve, so nothing is copied and we
/// take no copy-on-write faults afterwards (a fork of the supervisor cost a
/// third of a plain init's start). We are suspended until it has exec'd or
/// failed. In between it runs on its own small stack and may only make
/// syscalls: everything it needs (paths, argv, envp, groups) is built here
/// first, it allocates nothing, and the credential changes are the raw
/// syscalls (glibc's setuid() would try to signal our threads from it). A
/// failure is left for us in `failed` and the child exits 127; that child is
/// collected here, on the reaper's own thread, before returning the error.
pub fn spawn(spec: &SpawnSpec, original_mask: &SigSet) -> io::Result<Pid> {
    use nix::libc::{self, c_char};
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicI32, Ordering};

    let env_path = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let candidates = exec_candidates(&spec.program, env_path)?;
    let cstr = |s: &[u8]| {
        CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
    };
    let mut argv = vec![cstr(spec.program.as_os_str().as_bytes())?];
    for a in &spec.args {
        argv.push(cstr(a.as_bytes())?);
    }
    let envp = spec
        .env
        .iter()
        .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
        .collect::<io::Result<Vec<_>>>()?;
    let argv_ptrs: Vec<*const c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const c_char> = envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let cwd = path_cstring(&spec.cwd)?;
    let mask_dir: Option<CString> = spec.mask_dir.as_deref().map(path_cstring).transpose()?;
    let ids = spec.credentials.as_ref().map(|c| {
        (
            c.groups
                .iter()
                .map(|g| g.as_raw())
                .collect::<Vec<libc::gid_t>>(),
            c.gid.as_raw(),
            c.uid.as_raw(),
        )
    });
    let harden = spec.harden;
    let stdio = spec.stdio;
    // Formatted before the clone: the child allocates nothing.
    let oom_adj: Option<Vec<u8>> = spec.oom_score_adj.map(|v| v.to_string().into_bytes());
    let mask = *original_mask;
    let failed = AtomicI32::new(0);

    let child = || -> isize {
        let step = || -> Result<(), Errno> {
            // The Rust runtime ignores SIGPIPE; the child must not inherit that.
            // SAFETY: setting a default disposition; no handler involved.
            unsafe {
                nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl)
            }?;
            // Since Rust 1.66 a child inherits our blocked mask; the gateway
            // must see SIGTERM, so give it back what we were started with.
            pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&mask), None)?;
            // Own session and group: signals reach the whole tree, and a
            // terminal's Ctrl-C reaches only us (we forward it).
            nix::unistd::setsid()?;
            if let Some(v) = &oom_adj {
                // Before the credentials change (the file is root's once we
                // are not). Best effort: a supervisor that is not root and was
                // started with a higher value cannot lower it, and that must
                // not keep the gateway from starting.
                let _ = set_oom_score_adj_raw(v);
            }
            if let Some(dir) = &mask_dir {
                mask_in_own_namespace(dir)?;
            }
            if let Some((groups, gid, uid)) = &ids {
                drop_own_credentials(groups, *gid, *uid)?;
            }
            if harden {
                nix::sys::prctl::set_no_new_privs()?;
                // The gateway never outlives its supervisor: a supervisor
                // killed outright (SIGKILL, OOM) and started again must not
                // find a second gateway polling the same bot on the same
                // state. Set after the credential change, which clears it.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // Files the gateway creates in MyBuddyBook (setgid dirs) stay
                // writable by every Buddy's gateway, and readable by nobody else.
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
            }
            nix::unistd::chdir(cwd.as_c_str())?;
            if let Some(fd) = stdio {
                // A spell run writes its progress straight to whoever asked
                // (the descriptor is ours until the exec: CLOEXEC drops it,
                // the two copies stay).
                // SAFETY: plain dup2 of descriptors we own onto 1 and 2.
                if unsafe { libc::dup2(fd, 1) } < 0 || unsafe { libc::dup2(fd, 2) } < 0 {
                    return Err(Errno::last());
                }
            }
            // execvp's search, done here as the gateway's user: a PATH entry
            // it cannot reach is skipped, not fatal.
            let mut denied = false;
            for program in &candidates {
                // SAFETY: NUL-terminated arrays of pointers into CStrings that
                // outlive the call (the parent is suspended until it returns).
                unsafe { libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
                match Errno::last() {
                    Errno::EACCES => denied = true,
                    Errno::ENOENT | Errno::ENOTDIR | Errno::ESTALE | Errno::ENODEV => {}
                    e => return Err(e),
                }
            }
            Err(if denied { Errno::EACCES } else { Errno::ENOENT })
        };
        let e = step().err().unwrap_or(Errno::UnknownErrno);
        failed.store(e as i32, Ordering::Relaxed);
        // SAFETY: leave without running anything of ours (atexit, buffers).
        unsafe { libc::_exit(127) }
    };
    let mut stack = ChildStack::new()?;
    // SAFETY: CLONE_VFORK suspends us until the child has exec'd or exited, so
    // nothing else touches the memory it borrows; it only makes syscalls.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(child),
            stack.as_mut_slice(),
            nix::sched::CloneFlags::CLONE_VM | nix::sched::CloneFlags::CLONE_VFORK,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(io::Error::from)?;
    drop(stack);
    match failed.load(Ordering::Relaxed) {
        0 => Ok(pid),
        e => {
            // Our own child that never became the gateway: collect it now
            // so it does not reach the loop as a stray exit.
            let _ = waitpid(pid, None);
            let err = io::Error::from_raw_os_error(e);
            Err(if has_slash(&spec.program) {
                err
            } else {
                let path = env_path.unwrap_or(DEFAULT_PATH);
                io::Error::new(err.kind(), format!("{err} (searched PATH={path})"))
            })
        }
    }
}

/// The spawned child's stack until its execve: a fresh anonymous mapping
/// (only the few pages it touches are ever backed, none needs zeroing by us)
/// with its lowest page inaccessible, so an overflow faults instead of
/// writing into our heap.
struct ChildStack {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

impl ChildStack {
    const LEN: usize = 128 * 1024;
    const GUARD: usize = 4096;

    fn new() -> io::Result<ChildStack> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, mprotect};
        let len = std::num::NonZeroUsize::new(Self::LEN).expect("non-zero");
        // SAFETY: a new private mapping that nothing else refers to.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK | MapFlags::MAP_NORESERVE,
            )
        }?;
        let stack = ChildStack {
            ptr,
            len: Self::LEN,
        };
        // SAFETY: the first page of our own mapping.
        unsafe { mprotect(ptr, Self::GUARD, ProtFlags::PROT_NONE) }?;
        Ok(stack)
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the usable part of the mapping above the guard page, valid
        // and exclusively ours for as long as self lives.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.as_ptr().cast::<u8>().add(Self::GUARD),
                self.len - Self::GUARD,
            )
        }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the child no longer runs on it.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, self.len) };
    }
}

/// The paths execvp would try for `program`, in order: itself when it holds
/// a slash, otherwise each entry of the child's PATH (empty means the
/// current directory). The child tries them as its own user.
fn exec_candidates(program: &Path, path: Option<&str>) -> io::Result<Vec<CString>> {
    if has_slash(program) {
        return Ok(vec![path_cstring(program)?]);
    }
    path.unwrap_or(DEFAULT_PATH)
        .split(':')
        .map(|d| path_cstring(&Path::new(if d.is_empty() { "." } else { d }).join(program)))
        .collect()
}

/// execvp's search path when the child's environment has no PATH.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn has_slash(program: &Path) -> bool {
    program.as_os_str().as_encoded_bytes().contains(&b'/')
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

/// A boot-time check running on its own thread (see [`probe_as`]).
pub struct Probe<T>(std::thread::JoinHandle<io::Result<T>>);

impl<T> Probe<T> {
    /// Waits for the probe's verdict.
    pub fn result(self) -> io::Result<T> {
        self.0
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the probe thread panicked")))
    }
}

fn probe_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<Probe<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 * 1024)
        .spawn(f)
        .map(Probe)
}

/// Runs `f` on a new thread whose own credentials are first dropped to
/// `creds` (groups, gid, uid, and with them every capability), so what `f`
/// tries is judged by the kernel exactly as for the gateway. Linux keeps
/// credentials per thread; glibc's setuid() and friends broadcast the change
/// to every thread of the process, so the raw syscalls are used here: only
/// this thread changes, and it ends with `f`. A thread instead of a forked
/// child keeps this off the boot's critical path (a fork copies the page
/// tables and needs a waitpid outside the one reaper).
pub fn probe_as<T: Send + 'static>(
    creds: &Credentials,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<Probe<T>> {
    let groups: Vec<nix::libc::gid_t> = creds.groups.iter().map(|g| g.as_raw()).collect();
    let (uid, gid) = (creds.uid.as_raw(), creds.gid.as_raw());
    probe_thread("access-probe", move || {
        drop_own_credentials(&groups, gid, uid)
            .map_err(|e| io::Error::other(format!("the probe could not drop privileges: {e}")))?;
        Ok(f())
    })
}

/// Sets the calling task's groups, gid and uid (all three ids of each), and
/// with the uid loses every capability. The raw syscalls change this task
/// only: glibc's wrappers would signal every other thread to follow (and from
/// a vfork child, the parent's). Groups and gid first, while still root.
/// Allocates nothing: the spawned child calls it before its exec.
fn drop_own_credentials(
    groups: &[nix::libc::gid_t],
    gid: nix::libc::gid_t,
    uid: nix::libc::uid_t,
) -> Result<(), Errno> {
    use nix::libc::{SYS_setgroups, SYS_setresgid, SYS_setresuid, syscall};
    // SAFETY: plain syscalls on this task's own credentials; the pointer and
    // length describe `groups`, which outlives the call.
    let ok = unsafe {
        syscall(SYS_setgroups, groups.len(), groups.as_ptr()) == 0
            && syscall(SYS_setresgid, gid, gid, gid) == 0
            && syscall(SYS_setresuid, uid, uid, uid) == 0
    };
    if ok { Ok(()) } else { Err(Errno::last()) }
}

/// Writes the calling process's `oom_score_adj` with raw syscalls.
/// Allocates nothing: the spawned child calls it before its exec.
fn set_oom_score_adj_raw(value: &[u8]) -> Result<(), Errno> {
    use nix::libc::{O_CLOEXEC, O_WRONLY, close, open, write};
    // SAFETY: a NUL-terminated literal path; `value` outlives the write;
    // the descriptor is ours and closed here.
    unsafe {
        let fd = open(c"/proc/self/oom_score_adj".as_ptr(), O_WRONLY | O_CLOEXEC);
        if fd < 0 {
            return Err(Errno::last());
        }
        let n = write(fd, value.as_ptr().cast(), value.len());
        let e = Errno::last();
        close(fd);
        if n < 0 { Err(e) } else { Ok(()) }
    }
}

/// Gives the calling task its own private mount namespace and hides `dir`
/// behind an empty, read-only tmpfs there (the SpellBook, for a Buddy-role
/// gateway). Private first, so the mask never propagates back to the host.
/// Allocates nothing: the spawned child calls it before its exec.
fn mask_in_own_namespace(dir: &std::ffi::CStr) -> Result<(), Errno> {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&std::ffi::CStr>,
        c"/",
        None::<&std::ffi::CStr>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&std::ffi::CStr>,
    )?;
    mount(
        Some(c"tmpfs"),
        dir,
        Some(c"tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(c"mode=000,size=4k"),
    )
}

/// Tries, on a throw-away thread, exactly what a Buddy-role gateway's spawn
/// will do: [`mask_in_own_namespace`]. It succeeds with CAP_SYS_ADMIN (a Fly
/// Machine), not under plain Docker. The mount namespace is the thread's own
/// (unshare gives a thread its own fs and namespace) and vanishes with it.
pub fn mask_probe(dir: &Path) -> io::Result<Probe<bool>> {
    let target = path_cstring(dir)?;
    probe_thread("mask-probe", move || {
        Ok(mask_in_own_namespace(&target).is_ok())
    })
}

/// Gives back the resident pages of our own program once boot is over.
/// Boot runs a lot of code once (argument parsing, rendering, the swarm
/// checks) that the supervision loop never touches again; those clean,
/// file-backed pages would otherwise count in our RSS for the Buddy's whole
/// life. Released: the executable (r-xp) mapping, and the read-only data
/// mappings no page of which was ever written (smaps says `Anonymous: 0`;
/// one that relocations wrote into is left alone, its written pages would
/// be lost): the kernel re-reads a page from the page cache if it is needed
/// again. Each is then marked MADV_RANDOM, so that a page the loop touches
/// later is read alone, not with the 15 around it the kernel would map by
/// default ("fault-around"), which put most of the text back. Returns the
/// bytes released.
pub fn release_boot_text() -> usize {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    // (start, end, perms, path) of each mapping, with its Anonymous kB.
    let mut maps: Vec<(usize, usize, String, bool, u64)> = Vec::new();
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let Some((a, b)) = f.first().and_then(|r| r.split_once('-'))
            && f.len() >= 5
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let ours = f.len() >= 6 && Path::new(f[5]) == exe;
            maps.push((start, end, f[1].to_string(), ours, 0));
        } else if let (Some(&"Anonymous:"), Some(kb), Some(last)) =
            (f.first(), f.get(1), maps.last_mut())
        {
            last.4 = kb.parse().unwrap_or(u64::MAX);
        }
    }
    let mut released = 0;
    for (start, end, perms, ours, anon_kb) in maps {
        let clean = perms == "r-xp" || (perms == "r--p" && anon_kb == 0);
        if !ours || !clean {
            continue;
        }
        let Some(ptr) = std::ptr::NonNull::new(start as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: a private, read-only file mapping of our own binary with
        // no written page: dropping its pages loses nothing, they fault
        // back in from the page cache.
        let dropped = unsafe {
            nix::sys::mman::madvise(ptr, end - start, nix::sys::mman::MmapAdvise::MADV_DONTNEED)
        };
        if dropped.is_ok() {
            released += end - start;
            // SAFETY: advice only; the mapping is unchanged.
            let _ = unsafe {
                nix::sys::mman::madvise(ptr, end - start, nix::sys::mman::MmapAdvise::MADV_RANDOM)
            };
        }
    }
    released
}
