//! The swarm registry, `mybuddybook/registry.json`: one entry per Buddy.
//!
//! Every Buddy writes it at boot and Magicians write it when they cast spells,
//! possibly at the same moment from several Machines. Each change is
//! read-modify-write under an exclusive lock on `registry.json.lock` (a
//! separate file, because the atomic rename replaces registry.json's inode),
//! and the new file is written atomically, so no writer loses another's entry
//! and a crash mid-write leaves the old file or the new one.
//!
//! Every gateway can write the file, its lock and its directory, so the
//! registry is read as hostile input: entry by entry, each checked against
//! strict patterns (its key and Machine id end up in Machines API paths); a
//! bad entry is left out, reported and kept in a `registry.json.rejected-…`
//! file at the next commit; a file that does not parse (or is a FIFO, a
//! link, too big) is replaced by the last good copy the writers keep beside
//! it (`registry.json.good`, root's and not writable by the gateways), and
//! the loss is logged. The lock is waited for with a deadline, never for
//! good: a gateway can hold it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

use crate::buddy::{Channels, Identity, Role, Status};
use crate::untrusted::{self, Dir};

pub const REGISTRY_FILE: &str = "registry.json";
pub const LOCK_FILE: &str = "registry.json.lock";
/// The last registry a trusted writer committed (root's, mode 0640).
pub const GOOD_FILE: &str = "registry.json.good";
/// Entries left out of the registry are kept in files with this prefix.
pub const REJECTED_PREFIX: &str = "registry.json.rejected-";
pub const FORMAT_VERSION: u32 = 1;
/// Larger is not a registry of a few Buddies: refused, never read whole.
pub const MAX_BYTES: u64 = 4 << 20;
/// How long a writer waits for the lock before it gives up this time.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub human: String,
    pub name: String,
    pub role: Role,
    pub channels: Channels,
    pub status: Status,
    /// The supervisor (and image) version that last booted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_boot: Option<String>,
    /// Fly Machine id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// How its gateway is doing, as its supervisor last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayHealth>,
    /// RFC 3339, UTC: the supervisor's last write (a heartbeat at least
    /// every `heartbeat_s`): an entry silent for [`STALE_BEATS`] of them
    /// is `unknown`, whatever its state says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_at: Option<String>,
    /// The heartbeat interval its supervisor keeps, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_s: Option<u64>,
    /// Gateway restarts in the last 24 hours of this supervisor's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts_24h: Option<u32>,
    /// RFC 3339, UTC: the last whole backup (None: backups off, or none
    /// yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_at: Option<String>,
    /// The gateway's own readiness (its `/readyz`), as last asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Readiness>,
    /// The swarm share's JuiceFS volumes and whether each is mounted (None:
    /// the share is a directory someone else mounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<BTreeMap<String, bool>>,
}

/// What the gateway's `/readyz` said: ready, or the channels failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    /// Channel ids (`telegram`, `whatsapp`) the gateway reports unhealthy.
    #[serde(default)]
    pub failing: Vec<String>,
    /// RFC 3339, UTC: when it was asked.
    pub at: String,
}

/// A channel id as `/readyz` names it, or a share volume's name (and as a
/// table may show it).
static CHANNEL_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9_-]{0,31}$").expect("regex"));

/// Whether `s` is a name an entry may carry in `ready.failing` or `mounts`
/// (what [`check_entry`] holds them to).
pub fn is_short_id(s: &str) -> bool {
    CHANNEL_ID.is_match(s)
}

/// Heartbeats missed before an entry's state is no longer believed.
pub const STALE_BEATS: u32 = 3;
/// The longest reason or exit an entry may carry: one line for a table.
pub const MAX_REASON: usize = 400;

/// The Buddy's state as its supervisor reports it (see [`GatewayState`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayHealth {
    pub state: GatewayState,
    /// RFC 3339, UTC: when this state began.
    pub since: String,
    /// Exits in a row that made (or ended) the crash loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exits: Option<u32>,
    /// How the gateway last ended (`exit code 1`, `killed by SIGKILL`,
    /// `killed for memory (OOM)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// Why it stopped or was refused: one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl GatewayHealth {
    /// `state` beginning now.
    pub fn since_now(state: GatewayState, exits: Option<u32>) -> GatewayHealth {
        GatewayHealth {
            state,
            since: now_rfc3339(),
            exits,
            last_exit: None,
            reason: None,
        }
    }
}

