//! What a supervisor says about its Buddy in the registry: each change of
//! its life (booting, running, restarting, crash-looping, share degraded,
//! stopping, stopped, refused) and a heartbeat, so that a reader can tell a
//! live entry from one whose Machine died without a word.
//!
//! Every write goes through the registry writer thread ([`Reporter`]): the
//! loop never waits on the share or on a lock a gateway can hold. Each
//! write stamps `seen_at`; between changes a heartbeat does, every
//! `heartbeat_s`. A reader that finds an entry silent for
//! [`registry::STALE_BEATS`] heartbeats says `unknown since …`
//! ([`registry::seen`]).
//!
//! Only the deployed Machine writes its Buddy's entry (see [`claim`]): a
//! `run-local`, an offline run or a test (no `FLY_MACHINE_ID`), or a second
//! Machine while the entry's own still heartbeats, leaves the entry alone
//! and says so once. Its truth is its own log; an entry that mixed two
//! runs of one Buddy would tell the operator nothing.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::registry::{self, Entry, GatewayHealth, GatewayState, Readiness, Registry, Seen};
use super::reporter::{Change, Done, Reporter};
use crate::buddy::{Identity, Status};

/// The default heartbeat (`MYBUDDY_HEARTBEAT`).
pub const HEARTBEAT: Duration = Duration::from_secs(60);
/// How often a gateway that does not listen yet is asked (a connect to its
/// port on loopback: refused or accepted at once).
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Who writes: this supervisor's Buddy, on which Machine, at which version.
struct Me {
    identity: Identity,
    /// `FLY_MACHINE_ID`: None for a run off Fly.
    machine: Option<String>,
    version: String,
    heartbeat: Duration,
    /// Whether the refusal to write the entry was said (it is, once).
    apart_said: AtomicBool,
    /// What every write carries besides the state.
    extras: Mutex<Extras>,
}

/// Besides the state: the restarts of the last day, the last backup, the
/// gateway's own readiness. Held a moment at a time, never across I/O.
#[derive(Default)]
struct Extras {
    restarts: VecDeque<SystemTime>,
    backup_at: Option<SystemTime>,
    ready: Option<Readiness>,
    mounts: Option<std::collections::BTreeMap<String, bool>>,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Me {
    fn from_env(identity: &Identity, heartbeat: Duration) -> Me {
        Me {
            identity: identity.clone(),
            machine: std::env::var("FLY_MACHINE_ID")
                .ok()
                .filter(|m| !m.is_empty()),
            version: std::env::var("MYBUDDY_IMAGE_VERSION")
                .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_string()),
            heartbeat,
            apart_said: AtomicBool::new(false),
            extras: Mutex::new(Extras::default()),
        }
    }

    fn extras(&self) -> std::sync::MutexGuard<'_, Extras> {
        self.extras.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change to this Buddy's entry (made when missing), if this run may
    /// write it; `f` says what it did, None for a heartbeat (not logged).
    fn change(self: &Arc<Me>, f: impl Fn(&mut Entry) -> Option<Done> + Send + 'static) -> Change {
        let me = self.clone();
        Box::new(move |reg: &mut Registry| {
            let slug = me.identity.slug();
            match claim(
                reg.buddies.get(&slug),
                me.machine.as_deref(),
                SystemTime::now(),
            ) {
                Claim::Apart(why) => {
                    if !me.apart_said.swap(true, Ordering::Relaxed) {
                        warn!(id = %me.identity.id(), "registry: this run leaves the entry alone: {why}");
                    }
                    return Ok(None);
                }
                Claim::TakeOver(why) => {
                    warn!(id = %me.identity.id(), "registry: this Machine takes the entry over: {why}");
                    let status = reg.buddies.get(&slug).map(|e| e.status);
                    let mut fresh = Entry::from_identity(&me.identity);
                    if let Some(s) = status {
                        fresh.status = s;
                    }
                    reg.buddies.insert(slug.clone(), fresh);
                }
                Claim::Ours => {}
            }
            let e = reg
                .buddies
                .entry(slug)
                .or_insert_with(|| Entry::from_identity(&me.identity));
            e.machine = me.machine.clone();
            e.seen_at = Some(registry::now_rfc3339());
            e.heartbeat_s = Some(me.heartbeat.as_secs().max(1));
            {
                let mut x = me.extras();
                let now = SystemTime::now();
                while x
                    .restarts
                    .front()
                    .is_some_and(|t| now.duration_since(*t).unwrap_or_default() > DAY)
                {
                    x.restarts.pop_front();
                }
                e.restarts_24h = Some(x.restarts.len() as u32);
                e.backup_at = x
                    .backup_at
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string());
                e.ready = x.ready.clone();
                e.mounts = x.mounts.clone();
            }
            Ok(f(e))
        })
    }
}

