//! fly.toml: the facts every Machine is made of, the share's settings kept
//! out of it, a private app, a liveness check, the metrics port.

use super::*;

/// fly.toml: parses, mounts the state where the supervisor expects it, stops
/// with the supervisor's signal and waits longer than its stop timeout.
pub(super) fn check_fly_toml(repo: &Path) -> Vec<Problem> {
    let path = repo.join("fly.toml");
    let mut out = Vec::new();
    let default_stop = 10.0;
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            out.push(Problem::new(&path, "", format!("cannot read: {e}")));
            return out;
        }
    };
    let doc: toml::Table = match text.parse() {
        Ok(d) => d,
        Err(e) => {
            let loc = e.span().map(|s| {
                let line = text[..s.start].lines().count().max(1);
                format!("line {line}")
            });
            out.push(Problem::new(
                &path,
                loc.unwrap_or_default(),
                format!("invalid TOML: {}", e.message()),
            ));
            return out;
        }
    };
    let stop = doc
        .get("env")
        .and_then(|e| e.get("MYBUDDY_STOP_TIMEOUT"))
        .and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.as_integer().map(|i| i.to_string()))
        })
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(default_stop);
    match doc.get("kill_timeout").and_then(|v| v.as_integer().map(|i| i as f64).or_else(|| v.as_str().and_then(|s| s.trim_end_matches('s').parse().ok()))) {
        Some(k) if k > stop => {}
        Some(k) => out.push(Problem::new(&path, "kill_timeout", format!("{k} s must be longer than the supervisor's stop timeout ({stop} s, env.MYBUDDY_STOP_TIMEOUT) or Fly kills the gateway before it stops"))),
        None => out.push(Problem::new(&path, "kill_timeout", format!("missing; Fly's default (5 s) is shorter than the supervisor's stop timeout ({stop} s)"))),
    }
    match doc.get("kill_signal").and_then(|v| v.as_str()) {
        Some("SIGTERM") | Some("SIGINT") => {}
        other => out.push(Problem::new(
            &path,
            "kill_signal",
            format!("must be SIGTERM or SIGINT (the supervisor's stop signals), found {other:?}"),
        )),
    }
    let mounts_ok = match doc.get("mounts") {
        Some(toml::Value::Table(t)) => {
            t.get("destination").and_then(|d| d.as_str()) == Some(STATE_MOUNT)
        }
        Some(toml::Value::Array(a)) => a
            .iter()
            .any(|t| t.get("destination").and_then(|d| d.as_str()) == Some(STATE_MOUNT)),
        _ => false,
    };
    if !mounts_ok {
        out.push(Problem::new(&path, "mounts.destination", format!("the Buddy's state volume must be mounted at {STATE_MOUNT} (the supervisor's --state-dir)")));
    }
    for name in TEST_ONLY_ENV {
        if doc.get("env").and_then(|e| e.get(*name)).is_some() {
            out.push(Problem::new(&path, format!("env.{name}"), "a test-only flag (stand-ins on loopback): a deployed Buddy never sets it; remove it"));
        }
    }
    out.extend(check_fly_share(&path, &doc));
    out.extend(check_fly_private(&path, &doc));
    out.extend(check_fly_health(&path, &doc));
    match doc
        .get("restart")
        .and_then(|r| r.as_array())
        .map(|a| a.iter().filter_map(|r| r.get("policy")?.as_str()).collect::<Vec<_>>())
    {
        Some(p) if p == ["always"] => {}
        other => out.push(Problem::new(
            &path,
            "restart",
            format!("needs [[restart]] policy = \"always\": a Buddy must come back after any exit, with no retry limit an outage could use up; found {other:?}"),
        )),
    }
    out
}

/// Every Buddy's Fly Machine is made from fly.toml and its own files
/// (`fleet::machine`, what the deploy and the spells create): fly.toml must
/// state every fact a Machine needs, and each Buddy's files must fit a
/// Machine config. A placeholder image digest stands in for the base's.
pub(super) fn check_machines(repo: &Path, identities: &[(PathBuf, Identity)]) -> Vec<Problem> {
    let facts = match crate::fleet::machine::fly_facts(&repo.join("fly.toml")) {
        Ok(f) => f,
        Err(p) => return p,
    };
    let image = format!("registry.fly.io/mybuddytalk-base@sha256:{}", "0".repeat(64));
    let template = repo
        .join("buddies/_template")
        .join(crate::buddy::CONFIG_FILE);
    identities
        .iter()
        .filter_map(|(path, _)| path.parent())
        .filter_map(|dir| {
            let def = crate::fleet::machine::Definition::new(dir, &template);
            crate::fleet::machine::config(&facts, def, &image, None).err()
        })
        .flatten()
        .collect()
}