/// A Buddy's life as its supervisor writes it. `unknown` is never written:
/// a reader says it of an entry whose heartbeat stopped (see [`seen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayState {
    /// The gateway started and does not listen yet.
    Booting,
    /// It listens (or ran a healthy interval after a crash loop).
    Running,
    /// It exited and is started again after a backoff.
    Restarting,
    /// It keeps exiting; restarted with capped backoff.
    CrashLooping,
    /// The swarm share is gone and could not be brought back yet: the
    /// gateway runs without it meanwhile.
    ShareDegraded,
    /// A stop was asked for; the gateway is being stopped.
    Stopping,
    /// The supervisor has exited (`reason` says why).
    Stopped,
    /// The boot refused to start the gateway (`reason`: the first line of
    /// why); the supervisor waits before it exits, so a restart policy does
    /// not spin.
    Refused,
}

impl GatewayState {
    /// States with no supervisor behind them: no heartbeat is expected.
    pub fn is_final(self) -> bool {
        matches!(self, GatewayState::Stopped | GatewayState::Refused)
    }
}

impl std::fmt::Display for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self).unwrap_or_default();
        f.write_str(v.as_str().unwrap_or("?"))
    }
}

/// What a reader may believe of an entry now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The state its supervisor wrote, which is still heartbeating (or has
    /// ended: stopped, refused).
    State(GatewayState),
    /// Its supervisor went silent: last heard of at `since` (or never
    /// heartbeat at all: an entry older than heartbeats, `since` its boot).
    Unknown { since: String },
    /// Registered by a spell or an operator, never booted.
    NeverBooted,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::State(s) => s.fmt(f),
            Seen::Unknown { since } => write!(f, "unknown since {since}"),
            Seen::NeverBooted => f.write_str("never booted"),
        }
    }
}

/// What `e` says of its Buddy at `now`: its state, or `unknown` once its
/// supervisor has missed [`STALE_BEATS`] heartbeats.
pub fn seen(e: &Entry, now: std::time::SystemTime) -> Seen {
    let Some(g) = &e.gateway else {
        return match &e.last_boot {
            Some(t) => Seen::Unknown { since: t.clone() },
            None => Seen::NeverBooted,
        };
    };
    if g.state.is_final() {
        return Seen::State(g.state);
    }
    let (Some(at), Some(beat)) = (&e.seen_at, e.heartbeat_s) else {
        return Seen::Unknown {
            since: e.last_boot.clone().unwrap_or_else(|| g.since.clone()),
        };
    };
    let Ok(t) = humantime::parse_rfc3339(at) else {
        return Seen::Unknown { since: at.clone() };
    };
    let silent = now.duration_since(t).unwrap_or_default();
    if silent > Duration::from_secs(beat.max(1)) * STALE_BEATS {
        Seen::Unknown { since: at.clone() }
    } else {
        Seen::State(g.state)
    }
}

/// `text` on one line of at most [`MAX_REASON`] characters, with no
/// control characters (what a supervisor writes; a table shows it as it
/// is). Its lines are joined: a multi-line error's first line is often only
/// its heading ("… does not render (1 problem):").
pub fn one_line(text: &str) -> String {
    let joined = text
        .split_whitespace()
        .map(|w| w.replace(|c: char| c.is_control(), " "))
        .collect::<Vec<_>>()
        .join(" ");
    if joined.chars().count() <= MAX_REASON {
        return joined;
    }
    let mut out: String = joined.chars().take(MAX_REASON - 1).collect();
    out.push('…');
    out
}

impl Entry {
    pub fn from_identity(identity: &Identity) -> Entry {
        Entry {
            id: identity.id(),
            human: identity.human.clone(),
            name: identity.name.clone(),
            role: identity.role,
            channels: identity.channels,
            status: identity.status,
            version: None,
            last_boot: None,
            machine: None,
            gateway: None,
            seen_at: None,
            heartbeat_s: None,
            restarts_24h: None,
            backup_at: None,
            ready: None,
            mounts: None,
        }
    }
}

