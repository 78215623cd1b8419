//! The README's commands for one Buddy, run as a newcomer runs them:
//! `scripts/run-local` (the real gateway, channels off, until Ctrl-C) and,
//! offline, `scripts/run-local --offline` in one terminal with
//! `scripts/talk` in another (Telegram and Gemini stand-ins on loopback, in
//! the script's own network namespace). Ctrl-C is SIGINT to the terminal's
//! foreground process group, as here.

mod support;

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// The stand-ins' binary, built beside the supervisor (`scripts/test`
/// builds it before the tests).
fn standins() -> PathBuf {
    let p = supervisor().with_file_name("standins");
    assert!(
        p.is_file(),
        "{} is missing: cargo build -p mybuddy-standins --bin standins",
        p.display()
    );
    p
}

/// `scripts/NAME args` as typed in a terminal of its own (its own process
/// group), with this build's binaries and `local` as its state; stderr to
/// `log`.
fn script(cmd: Command, local: &std::path::Path, log: &std::path::Path) -> Command {
    let mut c = cmd;
    c.env("MYBUDDY_LOCAL_DIR", local)
        .env("MYBUDDY_SUPERVISOR", supervisor())
        .env("MYBUDDY_STANDINS", standins())
        .env("MYBUDDY_GATEWAY_DIR", gateway_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .process_group(0);
    c
}

/// Ctrl-C in its terminal, then its exit code within `timeout`; nothing of
/// its process group is left.
fn ctrl_c(child: &mut Child, timeout: Duration) -> Option<i32> {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The group's last members may take a moment after the leader.
    let gone = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::killpg(pgid, None).is_ok() {
        assert!(
            Instant::now() < gone,
            "something of run-local's group outlived it"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    code
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn run_local_runs_a_buddy_with_the_real_gateway_until_ctrl_c() {
    let f = Fixture::new();
    let ns = NetNs::new();
    let port = free_port_block();
    let (local, log) = (f.path("local"), f.path("run-local.log"));
    let mut cmd = ns.command(repo().join("scripts/run-local").to_str().unwrap());
    cmd.args(["roelbuddy-galahad", "--port", &port.to_string()]);
    let mut child = script(cmd, &local, &log).spawn().unwrap();
    let pid = child.id() as i32;
    wait_for("the gateway's /healthz", Duration::from_secs(180), || {
        http_get_in(pid, port, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    let text = fs::read_to_string(&log).unwrap();
    // Secrets it was not given are named, placeholders put in their place;
    // its state where it said.
    assert!(
        text.contains(
            "run-local: ROELBUDDY_GALAHAD_TELEGRAM_TOKEN not set; using a local placeholder"
        ),
        "{text}"
    );
    assert!(
        local
            .join("roelbuddy-galahad/state/gateway-token")
            .is_file()
    );
    assert_eq!(ctrl_c(&mut child, Duration::from_secs(40)), Some(0));
    // The supervisor stopped its gateway and waited for its group.
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("gateway stopped") && text.contains("supervisor exiting"),
        "{text}"
    );
    assert!(
        !text.contains("local-placeholder-"),
        "a value in the log:\n{text}"
    );
}

#[test]
fn offline_a_buddy_answers_what_talk_says() {
    let f = Fixture::new();
    let (local, log) = (f.path("local"), f.path("run-local.log"));
    let mut cmd = Command::new(repo().join("scripts/run-local"));
    cmd.args(["roelbuddy-emrys", "--offline"]);
    let mut child = script(cmd, &local, &log).spawn().unwrap();
    let sock = local.join("roelbuddy-emrys/standins/control.sock");
    wait_for(
        "the stand-ins' control socket",
        Duration::from_secs(60),
        || sock.exists(),
    );
    // The other terminal.
    let talk = script(
        {
            let mut c = Command::new(repo().join("scripts/talk"));
            c.args(["roelbuddy-emrys", "hello"]);
            c
        },
        &local,
        &f.path("talk.log"),
    )
    .stdout(Stdio::piped())
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&talk.stdout);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        talk.status.success(),
        "talk: {}\n{said}\nrun-local:\n{text}",
        fs::read_to_string(f.path("talk.log")).unwrap_or_default()
    );
    assert!(said.contains("(stand-in model) I read: hello"), "{said}");
    // Ctrl-C reaches the supervisor inside the namespace (not only the
    // unshare around it), which stops its gateway before it exits.
    assert_eq!(ctrl_c(&mut child, Duration::from_secs(40)), Some(0));
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("gateway stopped") && text.contains("supervisor exiting"),
        "{text}"
    );
}
