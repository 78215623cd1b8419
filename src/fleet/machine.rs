//! A Buddy's Fly Machine, defined in one place: the shared base image
//! pinned by digest, plus the Buddy's own files (buddy.json, config.json,
//! its workspace) carried in the Machine config's `files` at the Buddy
//! directory the supervisor reads, so no per-Buddy image is built to spawn
//! or upgrade a Buddy. The Machine also carries the template it was
//! checked with ([`TEMPLATE_GUEST_PATH`]), which the boot renders with
//! instead of the image's: a checkout newer or older than the pinned base
//! cannot give a Buddy a config check-config never saw. Everything else (guest size, the state volume's
//! mount, the private service, the health check, the restart policy, the
//! stop signal and timeout, the environment) is read from `fly.toml`, the
//! one statement of those facts: `check-config` builds every Buddy's Machine
//! from it, so a fly.toml that cannot describe a Machine fails CI.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::buddy;
use crate::config::problem::Problem;

/// Where the image's supervisor reads the Buddy (its `--buddy` default);
/// off the state volume's mount, as the API's `files` want.
pub const BUDDY_GUEST_DIR: &str = "/opt/mybuddy/buddy";

/// Where the Machine carries its template: beside [`BUDDY_GUEST_DIR`], at
/// the place `config::render::default_template` looks first.
pub const TEMPLATE_GUEST_PATH: &str = "/opt/mybuddy/_machine/template.json";

/// Where the base image carries fly.toml, for spells cast on a Machine.
pub const IMAGE_FLY_TOML: &str = "/opt/mybuddy/fly.toml";

/// The most the Buddy's files may weigh in a Machine config. Fly publishes
/// no limit ("won't work for large files"); a Buddy's definition is a few
/// KiB of JSON and Markdown, so anything near this is a mistake (a memory
/// dump, a credential store) that belongs on the volume instead.
pub const FILES_LIMIT: usize = 256 * 1024;

/// Metadata keys on every Buddy's Machine.
pub const META_BUDDY: &str = "mybuddy_buddy";
pub const META_ROLE: &str = "mybuddy_role";

/// The facts of `fly.toml` a Machine config is made of.
#[derive(Debug, Clone)]
pub struct FlyFacts {
    pub path: PathBuf,
    pub region: String,
    pub env: BTreeMap<String, String>,
    pub mount_source: String,
    pub mount_destination: String,
    pub volume_size_gb: u32,
    /// Days Fly keeps the volume's daily snapshots (`mounts.snapshot_retention`):
    /// the second way back, beside the Buddy's own backups.
    pub snapshot_retention: Option<u32>,
    pub guest: Value,
    pub services: Value,
    pub checks: Value,
    pub restart: Value,
    pub stop_config: Value,
    /// `[metrics]`: where Fly scrapes the supervisor's metrics.
    pub metrics: Value,
}

/// The Fly app of a Buddy.
pub fn app_name(slug: &str) -> String {
    format!("mybuddytalk-{slug}")
}

