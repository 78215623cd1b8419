//! UpgradeBuddy: a new base image (pinned by digest) rolled over the
//! swarm's deployed Buddies one at a time, a canary first, over the Fly
//! Machines API. For each Machine: lease it, keep its config, update it to
//! the new image (and its Buddy's files where the definition changed), wait
//! until the new instance is started, every check passes and the Buddy's
//! own registry entry shows the new version (its supervisor writes it at
//! boot: the Buddy really runs it); then release the lease. On any failure
//! the kept config goes back, the Machine is waited for until healthy again,
//! and the rollout stops: the Buddies after it are never touched. Every
//! step is a line; the SpellBook's changelog and an announcement record
//! the outcome.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::fleet::fly::Client;
use crate::fleet::machine::{self, FlyFacts};
use crate::fleet::replace::{Health, replace};
use crate::swarm::{Paths, registry, resonate};

/// One Buddy to upgrade.
#[derive(Debug, Clone)]
pub struct Target {
    pub slug: String,
    pub id: String,
    pub app: String,
    pub machine: String,
    /// Its definition, where one is known (the SpellBook's record or a
    /// checkout): the Machine's files are made again from it.
    pub definition: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    pub checks_timeout: Duration,
    /// How long the Buddy may take to register the new version after its
    /// checks pass.
    pub version_timeout: Duration,
    pub lease_ttl: u32,
    pub dry_run: bool,
    /// The template a Machine made again from its definition carries: a
    /// checkout's (which check-config checked). None: each Machine keeps
    /// the one it carries, the one it was deployed and checked with.
    pub template: Option<PathBuf>,
}

/// The version a Buddy registers when it runs `image` (what
/// `fleet::machine` puts in `MYBUDDY_IMAGE_VERSION`).
pub fn version_of(image: &str) -> Option<String> {
    let (_, d) = image.split_once("@sha256:")?;
    Some(format!("sha256:{}", &d[..d.len().min(12)]))
}

/// The deployed Buddies in the registry (those with a Machine), the canary
/// (`canary`, else the first Buddy-role one) first, the rest in id order.
/// `skip_machine`: this Machine's own (an upgrade must not reboot the
/// Machine it runs on). `definitions`: where Buddy definitions may be found.
pub fn plan(
    swarm: &Path,
    only: &[String],
    canary: Option<&str>,
    skip_machine: Option<&str>,
    definitions: &[PathBuf],
    verify: &dyn Fn(&Target) -> Result<(), String>,
) -> Result<(Vec<Target>, Vec<String>), String> {
    // Entry by entry, each checked: a key or Machine id that is not of its
    // shape never reaches an API path, and is said.
    let loaded = registry::load(&Paths::new(swarm).book()).map_err(|e| e.to_string())?;
    let reg = loaded.registry;
    let mut notes: Vec<String> = loaded
        .rejected
        .iter()
        .map(|r| {
            format!(
                "{:?}: not a valid registry entry ({}): skipped",
                r.key, r.why
            )
        })
        .collect();
    let mut targets: Vec<(bool, Target)> = Vec::new();
    for (slug, e) in &reg.buddies {
        if !only.is_empty() && !only.iter().any(|o| o.to_lowercase() == *slug) {
            continue;
        }
        let Some(m) = &e.machine else {
            notes.push(format!(
                "{}: no Fly Machine in the registry (not deployed): skipped",
                e.id
            ));
            continue;
        };
        if skip_machine == Some(m.as_str()) {
            notes.push(format!(
                "{}: this is the Machine running the upgrade: skipped (upgrade it from another Magician or a workstation)",
                e.id
            ));
            continue;
        }
        let definition = definitions
            .iter()
            .map(|d| d.join(slug))
            .find(|d| d.join("buddy.json").is_file());
        let t = Target {
            slug: slug.clone(),
            id: e.id.clone(),
            app: crate::fleet::machine::app_name(slug),
            machine: m.clone(),
            definition,
        };
        // Before it can be a canary: its Machine is really its own.
        if let Err(why) = verify(&t) {
            notes.push(format!("{}: {why}: skipped", e.id));
            continue;
        }
        targets.push((e.role == crate::buddy::Role::Buddy, t));
    }
    let first = match canary {
        Some(c) => targets
            .iter()
            .position(|(_, t)| t.slug == c.to_lowercase())
            .ok_or_else(|| format!("--canary {c}: not among the Buddies to upgrade"))?,
        None => targets.iter().position(|(buddy, _)| *buddy).unwrap_or(0),
    };
    let mut ordered: Vec<Target> = Vec::new();
    if !targets.is_empty() {
        ordered.push(targets.remove(first).1);
        ordered.extend(targets.into_iter().map(|(_, t)| t));
    }
    Ok((ordered, notes))
}

/// What became of the rollout.
#[derive(Debug)]
pub struct Outcome {
    pub upgraded: Vec<String>,
    /// The Buddy whose upgrade failed (put back), and why.
    pub stopped: Option<(String, String)>,
}

/// Whether the Machine a registry entry names is its Buddy's: it exists in
/// the Buddy's app and its metadata (ours, set when it was made) names the
/// Buddy. The registry is any gateway's to write; the Machines are not.
pub fn owned_machine(c: &Client, t: &Target) -> Result<(), String> {
    let m = c
        .machine(&t.app, &t.machine)
        .map_err(|e| match e.status() {
            Some(404) => format!("no Machine {} in {}", t.machine, t.app),
            _ => e.to_string(),
        })?;
    let owner = m.config["metadata"][machine::META_BUDDY].as_str();
    if owner != Some(t.slug.as_str()) {
        return Err(format!(
            "the Machine {} of {} is not {}'s (its metadata says {})",
            t.machine,
            t.app,
            t.id,
            owner.unwrap_or("nothing")
        ));
    }
    Ok(())
}

