//! A small blocking client of the Fly Machines REST API (`/v1`), what a
//! spell cast from inside the swarm needs: apps, secrets, volumes, Machines,
//! leases and waits (`../shared/mission/FLY_MACHINES_API.md`).
//!
//! - Base URL from `FLY_API_HOSTNAME` (flyctl's name), default the public
//!   endpoint; inside Fly `http://_api.internal:4280` works too. Tests point
//!   it at a stand-in on loopback.
//! - The token from `FLY_API_TOKEN`, sent as flyctl forms it: macaroons
//!   (`fm1r_`, `fm1a_`, `fm2_`, possibly comma-joined) as `FlyV1 <token>`,
//!   anything else as `Bearer <token>`, a leading `Bearer `/`FlyV1 ` dropped.
//!   The token is in no log line, error or Debug output.
//! - 408, 429 and 5xx are retried with backoff (a `Retry-After` is honoured,
//!   capped), except where a retry is not safe: creating a Machine, whose
//!   408 is ambiguous (the Machine may exist: the caller looks it up by its
//!   metadata tag instead), and the wait, whose 408 means "not yet".
//! - Each answer's `fly-request-id` is logged, and named in errors, so an
//!   operator can quote it to Fly.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::config::render::Secret;

/// The public endpoint.
/// One segment of a Machines API path (or a query value), percent-encoded:
/// everything but RFC 3986's unreserved characters. Names and ids come
/// from the share and the registry: `a/../../apps/victim` or `x?force=true`
/// must stay one harmless segment, never a path or a query of its own.
pub fn seg(s: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let out = percent_encoding::utf8_percent_encode(s, KEEP).to_string();
    // `.` and `..` alone are path steps even when encoded as themselves.
    match out.as_str() {
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        _ => out,
    }
}

pub const DEFAULT_BASE: &str = "https://api.machines.dev";

#[derive(Debug, thiserror::Error)]
pub enum FlyError {
    #[error(
        "FLY_API_TOKEN is not set: the Fly Machines API needs an org token (fly tokens create org)"
    )]
    NoToken,
    #[error("Fly API {method} {path}: {status} {message}{}", show_request_id(.request_id))]
    Api {
        method: &'static str,
        path: String,
        status: u16,
        /// Fly's `error` text (and `status` name), or the body's start.
        message: String,
        request_id: Option<String>,
    },
    #[error("Fly API {method} {path}: {error}")]
    Transport {
        method: &'static str,
        path: String,
        error: String,
    },
    #[error("Fly API {method} {path}: unexpected answer: {what}")]
    Answer {
        method: &'static str,
        path: String,
        what: String,
    },
}

fn show_request_id(id: &Option<String>) -> String {
    id.as_ref()
        .map(|i| format!(" (fly-request-id {i})"))
        .unwrap_or_default()
}

impl FlyError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            FlyError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Whether a call may be repeated when its answer is 408, 429 or 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Yes,
    /// A 408 is passed to the caller (ambiguous or "not yet"); 429 and 5xx
    /// are retried only when they say the request was not taken (429).
    Not408,
}

/// What a command run in a Machine gave back.
#[derive(Debug, Clone)]
pub struct Exec {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// A successful answer's JSON body (Null if none).
struct Answer {
    body: Value,
}

/// How an app name stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppState {
    /// It exists in the token's organisation.
    Ours,
    /// Nobody has it.
    Free,
    /// Another organisation has it.
    Taken,
}

/// A Machine as the API shows it (the fields the spells use; the rest of
/// its config stays in `config`, whole, because an update sends the whole).
#[derive(Debug, Clone)]
pub struct Machine {
    pub id: String,
    pub instance_id: String,
    pub state: String,
    pub region: String,
    pub config: Value,
    /// Every check's status (`passing`, `warning`, `critical`).
    pub checks: Vec<(String, String)>,
}

