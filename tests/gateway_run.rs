//! `supervisor run` with the real, pinned OpenClaw gateway on 127.0.0.1 of
//! its own loopback-only network namespace.

mod support;

use std::fs;
use std::time::Duration;

use support::*;

const BOOT: Duration = Duration::from_secs(120);

struct Live {
    f: Fixture,
    port: u16,
    sup: Sup,
}

/// Every real gateway here runs in its own network namespace with only lo:
/// nothing it starts can leave the machine.
fn start(slug: &str, extra: &[&str]) -> Live {
    let f = Fixture::new();
    let b = f.buddy(slug);
    let port = free_port_block();
    set_buddy_port(&b, port);
    let mut env = marker_env(&b);
    env.push(("PATH".into(), gateway_path()));
    env.push(("HOME".into(), "/root".into()));
    let mut args: Vec<String> = [
        "--buddy",
        b.to_str().unwrap(),
        "--state-dir",
        f.state.to_str().unwrap(),
        "--swarm",
        f.swarm.to_str().unwrap(),
        "--swarm-dir-unmounted",
        "--swarm-seed",
        repo().join("images/swarm-seed").to_str().unwrap(),
        "--warm-cache",
        gateway_dir()
            .join("warm/node-compile-cache")
            .to_str()
            .unwrap(),
        "--gateway-dir",
        gateway_dir().to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // ENV_FILE stands for a file in the fixture, written by the test later.
    args.extend(
        extra
            .iter()
            .map(|s| s.replace("ENV_FILE", f.path("secrets.env").to_str().unwrap())),
    );
    fs::write(f.path("secrets.env"), "").unwrap();
    let sup = Sup::start_wrapped(f.tmp.path(), false, true, &args, &env);
    Live { f, port, sup }
}

impl Live {
    /// The WebSocket handshake, from inside the gateway's namespace.
    fn handshake(&self, token: Option<&str>) -> Result<Handshake, String> {
        let (port, token) = (self.port, token.map(str::to_string));
        in_netns_of(self.sup.pid(), move || {
            gateway_handshake(port, token.as_deref())
        })
    }
    /// GET on the gateway, from inside its network namespace.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get_in(self.sup.pid(), self.port, path)
    }
    fn token(&self) -> String {
        fs::read_to_string(self.f.state.join("gateway-token"))
            .unwrap()
            .trim()
            .to_string()
    }
    fn wait_listening(&self) {
        // /healthz answers as soon as the HTTP server listens; WebSocket
        // connects get "gateway starting" until /readyz says ready.
        let ok = wait_for(BOOT, || (self.get("/readyz")?.0 == 200).then_some(()));
        assert!(
            ok.is_some(),
            "the gateway never listened:\n{}\n{}",
            self.sup.log(),
            self.sup.out()
        );
    }
    /// Its entry in the swarm's registry, as the supervisor wrote it.
    fn registry_entry(&self) -> Option<serde_json::Value> {
        let path = self.f.swarm.join("mybuddybook/registry.json");
        let r: serde_json::Value = serde_json::from_str(&fs::read_to_string(path).ok()?).ok()?;
        let e = r["buddies"]["estherbuddy-kazeh"].clone();
        (!e.is_null()).then_some(e)
    }
    fn gateway_pid(&self) -> i32 {
        let line = self
            .sup
            .log()
            .lines()
            .rev()
            .find(|l| l.contains("gateway started"))
            .unwrap()
            .to_string();
        line.split("pid=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

#[test]
fn the_real_gateway_boots_bound_to_lan_and_checks_its_token() {
    let mut g = start(
        "roelbuddy-emrys",
        &["--channels", "off", "--env-file", "ENV_FILE"],
    );
    // The supervisor wrote the config before it started the gateway; the
    // gateway, which takes seconds to read it, must leave it as it is.
    assert!(g.sup.wait_log("gateway started", BOOT), "{}", g.sup.log());
    let config = g.f.state.join("openclaw.json");
    let written = fs::read(&config).unwrap();
    g.wait_listening();
    assert_eq!(
        fs::read(&config).unwrap(),
        written,
        "the gateway rewrote openclaw.json"
    );
    let baks: Vec<_> = fs::read_dir(&g.f.state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("openclaw.json."))
        .collect();
    assert!(baks.is_empty(), "{baks:?}");
    // The plugins came from the image's install, not from npm at start.
    let out = g.sup.out();
    let listening = out
        .lines()
        .find(|l| l.contains("http server listening"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(listening.contains("brave"), "{listening}");
    assert!(
        !out.contains("npm install") && !out.contains("registry.npmjs.org"),
        "{out}"
    );
    assert!(
        listens_on_all_interfaces(g.sup.pid(), g.port),
        "not bound to lan (0.0.0.0:{})",
        g.port
    );
    let token = g.token();
    match g.handshake(Some(&token)).unwrap() {
        Handshake::HelloOk => {}
        other => panic!("right token refused: {other:?}"),
    }
    match g.handshake(Some("wrong-token")).unwrap() {
        Handshake::Refused(why) => assert!(why.contains("token mismatch"), "{why}"),
        other => panic!("wrong token accepted: {other:?}"),
    }
    match g.handshake(None).unwrap() {
        Handshake::Refused(why) => assert!(why.contains("NOT_PAIRED"), "{why}"),
        other => panic!("no token accepted: {other:?}"),
    }
    // SIGHUP re-renders in place (a changed secret from the env file); the
    // gateway keeps running, same process, and keeps answering.
    let gw_before = g.gateway_pid();
    let env_file = g.f.path("secrets.env");
    fs::write(&env_file, "GEMINI_API_KEY=rotated-gemini-key\n").unwrap();
    g.sup.signal("HUP");
    assert!(
        g.sup
            .wait_log("reload: config re-rendered", Duration::from_secs(30)),
        "{}",
        g.sup.log()
    );
    assert!(
        fs::read_to_string(g.f.state.join("openclaw.json"))
            .unwrap()
            .contains("rotated-gemini-key")
    );
    assert!(
        matches!(g.handshake(Some(&token)), Ok(Handshake::HelloOk)),
        "{}",
        g.sup.out()
    );
    assert_eq!(
        g.gateway_pid(),
        gw_before,
        "the gateway was restarted by a reload"
    );
    // The gateway runs as the unprivileged user, without its respawn wrapper:
    // the supervisor's only child is the gateway itself.
    let gw = g.gateway_pid();
    assert_eq!(
        proc_status(gw, "Uid").unwrap().split_whitespace().next(),
        Some("10001")
    );
    assert_eq!(children_of(g.sup.pid()).len(), 1);
    assert!(
        fs::read_to_string(format!("/proc/{gw}/cmdline"))
            .unwrap()
            .contains("gateway")
    );
    assert!(
        !fs::read_to_string(format!("/proc/{gw}/cmdline"))
            .unwrap()
            .contains(&token),
        "token in the process listing"
    );
    g.sup.signal("TERM");
    assert_eq!(
        g.sup.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        g.sup.log()
    );
    // Its namespace ends with its last process: the gateway is gone, so is
    // its listener.
    assert!(!std::path::Path::new(&format!("/proc/{gw}")).exists());
}

#[test]
fn a_killed_gateway_is_restarted_and_answers_again() {
    let mut g = start(
        "estherbuddy-kazeh",
        &[
            "--channels",
            "off",
            "--backoff-initial-ms",
            "200",
            "--heartbeat",
            "2",
        ],
    );
    g.wait_listening();
    // Its supervisor asks the gateway's own /readyz and records the answer
    // (early on it says what is still starting: `startup-sidecars`).
    let ready = wait_for(BOOT, || {
        let r = g.registry_entry()?.get("ready").cloned()?;
        (r["ready"] == true).then_some(r)
    });
    let ready = ready.unwrap_or_else(|| panic!("{:?}\n{}", g.registry_entry(), g.sup.log()));
    assert_eq!(ready["failing"], serde_json::json!([]), "{ready}");
    let first = g.gateway_pid();
    let token = g.token();
    std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    assert!(
        g.sup.wait_log_count("gateway started", 2, BOOT),
        "{}",
        g.sup.log()
    );
    assert!(g.sup.log().contains("status=signal SIGKILL"));
    let second = g.gateway_pid();
    assert_ne!(first, second);
    let answered = wait_for(BOOT, || match g.handshake(Some(&token)) {
        Ok(Handshake::HelloOk) => Some(()),
        _ => None,
    });
    assert!(
        answered.is_some(),
        "the restarted gateway does not answer:\n{}",
        g.sup.log()
    );
    // The registry followed: running only once the port answered, the
    // kill as a restart, running again once the new gateway listened.
    let running = wait_for(BOOT, || {
        let e = g.registry_entry()?;
        (e["gateway"]["state"] == "running" && e["gateway"]["last_exit"] == "signal SIGKILL")
            .then_some(e)
    });
    assert!(
        running.is_some(),
        "{:?}\n{}",
        g.registry_entry(),
        g.sup.log()
    );
    let log = g.sup.log();
    let states: Vec<&str> = log
        .lines()
        .filter_map(|l| {
            if l.contains("registered in the swarm") {
                Some("booting")
            } else if l.contains("gateway listening") {
                Some("listening")
            } else {
                l.split("state recorded in the registry state=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
            }
        })
        .collect();
    assert_eq!(
        states,
        [
            "booting",
            "listening",
            "running",
            "restarting",
            "listening",
            "running"
        ],
        "{log}"
    );
    g.sup.signal("INT");
    assert_eq!(
        g.sup.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        g.sup.log()
    );
    let e = g.registry_entry().unwrap();
    assert_eq!(e["gateway"]["state"], "stopped", "{e}");
    assert_eq!(
        e["gateway"]["reason"], "stopped by SIGINT (supervisor exit 0)",
        "{e}"
    );
}

#[test]
fn with_telegram_unreachable_the_gateway_stays_up_and_a_stuck_stop_is_killed_on_time() {
    // Telegram on, in a network namespace with only lo: every Bot API call
    // fails. OpenClaw logs the errors and keeps running (Clawdbot exited);
    // the supervisor has nothing to restart.
    let mut g = start(
        "roelbuddy-galahad",
        &["--backoff-initial-ms", "100", "--stop-timeout", "5"],
    );
    g.wait_listening();
    let first = g.gateway_pid();
    std::thread::sleep(Duration::from_secs(45));
    let log = g.sup.log();
    assert_eq!(log.matches("gateway started").count(), 1, "{log}");
    assert!(!log.contains("gateway exited"), "{log}");
    assert_eq!(g.gateway_pid(), first);
    assert_eq!(g.get("/healthz").map(|r| r.0), Some(200));
    assert!(
        g.sup.out().contains("[telegram]"),
        "the Telegram channel never ran:\n{}",
        g.sup.out()
    );
    // During the outage the gateway does not finish its SIGTERM drain (its
    // budget is 315 s): the supervisor SIGKILLs its group at the stop timeout.
    let t = std::time::Instant::now();
    g.sup.signal("TERM");
    let code = g.sup.wait_exit(Duration::from_secs(60));
    let took = t.elapsed();
    let log = g.sup.log();
    assert!(
        log.contains("stop timeout reached; killing the gateway's process group"),
        "{log}"
    );
    assert_eq!(code, Some(128 + 9), "{log}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(15),
        "stopped after {took:?}"
    );
    assert!(!std::path::Path::new(&format!("/proc/{first}")).exists());
}