/// Rolls `opts.image` over `targets` in order.
pub fn rollout(
    client: &Client,
    facts: Option<&FlyFacts>,
    swarm: &Path,
    caster: &str,
    targets: &[Target],
    opts: &Options,
    say: &mut dyn FnMut(&str),
) -> Result<Outcome, String> {
    let version = version_of(&opts.image)
        .ok_or_else(|| format!("--image {}: not pinned by digest (…@sha256:…)", opts.image))?;
    let n = targets.len();
    if opts.dry_run {
        say(&format!(
            "dry run: {} → {version}, one at a time, nothing changed:",
            opts.image
        ));
        for (i, t) in targets.iter().enumerate() {
            say(&format!(
                "  [{}/{n}] {}{}: back it up on its Machine, lease {} in {}, update to the new image{}, wait until started, checks passing and registered at {version}; on failure put the old config back and stop",
                i + 1,
                t.id,
                if i == 0 { " (canary)" } else { "" },
                t.machine,
                t.app,
                if t.definition.is_some() {
                    " and its current files"
                } else {
                    ""
                },
            ));
        }
        return Ok(Outcome {
            upgraded: Vec::new(),
            stopped: None,
        });
    }
    let mut upgraded = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let tag = format!(
            "[{}/{n}] {}{}",
            i + 1,
            t.id,
            if i == 0 { " (canary)" } else { "" }
        );
        match upgrade_one(client, facts, swarm, t, opts, &version, &tag, say) {
            Ok(()) => {
                say(&format!("{tag}: upgraded to {version}"));
                upgraded.push(t.id.clone());
            }
            Err(why) => {
                say(&format!("{tag}: {why}; the rollout stops here"));
                record(swarm, caster, &opts.image, &upgraded, Some((&t.id, &why)));
                return Ok(Outcome {
                    upgraded,
                    stopped: Some((t.id.clone(), why)),
                });
            }
        }
    }
    record(swarm, caster, &opts.image, &upgraded, None);
    Ok(Outcome {
        upgraded,
        stopped: None,
    })
}

/// The changelog line and the announcement (their failure is reported,
/// never undoes the Machines' state).
fn record(
    swarm: &Path,
    caster: &str,
    image: &str,
    done: &[String],
    stopped: Option<(&String, &String)>,
) {
    let summary = match stopped {
        None => format!(
            "{caster} cast upgrade_buddy: {} upgraded to {image}",
            done.join(", ")
        ),
        Some((id, why)) => format!(
            "{caster} cast upgrade_buddy: {} upgraded to {image}; stopped at {id}, put back on its old config ({why})",
            if done.is_empty() {
                "none".to_string()
            } else {
                done.join(", ")
            }
        ),
    };
    if let Err(e) = resonate::changelog(swarm, &summary) {
        tracing::warn!(error = %e, "upgrade: cannot write the SpellBook changelog");
    }
    let header = json!({"spell": "upgrade_buddy", "image": image, "upgraded": done, "stopped": stopped.map(|(id, _)| id)});
    if let Err(e) = resonate::announce(swarm, caster, "upgrade", header, &summary) {
        tracing::warn!(error = %e, "upgrade: cannot announce");
    }
}

#[allow(clippy::too_many_arguments)]
fn upgrade_one(
    c: &Client,
    facts: Option<&FlyFacts>,
    swarm: &Path,
    t: &Target,
    opts: &Options,
    version: &str,
    tag: &str,
    say: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let health = Health {
        timeout: opts.checks_timeout,
        version: Some((swarm, &t.slug, version, opts.version_timeout)),
    };
    // Again, right before: the registry may have changed since the plan.
    owned_machine(c, t).map_err(|why| format!("{why}: left alone"))?;
    // What it remembers, backed up on its own Machine before anything of it
    // changes; a backup that fails leaves it as it is.
    let m = c.machine(&t.app, &t.machine).map_err(|e| e.to_string())?;
    let did = crate::fleet::replace::backup_before_replace(c, &t.app, &m)?;
    say(&format!("{tag}: {did}"));
    replace(
        c,
        &t.app,
        &t.machine,
        opts.lease_ttl,
        None,
        &|kept| new_config(kept, facts, t, opts),
        &health,
        tag,
        say,
    )
}

/// The kept config with the new image and version, and (where the Buddy's
/// definition is known) its files made again from it.
fn new_config(
    kept: &Value,
    facts: Option<&FlyFacts>,
    t: &Target,
    opts: &Options,
) -> Result<Value, String> {
    let image = opts.image.as_str();
    let mut new = kept.clone();
    new["image"] = json!(image);
    if let Some(v) = version_of(image) {
        new["env"]["MYBUDDY_IMAGE_VERSION"] = json!(v);
    }
    if let (Some(def), Some(facts)) = (&t.definition, facts) {
        let def = machine::Definition {
            dir: def,
            template: opts.template.as_deref(),
        };
        let made = machine::config(facts, def, image, None).map_err(|p| {
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let mut files = made["files"].as_array().cloned().unwrap_or_default();
        if opts.template.is_none() {
            let carried = kept["files"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["guest_path"] == machine::TEMPLATE_GUEST_PATH);
            files.extend(carried.cloned());
        }
        new["files"] = Value::Array(files);
    }
    Ok(new)
}