impl Machine {
    fn from_json(v: &Value) -> Option<Machine> {
        Some(Machine {
            id: v.get("id")?.as_str()?.to_string(),
            instance_id: v
                .get("instance_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            state: v
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            region: v
                .get("region")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            config: v.get("config").cloned().unwrap_or(Value::Null),
            checks: v
                .get("checks")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            let s = |k: &str| {
                                c.get(k)
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            (s("name"), s("status"))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Every check passes (and there is at least one: a Buddy has its /healthz check).
    pub fn checks_pass(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|(_, s)| s == "passing")
    }
}

#[derive(Debug, Clone)]
pub struct Volume {
    pub id: String,
    pub name: String,
}

/// The client. Cheap to clone (ureq's agent shares its connection pool).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    authorization: Secret,
    /// The token alone (the registry's basic auth takes it as the password).
    token: Secret,
    /// The first wait after a retryable answer (doubles, capped at 10 s).
    backoff: Duration,
    attempts: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

/// The `Authorization` header flyctl sends for `token`.
pub fn authorization(token: &str) -> String {
    let t = token.trim();
    let t = t
        .strip_prefix("Bearer ")
        .or_else(|| t.strip_prefix("FlyV1 "))
        .unwrap_or(t)
        .trim();
    let macaroon = t.split(',').any(|p| {
        ["fm1r_", "fm1a_", "fm2_"]
            .iter()
            .any(|m| p.trim().starts_with(m))
    });
    if macaroon {
        format!("FlyV1 {t}")
    } else {
        format!("Bearer {t}")
    }
}

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(90)))
            .user_agent(concat!(
                "mybuddytalk-supervisor/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .into();
        let authorization = authorization(token);
        let bare = authorization
            .split_once(' ')
            .map_or("", |(_, t)| t)
            .to_string();
        Client {
            agent,
            base: base.trim_end_matches('/').to_string(),
            token: Secret(bare),
            authorization: Secret(authorization),
            backoff: Duration::from_millis(250),
            attempts: 5,
        }
    }

    /// `FLY_API_HOSTNAME` (default [`DEFAULT_BASE`]) and `FLY_API_TOKEN`.
    pub fn from_env() -> Result<Client, FlyError> {
        let token = std::env::var("FLY_API_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or(FlyError::NoToken)?;
        let base = std::env::var("FLY_API_HOSTNAME")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| DEFAULT_BASE.to_string());
        Ok(Client::new(&base, &token))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        retry: Retry,
    ) -> Result<Answer, FlyError> {
        let url = format!("{}{path}", self.base);
        let mut wait = self.backoff;
        for attempt in 1..=self.attempts {
            let t = Instant::now();
            let mut req = ureq::http::Request::builder()
                .method(method)
                .uri(&url)
                .header("Authorization", &self.authorization.0)
                .header("Accept", "application/json");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let sent = match body {
                Some(b) => {
                    let bytes = serde_json::to_vec(b).unwrap_or_default();
                    req.header("Content-Type", "application/json")
                        .body(bytes)
                        .map_err(|e| e.to_string())
                        .and_then(|r| self.agent.run(r).map_err(|e| e.to_string()))
                }
                None => req
                    .body(())
                    .map_err(|e| e.to_string())
                    .and_then(|r| self.agent.run(r).map_err(|e| e.to_string())),
            };
            let mut resp = match sent {
                Ok(r) => r,
                Err(error) if attempt < self.attempts && retry == Retry::Yes => {
                    warn!(method, path, attempt, error = %error, "fly: request failed; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(10));
                    continue;
                }
                Err(error) => {
                    return Err(FlyError::Transport {
                        method,
                        path: path.to_string(),
                        error,
                    });
                }
            };
            let status = resp.status().as_u16();
            let request_id = resp
                .headers()
                .get("fly-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(10)));
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            debug!(
                method,
                path,
                status,
                request_id = request_id.as_deref().unwrap_or("-"),
                ms = t.elapsed().as_millis() as u64,
                "fly: answer"
            );
            let retryable = match retry {
                Retry::Yes => status == 408 || status == 429 || status >= 500,
                Retry::Not408 => status == 429,
            };
            if retryable && attempt < self.attempts {
                let pause = retry_after.unwrap_or(wait);
                warn!(
                    method,
                    path,
                    status,
                    attempt,
                    request_id = request_id.as_deref().unwrap_or("-"),
                    retry_in_ms = pause.as_millis() as u64,
                    "fly: retrying"
                );
                std::thread::sleep(pause);
                wait = (wait * 2).min(Duration::from_secs(10));
                continue;
            }
            if (200..300).contains(&status) {
                return Ok(Answer { body });
            }
            let message = match (&body["error"], &body["status"]) {
                (Value::String(e), Value::String(s)) => format!("{e} ({s})"),
                (Value::String(e), _) => e.clone(),
                _ => text.chars().take(200).collect(),
            };
            return Err(FlyError::Api {
                method,
                path: path.to_string(),
                status,
                message,
                request_id,
            });
        }
        unreachable!("the last attempt returns")
    }

    fn answer_err(method: &'static str, path: &str, what: &str) -> FlyError {
        FlyError::Answer {
            method,
            path: path.to_string(),
            what: what.to_string(),
        }
    }

    /// GET the app: ours (200), free (404) or another organisation's (403).
    pub fn app_state(&self, app: &str) -> Result<AppState, FlyError> {
        match self.call(
            "GET",
            &format!("/v1/apps/{}", seg(app)),
            None,
            &[],
            Retry::Yes,
        ) {
            Ok(_) => Ok(AppState::Ours),
            Err(e) if e.status() == Some(404) => Ok(AppState::Free),
            Err(e) if e.status() == Some(403) => Ok(AppState::Taken),
            Err(e) => Err(e),
        }
    }

    /// Creates the app in `org` (both names for the app: the docs say
    /// `app_name`, fly-go sends `name`).
    pub fn create_app(&self, app: &str, org: &str) -> Result<(), FlyError> {
        let body = json!({"app_name": app, "name": app, "org_slug": org});
        self.call("POST", "/v1/apps", Some(&body), &[], Retry::Not408)
            .map(|_| ())
    }

    pub fn delete_app(&self, app: &str) -> Result<(), FlyError> {
        self.call(
            "DELETE",
            &format!("/v1/apps/{}?force=true", seg(app)),
            None,
            &[],
            Retry::Yes,
        )
        .map(|_| ())
    }

    /// Sets (Some) and unsets (None) secrets in one call; the secrets'
    /// version, for `min_secrets_version`. Setting again is safe: retried.
    pub fn set_secrets(
        &self,
        app: &str,
        values: &[(String, Option<&Secret>)],
    ) -> Result<u64, FlyError> {
        let map: serde_json::Map<String, Value> = values
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.map_or(Value::Null, |s| Value::String(s.0.clone())),
                )
            })
            .collect();
        let path = format!("/v1/apps/{}/secrets", seg(app));
        let a = self.call(
            "POST",
            &path,
            Some(&json!({"values": map})),
            &[],
            Retry::Yes,
        )?;
        a.body["version"]
            .as_u64()
            .ok_or_else(|| Self::answer_err("POST", &path, "no secrets version"))
    }

    /// The names of the app's secrets (values are not readable back).
    pub fn secret_names(&self, app: &str) -> Result<Vec<String>, FlyError> {
        let path = format!("/v1/apps/{}/secrets", seg(app));
        let a = self.call("GET", &path, None, &[], Retry::Yes)?;
        let list = a.body.get("secrets").unwrap_or(&a.body);
        Ok(list
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|s| s.get("name").or_else(|| s.get("label"))?.as_str())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn volumes(&self, app: &str) -> Result<Vec<Volume>, FlyError> {
        let a = self.call(
            "GET",
            &format!("/v1/apps/{}/volumes", seg(app)),
            None,
            &[],
            Retry::Yes,
        )?;
        Ok(a.body
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|v| {
                        Some(Volume {
                            id: v.get("id")?.as_str()?.to_string(),
                            name: v.get("name")?.as_str()?.to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Creates a volume. Not retried on 408/5xx (a second one would be made:
    /// names are not unique); the caller lists before it creates.
    pub fn create_volume(
        &self,
        app: &str,
        name: &str,
        region: &str,
        size_gb: u32,
        snapshot_retention: Option<u32>,
    ) -> Result<Volume, FlyError> {
        let path = format!("/v1/apps/{}/volumes", seg(app));
        let mut body = json!({"name": name, "region": region, "size_gb": size_gb});
        if let Some(days) = snapshot_retention {
            body["snapshot_retention"] = json!(days);
        }
        let a = self.call("POST", &path, Some(&body), &[], Retry::Not408)?;
        Ok(Volume {
            id: a.body["id"]
                .as_str()
                .ok_or_else(|| Self::answer_err("POST", &path, "no volume id"))?
                .to_string(),
            name: name.to_string(),
        })
    }

    pub fn delete_volume(&self, app: &str, id: &str) -> Result<(), FlyError> {
        self.call(
            "DELETE",
            &format!("/v1/apps/{}/volumes/{}", seg(app), seg(id)),
            None,
            &[],
            Retry::Yes,
        )
        .map(|_| ())
    }

    /// Creates a Machine. A 408 (and a 5xx) is handed back: the Machine may
    /// exist, so the caller looks for it by its metadata tag before trying
    /// again ([`Client::machines_tagged`]).
    pub fn create_machine(&self, app: &str, body: &Value) -> Result<Machine, FlyError> {
        let path = format!("/v1/apps/{}/machines", seg(app));
        let a = self.call("POST", &path, Some(body), &[], Retry::Not408)?;
        Machine::from_json(&a.body).ok_or_else(|| Self::answer_err("POST", &path, "no machine id"))
    }

    pub fn machine(&self, app: &str, id: &str) -> Result<Machine, FlyError> {
        let path = format!("/v1/apps/{}/machines/{}", seg(app), seg(id));
        let a = self.call("GET", &path, None, &[], Retry::Yes)?;
        Machine::from_json(&a.body).ok_or_else(|| Self::answer_err("GET", &path, "no machine"))
    }

    /// Runs `command` in a started Machine and waits for its end, at most
    /// `timeout_s` (`POST …/machines/{id}/exec`: fly-go's MachineExecRequest
    /// `{"command": [...], "timeout": s}`, answered with `exit_code`,
    /// `stdout`, `stderr`; from fly-go's source, not in the facts file, not
    /// tried against the live API). Not repeated on 408 or 5xx: it may
    /// have run.
    pub fn exec(
        &self,
        app: &str,
        id: &str,
        command: &[&str],
        timeout_s: u64,
    ) -> Result<Exec, FlyError> {
        let path = format!("/v1/apps/{}/machines/{}/exec", seg(app), seg(id));
        let body = json!({"command": command, "timeout": timeout_s});
        let a = self.call("POST", &path, Some(&body), &[], Retry::Not408)?;
        let text = |k: &str| a.body[k].as_str().unwrap_or_default().to_string();
        Ok(Exec {
            exit_code: a.body["exit_code"]
                .as_i64()
                .ok_or_else(|| Self::answer_err("POST", &path, "no exit_code"))?,
            stdout: text("stdout"),
            stderr: text("stderr"),
        })
    }

    /// The app's Machines whose metadata has `key` = `value`.
    pub fn machines_tagged(
        &self,
        app: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<Machine>, FlyError> {
        let a = self.call(
            "GET",
            &format!(
                "/v1/apps/{}/machines?metadata.{}={}",
                seg(app),
                seg(key),
                seg(value)
            ),
            None,
            &[],
            Retry::Yes,
        )?;
        Ok(a.body
            .as_array()
            .map(|l| l.iter().filter_map(Machine::from_json).collect())
            .unwrap_or_default())
    }

    /// Replaces a Machine's whole config (it reboots) under a lease.
    pub fn update_machine(
        &self,
        app: &str,
        id: &str,
        nonce: &str,
        body: &Value,
    ) -> Result<Machine, FlyError> {
        let path = format!("/v1/apps/{}/machines/{}", seg(app), seg(id));
        let a = self.call(
            "POST",
            &path,
            Some(body),
            &[("fly-machine-lease-nonce", nonce)],
            Retry::Not408,
        )?;
        Machine::from_json(&a.body).ok_or_else(|| Self::answer_err("POST", &path, "no machine"))
    }

    pub fn destroy_machine(&self, app: &str, id: &str) -> Result<(), FlyError> {
        self.call(
            "DELETE",
            &format!("/v1/apps/{}/machines/{}?force=true", seg(app), seg(id)),
            None,
            &[],
            Retry::Yes,
        )
        .map(|_| ())
    }

    /// Waits until the Machine's `instance_id` is started, asking again on
    /// each 408 ("not yet") until `timeout`.
    pub fn wait_started(
        &self,
        app: &str,
        id: &str,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<(), FlyError> {
        let end = Instant::now() + timeout;
        let path = format!(
            "/v1/apps/{}/machines/{}/wait?state=started&instance_id={}&timeout=60",
            seg(app),
            seg(id),
            seg(instance_id)
        );
        loop {
            if crate::pid1::sys::stop_requested() {
                return Err(Self::answer_err("GET", &path, "stopped while waiting"));
            }
            match self.call("GET", &path, None, &[], Retry::Not408) {
                Ok(_) => return Ok(()),
                Err(e) if e.status() == Some(408) && Instant::now() < end => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until `instance_id` is started and then every check passes,
    /// within `timeout` in all. The error says each check's last status.
    pub fn wait_healthy(
        &self,
        app: &str,
        id: &str,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let t = Instant::now();
        self.wait_started(app, id, instance_id, timeout)
            .map_err(|e| e.to_string())?;
        loop {
            let m = self.machine(app, id).map_err(|e| e.to_string())?;
            if m.checks_pass() {
                return Ok(());
            }
            crate::fleet::apply::check_stop()?;
            if t.elapsed() > timeout {
                return Err(format!(
                    "the Machine {id} started but its checks did not pass within {timeout:?} ({})",
                    m.checks
                        .iter()
                        .map(|(n, st)| format!("{n}: {st}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A lease on the Machine for `ttl` seconds: its nonce. 409 means
    /// someone else holds one (the error says so).
    pub fn lease(&self, app: &str, id: &str, ttl: u32) -> Result<String, FlyError> {
        let path = format!("/v1/apps/{}/machines/{}/lease", seg(app), seg(id));
        let a = self.call(
            "POST",
            &path,
            Some(&json!({"ttl": ttl})),
            &[],
            Retry::Not408,
        )?;
        a.body["data"]["nonce"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Self::answer_err("POST", &path, "no lease nonce"))
    }

    pub fn release_lease(&self, app: &str, id: &str, nonce: &str) -> Result<(), FlyError> {
        self.call(
            "DELETE",
            &format!("/v1/apps/{}/machines/{}/lease", seg(app), seg(id)),
            None,
            &[("fly-machine-lease-nonce", nonce)],
            Retry::Yes,
        )
        .map(|_| ())
    }

    /// A private (Flycast) IPv6 for the app: a Buddy has no public address.
    pub fn allocate_private_ip(&self, app: &str) -> Result<(), FlyError> {
        self.call(
            "POST",
            &format!("/v1/apps/{}/ip_assignments", seg(app)),
            Some(&json!({"type": "private_v6"})),
            &[],
            Retry::Not408,
        )
        .map(|_| ())
    }

    /// `image` pinned by digest: as it is when it is, else its tag asked of
    /// its registry (`registry.fly.io`, basic auth `x:<token>`; another base
    /// from `MYBUDDY_REGISTRY_URL`, for tests), which answers the digest in
    /// `Docker-Content-Digest`.
    pub fn pin(&self, image: &str) -> Result<String, FlyError> {
        if image.contains("@sha256:") {
            return Ok(image.to_string());
        }
        let what = |w: &str| FlyError::Answer {
            method: "GET",
            path: image.to_string(),
            what: w.to_string(),
        };
        let (host, rest) = image
            .split_once('/')
            .ok_or_else(|| what("not a registry image (host/repository:tag)"))?;
        let (repo, tag) = rest.rsplit_once(':').unwrap_or((rest, "latest"));
        let base = std::env::var("MYBUDDY_REGISTRY_URL")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| format!("https://{host}"));
        let path = format!("/v2/{repo}/manifests/{tag}");
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("x:{}", self.token.0),
        );
        let req = ureq::http::Request::builder()
            .method("HEAD")
            .uri(format!("{}{path}", base.trim_end_matches('/')))
            .header("Authorization", format!("Basic {basic}"))
            .header(
                "Accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            )
            .body(())
            .map_err(|e| what(&e.to_string()))?;
        let resp = self.agent.run(req).map_err(|e| FlyError::Transport {
            method: "HEAD",
            path: path.clone(),
            error: e.to_string(),
        })?;
        if !resp.status().is_success() {
            return Err(FlyError::Api {
                method: "HEAD",
                path,
                status: resp.status().as_u16(),
                message: format!("the registry has no {image}"),
                request_id: None,
            });
        }
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .filter(|d| d.starts_with("sha256:"))
            .ok_or_else(|| what("the registry answered no Docker-Content-Digest"))?;
        Ok(format!("{host}/{repo}@{digest}"))
    }

    /// Test hook: a shorter first backoff.
    pub fn with_backoff(mut self, first: Duration) -> Client {
        self.backoff = first;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_header_is_formed_as_flyctl_forms_it() {
        assert_eq!(authorization("fo1_abc"), "Bearer fo1_abc");
        assert_eq!(authorization("Bearer fo1_abc"), "Bearer fo1_abc");
        assert_eq!(authorization("fm2_xyz"), "FlyV1 fm2_xyz");
        assert_eq!(authorization("FlyV1 fm2_a,fm2_b"), "FlyV1 fm2_a,fm2_b");
        assert_eq!(authorization(" fm1r_q \n"), "FlyV1 fm1r_q");
        assert_eq!(authorization("x,fm1a_y"), "FlyV1 x,fm1a_y");
    }

    #[test]
    fn the_token_is_in_no_debug_output() {
        let c = Client::new("http://127.0.0.1:9", "fm2_secret-token");
        assert!(!format!("{c:?}").contains("secret-token"));
    }
}
