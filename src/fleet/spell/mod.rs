//! The SpawnBuddy spell: a Magician grows the swarm.
//!
//! validate → generate → deploy → register → resonate, all or nothing: a
//! failing step undoes what the earlier ones made and is named. The spell's
//! bot token and phone number go only into the Fly app's secrets (through
//! scripts/deploy's stdin), never into a file, the registry, an announcement
//! or a log line. Spells hold an exclusive lock on `buddies/.spell.lock`, so two
//! spells at once cannot both take a Human's single WhatsApp slot.
//!
//! [`validate`] checks a parsed spell against the repository and the
//! registry, [`generate`] makes the new Buddy's files, [`cast`] runs the
//! steps with their undo.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use crate::buddy::{self, Identity, Role};
use crate::config::problem::{Problem, Problems};
use crate::config::render::Secret;
use crate::swarm::{Paths, registry};

mod cast;
mod generate;
mod validate;

pub use cast::{CastOptions, Deploy, Outcome, cast};
pub use generate::generate;
pub use validate::validate;

pub const PENDING_MARKER: &str = ".spell-pending";
pub const LOCK_FILE: &str = ".spell.lock";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpellFile {
    spell: String,
    parameters: Params,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    human: String,
    name: String,
    role: String,
    channels: ChannelParams,
    #[serde(default)]
    personality: Personality,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelParams {
    #[serde(default)]
    telegram: bool,
    telegram_token: Option<String>,
    #[serde(default)]
    whatsapp: bool,
    whatsapp_phone: Option<String>,
    /// The Human's Telegram user id (optional; becomes TELEGRAM_ADMIN_ID).
    human_telegram_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Personality {
    soul: Option<String>,
    identity: Option<String>,
}

/// A validated spell.
#[derive(Debug, Clone)]
pub struct Spawn {
    pub identity: Identity,
    pub telegram_token: Option<Secret>,
    pub whatsapp_phone: Option<Secret>,
    pub human_telegram_id: Option<Secret>,
    pub soul: Option<String>,
    pub identity_text: Option<String>,
}

impl Spawn {
    /// The Fly secrets this Buddy gets from the spell: (variable, value).
    pub fn secrets(&self) -> Vec<(String, &Secret)> {
        let p = self.identity.env_prefix();
        let mut out = Vec::new();
        if let Some(t) = &self.telegram_token {
            out.push((format!("{p}_TELEGRAM_TOKEN"), t));
        }
        if let Some(t) = &self.whatsapp_phone {
            out.push((format!("{p}_HUMAN_PHONE"), t));
        }
        if let Some(t) = &self.human_telegram_id {
            out.push((format!("{p}_HUMAN_TELEGRAM_ID"), t));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpellError {
    #[error("{0}")]
    Invalid(Problems),
    #[error("refused: {0}")]
    Refused(String),
    #[error("step {step} failed: {why}{undo}")]
    Step {
        step: &'static str,
        why: String,
        undo: String,
    },
}

/// Parses a spell file. Errors give the place, never the file's content
/// (which holds the bot token and the phone number).
pub fn parse(path: &Path) -> Result<SpellFileParsed, SpellError> {
    let invalid = |loc: String, msg: String| {
        SpellError::Invalid(Problems::new(
            "the spell file is invalid",
            vec![Problem::new(path, loc, msg)],
        ))
    };
    let text = fs::read_to_string(path)
        .map_err(|e| invalid(String::new(), format!("cannot read: {e}")))?;
    parse_str(path, &text)
}

/// Parses spell text; `path` only names it in errors.
pub fn parse_str(path: &Path, text: &str) -> Result<SpellFileParsed, SpellError> {
    let invalid = |loc: String, msg: String| {
        SpellError::Invalid(Problems::new(
            "the spell file is invalid",
            vec![Problem::new(path, loc, msg)],
        ))
    };
    let parsed: SpellFile = serde_saphyr::from_str(text).map_err(|e| {
        // The parser's message may quote the offending line; keep only what
        // it says is wrong, not where in the text that was.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or("").to_string();
        let safe = if looks_secret(&first) {
            "malformed YAML or a wrong field".to_string()
        } else {
            first
        };
        invalid(
            String::new(),
            format!("{safe} (expected the fields of spawn_buddy.md)"),
        )
    })?;
    Ok(SpellFileParsed(parsed))
}

/// A parsed, not yet validated spell.
pub struct SpellFileParsed(SpellFile);

fn looks_secret(s: &str) -> bool {
    let tok = Regex::new(r"\d{6,}:[A-Za-z0-9_-]{10,}|\+\d{6,}").expect("regex");
    tok.is_match(s)
}

/// Everything a spell is checked against, and where the new Buddy's
/// definition goes: a checkout's `buddies/` (`--repo`, from a workstation),
/// or the SpellBook's record of the Buddies the swarm made
/// (`spellbook/buddies/`, made from the template on the share), which is
/// what a Magician's Machine has.
///
/// The share is every gateway's to write, so a spell (root) never reads it
/// by path: the template is copied out through handles into a private
/// directory of ours first ([`crate::untrusted::copy_out`]), records are
/// listed and read through handles, and the new Buddy is made in the
/// private directory, checked and deployed from there, and only then
/// written into the SpellBook.
pub struct World<'a> {
    pub swarm: &'a Path,
    /// The checkout, when the spell writes into one.
    pub repo: Option<&'a Path>,
    buddies: PathBuf,
    template: PathBuf,
    /// The config template the new Buddy is checked and rendered with.
    config_template: PathBuf,
    /// Ours alone, gone with the World: the template's copy, the new
    /// Buddy's files.
    private: tempfile::TempDir,
}

/// Larger is not a Buddy's file (the Machine config refuses more anyway).
const MAX_FILE: u64 = 256 * 1024;
const MAX_TEMPLATE: u64 = 4 << 20;

impl<'a> World<'a> {
    /// A checkout's: its template, config and workspace, which its
    /// check-config checks.
    pub fn in_repo(repo: &'a Path, swarm: &'a Path) -> Result<World<'a>, String> {
        let template = repo.join("buddies").join("_template");
        Ok(World {
            swarm,
            repo: Some(repo),
            buddies: repo.join("buddies"),
            config_template: template.join(crate::buddy::CONFIG_FILE),
            template,
            private: private_dir()?,
        })
    }

    /// The SpellBook's: the workspace seeds from the share's template (the
    /// swarm's own words, copied out through handles), the config template
    /// from this Machine (`config_template`, root's): any gateway can edit
    /// the share's config.json, and a config is what a gateway runs (its
    /// plugins' paths, its providers' URLs), so the share's never reaches a
    /// new Buddy's Machine.
    pub fn in_spellbook(swarm: &'a Path, config_template: &Path) -> Result<World<'a>, String> {
        let p = Paths::new(swarm);
        let private = private_dir()?;
        let template = private.path().join("template");
        let shown = p.book().join("templates").join("_template");
        let copied = match crate::untrusted::Dir::open(swarm)
            // The book first, by its one name: on a Machine it is a JuiceFS
            // mount, which the confined walk below would not cross into.
            .and_then(|r| r.dir(crate::swarm::BOOK))
            .and_then(|b| b.dir_at(Path::new("templates/_template")))
        {
            Ok(d) => crate::untrusted::copy_out(&d, &template, MAX_FILE, MAX_TEMPLATE),
            // No template on this share: only a spell that makes a Buddy
            // needs one, and says so when it reads it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(e),
        }
        .map_err(|e| format!("{}: cannot read the swarm's template: {e}", shown.display()))?;
        for (path, why) in &copied.left {
            tracing::warn!(path = %path.display(), why, "spell: left out of the template");
        }
        Ok(World {
            swarm,
            repo: None,
            buddies: p.spellbook().join("buddies"),
            template,
            config_template: config_template.to_path_buf(),
            private,
        })
    }

    /// A checkout's (`repo`), else the SpellBook's with this Machine's
    /// `config_template`.
    pub fn at(
        repo: Option<&'a Path>,
        swarm: &'a Path,
        config_template: &Path,
    ) -> Result<World<'a>, String> {
        match repo {
            Some(r) => World::in_repo(r, swarm),
            None => World::in_spellbook(swarm, config_template),
        }
    }

    /// The fly.toml Machines are made from: the checkout's, else the image's.
    pub fn fly_toml(&self) -> PathBuf {
        match self.repo {
            Some(r) => r.join("fly.toml"),
            None => PathBuf::from(crate::fleet::machine::IMAGE_FLY_TOML),
        }
    }

    /// Where Buddy definitions live (and the new one goes), for messages.
    pub fn buddies(&self) -> PathBuf {
        self.buddies.clone()
    }

    /// Where Buddy definitions live, opened (made if missing), through a
    /// handle from the share's root (or the checkout).
    pub fn buddies_dir(&self) -> std::io::Result<crate::untrusted::Dir> {
        use crate::untrusted::Dir;
        let parent = match self.repo {
            Some(r) => Dir::open(r)?,
            None => Dir::open(self.swarm)?.dir(crate::swarm::SPELLBOOK)?,
        };
        let mode = if self.repo.is_some() { 0o755 } else { 0o2770 };
        Ok(parent.ensure_dir("buddies", mode)?.dir)
    }

    /// Ours alone: where the new Buddy is made before it is written out.
    pub fn private(&self) -> &Path {
        self.private.path()
    }

    /// How the new Buddy's directory is named in messages.
    pub fn shown(&self, slug: &str) -> String {
        match self.repo {
            Some(_) => format!("buddies/{slug}/"),
            None => format!("spellbook/buddies/{slug}/"),
        }
    }

    /// The Buddy template (its workspace/ seeds the new Buddy's): the
    /// checkout's, or our private copy of the share's.
    pub fn template(&self) -> PathBuf {
        self.template.clone()
    }

    /// The config template the new Buddy is checked with and its Machine
    /// carries: the checkout's, or this Machine's own (never the share's).
    pub fn config_template(&self) -> PathBuf {
        self.config_template.clone()
    }

    /// Whether a definition `slug` exists, and whether a spell is still
    /// making it.
    pub fn record(&self, slug: &str) -> Record {
        let Ok(d) = self.buddies_dir() else {
            return Record::Absent;
        };
        match d.stat(slug) {
            Ok(Some(m)) if m.kind == crate::untrusted::Kind::Dir => {
                match d.dir(slug).and_then(|r| r.stat(PENDING_MARKER)) {
                    Ok(Some(_)) => Record::Pending,
                    _ => Record::Done,
                }
            }
            // Anything else at the name is not a Buddy, but the name is taken.
            Ok(Some(_)) => Record::Done,
            _ => Record::Absent,
        }
    }

    /// Identities of the finished definitions, read through handles.
    fn repo_identities(&self) -> Vec<Identity> {
        let Ok(d) = self.buddies_dir() else {
            return Vec::new();
        };
        let Ok(entries) = d.entries() else {
            return Vec::new();
        };
        entries
            .into_iter()
            .filter_map(|e| {
                let name = e.name.to_str()?.to_string();
                if name.starts_with(['_', '.']) || self.record(&name) != Record::Done {
                    return None;
                }
                let bytes = d
                    .read(Path::new(&name).join(buddy::IDENTITY_FILE), 64 * 1024)
                    .ok()?;
                let id: Identity = serde_json::from_slice(&bytes).ok()?;
                (id.check(Path::new(&name)).is_empty() && id.slug() == name).then_some(id)
            })
            .collect()
    }
}

/// What a place of Buddy definitions holds under one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Absent,
    /// A spell's half-made one (its marker is there): the next cast redoes it.
    Pending,
    Done,
}

/// A private directory of ours (0700, a fresh random name).
fn private_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("mybuddy-spell-")
        .tempdir()
        .map_err(|e| format!("cannot make a private directory: {e}"))
}

/// Only a Magician may cast. `caster` is `--as` or the Buddy the command runs in.
pub fn check_caster(world: &World, caster: &Identity, spell: &str) -> Result<(), SpellError> {
    // The repository's definition wins over what the caller claims.
    let role = world
        .repo_identities()
        .into_iter()
        .find(|i| i.slug() == caster.slug())
        .map(|i| i.role)
        .or_else(|| {
            registry::read(&Paths::new(world.swarm).book())
                .ok()
                .and_then(|r| r.buddies.get(&caster.slug()).map(|e| e.role))
        })
        .unwrap_or(caster.role);
    if role != Role::Magician {
        return Err(SpellError::Refused(format!(
            "{} is a {role}; only a Magician may cast {spell}",
            caster.id()
        )));
    }
    Ok(())
}

/// Serialises spells on one place of Buddy definitions (a checkout, or the
/// SpellBook, where the lock is global across Machines). A gateway can hold
/// the lock file too: waited for [`LOCK_WAIT`] at most.
pub fn lock(world: &World) -> std::io::Result<File> {
    let d = world.buddies_dir()?;
    let f = d.open_or_create(LOCK_FILE, 0o660)?;
    crate::untrusted::lock_until(&f, std::time::Instant::now() + LOCK_WAIT).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{e}: another spell (or a gateway) holds {LOCK_FILE}; try again"),
        )
    })?;
    Ok(f)
}