/// A Fly Machine id as it may go into a Machines API path: lowercase
/// letters and digits (Fly's are 14 hex digits), `-` and `_` inside; no
/// `/`, `.`, `?`, `&`, `%` or anything else a URL gives a meaning to.
pub static MACHINE_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9_-]{0,63}$").expect("regex"));
/// An image version as the supervisor records it (`sha256:…`, `0.1.0`).
static VERSION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,79}$").expect("regex"));

/// Checks one entry read from the share against everything its use
/// assumes: its key is the lowercase form of an id made of two valid name
/// parts (so it is safe as a directory, an app name and an API path), its
/// Machine id and version have their strict shapes, its times parse.
/// Returns the entry, or why it is refused.
pub fn check_entry(key: &str, v: &Value) -> Result<Entry, String> {
    let e: Entry = serde_json::from_value(v.clone()).map_err(|e| format!("not an entry: {e}"))?;
    for (field, value) in [("human", &e.human), ("name", &e.name)] {
        crate::buddy::check_name_part(value).map_err(|why| format!("{field}: {why}"))?;
    }
    let id = format!("{}Buddy-{}", e.human, e.name);
    if e.id != id {
        return Err(format!("id {:?} is not {id:?} (its human and name)", e.id));
    }
    if key != id.to_lowercase() {
        return Err(format!(
            "key {key:?} is not its id's lowercase form {:?}",
            id.to_lowercase()
        ));
    }
    if let Some(m) = &e.machine
        && !MACHINE_ID.is_match(m)
    {
        return Err(format!(
            "machine {m:?} is not a Fly Machine id (lowercase letters, digits, - and _)"
        ));
    }
    if let Some(v) = &e.version
        && !VERSION.is_match(v)
    {
        return Err(format!("version {v:?} is not a version"));
    }
    let times = [
        e.last_boot.as_deref(),
        e.gateway.as_ref().map(|g| g.since.as_str()),
        e.seen_at.as_deref(),
        e.backup_at.as_deref(),
        e.ready.as_ref().map(|r| r.at.as_str()),
    ];
    for t in times.into_iter().flatten() {
        humantime::parse_rfc3339(t).map_err(|_| format!("{t:?} is not an RFC 3339 time"))?;
    }
    if let Some(r) = &e.ready
        && (r.failing.len() > 8 || r.failing.iter().any(|c| !CHANNEL_ID.is_match(c)))
    {
        return Err("ready.failing is not a short list of channel ids".into());
    }
    if let Some(m) = &e.mounts
        && (m.len() > 8 || m.keys().any(|v| !CHANNEL_ID.is_match(v)))
    {
        return Err("mounts is not a short list of volume names".into());
    }
    // Shown as they are in an operator's terminal: one short line, no
    // escape sequences.
    if let Some(g) = &e.gateway {
        for (field, text) in [("last_exit", &g.last_exit), ("reason", &g.reason)] {
            if let Some(t) = text
                && (t.chars().count() > MAX_REASON || t.chars().any(char::is_control))
            {
                return Err(format!(
                    "gateway.{field} is not one line of at most {MAX_REASON} characters"
                ));
            }
        }
    }
    Ok(e)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub version: u32,
    /// Keyed by the lowercase id (`roelbuddy-emrys`).
    pub buddies: BTreeMap<String, Entry>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            version: FORMAT_VERSION,
            buddies: BTreeMap::new(),
        }
    }
}

/// An entry left out of the registry, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub key: String,
    pub why: String,
    pub entry: Value,
}

/// Parses registry text: the whole file must be a registry of this format
/// version (else Err: the file is unusable); each entry is checked alone,
/// the bad ones returned apart.
pub fn parse(bytes: &[u8]) -> Result<(Registry, Vec<Rejected>), String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("is not JSON ({e})"))?;
    let Value::Object(top) = v else {
        return Err("is not a JSON object".into());
    };
    match top.get("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(FORMAT_VERSION as u64) => {}
        other => {
            return Err(format!(
                "has version {}, this supervisor reads {FORMAT_VERSION}",
                other.map_or("(none)".to_string(), |v| v.to_string())
            ));
        }
    }
    let Some(Value::Object(buddies)) = top.get("buddies") else {
        return Err("has no \"buddies\" object".into());
    };
    let mut reg = Registry::default();
    let mut rejected = Vec::new();
    for (key, v) in buddies {
        match check_entry(key, v) {
            Ok(e) => {
                reg.buddies.insert(key.clone(), e);
            }
            Err(why) => rejected.push(Rejected {
                key: key.chars().take(80).collect(),
                why,
                entry: v.clone(),
            }),
        }
    }
    Ok((reg, rejected))
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {source} (is the swarm share mounted and writable by the mybuddybook group?)")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path}: the lock is held by another process past {waited:?} (a gateway can hold it: the write is retried later, never waited for)"
    )]
    Busy { path: PathBuf, waited: Duration },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn path_in(book: &Path) -> PathBuf {
    book.join(REGISTRY_FILE)
}