/// Whether this run may write its Buddy's entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    Ours,
    /// Another Machine's entry, but that Machine is gone: why.
    TakeOver(String),
    /// Not ours to write: why.
    Apart(String),
}

/// The rule: an entry with no Machine is anyone's (never deployed, or only
/// run locally); a deployed entry is its Machine's. A run with no Machine
/// id never writes a deployed entry. Another Machine (a replacement after
/// a lost host, a migration) takes it over only once the entry's own
/// Machine has stopped or gone silent, so two live Machines of one Buddy
/// do not overwrite each other's truth every minute.
pub fn claim(existing: Option<&Entry>, machine: Option<&str>, now: SystemTime) -> Claim {
    let Some(e) = existing else {
        return Claim::Ours;
    };
    let Some(theirs) = e.machine.as_deref() else {
        return Claim::Ours;
    };
    if machine == Some(theirs) {
        return Claim::Ours;
    }
    let seen = registry::seen(e, now);
    let Some(mine) = machine else {
        return Claim::Apart(format!(
            "{} is deployed as Machine {theirs} ({seen}); this run has no FLY_MACHINE_ID (a local, offline or test run) and never writes a deployed Buddy's entry",
            e.id
        ));
    };
    match seen {
        Seen::State(s) if !s.is_final() => Claim::Apart(format!(
            "{} is deployed as Machine {theirs}, still heartbeating ({s}); this is Machine {mine}: two Machines of one Buddy? This one is recorded once {theirs} stops or goes silent",
            e.id
        )),
        _ => Claim::TakeOver(format!("Machine {theirs} is {seen}; now Machine {mine}")),
    }
}

/// The supervisor's side: what it last said, when the next heartbeat is
/// due, and whether the gateway listens yet.
pub struct Presence {
    reporter: Reporter,
    me: Arc<Me>,
    next_beat: Instant,
    /// The gateway's port on loopback, asked while it boots (None: a
    /// `-- CMD` child, running once started).
    port: Option<u16>,
    probe_at: Option<Instant>,
    state: GatewayState,
    /// The share could not be brought back: whatever runs, runs degraded.
    degraded: bool,
}

impl Presence {
    /// Starts the registry writer for `book` and registers this Buddy:
    /// `booting` (its gateway has just started), `mounts` the share's
    /// volumes mounted (none: a directory someone else mounts).
    pub fn start(
        book: PathBuf,
        identity: &Identity,
        port: Option<u16>,
        heartbeat: Duration,
        mounts: &[&str],
    ) -> std::io::Result<Presence> {
        let reporter = Reporter::start(book)?;
        let me = Arc::new(Me::from_env(identity, heartbeat));
        if !mounts.is_empty() {
            me.extras().mounts = Some(mounts.iter().map(|v| (v.to_string(), true)).collect());
        }
        reporter.send("register", register(&me));
        if let Some(port) = port {
            watch_readiness(me.clone(), port, heartbeat.min(READY_EVERY));
        }
        Ok(Presence {
            reporter,
            next_beat: Instant::now() + heartbeat,
            probe_at: Some(Instant::now()),
            port,
            me,
            state: GatewayState::Booting,
            degraded: false,
        })
    }

