//! The SpawnBuddy spell: a Magician grows the swarm.
//!
//! validate → generate → deploy → register → resonate, all or nothing: a
//! failing step undoes what the earlier ones made and is named. The spell's
//! bot token and phone number go only into the Fly app's secrets (through
//! scripts/deploy's stdin), never into a file, the registry, an announcement
//! or a log line. Spells hold an exclusive lock on `buddies/.spell.lock`, so two
//! spells at once cannot both take a Human's single WhatsApp slot.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;
use serde::Deserialize;
use serde_json::json;

use crate::buddy::{self, Channels, Identity, Role, Status};
use crate::problem::{Problem, Problems};
use crate::registry;
use crate::render::Secret;
use crate::resonate;
use crate::swarm::Paths;

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

/// Everything a spell is checked against.
pub struct World<'a> {
    pub repo: &'a Path,
    pub swarm: &'a Path,
}

impl World<'_> {
    fn buddies(&self) -> PathBuf {
        self.repo.join("buddies")
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
pub fn check_caster(world: &World, caster: &Identity) -> Result<(), SpellError> {
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
            "{} is a {role}; only a Magician may cast SpawnBuddy",
            caster.id()
        )));
    }
    Ok(())
}

/// Validates a parsed spell: every problem at once, no secret in any message.
pub fn validate(world: &World, path: &Path, f: SpellFileParsed) -> Result<Spawn, SpellError> {
    let SpellFileParsed(f) = f;
    let p = f.parameters;
    let mut problems = Vec::new();
    let mut bad = |loc: &str, msg: String| problems.push(Problem::new(path, loc, msg));
    if f.spell != "spawn_buddy" {
        bad(
            "spell",
            format!("this is the SpawnBuddy spell; found {:?}", f.spell),
        );
    }
    if let Err(why) = buddy::check_name_part(&p.human) {
        bad("parameters.human", why);
    }
    if let Err(why) = buddy::check_name_part(&p.name) {
        bad("parameters.name", why);
    }
    let role = match p.role.as_str() {
        "buddy" => Some(Role::Buddy),
        "magician" => Some(Role::Magician),
        other => {
            bad(
                "parameters.role",
                format!("{other:?} is not a role: buddy or magician"),
            );
            None
        }
    };
    let ch = &p.channels;
    if !ch.telegram && !ch.whatsapp {
        bad(
            "parameters.channels",
            "a Buddy needs at least one channel (telegram or whatsapp)".into(),
        );
    }
    let token_re = Regex::new(r"^\d{6,12}:[A-Za-z0-9_-]{30,}$").expect("regex");
    let phone_re = Regex::new(r"^\+[1-9]\d{7,14}$").expect("regex");
    match (&ch.telegram_token, ch.telegram) {
        (Some(t), true) if !token_re.is_match(t.trim()) => bad(
            "parameters.channels.telegram_token",
            "is not a Telegram bot token (digits, a colon, then at least 30 letters, digits, - or _: ask BotFather)".into(),
        ),
        (None, true) => bad("parameters.channels.telegram_token", "telegram is on: the bot token from BotFather is needed".into()),
        (Some(_), false) => bad("parameters.channels.telegram_token", "given but telegram is off".into()),
        _ => {}
    }
    match (&ch.whatsapp_phone, ch.whatsapp) {
        (Some(ph), true) if !phone_re.is_match(&ph.replace([' ', '-'], "")) => bad(
            "parameters.channels.whatsapp_phone",
            "is not a phone number in international format (+ country code and number, like +31…)"
                .into(),
        ),
        (None, true) => bad(
            "parameters.channels.whatsapp_phone",
            "whatsapp is on: the Human's phone number is needed".into(),
        ),
        (Some(_), false) => bad(
            "parameters.channels.whatsapp_phone",
            "given but whatsapp is off".into(),
        ),
        _ => {}
    }
    if let Some(id) = &ch.human_telegram_id
        && (!id.trim().chars().all(|c| c.is_ascii_digit()) || id.trim().is_empty())
    {
        bad(
            "parameters.channels.human_telegram_id",
            "must be the Human's numeric Telegram user id".into(),
        );
    }
    let identity = role.map(|role| Identity {
        human: p.human.clone(),
        name: p.name.clone(),
        role,
        channels: Channels {
            telegram: ch.telegram,
            whatsapp: ch.whatsapp,
        },
        status: Status::Planned,
    });
    if let Some(id) = &identity {
        let slug = id.slug();
        let dir = world.buddies().join(&slug);
        let reg = registry::read(&Paths::new(world.swarm).book()).unwrap_or_default();
        if dir.exists() && !dir.join(PENDING_MARKER).exists() {
            bad(
                "parameters.name",
                format!(
                    "{} already exists (buddies/{slug}); choose another name",
                    id.id()
                ),
            );
        } else if reg
            .buddies
            .get(&slug)
            .is_some_and(|e| e.status != Status::Planned)
        {
            bad(
                "parameters.name",
                format!(
                    "{} is already registered in the swarm; choose another name",
                    id.id()
                ),
            );
        }
        if id.channels.whatsapp {
            let mut holders: Vec<String> = world
                .repo_identities()
                .into_iter()
                .filter(|o| o.human == id.human && o.channels.whatsapp && o.slug() != slug)
                .map(|o| o.id())
                .collect();
            holders.extend(
                reg.buddies
                    .values()
                    .filter(|e| {
                        e.human == id.human && e.channels.whatsapp && e.id.to_lowercase() != slug
                    })
                    .map(|e| e.id.clone()),
            );
            holders.sort();
            holders.dedup();
            if !holders.is_empty() {
                bad(
                    "parameters.channels.whatsapp",
                    format!(
                        "{} already has a WhatsApp Buddy ({}); at most one per Human",
                        id.human,
                        holders.join(", ")
                    ),
                );
            }
        }
    }
    if !problems.is_empty() {
        return Err(SpellError::Invalid(Problems::new(
            "the spell cannot be cast",
            problems,
        )));
    }
    let identity = identity.expect("validated");
    let secret = |s: &Option<String>| s.as_ref().map(|v| Secret(v.trim().replace([' '], "")));
    Ok(Spawn {
        telegram_token: secret(&ch.telegram_token),
        whatsapp_phone: secret(&ch.whatsapp_phone),
        human_telegram_id: secret(&ch.human_telegram_id),
        soul: p.personality.soul,
        identity_text: p.personality.identity,
        identity,
    })
}

