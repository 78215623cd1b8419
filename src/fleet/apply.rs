//! A Buddy onto its Fly Machine over the Machines API: what SpawnBuddy
//! cast on a Magician's Machine does, and what `supervisor deploy` (run by
//! `scripts/deploy`) does, with the one Machine definition of
//! `fleet::machine`. In order: the app (looked up first: free, ours or
//! taken), its secrets (set and unset in one call; the version goes with the
//! Machine), the state volume, then the Machine: made (tagged with this run,
//! so an ambiguous answer is resolved by looking for the tag) or, for a
//! Buddy that runs already, replaced safely (`replace::replace`: lease,
//! update, healthy or put back); done when it is started and every check
//! passes. Each thing made is pushed on the caller's undo list, so a failure
//! takes back exactly what this run made, in reverse, and never what existed
//! before.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::buddy::Identity;
use crate::config::render::Secret;
use crate::fleet::fly::{AppState, Client};
use crate::fleet::journal::{Journal, Made};
use crate::fleet::machine::{self, FlyFacts};

/// Metadata key tagging the Machine with the cast that made it.
pub const META_CAST: &str = "mybuddy_cast";

/// How the API deploy runs.
#[derive(Debug, Clone)]
pub struct ApiDeploy {
    pub client: Client,
    pub facts: FlyFacts,
    /// The base image, pinned by digest (the caster's own on a Fly Machine).
    pub image: String,
    pub org: String,
    pub region: String,
    /// How long the new Machine may take to start and pass its checks.
    pub checks_timeout: Duration,
}

pub use crate::fleet::machine::app_name;

/// Stops a run between two calls when the process was asked to stop (the
/// supervisor running the spell is stopping): the caller takes back what
/// was made.
pub fn check_stop() -> Result<(), String> {
    if crate::pid1::sys::stop_requested() {
        Err("stopped: the supervisor running this spell is stopping".into())
    } else {
        Ok(())
    }
}

/// What a deploy does to the app's secrets.
#[derive(Debug, Default)]
pub struct Secrets {
    /// Set, with their values.
    pub set: Vec<(String, Secret)>,
    /// Unset where the app holds them (what the role may not hold).
    pub unset: Vec<String>,
    /// Not given here: the app must hold them already.
    pub on_app: Vec<String>,
}

/// Every secret a new Buddy's app gets, with its value: `own` (the spell's),
/// and from the caster's environment the shared ones the Buddy's config
/// references (`GEMINI_API_KEY`…) and the swarm share's its role may hold.
/// All of them or an error naming each missing one, before anything is made.
pub fn app_secrets(
    identity: &Identity,
    own: Vec<(String, Secret)>,
    config_vars: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Secret)>, String> {
    allowed_vars(identity, config_vars.iter())?;
    let optional = format!("{}_GATEWAY_TOKEN", identity.env_prefix());
    let mut wanted: Vec<String> = config_vars
        .iter()
        .filter(|n| !own.iter().any(|(k, _)| k == *n) && **n != optional)
        .cloned()
        .collect();
    wanted.extend(crate::swarm::share::machine_secrets(identity.role));
    let mut out = own;
    let mut missing = Vec::new();
    for n in wanted {
        match env(&n).filter(|v| !v.is_empty()) {
            Some(v) => out.push((n, Secret(v))),
            None => missing.push(n),
        }
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "the new Buddy's app needs {} from this Machine's environment (the swarm's shared keys and the share's settings for a {}): none was changed",
            missing.join(", "),
            identity.role
        ))
    }
}

/// The `${VAR}`s a new Buddy's config may take from the caster's
/// environment: the swarm's shared keys and the Buddy's own prefixed
/// secrets. The config comes from the share's template, which any
/// gateway can edit: anything else (the Fly org token, a `MYBUDDY_*`
/// setting, another Buddy's secret) refuses the cast, every name said,
/// before anything is made.
pub fn allowed_vars<'v>(
    identity: &Identity,
    vars: impl Iterator<Item = &'v String>,
) -> Result<(), String> {
    let own = format!("{}_", identity.env_prefix());
    let refused: Vec<&str> = vars
        .map(String::as_str)
        .filter(|v| {
            let reserved = v.starts_with("MYBUDDY_")
                || v.starts_with("FLY_")
                || crate::swarm::share::is_share_setting(v);
            reserved || !(crate::config::secrets::SHARED_KEYS.contains(v) || v.starts_with(&own))
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the new Buddy's config asks for {}: a Buddy's config may take only the swarm's shared keys ({}) and its own {own}* secrets from this Machine; refused before anything was made (check mybuddybook/templates/_template/config.json: any gateway can edit it)",
        refused.join(", "),
        crate::config::secrets::SHARED_KEYS.join(", ")
    ))
}

