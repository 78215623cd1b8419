//! The MyBuddy policy: what every Buddy's merged config must say, checked
//! after the merge and before any secret is substituted (so messages may show
//! values). Each rule comes from the architecture's "MyBuddy vs Standard
//! Clawdbot" table or from what a Buddy needs inside a container; every
//! violation is reported with its JSON path.

use serde_json::Value;

use crate::buddy::Identity;
use crate::config::problem::{Problem, parse_json_path};
use crate::config::secrets::Provenance;

pub const MODEL_PREFIX: &str = "google/gemini-";
/// The render-provided variable naming the Buddy's persistent state dir.
pub const STATE_DIR_VAR: &str = "MYBUDDY_STATE_DIR";
/// The render-provided variable naming the gateway's install in the image.
pub const GATEWAY_DIR_VAR: &str = "MYBUDDY_GATEWAY_DIR";
/// The render-provided variable naming the swarm share (`/mnt/swarm`).
pub const SWARM_DIR_VAR: &str = "MYBUDDY_SWARM_DIR";
/// Plugins MyBuddy removes; `moltbook` is replaced by MyBuddyBook.
pub const FORBIDDEN_PLUGINS: [&str; 3] = ["beekeeper", "swarm-manager", "moltbook"];

fn get<'a>(config: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(config, |v, k| v.get(k))
}

/// Checks `config` (merged, not yet substituted) for `identity`: every rule,
/// every violation, in the order docs/configuration.md lists them.
pub fn check(config: &Value, identity: &Identity, provenance: &Provenance<'_>) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut fail = |path: &str, msg: String| {
        out.push(Problem::new(&provenance(&parse_json_path(path)), path, msg));
    };
    env(config, &mut fail);
    models(config, &mut fail);
    removed_plugins(config, &mut fail);
    plugin_paths(config, &mut fail);
    channels(config, identity, &mut fail);
    skills(config, identity, &mut fail);
    gateway(config, &mut fail);
    container(config, &mut fail);
    tools(config, &mut fail);
    supervisor_only_vars(config, "", &mut fail);
    out
}

/// The share's credentials belong to the mount processes: a `${VAR}` naming
/// one would put it into the gateway's config and environment.
fn supervisor_only_vars(v: &Value, path: &str, fail: &mut impl FnMut(&str, String)) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::String(s) => {
            for name in crate::config::secrets::referenced_vars(v) {
                if crate::config::secrets::is_share_setting(&name) {
                    fail(
                        path,
                        format!(
                            "${{{name}}} is the swarm share's setting: it goes to the share's mount processes only, never to a gateway; remove it ({} chars here)",
                            s.len()
                        ),
                    );
                }
            }
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| supervisor_only_vars(x, &format!("{path}[{i}]"), fail)),
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| supervisor_only_vars(x, &join(k), fail)),
        _ => {}
    }
}

/// Models Google shut down, which OpenClaw refuses, and what replaces them.
pub const SHUT_DOWN_MODELS: [(&str, &str); 1] = [(
    "google/gemini-3-pro-preview",
    "google/gemini-3.1-pro-preview",
)];

/// OpenClaw takes variables under `env.vars`; a string directly under `env`
/// (the Clawdbot shape) is rejected by the gateway.
fn env(config: &Value, fail: &mut impl FnMut(&str, String)) {
    if let Some(Value::Object(env)) = get(config, "env") {
        for (k, v) in env {
            if v.is_string() {
                fail(
                    &format!("env.{k}"),
                    format!(
                        "variables go under env.vars: move this to env.vars.{k} (OpenClaw rejects strings directly under env)"
                    ),
                );
            }
        }
    }
}

