//! `supervisor status`: every Buddy of the swarm in one table, judged.
//!
//! Two sources, each for what it can tell: the registry (what each
//! supervisor says of its Buddy: its state and heartbeat, restarts, last
//! backup, the gateway's own readiness; any gateway can write it) and the
//! Fly Machines API (what Fly says of each Machine: its state, region,
//! checks and image; no gateway can touch it). Without an API token the
//! table says what it could not see, and judges on the registry alone.
//! A Buddy is healthy when nothing below finds a problem; the command's
//! exit code says whether all are, so cron or CI can alert on it.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::buddy::Status;
use crate::fleet::fly::{Client, Machine};
use crate::swarm::registry::{self, Entry, GatewayState, Registry, Seen};

/// A backup further behind than this is a problem (the alert's threshold).
pub const BACKUP_LAG_MAX: Duration = Duration::from_secs(600);
/// The base image whose newest digest the Machines are compared with.
pub const NEWEST_IMAGE: &str = "registry.fly.io/mybuddytalk-base:latest";

/// One Buddy's line.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: String,
    pub role: String,
    pub human: String,
    pub status: String,
    pub app: String,
    /// What Fly says of its Machine (None: not asked, or not found).
    pub machine: Option<MachineView>,
    /// The image version its supervisor reported.
    pub version: Option<String>,
    /// Whether that is the newest base image (None: unknown).
    pub newest: Option<bool>,
    /// The registry's state as a reader may believe it now.
    pub state: String,
    pub heartbeat_age_s: Option<u64>,
    pub restarts_24h: Option<u32>,
    /// The share's volumes and whether each is mounted (None: not said).
    pub mounts: Option<std::collections::BTreeMap<String, bool>>,
    pub backup_at: Option<String>,
    pub backup_lag_s: Option<u64>,
    /// `polling`, `failing` or None (not a Telegram Buddy, or not known).
    pub telegram: Option<String>,
    /// `linked`, `not linked` or None.
    pub whatsapp: Option<String>,
    pub healthy: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MachineView {
    pub id: String,
    pub state: String,
    pub region: String,
    /// (name, status): `passing`, `warning`, `critical`.
    pub checks: Vec<(String, String)>,
}

/// The whole table and what could not be seen.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub buddies: Vec<Row>,
    /// The newest base image's version (`sha256:` and 12 hex digits).
    pub newest_version: Option<String>,
    pub unseen: Vec<String>,
    pub healthy: bool,
}

/// What the Machines API says of one Buddy's app, or why it could not say.
pub type Machines = Result<Vec<Machine>, String>;

/// Gathers the report: the registry, and for each Buddy what `api` says
/// of its app's Machines (None: no API access, said in `unseen`).
pub fn gather(reg: &Registry, api: Option<&Client>, now: SystemTime) -> Report {
    let mut unseen = Vec::new();
    let newest_version = match api {
        None => {
            unseen.push("the Machines API was not asked (no FLY_API_TOKEN): Machine state, region, checks and the newest image are not shown".into());
            None
        }
        Some(c) => match c.pin(NEWEST_IMAGE) {
            Ok(pinned) => pinned.split_once("@").map(|(_, d)| short_version(d)),
            Err(e) => {
                unseen.push(format!("the newest image ({NEWEST_IMAGE}): {e}"));
                None
            }
        },
    };
    let mut buddies = Vec::new();
    for (slug, e) in &reg.buddies {
        let app = crate::fleet::apply::app_name(slug);
        let machines = api.map(|c| {
            c.machines_tagged(&app, crate::fleet::machine::META_BUDDY, slug)
                .map_err(|e| e.to_string())
        });
        if let Some(Err(why)) = &machines {
            unseen.push(format!("{}: {why}", e.id));
        }
        buddies.push(judge(e, &app, machines, newest_version.as_deref(), now));
    }
    let healthy = buddies.iter().all(|r| r.healthy);
    Report {
        buddies,
        newest_version,
        unseen,
        healthy,
    }
}