/// What a read found besides the registry: entries left out, and whether
/// the file itself was unusable (and what was used instead).
#[derive(Debug, Default)]
pub struct Loaded {
    pub registry: Registry,
    pub rejected: Vec<Rejected>,
    /// Why registry.json could not be used, when it could not.
    pub unusable: Option<String>,
    /// Whether the last good copy stood in for it.
    pub from_good_copy: bool,
}

impl Loaded {
    /// Logs what was left out or lost (readers and writers alike).
    fn report(&self, book: &Dir) {
        for r in &self.rejected {
            warn!(registry = %book.shown(REGISTRY_FILE).display(), key = %r.key, why = %r.why, "registry: entry left out (written by something other than a supervisor?)");
        }
        if let Some(why) = &self.unusable {
            let instead = if self.from_good_copy {
                "the last good copy is used instead; changes made since it was written are lost"
            } else {
                "no trusted good copy: starting empty; each Buddy's entry comes back at its next registry write"
            };
            warn!(registry = %book.shown(REGISTRY_FILE).display(), "registry: the file {why}: {instead}");
        }
    }
}

/// Reads the registry in `book` through its handle.
fn load_in(book: &Dir) -> io::Result<Loaded> {
    let usable = match book.read(REGISTRY_FILE, MAX_BYTES) {
        Ok(bytes) => parse(&bytes),
        // Never written yet (a new share), or removed by a gateway: the good
        // copy, if any, is the registry.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(match read_good(book) {
                Some(registry) => Loaded {
                    registry,
                    unusable: Some("is missing".into()),
                    from_good_copy: true,
                    ..Default::default()
                },
                None => Loaded::default(),
            });
        }
        Err(e) if untrusted::is_planted(&e) => Err(format!("is unusable: {e}")),
        Err(e) => return Err(e),
    };
    Ok(match usable {
        Ok((registry, rejected)) => Loaded {
            registry,
            rejected,
            ..Default::default()
        },
        Err(why) => {
            let good = read_good(book);
            Loaded {
                from_good_copy: good.is_some(),
                registry: good.unwrap_or_default(),
                rejected: Vec::new(),
                unusable: Some(why),
            }
        }
    })
}

/// The last good copy, if one a trusted writer made is there: a regular
/// file owned by root (or by us, when we are not root), writable by its
/// owner alone. A gateway can delete it or put its own there, never write
/// one we would believe.
fn read_good(book: &Dir) -> Option<Registry> {
    let f = book.open_file(GOOD_FILE, false).ok()?;
    let m = untrusted::meta_of(&f).ok()?;
    let me = nix::unistd::geteuid().as_raw();
    if (m.uid != 0 && m.uid != me) || m.mode & 0o022 != 0 {
        warn!(file = %book.shown(GOOD_FILE).display(), uid = m.uid, mode = format!("{:04o}", m.mode), "registry: a good copy no supervisor wrote; ignored");
        return None;
    }
    let bytes = untrusted::read_bounded(f, MAX_BYTES).ok()?;
    parse(&bytes).ok().map(|(r, _)| r)
}

/// Reads the registry (an absent file is an empty registry). Entries that
/// fail their checks are left out and logged; an unusable file is replaced
/// by the last good copy, logged.
pub fn read(book: &Path) -> Result<Registry, RegistryError> {
    load(book).map(|l| l.registry)
}

/// Like [`read`], with what was left out.
pub fn load(book: &Path) -> Result<Loaded, RegistryError> {
    let dir = match Dir::open(book) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(io_err(book)(e)),
    };
    let l = load_in(&dir).map_err(io_err(&path_in(book)))?;
    l.report(&dir);
    Ok(l)
}

