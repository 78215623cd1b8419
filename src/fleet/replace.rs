//! A running Buddy's Machine onto a new config, safely: what `supervisor
//! deploy` of a Buddy that runs already and UpgradeBuddy both do. Its
//! backup first (on the Machine, over the Machines API), then lease it, keep
//! its config, update it, wait until it is healthy (started, every check
//! passing, and for an upgrade the Buddy's own registry entry showing the
//! new version); on failure the kept config goes back. The lease is
//! released either way.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fleet::fly::Client;
use crate::swarm::{Paths, registry};

/// A running Buddy is backed up on its own Machine before its config is
/// replaced (a deploy, an upgrade): `supervisor backup now` run there over
/// the Machines API (its backup keys never leave it). A Buddy whose
/// backups are off says so and the replacement goes on; a backup that
/// fails stops it, nothing of the Machine changed.
pub fn backup_before_replace(
    c: &crate::fleet::fly::Client,
    app: &str,
    m: &crate::fleet::fly::Machine,
) -> Result<String, String> {
    if m.state != "started" {
        return Ok(format!(
            "{}: not running, nothing to back up first",
            m.state
        ));
    }
    let fail = |why: String| {
        format!(
            "the backup of Machine {} before the change failed: {why}\nnothing of the Machine was changed; fix the backup (supervisor backup now on it says why), or go on without it (--no-backup)",
            m.id
        )
    };
    let x = c
        .exec(app, &m.id, &["supervisor", "backup", "now"], 120)
        .map_err(|e| fail(e.to_string()))?;
    let said = format!("{}{}", x.stdout, x.stderr).trim().to_string();
    match x.exit_code {
        0 => Ok(format!("backed up before the change: {said}")),
        c if c == i64::from(crate::backup::OFF_EXIT) => Ok(format!(
            "its backups are off, nothing backed up first: {said}"
        )),
        c => Err(fail(format!("exit code {c}: {said}"))),
    }
}

/// What runs before a running Machine's config is replaced (the Buddy's
/// backup): `Ok(what it did)` lets the replacement go on, `Err` stops the
/// deploy before anything of the Machine changed.
pub type BeforeReplace<'a> =
    &'a dyn Fn(&str, &crate::fleet::fly::Machine) -> Result<String, String>;

/// What "healthy again" means after an update: started and every check
/// passing within `timeout`, and (for an upgrade, where the share is at
/// hand) the Buddy's registry entry showing `version`: (swarm, slug,
/// version, how long it may take after the checks).
pub struct Health<'a> {
    pub timeout: Duration,
    pub version: Option<(&'a Path, &'a str, &'a str, Duration)>,
}

/// One Machine onto a new config, safely: lease it, keep its config, update
/// it to `make(kept)`, wait until healthy; on failure put the kept config
/// back, wait for it, and return why. The lease is released either way.
#[allow(clippy::too_many_arguments)]
pub fn replace(
    c: &Client,
    app: &str,
    machine: &str,
    lease_ttl: u32,
    min_secrets_version: Option<u64>,
    make: &dyn Fn(&Value) -> Result<Value, String>,
    health: &Health,
    tag: &str,
    say: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let e = |e: crate::fleet::fly::FlyError| e.to_string();
    let nonce = c
        .lease(app, machine, lease_ttl)
        .map_err(|err| match err.status() {
            Some(409) => format!("{err}: someone else holds its lease; try again later"),
            _ => err.to_string(),
        })?;
    say(&format!("{tag}: leased {machine}"));
    let result = (|| {
        let before = c.machine(app, machine).map_err(e)?;
        let kept = before.config.clone();
        let new = make(&kept)?;
        let mut body = json!({"config": new});
        if let Some(v) = min_secrets_version {
            body["min_secrets_version"] = json!(v);
        }
        let updated = c.update_machine(app, machine, &nonce, &body).map_err(e)?;
        say(&format!(
            "{tag}: updated to {} (instance {})",
            new["image"].as_str().unwrap_or("?"),
            updated.instance_id
        ));
        match healthy(c, app, machine, &updated.instance_id, health) {
            Ok(ms) => {
                let registered = health
                    .version
                    .map(|(_, _, v, _)| format!(", registered at {v}"))
                    .unwrap_or_default();
                say(&format!(
                    "{tag}: started, checks passing{registered} ({ms} ms)"
                ));
                Ok(())
            }
            Err(why) => {
                say(&format!("{tag}: {why}; putting the old config back"));
                let back = c
                    .update_machine(app, machine, &nonce, &json!({"config": kept}))
                    .map_err(|err| {
                        format!("{why}; and the old config could not be put back: {err}")
                    })?;
                let again = Health {
                    timeout: health.timeout,
                    version: None,
                };
                match healthy(c, app, machine, &back.instance_id, &again) {
                    Ok(_) => say(&format!("{tag}: back on its old config and healthy")),
                    Err(w) => say(&format!(
                        "{tag}: back on its old config, but not healthy yet: {w}"
                    )),
                }
                Err(why)
            }
        }
    })();
    match c.release_lease(app, machine, &nonce) {
        Ok(()) => say(&format!("{tag}: lease released")),
        Err(err) => say(&format!(
            "{tag}: the lease could not be released ({err}); it expires by itself"
        )),
    }
    result
}

/// Waits until `instance` is started, every check passes and (with a
/// version) the Buddy's registry entry shows it. The time it took.
fn healthy(
    c: &Client,
    app: &str,
    machine: &str,
    instance: &str,
    health: &Health,
) -> Result<u128, String> {
    let start = Instant::now();
    c.wait_healthy(app, machine, instance, health.timeout)?;
    let Some((swarm, slug, version, version_timeout)) = health.version else {
        return Ok(start.elapsed().as_millis());
    };
    let checks_done = Instant::now();
    loop {
        let seen = registry::read(&Paths::new(swarm).book())
            .ok()
            .and_then(|r| r.buddies.get(slug).and_then(|e| e.version.clone()));
        if seen.as_deref() == Some(version) {
            return Ok(start.elapsed().as_millis());
        }
        if checks_done.elapsed() > version_timeout {
            return Err(format!(
                "its checks pass but its registry entry says {} after {version_timeout:?}, not {version}",
                seen.as_deref().unwrap_or("no version"),
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