/// A Machine the app runs for this Buddy already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse (a spell makes new Buddies only).
    Refuse,
    /// Replace its config safely (a deploy).
    Replace,
}

/// Deploys the Buddy at `dir`; pushes an undo for each thing it makes.
#[allow(clippy::too_many_arguments)]
pub fn deploy(
    api: &ApiDeploy,
    identity: &Identity,
    def: machine::Definition<'_>,
    secrets: &Secrets,
    existing: Existing,
    before_replace: crate::fleet::replace::BeforeReplace<'_>,
    journal: &mut Journal,
    progress: &mut dyn FnMut(&str),
) -> Result<String, String> {
    let slug = identity.slug();
    let app = app_name(&slug);
    let c = &api.client;
    let e = |e: crate::fleet::fly::FlyError| e.to_string();
    // The Machine config first: a Buddy that cannot be described makes nothing.
    let image = api.image.clone();
    let placeholder = machine::config(&api.facts, def, &image, None).map_err(|p| {
        p.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;

    let created_app = match c.app_state(&app).map_err(e)? {
        AppState::Taken => {
            return Err(format!(
                "the Fly app name {app} belongs to another organisation: choose another name"
            ));
        }
        AppState::Ours => {
            progress(&format!(
                "    app {app}: exists in the organisation, used as it is"
            ));
            false
        }
        AppState::Free => {
            check_stop()?;
            // Journaled first: a create cut short may have made it.
            journal.push(Made::App { app: app.clone() })?;
            if let Err(err) = c.create_app(&app, &api.org) {
                // A clear refusal made nothing: not ours to delete.
                if matches!(err.status(), Some(400..=499)) {
                    journal.pop()?;
                }
                return Err(err.to_string());
            }
            progress(&format!("    app {app}: created in {}", api.org));
            // Private from the start: a Flycast address, never a public one.
            c.allocate_private_ip(&app).map_err(e)?;
            true
        }
    };

    // Secrets: on an app we did not create, the ones it lacked are ours to
    // take back (a value it had is not restorable: it is left).
    let had = if created_app {
        Vec::new()
    } else {
        c.secret_names(&app).map_err(e)?
    };
    let absent: Vec<&str> = secrets
        .on_app
        .iter()
        .map(String::as_str)
        .filter(|n| !had.iter().any(|h| h == n))
        .collect();
    if !absent.is_empty() {
        return Err(format!(
            "{app} lacks secrets {}: export them and deploy again",
            absent.join(" ")
        ));
    }
    let unset: Vec<&String> = secrets.unset.iter().filter(|n| had.contains(n)).collect();
    let mut values: Vec<(String, Option<&Secret>)> = secrets
        .set
        .iter()
        .map(|(k, v)| (k.clone(), Some(v)))
        .collect();
    values.extend(unset.iter().map(|n| ((*n).clone(), None)));
    if !created_app {
        let names: Vec<String> = secrets
            .set
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !had.contains(k))
            .collect();
        if !names.is_empty() {
            journal.push(Made::Secrets {
                app: app.clone(),
                names,
            })?;
        }
    }
    check_stop()?;
    let version = if values.is_empty() {
        None
    } else {
        Some(c.set_secrets(&app, &values).map_err(e)?)
    };
    if let Some(v) = version {
        progress(&format!(
            "    secrets: {} set{} (version {v}; names: {})",
            secrets.set.len(),
            if unset.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} unset ({})",
                    unset.len(),
                    unset
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            },
            secrets
                .set
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if !secrets.on_app.is_empty() {
        progress(&format!(
            "    secrets: kept on the app: {}",
            secrets.on_app.join(" ")
        ));
    }

    // The state volume: one that exists unattached is the Buddy's already
    // (an earlier deploy); else a new one.
    // The volume every Buddy's state lives on: fly.toml's `[mounts] source`.
    let vname = api.facts.mount_source.clone();
    let volume = match c
        .volumes(&app)
        .map_err(e)?
        .into_iter()
        .find(|v| v.name == vname)
    {
        Some(v) => {
            progress(&format!("    volume {vname}: {} exists, used", v.id));
            v
        }
        None => {
            check_stop()?;
            let v = c
                .create_volume(
                    &app,
                    &vname,
                    &api.region,
                    api.facts.volume_size_gb,
                    api.facts.snapshot_retention,
                )
                .map_err(e)?;
            journal.push(Made::Volume {
                app: app.clone(),
                id: v.id.clone(),
            })?;
            progress(&format!("    volume {vname}: created {}", v.id));
            v
        }
    };

    let tag = format!("{slug}-{:08x}", rand::random::<u32>());
    let mut config = placeholder;
    config["mounts"][0]["volume"] = json!(volume.id);
    config["metadata"][META_CAST] = json!(tag);

    // A Machine this Buddy runs on already: a spell stops, a deploy
    // replaces its config (and puts it back if the new one is not healthy).
    if let Some(m) = c
        .machines_tagged(&app, machine::META_BUDDY, &slug)
        .map_err(e)?
        .into_iter()
        .next()
    {
        if existing == Existing::Refuse {
            return Err(format!(
                "{app} runs a Machine for {} already ({}): a spell makes new Buddies; deploy it with supervisor deploy",
                identity.id(),
                m.id
            ));
        }
        check_stop()?;
        let did = before_replace(&app, &m)?;
        progress(&format!("    Machine {}: {did}", m.id));
        let health = crate::fleet::replace::Health {
            timeout: api.checks_timeout,
            version: None,
        };
        let ttl = (api.checks_timeout.as_secs() * 2 + 60) as u32;
        let make = |_kept: &serde_json::Value| Ok(config.clone());
        crate::fleet::replace::replace(
            c,
            &app,
            &m.id,
            ttl,
            version,
            &make,
            &health,
            &format!("    Machine {}", m.id),
            progress,
        )?;
        return Ok(m.id);
    }

    // A new Machine, tagged with this run: an ambiguous answer (408, 5xx, a
    // cut connection) is resolved by looking for the tag before trying again.
    let mut body = json!({"name": slug, "region": api.region, "config": config});
    if let Some(v) = version {
        body["min_secrets_version"] = json!(v);
    }
    check_stop()?;
    // Journaled before the create: one cut short may have made a Machine
    // carrying the tag.
    journal.push(Made::MachineTag {
        app: app.clone(),
        tag: tag.clone(),
    })?;
    let mut made = None;
    for attempt in 1..=3 {
        match c.create_machine(&app, &body) {
            Ok(m) => {
                made = Some(m);
                break;
            }
            Err(err) if matches!(err.status(), Some(408) | Some(500..) | None) => {
                let found = c.machines_tagged(&app, META_CAST, &tag).map_err(e)?;
                if let Some(m) = found.into_iter().next() {
                    progress(&format!(
                        "    Machine: the create answered {}, but it exists ({}): taken",
                        err.status().map_or("nothing".into(), |s| s.to_string()),
                        m.id
                    ));
                    made = Some(m);
                    break;
                }
                if attempt == 3 {
                    // Looked for just now: no Machine carries the tag.
                    journal.pop()?;
                    return Err(err.to_string());
                }
                progress(&format!("    Machine: {err}; not made, trying again"));
                std::thread::sleep(Duration::from_millis(500 * attempt));
            }
            Err(err) => {
                // A clear refusal made nothing.
                journal.pop()?;
                return Err(err.to_string());
            }
        }
    }
    let m = made.ok_or("no Machine was made")?;
    journal.replace_last(Made::Machine {
        app: app.clone(),
        id: m.id.clone(),
    })?;
    progress(&format!("    Machine {}: created on {image}", m.id));

    let t = Instant::now();
    c.wait_healthy(&app, &m.id, &m.instance_id, api.checks_timeout)?;
    progress(&format!(
        "    Machine {}: started, every check passing ({} ms)",
        m.id,
        t.elapsed().as_millis()
    ));
    Ok(m.id)
}