/// The files of the new Buddy directory: (relative path, content).
pub fn generate(world: &World, s: &Spawn) -> Result<Vec<(PathBuf, String)>, String> {
    let id = &s.identity;
    let slug = id.slug();
    let prefix = id.env_prefix();
    let mut files = Vec::new();
    let mut ident = serde_json::to_string_pretty(id).map_err(|e| e.to_string())?;
    ident.push('\n');
    files.push((PathBuf::from("buddy.json"), ident));
    let mut env = serde_json::Map::new();
    let mut channels = serde_json::Map::new();
    let mut config = serde_json::Map::new();
    if id.channels.telegram {
        env.insert(
            "CLAWDBOT_TELEGRAM_TOKEN".into(),
            json!(format!("${{{prefix}_TELEGRAM_TOKEN}}")),
        );
        channels.insert(
            "telegram".into(),
            json!({"botToken": format!("${{{prefix}_TELEGRAM_TOKEN}}"), "dmPolicy": "pairing", "groupPolicy": "allowlist"}),
        );
    }
    if s.human_telegram_id.is_some() {
        env.insert(
            "TELEGRAM_ADMIN_ID".into(),
            json!(format!("${{{prefix}_HUMAN_TELEGRAM_ID}}")),
        );
    }
    if id.channels.whatsapp {
        channels.insert(
            "whatsapp".into(),
            json!({"sendReadReceipts": true, "dmPolicy": "allowlist", "allowFrom": [format!("${{{prefix}_HUMAN_PHONE}}")]}),
        );
    }
    if !env.is_empty() {
        config.insert("env".into(), env.into());
    }
    config.insert("channels".into(), channels.into());
    // The template enables Telegram and disables WhatsApp; say what differs.
    let mut entries = serde_json::Map::new();
    if !id.channels.telegram {
        entries.insert("telegram".into(), json!({"enabled": false}));
    }
    if id.channels.whatsapp {
        entries.insert("whatsapp".into(), json!({"enabled": true}));
    }
    if !entries.is_empty() {
        config.insert("plugins".into(), json!({"entries": entries}));
    }
    let mut cfg = serde_json::to_string_pretty(&serde_json::Value::Object(config))
        .map_err(|e| e.to_string())?;
    cfg.push('\n');
    files.push((PathBuf::from("config.json"), cfg));
    let tpl = world.buddies().join("_template/workspace");
    let fill = |t: &str| {
        t.replace("{Human}", &id.human)
            .replace("{BotName}", &id.name)
    };
    for name in ["SOUL.MD", "IDENTITY.MD", "MEMORY.MD", "USER.MD"] {
        let from_spell = match name {
            "SOUL.MD" => s.soul.clone(),
            "IDENTITY.MD" => s.identity_text.clone(),
            _ => None,
        };
        let text = match from_spell {
            Some(t) => {
                let mut t = t.trim_end().to_string();
                t.push('\n');
                t
            }
            None => fill(
                &fs::read_to_string(tpl.join(name))
                    .map_err(|e| format!("{}: {e}", tpl.join(name).display()))?,
            ),
        };
        files.push((PathBuf::from("workspace").join(name), text));
    }
    files.push((
        PathBuf::from("Dockerfile"),
        format!(
            "# {}: the MyBuddyTalk base image plus this Buddy's own files, nothing else.\n# WhatsApp credentials never enter an image: they live on the Buddy's volume (/data).\nARG BASE_IMAGE=registry.fly.io/mybuddytalk-base:latest\nFROM ${{BASE_IMAGE}}\nCOPY buddies/{slug}/buddy.json buddies/{slug}/config.json /opt/mybuddy/buddy/\nCOPY buddies/{slug}/workspace/ /opt/mybuddy/buddy/workspace/\n",
            id.id()
        ),
    ));
    Ok(files)
}

