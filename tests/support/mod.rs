//! Shared helpers for the integration tests: fixtures with a copy of the
//! repository's Buddies, the supervisor run for real (optionally as PID 1 of a
//! new PID namespace), and the pinned gateway installed by the project script.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The four Buddies of the architecture document, as buddies/ holds them.
pub const SWARM_MEMBERS: [&str; 4] = [
    "roelbuddy-emrys",
    "roelbuddy-galahad",
    "estherbuddy-kazeh",
    "estherbuddy-morgan",
];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn supervisor() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_supervisor"))
}

/// Copies a directory tree (test fixtures only).
pub fn copy_tree(src: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    for e in fs::read_dir(src).unwrap().flatten() {
        let to = dest.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

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
    let out = Command::new(supervisor())
        .args(["secrets", "--buddy"])
        .arg(buddy)
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

/// Waits for `f` to return Some, polling every 20 ms, up to `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `supervisor run`, directly or as PID 1 of a new PID namespace.
pub struct Sup {
    pub child: Child,
    pub pid1: bool,
    pub stderr: PathBuf,
    pub stdout: PathBuf,
    status: Option<ExitStatus>,
}

impl Sup {
    /// Starts `supervisor run ARGS` with exactly `env`.
    pub fn start(dir: &Path, pid1: bool, args: &[String], env: &[(String, String)]) -> Sup {
        Self::start_wrapped(dir, pid1, false, args, env)
    }

    /// Starts it in a private mount namespace with a fresh tmpfs mounted at
    /// `tmpfs` first (a real mount point for the swarm share).
    pub fn start_with_tmpfs(
        dir: &Path,
        pid1: bool,
        tmpfs: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Sup {
        let mut full = vec![
            "-c".to_string(),
            "mount -t tmpfs -o mode=0755 tmpfs \"$0\" && exec \"$@\"".to_string(),
            tmpfs.display().to_string(),
            supervisor().display().to_string(),
            "run".to_string(),
        ];
        full.extend(args.iter().cloned());
        let stderr = dir.join(format!("sup-{}.err", unique()));
        let stdout = dir.join(format!("sup-{}.out", unique()));
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private"]);
        if pid1 {
            cmd.args(["--pid", "--fork", "--mount-proc"]);
        }
        cmd.arg("/bin/sh")
            .args(&full)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap());
        Sup {
            child: cmd.spawn().expect("start supervisor"),
            pid1,
            stderr,
            stdout,
            status: None,
        }
    }

    /// Like `start`; `offline` runs it in a new network namespace with no
    /// route anywhere, for a gateway that would try to reach the internet.
    pub fn start_wrapped(
        dir: &Path,
        pid1: bool,
        offline: bool,
        args: &[String],
        env: &[(String, String)],
    ) -> Sup {
        Self::start_sub(dir, pid1, offline, "run", args, env)
    }

    /// Starts `supervisor init ARGS` (the plain init) with exactly `env`.
    pub fn start_init(dir: &Path, pid1: bool, args: &[String], env: &[(String, String)]) -> Sup {
        Self::start_sub(dir, pid1, false, "init", args, env)
    }

    fn start_sub(
        dir: &Path,
        pid1: bool,
        offline: bool,
        sub: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Sup {
        let stderr = dir.join(format!("sup-{}.err", unique()));
        let stdout = dir.join(format!("sup-{}.out", unique()));
        let mut cmd = Command::new("unshare");
        if offline {
            // Without --fork unshare execs the supervisor: same pid.
            cmd.arg("--net");
        }
        if pid1 {
            cmd.args(["--pid", "--fork", "--mount-proc"]);
        }
        cmd.arg(supervisor());
        cmd.arg(sub)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap());
        let child = cmd.spawn().expect("start supervisor");
        Sup {
            child,
            pid1,
            stderr,
            stdout,
            status: None,
        }
    }

    /// The supervisor's pid as seen from here.
    pub fn pid(&self) -> i32 {
        if !self.pid1 {
            return self.child.id() as i32;
        }
        let unshare = self.child.id();
        wait_for(Duration::from_secs(5), || {
            let kids =
                fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
            kids.split_whitespace().next()?.parse().ok()
        })
        .expect("the supervisor inside the namespace")
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn out(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until the supervisor's log contains `needle` `n` times.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        wait_for(timeout, || {
            (self.log().matches(needle).count() >= n).then_some(())
        })
        .is_some()
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_log_count(needle, 1, timeout)
    }

    pub fn wait_out(&self, needle: &str, timeout: Duration) -> bool {
        wait_for(timeout, || self.out().contains(needle).then_some(())).is_some()
    }

    /// Waits for the exit and returns the code (128+n for a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        if self.status.is_none() {
            let child = &mut self.child;
            self.status = wait_for(timeout, || child.try_wait().ok().flatten());
        }
        self.status.map(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        })
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let pid = self.pid();
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Processes whose parent is `ppid`, with their state letter.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        if f.len() > 2 && f[1].parse::<i32>() == Ok(ppid) {
            out.push((pid, f[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

/// A status field of /proc/<pid>/status (Uid, Groups, SigBlk, NoNewPrivs...).
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

/// The pinned gateway, installed (once, cached) by the project's own script.
pub fn gateway_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("MYBUDDY_GATEWAY_DIR") {
            return PathBuf::from(d);
        }
        let out = Command::new(repo().join("scripts/install-gateway"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/install-gateway");
        assert!(out.status.success(), "scripts/install-gateway failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// PATH with the pinned Node 22 and clawdbot first.
pub fn gateway_path() -> String {
    format!(
        "{}:{}",
        gateway_dir().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A loopback port with the three after it free too (the gateway also binds
/// port+2 and port+3).
pub fn free_port_block() -> u16 {
    use std::net::TcpListener;
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        if p > 60000 {
            continue;
        }
        if (0..4).all(|i| TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

/// A shell script fault-injection child, written to `dir/name`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Result of the gateway's connect handshake.
#[derive(Debug)]
pub enum Handshake {
    HelloOk,
    Refused(String),
}

/// Connects to the gateway's WebSocket on 127.0.0.1, answers its
/// `connect.challenge` with `token`, and reports the answer.
pub fn gateway_handshake(port: u16, token: Option<&str>) -> Result<Handshake, String> {
    use tungstenite::Message;
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(15))).ok();
    let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/"), stream)
        .map_err(|e| e.to_string())?;
    let mut challenged = false;
    loop {
        let msg = ws.read().map_err(|e| e.to_string())?;
        let Message::Text(text) = msg else { continue };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if v["event"] == "connect.challenge" && !challenged {
            challenged = true;
            let mut params = serde_json::json!({
                "minProtocol": 3, "maxProtocol": 3,
                "client": {"id": "test", "version": "1", "platform": "linux", "mode": "test"}
            });
            if let Some(t) = token {
                params["auth"] = serde_json::json!({"token": t});
            }
            let req = serde_json::json!({"type": "req", "id": "c1", "method": "connect", "params": params});
            ws.send(Message::Text(req.to_string().into()))
                .map_err(|e| e.to_string())?;
        } else if v["type"] == "res" && v["id"] == "c1" {
            let _ = ws.close(None);
            return Ok(if v["ok"] == true && v["payload"]["type"] == "hello-ok" {
                Handshake::HelloOk
            } else {
                Handshake::Refused(format!("{} {}", v["error"]["code"], v["error"]["message"]))
            });
        }
    }
}

/// Whether something listens on 0.0.0.0:port (a `lan` bind), per /proc/net/tcp.
pub fn listens_on_all_interfaces(port: u16) -> bool {
    let want = format!("00000000:{port:04X}");
    fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
}

/// Sets `gateway.port` in a Buddy's personal config.
pub fn set_buddy_port(buddy: &Path, port: u16) {
    let p = buddy.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    v["gateway"] = serde_json::json!({"port": port});
    fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The supervisor built static (for images without libc): from scripts/test,
/// or built here into its own target dir.
pub fn static_supervisor() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("MYBUDDY_STATIC_SUPERVISOR") {
            return PathBuf::from(p);
        }
        let path = sh(&mut Command::new(repo().join("scripts/build-static")));
        PathBuf::from(path.trim())
    })
    .clone()
}

/// Runs a command, asserting success, returning stdout.
pub fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A container removed when dropped.
pub struct Container(pub String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

impl Container {
    pub fn logs(&self) -> String {
        let o = Command::new("docker")
            .args(["logs", &self.0])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }
    pub fn exit_code(&self) -> i32 {
        sh(Command::new("docker").args(["inspect", "-f", "{{.State.ExitCode}}", &self.0]))
            .parse()
            .unwrap()
    }
    pub fn wait_logs(&self, needle: &str, timeout: Duration) -> bool {
        wait_for(timeout, || self.logs().contains(needle).then_some(())).is_some()
    }
}

/// A recording stand-in for `fly`, first on PATH: every call is appended as
/// one JSON array of its arguments to `calls`, the stdin of `secrets import`
/// to `stdin`. `apps list`, `volumes list` and `secrets list` answer with the
/// JSON in `apps.json`, `volumes.json`, `secrets.json` (default `[]`); a call
/// whose arguments start with a line of `fail` exits 1.
pub struct FakeFly {
    pub dir: PathBuf,
}

impl FakeFly {
    pub fn new(parent: &Path) -> FakeFly {
        let dir = parent.join("fakefly");
        fs::create_dir_all(dir.join("bin")).unwrap();
        let body = format!(
            r#"d={d}
python3 - "$@" >> "$d/calls" <<'PY'
import json, sys
print(json.dumps(sys.argv[1:]))
PY
args="$*"
if [ -f "$d/fail" ]; then
  while read -r prefix; do
    case "$args" in "$prefix"*) echo "fly: simulated failure of: $prefix" >&2; exit 1;; esac
  done < "$d/fail"
fi
case "$args" in
  "apps list"*) cat "$d/apps.json" 2>/dev/null || echo '[]' ;;
  "volumes list"*) cat "$d/volumes.json" 2>/dev/null || echo '[]' ;;
  "secrets list"*) cat "$d/secrets.json" 2>/dev/null || echo '[]' ;;
  "secrets import"*) cat >> "$d/stdin" ;;
esac
exit 0"#,
            d = dir.display()
        );
        script(&dir.join("bin"), "fly", &body);
        FakeFly { dir }
    }

    pub fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    pub fn calls(&self) -> Vec<Vec<String>> {
        fs::read_to_string(self.dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn stdin(&self) -> String {
        fs::read_to_string(self.dir.join("stdin")).unwrap_or_default()
    }

    pub fn answer(&self, what: &str, json: &str) {
        fs::write(self.dir.join(format!("{what}.json")), json).unwrap();
    }

    pub fn fail_on(&self, prefix: &str) {
        fs::write(self.dir.join("fail"), format!("{prefix}\n")).unwrap();
    }
}

/// A small deterministic pseudo-random sequence (xorshift32) for fault timing:
/// reproducible runs without a dependency.
pub fn next_random(state: &mut u32) -> u32 {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    *state
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
