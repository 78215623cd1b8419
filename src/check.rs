//! `supervisor check-config`: the whole repository, with the same code the
//! boot runs, every problem at once. A Buddy that passes here renders and
//! boots; CI learns that a Buddy is broken before Fly does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;

use crate::buddy::Identity;
use crate::config::problem::{PathSeg, Problem, json_path};
use crate::config::render;

/// Where deliberate exceptions to the plaintext-secret rule are listed:
/// `path[:location]  # why`, paths relative to the repository.
pub const ALLOW_FILE: &str = "buddies/.secrets-allow";
/// The base image every Buddy image must be built on.
pub const BASE_IMAGE_NAME: &str = "mybuddytalk-base";
pub const ENTRYPOINT: &str = r#"ENTRYPOINT ["/usr/local/bin/supervisor", "run"]"#;
/// Where the Buddy's persistent state is mounted (the supervisor's default).
pub const STATE_MOUNT: &str = "/data";

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub buddies: usize,
    pub problems: Vec<Problem>,
}

/// Checks the repository at `repo`.
pub fn check_repo(repo: &Path) -> Report {
    let mut problems = Vec::new();
    let buddies_dir = repo.join("buddies");
    let template = buddies_dir
        .join("_template")
        .join(crate::buddy::CONFIG_FILE);
    let template_vars = match crate::config::jsonfile::read_json_object(&template) {
        Ok(v) => crate::config::secrets::referenced_vars(&v),
        Err(p) => {
            problems.push(p);
            BTreeSet::new()
        }
    };
    let mut identities: Vec<(PathBuf, Identity)> = Vec::new();
    let mut vars_by_buddy: Vec<(String, PathBuf, BTreeSet<String>)> = Vec::new();
    let mut dirs: Vec<PathBuf> = fs::read_dir(&buddies_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    !n.starts_with('_') && !n.starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    for dir in &dirs {
        let (prepared, found) = check_buddy(dir, &template);
        problems.extend(found);
        if let Some(prepared) = prepared {
            let id = prepared.buddy.identity.clone();
            vars_by_buddy.push((
                id.slug(),
                prepared.personal_path.clone(),
                prepared.secret_vars(),
            ));
            identities.push((prepared.buddy.identity_path(), id));
        }
        problems.extend(check_buddy_dockerfile(dir));
    }
    problems.extend(crate::config::workspace::check(
        &buddies_dir.join("_template/workspace"),
    ));
    problems.extend(check_unique_ids(&identities));
    problems.extend(check_whatsapp_limit(&identities));
    problems.extend(check_secret_names(&vars_by_buddy, &template_vars));
    problems.extend(check_template_vars(&template, &template_vars));
    problems.extend(scan_plaintext_secrets(repo, &buddies_dir));
    problems.extend(check_fly_toml(repo));
    problems.extend(check_machines(repo, &identities));
    problems.extend(check_base_dockerfile(repo));
    // Paths relative to the repository read better in CI.
    for p in &mut problems {
        if let Ok(rel) = p.file.strip_prefix(repo) {
            p.file = rel.to_path_buf();
        }
    }
    Report {
        buddies: dirs.len(),
        problems,
    }
}

/// One Buddy alone, as the boot would take it: it renders with the
/// template (placeholder secrets exercise every `${VAR}` as the boot
/// substitutes them) and passes the policy, and its workspace holds only
/// what the gateway reads. The repository's check runs it for each Buddy;
/// a spell cast from the SpellBook runs it for the Buddy it made.
pub fn check_buddy(dir: &Path, template: &Path) -> (Option<render::Prepared>, Vec<Problem>) {
    let (prepared, mut problems) = render::prepare_all(dir, template);
    if let Some(prepared) = &prepared {
        let placeholder = |n: &str| Some(format!("placeholder-{}", n.to_lowercase()));
        let builtins = render::Builtins {
            state_dir: Path::new(STATE_MOUNT),
            gateway_dir: Path::new(render::IMAGE_GATEWAY_DIR),
            swarm_dir: Path::new(crate::swarm::IMAGE_SWARM_DIR),
        };
        if let Err(e) = prepared.substitute(builtins, Some("placeholder-token"), &placeholder) {
            problems.extend(e.items);
        }
    }
    problems.extend(crate::config::workspace::check(&dir.join("workspace")));
    (prepared, problems)
}

fn check_unique_ids(ids: &[(PathBuf, Identity)]) -> Vec<Problem> {
    let mut seen: BTreeMap<String, &PathBuf> = BTreeMap::new();
    let mut out = Vec::new();
    for (file, id) in ids {
        if let Some(first) = seen.insert(id.slug(), file) {
            out.push(Problem::new(
                file,
                "",
                format!("id {} is also declared by {}", id.id(), first.display()),
            ));
        }
    }
    out
}

/// At most one WhatsApp Buddy per Human: WhatsApp allows one session per phone.
pub fn check_whatsapp_limit(ids: &[(PathBuf, Identity)]) -> Vec<Problem> {
    let mut by_human: BTreeMap<&str, Vec<&(PathBuf, Identity)>> = BTreeMap::new();
    for entry in ids.iter().filter(|(_, i)| i.channels.whatsapp) {
        by_human
            .entry(entry.1.human.as_str())
            .or_default()
            .push(entry);
    }
    let mut out = Vec::new();
    for (human, list) in by_human {
        if list.len() > 1 {
            let names: Vec<String> = list.iter().map(|(_, i)| i.id()).collect();
            for (file, _) in list {
                out.push(Problem::new(
                    file,
                    "channels.whatsapp",
                    format!(
                        "{human} has {} WhatsApp Buddies ({}); at most one per Human",
                        names.len(),
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    out
}

/// The template (every Buddy's, and the share's copy spells make Buddies
/// from) takes only the swarm's shared keys from the environment: a spell
/// refuses anything else, so CI does too.
fn check_template_vars(template: &Path, vars: &BTreeSet<String>) -> Vec<Problem> {
    vars.iter()
        .filter(|v| {
            !crate::config::secrets::SHARED_KEYS.contains(&v.as_str())
                && !crate::config::render::BUILTIN_VARS.contains(&v.as_str())
        })
        .map(|v| {
            Problem::new(
                template,
                "",
                format!(
                    "${{{v}}} is not one of the swarm's shared keys ({}): the template is every Buddy's; a Buddy's own secret goes in its config.json with its prefix",
                    crate::config::secrets::SHARED_KEYS.join(", ")
                ),
            )
        })
        .collect()
}

/// Buddy-specific secrets carry the Buddy's prefix and no two Buddies share
/// one; only the template's variables are shared.
fn check_secret_names(
    buddies: &[(String, PathBuf, BTreeSet<String>)],
    shared: &BTreeSet<String>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (slug, file, vars) in buddies {
        let prefix = format!("{}_", crate::buddy::env_prefix_of_slug(slug));
        for v in vars.iter().filter(|v| !shared.contains(*v)) {
            users.entry(v).or_default().push(slug);
            if !v.starts_with(&prefix) {
                out.push(Problem::new(
                    file,
                    "",
                    format!("secret ${{{v}}} is not specific to this Buddy: name it {prefix}... so it cannot collide with another Buddy's"),
                ));
            }
        }
    }
    for (v, slugs) in users {
        if slugs.len() > 1 {
            out.push(Problem::new(
                Path::new("buddies"),
                "",
                format!(
                    "secret ${{{v}}} is used by {}; each Buddy needs its own",
                    slugs.join(" and ")
                ),
            ));
        }
    }
    out
}

struct Allow {
    entries: Vec<(String, Option<String>)>,
}

impl Allow {
    fn load(repo: &Path) -> Allow {
        let text = fs::read_to_string(repo.join(ALLOW_FILE)).unwrap_or_default();
        let entries = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((f, loc)) => (f.to_string(), Some(loc.to_string())),
                None => (l.to_string(), None),
            })
            .collect();
        Allow { entries }
    }
    fn allows(&self, rel: &str, location: &str) -> bool {
        self.entries
            .iter()
            .any(|(f, loc)| f == rel && loc.as_deref().is_none_or(|l| l == location))
    }
}

struct Shapes {
    telegram_token: Regex,
    google_key: Regex,
    phone: Regex,
    secret_key: Regex,
}

impl Shapes {
    fn new() -> Shapes {
        Shapes {
            telegram_token: Regex::new(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}").expect("regex"),
            google_key: Regex::new(r"AIza[0-9A-Za-z_-]{35}").expect("regex"),
            phone: Regex::new(r"\+\d[\d ]{7,16}\d").expect("regex"),
            secret_key: Regex::new(r"(?i)(token|api_?key|secret|password|passwd|phone|allowfrom|admin_?id|telegram_?id|chat_?id|credential)").expect("regex"),
        }
    }

    /// What a value looks like, if it looks like a secret.
    fn shape_of(&self, s: &str) -> Option<&'static str> {
        if self.telegram_token.is_match(s) {
            Some("a Telegram bot token")
        } else if self.google_key.is_match(s) {
            Some("a Google API key")
        } else if self.phone.is_match(s) {
            Some("a phone number")
        } else {
            None
        }
    }
}

/// Whether a string is nothing but `${VAR}` references.
fn only_references(s: &str) -> bool {
    match crate::config::secrets::parse(s) {
        Ok(pieces) => {
            !pieces.is_empty()
                && pieces
                    .iter()
                    .all(|p| matches!(p, crate::config::secrets::Piece::Var(_)))
        }
        Err(_) => false,
    }
}

/// No plaintext secret anywhere under buddies/: by key name in JSON, by value
/// shape in every file. Deliberate exceptions go in buddies/.secrets-allow.
fn scan_plaintext_secrets(repo: &Path, buddies: &Path) -> Vec<Problem> {
    let allow = Allow::load(repo);
    let shapes = Shapes::new();
    let mut out = Vec::new();
    let mut stack = vec![buddies.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                // Runtime credentials are gitignored and never checked in.
                if name != "credentials" {
                    stack.push(path);
                }
                continue;
            }
            if path == repo.join(ALLOW_FILE) {
                continue;
            }
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let rel = path
                .strip_prefix(repo)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let mut found = Vec::new();
            if name.ends_with(".json") {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    scan_json(&v, &mut Vec::new(), false, &shapes, &mut found);
                }
            } else {
                for (i, line) in text.lines().enumerate() {
                    if let Some(shape) = shapes
                        .telegram_token
                        .is_match(line)
                        .then_some("a Telegram bot token")
                        .or_else(|| {
                            shapes
                                .google_key
                                .is_match(line)
                                .then_some("a Google API key")
                        })
                    {
                        found.push((format!("line {}", i + 1), format!("looks like {shape}")));
                    }
                }
            }
            for (location, what) in found {
                if !allow.allows(&rel, &location) {
                    out.push(Problem::new(
                        &path,
                        location.clone(),
                        format!("{what}: secrets are never committed; use a ${{VAR}} reference (or list `{rel}:{location}` in {ALLOW_FILE} with the reason, if it is deliberate)"),
                    ));
                }
            }
        }
    }
    out
}

fn scan_json(
    v: &Value,
    path: &mut Vec<PathSeg>,
    secret_key: bool,
    shapes: &Shapes,
    out: &mut Vec<(String, String)>,
) {
    match v {
        Value::String(s) => {
            if only_references(s) {
                return;
            }
            if let Some(shape) = shapes.shape_of(s) {
                out.push((json_path(path), format!("looks like {shape}")));
            } else if secret_key && !s.is_empty() {
                out.push((
                    json_path(path),
                    "a secret-looking key holds a literal value".into(),
                ));
            }
        }
        Value::Number(_) if secret_key => {
            out.push((
                json_path(path),
                "a secret-looking key holds a literal value".into(),
            ));
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(PathSeg::Index(i));
                scan_json(x, path, secret_key, shapes, out);
                path.pop();
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                path.push(PathSeg::Key(k.clone()));
                // Policy names (dmPolicy) and booleans are not secrets.
                let is_secret =
                    shapes.secret_key.is_match(k) && !k.to_lowercase().ends_with("policy");
                scan_json(x, path, secret_key || is_secret, shapes, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The Dockerfile lines after joining `\` continuations.
fn dockerfile_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if cur.is_empty() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            start = i + 1;
        }
        if let Some(l) = line.strip_suffix('\\') {
            cur.push_str(l);
            cur.push(' ');
        } else {
            cur.push_str(line);
            out.push((start, std::mem::take(&mut cur)));
        }
    }
    out
}

/// Flags of `supervisor run` for tests and offline runs only: no
/// deployment sets them (the supervisor also refuses them on a Fly Machine).
pub const TEST_ONLY_ENV: &[&str] = &["MYBUDDY_CONFIG_OVERLAY", "MYBUDDY_GATEWAY_ENV"];

/// ENV (or ARG) lines of a Dockerfile that set a test-only variable.
fn test_only_env_lines(path: &Path, lines: &[(usize, String)]) -> Vec<Problem> {
    let mut out = Vec::new();
    for (n, l) in lines {
        let (instr, rest) = l.split_once(' ').unwrap_or((l.as_str(), ""));
        if !matches!(instr.to_ascii_uppercase().as_str(), "ENV" | "ARG") {
            continue;
        }
        for name in TEST_ONLY_ENV {
            let set = rest
                .split_whitespace()
                .any(|w| w == *name || w.starts_with(&format!("{name}=")));
            if set {
                out.push(Problem::new(path, format!("line {n}"), format!("sets {name}: a test-only flag (stand-ins on loopback); no image may carry it")));
            }
        }
    }
    out
}

fn check_buddy_dockerfile(dir: &Path) -> Vec<Problem> {
    let path = dir.join("Dockerfile");
    let slug = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let Ok(text) = fs::read_to_string(&path) else {
        return vec![Problem::new(
            &path,
            "",
            "missing: every Buddy needs a Dockerfile FROM the base image (see buddies/_template or spawn)",
        )];
    };
    let lines = dockerfile_lines(&text);
    let mut out = Vec::new();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut from_ok = None;
    for (n, l) in &lines {
        let (instr, rest) = l.split_once(' ').unwrap_or((l.as_str(), ""));
        let rest = rest.trim();
        match instr.to_ascii_uppercase().as_str() {
            "ARG" => {
                if let Some((k, v)) = rest.split_once('=') {
                    args.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
            "FROM" if from_ok.is_none() => {
                let image = rest.split_whitespace().next().unwrap_or("");
                let resolved = image
                    .strip_prefix("${")
                    .and_then(|s| s.strip_suffix('}'))
                    .or_else(|| image.strip_prefix('$'))
                    .and_then(|a| args.get(a).cloned())
                    .unwrap_or_else(|| image.to_string());
                from_ok = Some(resolved.contains(BASE_IMAGE_NAME));
                if from_ok == Some(false) {
                    out.push(Problem::new(&path, format!("line {n}"), format!("FROM {image} is not the base image ({BASE_IMAGE_NAME}); Buddies build on it")));
                }
            }
            "ENTRYPOINT" if l.as_str() != ENTRYPOINT => {
                out.push(Problem::new(
                    &path,
                    format!("line {n}"),
                    format!(
                        "the ENTRYPOINT must stay the base image's `{ENTRYPOINT}`; remove this line"
                    ),
                ));
            }
            "COPY" | "ADD" => {
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                for src in words.iter().take(words.len().saturating_sub(1)) {
                    if !src.starts_with(&format!("buddies/{slug}/")) || src.contains("credentials")
                    {
                        out.push(Problem::new(&path, format!("line {n}"), format!("copies {src}: a Buddy image gets only buddies/{slug}/ (buddy.json, config.json, workspace/), never credentials")));
                    }
                }
            }
            _ => {}
        }
    }
    if from_ok.is_none() {
        out.push(Problem::new(&path, "", "no FROM line"));
    }
    out.extend(test_only_env_lines(&path, &lines));
    out
}

/// fly.toml: parses, mounts the state where the supervisor expects it, stops
/// with the supervisor's signal and waits longer than its stop timeout.
fn check_fly_toml(repo: &Path) -> Vec<Problem> {
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
fn check_machines(repo: &Path, identities: &[(PathBuf, Identity)]) -> Vec<Problem> {
    let facts = match crate::fleet::machine::fly_facts(&repo.join("fly.toml")) {
        Ok(f) => f,
        Err(p) => return p,
    };
    let image = format!("registry.fly.io/mybuddytalk-base@sha256:{}", "0".repeat(64));
    identities
        .iter()
        .filter_map(|(path, _)| path.parent())
        .filter_map(|dir| crate::fleet::machine::config(&facts, dir, &image, None).err())
        .flatten()
        .collect()
}

/// A Fly deployment names its share: there is no directory anyone else
/// mounts at /mnt/swarm on a Fly Machine, so `dir` (the default) could only
/// mean a boot that fails or, worse, a private copy. The share's passwords,
/// keys and URLs are per-app secrets (`fly secrets`), never `[env]`, which
/// is in git and in every Machine's config.
fn check_fly_share(path: &Path, doc: &toml::Table) -> Vec<Problem> {
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
fn check_fly_private(path: &Path, doc: &toml::Table) -> Vec<Problem> {
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
fn check_fly_health(path: &Path, doc: &toml::Table) -> Vec<Problem> {
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

fn check_base_dockerfile(repo: &Path) -> Vec<Problem> {
    let path = repo.join("Dockerfile");
    let Ok(text) = fs::read_to_string(&path) else {
        return vec![Problem::new(
            &path,
            "",
            "missing: the base image's Dockerfile",
        )];
    };
    let lines = dockerfile_lines(&text);
    let mut out = test_only_env_lines(&path, &lines);
    let last_entry = lines
        .iter()
        .rev()
        .find(|(_, l)| l.to_ascii_uppercase().starts_with("ENTRYPOINT"));
    if last_entry.map(|(_, l)| l.as_str()) != Some(ENTRYPOINT) {
        out.push(Problem::new(
            &path,
            last_entry
                .map(|(n, _)| format!("line {n}"))
                .unwrap_or_default(),
            format!("the base image's entrypoint must be `{ENTRYPOINT}`"),
        ));
    }
    let fly_signal = fs::read_to_string(repo.join("fly.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|d| {
            d.get("kill_signal")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        });
    let stop = lines
        .iter()
        .rev()
        .find(|(_, l)| l.to_ascii_uppercase().starts_with("STOPSIGNAL"));
    let stop_sig = stop
        .and_then(|(_, l)| l.split_whitespace().nth(1))
        .map(str::to_string);
    if stop_sig.is_none() || stop_sig != fly_signal {
        out.push(Problem::new(
            &path,
            stop.map(|(n, _)| format!("line {n}")).unwrap_or_default(),
            format!(
                "STOPSIGNAL {} must match fly.toml's kill_signal {}",
                stop_sig.unwrap_or_else(|| "(none)".into()),
                fly_signal.unwrap_or_else(|| "(none)".into())
            ),
        ));
    }
    out
}

/// The report as text: one line per problem, then a summary line.
pub fn to_text(r: &Report) -> String {
    let mut s = String::new();
    for p in &r.problems {
        s.push_str(&p.to_string());
        s.push('\n');
    }
    s.push_str(&format!(
        "check-config: {} Buddies, {} problem{}\n",
        r.buddies,
        r.problems.len(),
        if r.problems.len() == 1 { "" } else { "s" }
    ));
    s
}