/// Reads the facts; every missing or malformed one is a problem (no
/// silent default: a Machine made without one would differ from fly.toml).
pub fn fly_facts(fly_toml: &Path) -> Result<FlyFacts, Vec<Problem>> {
    let p = |loc: &str, msg: String| Problem::new(fly_toml, loc, msg);
    let text =
        fs::read_to_string(fly_toml).map_err(|e| vec![p("", format!("cannot read: {e}"))])?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| vec![p("", format!("invalid TOML: {}", e.message()))])?;
    let mut problems = Vec::new();
    let mut need = |loc: &str, v: Option<Value>| -> Value {
        v.unwrap_or_else(|| {
            problems.push(p(
                loc,
                "missing: the Buddies' Machines are made from it".into(),
            ));
            Value::Null
        })
    };
    let str_of = |v: &toml::Value| {
        v.as_str()
            .map(str::to_string)
            .or_else(|| v.as_integer().map(|i| i.to_string()))
    };
    let region = need(
        "primary_region",
        doc.get("primary_region")
            .and_then(|v| v.as_str())
            .map(Value::from),
    );
    let env: BTreeMap<String, String> = doc
        .get("env")
        .and_then(|e| e.as_table())
        .map(|t| {
            t.iter()
                .filter_map(|(k, v)| Some((k.clone(), str_of(v)?)))
                .collect()
        })
        .unwrap_or_default();
    let mounts = doc.get("mounts").and_then(|m| match m {
        toml::Value::Array(a) => a.first().cloned(),
        other => Some(other.clone()),
    });
    let mount = |k: &str| {
        mounts
            .as_ref()
            .and_then(|m| m.get(k))
            .and_then(|v| v.as_str())
            .map(Value::from)
    };
    let mount_source = need("mounts.source", mount("source"));
    let mount_destination = need("mounts.destination", mount("destination"));
    let volume_size = mounts
        .as_ref()
        .and_then(|m| m.get("initial_size"))
        .and_then(|v| v.as_str())
        .and_then(|s| {
            s.trim_end_matches("gb")
                .trim_end_matches("GB")
                .parse::<u32>()
                .ok()
        })
        .map(Value::from);
    let volume_size_gb = need("mounts.initial_size", volume_size);
    let (snapshot_retention, retention_problem) =
        match mounts.as_ref().and_then(|m| m.get("snapshot_retention")) {
            None => (None, None),
            Some(toml::Value::Integer(d)) if (1..=60).contains(d) => (Some(*d as u32), None),
            Some(other) => (
                None,
                Some(p(
                    "mounts.snapshot_retention",
                    format!("{other} is not a number of days from 1 to 60 (Fly's limits)"),
                )),
            ),
        };

    let vm = doc.get("vm").and_then(|v| match v {
        toml::Value::Array(a) => a.first().cloned(),
        other => Some(other.clone()),
    });
    let guest = vm.as_ref().and_then(|vm| {
        let size = vm.get("size")?.as_str()?;
        // "shared-cpu-2x" / "performance-4x": the kind and the count.
        let (kind, n) = size.rsplit_once('-')?;
        let cpus: u64 = n.trim_end_matches('x').parse().ok()?;
        let cpu_kind = if kind.starts_with("shared") {
            "shared"
        } else {
            "performance"
        };
        let memory_mb = memory_mb(vm.get("memory")?)?;
        Some(json!({"cpu_kind": cpu_kind, "cpus": cpus, "memory_mb": memory_mb}))
    });
    let guest = need("vm (size and memory, e.g. shared-cpu-2x and 2gb)", guest);

    let services: Option<Value> = doc.get("services").and_then(|s| s.as_array()).map(|list| {
        Value::Array(
            list.iter()
                .map(|s| {
                    let ports: Vec<Value> = s
                        .get("ports")
                        .and_then(|p| p.as_array())
                        .map(|ps| {
                            ps.iter()
                                .map(|port| {
                                    json!({
                                        "port": port.get("port").and_then(|v| v.as_integer()),
                                        "handlers": port.get("handlers").map(toml_to_json).unwrap_or(json!([])),
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    json!({
                        "protocol": s.get("protocol").and_then(|v| v.as_str()).unwrap_or("tcp"),
                        "internal_port": s.get("internal_port").and_then(|v| v.as_integer()),
                        "autostop": s.get("auto_stop_machines").and_then(|v| v.as_str()).unwrap_or("off"),
                        "autostart": s.get("auto_start_machines").and_then(|v| v.as_bool()).unwrap_or(false),
                        "min_machines_running": s.get("min_machines_running").and_then(|v| v.as_integer()).unwrap_or(0),
                        "ports": ports,
                    })
                })
                .collect(),
        )
    });
    let services = need("services", services);

    let checks: Option<Value> = doc.get("checks").and_then(|c| c.as_table()).map(|t| {
        Value::Object(
            t.iter()
                .map(|(name, c)| (name.clone(), toml_to_json(c)))
                .collect::<Map<String, Value>>(),
        )
    });
    let checks = need("checks", checks);

    let restart = doc
        .get("restart")
        .and_then(|r| match r {
            toml::Value::Array(a) => a.first().cloned(),
            other => Some(other.clone()),
        })
        .and_then(|r| {
            let policy = r.get("policy")?.as_str()?;
            // fly.toml says "never"; the Machines API says "no".
            let policy = if policy == "never" { "no" } else { policy };
            let mut v = json!({"policy": policy});
            if let Some(n) = r.get("retries").and_then(|n| n.as_integer()) {
                v["max_retries"] = json!(n);
            }
            Some(v)
        });
    let restart = need("restart.policy", restart);

    let stop = match (
        doc.get("kill_signal").and_then(|v| v.as_str()),
        doc.get("kill_timeout").and_then(str_of),
    ) {
        (Some(sig), Some(t)) => {
            Some(json!({"signal": sig, "timeout": format!("{}s", t.trim_end_matches('s'))}))
        }
        _ => None,
    };
    let stop_config = need("kill_signal and kill_timeout", stop);
    problems.extend(retention_problem);

    // The supervisor serves its metrics at one port and path: fly.toml must
    // scrape exactly those, and no service may publish that port.
    use crate::health::metrics::{PATH as METRICS_PATH, PORT as METRICS_PORT};
    let metrics = doc.get("metrics").map(|m| {
        (
            m.get("port").and_then(|v| v.as_integer()),
            m.get("path").and_then(|v| v.as_str()),
        )
    });
    let metrics = match metrics {
        Some((Some(port), Some(path))) if port == METRICS_PORT as i64 && path == METRICS_PATH => {
            json!({"port": port, "path": path})
        }
        found => {
            problems.push(p(
                "metrics",
                format!(
                    "{}: the supervisor serves its metrics at port {METRICS_PORT}, path {METRICS_PATH} (set [metrics] port = {METRICS_PORT}, path = \"{METRICS_PATH}\")",
                    match found {
                        None => "missing".to_string(),
                        Some((port, path)) => format!("port {port:?}, path {path:?}"),
                    }
                ),
            ));
            Value::Null
        }
    };
    if services.as_array().is_some_and(|list| {
        list.iter()
            .any(|s| s["internal_port"] == json!(METRICS_PORT))
    }) {
        problems.push(p(
            "services",
            format!("a service publishes port {METRICS_PORT}, the supervisor's metrics: they are for Fly's scraper on the private network only"),
        ));
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(FlyFacts {
        path: fly_toml.to_path_buf(),
        region: region.as_str().unwrap_or_default().to_string(),
        env,
        mount_source: mount_source.as_str().unwrap_or_default().to_string(),
        mount_destination: mount_destination.as_str().unwrap_or_default().to_string(),
        volume_size_gb: volume_size_gb.as_u64().unwrap_or(1) as u32,
        snapshot_retention,
        guest,
        services,
        checks,
        restart,
        stop_config,
        metrics,
    })
}

/// "2gb", "2048mb", "2048" or 2048 in megabytes.
fn memory_mb(v: &toml::Value) -> Option<u64> {
    if let Some(i) = v.as_integer() {
        return u64::try_from(i).ok();
    }
    let s = v.as_str()?.trim().to_ascii_lowercase();
    if let Some(g) = s.strip_suffix("gb") {
        return g.trim().parse::<u64>().ok().map(|g| g * 1024);
    }
    s.trim_end_matches("mb").trim().parse().ok()
}

fn toml_to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// One file a Machine is given.
#[derive(Debug, Clone)]
pub struct GuestFile {
    pub guest_path: String,
    pub content: Vec<u8>,
}

/// The Buddy's own files, at their place under [`BUDDY_GUEST_DIR`]:
/// buddy.json, config.json and the workspace (the files check-config
/// allows there). Sorted, so the same Buddy gives the same config. The
/// files it could read, and a problem for each it could not.
pub fn buddy_files(b: &buddy::BuddyDir) -> (Vec<GuestFile>, Vec<Problem>) {
    let buddy_dir = b.dir.as_path();
    let mut problems = Vec::new();
    let ws = b.workspace_path();
    let mut stack = vec![ws.clone()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => files.push(p),
                _ => problems.push(Problem::new(
                    &p,
                    "",
                    "not a file or directory: a Machine carries only files",
                )),
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    let all = [
        (b.identity_path(), "buddy.json".to_string()),
        (b.config_path(), "config.json".to_string()),
    ]
    .into_iter()
    .chain(files.into_iter().map(|f| {
        let rel = f
            .strip_prefix(buddy_dir)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        (f, rel)
    }));
    for (path, rel) in all {
        match fs::read(&path) {
            Ok(content) => out.push(GuestFile {
                guest_path: format!("{BUDDY_GUEST_DIR}/{rel}"),
                content,
            }),
            Err(e) => problems.push(Problem::new(&path, "", format!("cannot read: {e}"))),
        }
    }
    (out, problems)
}

/// What a Machine is made of besides its base image: the Buddy's directory
/// and the template it was checked with (None: the Machine carries none
/// and renders with its image's).
#[derive(Debug, Clone, Copy)]
pub struct Definition<'a> {
    pub dir: &'a Path,
    pub template: Option<&'a Path>,
}

impl<'a> Definition<'a> {
    pub fn new(dir: &'a Path, template: &'a Path) -> Self {
        Definition {
            dir,
            template: Some(template),
        }
    }
}

/// The Machine config for `def` on `image` (pinned by digest:
/// `…@sha256:…`), its state volume `volume` (an id; None while only
/// checking). The image's digest is the version the Buddy registers.
pub fn config(
    facts: &FlyFacts,
    def: Definition<'_>,
    image: &str,
    volume: Option<&str>,
) -> Result<Value, Vec<Problem>> {
    let (buddy_dir, template) = (def.dir, def.template);
    let mut problems = Vec::new();
    let Some((_, digest)) = image.split_once("@sha256:") else {
        return Err(vec![Problem::new(
            buddy_dir,
            "",
            format!(
                "image {image:?} is not pinned by digest (…@sha256:<hex>): a Machine must run exactly the image that was tested"
            ),
        )]);
    };
    let b = buddy::load(buddy_dir).map_err(|p| p.items)?;
    let (mut files, unread) = buddy_files(&b);
    problems.extend(unread);
    if let Some(t) = template {
        match fs::read(t) {
            Ok(content) => files.push(GuestFile {
                guest_path: TEMPLATE_GUEST_PATH.to_string(),
                content,
            }),
            Err(e) => problems.push(Problem::new(
                t,
                "",
                format!("cannot read the template: {e}"),
            )),
        }
    }
    // Weighed once, whole: everything the Machine config carries.
    let total: usize = files.iter().map(|f| f.content.len()).sum();
    if total > FILES_LIMIT {
        problems.push(Problem::new(
            buddy_dir,
            "",
            format!(
                "its files weigh {total} bytes with the template its Machine carries, over the {FILES_LIMIT} a Machine config should carry: keep large or generated files on the volume"
            ),
        ));
    }
    if BUDDY_GUEST_DIR.starts_with(&format!("{}/", facts.mount_destination)) {
        problems.push(Problem::new(
            &facts.path,
            "mounts.destination",
            format!("{} holds the Buddy's files ({BUDDY_GUEST_DIR}); Fly does not say whether files are written before or after the volume is mounted", facts.mount_destination),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut env = facts.env.clone();
    env.insert(
        "MYBUDDY_IMAGE_VERSION".into(),
        format!("sha256:{}", &digest[..digest.len().min(12)]),
    );
    let files: Vec<Value> = files
        .iter()
        .map(|f| {
            json!({
                "guest_path": f.guest_path,
                "raw_value": base64::engine::general_purpose::STANDARD.encode(&f.content),
                "mode": 0o644,
            })
        })
        .collect();
    let slug = b.identity.slug();
    Ok(json!({
        "image": image,
        "env": env,
        "guest": facts.guest,
        "mounts": [{"volume": volume.unwrap_or("(the Buddy's volume)"), "path": facts.mount_destination}],
        "services": facts.services,
        "checks": facts.checks,
        "restart": facts.restart,
        "stop_config": facts.stop_config,
        "metrics": facts.metrics,
        "metadata": {META_BUDDY: slug, META_ROLE: b.identity.role.to_string()},
        "files": files,
    }))
}

/// Writes a Machine config's `files` under `root`, each at its guest path,
/// as Fly writes them into the Machine: the tree a local image of the
/// Buddy is built from (`images/buddy/Dockerfile`), so that image is the
/// base plus exactly what its Machine would carry. `root` is the caller's
/// own new directory. Returns how many files were written.
pub fn lay_out(config: &Value, root: &Path) -> Result<usize, String> {
    use std::os::unix::fs::PermissionsExt;
    let files = config["files"]
        .as_array()
        .ok_or("the Machine config has no files")?;
    for f in files {
        let guest = f["guest_path"].as_str().unwrap_or_default();
        let rel = Path::new(guest)
            .strip_prefix("/")
            .ok()
            .filter(|r| {
                r.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            })
            .ok_or_else(|| format!("{guest:?}: not an absolute path without ..: not laid out"))?;
        let content = base64::engine::general_purpose::STANDARD
            .decode(f["raw_value"].as_str().unwrap_or_default())
            .map_err(|e| format!("{guest}: its raw_value is not base64: {e}"))?;
        let at = root.join(rel);
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(at.parent().unwrap_or(root))?;
            fs::write(&at, &content)?;
            let mode = f["mode"].as_u64().unwrap_or(0o644) as u32 & 0o777;
            fs::set_permissions(&at, fs::Permissions::from_mode(mode))
        };
        write().map_err(|e| format!("{}: {e}", at.display()))?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn the_repository_s_fly_toml_describes_a_whole_machine() {
        let f = fly_facts(&repo().join("fly.toml")).unwrap();
        assert_eq!(
            f.guest,
            json!({"cpu_kind": "shared", "cpus": 2, "memory_mb": 2048})
        );
        assert_eq!(f.mount_destination, "/data");
        assert_eq!(f.restart, json!({"policy": "always"}));
        assert_eq!(
            f.stop_config,
            json!({"signal": "SIGTERM", "timeout": "30s"})
        );
        assert_eq!(f.checks["healthz"]["path"], "/healthz");
        assert_eq!(f.services[0]["internal_port"], 18789);
        assert_eq!(
            f.services[0]["ports"][0],
            json!({"port": 80, "handlers": ["http"]})
        );
        assert_eq!(f.env["MYBUDDY_SHARE"], "juicefs");
        assert_eq!(f.metrics, json!({"port": 9091, "path": "/metrics"}));
    }

    #[test]
    fn a_machine_is_the_pinned_base_image_plus_the_buddy_s_files() {
        let f = fly_facts(&repo().join("fly.toml")).unwrap();
        let dir = repo().join("buddies/roelbuddy-galahad");
        let img = "registry.fly.io/mybuddytalk-base@sha256:0123456789abcdef0123";
        let tpl = repo().join("buddies/_template/config.json");
        let def = Definition::new(&dir, &tpl);
        let c = config(&f, def, img, Some("vol_1")).unwrap();
        assert_eq!(c["image"], img);
        assert_eq!(c["env"]["MYBUDDY_IMAGE_VERSION"], "sha256:0123456789ab");
        assert_eq!(c["mounts"], json!([{"volume": "vol_1", "path": "/data"}]));
        assert_eq!(c["metadata"][META_BUDDY], "roelbuddy-galahad");
        let paths: Vec<&str> = c["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["guest_path"].as_str().unwrap())
            .collect();
        assert!(paths.contains(&"/opt/mybuddy/buddy/buddy.json"));
        assert!(paths.contains(&"/opt/mybuddy/buddy/workspace/SOUL.md"));
        // It carries the template it was checked with, byte for byte, where
        // the boot looks first.
        let carried = c["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["guest_path"] == TEMPLATE_GUEST_PATH)
            .expect("the template is among the Machine's files");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(carried["raw_value"].as_str().unwrap())
                .unwrap(),
            fs::read(&tpl).unwrap()
        );
        assert_eq!(
            Path::new(BUDDY_GUEST_DIR)
                .parent()
                .unwrap()
                .join(crate::config::render::MACHINE_TEMPLATE),
            Path::new(TEMPLATE_GUEST_PATH)
        );
        // The same Buddy, the same config.
        assert_eq!(c, config(&f, def, img, Some("vol_1")).unwrap());
        let e = config(&f, def, "registry.fly.io/mybuddytalk-base:latest", None).unwrap_err();
        assert!(e[0].message.contains("not pinned by digest"), "{e:?}");
    }
}