    /// Writes `state` (with what the gateway last did) when it differs
    /// from what was said, or when `always`.
    fn set(&mut self, state: GatewayState, exits: Option<u32>, last_exit: Option<String>) {
        let state = match state {
            GatewayState::Booting | GatewayState::Running if self.degraded => {
                GatewayState::ShareDegraded
            }
            s => s,
        };
        if state == self.state && last_exit.is_none() {
            return;
        }
        self.state = state;
        let mut health = GatewayHealth::since_now(state, exits);
        health.last_exit = last_exit.as_deref().map(registry::one_line);
        self.send("state", health, false);
    }

    fn send(&mut self, what: &'static str, health: GatewayHealth, keep_since: bool) {
        crate::health::metrics::metrics().state(&health.state.to_string());
        self.next_beat = Instant::now() + self.me.heartbeat;
        self.reporter.send(
            what,
            self.me.change(move |e| {
                let mut h = health.clone();
                if let Some(old) = &e.gateway {
                    // A crash loop's next exit keeps the loop's start.
                    if keep_since && old.state == h.state {
                        h.since = old.since.clone();
                    }
                    // How the gateway last ended stays said until it ends again.
                    if h.last_exit.is_none() {
                        h.last_exit = old.last_exit.clone();
                    }
                }
                let state = h.state;
                e.gateway = Some(h);
                Some(Done {
                    message: "state recorded in the registry",
                    fields: vec![("state", state.to_string())],
                })
            }),
        );
    }

    /// The gateway (re)started: it boots until it listens.
    pub fn started(&mut self) {
        if self.state != GatewayState::CrashLooping {
            let s = if self.state == GatewayState::Restarting {
                GatewayState::Restarting
            } else {
                GatewayState::Booting
            };
            self.set(s, None, None);
        }
        self.probe_at = Some(Instant::now());
    }

    /// It exited and is restarted after a backoff.
    pub fn restarting(&mut self, last_exit: String) {
        self.probe_at = None;
        self.me.extras().restarts.push_back(SystemTime::now());
        if self.state == GatewayState::CrashLooping {
            return;
        }
        self.set(GatewayState::Restarting, None, Some(last_exit));
    }

    /// It keeps exiting: `exits` in a row, the last one `last_exit`.
    pub fn crash_looping(&mut self, exits: u32, last_exit: String) {
        self.probe_at = None;
        self.me.extras().restarts.push_back(SystemTime::now());
        self.state = GatewayState::CrashLooping;
        let mut health = GatewayHealth::since_now(GatewayState::CrashLooping, Some(exits));
        health.last_exit = Some(registry::one_line(&last_exit));
        self.send("state", health, true);
    }

    /// A share volume is mounted (true) or its mount is gone (said at the
    /// next write).
    pub fn mount(&mut self, volume: &str, up: bool) {
        self.me
            .extras()
            .mounts
            .get_or_insert_with(Default::default)
            .insert(volume.to_string(), up);
    }

    /// The state as of `at` is in the backup (said at the next write).
    pub fn backed_up(&mut self, at: Option<SystemTime>) {
        self.me.extras().backup_at = at;
    }

    /// It ran the healthy interval after a crash loop of `exits`.
    pub fn recovered(&mut self, exits: u32) {
        self.set(GatewayState::Running, Some(exits), None);
    }

    /// The share is gone and could not be brought back (true), or is back.
    pub fn share_degraded(&mut self, degraded: bool) {
        if self.degraded == degraded {
            return;
        }
        self.degraded = degraded;
        if degraded {
            self.set(GatewayState::ShareDegraded, None, None);
        } else {
            // The gateway is restarted on the share: it boots again.
            self.set(GatewayState::Booting, None, None);
        }
    }

    /// A stop was asked for.
    pub fn stopping(&mut self, why: &str) {
        self.probe_at = None;
        let mut health = GatewayHealth::since_now(GatewayState::Stopping, None);
        health.reason = Some(registry::one_line(why));
        self.state = GatewayState::Stopping;
        self.send("state", health, false);
    }

