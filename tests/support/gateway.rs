//! The pinned gateway, installed by the project's own script, and what a
//! client sees of it: its ports and its WebSocket handshake.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::*;

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

/// PATH with the pinned Node 24 and openclaw first.
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
            // Protocol 4 (OpenClaw 2026.9): a v3 connect gets PROTOCOL_MISMATCH;
            // the client id must be one the gateway knows.
            let mut params = serde_json::json!({
                "minProtocol": 4, "maxProtocol": 4,
                "client": {"id": "gateway-client", "version": "1", "platform": "linux", "mode": "backend"}
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

/// Whether something listens on 0.0.0.0:port (a `lan` bind) in the network
/// namespace of process `pid`, per its /proc/PID/net/tcp.
pub fn listens_on_all_interfaces(pid: i32, port: u16) -> bool {
    let want = format!("00000000:{port:04X}");
    fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
}

/// Runs `f` on a thread that has joined the network namespace of process
/// `pid` (setns is per thread: the test's other threads stay where they are),
/// so a client can reach a gateway on that namespace's loopback.
pub fn in_netns_of<T: Send + 'static>(pid: i32, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsFd;
    let ns = fs::File::open(format!("/proc/{pid}/ns/net")).expect("open the netns");
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// `GET path` on 127.0.0.1:port: (status, body), or None if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// `GET path` on 127.0.0.1:port inside the network namespace of process
/// `pid` (a supervisor started offline), with curl through nsenter.
pub fn http_get_in(pid: i32, port: u16, path: &str) -> Option<(u16, String)> {
    let o = Command::new("nsenter")
        .args([format!("--net=/proc/{pid}/ns/net"), "--".into()])
        .args(["curl", "-s", "-m", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_string()))
}

/// `supervisor run` arguments for Buddy dir `b` of fixture `f` with the real
/// gateway: its install, its warm compile cache, an unmounted local swarm.
pub fn real_gateway_args(f: &Fixture, b: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let gw = gateway_dir();
    let mut args: Vec<String> = vec![
        "--buddy".into(),
        b.display().to_string(),
        "--state-dir".into(),
        f.state.display().to_string(),
        "--swarm".into(),
        f.swarm.display().to_string(),
        "--swarm-dir-unmounted".into(),
        "--gateway-dir".into(),
        gw.display().to_string(),
        "--warm-cache".into(),
        gw.join("warm/node-compile-cache").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The environment the supervisor gives the gateway of state dir `state`,
/// for running `openclaw` commands against that Buddy as it would.
pub fn openclaw_env(state: &std::path::Path) -> Vec<(String, String)> {
    let s = state.display().to_string();
    vec![
        ("PATH".into(), gateway_path()),
        ("HOME".into(), s.clone()),
        ("TMPDIR".into(), format!("{s}/tmp")),
        ("OPENCLAW_STATE_DIR".into(), s.clone()),
        ("OPENCLAW_CONFIG_PATH".into(), format!("{s}/openclaw.json")),
        ("OPENCLAW_NO_RESPAWN".into(), "1".into()),
        ("NO_COLOR".into(), "1".into()),
    ]
}