/// The gateway's plugins come from the image only: code on the volume or
/// the share could be written by an agent's own tools. And only those a
/// Buddy uses load (`plugins.allow`): less code within a prompt-injected
/// agent's reach, a faster start, less memory.
fn plugin_paths(config: &Value, fail: &mut impl FnMut(&str, String)) {
    match get(config, "plugins.allow") {
        Some(Value::Array(list))
            if !list.is_empty() && list.iter().all(|p| p.as_str().is_some_and(|p| p != "*")) =>
        {
            for channel in ["telegram", "whatsapp"] {
                let on = get(config, &format!("plugins.entries.{channel}.enabled"))
                    == Some(&Value::Bool(true));
                if on && !list.iter().any(|p| p == channel) {
                    fail(
                        "plugins.allow",
                        format!(
                            "{channel} is enabled but not allowed: add \"{channel}\" to plugins.allow"
                        ),
                    );
                }
            }
        }
        other => fail(
            "plugins.allow",
            format!(
                "must list the plugins a Buddy loads (no \"*\"): the template's list, found {}",
                show(other)
            ),
        ),
    }
    if let Some(Value::Array(items)) = get(config, "plugins.load.paths") {
        let prefix = format!("${{{GATEWAY_DIR_VAR}}}/");
        for (i, item) in items.iter().enumerate() {
            if !item.as_str().is_some_and(|s| s.starts_with(&prefix)) {
                fail(
                    &format!("plugins.load.paths[{i}]"),
                    format!(
                        "plugins load from the image only (\"{prefix}node_modules/...\", installed by images/gateway/package.json), found {}",
                        show(Some(item))
                    ),
                );
            }
        }
    }
}

fn model_problem(m: &str) -> Option<String> {
    if let Some((_, new)) = SHUT_DOWN_MODELS.iter().find(|(old, _)| *old == m) {
        return Some(format!(
            "{m} was shut down and the gateway refuses it; use {new}"
        ));
    }
    (!m.starts_with(MODEL_PREFIX))
        .then(|| format!("must be a Gemini model ({MODEL_PREFIX}...), found \"{m}\""))
}

/// The swarm runs on the current Gemini family: primary and every fallback.
fn models(config: &Value, fail: &mut impl FnMut(&str, String)) {
    match get(config, "agents.defaults.model.primary") {
        Some(Value::String(m)) => {
            if let Some(msg) = model_problem(m) {
                fail("agents.defaults.model.primary", msg);
            }
        }
        other => fail(
            "agents.defaults.model.primary",
            format!(
                "must be a Gemini model ({MODEL_PREFIX}...), found {}",
                show(other)
            ),
        ),
    }
    if let Some(Value::Array(list)) = get(config, "agents.defaults.model.fallbacks") {
        for (i, m) in list.iter().enumerate() {
            if let Some(msg) = m.as_str().and_then(model_problem) {
                fail(&format!("agents.defaults.model.fallbacks[{i}]"), msg);
            }
        }
    }
    match get(config, "agents.defaults.model.fallbacks") {
        Some(Value::Array(list)) if !list.is_empty() && list.iter().all(Value::is_string) => {}
        other => fail(
            "agents.defaults.model.fallbacks",
            format!(
                "must be a non-empty list of Gemini models ({MODEL_PREFIX}...), found {}",
                show(other)
            ),
        ),
    }
}