    /// The supervisor exits: `stopped` and why, written before it does
    /// (waiting at most `wait` for the share).
    pub fn stopped(&mut self, why: &str, last_exit: Option<String>, wait: Duration) {
        let mut health = GatewayHealth::since_now(GatewayState::Stopped, None);
        health.reason = Some(registry::one_line(why));
        health.last_exit = last_exit.as_deref().map(registry::one_line);
        self.state = GatewayState::Stopped;
        self.send("state", health, false);
        self.reporter.flush(wait);
    }

    /// What the loop waits for next: a heartbeat, a look at the port.
    pub fn next_tick(&self) -> Option<Instant> {
        let beat = (!self.state.is_final()).then_some(self.next_beat);
        [beat, self.probe_at].into_iter().flatten().min()
    }

    /// Whatever is due: the gateway listens now (running), a heartbeat.
    pub fn tick(&mut self) {
        let now = Instant::now();
        if self.probe_at.is_some_and(|t| now >= t) {
            if self.listens() {
                self.probe_at = None;
                if let Some(port) = self.port {
                    info!(port, "gateway listening");
                }
                if matches!(self.state, GatewayState::Booting | GatewayState::Restarting) {
                    self.set(GatewayState::Running, None, None);
                }
            } else {
                self.probe_at = Some(now + PROBE_EVERY);
            }
        }
        if now >= self.next_beat && !self.state.is_final() {
            self.next_beat = now + self.me.heartbeat;
            // Only the latest heartbeat matters: one pending is enough.
            self.reporter
                .send_latest("heartbeat", self.me.change(|_| None));
        }
    }

    /// Whether the gateway listens (a `-- CMD` child: once started).
    fn listens(&self) -> bool {
        self.port.is_none_or(crate::pid1::sys::port_answers)
    }

    /// Before the exit: what is still pending, within `wait`.
    pub fn flush(&self, wait: Duration) {
        self.reporter.flush(wait);
    }
}

/// How often the gateway's readiness is asked (at most: the heartbeat).
const READY_EVERY: Duration = Duration::from_secs(30);

/// Asks the gateway's `/readyz` every `every`, on a thread of its own (an
/// HTTP call the loop must never wait on), for the next registry write:
/// which channels it says are failing (Telegram not polling, WhatsApp not
/// linked). No answer: not known (the gateway is down or still booting).
fn watch_readiness(me: Arc<Me>, port: u16, every: Duration) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let spawned = std::thread::Builder::new()
        .name("readiness".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let ready = agent
                    .get(&url)
                    .call()
                    .ok()
                    .and_then(|mut r| {
                        // The gateway's answer is its to make: bounded.
                        r.body_mut()
                            .with_config()
                            .limit(64 * 1024)
                            .read_json::<serde_json::Value>()
                            .ok()
                    })
                    .and_then(|v| readiness(&v));
                me.extras().ready = ready;
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the readiness thread; the registry will not say how the channels are");
    }
}