/// A Fly deployment names its share: there is no directory anyone else
/// mounts at /mnt/swarm on a Fly Machine, so `dir` (the default) could only
/// mean a boot that fails or, worse, a private copy. The share's passwords,
/// keys and URLs are per-app secrets (`fly secrets`), never `[env]`, which
/// is in git and in every Machine's config.
pub(super) fn check_fly_share(path: &Path, doc: &toml::Table) -> Vec<Problem> {
    let mut out = Vec::new();
    let env = doc.get("env");
    match env.and_then(|e| e.get("MYBUDDY_SHARE")).and_then(|v| v.as_str()) {
        Some("juicefs") => {}
        other => out.push(Problem::new(
            path,
            "env.MYBUDDY_SHARE",
            format!("must be \"juicefs\" (the Buddies' shared MyBuddyBook and SpellBook volumes); found {other:?}"),
        )),
    }
    if let Some(toml::Value::Table(t)) = env {
        for name in t
            .keys()
            .filter(|k| *k != "MYBUDDY_SHARE" && crate::swarm::share::is_share_setting(k))
        {
            out.push(Problem::new(
                path,
                format!("env.{name}"),
                "the share's settings are per-app secrets (`fly secrets`), never fly.toml: remove it",
            ));
        }
        for name in t
            .keys()
            .filter(|k| crate::backup::SECRETS.contains(&k.as_str()))
        {
            out.push(Problem::new(
                path,
                format!("env.{name}"),
                "the backup's settings are each Buddy's own secrets (`fly secrets`; its own bucket, key and password), never fly.toml: remove it",
            ));
        }
        // Every Buddy's Machine is made from fly.toml: the org token there
        // would reach every Buddy-role Machine.
        if t.contains_key("FLY_API_TOKEN") {
            out.push(Problem::new(
                path,
                "env.FLY_API_TOKEN",
                "the Fly org token is a secret of the Magicians' apps alone, never fly.toml (every Buddy's Machine is made from it): remove it",
            ));
        }
    }
    out
}

/// A Buddy is private to the swarm: the gateway is a `[[services]]` entry
/// on its port reached through Flycast, with nothing that only a public
/// address needs (TLS termination, forced HTTPS, an `[http_service]`).
pub(super) fn check_fly_private(path: &Path, doc: &toml::Table) -> Vec<Problem> {
    let mut out = Vec::new();
    let port = i64::from(render::DEFAULT_PORT);
    if doc.contains_key("http_service") {
        out.push(Problem::new(
            path,
            "http_service",
            "a Buddy has no public HTTP service: declare the gateway as [[services]] (reached through Flycast) and remove [http_service]",
        ));
    }
    let services = doc
        .get("services")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    if !services
        .iter()
        .any(|s| s.get("internal_port").and_then(|p| p.as_integer()) == Some(port))
    {
        out.push(Problem::new(
            path,
            "services",
            format!("needs a [[services]] entry with internal_port = {port} (the gateway, reached through Flycast)"),
        ));
    }
    for (i, s) in services.iter().enumerate() {
        if s.get("force_https").and_then(|v| v.as_bool()) == Some(true) {
            out.push(Problem::new(
                path,
                format!("services[{i}].force_https"),
                "forced HTTPS exists only for public addresses: remove it",
            ));
        }
        let ports = s
            .get("ports")
            .and_then(|p| p.as_array())
            .cloned()
            .unwrap_or_default();
        for (j, p) in ports.iter().enumerate() {
            let tls = p
                .get("handlers")
                .and_then(|h| h.as_array())
                .is_some_and(|h| h.iter().any(|x| x.as_str() == Some("tls")));
            if tls {
                out.push(Problem::new(
                    path,
                    format!("services[{i}].ports[{j}].handlers"),
                    "a tls handler terminates TLS on a public address: a Buddy has none (Flycast is plain HTTP on the private WireGuard network)",
                ));
            }
        }
    }
    out
}

/// The health check is the gateway's own liveness endpoint, on its port.
pub(super) fn check_fly_health(path: &Path, doc: &toml::Table) -> Vec<Problem> {
    let port = i64::from(render::DEFAULT_PORT);
    let checks: Vec<(String, toml::Value)> = doc
        .get("checks")
        .and_then(|c| c.as_table())
        .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (name, c) in &checks {
        if c.get("path").and_then(|p| p.as_str()) == Some("/readyz") {
            out.push(Problem::new(path, format!("checks.{name}.path"), "not /readyz: it answers 503 during a Telegram outage, and an outage must not restart a Buddy; use /healthz"));
        }
    }
    let live = checks.iter().any(|(_, c)| {
        c.get("type").and_then(|t| t.as_str()) == Some("http")
            && c.get("port").and_then(|p| p.as_integer()) == Some(port)
            && c.get("path").and_then(|p| p.as_str()) == Some("/healthz")
    });
    if !live {
        out.push(Problem::new(
            path,
            "checks",
            format!("needs an http check of the gateway's /healthz on port {port}"),
        ));
    }
    out
}
