//! The spell socket: how a Magician's agent casts a spell without ever
//! holding the Fly org token. The Magician's supervisor (root) keeps
//! `FLY_API_TOKEN` to itself and listens on a Unix socket that only its
//! gateway's uid may use (checked with SO_PEERCRED, the kernel's word, not
//! the caller's). `supervisor spawn`/`upgrade` run by the agent inside the
//! Machine, finding no token, send their request there; the supervisor runs
//! the spell as its own child (collected by the one reaper like every
//! other), with the caller's connection as the child's stdout and stderr so
//! the progress streams back, then writes the exit code as the last line.
//!
//! The request names the spell and its few choices, never a command line:
//! the supervisor builds the spell's arguments itself (the caster is always
//! this Magician, the share always its own). The spell file (bot token,
//! phone) travels in the request and is kept in a root-only file for the
//! run, removed after.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use nix::sys::signal::SigSet;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::pid1::sys::{self, Exit, SpawnSpec};

/// Where the Magician's supervisor listens unless told otherwise.
pub const DEFAULT_PATH: &str = "/run/mybuddy/spell.sock";

/// The last line of every answer: the spell's exit code.
pub const EXIT_PREFIX: &str = "MYBUDDY-SPELL-EXIT ";

/// The largest request taken (a spell file is a few hundred bytes).
const MAX_REQUEST: u64 = 256 * 1024;

/// What the caller asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "spell", rename_all = "snake_case")]
pub enum Request {
    Spawn {
        /// The spell file's content.
        spell_file: String,
        deploy: bool,
        dry_run: bool,
    },
    Upgrade {
        image: String,
        #[serde(default)]
        canary: Option<String>,
        #[serde(default)]
        ids: Vec<String>,
        dry_run: bool,
    },
    /// `supervisor status` with this supervisor's token: the Machines API's
    /// view for a gateway that may not hold the token.
    Status {
        #[serde(default)]
        json: bool,
    },
}

/// How long a caller has to send its whole request: a caller that trickles
/// bytes (one every second) is cut off here, not at each read.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections open at once (being read or casting); more are refused.
pub const MAX_OPEN: usize = 4;

/// A request read whole by its connection's thread, for the loop to start.
struct Ready {
    conn: UnixStream,
    req: Request,
    caller_pid: i32,
}

/// Who casts the spells the socket starts, and with what.
#[derive(Debug, Clone)]
pub struct Caster {
    /// This Magician's id.
    pub id: String,
    pub swarm: PathBuf,
    /// The config template a new Buddy is made with: this Machine's own
    /// (the one its supervisor renders with), never the share's.
    pub template: PathBuf,
}

/// The Magician's listening side, owned by its boot (see `pid1::supervise`'s
/// `Hooks::listeners`/`accept`). The loop only accepts (non-blocking),
/// checks the caller's uid (SO_PEERCRED, before a byte is read) and starts
/// spells; each request is read on a thread of its own within
/// [`REQUEST_DEADLINE`], so no caller can hold the loop that reaps and
/// handles signals.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// The only uid allowed to ask: this Machine's gateway.
    gateway_uid: u32,
    caster: Caster,
    /// Root-only files holding the spell files of running casts.
    spool: PathBuf,
    /// Root-only journals of casts (on the Magician's volume), if any.
    journals: Option<PathBuf>,
    mask: SigSet,
    runs: HashMap<Pid, Run>,
    /// Connections accepted and not yet casting or refused.
    reading: Arc<AtomicUsize>,
    /// Refusals being written (their own cap: they never take a caller's
    /// place).
    refusing: Arc<AtomicUsize>,
    ready_tx: Sender<Ready>,
    ready_rx: Receiver<Ready>,
    /// A reading thread writes a byte here when a request is ready.
    wake_rx: UnixStream,
    wake_tx: UnixStream,
    /// The supervisor is stopping: nothing new is taken.
    stopping: bool,
}

struct Run {
    /// The caller's connection (None: the boot's own rollback).
    conn: Option<UnixStream>,
    spell_file: Option<PathBuf>,
    /// SpawnBuddy, UpgradeBuddy, rollback (the metrics' label).
    spell: &'static str,
}