/// The registry's view of a `/readyz` answer (`{"ready": bool, "failing":
/// ["telegram", …]}`); names the registry would refuse are left out, so a
/// gateway's odd answer never makes its own entry unreadable.
fn readiness(v: &serde_json::Value) -> Option<Readiness> {
    let ready = v.get("ready")?.as_bool()?;
    let failing = v
        .get("failing")
        .and_then(|f| f.as_array())
        .map(|l| {
            l.iter()
                .filter_map(|c| c.as_str())
                .filter(|c| registry::is_short_id(c))
                .take(8)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Some(Readiness {
        ready,
        failing,
        at: registry::now_rfc3339(),
    })
}

/// This Buddy's entry at boot. The registry's status is the live truth
/// (spells and migrations move it), so an existing entry keeps its status;
/// a new one starts with buddy.json's. Booting on a Fly Machine means it
/// is deployed: a planned Buddy is now active (a migration stays one until
/// the migration is verified).
fn register(me: &Arc<Me>) -> Change {
    let version = me.version.clone();
    let deployed = me.machine.is_some();
    me.change(move |e| {
        if deployed && e.status == Status::Planned {
            e.status = Status::Active;
        }
        e.version = Some(version.clone());
        e.last_boot = Some(registry::now_rfc3339());
        e.gateway = Some(GatewayHealth::since_now(GatewayState::Booting, None));
        // Only once it is written: whoever reads the log may read the registry.
        Some(Done {
            message: "registered in the swarm",
            fields: vec![("id", e.id.clone()), ("status", e.status.to_string())],
        })
    })
}

/// A boot that refused to start the gateway: recorded in `book` (when the
/// share is there) as `refused` with the first line of why, within `wait`.
pub fn record_refusal(book: PathBuf, identity: &Identity, why: &str, wait: Duration) {
    let reporter = match Reporter::start(book) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "registry: cannot start the writer; the refusal is not recorded");
            return;
        }
    };
    crate::health::metrics::metrics().state("refused");
    let me = Arc::new(Me::from_env(identity, HEARTBEAT));
    let version = me.version.clone();
    let reason = registry::one_line(why);
    reporter.send(
        "refused",
        me.change(move |e| {
            e.version = Some(version.clone());
            e.last_boot = Some(registry::now_rfc3339());
            let mut h = GatewayHealth::since_now(GatewayState::Refused, None);
            h.reason = Some(reason.clone());
            e.gateway = Some(h);
            Some(Done {
                message: "refused boot recorded in the registry",
                fields: vec![("id", e.id.clone())],
            })
        }),
    );
    reporter.flush(wait);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buddy::{Channels, Role};

    fn entry(machine: Option<&str>, state: GatewayState, seen_ago: u64) -> Entry {
        let now = SystemTime::now();
        Entry {
            id: "RoelBuddy-Galahad".into(),
            human: "Roel".into(),
            name: "Galahad".into(),
            role: Role::Buddy,
            channels: Channels::default(),
            status: Status::Active,
            version: None,
            last_boot: None,
            machine: machine.map(str::to_string),
            gateway: Some(GatewayHealth::since_now(state, None)),
            seen_at: Some(
                humantime::format_rfc3339_seconds(now - Duration::from_secs(seen_ago)).to_string(),
            ),
            heartbeat_s: Some(60),
            restarts_24h: None,
            backup_at: None,
            ready: None,
            mounts: None,
        }
    }

    #[test]
    fn a_gateways_odd_readiness_never_makes_its_entry_unreadable() {
        let answer = serde_json::json!({"ready": false, "failing":
            ["telegram", "-x", "a\u{1b}[31m", "x".repeat(40), "whatsapp"]});
        let r = readiness(&answer).unwrap();
        assert_eq!(r.failing, ["telegram", "whatsapp"]);
        let mut e = entry(Some("m1"), GatewayState::Running, 0);
        e.ready = Some(r);
        let v = serde_json::to_value(&e).unwrap();
        registry::check_entry("roelbuddy-galahad", &v).unwrap();
    }

    #[test]
    fn only_the_deployed_machine_writes_a_deployed_entry() {
        let now = SystemTime::now();
        let live = entry(Some("m1"), GatewayState::Running, 30);
        assert_eq!(claim(None, None, now), Claim::Ours);
        assert_eq!(
            claim(Some(&entry(None, GatewayState::Running, 0)), None, now),
            Claim::Ours
        );
        assert_eq!(claim(Some(&live), Some("m1"), now), Claim::Ours);
        // A local run, live or dead Machine alike.
        for e in [&live, &entry(Some("m1"), GatewayState::Stopped, 9999)] {
            let Claim::Apart(why) = claim(Some(e), None, now) else {
                panic!("a local run wrote a deployed entry");
            };
            assert!(why.contains("no FLY_MACHINE_ID"), "{why}");
        }
        // Another Machine: not while m1 heartbeats; once it is silent or stopped.
        assert!(
            matches!(claim(Some(&live), Some("m2"), now), Claim::Apart(w) if w.contains("two Machines"))
        );
        let silent = entry(Some("m1"), GatewayState::Running, 181);
        assert!(
            matches!(claim(Some(&silent), Some("m2"), now), Claim::TakeOver(w) if w.contains("unknown since"))
        );
        let stopped = entry(Some("m1"), GatewayState::Stopped, 0);
        assert!(matches!(
            claim(Some(&stopped), Some("m2"), now),
            Claim::TakeOver(_)
        ));
    }
}