/// The plugins MyBuddy removes, wherever a config could name them.
fn removed_plugins(config: &Value, fail: &mut impl FnMut(&str, String)) {
    if let Some(Value::Object(entries)) = get(config, "plugins.entries") {
        for name in FORBIDDEN_PLUGINS {
            if entries.contains_key(name) {
                fail(
                    &format!("plugins.entries.{name}"),
                    format!(
                        "the {name} plugin is not part of MyBuddy{}; remove this entry",
                        if name == "moltbook" {
                            " (Buddies share knowledge through MyBuddyBook)"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
    }
    for list in ["plugins.allow", "plugins.load.paths"] {
        if let Some(Value::Array(items)) = get(config, list) {
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = item.as_str()
                    && let Some(bad) = FORBIDDEN_PLUGINS.iter().find(|p| s.contains(*p))
                {
                    fail(
                        &format!("{list}[{i}]"),
                        format!("the {bad} plugin is not part of MyBuddy; remove it"),
                    );
                }
            }
        }
    }
}

/// Channels follow the identity: a plugin is on exactly when buddy.json
/// says so, and explicitly off otherwise (a configured channel whose plugin
/// is not explicitly disabled makes the gateway rewrite the config).
fn channels(config: &Value, identity: &Identity, fail: &mut impl FnMut(&str, String)) {
    for (channel, wanted) in [
        ("telegram", identity.channels.telegram),
        ("whatsapp", identity.channels.whatsapp),
    ] {
        let path = format!("plugins.entries.{channel}.enabled");
        match get(config, &path) {
            Some(Value::Bool(b)) if *b == wanted => {}
            other => fail(
                &path,
                format!(
                    "must be {wanted} because buddy.json says channels.{channel} is {wanted}, found {}",
                    show(other)
                ),
            ),
        }
        let section = format!("channels.{channel}");
        if !wanted && get(config, &section).is_some() {
            fail(
                &section,
                format!(
                    "{channel} is configured but buddy.json does not enable it; remove the section or enable the channel"
                ),
            );
        }
    }
    if identity.channels.telegram {
        match get(config, "channels.telegram.botToken") {
            Some(Value::String(s)) if !s.is_empty() => {}
            other => fail(
                "channels.telegram.botToken",
                format!(
                    "a Telegram Buddy needs its bot token (a ${{VAR}} reference), found {}",
                    show(other)
                ),
            ),
        }
    }
    if identity.channels.whatsapp
        && get(config, "channels.whatsapp.dmPolicy").and_then(Value::as_str) == Some("allowlist")
    {
        let ok = matches!(get(config, "channels.whatsapp.allowFrom"),
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty())));
        if !ok {
            fail(
                "channels.whatsapp.allowFrom",
                "dmPolicy \"allowlist\" needs a non-empty allowFrom list (the Human's phone as a ${VAR} reference)".into(),
            );
        }
    }
}

/// Skills come from the image, the workspace, and for a Magician the
/// SpellBook's spells; a Buddy-role gateway is never pointed at the SpellBook.
fn skills(config: &Value, identity: &Identity, fail: &mut impl FnMut(&str, String)) {
    let spells = format!("${{{SWARM_DIR_VAR}}}/spellbook/spells");
    let dirs: Vec<&str> = match get(config, "skills.load.extraDirs") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let magician = identity.role == crate::buddy::Role::Magician;
    for (i, d) in dirs.iter().enumerate() {
        if d.contains("spellbook") && !magician {
            fail(
                &format!("skills.load.extraDirs[{i}]"),
                "only a Magician's gateway loads the SpellBook's spells; remove it (its gateway cannot read the SpellBook anyway)".into(),
            );
        }
    }
    if magician && !dirs.contains(&spells.as_str()) {
        fail(
            "skills.load.extraDirs",
            format!("a Magician's spells are skills: list \"{spells}\""),
        );
    }
}

/// The gateway: local mode, token auth (a lan bind refuses to start
/// without it), private to the swarm.
fn gateway(config: &Value, fail: &mut impl FnMut(&str, String)) {
    match get(config, "gateway.mode") {
        Some(Value::String(m)) if m == "local" => {}
        other => fail(
            "gateway.mode",
            format!("must be \"local\", found {}", show(other)),
        ),
    }
    match get(config, "gateway.auth.token") {
        Some(Value::String(t)) if !t.is_empty() => {}
        other => fail(
            "gateway.auth.token",
            format!(
                "must be set (\"${{AUTO_GENERATED}}\" or a ${{VAR}} secret): a gateway bound to lan refuses to start without it; found {}",
                show(other)
            ),
        ),
    }
    private_gateway(config, &mut *fail);
    if let Some(port) = get(config, "gateway.port")
        && !port.as_u64().is_some_and(|p| (1..=65535).contains(&p))
    {
        fail(
            "gateway.port",
            format!("must be a port number 1-65535, found {}", show(Some(port))),
        );
    }
}

/// What the operator's browser sends as Origin through `fly proxy 18789`.
pub const LOCAL_ORIGINS: [&str; 2] = ["http://localhost:", "http://127.0.0.1:"];

/// Private to the swarm: reachable on Fly's private network (a `lan` bind,
/// behind Flycast) and through `fly proxy`, never published. Token auth with
/// brute-force limits; the Control UI accepts only the operator's local
/// browser (the security audit calls a missing allowlist critical).
fn private_gateway(config: &Value, fail: &mut impl FnMut(&str, String)) {
    match get(config, "gateway.bind") {
        Some(Value::String(b)) if b == "lan" => {}
        other => fail(
            "gateway.bind",
            format!(
                "must be \"lan\": Fly's private network (Flycast) and `fly proxy` reach the gateway on the Machine's own addresses, nothing else does; found {}",
                show(other)
            ),
        ),
    }
    match get(config, "gateway.auth.mode") {
        Some(Value::String(m)) if m == "token" => {}
        other => fail(
            "gateway.auth.mode",
            format!("must be \"token\", found {}", show(other)),
        ),
    }
    if !matches!(
        get(config, "gateway.auth.rateLimit"),
        Some(Value::Object(_))
    ) {
        fail(
            "gateway.auth.rateLimit",
            "must be set (maxAttempts, windowMs, lockoutMs): failed token attempts are locked out"
                .into(),
        );
    }
    match get(config, "gateway.controlUi.allowedOrigins") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, o) in list.iter().enumerate() {
                let local = o
                    .as_str()
                    .is_some_and(|o| LOCAL_ORIGINS.iter().any(|p| o.starts_with(p)));
                if !local {
                    fail(
                        &format!("gateway.controlUi.allowedOrigins[{i}]"),
                        format!(
                            "only the operator's browser through `fly proxy` may open the Control UI (http://localhost:PORT or http://127.0.0.1:PORT); a public origin makes the Buddy public, found {}",
                            show(Some(o))
                        ),
                    );
                }
            }
        }
        other => fail(
            "gateway.controlUi.allowedOrigins",
            format!(
                "must list the local origins `fly proxy` gives the operator ([\"http://localhost:18789\", \"http://127.0.0.1:18789\"]); found {}",
                show(other)
            ),
        ),
    }
    if let Some(Value::String(m)) = get(config, "gateway.tailscale.mode")
        && m != "off"
    {
        fail(
            "gateway.tailscale.mode",
            format!(
                "must be \"off\" (or absent): Tailscale serve/funnel would publish the gateway outside the swarm, found \"{m}\""
            ),
        );
    }
}

