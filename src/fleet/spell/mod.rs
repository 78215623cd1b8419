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
pub struct World<'a> {
    pub swarm: &'a Path,
    /// The checkout, when the spell writes into one.
    pub repo: Option<&'a Path>,
    buddies: PathBuf,
    template: PathBuf,
}

impl<'a> World<'a> {
    pub fn in_repo(repo: &'a Path, swarm: &'a Path) -> World<'a> {
        World {
            swarm,
            repo: Some(repo),
            buddies: repo.join("buddies"),
            template: repo.join("buddies").join("_template"),
        }
    }

    pub fn in_spellbook(swarm: &'a Path) -> World<'a> {
        let p = Paths::new(swarm);
        World {
            swarm,
            repo: None,
            buddies: p.spellbook().join("buddies"),
            template: p.book().join("templates").join("_template"),
        }
    }

    /// A checkout's (`repo`), else the SpellBook's.
    pub fn at(repo: Option<&'a Path>, swarm: &'a Path) -> World<'a> {
        match repo {
            Some(r) => World::in_repo(r, swarm),
            None => World::in_spellbook(swarm),
        }
    }

    /// The fly.toml Machines are made from: the checkout's, else the image's.
    pub fn fly_toml(&self) -> PathBuf {
        match self.repo {
            Some(r) => r.join("fly.toml"),
            None => PathBuf::from(crate::fleet::machine::IMAGE_FLY_TOML),
        }
    }

    /// Where Buddy definitions live (and the new one goes).
    pub fn buddies(&self) -> PathBuf {
        self.buddies.clone()
    }

    /// How the new Buddy's directory is named in messages.
    pub fn shown(&self, slug: &str) -> String {
        match self.repo {
            Some(_) => format!("buddies/{slug}/"),
            None => format!("spellbook/buddies/{slug}/"),
        }
    }

    /// The Buddy template (config.json, workspace/).
    pub fn template(&self) -> PathBuf {
        self.template.clone()
    }

    /// Identities in the repository (dirs that load), keyed by slug.
    fn repo_identities(&self) -> Vec<Identity> {
        let Ok(rd) = fs::read_dir(self.buddies()) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(['_', '.']))
            .filter(|e| !e.path().join(PENDING_MARKER).exists())
            .filter_map(|e| buddy::load(&e.path()).ok().map(|b| b.identity))
            .collect()
    }
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
/// SpellBook, where the lock is global across Machines).
pub fn lock(world: &World) -> std::io::Result<File> {
    fs::create_dir_all(world.buddies())?;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(world.buddies().join(LOCK_FILE))?;
    f.lock()?;
    Ok(f)
}

/// Copies the Buddies the SpellBook records (`spellbook/buddies/<id>/`) into
/// a checkout's `buddies/`, each with its Dockerfile, so the Buddies the
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
        let b = buddy::load(&record.join(&slug)).map_err(|e| e.to_string())?;
        let opts = fs_extra::dir::CopyOptions {
            copy_inside: true,
            ..Default::default()
        };
        fs_extra::dir::copy(record.join(&slug), &dest, &opts)
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        fs::write(dest.join("Dockerfile"), generate::dockerfile(&b.identity))
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
