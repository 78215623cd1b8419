//! The supervisor's Prometheus metrics, served on a private port that
//! fly.toml's `[metrics]` names, so Fly scrapes them into the
//! organisation's managed Prometheus (and Grafana).
//!
//! The values are atomics (prometheus-client's own): the loop and the
//! threads beside it set them without a lock and never wait. Serving is one
//! thread of its own answering one scrape at a time (no async runtime, no
//! thread pool in PID 1: tiny_http's pool of five threads took 1.5 MiB of
//! RSS against the supervisor's 2 MiB): a scrape reads the atomics, and
//! what is only known by looking (the gateway's and the Machine's memory)
//! is read from /proc and the cgroup at that moment. It listens on Fly's
//! private network address (`FLY_PRIVATE_IP`), never on a public service.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{debug, info};

/// The port fly.toml's `[metrics]` scrapes (check-config holds them equal).
pub const PORT: u16 = 9091;
/// And the path.
pub const PATH: &str = "/metrics";

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the supervisor keeps.
pub struct Metrics {
    registry: Registry,
    pub gateway_up: Gauge,
    pub gateway_state: Family<Labels, Gauge>,
    pub gateway_starts: Counter,
    pub gateway_restarts: Counter,
    pub gateway_crash_looping: Gauge,
    pub gateway_last_exit_code: Gauge,
    pub gateway_oom_kills: Counter,
    pub boot_step_seconds: Family<Labels, FloatGauge>,
    pub share_mount_up: Family<Labels, Gauge>,
    pub share_remounts: Family<Labels, Counter>,
    pub registry_write_failures: Counter,
    pub backups_enabled: Gauge,
    backup_lag_seconds: FloatGauge,
    /// Unix seconds of the last whole backup (0: none yet); the lag is
    /// reckoned from it at each scrape.
    backed_up_at: AtomicU64,
    pub spells: Family<Labels, Counter>,
    gateway_rss_bytes: Gauge,
    cgroup_memory_bytes: Gauge,
    machine_memory_used_bytes: Gauge,
    machine_memory_total_bytes: Gauge,
    /// The running gateway (0: none), whose group's memory a scrape sums.
    gateway_pid: AtomicI32,
}

