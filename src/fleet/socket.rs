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
use std::time::Duration;

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
}

/// The Magician's listening side, owned by its boot (see `pid1::supervise`'s
/// `Hooks::listener`/`accept`).
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// The only uid allowed to ask: this Machine's gateway.
    gateway_uid: u32,
    /// Who casts: this Magician's id.
    caster: String,
    swarm: PathBuf,
    /// Root-only files holding the spell files of running casts.
    spool: PathBuf,
    mask: SigSet,
    runs: HashMap<Pid, Run>,
}

struct Run {
    conn: UnixStream,
    spell_file: Option<PathBuf>,
}

impl Server {
    /// Binds the socket: its directory root's and `group`'s (search only),
    /// the socket itself read/write for `group` (the Magicians' gateways),
    /// nothing for others; SO_PEERCRED then narrows it to one uid.
    pub fn bind(
        path: &Path,
        gateway_uid: u32,
        group: u32,
        caster: String,
        swarm: PathBuf,
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
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            gateway_uid,
            caster,
            swarm,
            spool,
            mask,
            runs: HashMap::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Takes every waiting connection (the listener is non-blocking).
    pub fn accept(&mut self) {
        while let Ok((conn, _)) = self.listener.accept() {
            let _ = conn.set_nonblocking(false);
            // The request comes at once: a caller that stalls does not hold
            // the supervision loop for more than this. Read whole before any
            // answer (closing on unread data would reset the connection and
            // lose the answer).
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            let read = BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line);
            let taken = match read {
                Ok(_) => self.take(conn.try_clone(), &conn, &line),
                Err(e) => Err(format!("no request: {e}")),
            };
            if let Err(why) = taken {
                warn!("spell socket: refused: {why}");
                let mut c = &conn;
                let _ = writeln!(c, "refused: {why}");
                let _ = writeln!(c, "{EXIT_PREFIX}77");
            }
        }
    }

    fn take(
        &mut self,
        keep: std::io::Result<UnixStream>,
        conn: &UnixStream,
        line: &str,
    ) -> Result<(), String> {
        let (uid, caller_pid) = sys::peer_credentials(conn)
            .map_err(|e| format!("cannot read the caller's credentials: {e}"))?;
        if uid != self.gateway_uid {
            return Err(format!(
                "uid {uid} may not cast spells here; only this Magician's gateway (uid {}) may",
                self.gateway_uid
            ));
        }
        let req: Request =
            serde_json::from_str(line).map_err(|e| format!("not a spell request: {e}"))?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let swarm = self.swarm.display().to_string();
        let (args, spell_file, what) = match &req {
            Request::Spawn {
                spell_file,
                deploy,
                dry_run,
            } => {
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
                let mut a = vec!["spawn".to_string(), f.display().to_string()];
                a.extend(["--swarm".into(), swarm, "--as".into(), self.caster.clone()]);
                if *deploy {
                    a.push("--deploy".into());
                }
                if *dry_run {
                    a.push("--dry-run".into());
                }
                (a, Some(f), "SpawnBuddy")
            }
            Request::Upgrade {
                image,
                canary,
                ids,
                dry_run,
            } => {
                let mut a = vec!["upgrade".to_string(), "--image".into(), image.clone()];
                a.extend(["--swarm".into(), swarm, "--as".into(), self.caster.clone()]);
                if let Some(c) = canary {
                    a.extend(["--canary".into(), c.clone()]);
                }
                if *dry_run {
                    a.push("--dry-run".into());
                }
                a.push("--".into());
                a.extend(ids.iter().cloned());
                (a, None, "UpgradeBuddy")
            }
        };
        let conn = keep.map_err(|e| e.to_string())?;
        let spec = SpawnSpec {
            program: exe,
            args,
            // Ours: the token, the shared keys and the share's settings go to
            // the spell run, which is root's like us.
            env: std::env::vars().collect(),
            cwd: PathBuf::from("/"),
            credentials: None,
            mask_dir: None,
            harden: false,
            stdio: Some(conn.as_raw_fd()),
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
            caller_pid,
            "spell socket: casting for the gateway"
        );
        self.runs.insert(pid, Run { conn, spell_file });
        Ok(())
    }

    /// The reaper collected `pid`: if it was a spell run, its caller gets
    /// the exit code and the run's spell file is removed. Whether it was.
    pub fn ended(&mut self, pid: Pid, exit: Exit) -> bool {
        let Some(run) = self.runs.remove(&pid) else {
            return false;
        };
        info!(pid = pid.as_raw(), status = %exit, "spell socket: the spell ended");
        let mut c = &run.conn;
        let _ = writeln!(c, "{EXIT_PREFIX}{}", exit.code());
        if let Some(f) = run.spell_file {
            let _ = std::fs::remove_file(f);
        }
        true
    }
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
    let mut conn = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach the spell socket at {}: {e} (only a Magician's supervisor holding FLY_API_TOKEN listens there)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    conn.write_all(line.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut code = None;
    let mut err = std::io::stderr().lock();
    for l in BufReader::new(conn).lines() {
        let l = l.map_err(|e| format!("{}: {e}", path.display()))?;
        match l.strip_prefix(EXIT_PREFIX) {
            Some(c) => code = c.trim().parse().ok(),
            None => {
                let _ = writeln!(err, "{l}");
            }
        }
    }
    code.ok_or_else(|| "the spell socket closed without an exit code".to_string())
}