/// Holds the registry's exclusive lock while alive.
pub struct Locked {
    _lock: File,
    book: Dir,
    pub registry: Registry,
    loaded: Loaded,
}

/// Takes the exclusive lock (waiting at most [`LOCK_WAIT`] for other
/// writers) and reads the registry.
pub fn lock(book: &Path) -> Result<Locked, RegistryError> {
    lock_until(book, Instant::now() + LOCK_WAIT)
}

/// Takes the exclusive lock, waiting until `deadline` at most, and reads
/// the registry. Whatever a gateway left at the lock's name (a link, a
/// FIFO) is moved aside first.
pub fn lock_until(book: &Path, deadline: Instant) -> Result<Locked, RegistryError> {
    let lock_path = book.join(LOCK_FILE);
    if !book.exists() {
        std::fs::create_dir_all(book).map_err(io_err(book))?;
    }
    let dir = Dir::open(book).map_err(io_err(book))?;
    loop {
        let file = open_lock(&dir).map_err(io_err(&lock_path))?;
        untrusted::lock_until(&file, deadline).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => RegistryError::Busy {
                path: lock_path.clone(),
                waited: LOCK_WAIT,
            },
            _ => io_err(&lock_path)(e),
        })?;
        // A gateway can remove the lock file and make another while we
        // wait: a lock on an inode no longer at the name locks nothing.
        let held = untrusted::meta_of(&file).map_err(io_err(&lock_path))?;
        match dir.stat(LOCK_FILE).map_err(io_err(&lock_path))? {
            Some(m) if m.ino == held.ino && m.dev == held.dev => {}
            _ if Instant::now() < deadline => continue,
            _ => {
                return Err(RegistryError::Busy {
                    path: lock_path,
                    waited: LOCK_WAIT,
                });
            }
        }
        // Every registry write happens under this lock, so a temp file seen
        // now was left by a writer that died mid-write (kill -9, power cut).
        for e in dir.entries().map_err(io_err(book))? {
            if e.name.to_string_lossy().starts_with(".tmp-") {
                let _ = dir.unlink(&e.name);
            }
        }
        let loaded = load_in(&dir).map_err(io_err(&path_in(book)))?;
        loaded.report(&dir);
        return Ok(Locked {
            _lock: file,
            registry: loaded.registry.clone(),
            book: dir,
            loaded,
        });
    }
}