/// How long a spell waits for another's lock.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Copies the Buddies the SpellBook records (`spellbook/buddies/<id>/`) into
/// a checkout's `buddies/`, so the Buddies the
/// swarm made enter git. `only` names some (ids or slugs); empty: all.
/// Buddies the checkout has already, and half-made ones, are skipped. Each
/// copy must pass check-config in the checkout, or it is taken out again
/// and the problems are returned. Returns the slugs copied.
pub fn adopt(swarm: &Path, repo: &Path, only: &[String]) -> Result<Vec<String>, String> {
    let record = Paths::new(swarm).spellbook().join("buddies");
    let mut slugs: Vec<String> = fs::read_dir(&record)
        .map_err(|e| format!("{}: {e}", record.display()))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !e.path().join(PENDING_MARKER).exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .filter(|n| only.is_empty() || only.iter().any(|o| o.to_lowercase() == *n))
        .collect();
    slugs.sort();
    let mut copied = Vec::new();
    for slug in slugs {
        let dest = repo.join("buddies").join(&slug);
        if dest.exists() {
            continue;
        }
        buddy::load(&record.join(&slug)).map_err(|e| e.to_string())?;
        let opts = fs_extra::dir::CopyOptions {
            copy_inside: true,
            ..Default::default()
        };
        fs_extra::dir::copy(record.join(&slug), &dest, &opts)
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        copied.push(slug);
    }
    let report = crate::check::check_repo(repo);
    let bad: Vec<String> = report
        .problems
        .iter()
        .filter(|p| {
            copied
                .iter()
                .any(|s| p.file.to_string_lossy().contains(s.as_str()))
        })
        .map(|p| p.to_string())
        .collect();
    if !bad.is_empty() {
        for s in &copied {
            let _ = fs::remove_dir_all(repo.join("buddies").join(s));
        }
        return Err(format!(
            "not adopted: check-config found problems in the copies:\n  {}",
            bad.join("\n  ")
        ));
    }
    Ok(copied)
}
