//! The static supervisor as PID 1 of a real Docker container (dockerd started
//! by scripts/setup; the image is a rootfs assembled by images/test-rootfs/build).

mod support;

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::*;

fn image() -> String {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let tag = "mybuddytalk/supervisor-test:latest".to_string();
        sh(Command::new(repo().join("images/test-rootfs/build"))
            .arg(static_supervisor())
            .arg(&tag))
    })
    .clone()
}

fn run(name: &str, env: &[(&str, &str)], child: &str) -> Container {
    let c = Container(format!("mybuddy-test-{name}-{}", std::process::id()));
    let _ = Command::new("docker").args(["rm", "-f", &c.0]).output();
    let mut cmd = Command::new("docker");
    cmd.args([
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &c.0,
        "--tmpfs",
        "/mnt/swarm",
        "--tmpfs",
        "/data",
    ]);
    for (k, v) in [
        ("GEMINI_API_KEY", "g"),
        ("BRAVE_API_KEY", "b"),
        ("ROELBUDDY_GALAHAD_HUMAN_TELEGRAM_ID", "1"),
        ("ROELBUDDY_GALAHAD_TELEGRAM_TOKEN", "2"),
    ]
    .iter()
    .chain(env.iter())
    {
        cmd.args(["-e", &format!("{k}={v}")]);
    }
    cmd.arg(image()).args(["--", "sh", "-c", child]);
    sh(&mut cmd);
    c
}

#[test]
fn docker_stop_ends_a_trapping_child_cleanly() {
    let c = run(
        "stop-trap",
        &[],
        "trap 'echo trapped TERM; exit 0' TERM; echo ready; sleep 1000 & wait",
    );
    assert!(
        c.wait_logs("ready", Duration::from_secs(30)),
        "{}",
        c.logs()
    );
    let t = Instant::now();
    sh(Command::new("docker").args(["stop", "-t", "20", &c.0]));
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "docker had to kill it"
    );
    assert_eq!(c.exit_code(), 0, "{}", c.logs());
    let logs = c.logs();
    assert!(logs.contains("trapped TERM"));
    assert!(logs.contains("pid1=true"), "{logs}");
}

#[test]
fn docker_stop_kills_a_child_that_ignores_sigterm_within_our_timeout() {
    let c = run(
        "stop-ignore",
        &[("MYBUDDY_STOP_TIMEOUT", "2")],
        "trap '' TERM; echo ready; sleep 1000 & wait",
    );
    assert!(
        c.wait_logs("ready", Duration::from_secs(30)),
        "{}",
        c.logs()
    );
    let t = Instant::now();
    // Docker's own deadline is 20 s; ours (2 s) must act first.
    sh(Command::new("docker").args(["stop", "-t", "20", &c.0]));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(15),
        "took {took:?}"
    );
    assert_eq!(c.exit_code(), 137, "{}", c.logs());
    assert!(c.logs().contains("stop timeout reached"));
}

#[test]
fn docker_kill_usr2_reaches_the_child_usr1_never_does_and_hup_reloads() {
    let c = run(
        "signals",
        &[],
        "trap 'echo got USR1' USR1; trap 'echo got USR2' USR2; trap 'echo got HUP' HUP; trap 'exit 0' TERM; echo ready; while :; do sleep 1000 & wait $!; done",
    );
    assert!(
        c.wait_logs("ready", Duration::from_secs(30)),
        "{}",
        c.logs()
    );
    // SIGUSR1 would open the real gateway's Node inspector: dropped.
    sh(Command::new("docker").args(["kill", "-s", "USR1", &c.0]));
    assert!(
        c.wait_logs("signal dropped", Duration::from_secs(30)),
        "{}",
        c.logs()
    );
    sh(Command::new("docker").args(["kill", "-s", "USR2", &c.0]));
    assert!(
        c.wait_logs("got USR2", Duration::from_secs(30)),
        "{}",
        c.logs()
    );
    assert!(!c.logs().contains("got USR1"), "USR1 reached the child");
    sh(Command::new("docker").args(["kill", "-s", "HUP", &c.0]));
    assert!(
        c.wait_logs("reload: config re-rendered", Duration::from_secs(30)),
        "{}",
        c.logs()
    );
    assert!(!c.logs().contains("got HUP"), "HUP reached the child");
    assert_eq!(c.logs().matches("gateway started").count(), 1);
    sh(Command::new("docker").args(["stop", "-t", "20", &c.0]));
    assert_eq!(c.exit_code(), 0);
}

#[test]
fn under_plain_docker_the_spellbook_is_closed_by_permissions_alone() {
    // No CAP_SYS_ADMIN in a default container: no tmpfs mask, the supervisor
    // says so, and the Buddy-role gateway is still refused by the modes.
    let c = run(
        "spellbook",
        &[("MYBUDDY_RESTART", "never")],
        "echo \"LIST: $(ls /mnt/swarm/spellbook 2>&1)\"; echo \"READ: $(cat /mnt/swarm/spellbook/changelog.md 2>&1)\"; echo x > /mnt/swarm/mybuddybook/wisdom/t.md && echo WRITE-OK",
    );
    let code = wait_for(Duration::from_secs(30), || {
        let s = sh(Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", &c.0]));
        (s == "false").then_some(())
    });
    assert!(code.is_some());
    assert_eq!(c.exit_code(), 0, "{}", c.logs());
    let logs = c.logs();
    assert!(logs.contains("mounting is not allowed here"), "{logs}");
    assert!(
        logs.contains("LIST: ls: can't open '/mnt/swarm/spellbook': Permission denied"),
        "{logs}"
    );
    assert!(
        logs.contains(
            "READ: cat: can't open '/mnt/swarm/spellbook/changelog.md': Permission denied"
        ),
        "{logs}"
    );
    assert!(logs.contains("WRITE-OK"), "{logs}");
}