/// The one set of metrics of this process.
pub fn metrics() -> &'static Metrics {
    static M: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &M
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mybuddy");
        let m = Metrics {
            gateway_up: Gauge::default(),
            gateway_state: Family::default(),
            gateway_starts: Counter::default(),
            gateway_restarts: Counter::default(),
            gateway_crash_looping: Gauge::default(),
            gateway_last_exit_code: Gauge::default(),
            gateway_oom_kills: Counter::default(),
            boot_step_seconds: Family::default(),
            share_mount_up: Family::default(),
            share_remounts: Family::default(),
            registry_write_failures: Counter::default(),
            backups_enabled: Gauge::default(),
            backup_lag_seconds: FloatGauge::default(),
            backed_up_at: AtomicU64::new(0),
            spells: Family::default(),
            gateway_rss_bytes: Gauge::default(),
            cgroup_memory_bytes: Gauge::default(),
            machine_memory_used_bytes: Gauge::default(),
            machine_memory_total_bytes: Gauge::default(),
            gateway_pid: AtomicI32::new(0),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "gateway_up",
            "1 while the gateway process runs",
            m.gateway_up.clone(),
        );
        r.register(
            "gateway_state",
            "1 for the state the registry says (booting, running, restarting, crash-looping, share-degraded, stopping, stopped, refused)",
            m.gateway_state.clone(),
        );
        r.register(
            "gateway_starts",
            "Gateway starts since the supervisor started",
            m.gateway_starts.clone(),
        );
        r.register(
            "gateway_restarts",
            "Gateway exits followed by a restart",
            m.gateway_restarts.clone(),
        );
        r.register(
            "gateway_crash_looping",
            "1 while the gateway keeps exiting without a healthy run",
            m.gateway_crash_looping.clone(),
        );
        r.register(
            "gateway_last_exit_code",
            "The gateway's last exit code (128 + signal for a death by signal)",
            m.gateway_last_exit_code.clone(),
        );
        r.register(
            "gateway_oom_kills",
            "Gateways the kernel's OOM killer took",
            m.gateway_oom_kills.clone(),
        );
        r.register(
            "boot_step_seconds",
            "How long each boot step took",
            m.boot_step_seconds.clone(),
        );
        r.register(
            "share_mount_up",
            "1 while the swarm share's volume is mounted",
            m.share_mount_up.clone(),
        );
        r.register(
            "share_remounts",
            "Remounts of a swarm share volume after its mount process ended",
            m.share_remounts.clone(),
        );
        r.register(
            "registry_write_failures",
            "Registry writes that failed (retried later)",
            m.registry_write_failures.clone(),
        );
        r.register(
            "backups_enabled",
            "1 when this Buddy's backups are set up",
            m.backups_enabled.clone(),
        );
        r.register(
            "backup_lag_seconds",
            "Seconds since the state was last fully backed up",
            m.backup_lag_seconds.clone(),
        );
        r.register(
            "spells",
            "Spells the spell socket ran, by spell and result",
            m.spells.clone(),
        );
        r.register(
            "gateway_rss_bytes",
            "Resident memory of the gateway's process group",
            m.gateway_rss_bytes.clone(),
        );
        r.register(
            "cgroup_memory_bytes",
            "Memory charged to the supervisor's cgroup (the supervisor, the gateway, mounts, backups)",
            m.cgroup_memory_bytes.clone(),
        );
        r.register(
            "machine_memory_used_bytes",
            "The Machine's memory in use (MemTotal - MemAvailable)",
            m.machine_memory_used_bytes.clone(),
        );
        r.register(
            "machine_memory_total_bytes",
            "The Machine's memory (MemTotal)",
            m.machine_memory_total_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The gateway started (`pid`) or ended (None).
    pub fn gateway_running(&self, pid: Option<i32>) {
        self.gateway_pid.store(pid.unwrap_or(0), Ordering::Relaxed);
        self.gateway_up.set(pid.is_some() as i64);
    }

    /// The state the registry says, one-hot.
    pub fn state(&self, state: &str) {
        for s in STATES {
            self.gateway_state
                .get_or_create(&vec![("state", s.to_string())])
                .set((*s == state) as i64);
        }
    }

    pub fn boot_step(&self, step: &str, seconds: f64) {
        self.boot_step_seconds
            .get_or_create(&vec![("step", step.to_string())])
            .set(seconds);
    }

    pub fn mount(&self, volume: &str, up: bool) {
        self.share_mount_up
            .get_or_create(&vec![("volume", volume.to_string())])
            .set(up as i64);
    }

    pub fn remounted(&self, volume: &str) {
        self.share_remounts
            .get_or_create(&vec![("volume", volume.to_string())])
            .inc();
        self.mount(volume, true);
    }

    /// The state was backed up whole at `at`.
    pub fn backed_up(&self, at: std::time::SystemTime) {
        let secs = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.backed_up_at.store(secs, Ordering::Relaxed);
    }

    pub fn spell(&self, spell: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.spells
            .get_or_create(&vec![
                ("spell", spell.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    /// The text a scrape gets: memory read now, the rest as it stands.
    pub fn render(&self) -> String {
        let pid = self.gateway_pid.load(Ordering::Relaxed);
        self.gateway_rss_bytes.set(if pid > 0 {
            group_rss_bytes(pid) as i64
        } else {
            0
        });
        if let Some(b) = crate::pid1::memory::cgroup_memory_bytes() {
            self.cgroup_memory_bytes.set(b as i64);
        }
        if let Some((total, available)) = meminfo() {
            self.machine_memory_total_bytes.set(total as i64);
            self.machine_memory_used_bytes
                .set(total.saturating_sub(available) as i64);
        }
        let at = self.backed_up_at.load(Ordering::Relaxed);
        if at > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            self.backup_lag_seconds.set((now - at as f64).max(0.0));
        }
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The states [`Metrics::state`] knows (the registry's; `stopped` lasts
/// until the exit, `refused` through a refused boot's wait).
const STATES: &[&str] = &[
    "booting",
    "running",
    "restarting",
    "crash-looping",
    "share-degraded",
    "stopping",
    "stopped",
    "refused",
];

/// Where to serve: `MYBUDDY_METRICS_ADDR` (`off` for none), else on a Fly
/// Machine its private address (`FLY_PRIVATE_IP`) at [`PORT`], else none
/// (a local run: several Buddies on one machine would share the port).
pub fn address(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<SocketAddr>, String> {
    match env("MYBUDDY_METRICS_ADDR").as_deref().map(str::trim) {
        Some("off") | Some("") => Ok(None),
        Some(a) => a.parse().map(Some).map_err(|_| {
            format!("MYBUDDY_METRICS_ADDR={a:?} is not an address (HOST:PORT, [IPv6]:PORT or off)")
        }),
        None => match env("FLY_PRIVATE_IP") {
            Some(ip) => ip
                .trim()
                .parse::<std::net::IpAddr>()
                .map(|ip| Some(SocketAddr::new(ip, PORT)))
                .map_err(|_| format!("FLY_PRIVATE_IP={ip:?} is not an address")),
            None => Ok(None),
        },
    }
}

/// Serves [`metrics`] at `addr` on a thread of its own; Err when it
/// cannot listen.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("metrics on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            for conn in listener.incoming() {
                if let Ok(mut c) = conn
                    && let Err(e) = answer(&mut c)
                {
                    debug!(error = %e, "metrics: a scrape not answered");
                }
                // The scrape's code (encoding, /proc reads) runs every 15 s
                // and then not again until the next: its pages go back as
                // the boot's did, or they would double the supervisor's RSS.
                crate::pid1::sys::release_boot_text();
            }
        })
        .map_err(|e| format!("metrics thread: {e}"))?;
    info!(%addr, path = PATH, "metrics served");
    Ok(())
}

/// The longest request head a scrape sends (Prometheus's is a few hundred
/// bytes).
const MAX_HEAD: usize = 8 * 1024;

/// One scrape: its request head within 2 s and [`MAX_HEAD`] bytes, one
/// answer, the connection closed (HTTP/1.1 with `Connection: close`, which
/// every scraper speaks).
fn answer(c: &mut TcpStream) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or_default());
    let (status, kind, body) = match (method, path) {
        (Some(b"GET"), Some(p)) if p == PATH.as_bytes() => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics().render(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    c.write_all(body.as_bytes())?;
    c.flush()
}

/// The resident memory of every process in `pgid`'s group (the gateway and
/// the tools it runs), from /proc.
fn group_rss_bytes(pgid: i32) -> u64 {
    let page = rustix::param::page_size() as u64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command's closing paren: state ppid pgrp ... rss (24th field overall).
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            total += f.get(21).and_then(|r| r.parse::<u64>().ok()).unwrap_or(0) * page;
        }
    }
    total
}

/// MemTotal and MemAvailable, in bytes.
fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_the_private_one_on_fly_and_none_elsewhere() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(address(&env(&[])).unwrap(), None);
        assert_eq!(
            address(&env(&[("FLY_PRIVATE_IP", "fdaa:0:1:a7b:1::2")])).unwrap(),
            Some("[fdaa:0:1:a7b:1::2]:9091".parse().unwrap())
        );
        assert_eq!(
            address(&env(&[
                ("FLY_PRIVATE_IP", "fdaa::2"),
                ("MYBUDDY_METRICS_ADDR", "off")
            ]))
            .unwrap(),
            None
        );
        assert_eq!(
            address(&env(&[("MYBUDDY_METRICS_ADDR", "127.0.0.1:9300")])).unwrap(),
            Some("127.0.0.1:9300".parse().unwrap())
        );
        assert!(address(&env(&[("MYBUDDY_METRICS_ADDR", "9300")])).is_err());
    }
}
