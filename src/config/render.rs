//! Rendering a Buddy's gateway config (`openclaw.json`; the architecture's
//! `clawdbot.json`): template + personal config, merged,
//! checked against the MyBuddy policy, `${VAR}`s substituted, token filled in.
//!
//! The pure part ([`prepare`], [`Prepared::substitute`]) is shared by the boot
//! (`supervisor run`), `supervisor render` and `supervisor check-config`, so a
//! Buddy that passes CI renders the same way when it boots.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::buddy::{self, BuddyDir};
use crate::config::jsonfile;
use crate::config::policy::{self, GATEWAY_DIR_VAR, STATE_DIR_VAR, SWARM_DIR_VAR};
use crate::config::problem::{PathSeg, Problem, Problems};
use crate::config::secrets::{self, Resolved, Substituted};
use crate::config::token::{self, AUTO_GENERATED, TokenSource};

/// The file the supervisor renders into the state dir and names in
/// `OPENCLAW_CONFIG_PATH`: the name OpenClaw itself uses.
pub const CONFIG_FILE_NAME: &str = "openclaw.json";
/// What older images rendered (the Clawdbot name); removed from a volume at
/// boot, since OpenClaw still finds a `clawdbot.json` in its state dir.
pub const OLD_CONFIG_FILE_NAME: &str = "clawdbot.json";
pub const DEFAULT_PORT: u16 = 18789;
/// Where the image installs the gateway and its plugins.
pub const IMAGE_GATEWAY_DIR: &str = "/opt/mybuddy/gateway";

/// Variables the renderer itself provides; never secrets an operator sets.
pub const BUILTIN_VARS: [&str; 4] = [
    AUTO_GENERATED,
    STATE_DIR_VAR,
    GATEWAY_DIR_VAR,
    SWARM_DIR_VAR,
];

/// The values of the renderer's own variables for one render.
#[derive(Debug, Clone, Copy)]
pub struct Builtins<'a> {
    /// `${MYBUDDY_STATE_DIR}`: the Buddy's volume.
    pub state_dir: &'a Path,
    /// `${MYBUDDY_GATEWAY_DIR}`: the gateway's install (plugins load from it).
    pub gateway_dir: &'a Path,
    /// `${MYBUDDY_SWARM_DIR}`: the swarm share (a Magician's spells).
    pub swarm_dir: &'a Path,
}

/// Where a Machine carries the template it was checked with, beside its
/// Buddy directory (`/opt/mybuddy/_machine/template.json` on a Machine:
/// see `fleet::machine`). The image's own template is only for a Buddy
/// whose Machine carries none (local images, Machines made before).
pub const MACHINE_TEMPLATE: &str = "_machine/template.json";

/// The template a Buddy renders with, beside its directory: the one its
/// Machine carries (`DIR/../_machine/template.json`) if there is one, else
/// `DIR/../_template/config.json` (a checkout's, or the image's).
pub fn default_template(buddy_dir: &Path) -> PathBuf {
    let carried = beside(buddy_dir).join(MACHINE_TEMPLATE);
    if carried.is_file() {
        return carried;
    }
    template_dir(buddy_dir).join(buddy::CONFIG_FILE)
}

/// The template directory beside a Buddy directory (`DIR/../_template`:
/// config.json and workspace/, a checkout's or the image's), which seeds
/// the share's `templates/_template`.
pub fn template_dir(buddy_dir: &Path) -> PathBuf {
    beside(buddy_dir).join("_template")
}

fn beside(buddy_dir: &Path) -> PathBuf {
    match buddy_dir.parent() {
        // `buddies/x` -> `buddies`; a bare `.` or `/` has no usable parent.
        Some(p) if buddy_dir.file_name().is_some() => p.to_path_buf(),
        _ => buddy_dir.join(".."),
    }
}

/// A merged config that passed the policy, before substitution.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub buddy: BuddyDir,
    pub template_path: PathBuf,
    pub personal_path: PathBuf,
    personal: Value,
    /// The overlay file and its content, when one was given.
    overlay: Option<(PathBuf, Value)>,
    pub merged: Value,
}

/// Loads both files and the identity, merges, and checks the policy. All
/// problems of all three files are reported together.
pub fn prepare(buddy_dir: &Path, template_path: &Path) -> Result<Prepared, Problems> {
    match prepare_all(buddy_dir, template_path) {
        (Some(p), problems) if problems.is_empty() => Ok(p),
        (_, problems) => Err(Problems::new(
            format!("Buddy {} does not render", buddy_dir.display()),
            problems,
        )),
    }
}

