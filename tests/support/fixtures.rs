//! The test world: a copy of the repository's Buddies with a state and a
//! swarm dir, marker secrets that any leak would show, and the arguments of
//! `supervisor run` for a Buddy.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

/// The four Buddies of the architecture document, as buddies/ holds them.
pub const SWARM_MEMBERS: [&str; 4] = [
    "roelbuddy-emrys",
    "roelbuddy-galahad",
    "estherbuddy-kazeh",
    "estherbuddy-morgan",
];

/// A temporary world: a copy of `buddies/`, a state dir and a swarm dir.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub buddies: PathBuf,
    pub state: PathBuf,
    pub swarm: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("mybuddy-test-")
            .tempdir()
            .unwrap();
        // Other users (the gateway's uid) must be able to traverse it.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let buddies = tmp.path().join("buddies");
        copy_tree(&repo().join("buddies"), &buddies);
        let state = tmp.path().join("state");
        let swarm = tmp.path().join("swarm");
        fs::create_dir_all(&swarm).unwrap();
        Fixture {
            tmp,
            buddies,
            state,
            swarm,
        }
    }

    pub fn buddy(&self, slug: &str) -> PathBuf {
        self.buddies.join(slug)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// A world-writable dir (mode 1777) for files the gateway-uid child writes.
    pub fn scratch(&self, rel: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let d = self.tmp.path().join("scratch");
        if !d.exists() {
            fs::create_dir_all(&d).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
        }
        d.join(rel)
    }
}

/// The variables a Buddy needs, as the real `supervisor secrets` lists them.
pub fn secret_names(buddy: &Path) -> Vec<String> {
    secret_names_of(buddy, &[])
}

/// `supervisor secrets --buddy DIR [which]` (`--share`, `--forbidden`).
pub fn secret_names_of(buddy: &Path, which: &[&str]) -> Vec<String> {
    let out = Command::new(supervisor())
        .args(["secrets", "--buddy"])
        .arg(buddy)
        .args(which)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "secrets failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A recognisable value per secret: any output that contains one leaked it.
pub fn marker(name: &str) -> String {
    format!("MARKER{}x9q", name.len() * 7919 % 100000)
}

pub fn marker_env(buddy: &Path) -> Vec<(String, String)> {
    secret_names(buddy)
        .into_iter()
        .map(|n| {
            let v = marker(&n);
            (n, v)
        })
        .collect()
}

/// A base environment for the supervisor: PATH and HOME, nothing else.
pub fn base_env() -> Vec<(String, String)> {
    vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        ),
        ("HOME".into(), "/root".into()),
    ]
}

/// Sets `gateway.port` in a Buddy's personal config.
pub fn set_buddy_port(buddy: &Path, port: u16) {
    let p = buddy.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    v["gateway"] = serde_json::json!({"port": port});
    fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// `supervisor registry --swarm SWARM register --buddy DIR [extra...]`.
pub fn registry_register(swarm: &Path, buddy: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(supervisor())
        .args(["registry", "--swarm"])
        .arg(swarm)
        .arg("register")
        .args(extra)
        .arg("--buddy")
        .arg(buddy)
        .output()
        .unwrap()
}

/// The arguments of `supervisor run` for a Buddy against a local state dir
/// and an unmounted swarm dir, then `extra` flags and `-- child...`.
pub fn run_args(
    buddy: &Path,
    state: &Path,
    swarm: &Path,
    extra: &[&str],
    child: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--buddy".into(),
        buddy.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--swarm".into(),
        swarm.display().to_string(),
        "--swarm-dir-unmounted".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    if !child.is_empty() {
        a.push("--".into());
        a.extend(child.iter().map(|s| s.to_string()));
    }
    a
}

/// `supervisor run ARGS` with exactly `env`, output discarded (set others on the result).
pub fn run_cmd(args: &[String], env: &[(String, String)]) -> Command {
    let mut c = Command::new(supervisor());
    c.arg("run")
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// `n` minimal Buddy dirs (`loadbuddy-<prefix><i>`, role buddy, planned) for registry load tests.
pub fn make_buddies(dir: &Path, prefix: &str, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i:03}");
            let d = dir.join(format!("loadbuddy-{}", name.to_lowercase()));
            fs::create_dir_all(&d).unwrap();
            fs::write(
                d.join("buddy.json"),
                format!(r#"{{"human":"Load","name":"{name}","role":"buddy","channels":{{"telegram":true}},"status":"planned"}}"#),
            )
            .unwrap();
            d
        })
        .collect()
}