/// What a container needs: state on the volume, no start-up update check.
fn container(config: &Value, fail: &mut impl FnMut(&str, String)) {
    for path in ["agents.defaults.workspace", "logging.file"] {
        match get(config, path) {
            Some(Value::String(p)) if p.starts_with(&format!("${{{STATE_DIR_VAR}}}/")) => {}
            other => fail(
                path,
                format!(
                    "must live on the Buddy's persistent state (\"${{{STATE_DIR_VAR}}}/...\"): the root filesystem is reset on every restart; found {}",
                    show(other)
                ),
            ),
        }
    }
    for path in ["update.checkOnStart", "models.catalogRefresh.enabled"] {
        match get(config, path) {
            Some(Value::Bool(false)) => {}
            other => fail(
                path,
                format!(
                    "must be false: a Buddy's gateway and its model catalog are pinned by its image (no start-up calls home); found {}",
                    show(other)
                ),
            ),
        }
    }
}

/// The agent's tools are the ones its workspace describes (AGENTS.md: `read`,
/// `write`, the shell `exec`): no code mode, which OpenClaw turns on by
/// default for Gemini models and which replaces them with a JavaScript
/// `exec` run in the gateway's own process (node:vm, no isolation).
fn tools(config: &Value, fail: &mut impl FnMut(&str, String)) {
    let off = match get(config, "tools.codeMode") {
        Some(Value::Bool(false)) => true,
        Some(Value::Object(o)) => matches!(o.get("enabled"), None | Some(Value::Bool(false))),
        _ => false,
    };
    if !off {
        fail(
            "tools.codeMode",
            format!(
                "must be false: the Buddy's tools are read, write and the shell exec its AGENTS.md describes (absent means \"auto\", on for Gemini); found {}",
                show(get(config, "tools.codeMode"))
            ),
        );
    }
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "nothing".into(),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 80 {
                format!("{}...", &s[..s.floor_char_boundary(77)])
            } else {
                s
            }
        }
    }
}