impl Server {
    /// Binds the socket: its directory root's and `group`'s (search only),
    /// the socket itself read/write for `group` (the Magicians' gateways),
    /// nothing for others; SO_PEERCRED then narrows it to one uid.
    /// `journals`: where a cast keeps what it has made, so a cast cut short
    /// is taken back at the next boot.
    pub fn bind(
        path: &Path,
        gateway_uid: u32,
        group: u32,
        caster: Caster,
        journals: Option<PathBuf>,
        mask: SigSet,
    ) -> std::io::Result<Server> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)?;
        let spool = dir.join("spells");
        std::fs::create_dir_all(&spool)?;
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700))?;
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        sys::chown(
            path,
            nix::unistd::Uid::from_raw(0),
            nix::unistd::Gid::from_raw(group),
        )?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let (ready_tx, ready_rx) = mpsc::channel();
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            gateway_uid,
            caster,
            spool,
            journals,
            mask,
            runs: HashMap::new(),
            reading: Arc::new(AtomicUsize::new(0)),
            refusing: Arc::new(AtomicUsize::new(0)),
            ready_tx,
            ready_rx,
            wake_rx,
            wake_tx,
            stopping: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the loop waits on: new connections, and requests read whole.
    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.listener.as_fd(), self.wake_rx.as_fd()]
    }

    fn open(&self) -> usize {
        self.reading.load(Ordering::SeqCst) + self.runs.len()
    }

    /// Starts the spells whose requests are read, then takes every waiting
    /// connection. Never blocks: the loop calls it.
    pub fn accept(&mut self) {
        let mut b = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut b), Ok(n) if n > 0) {}
        while let Ok(r) = self.ready_rx.try_recv() {
            self.reading.fetch_sub(1, Ordering::SeqCst);
            let refused = if self.stopping {
                Some("the supervisor is stopping".to_string())
            } else {
                self.start(&r).err()
            };
            if let Some(why) = refused {
                warn!("spell socket: refused: {why}");
                let conn = r.conn;
                let _ = std::thread::Builder::new()
                    .name("spell-refusal".into())
                    .stack_size(128 * 1024)
                    .spawn(move || refuse(&conn, &why));
            }
        }
        while let Ok((conn, _)) = self.listener.accept() {
            // The kernel's word on who connected, before reading anything.
            let refused = match sys::peer_credentials(&conn) {
                Err(e) => Some(format!("cannot read the caller's credentials: {e}")),
                Ok((uid, _)) if uid != self.gateway_uid => Some(format!(
                    "uid {uid} may not cast spells here; only this Magician's gateway (uid {}) may",
                    self.gateway_uid
                )),
                Ok(_) if self.stopping => Some("the supervisor is stopping".into()),
                Ok(_) if self.open() >= MAX_OPEN => Some(format!(
                    "{MAX_OPEN} spell connections are open already; try again when one has ended"
                )),
                Ok(_) => None,
            };
            if let Some(why) = refused {
                warn!("spell socket: refused: {why}");
                if self.refusing.load(Ordering::SeqCst) >= MAX_OPEN {
                    // Too many already: no thread for this one; the answer
                    // only if it fits at once, then gone.
                    use nix::sys::socket::{MsgFlags, recv, send};
                    let line = format!("refused: {why}\n{EXIT_PREFIX}77\n");
                    let fd = conn.as_raw_fd();
                    let _ = send(
                        fd,
                        line.as_bytes(),
                        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                    );
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                    // What is there already is read away (closing on
                    // unread data would reset the connection and lose the
                    // answer); nothing is waited for.
                    let mut sink = [0u8; 4096];
                    while matches!(recv(fd, &mut sink, MsgFlags::MSG_DONTWAIT), Ok(n) if n > 0) {}
                    continue;
                }
                // The answer on a thread of its own, which then discards
                // what the caller sent (bounded): closing on unread data
                // would reset the connection and lose the answer.
                self.refusing.fetch_add(1, Ordering::SeqCst);
                let refusing = self.refusing.clone();
                let spawned = std::thread::Builder::new()
                    .name("spell-refusal".into())
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        refuse(&conn, &why);
                        refusing.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    self.refusing.fetch_sub(1, Ordering::SeqCst);
                }
                continue;
            }
            self.reading.fetch_add(1, Ordering::SeqCst);
            let (tx, wake, reading) = (
                self.ready_tx.clone(),
                self.wake_tx.try_clone(),
                self.reading.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name("spell-request".into())
                .stack_size(256 * 1024)
                .spawn(move || read_and_hand_over(conn, tx, wake, reading));
            if spawned.is_err() {
                self.reading.fetch_sub(1, Ordering::SeqCst);
                warn!("spell socket: cannot start a reader; connection dropped");
            }
        }
    }

    /// Starts the spell `r` asks for, as our own child.
    fn start(&mut self, r: &Ready) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let (spell_file, journal, what) = match &r.req {
            Request::Spawn { spell_file, .. } => {
                let f = self
                    .spool
                    .join(format!("{:016x}.yaml", rand::random::<u64>()));
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&f)
                    .and_then(|mut h| h.write_all(spell_file.as_bytes()))
                    .map_err(|e| format!("{}: {e}", f.display()))?;
                let j = self
                    .journals
                    .as_ref()
                    .map(|j| j.join(format!("cast-{:016x}.json", rand::random::<u64>())));
                (Some(f), j, "SpawnBuddy")
            }
            Request::Upgrade { .. } => (None, None, "UpgradeBuddy"),
            Request::Status { .. } => (None, None, "status"),
        };
        let args = spell_args(
            &r.req,
            &self.caster,
            spell_file.as_deref(),
            journal.as_deref(),
        );
        let conn = r.conn.try_clone().map_err(|e| e.to_string())?;
        // The spell writes its progress to whoever asked, as it comes.
        let _ = conn.set_nonblocking(false);
        // Ours: the token, the shared keys and the share's settings go to
        // the spell run, which is root's like us.
        let spec = SpawnSpec {
            stdio: Some(conn.as_raw_fd()),
            ..SpawnSpec::helper(exe, args, std::env::vars().collect())
        };
        let pid = sys::spawn(&spec, &self.mask).map_err(|e| {
            if let Some(f) = &spell_file {
                let _ = std::fs::remove_file(f);
            }
            format!("cannot start the spell: {e}")
        })?;
        info!(
            spell = what,
            pid = pid.as_raw(),
            caller_pid = r.caller_pid,
            "spell socket: casting for the gateway"
        );
        self.runs.insert(
            pid,
            Run {
                conn: Some(conn),
                spell_file,
                spell: what,
            },
        );
        Ok(())
    }

    /// At boot: casts an earlier run of this Machine cut short (killed past
    /// the stop timeout, a crash) left journals; `supervisor rollback` takes
    /// back what they made, as our child like any spell, its lines in our
    /// log.
    pub fn rollback_pending(&mut self) {
        let Some(dir) = &self.journals else { return };
        match crate::fleet::journal::pending(dir) {
            Ok(p) if p.is_empty() => return,
            Ok(p) => info!(
                journals = p.len(),
                "spells: casts cut short earlier; taking back what they made"
            ),
            Err(e) => {
                warn!(error = %e, "spells: cannot read the cast journals");
                return;
            }
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let args = vec![
            "rollback".into(),
            "--journals".into(),
            dir.display().to_string(),
        ];
        let spec = SpawnSpec::helper(exe, args, std::env::vars().collect());
        match sys::spawn(&spec, &self.mask) {
            Ok(pid) => {
                self.runs.insert(
                    pid,
                    Run {
                        conn: None,
                        spell_file: None,
                        spell: "rollback",
                    },
                );
            }
            Err(e) => warn!(error = %e, "spells: cannot start the rollback"),
        }
    }

    /// The reaper collected `pid`: if it was a spell run, its caller gets
    /// the exit code and the run's spell file is removed. Whether it was.
    pub fn ended(&mut self, pid: Pid, exit: Exit) -> bool {
        let Some(run) = self.runs.remove(&pid) else {
            return false;
        };
        info!(pid = pid.as_raw(), status = %exit, "spell socket: the spell ended");
        crate::health::metrics::metrics().spell(run.spell, exit.success());
        // Never blocking the loop on a caller that stopped reading.
        let line = format!("{EXIT_PREFIX}{}\n", exit.code());
        if let Some(conn) = &run.conn {
            let _ = nix::sys::socket::send(
                conn.as_raw_fd(),
                line.as_bytes(),
                nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            );
        }
        if let Some(f) = run.spell_file {
            let _ = std::fs::remove_file(f);
        }
        true
    }

    /// The supervisor is stopping: nothing new is taken, and every running
    /// spell is asked to stop (SIGTERM to its process group: a cast takes
    /// back what it made, an upgrade puts the Machine's config back) within
    /// what is left of the stop timeout.
    pub fn stop(&mut self) {
        self.stopping = true;
        for pid in self.runs.keys() {
            info!(
                pid = pid.as_raw(),
                "spell socket: asking the running spell to stop"
            );
            let _ = sys::signal_group(*pid, nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// Whether spells are still running (the stop waits for them).
    pub fn busy(&self) -> bool {
        !self.runs.is_empty()
    }

    /// The stop timeout is over: what still runs is killed (its journal is
    /// taken back at the next boot).
    pub fn kill(&mut self) {
        for pid in self.runs.keys() {
            warn!(
                pid = pid.as_raw(),
                "spell socket: the spell outlived the stop timeout; killed (its journal is rolled back at the next boot)"
            );
            let _ = sys::signal_group(*pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Writes a refusal and the exit code 77, then discards what the caller
/// still sends (at most [`MAX_REQUEST`] bytes, one second): closing on
/// unread data would reset the connection and lose the answer. Called on a
/// thread of its own, never the loop.
fn refuse(conn: &UnixStream, why: &str) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
    let mut c = conn;
    let _ = writeln!(c, "refused: {why}");
    let _ = writeln!(c, "{EXIT_PREFIX}77");
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let end = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut n = 0u64;
    while n < MAX_REQUEST {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = conn.set_read_timeout(Some(left));
        match (&*conn).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
}

/// An image as a request may name it: a registry path pinned by digest.
static PINNED_IMAGE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"^[a-z0-9][a-z0-9._/:-]{0,200}@sha256:[0-9a-f]{64}$").expect("re")
});

static SLUG: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"^[a-z][a-z0-9]{0,23}buddy-[a-z][a-z0-9]{0,23}$").expect("re")
});

impl Request {
    /// The fields the gateway chose, each against its shape: Buddy ids
    /// (`{Human}Buddy-{Name}`), an image pinned by digest, a spell file of
    /// bounded size. The supervisor builds the command line itself; this
    /// keeps what it puts there to what a spell can mean.
    pub fn check(&self) -> Result<(), String> {
        // An id (RoelBuddy-Emrys) or its slug (roelbuddy-emrys).
        let id_ok = |id: &str| {
            let id_form = id.split_once("Buddy-").is_some_and(|(h, n)| {
                crate::buddy::check_name_part(h).is_ok() && crate::buddy::check_name_part(n).is_ok()
            });
            id_form || SLUG.is_match(id)
        };
        match self {
            Request::Spawn { spell_file, .. } if spell_file.len() as u64 > MAX_REQUEST => {
                Err("the spell file is too large".into())
            }
            Request::Spawn { .. } => Ok(()),
            Request::Upgrade {
                image, canary, ids, ..
            } => {
                if !PINNED_IMAGE.is_match(image) {
                    return Err("image: not an image pinned by digest (…@sha256:<64 hex>)".into());
                }
                if let Some(bad) = canary.iter().chain(ids).find(|i| !id_ok(i)) {
                    return Err(format!(
                        "{:?} is not a Buddy id ({{Human}}Buddy-{{Name}})",
                        bad.chars().take(80).collect::<String>()
                    ));
                }
                if ids.len() > 64 {
                    return Err("more than 64 Buddies named".into());
                }
                Ok(())
            }
            Request::Status { .. } => Ok(()),
        }
    }
}

/// Parses one request (its first line) and checks it.
pub fn parse_request(bytes: &[u8]) -> Result<Request, String> {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let req: Request =
        serde_json::from_slice(line).map_err(|e| format!("not a spell request: {e}"))?;
    req.check()?;
    Ok(req)
}

/// The spell's command line, built by the supervisor from a checked
/// request: every value the gateway chose goes in as `--flag=value` or
/// after `--`, so none can be read as a flag of its own.
pub fn spell_args(
    req: &Request,
    caster: &Caster,
    spell_file: Option<&Path>,
    journal: Option<&Path>,
) -> Vec<String> {
    let mut a = Vec::new();
    match req {
        Request::Spawn {
            deploy, dry_run, ..
        } => {
            a.push("spawn".to_string());
            a.push(format!("--swarm={}", caster.swarm.display()));
            a.push(format!("--as={}", caster.id));
            a.push(format!("--template={}", caster.template.display()));
            if *deploy {
                a.push("--deploy".into());
            }
            if *dry_run {
                a.push("--dry-run".into());
            }
            if let Some(j) = journal {
                a.push(format!("--journal={}", j.display()));
            }
            a.push("--".into());
            a.push(
                spell_file
                    .map(|f| f.display().to_string())
                    .unwrap_or_default(),
            );
        }
        Request::Upgrade {
            image,
            canary,
            ids,
            dry_run,
        } => {
            a.push("upgrade".to_string());
            a.push(format!("--image={image}"));
            a.push(format!("--swarm={}", caster.swarm.display()));
            a.push(format!("--as={}", caster.id));
            if let Some(c) = canary {
                a.push(format!("--canary={c}"));
            }
            if *dry_run {
                a.push("--dry-run".into());
            }
            a.push("--".into());
            a.extend(ids.iter().cloned());
        }
        Request::Status { json } => {
            a.push("status".to_string());
            a.push(format!("--swarm={}", caster.swarm.display()));
            if *json {
                a.push("--json".into());
            }
        }
    }
    a
}

/// A connection's own thread: the whole request within the deadline (one
/// line of JSON, at most [`MAX_REQUEST`] bytes), then handed to the loop.
fn read_and_hand_over(
    conn: UnixStream,
    tx: Sender<Ready>,
    wake: std::io::Result<UnixStream>,
    reading: Arc<AtomicUsize>,
) {
    let caller_pid = sys::peer_credentials(&conn).map(|c| c.1).unwrap_or(0);
    match read_request(&conn, Instant::now() + REQUEST_DEADLINE) {
        Ok(req) => {
            if tx
                .send(Ready {
                    conn,
                    req,
                    caller_pid,
                })
                .is_ok()
            {
                if let Ok(mut w) = wake {
                    let _ = w.write(&[1]);
                }
                return;
            }
            reading.fetch_sub(1, Ordering::SeqCst);
        }
        Err(why) => {
            warn!("spell socket: refused: {why}");
            refuse(&conn, &why);
            reading.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One request line, whole, before `deadline`. Read whole before any
/// answer (closing on unread data would reset the connection and lose it).
fn read_request(conn: &UnixStream, deadline: Instant) -> Result<Request, String> {
    let _ = conn.set_nonblocking(false);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the request did not arrive whole within {} s",
                REQUEST_DEADLINE.as_secs()
            ));
        }
        let _ = conn.set_read_timeout(Some(left));
        let n = match (&*conn).read(&mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(format!("no request: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() as u64 > MAX_REQUEST {
            return Err(format!("the request is larger than {MAX_REQUEST} bytes"));
        }
        if n == 0 || buf.contains(&b'\n') {
            break;
        }
    }
    parse_request(&buf)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The socket's path: `MYBUDDY_SPELL_SOCKET`, else [`DEFAULT_PATH`].
pub fn path_from_env() -> PathBuf {
    std::env::var_os("MYBUDDY_SPELL_SOCKET")
        .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from)
}

/// The caller's side: sends `req`, copies the spell's progress to stderr as
/// it comes, and returns the spell's exit code.
pub fn cast(path: &Path, req: &Request) -> Result<i32, String> {
    cast_to(path, req, &mut std::io::stderr().lock())
}

/// [`cast`], the spell's output copied to `out` (`status`: its report is
/// the caller's stdout).
pub fn cast_to(path: &Path, req: &Request, out: &mut dyn Write) -> Result<i32, String> {
    let mut conn = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach the spell socket at {}: {e} (only a Magician's supervisor holding FLY_API_TOKEN listens there)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    // A refusal may come (and the server close) before the request is
    // written: the answer is read either way.
    let _ = conn.write_all(line.as_bytes());
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut code = None;
    for l in BufReader::new(conn).lines() {
        let l = l.map_err(|e| format!("{}: {e}", path.display()))?;
        match l.strip_prefix(EXIT_PREFIX) {
            Some(c) => code = c.trim().parse().ok(),
            None => {
                let _ = writeln!(out, "{l}");
            }
        }
    }
    code.ok_or_else(|| "the spell socket closed without an exit code".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn no_field_of_a_request_becomes_a_flag() {
        let ok = r#"{"spell":"upgrade","image":"registry.fly.io/mybuddytalk-base@sha256:2222222222222222222222222222222222222222222222222222222222222222","canary":"EstherBuddy-Kazeh","ids":["roelbuddy-galahad"],"dry_run":false}"#;
        let req = parse_request(ok.as_bytes()).unwrap();
        let mut argv = vec!["supervisor".to_string()];
        let caster = Caster {
            id: "RoelBuddy-Emrys".into(),
            swarm: "/mnt/swarm".into(),
            template: "/opt/mybuddy/_template/config.json".into(),
        };
        argv.extend(spell_args(&req, &caster, None, None));
        let Command::Upgrade(a) = Cli::try_parse_from(&argv).unwrap().command else {
            panic!("{argv:?}")
        };
        assert_eq!(a.canary.as_deref(), Some("EstherBuddy-Kazeh"));
        assert_eq!(a.ids, ["roelbuddy-galahad"]);
        for bad in [
            r#"{"spell":"upgrade","image":"--repo=/tmp/x","ids":[],"dry_run":false}"#,
            r#"{"spell":"upgrade","image":"x@sha256:00","ids":[],"dry_run":false}"#,
            r#"{"spell":"upgrade","image":"registry.fly.io/b@sha256:2222222222222222222222222222222222222222222222222222222222222222","canary":"--repo=/tmp","ids":[],"dry_run":false}"#,
            r#"{"spell":"upgrade","image":"registry.fly.io/b@sha256:2222222222222222222222222222222222222222222222222222222222222222","ids":["--dry-run"],"dry_run":false}"#,
        ] {
            assert!(parse_request(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
