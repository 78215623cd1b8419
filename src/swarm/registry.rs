//! The swarm registry, `mybuddybook/registry.json`: one entry per Buddy.
//!
//! Every Buddy writes it at boot and Magicians write it when they cast spells,
//! possibly at the same moment from several Machines. Each change is
//! read-modify-write under an exclusive lock on `registry.json.lock` (a
//! separate file, because the atomic rename replaces registry.json's inode),
//! and the new file is written atomically, so no writer loses another's entry
//! and a crash mid-write leaves the old file or the new one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::buddy::{Channels, Identity, Role, Status};
use crate::config::jsonfile;

pub const REGISTRY_FILE: &str = "registry.json";
pub const LOCK_FILE: &str = "registry.json.lock";
pub const FORMAT_VERSION: u32 = 1;

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
}

/// The gateway's state as its supervisor reports it: `running` since boot
/// or recovery, `crash-looping` while it keeps exiting (and is restarted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayHealth {
    pub state: GatewayState,
    /// RFC 3339, UTC: when this state began.
    pub since: String,
    /// Exits in a row that made (or ended) the crash loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exits: Option<u32>,
}

impl GatewayHealth {
    /// `state` beginning now.
    pub fn since_now(state: GatewayState, exits: Option<u32>) -> GatewayHealth {
        GatewayHealth {
            state,
            since: now_rfc3339(),
            exits,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayState {
    Running,
    CrashLooping,
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
        }
    }
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

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {source} (is the swarm share mounted and writable by the mybuddybook group?)")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Invalid(crate::config::problem::Problem),
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

/// Reads the registry (an absent file is an empty registry).
pub fn read(book: &Path) -> Result<Registry, RegistryError> {
    let path = path_in(book);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let v = jsonfile::parse_json(&path, &text).map_err(RegistryError::Invalid)?;
            serde_json::from_value(v).map_err(|e| {
                RegistryError::Invalid(crate::config::problem::Problem::new(
                    &path,
                    "",
                    format!("not a registry: {e}"),
                ))
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Registry::default()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Holds the registry's exclusive lock while alive.
pub struct Locked {
    _lock: File,
    book: PathBuf,
    pub registry: Registry,
}

/// Takes the exclusive lock (waiting for other writers) and reads the registry.
pub fn lock(book: &Path) -> Result<Locked, RegistryError> {
    let lock_path = book.join(LOCK_FILE);
    fs::create_dir_all(book).map_err(io_err(book))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o660)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    file.lock().map_err(io_err(&lock_path))?;
    // Every registry write happens under this lock, so a temp file seen now
    // was left by a writer that died mid-write (kill -9, power cut).
    if let Ok(rd) = fs::read_dir(book) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let registry = read(book)?;
    Ok(Locked {
        _lock: file,
        book: book.to_path_buf(),
        registry,
    })
}

impl Locked {
    /// Writes the registry atomically; the lock is released on drop.
    pub fn commit(&self) -> Result<(), RegistryError> {
        let path = path_in(&self.book);
        let mut text = serde_json::to_string_pretty(&self.registry).unwrap_or_default();
        text.push('\n');
        jsonfile::write_atomic(&path, text.as_bytes(), 0o660).map_err(io_err(&path))
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

/// Now, as RFC 3339 UTC seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The registry as a table (for `supervisor registry`).
pub fn table(r: &Registry) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "HUMAN".into(),
        "ROLE".into(),
        "CHANNELS".into(),
        "STATUS".into(),
        "LAST BOOT".into(),
    ]];
    for e in r.buddies.values() {
        rows.push([
            e.id.clone(),
            e.human.clone(),
            e.role.to_string(),
            e.channels.to_string(),
            e.status.to_string(),
            e.last_boot.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
