//! A stand-in for the Fly Machines API (`/v1`) on 127.0.0.1: it keeps state
//! (apps, secrets with their versions, volumes, Machines with their configs
//! and files, leases, checks), records every call whole, and takes faults:
//! an answer forced for the next matching calls (a 500, a 429), a Machine
//! create that happens but answers 408 (the ambiguous case), a lease held by
//! someone else, checks that never pass for an image. What a test asserts
//! is what a client really sent over HTTP. The calls and answers follow
//! `../shared/mission/FLY_MACHINES_API.md`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hyper::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use crate::http::{self, Request, Resp};

/// One call as the stand-in saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub seq: u64,
    pub method: String,
    /// Path with query.
    pub path: String,
    pub body: Value,
    pub authorization: Option<String>,
    pub lease_nonce: Option<String>,
    /// What it answered.
    pub status: u16,
}

impl Call {
    /// `"GET /v1/apps/x"` (the query dropped): for asserting sequences.
    pub fn line(&self) -> String {
        format!(
            "{} {}",
            self.method,
            self.path
                .split_once('?')
                .map_or(self.path.as_str(), |(p, _)| p)
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub id: String,
    pub name: String,
    pub region: String,
    pub instance_id: String,
    pub state: String,
    pub config: Value,
    /// Every config it has run, oldest first (an update adds one).
    pub history: Vec<Value>,
    pub min_secrets_version: Option<u64>,
    /// (nonce, holder)
    #[serde(skip)]
    lease: Option<(String, String)>,
    /// What `exec` answers: (exit code, stdout); None: exit 0, a backup's line.
    #[serde(skip)]
    exec_answer: Option<(i64, String)>,
    /// Every command `exec` ran in it.
    pub execs: Vec<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub region: String,
    pub size_gb: u64,
    pub snapshot_retention: Option<u64>,
    pub attached_machine_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct App {
    pub name: String,
    pub org: String,
    /// Values as set (tests check where a secret went, and where it did not).
    pub secrets: BTreeMap<String, String>,
    pub secrets_version: u64,
    pub volumes: Vec<Volume>,
    pub machines: Vec<Machine>,
    pub ips: Vec<String>,
}

struct Forced {
    method: String,
    path_contains: String,
    status: u16,
    times: u32,
}

type StartHook = Box<dyn Fn(&str, &Machine) + Send + Sync>;

#[derive(Default)]
struct State {
    seq: u64,
    apps: BTreeMap<String, App>,
    /// Names another organisation has (GET 403, create 422).
    foreign: Vec<String>,
    calls: Vec<Call>,
    forced: Vec<Forced>,
    ambiguous_creates: u32,
    checks_fail_for: Vec<String>,
    /// The registry: "repository:tag" → digest.
    images: BTreeMap<String, String>,
}

/// The stand-in's state; shared by the server and the test.
pub struct FlyApi {
    /// The one `Authorization` header value accepted (None: any).
    authorization: Option<String>,
    org: String,
    state: Mutex<State>,
    on_start: Mutex<Option<StartHook>>,
}

impl FlyApi {
    /// `authorization`: the header value a client must send (as flyctl
    /// forms it from the token), or None to accept any.
    pub fn new(authorization: Option<&str>, org: &str) -> FlyApi {
        FlyApi {
            authorization: authorization.map(str::to_string),
            org: org.to_string(),
            state: Mutex::new(State::default()),
            on_start: Mutex::new(None),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- what a test sets up --------------------------------------------

    /// An app that exists before the test (ours).
    pub fn add_app(&self, name: &str) {
        let mut s = self.st();
        s.apps.insert(
            name.to_string(),
            App {
                name: name.to_string(),
                org: self.org.clone(),
                ..App::default()
            },
        );
    }

    /// An app name another organisation holds.
    pub fn add_foreign_app(&self, name: &str) {
        self.st().foreign.push(name.to_string());
    }

    /// The next `times` calls whose method is `method` and whose path
    /// contains `path_contains` are answered `status` and change nothing.
    pub fn fail(&self, method: &str, path_contains: &str, status: u16, times: u32) {
        self.st().forced.push(Forced {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            status,
            times,
        });
    }

    /// The next `times` Machine creates make the Machine but answer 408.
    pub fn ambiguous_create(&self, times: u32) {
        self.st().ambiguous_creates = times;
    }

    /// Checks of Machines whose image contains `image` never pass.
    pub fn checks_never_pass(&self, image: &str) {
        self.st().checks_fail_for.push(image.to_string());
    }

    /// The registry has `repository:tag` at `digest` (`sha256:…`).
    pub fn add_image(&self, repo_tag: &str, digest: &str) {
        self.st()
            .images
            .insert(repo_tag.to_string(), digest.to_string());
    }

    /// Someone else holds a lease on the Machine.
    pub fn hold_lease(&self, app: &str, machine: &str) {
        if let Some(m) = self
            .st()
            .apps
            .get_mut(app)
            .and_then(|a| a.machines.iter_mut().find(|m| m.id == machine))
        {
            m.lease = Some(("someone-elses-nonce".into(), "someone else".into()));
        }
    }

    /// The Machine's state from now on (`stopped`: Fly stopped it).
    pub fn set_state(&self, app: &str, machine: &str, state: &str) {
        if let Some(m) = self
            .st()
            .apps
            .get_mut(app)
            .and_then(|a| a.machines.iter_mut().find(|m| m.id == machine))
        {
            m.state = state.to_string();
        }
    }

    /// What `exec` in the Machine answers from now on.
    pub fn exec_answers(&self, app: &str, machine: &str, exit_code: i64, stdout: &str) {
        if let Some(m) = self
            .st()
            .apps
            .get_mut(app)
            .and_then(|a| a.machines.iter_mut().find(|m| m.id == machine))
        {
            m.exec_answer = Some((exit_code, stdout.to_string()));
        }
    }

    /// Called (outside the lock) each time a Machine starts on a config:
    /// after a create and after an update. Tests use it to play the Buddy
    /// that boots there (e.g. its registry entry).
    pub fn on_start(&self, f: impl Fn(&str, &Machine) + Send + Sync + 'static) {
        *self.on_start.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    // ---- what a test reads ----------------------------------------------

    pub fn calls(&self) -> Vec<Call> {
        self.st().calls.clone()
    }

    pub fn app(&self, name: &str) -> Option<App> {
        self.st().apps.get(name).cloned()
    }

    pub fn app_names(&self) -> Vec<String> {
        self.st().apps.keys().cloned().collect()
    }

    // ---- the API ----------------------------------------------------------

    pub fn answer(&self, req: Request) -> Resp {
        let Handled {
            status,
            body,
            started,
            digest,
        } = self.handle(&req);
        if let Some((app, m)) = started
            && let Some(f) = self
                .on_start
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
        {
            f(&app, &m);
        }
        let mut r = http::json(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &body,
        );
        let seq = self.st().seq;
        r.headers_mut().insert(
            "fly-request-id",
            format!("standin-{seq}").parse().expect("header"),
        );
        if let Some(d) = digest {
            r.headers_mut()
                .insert("docker-content-digest", d.parse().expect("header"));
        }
        if status == 429 {
            r.headers_mut()
                .insert("retry-after", "0".parse().expect("header"));
        }
        r
    }

    fn handle(&self, req: &Request) -> Handled {
        let mut s = self.st();
        s.seq += 1;
        let seq = s.seq;
        let header = |k: &str| {
            req.headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let mut call = Call {
            seq,
            method: req.method.to_string(),
            path: req.path.clone(),
            body: req.json(),
            authorization: header("authorization"),
            lease_nonce: header("fly-machine-lease-nonce"),
            status: 0,
        };
        // The registry takes the token as a basic-auth password, user "x".
        let registry_auth = self.authorization.as_ref().map(|a| {
            let token = a.split_once(' ').map_or("", |(_, t)| t);
            format!("Basic {}", base64_encode(format!("x:{token}").as_bytes()))
        });
        if req.path.starts_with("/v2/") {
            let (status, digest) = if registry_auth
                .as_ref()
                .is_some_and(|a| call.authorization.as_ref() != Some(a))
            {
                (401, None)
            } else {
                registry(&s, req.path_only())
            };
            call.status = status;
            s.calls.push(call);
            let body = match &digest {
                Some(d) => json!({"digest": d}),
                None => err("manifest unknown", "not_found"),
            };
            return Handled {
                status,
                body,
                started: None,
                digest,
            };
        }
        let (status, body, started) = if self
            .authorization
            .as_ref()
            .is_some_and(|a| call.authorization.as_ref() != Some(a))
        {
            (401, err("unauthorized", "unauthorized"), None)
        } else if let Some(status) = forced(&mut s, &call) {
            (status, err("forced by the test", "forced"), None)
        } else {
            self.route(&mut s, &call, req)
        };
        call.status = status;
        s.calls.push(call);
        Handled {
            status,
            body,
            started,
            digest: None,
        }
    }

    fn route(
        &self,
        s: &mut State,
        call: &Call,
        req: &Request,
    ) -> (u16, Value, Option<(String, Machine)>) {
        let path = req.path_only().trim_end_matches('/').to_string();
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        let q: BTreeMap<String, String> = req.query().into_iter().collect();
        let method = call.method.as_str();
        let none = |st: u16, v: Value| (st, v, None);
        match (method, parts.as_slice()) {
            ("POST", ["v1", "apps"]) => {
                let name = call.body["app_name"]
                    .as_str()
                    .or(call.body["name"].as_str())
                    .unwrap_or_default()
                    .to_string();
                if name.is_empty() || call.body["org_slug"].as_str().is_none() {
                    return none(400, err("app_name and org_slug are required", "invalid"));
                }
                if s.apps.contains_key(&name) || s.foreign.contains(&name) {
                    return none(422, err("app name already taken", "name_taken"));
                }
                s.apps.insert(
                    name.clone(),
                    App {
                        name: name.clone(),
                        org: call.body["org_slug"].as_str().unwrap_or_default().into(),
                        ..App::default()
                    },
                );
                none(201, json!({"id": name, "created_at": s.seq}))
            }
            (_, ["v1", "apps", app, rest @ ..]) => {
                let app = app.to_string();
                if s.foreign.contains(&app) {
                    return none(403, err("not authorized to access this app", "forbidden"));
                }
                let seq = s.seq;
                let checks_fail_for = s.checks_fail_for.clone();
                let Some(a) = s.apps.get_mut(&app) else {
                    return none(404, err("app not found", "not_found"));
                };
                let is_create = method == "POST" && rest == ["machines"];
                let ambiguous = is_create && s.ambiguous_creates > 0;
                let r = app_route(a, method, rest, call, &q, seq, &checks_fail_for, ambiguous);
                if ambiguous && r.2.is_some() {
                    s.ambiguous_creates -= 1;
                }
                if method == "DELETE" && rest.is_empty() && r.0 < 300 {
                    s.apps.remove(&app);
                }
                let started = r.2.map(|m| (app, m));
                (r.0, r.1, started)
            }
            _ => none(404, err("no such endpoint in the stand-in", "not_found")),
        }
    }
}

/// What a request did: the answer's status and body, the Machine it
/// started (for the hook), the digest a registry answer carries.
struct Handled {
    status: u16,
    body: Value,
    started: Option<(String, Machine)>,
    digest: Option<String>,
}

/// `/v2/<repository>/manifests/<tag>`: (status, digest).
fn registry(s: &State, path: &str) -> (u16, Option<String>) {
    let Some((repo, tag)) = path
        .strip_prefix("/v2/")
        .and_then(|p| p.split_once("/manifests/"))
    else {
        return (404, None);
    };
    match s.images.get(&format!("{repo}:{tag}")) {
        Some(d) => (200, Some(d.clone())),
        None => (404, None),
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn err(message: &str, status: &str) -> Value {
    json!({"error": message, "status": status})
}

fn forced(s: &mut State, call: &Call) -> Option<u16> {
    let f = s
        .forced
        .iter_mut()
        .find(|f| f.times > 0 && f.method == call.method && call.path.contains(&f.path_contains))?;
    f.times -= 1;
    Some(f.status)
}

fn machine_json(m: &Machine, checks_fail_for: &[String]) -> Value {
    let image = m.config["image"].as_str().unwrap_or_default();
    let failing = checks_fail_for.iter().any(|i| image.contains(i.as_str()));
    let checks: Vec<Value> = m.config["checks"]
        .as_object()
        .map(|cs| {
            cs.keys()
                .map(|name| {
                    json!({"name": name, "status": if failing || m.state != "started" { "critical" } else { "passing" }})
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": m.id, "name": m.name, "region": m.region, "state": m.state,
        "instance_id": m.instance_id, "config": m.config, "checks": checks,
        "image_ref": {"repository": image},
        "private_ip": "fdaa:0:1::2",
    })
}

#[allow(clippy::too_many_arguments)]
fn app_route(
    a: &mut App,
    method: &str,
    rest: &[&str],
    call: &Call,
    q: &BTreeMap<String, String>,
    seq: u64,
    checks_fail_for: &[String],
    ambiguous: bool,
) -> (u16, Value, Option<Machine>) {
    let none = |st: u16, v: Value| (st, v, None);
    match (method, rest) {
        ("GET", []) => none(
            200,
            json!({"name": a.name, "organization": {"slug": a.org}}),
        ),
        ("DELETE", []) => none(202, json!({})),
        ("POST", ["secrets"]) => {
            let Some(values) = call.body["values"].as_object() else {
                return none(400, err("values is required", "invalid"));
            };
            for (k, v) in values {
                match v.as_str() {
                    Some(v) => {
                        a.secrets.insert(k.clone(), v.to_string());
                    }
                    None => {
                        a.secrets.remove(k);
                    }
                }
            }
            a.secrets_version += 1;
            none(200, json!({"version": a.secrets_version}))
        }
        ("GET", ["secrets"]) => none(
            200,
            json!({"secrets": a.secrets.keys().map(|k| json!({"name": k, "digest": "d"})).collect::<Vec<_>>()}),
        ),
        ("POST", ["ip_assignments"]) => {
            let ty = call.body["type"].as_str().unwrap_or_default().to_string();
            a.ips.push(ty.clone());
            none(200, json!({"ip": "fdaa:0:1::3", "type": ty}))
        }
        ("GET", ["volumes"]) => none(200, serde_json::to_value(&a.volumes).unwrap_or_default()),
        ("POST", ["volumes"]) => {
            let v = Volume {
                id: format!("vol_{seq:04}"),
                name: call.body["name"].as_str().unwrap_or_default().into(),
                region: call.body["region"].as_str().unwrap_or_default().into(),
                size_gb: call.body["size_gb"].as_u64().unwrap_or(1),
                snapshot_retention: call.body["snapshot_retention"].as_u64(),
                attached_machine_id: None,
            };
            a.volumes.push(v.clone());
            none(
                200,
                json!({"id": v.id, "name": v.name, "zone": "z1", "attached_machine_id": null}),
            )
        }
        ("DELETE", ["volumes", id]) => {
            let before = a.volumes.len();
            a.volumes.retain(|v| v.id != *id);
            if a.volumes.len() == before {
                none(404, err("volume not found", "not_found"))
            } else {
                none(200, json!({}))
            }
        }
        ("GET", ["machines"]) => {
            let filter: Vec<(String, String)> = q
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?.to_string(), v.clone())))
                .collect();
            let list: Vec<Value> = a
                .machines
                .iter()
                .filter(|m| {
                    filter
                        .iter()
                        .all(|(k, v)| m.config["metadata"][k].as_str() == Some(v.as_str()))
                })
                .map(|m| machine_json(m, checks_fail_for))
                .collect();
            none(200, Value::Array(list))
        }
        ("POST", ["machines"]) => {
            let config = call.body["config"].clone();
            if config["image"].as_str().is_none() {
                return none(400, err("config.image is required", "invalid"));
            }
            if let Some(min) = call.body["min_secrets_version"].as_u64()
                && min > a.secrets_version
            {
                return none(422, err("secrets version not yet available", "invalid"));
            }
            let m = Machine {
                id: format!("m{seq:06x}"),
                name: call.body["name"].as_str().unwrap_or_default().into(),
                region: call.body["region"].as_str().unwrap_or_default().into(),
                instance_id: format!("i{seq:06x}"),
                state: "started".into(),
                history: vec![config.clone()],
                config,
                min_secrets_version: call.body["min_secrets_version"].as_u64(),
                lease: None,
                exec_answer: None,
                execs: Vec::new(),
            };
            attach(a, &m);
            a.machines.push(m.clone());
            if ambiguous {
                return (408, err("request timed out", "timeout"), Some(m));
            }
            (200, machine_json(&m, checks_fail_for), Some(m))
        }
        (_, ["machines", id, tail @ ..]) => {
            let Some(m) = a.machines.iter_mut().find(|m| m.id == *id) else {
                return none(404, err("machine not found", "not_found"));
            };
            match (method, tail) {
                ("GET", []) => none(200, machine_json(m, checks_fail_for)),
                ("POST", []) => {
                    if let Some((nonce, holder)) = &m.lease
                        && call.lease_nonce.as_deref() != Some(nonce.as_str())
                    {
                        return none(
                            409,
                            err(&format!("machine is leased by {holder}"), "conflict"),
                        );
                    }
                    m.config = call.body["config"].clone();
                    m.history.push(m.config.clone());
                    m.instance_id = format!("i{seq:06x}");
                    m.state = "started".into();
                    m.min_secrets_version = call.body["min_secrets_version"].as_u64();
                    let m2 = m.clone();
                    (200, machine_json(&m2, checks_fail_for), Some(m2))
                }
                ("DELETE", []) => {
                    let id = id.to_string();
                    a.machines.retain(|m| m.id != id);
                    for v in &mut a.volumes {
                        if v.attached_machine_id.as_deref() == Some(id.as_str()) {
                            v.attached_machine_id = None;
                        }
                    }
                    none(200, json!({"ok": true}))
                }
                ("GET", ["wait"]) => {
                    let want = q.get("state").map_or("started", String::as_str);
                    let inst_ok = q.get("instance_id").is_none_or(|i| *i == m.instance_id);
                    if m.state == want && inst_ok {
                        none(200, json!({"ok": true}))
                    } else {
                        none(408, err("timed out waiting for the machine", "timeout"))
                    }
                }
                ("POST", ["lease"]) => {
                    if let Some((_, holder)) = &m.lease {
                        return none(409, err(&format!("lease held by {holder}"), "conflict"));
                    }
                    let nonce = format!("nonce-{seq}");
                    m.lease = Some((nonce.clone(), "the caller".into()));
                    none(200, json!({"status": "success", "data": {"nonce": nonce}}))
                }
                ("DELETE", ["lease"]) => match &m.lease {
                    Some((nonce, _)) if call.lease_nonce.as_deref() == Some(nonce.as_str()) => {
                        m.lease = None;
                        none(200, json!({"ok": true}))
                    }
                    Some(_) => none(409, err("not your lease", "conflict")),
                    None => none(404, err("no lease", "not_found")),
                },
                // fly-go's MachineExecRequest: {"command": [...], "timeout": s}.
                ("POST", ["exec"]) => {
                    if m.state != "started" {
                        return none(412, err("machine is not started", "failed_precondition"));
                    }
                    m.execs.push(call.body.clone());
                    let (code, out) = m.exec_answer.clone().unwrap_or((
                        0,
                        "backed-up: snapshot 1a2b3c4d (9 files, 1234 bytes new, 2 databases copied) in 900 ms\n".into(),
                    ));
                    none(200, json!({"exit_code": code, "stdout": out, "stderr": ""}))
                }
                ("POST", ["stop"]) => {
                    m.state = "stopped".into();
                    none(200, json!({"ok": true}))
                }
                ("POST", ["start"]) => {
                    m.state = "started".into();
                    let m2 = m.clone();
                    (200, json!({"ok": true}), Some(m2))
                }
                _ => none(
                    404,
                    err("no such machine endpoint in the stand-in", "not_found"),
                ),
            }
        }
        _ => none(
            404,
            err("no such app endpoint in the stand-in", "not_found"),
        ),
    }
}

/// The volumes a Machine's config mounts are attached to it.
fn attach(a: &mut App, m: &Machine) {
    for mount in m.config["mounts"].as_array().into_iter().flatten() {
        if let Some(v) = mount["volume"]
            .as_str()
            .and_then(|id| a.volumes.iter_mut().find(|v| v.id == id))
        {
            v.attached_machine_id = Some(m.id.clone());
        }
    }
}