/// `sha256:` and the first 12 hex digits, as `MYBUDDY_IMAGE_VERSION` has it.
fn short_version(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

fn age(t: Option<&str>, now: SystemTime) -> Option<u64> {
    let t = humantime::parse_rfc3339(t?).ok()?;
    Some(now.duration_since(t).unwrap_or_default().as_secs())
}

/// One Buddy judged: every problem named.
pub fn judge(
    e: &Entry,
    app: &str,
    machines: Option<Machines>,
    newest: Option<&str>,
    now: SystemTime,
) -> Row {
    let mut problems = Vec::new();
    let planned = e.status == Status::Planned;
    let seen = registry::seen(e, now);
    match &seen {
        Seen::State(GatewayState::Running) => {}
        Seen::State(s) => problems.push(match &e.gateway {
            Some(g) if g.reason.is_some() => {
                format!("{s}: {}", g.reason.as_deref().unwrap_or_default())
            }
            Some(g) if g.last_exit.is_some() => {
                format!(
                    "{s} (last exit: {})",
                    g.last_exit.as_deref().unwrap_or_default()
                )
            }
            _ => s.to_string(),
        }),
        Seen::Unknown { since } => problems.push(format!("no heartbeat since {since}")),
        Seen::NeverBooted if planned => {}
        Seen::NeverBooted => problems.push("never booted".into()),
    }
    let machine = match machines {
        None | Some(Err(_)) => None,
        Some(Ok(list)) => {
            let m = list.into_iter().next();
            match &m {
                None if !planned => problems.push(format!("no Machine in {app}")),
                None => {}
                Some(m) => {
                    if m.state != "started" {
                        problems.push(format!("Machine {} is {}", m.id, m.state));
                    }
                    for (name, status) in &m.checks {
                        if status != "passing" {
                            problems.push(format!("check {name} {status}"));
                        }
                    }
                    if m.state == "started" && m.checks.is_empty() {
                        problems.push("no health check reported".into());
                    }
                }
            }
            m.map(|m| MachineView {
                region: m.region,
                id: m.id,
                state: m.state,
                checks: m.checks,
            })
        }
    };
    for (v, up) in e.mounts.iter().flatten() {
        if !up && matches!(seen, Seen::State(s) if !s.is_final()) {
            problems.push(format!("share volume {v} not mounted"));
        }
    }
    let backup_lag_s = age(e.backup_at.as_deref(), now);
    if let Some(lag) = backup_lag_s
        && lag > BACKUP_LAG_MAX.as_secs()
        && matches!(seen, Seen::State(GatewayState::Running))
    {
        problems.push(format!("backup {} min behind", lag / 60));
    }
    let failing = |c: &str| e.ready.as_ref().map(|r| r.failing.iter().any(|f| f == c));
    let telegram = e
        .channels
        .telegram
        .then(|| failing("telegram"))
        .flatten()
        .map(|f| if f { "failing" } else { "polling" }.to_string());
    let whatsapp = e
        .channels
        .whatsapp
        .then(|| failing("whatsapp"))
        .flatten()
        .map(|f| if f { "not linked" } else { "linked" }.to_string());
    if telegram.as_deref() == Some("failing") {
        problems.push("Telegram not polling".into());
    }
    if whatsapp.as_deref() == Some("not linked") {
        problems.push("WhatsApp not linked".into());
    }
    Row {
        id: e.id.clone(),
        role: e.role.to_string(),
        human: e.human.clone(),
        status: e.status.to_string(),
        app: app.to_string(),
        machine,
        version: e.version.clone(),
        newest: newest.zip(e.version.as_deref()).map(|(n, v)| n == v),
        state: seen.to_string(),
        heartbeat_age_s: age(e.seen_at.as_deref(), now),
        restarts_24h: e.restarts_24h,
        mounts: e.mounts.clone(),
        backup_at: e.backup_at.clone(),
        backup_lag_s,
        telegram,
        whatsapp,
        healthy: problems.is_empty(),
        problems,
    }
}

fn secs(s: u64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// The report as a table, what could not be seen below it.
pub fn table(r: &Report) -> String {
    let head = [
        "ID", "HUMAN", "ROLE", "APP", "MACHINE", "CHECKS", "IMAGE", "STATE", "BEAT", "RESTARTS",
        "SHARE", "BACKUP", "CHANNELS", "HEALTH",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for b in &r.buddies {
        let machine = b
            .machine
            .as_ref()
            .map_or("?".into(), |m| format!("{} {}", m.state, m.region));
        let checks = b.machine.as_ref().map_or("?".into(), |m| {
            if m.checks.is_empty() {
                "-".into()
            } else {
                m.checks
                    .iter()
                    .map(|(_, s)| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        });
        let image = match (&b.version, b.newest) {
            (None, _) => "-".into(),
            (Some(v), Some(true)) => format!("{v} (newest)"),
            (Some(v), Some(false)) => format!("{v} (old)"),
            (Some(v), None) => v.clone(),
        };
        let channels: Vec<String> = [
            b.telegram.as_ref().map(|t| format!("telegram {t}")),
            b.whatsapp.as_ref().map(|w| format!("whatsapp {w}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        rows.push(vec![
            b.id.clone(),
            b.human.clone(),
            b.role.clone(),
            b.app.clone(),
            machine,
            checks,
            image,
            b.state.clone(),
            b.heartbeat_age_s.map_or("-".into(), secs),
            b.restarts_24h.map_or("-".into(), |n| n.to_string()),
            b.mounts.as_ref().map_or("-".into(), |m| {
                m.iter()
                    .map(|(v, up)| if *up { v.clone() } else { format!("{v} DOWN") })
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            b.backup_lag_s
                .map_or("-".into(), |s| format!("{} ago", secs(s))),
            if channels.is_empty() {
                "-".into()
            } else {
                channels.join(", ")
            },
            if b.healthy {
                "ok".into()
            } else {
                b.problems.join("; ")
            },
        ]);
    }
    let mut out = registry::aligned(&rows);
    for u in &r.unseen {
        out.push_str(&format!("not seen: {u}\n"));
    }
    out
}