/// The lock file, opened without following anything: a link, FIFO or
/// directory at its name is moved aside and a new file made.
fn open_lock(dir: &Dir) -> io::Result<File> {
    let mut last = None;
    for _ in 0..3 {
        match dir.open_or_create(LOCK_FILE, 0o660) {
            Ok(f) => return Ok(f),
            Err(e) if untrusted::is_planted(&e) || e.raw_os_error() == Some(nix::libc::EISDIR) => {
                let to = dir.quarantine(LOCK_FILE)?;
                warn!(lock = %dir.shown(LOCK_FILE).display(), moved_to = %to.to_string_lossy(), "registry: something planted at the lock's name ({e}); moved aside");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("cannot open the lock")))
}

impl Locked {
    /// Writes the registry atomically, and its good copy; entries left out
    /// go to a rejected file, an unusable file is moved aside (kept for
    /// whoever looks into it). The lock is released on drop.
    pub fn commit(&self) -> Result<(), RegistryError> {
        let path = self.book.shown(REGISTRY_FILE);
        let mut text = serde_json::to_string_pretty(&self.registry).unwrap_or_default();
        text.push('\n');
        if !self.loaded.rejected.is_empty() {
            self.keep_rejected();
        }
        if self.loaded.unusable.is_some() && self.book.stat(REGISTRY_FILE).ok().flatten().is_some()
        {
            match self.book.quarantine(REGISTRY_FILE) {
                Ok(to) => {
                    warn!(registry = %path.display(), moved_to = %to.to_string_lossy(), "registry: the unusable file is moved aside")
                }
                Err(e) => {
                    warn!(registry = %path.display(), error = %e, "registry: cannot move the unusable file aside")
                }
            }
        }
        self.book
            .replace(REGISTRY_FILE, text.as_bytes(), 0o660, true)
            .map_err(io_err(&path))?;
        // Root's copy, readable by the gateways, writable by no one else: the
        // registry comes back from it when a gateway breaks the file.
        if let Err(e) = self.book.replace(GOOD_FILE, text.as_bytes(), 0o640, false) {
            warn!(file = %self.book.shown(GOOD_FILE).display(), error = %e, "registry: cannot write the good copy");
        }
        Ok(())
    }

    /// Entries left out, kept whole for whoever wants to see what was
    /// written (bounded by what the file held).
    fn keep_rejected(&self) {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let name = format!("{REJECTED_PREFIX}{secs}-{:08x}.json", rand::random::<u32>());
        let text = serde_json::to_string_pretty(&self.loaded.rejected).unwrap_or_default();
        match self.book.create_whole(&name, text.as_bytes(), 0o640) {
            Ok(_) => {
                warn!(file = %self.book.shown(&name).display(), entries = self.loaded.rejected.len(), "registry: entries left out are kept here")
            }
            Err(e) => warn!(error = %e, "registry: cannot keep the entries left out"),
        }
    }
}

/// Inserts or replaces one entry, keyed by its lowercase id.
pub fn upsert(book: &Path, entry: Entry) -> Result<(), RegistryError> {
    let mut l = lock(book)?;
    l.registry.buddies.insert(entry.id.to_lowercase(), entry);
    l.commit()
}

/// Changes one entry under the lock; false when the id is not registered.
pub fn update(book: &Path, slug: &str, f: impl FnOnce(&mut Entry)) -> Result<bool, RegistryError> {
    let mut l = lock(book)?;
    let Some(e) = l.registry.buddies.get_mut(slug) else {
        return Ok(false);
    };
    f(e);
    l.commit()?;
    Ok(true)
}

/// Removes one entry (a spell's rollback); true when it was there.
pub fn remove(book: &Path, slug: &str) -> Result<bool, RegistryError> {
    let mut l = lock(book)?;
    let was = l.registry.buddies.remove(slug).is_some();
    if was {
        l.commit()?;
    }
    Ok(was)
}

/// Makes sure the registry is a regular file: created empty (or from the
/// good copy) when missing, and anything else at its name (a link, FIFO,
/// directory) moved aside. No lock: the first of several Machines wins
/// (written whole, then hard-linked into place). Whether it made the file.
pub fn ensure(book: &Dir) -> io::Result<bool> {
    for name in [REGISTRY_FILE, LOCK_FILE] {
        if let Some(m) = book.stat(name)?
            && m.kind != untrusted::Kind::File
        {
            let to = book.quarantine(name)?;
            warn!(file = %book.shown(name).display(), moved_to = %to.to_string_lossy(), "swarm: {} at a name the swarm owns; moved aside", m.kind.describe());
        }
    }
    if book.stat(LOCK_FILE)?.is_none() {
        drop(open_lock(book)?);
    }
    if book.stat(REGISTRY_FILE)?.is_some() {
        return Ok(false);
    }
    let registry = read_good(book).unwrap_or_default();
    let mut text = serde_json::to_string_pretty(&registry).unwrap_or_default();
    text.push('\n');
    book.create_whole(REGISTRY_FILE, text.as_bytes(), 0o660)
}

/// Now, as RFC 3339 UTC seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The registry as a table (for `supervisor registry`).
pub fn table(r: &Registry) -> String {
    let now = std::time::SystemTime::now();
    let mut rows = vec![[
        "ID".to_string(),
        "HUMAN".into(),
        "ROLE".into(),
        "CHANNELS".into(),
        "STATUS".into(),
        "STATE".into(),
        "LAST BOOT".into(),
    ]];
    for e in r.buddies.values() {
        rows.push([
            e.id.clone(),
            e.human.clone(),
            e.role.to_string(),
            e.channels.to_string(),
            e.status.to_string(),
            seen(e, now).to_string(),
            e.last_boot.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    aligned(&rows)
}

/// Rows as columns aligned on their widest cell, two spaces apart (the
/// operator's tables: `registry`, `status`).
pub fn aligned<R: AsRef<[String]>>(rows: &[R]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for r in rows {
        for (i, c) in r.as_ref().iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .as_ref()
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(id: &str, human: &str, name: &str) -> Value {
        json!({"id": id, "human": human, "name": name, "role": "buddy",
               "channels": {"telegram": true}, "status": "active"})
    }

    #[test]
    fn bad_entries_are_left_out_and_good_ones_kept() {
        let mut good = entry("RoelBuddy-Galahad", "Roel", "Galahad");
        good["machine"] = json!("e784079b449483");
        let mut bad_machine = entry("RoelBuddy-Emrys", "Roel", "Emrys");
        bad_machine["machine"] = json!("x?force=true&");
        let text = json!({"version": 1, "buddies": {
            "roelbuddy-galahad": good,
            "roelbuddy-emrys": bad_machine,
            "a/../../apps/victim-app": entry("RoelBuddy-Galahad", "Roel", "Galahad"),
            "estherbuddy-kazeh": entry("EstherBuddy-Kazeh/..", "Esther", "Kazeh/.."),
            "estherbuddy-morgan": {"id": 7},
        }});
        let (r, rejected) = parse(text.to_string().as_bytes()).unwrap();
        assert_eq!(r.buddies.keys().collect::<Vec<_>>(), ["roelbuddy-galahad"]);
        let whys: Vec<&str> = rejected.iter().map(|r| r.why.as_str()).collect();
        assert_eq!(rejected.len(), 4, "{whys:?}");
        assert!(
            whys.iter().any(|w| w.contains("is not a Fly Machine id")),
            "{whys:?}"
        );
        assert!(
            whys.iter()
                .any(|w| w.contains("is not its id's lowercase form")),
            "{whys:?}"
        );
        assert!(whys.iter().any(|w| w.contains("name:")), "{whys:?}");
        assert!(
            whys.iter().any(|w| w.starts_with("not an entry")),
            "{whys:?}"
        );
    }

    #[test]
    fn a_silent_entry_is_unknown_and_a_final_one_believed() {
        let now = std::time::SystemTime::now();
        let ago =
            |s: u64| humantime::format_rfc3339_seconds(now - Duration::from_secs(s)).to_string();
        let mut e: Entry =
            serde_json::from_value(entry("RoelBuddy-Galahad", "Roel", "Galahad")).unwrap();
        assert_eq!(seen(&e, now), Seen::NeverBooted);
        e.last_boot = Some(ago(900));
        assert!(matches!(seen(&e, now), Seen::Unknown { .. }));
        e.gateway = Some(GatewayHealth::since_now(GatewayState::Running, None));
        e.heartbeat_s = Some(60);
        e.seen_at = Some(ago(170));
        assert_eq!(seen(&e, now), Seen::State(GatewayState::Running));
        e.seen_at = Some(ago(190));
        assert_eq!(
            seen(&e, now).to_string(),
            format!("unknown since {}", ago(190))
        );
        e.gateway.as_mut().unwrap().state = GatewayState::Stopped;
        assert_eq!(seen(&e, now), Seen::State(GatewayState::Stopped));
    }

    #[test]
    fn reasons_are_one_short_line_without_escapes() {
        assert_eq!(
            one_line("does not render (1 problem):\n  - missing X\n"),
            "does not render (1 problem): - missing X"
        );
        assert_eq!(one_line("a\x1b[31mb"), "a [31mb");
        assert_eq!(one_line(&"x".repeat(500)).chars().count(), MAX_REASON);
        // What a gateway writes into the file is checked the same way.
        let mut v = entry("RoelBuddy-Galahad", "Roel", "Galahad");
        v["gateway"] = json!({"state": "stopped", "since": "2026-12-06T00:00:00Z",
                              "reason": "ok\u{1b}]0;pwned\u{7}"});
        let e = check_entry("roelbuddy-galahad", &v).unwrap_err();
        assert!(e.contains("gateway.reason"), "{e}");
    }

    #[test]
    fn an_unusable_file_says_why() {
        for (text, why) in [
            ("garbage", "is not JSON"),
            (r#"{"version":"1","buddies":{}}"#, "has version \"1\""),
            (r#"{"version":2,"buddies":{}}"#, "has version 2"),
            (r#"{"version":1,"buddies":[]}"#, "no \"buddies\" object"),
            ("[]", "not a JSON object"),
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