/// Like [`prepare`], but returns the merged config even when the policy
/// fails, so callers can go on and report substitution problems too.
pub fn prepare_all(buddy_dir: &Path, template_path: &Path) -> (Option<Prepared>, Vec<Problem>) {
    prepare_with_overlay(buddy_dir, template_path, None)
}

/// Like [`prepare_all`], with an RFC 7396 overlay applied after the personal
/// config and before the policy (`supervisor run --config-overlay`: tests
/// and offline runs point a Buddy at loopback stand-ins; the policy still
/// holds, so an overlay cannot make a Buddy public or unsafe).
pub fn prepare_with_overlay(
    buddy_dir: &Path,
    template_path: &Path,
    overlay_path: Option<&Path>,
) -> (Option<Prepared>, Vec<Problem>) {
    let mut problems = Vec::new();
    let buddy = buddy::load(buddy_dir)
        .map_err(|p| problems.extend(p.items))
        .ok();
    let personal_path = buddy_dir.join(buddy::CONFIG_FILE);
    let template = jsonfile::read_json_object(template_path)
        .map_err(|p| problems.push(p))
        .ok();
    let personal = jsonfile::read_json_object(&personal_path)
        .map_err(|p| problems.push(p))
        .ok();
    let overlay = overlay_path.and_then(|p| {
        jsonfile::read_json_object(p)
            .map(|v| (p.to_path_buf(), v))
            .map_err(|e| problems.push(e))
            .ok()
    });
    let (Some(buddy), Some(template), Some(personal)) = (buddy, template, personal) else {
        return (None, problems);
    };
    if overlay_path.is_some() && overlay.is_none() {
        return (None, problems);
    }
    let mut merged = template;
    // RFC 7396: objects merge recursively, the personal config wins, arrays
    // are replaced whole, null deletes.
    json_patch::merge(&mut merged, &personal);
    if let Some((_, o)) = &overlay {
        json_patch::merge(&mut merged, o);
    }
    let prepared = Prepared {
        buddy,
        template_path: template_path.to_path_buf(),
        personal_path,
        personal,
        overlay,
        merged,
    };
    problems.extend(policy::check(
        &prepared.merged,
        &prepared.buddy.identity,
        &|p: &[PathSeg]| prepared.source_of(p),
    ));
    (Some(prepared), problems)
}

/// Whether `v` holds `path` (an array holds every index: arrays merge whole).
fn holds(v: &Value, path: &[PathSeg]) -> bool {
    let mut v = v;
    for seg in path {
        match seg {
            PathSeg::Key(k) => match v.get(k.as_str()) {
                Some(n) => v = n,
                None => return false,
            },
            PathSeg::Index(_) => return true,
        }
    }
    true
}

impl Prepared {
    /// Which file a merged value came from: the overlay if it holds that
    /// path, else the personal config if it does (it wins the merge over
    /// the template), otherwise the template.
    pub fn source_of(&self, path: &[PathSeg]) -> PathBuf {
        if let Some((file, o)) = &self.overlay
            && holds(o, path)
        {
            return file.clone();
        }
        if holds(&self.personal, path) {
            self.personal_path.clone()
        } else {
            self.template_path.clone()
        }
    }

    /// The environment variables this Buddy needs from its operator: every
    /// reference except the ones the renderer provides.
    pub fn secret_vars(&self) -> BTreeSet<String> {
        secrets::referenced_vars(&self.merged)
            .into_iter()
            .filter(|v| !BUILTIN_VARS.contains(&v.as_str()))
            .collect()
    }

    /// Whether the config asks for the auto-generated gateway token.
    pub fn wants_generated_token(&self) -> bool {
        secrets::referenced_vars(&self.merged).contains(AUTO_GENERATED)
    }

    /// Substitutes every reference: `${AUTO_GENERATED}` from `token`, the
    /// renderer's paths from `builtins`, the rest from `env`.
    pub fn substitute(
        &self,
        builtins: Builtins<'_>,
        token: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Substituted, Problems> {
        let state = builtins.state_dir.to_string_lossy().into_owned();
        let gateway = builtins.gateway_dir.to_string_lossy().into_owned();
        let swarm = builtins.swarm_dir.to_string_lossy().into_owned();
        let lookup = |name: &str| -> Option<Resolved> {
            match name {
                AUTO_GENERATED => token.map(|t| Resolved {
                    value: t.to_string(),
                    secret: true,
                }),
                STATE_DIR_VAR => Some(Resolved {
                    value: state.clone(),
                    secret: false,
                }),
                GATEWAY_DIR_VAR => Some(Resolved {
                    value: gateway.clone(),
                    secret: false,
                }),
                SWARM_DIR_VAR => Some(Resolved {
                    value: swarm.clone(),
                    secret: false,
                }),
                other => env(other).map(|value| Resolved {
                    value,
                    secret: true,
                }),
            }
        };
        secrets::substitute(&self.merged, &lookup, &|p: &[PathSeg]| self.source_of(p)).map_err(
            |items| {
                Problems::new(
                    format!(
                        "Buddy {} is missing {} environment value{}",
                        self.buddy.dir.display(),
                        items.len(),
                        if items.len() == 1 { "" } else { "s" }
                    ),
                    items,
                )
            },
        )
    }
}

/// A string that must never be printed: Debug and Display show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(secrets::REDACTED)
    }
}