/// How the spell runs.
#[derive(Debug, Clone)]
pub struct CastOptions {
    pub deploy: bool,
    pub dry_run: bool,
    /// The deploy script (scripts/deploy in the repository).
    pub deploy_script: PathBuf,
}

/// What a cast did (for the caller's summary).
#[derive(Debug)]
pub struct Outcome {
    pub slug: String,
    pub announcement: Option<PathBuf>,
    pub deployed: bool,
}

/// Casts a validated spell, step by step, undoing on failure.
pub fn cast(
    world: &World,
    caster: &Identity,
    s: &Spawn,
    opts: &CastOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome, SpellError> {
    let id = &s.identity;
    let slug = id.slug();
    let dir = world.buddies().join(&slug);
    let files = generate(world, s).map_err(|why| SpellError::Step {
        step: "generate",
        why,
        undo: String::new(),
    })?;
    if opts.dry_run {
        progress(&format!("[generate] would create buddies/{slug}/:"));
        for (p, _) in &files {
            progress(&format!("    {}", p.display()));
        }
        for line in deploy_lines(s, &slug) {
            progress(&format!(
                "[deploy] {}{line}",
                if opts.deploy {
                    "would run: "
                } else {
                    "to run later: "
                }
            ));
        }
        progress(&format!(
            "[register] would add {} to registry.json as {}",
            id.id(),
            if opts.deploy { "active" } else { "planned" }
        ));
        progress(&format!(
            "[resonate] would announce {} in mybuddybook/announcements/ and log it in spellbook/changelog.md",
            id.id()
        ));
        return Ok(Outcome {
            slug,
            announcement: None,
            deployed: false,
        });
    }
    let mut undo: Vec<Box<dyn FnOnce() -> Result<String, String>>> = Vec::new();
    let fail = |step: &'static str,
                why: String,
                undo: Vec<Box<dyn FnOnce() -> Result<String, String>>>| {
        let mut notes = Vec::new();
        for u in undo.into_iter().rev() {
            match u() {
                Ok(n) => notes.push(format!("undone: {n}")),
                Err(n) => notes.push(format!("could not undo: {n}")),
            }
        }
        SpellError::Step {
            step,
            why,
            undo: if notes.is_empty() {
                String::new()
            } else {
                format!("\n  {}", notes.join("\n  "))
            },
        }
    };

    // generate: staged beside its final place, then renamed in, so the
    // directory appears whole; the marker says a spell is still working on it.
    let stage = world.buddies().join(format!(".spell-{slug}.tmp"));
    let _ = fs::remove_dir_all(&stage);
    if dir.join(PENDING_MARKER).exists() {
        let _ = fs::remove_dir_all(&dir);
    }
    let write = || -> std::io::Result<()> {
        for (p, content) in &files {
            let path = stage.join(p);
            fs::create_dir_all(path.parent().unwrap_or(&stage))?;
            fs::write(path, content)?;
        }
        fs::write(
            stage.join(PENDING_MARKER),
            "a SpawnBuddy spell is creating this Buddy\n",
        )?;
        fs::rename(&stage, &dir)
    };
    if let Err(e) = write() {
        let _ = fs::remove_dir_all(&stage);
        return Err(fail("generate", format!("{}: {e}", dir.display()), undo));
    }
    let d = dir.clone();
    undo.push(Box::new(move || {
        fs::remove_dir_all(&d)
            .map(|_| format!("removed {}", d.display()))
            .map_err(|e| e.to_string())
    }));
    let report = crate::check::check_repo(world.repo);
    let mine: Vec<String> = report
        .problems
        .iter()
        .filter(|p| {
            p.file.to_string_lossy().contains(&slug)
                || p.message.contains(&id.id())
                || p.message.contains(&slug)
        })
        .map(|p| p.to_string())
        .collect();
    if !mine.is_empty() {
        return Err(fail(
            "generate",
            format!(
                "the new Buddy does not pass check-config:\n  {}",
                mine.join("\n  ")
            ),
            undo,
        ));
    }
    progress(&format!(
        "[2/5] generate: buddies/{slug}/ ({} files) passes check-config",
        files.len()
    ));

    // deploy
    let mut deployed = false;
    if opts.deploy {
        let mut cmd = Command::new(&opts.deploy_script);
        cmd.arg(&slug);
        for (k, v) in s.secrets() {
            cmd.env(k, &v.0);
        }
        match cmd.status() {
            Ok(st) if st.success() => deployed = true,
            Ok(st) => {
                return Err(fail(
                    "deploy",
                    format!(
                        "scripts/deploy {slug} exited with {st}; a Fly app it created may remain: fly apps destroy mybuddytalk-{slug}"
                    ),
                    undo,
                ));
            }
            Err(e) => {
                return Err(fail(
                    "deploy",
                    format!("cannot run {}: {e}", opts.deploy_script.display()),
                    undo,
                ));
            }
        }
        progress(&format!("[3/5] deploy: mybuddytalk-{slug} deployed"));
    } else {
        progress("[3/5] deploy: skipped (no --deploy); to deploy, run:");
        for line in deploy_lines(s, &slug) {
            progress(&format!("    {line}"));
        }
    }

    // register
    let book = Paths::new(world.swarm).book();
    let mut entry = registry::Entry::from_identity(id);
    entry.status = if deployed {
        Status::Active
    } else {
        Status::Planned
    };
    let status = entry.status;
    if let Err(e) = registry::upsert(&book, entry) {
        return Err(fail("register", e.to_string(), undo));
    }
    let (b, sl) = (book.clone(), slug.clone());
    undo.push(Box::new(move || {
        registry::remove(&b, &sl)
            .map(|_| format!("removed {sl} from the registry"))
            .map_err(|e| e.to_string())
    }));
    progress(&format!(
        "[4/5] register: {} is {status} in registry.json",
        id.id()
    ));

    // resonate
    let text = format!(
        "{} cast SpawnBuddy: welcome {}, a new {} for {} on {}. Status: {status}.",
        caster.id(),
        id.id(),
        id.role,
        id.human,
        match (id.channels.telegram, id.channels.whatsapp) {
            (true, true) => "Telegram and WhatsApp",
            (true, false) => "Telegram",
            _ => "WhatsApp",
        }
    );
    let header = json!({"buddy": id.id(), "human": id.human, "role": id.role, "channels": id.channels, "status": status, "spell": "spawn_buddy"});
    let ann = match resonate::announce(world.swarm, &caster.id(), "spawn", header, &text) {
        Ok(p) => p,
        Err(e) => return Err(fail("resonate", e.to_string(), undo)),
    };
    let a = ann.clone();
    undo.push(Box::new(move || {
        fs::remove_file(&a)
            .map(|_| format!("removed {}", a.display()))
            .map_err(|e| e.to_string())
    }));
    if let Err(e) = resonate::changelog(
        world.swarm,
        &format!(
            "{} cast spawn_buddy: {} ({}, {}, {status})",
            caster.id(),
            id.id(),
            id.role,
            id.channels
        ),
    ) {
        return Err(fail("resonate", e.to_string(), undo));
    }
    let _ = fs::remove_file(dir.join(PENDING_MARKER));
    progress(&format!("[5/5] resonate: announced in {}", ann.display()));
    Ok(Outcome {
        slug,
        announcement: Some(ann),
        deployed,
    })
}

/// The deploy commands an operator runs, with the spell's secrets named, not shown.
fn deploy_lines(s: &Spawn, slug: &str) -> Vec<String> {
    let mut lines: Vec<String> = s
        .secrets()
        .iter()
        .map(|(k, _)| format!("export {k}=…   # from the spell"))
        .collect();
    lines.push("export GEMINI_API_KEY=… BRAVE_API_KEY=…   # the swarm's shared keys".into());
    lines.push(format!("scripts/deploy {slug}"));
    lines
}

/// Serialises spells on one repository.
pub fn lock(repo: &Path) -> std::io::Result<File> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(repo.join("buddies").join(LOCK_FILE))?;
    f.lock()?;
    Ok(f)
}
