//! The spell's deploy step over the Fly Machines API (no checkout, no
//! `fly` CLI: what a Magician's Machine can do). In order: the app (looked
//! up first: free, ours or taken), its secrets (set in one call; the
//! version goes with the Machine), the state volume, the Machine (the base
//! image pinned by digest plus the Buddy's files, tagged with this cast so
//! an ambiguous answer can be resolved by looking), then wait until it is
//! started and every check passes. Each thing made is pushed on the cast's
//! undo list, so a failure takes back exactly what this cast made, in
//! reverse, and never what existed before.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::Spawn;
use crate::config::render::Secret;
use crate::fleet::fly::{AppState, Client};
use crate::fleet::machine::{self, FlyFacts};

/// The volume every Buddy's state lives on (fly.toml's `[mounts] source`).
fn volume_name(facts: &FlyFacts) -> &str {
    &facts.mount_source
}

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

/// The Fly app of a Buddy.
pub fn app_name(slug: &str) -> String {
    format!("mybuddytalk-{slug}")
}

/// What the cast must take back if a later step fails.
pub type Undo = Box<dyn FnOnce() -> Result<String, String>>;

/// Every secret the new app gets, with its value: the spell's own, and from
/// the caster's environment the shared ones the Buddy's config references
/// (`GEMINI_API_KEY`…) and the swarm share's its role may hold. All of them
/// or an error naming each missing one, before anything is made.
pub fn app_secrets(
    s: &Spawn,
    config_vars: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Secret)>, String> {
    let own: Vec<(String, Secret)> = s
        .secrets()
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    let optional = format!("{}_GATEWAY_TOKEN", s.identity.env_prefix());
    let mut wanted: Vec<String> = config_vars
        .iter()
        .filter(|n| !own.iter().any(|(k, _)| k == *n) && **n != optional)
        .cloned()
        .collect();
    wanted.extend(crate::swarm::share::machine_secrets(s.identity.role));
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
            s.identity.role
        ))
    }
}

/// Deploys the Buddy at `dir`; pushes an undo for each thing it makes.
pub fn deploy(
    api: &ApiDeploy,
    s: &Spawn,
    dir: &Path,
    secrets: &[(String, Secret)],
    undo: &mut dyn FnMut(Undo),
    progress: &mut dyn FnMut(&str),
) -> Result<String, String> {
    let slug = s.identity.slug();
    let app = app_name(&slug);
    let c = &api.client;
    let e = |e: crate::fleet::fly::FlyError| e.to_string();
    // The Machine config first: a Buddy that cannot be described makes nothing.
    let image = api.image.clone();
    let placeholder = machine::config(&api.facts, dir, &image, None).map_err(|p| {
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
            c.create_app(&app, &api.org).map_err(e)?;
            let (c2, a2) = (c.clone(), app.clone());
            undo(Box::new(move || {
                c2.delete_app(&a2)
                    .map(|_| format!("deleted the Fly app {a2}"))
                    .map_err(|e| e.to_string())
            }));
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
    let values: Vec<(String, Option<&Secret>)> =
        secrets.iter().map(|(k, v)| (k.clone(), Some(v))).collect();
    let version = c.set_secrets(&app, &values).map_err(e)?;
    if !created_app {
        let new: Vec<String> = secrets
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| !had.contains(k))
            .collect();
        let (c2, a2) = (c.clone(), app.clone());
        undo(Box::new(move || {
            let unset: Vec<(String, Option<&Secret>)> =
                new.iter().map(|k| (k.clone(), None)).collect();
            c2.set_secrets(&a2, &unset)
                .map(|_| format!("unset {} secrets on {a2}", new.len()))
                .map_err(|e| e.to_string())
        }));
    }
    progress(&format!(
        "    secrets: {} set (version {version}; names: {})",
        secrets.len(),
        secrets
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // The state volume: one that exists unattached is the Buddy's already
    // (an earlier deploy); else a new one.
    let vname = volume_name(&api.facts).to_string();
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
            let v = c
                .create_volume(&app, &vname, &api.region, api.facts.volume_size_gb)
                .map_err(e)?;
            let (c2, a2, id) = (c.clone(), app.clone(), v.id.clone());
            undo(Box::new(move || {
                c2.delete_volume(&a2, &id)
                    .map(|_| format!("deleted the volume {id}"))
                    .map_err(|e| e.to_string())
            }));
            progress(&format!("    volume {vname}: created {}", v.id));
            v
        }
    };

    // The Machine, tagged with this cast: an ambiguous answer (408, 5xx, a
    // cut connection) is resolved by looking for the tag before trying again.
    let tag = format!("{slug}-{:08x}", rand::random::<u32>());
    let mut config = placeholder;
    config["mounts"][0]["volume"] = json!(volume.id);
    config["metadata"][META_CAST] = json!(tag);
    let body = json!({
        "name": slug, "region": api.region, "config": config,
        "min_secrets_version": version,
    });
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
                    return Err(err.to_string());
                }
                progress(&format!("    Machine: {err}; not made, trying again"));
                std::thread::sleep(Duration::from_millis(500 * attempt));
            }
            Err(err) => return Err(err.to_string()),
        }
    }
    let m = made.ok_or("no Machine was made")?;
    let (c2, a2, id) = (c.clone(), app.clone(), m.id.clone());
    undo(Box::new(move || {
        c2.destroy_machine(&a2, &id)
            .map(|_| format!("destroyed the Machine {id}"))
            .map_err(|e| e.to_string())
    }));
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