/// A fully rendered config, ready to write.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub prepared: Prepared,
    pub output: Substituted,
    pub token: Option<Secret>,
    pub token_source: Option<TokenSource>,
}

impl Rendered {
    /// The port the gateway listens on (`gateway.port`, else OpenClaw's default).
    pub fn port(&self) -> u16 {
        self.output
            .rendered
            .pointer("/gateway/port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(DEFAULT_PORT)
    }

    /// Turns Telegram and WhatsApp off in the output (local runs). The
    /// policy has already checked the Buddy's real channel settings.
    pub fn disable_channels(&mut self) {
        for out in [&mut self.output.rendered, &mut self.output.redacted] {
            if let Some(entries) = out
                .pointer_mut("/plugins/entries")
                .and_then(Value::as_object_mut)
            {
                for channel in ["telegram", "whatsapp"] {
                    entries.insert(channel.into(), serde_json::json!({ "enabled": false }));
                }
            }
        }
    }

    /// Overrides `gateway.port` in the output (a second Buddy on one host).
    pub fn set_port(&mut self, port: u16) {
        for out in [&mut self.output.rendered, &mut self.output.redacted] {
            if let Some(gw) = out.get_mut("gateway").and_then(Value::as_object_mut) {
                gw.insert("port".into(), Value::from(port));
            }
        }
    }

    pub fn to_json(&self) -> String {
        pretty(&self.output.rendered)
    }

    pub fn to_redacted_json(&self) -> String {
        pretty(&self.output.redacted)
    }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    Problems(#[from] Problems),
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error("cannot write {path}: {source} (is the directory writable and the disk not full?)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Options of a render for real (boot or `supervisor render`).
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub buddy_dir: PathBuf,
    pub template: PathBuf,
    pub state_dir: PathBuf,
    pub gateway_dir: PathBuf,
    pub swarm_dir: PathBuf,
    pub rotate_token: bool,
    /// `--config-overlay` (tests and offline runs only).
    pub overlay: Option<PathBuf>,
}

impl RenderOptions {
    fn builtins(&self) -> Builtins<'_> {
        Builtins {
            state_dir: &self.state_dir,
            gateway_dir: &self.gateway_dir,
            swarm_dir: &self.swarm_dir,
        }
    }
}

/// The whole render: prepare, obtain the token, substitute from `env`.
pub fn render(
    opts: &RenderOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Rendered, RenderError> {
    // Policy problems and missing variables are reported together, before the
    // token is touched, so a broken Buddy leaves no new state behind.
    let (prepared, mut problems) =
        prepare_with_overlay(&opts.buddy_dir, &opts.template, opts.overlay.as_deref());
    if let Some(p) = &prepared
        && let Err(e) = p.substitute(opts.builtins(), Some("probe"), env)
    {
        problems.extend(e.items);
    }
    let prepared = match prepared {
        Some(p) if problems.is_empty() => p,
        _ => {
            return Err(RenderError::Problems(Problems::new(
                format!("Buddy {} does not render", opts.buddy_dir.display()),
                problems,
            )));
        }
    };
    let (token, source) = if prepared.wants_generated_token() {
        let explicit = env(&prepared.buddy.identity.gateway_token_var());
        let (t, s) = token::obtain(&opts.state_dir, explicit, opts.rotate_token)?;
        (Some(t), Some(s))
    } else {
        (None, None)
    };
    let output = prepared.substitute(opts.builtins(), token.as_deref(), env)?;
    Ok(Rendered {
        prepared,
        output,
        token: token.map(Secret),
        token_source: source,
    })
}

/// Writes the rendered config atomically with mode 0600 (it holds secrets).
pub fn write_config(rendered: &Rendered, path: &Path) -> Result<(), RenderError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| RenderError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    }
    jsonfile::replace_derived(path, rendered.to_json().as_bytes(), 0o600).map_err(|source| {
        RenderError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The process environment as a lookup.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Problems from a failed render, for callers that report them as a list.
pub fn problems_of(err: &RenderError) -> Vec<Problem> {
    match err {
        RenderError::Problems(p) => p.items.clone(),
        _ => Vec::new(),
    }
}
