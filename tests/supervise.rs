//! `supervisor run` with fault-injection children, as PID 1 of a fresh PID
//! namespace and as a plain child (subreaper). Real processes, real signals,
//! real /proc; the children are small shell scripts.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(30);

/// Each case runs twice: as PID 1 of a fresh PID namespace, and as a plain
/// child (subreaper), as under Fly's own init.
macro_rules! both_modes {
    ($case:ident) => {
        mod $case {
            #[test]
            fn as_pid1() {
                super::$case(true);
            }
            #[test]
            fn as_subreaper() {
                super::$case(false);
            }
        }
    };
}

struct Case {
    f: Fixture,
    env: Vec<(String, String)>,
    buddy: &'static str,
}

impl Case {
    fn new(buddy: &'static str) -> Case {
        let f = Fixture::new();
        let mut env = base_env();
        env.extend(marker_env(&f.buddy(buddy)));
        env.push(("MYBUDDY_LOG".into(), "debug".into()));
        Case { f, env, buddy }
    }

    fn args(&self, extra: &[&str], child: &[&str]) -> Vec<String> {
        let seed = repo().join("images/swarm-seed");
        let mut flags = vec!["--swarm-seed", seed.to_str().unwrap()];
        flags.extend_from_slice(extra);
        run_args(
            &self.f.buddy(self.buddy),
            &self.f.state,
            &self.f.swarm,
            &flags,
            child,
        )
    }

    fn start(&self, pid1: bool, extra: &[&str], child: &[&str]) -> Sup {
        Sup::start(self.f.tmp.path(), pid1, &self.args(extra, child), &self.env)
    }

    /// Runs `child` once as the gateway (subreaper, `--restart never`) with
    /// exactly `env`, and waits for its clean exit.
    fn run_once(&self, env: &[(String, String)], child: &[&str]) -> Sup {
        let mut s = Sup::start(
            self.f.tmp.path(),
            false,
            &self.args(&["--restart", "never"], child),
            env,
        );
        assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
        s
    }

    fn script(&self, name: &str, body: &str) -> String {
        script(self.f.tmp.path(), name, body).display().to_string()
    }
}

fn orphans_are_all_reaped(pid1: bool) {
    let c = Case::new("roelbuddy-galahad");
    let child = c.script(
        "orphans.sh",
        r#"trap 'exit 0' TERM
i=0
while [ $i -lt 1000 ]; do (sleep 0.2 &); i=$((i+1)); done
echo spawned
sleep 1000 & wait"#,
    );
    let mut s = c.start(pid1, &[], &[&child]);
    assert!(
        s.wait_out("spawned", T),
        "child never spawned its orphans:\n{}",
        s.log()
    );
    assert!(
        s.wait_log_count("reaped orphan", 1000, T),
        "only {} of 1000 orphans reaped:\n{}",
        s.log().matches("reaped orphan").count(),
        s.log().lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
    let zombies = lasting_zombies(s.pid(), Duration::from_secs(2));
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    assert_eq!(s.log().matches("reaped orphan").count(), 1000);
    s.signal("TERM");
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
}

both_modes!(orphans_are_all_reaped);

/// SIGTERM (docker stop) and SIGINT (Fly's default kill signal) both reach
/// a child that traps them; it exits 0 and so does the supervisor.
fn a_trapped_stop_signal_ends_cleanly(pid1: bool, sig: &str) {
    let c = Case::new("roelbuddy-galahad");
    let child = c.script(
        "trap.sh",
        &format!("trap 'echo trapped {sig}; kill $!; exit 0' {sig}\necho ready\nsleep 1000 & wait"),
    );
    let mut s = c.start(pid1, &[], &[&child]);
    assert!(s.wait_out("ready", T));
    s.signal(sig);
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
    assert!(s.out().contains(&format!("trapped {sig}")));
    assert!(
        s.log()
            .contains(&format!("stopping the gateway signal=\"SIG{sig}\""))
    );
}

fn sigterm_reaches_a_trapping_child(pid1: bool) {
    a_trapped_stop_signal_ends_cleanly(pid1, "TERM");
}

both_modes!(sigterm_reaches_a_trapping_child);

fn sigint_stops_like_fly_default(pid1: bool) {
    a_trapped_stop_signal_ends_cleanly(pid1, "INT");
}

both_modes!(sigint_stops_like_fly_default);

fn a_child_ignoring_sigterm_is_killed_with_its_grandchildren(pid1: bool) {
    let c = Case::new("roelbuddy-galahad");
    let pidfile = c.f.scratch("grandchild.pid");
    let child = c.script(
        "ignore.sh",
        &format!(
            "trap '' TERM\nsleep 1000 &\necho $! > {}\necho ready\nwait",
            pidfile.display()
        ),
    );
    let mut s = c.start(pid1, &["--stop-timeout", "1"], &[&child]);
    assert!(s.wait_out("ready", T));
    let grandchild: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // In a PID namespace the file holds the inner pid; find the host one by parentage.
    let gc_host = if pid1 {
        let gw = children_of(s.pid())[0].0;
        children_of(gw)
            .first()
            .map(|c| c.0)
            .expect("the grandchild")
    } else {
        grandchild
    };
    assert!(std::path::Path::new(&format!("/proc/{gc_host}")).exists());
    let t = Instant::now();
    s.signal("TERM");
    assert_eq!(s.wait_exit(T), Some(137), "{}", s.log());
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "killed before the stop timeout"
    );
    assert!(
        s.log()
            .contains("stop timeout reached; killing the gateway's process group")
    );
    let gone = wait_for(T, || {
        let st = fs::read_to_string(format!("/proc/{gc_host}/stat")).ok();
        (st.is_none() || st.unwrap().contains(") Z")).then_some(())
    });
    assert!(gone.is_some(), "the grandchild survived the stop");
}

both_modes!(a_child_ignoring_sigterm_is_killed_with_its_grandchildren);

fn usr_signals_are_forwarded_and_hup_rerenders_without_restart(pid1: bool) {
    let c = Case::new("roelbuddy-galahad");
    let env_file = c.f.path("secrets.env");
    fs::write(&env_file, "GEMINI_API_KEY=first-value\n").unwrap();
    let child = c.script(
        "usr.sh",
        "trap 'echo got USR1' USR1\ntrap 'echo got USR2' USR2\ntrap 'echo got HUP' HUP\ntrap 'exit 0' TERM\necho ready\nwhile :; do sleep 1000 & wait $!; done",
    );
    let mut s = c.start(pid1, &["--env-file", env_file.to_str().unwrap()], &[&child]);
    assert!(s.wait_out("ready", T));
    let config = c.f.state.join("openclaw.json");
    assert!(fs::read_to_string(&config).unwrap().contains("first-value"));
    // SIGUSR1 would open the real gateway's Node inspector: dropped, logged.
    s.signal("USR1");
    assert!(s.wait_log("signal dropped", T), "{}", s.log());
    s.signal("USR2");
    assert!(
        s.wait_out("got USR2", T),
        "USR2 not forwarded:\n{}",
        s.log()
    );
    fs::write(&env_file, "GEMINI_API_KEY=second-value\n").unwrap();
    s.signal("HUP");
    assert!(s.wait_log("reload: config re-rendered", T), "{}", s.log());
    assert!(
        fs::read_to_string(&config)
            .unwrap()
            .contains("second-value")
    );
    assert!(s.log().contains("changed=true"));
    s.signal("HUP");
    assert!(s.wait_log("(unchanged)", T), "{}", s.log());
    assert!(
        !s.out().contains("got HUP"),
        "SIGHUP must not reach the gateway"
    );
    assert_eq!(
        s.log().matches("gateway started").count(),
        1,
        "the gateway was restarted"
    );
    assert!(!s.log().contains("second-value") && !s.log().contains("first-value"));
    assert!(!s.out().contains("got USR1"), "SIGUSR1 reached the gateway");
    s.signal("TERM");
    assert_eq!(s.wait_exit(T), Some(0));
}

both_modes!(usr_signals_are_forwarded_and_hup_rerenders_without_restart);

fn a_crashing_child_restarts_with_growing_delays_then_gives_up(pid1: bool) {
    let c = Case::new("roelbuddy-galahad");
    let child = c.script("crash.sh", "echo started\nexit 3");
    let mut s = c.start(
        pid1,
        &[
            "--backoff-initial-ms",
            "100",
            "--backoff-max-ms",
            "300",
            "--max-restarts",
            "3",
            "--restart-window",
            "60",
        ],
        &[&child],
    );
    assert_eq!(s.wait_exit(T), Some(3), "{}", s.log());
    let log = s.log();
    assert_eq!(log.matches("gateway started").count(), 4, "{log}");
    let delays: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("restart_in_ms=").nth(1))
        .map(|r| r.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(delays, ["100", "200", "300"], "{log}");
    assert!(log.contains("gateway is crash-looping; giving up"));
    assert_eq!(s.out().matches("started").count(), 4);
}

both_modes!(a_crashing_child_restarts_with_growing_delays_then_gives_up);

/// The default policy never gives up: an outage that makes the gateway fail
/// 30 times in a row ends, and the gateway runs again, supervised.
fn thirty_failures_in_a_row_then_it_runs_under_the_default_policy(pid1: bool) {
    let c = Case::new("roelbuddy-galahad");
    let registry = c.f.swarm.join("mybuddybook/registry.json");
    let count = c.f.path("attempts");
    let child = c.script(
        "flaky.sh",
        &format!(
            "n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}\n\
             [ $n -le 30 ] && exit 1\n\
             grep -o '\"state\": *\"[a-z-]*\"' {registry} | tr -d ' '\n\
             echo running\ntrap 'exit 0' TERM\nwhile :; do sleep 1000 & wait $!; done",
            count = count.display(),
            registry = registry.display()
        ),
    );
    fs::write(&count, "0").unwrap();
    fs::set_permissions(&count, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let mut s = c.start(
        pid1,
        &[
            "--backoff-initial-ms",
            "10",
            "--backoff-max-ms",
            "40",
            "--reset-after",
            "2",
        ],
        &[&child],
    );
    assert!(s.wait_out("running", T), "{}", s.log());
    assert!(s.wait_log("gateway recovered", T), "{}", s.log());
    let log = s.log();
    assert_eq!(log.matches("gateway started").count(), 31, "{log}");
    assert_eq!(
        log.matches("gateway is crash-looping; restarting it")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("giving up"), "{log}");
    assert!(log.contains("exits=30"), "{log}");
    // While it looped, its registry entry said so; recovered, it says running.
    assert!(
        s.out().contains("\"state\":\"crash-looping\""),
        "{}",
        s.out()
    );
    // The log line comes first, the registry write right after it.
    let reg: serde_json::Value = wait_for(T, || {
        let r: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&registry).ok()?).ok()?;
        (r["buddies"]["roelbuddy-galahad"]["gateway"]["state"] == "running").then_some(r)
    })
    .unwrap_or_else(|| panic!("{}", fs::read_to_string(&registry).unwrap_or_default()));
    let gw = &reg["buddies"]["roelbuddy-galahad"]["gateway"];
    assert_eq!(gw["state"], "running", "{reg}");
    assert_eq!(gw["exits"], 30, "{reg}");
    s.signal("TERM");
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
}

both_modes!(thirty_failures_in_a_row_then_it_runs_under_the_default_policy);

fn exit_codes_pass_through_under_policy_never(pid1: bool) {
    let c = Case::new("roelbuddy-galahad");
    for (body, want) in [
        ("exit 0", 0),
        ("exit 42", 42),
        ("exit 255", 255),
        ("kill -USR2 $$", 140),
        ("kill -QUIT $$", 131),
    ] {
        let child = c.script("code.sh", body);
        let mut s = c.start(pid1, &["--restart", "never"], &[&child]);
        assert_eq!(s.wait_exit(T), Some(want), "{body}: {}", s.log());
    }
    let mut s = c.start(pid1, &["--restart", "never"], &["/nonexistent/gateway"]);
    assert_eq!(s.wait_exit(T), Some(127));
    assert!(s.log().contains("cannot start the gateway"));
}

both_modes!(exit_codes_pass_through_under_policy_never);

/// The gateway's program is looked up in PATH as the gateway's user, like
/// execvp: an entry only root can reach is skipped, not fatal (root's
/// pyenv shims come first in this machine's PATH, for one).
#[test]
fn path_lookup_skips_what_the_gateway_user_cannot_reach() {
    use std::os::unix::fs::PermissionsExt;
    let c = Case::new("roelbuddy-galahad");
    let private = c.f.tmp.path().join("root-only");
    let public = c.f.tmp.path().join("public");
    for (dir, mode, says) in [(&private, 0o700, "wrong"), (&public, 0o755, "right")] {
        fs::create_dir(dir).unwrap();
        script(dir, "mybuddy-path-probe", &format!("echo {says}"));
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
    }
    let mut c = c;
    let path = format!("{}:{}:/usr/bin:/bin", private.display(), public.display());
    c.env.retain(|(k, _)| k != "PATH");
    c.env.push(("PATH".into(), path));
    let mut s = c.start(false, &["--restart", "never"], &["mybuddy-path-probe"]);
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
    assert_eq!(s.out().trim(), "right");
    fs::set_permissions(&public, fs::Permissions::from_mode(0o700)).unwrap();
    let mut s = c.start(false, &["--restart", "never"], &["mybuddy-path-probe"]);
    assert_eq!(s.wait_exit(T), Some(126), "{}", s.log());
    assert!(s.log().contains("Permission denied") && s.log().contains("searched PATH="));
    // Not found anywhere it may look: 127 (a denied entry on the way would
    // make it 126, as with execvp).
    c.env.retain(|(k, _)| k != "PATH");
    c.env.push(("PATH".into(), "/usr/bin:/bin".into()));
    let mut s = c.start(false, &["--restart", "never"], &["mybuddy-no-such-program"]);
    assert_eq!(s.wait_exit(T), Some(127), "{}", s.log());
}

/// `supervisor init`: the same loop with no Buddy. Unlike `run`, the child
/// keeps our environment, umask and privileges, and gets SIGHUP itself.
fn init_is_a_plain_init_that_forwards_everything_and_reaps(pid1: bool) {
    let c = Case::new("roelbuddy-galahad");
    let child = c.script(
        "plain.sh",
        r#"for s in HUP USR1 USR2; do trap "echo got $s" $s; done
trap 'echo got TERM; exit 7' TERM
echo "FOO=$FOO"
grep -E '^(Umask|NoNewPrivs|Uid):' /proc/self/status
i=0
while [ $i -lt 200 ]; do (sleep 0.1 &); i=$((i+1)); done
echo ready
while :; do sleep 1000 & wait $!; done"#,
    );
    let mut env = base_env();
    env.push(("FOO".into(), "bar baz".into()));
    env.push(("MYBUDDY_LOG".into(), "debug".into()));
    let mut s = Sup::start_init(c.f.tmp.path(), pid1, &["--".into(), child.clone()], &env);
    assert!(s.wait_out("ready", T), "{}", s.log());
    let ours = fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let umask = ours.lines().find(|l| l.starts_with("Umask:")).unwrap();
    let out = s.out();
    assert!(out.contains("FOO=bar baz"), "{out}");
    assert!(
        out.contains(umask),
        "the child's umask differs from ours ({umask}):\n{out}"
    );
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("Uid:\t0\t")), "{out}");
    for sig in ["HUP", "USR1", "USR2"] {
        s.signal(sig);
        assert!(
            s.wait_out(&format!("got {sig}"), T),
            "{sig} not forwarded:\n{}",
            s.log()
        );
    }
    assert!(
        !s.log().contains("reload"),
        "init must not re-render:\n{}",
        s.log()
    );
    assert!(
        s.wait_log_count("reaped orphan", 200, T),
        "only {} of 200 orphans reaped",
        s.log().matches("reaped orphan").count()
    );
    s.signal("TERM");
    assert_eq!(s.wait_exit(T), Some(7), "{}", s.log());
    assert!(s.out().contains("got TERM"));
    let mut s = Sup::start_init(
        c.f.tmp.path(),
        pid1,
        &["--".into(), "/nonexistent/x".into()],
        &env,
    );
    assert_eq!(s.wait_exit(T), Some(127), "{}", s.log());
}

both_modes!(init_is_a_plain_init_that_forwards_everything_and_reaps);

#[test]
fn on_failure_restarts_only_failures() {
    let c = Case::new("roelbuddy-galahad");
    let count = c.f.scratch("count");
    let child = c.script(
        "onfail.sh",
        &format!(
            "echo x >> {0}\nif [ $(wc -l < {0}) -lt 3 ]; then exit 1; fi\nexit 0",
            count.display()
        ),
    );
    let mut s = c.start(
        false,
        &["--restart", "on-failure", "--backoff-initial-ms", "10"],
        &[&child],
    );
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
    assert_eq!(fs::read_to_string(&count).unwrap().lines().count(), 3);
}

#[test]
fn the_gateway_gets_clean_signals_dropped_privileges_and_only_its_own_env() {
    let c = Case::new("roelbuddy-galahad");
    // First the process state, read by the child itself with no shell in
    // between (a shell blocks signals for moments of its own).
    // The supervisor inherits this thread's mask; make it empty whatever the
    // test runner's was, so a leaked block of the supervisor's would show.
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .unwrap();
    let s = c.run_once(&c.env, &["cat", "/proc/self/status"]);
    let status = s.out();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(
        field("SigBlk"),
        "0000000000000000",
        "the child did not get the supervisor's original (empty) signal mask"
    );
    // Exactly the ignored set the supervisor inherited from us, except
    // SIGPIPE, which every Rust program ignores and std restores in a child.
    let ours = u64::from_str_radix(
        &proc_status(std::process::id() as i32, "SigIgn").unwrap(),
        16,
    )
    .unwrap();
    let sigpipe = 1u64 << (13 - 1);
    assert_eq!(
        u64::from_str_radix(&field("SigIgn"), 16).unwrap(),
        ours & !sigpipe
    );
    assert_eq!(field("Uid"), "10001 10001 10001 10001");
    assert_eq!(field("Gid"), "10001 10001 10001 10001");
    assert_eq!(
        field("Groups"),
        "10100",
        "a Buddy-role gateway is in mybuddybook only"
    );
    assert_eq!(field("NoNewPrivs"), "1");

    // Then the environment.
    let mut env = c.env.clone();
    // Another Buddy's secret and the Fly API token are in the supervisor's
    // environment (all Machines of an app see all secrets): a Buddy's gateway gets neither.
    env.push((
        "ESTHERBUDDY_KAZEH_TELEGRAM_TOKEN".into(),
        "other-buddys-secret".into(),
    ));
    env.push(("FLY_API_TOKEN".into(), "fly-api-token-value".into()));
    env.push(("FLY_REGION".into(), "ams".into()));
    let child = c.script(
        "inspect.sh",
        "echo ENV-BEGIN\nenv | sort\necho ENV-END\nexit 0",
    );
    let s = c.run_once(&env, &[&child]);
    let out = s.out();
    let envs: Vec<&str> = out
        .split("ENV-BEGIN\n")
        .nth(1)
        .unwrap()
        .split("ENV-END")
        .next()
        .unwrap()
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    let state = c.f.state.display().to_string();
    assert!(out.contains(&format!("HOME={state}\n")));
    assert!(out.contains("OPENCLAW_NO_RESPAWN=1\n"));
    assert!(out.contains(&format!("OPENCLAW_STATE_DIR={state}\n")));
    assert!(out.contains(&format!("OPENCLAW_CONFIG_PATH={state}/openclaw.json\n")));
    assert!(out.contains(&format!("TMPDIR={state}/tmp\n")));
    assert!(out.contains("FLY_REGION=ams\n"));
    for forbidden in [
        "other-buddys-secret",
        "fly-api-token-value",
        "MYBUDDY_LOG",
        "NODE_COMPILE_CACHE",
        "CLAWDBOT_",
    ] {
        assert!(!out.contains(forbidden), "{forbidden} reached the gateway");
    }
    let mut allowed = vec![
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "TMPDIR",
        "PWD",
        "SHLVL",
        "_",
        "OPENCLAW_STATE_DIR",
        "OPENCLAW_CONFIG_PATH",
        "OPENCLAW_NO_RESPAWN",
        "OPENCLAW_DISABLE_BONJOUR",
        "FLY_REGION",
    ];
    let own = secret_names(&c.f.buddy("roelbuddy-galahad"));
    allowed.extend(own.iter().map(String::as_str));
    for e in envs {
        assert!(
            allowed.contains(&e),
            "unexpected variable {e} in the gateway's environment"
        );
    }
}

#[test]
fn a_magicians_gateway_gets_the_magicians_group_and_never_the_fly_token() {
    let c = Case::new("roelbuddy-emrys");
    let mut env = c.env.clone();
    env.push(("FLY_API_TOKEN".into(), "fly-api-token-value".into()));
    // The gateway's own environ, as /proc shows it (what a prompt-injected
    // `exec` could read), and what its shell sees.
    let child = c.script(
        "inspect.sh",
        "grep -E '^Groups:' /proc/self/status\ntr '\\0' '\\n' < /proc/$$/environ | sed 's/^/ENVIRON: /'\nenv | grep FLY_ || true\nexit 0",
    );
    let s = c.run_once(&env, &[&child]);
    let out = s.out();
    assert!(out.contains("Groups:\t10100 10101"), "{out}");
    assert!(out.contains("ENVIRON: OPENCLAW_STATE_DIR="), "{out}");
    assert!(
        !out.contains("FLY_API_TOKEN") && !out.contains("fly-api-token-value"),
        "{out}"
    );
}

#[test]
fn a_volume_written_by_the_clawdbot_image_is_carried_over_once() {
    // What the old image left: its rendered config (with secrets) and the
    // gateway's backup of it, Clawdbot's lock dir and jiti cache, our
    // upper-case persona files, and the generic SOUL.md Clawdbot wrote
    // beside ours (byte for byte its template: tests/fixtures/kazeh-vps).
    let c = Case::new("roelbuddy-galahad");
    let st = &c.f.state;
    let ws = st.join("workspace");
    fs::create_dir_all(st.join("tmp/clawdbot-10001")).unwrap();
    fs::create_dir_all(st.join("tmp/jiti")).unwrap();
    fs::create_dir_all(&ws).unwrap();
    fs::write(st.join("clawdbot.json"), "{\"old\": \"secret-ish\"}").unwrap();
    fs::write(st.join("clawdbot.json.bak"), "{}").unwrap();
    fs::write(st.join("tmp/clawdbot-10001/gateway.abc.lock"), "{}").unwrap();
    fs::write(
        ws.join("SOUL.MD"),
        "Galahad's own soul, as he rewrote it.\n",
    )
    .unwrap();
    let kazeh = repo().join("tests/fixtures/kazeh-vps/clawdbot/workspace");
    fs::copy(kazeh.join("SOUL.md"), ws.join("SOUL.md")).unwrap();
    fs::write(ws.join("USER.MD"), "old notes\n").unwrap();
    fs::write(ws.join("USER.md"), "what Galahad wrote since\n").unwrap();
    let child = c.script("ok.sh", "exit 0");
    let s = c.run_once(&c.env, &[&child]);
    let log = s.log();
    assert!(
        log.contains("state carried over from an older image"),
        "{log}"
    );
    for gone in [
        "clawdbot.json",
        "clawdbot.json.bak",
        "tmp/clawdbot-10001",
        "tmp/jiti",
        "workspace/SOUL.MD",
    ] {
        assert!(!st.join(gone).exists(), "{gone} is still there");
    }
    assert!(st.join("openclaw.json").is_file());
    assert_eq!(
        fs::read_to_string(ws.join("SOUL.md")).unwrap(),
        "Galahad's own soul, as he rewrote it.\n"
    );
    // Both hold words: both stay, and the operator is told.
    assert_eq!(
        fs::read_to_string(ws.join("USER.md")).unwrap(),
        "what Galahad wrote since\n"
    );
    assert!(ws.join("USER.MD").exists());
    assert!(log.contains("both USER.MD and USER.md hold text"), "{log}");
    // What the image ships fills in the rest, the swarm's AGENTS.md included.
    let agents = fs::read_to_string(ws.join("AGENTS.md")).unwrap();
    assert!(
        agents.contains("RoelBuddy-Galahad") && agents.contains("MyBuddyBook"),
        "{agents}"
    );
    // A second boot has nothing left to carry over.
    let s = c.run_once(&c.env, &[&child]);
    assert!(!s.log().contains("state carried over"), "{}", s.log());
}

#[test]
fn a_stop_during_backoff_exits_at_once() {
    let c = Case::new("roelbuddy-galahad");
    let child = c.script("crash.sh", "exit 1");
    let mut s = c.start(false, &["--backoff-initial-ms", "20000"], &[&child]);
    assert!(s.wait_log("restart_in_ms=20000", T), "{}", s.log());
    let t = Instant::now();
    s.signal("TERM");
    assert_eq!(s.wait_exit(T), Some(0));
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn json_logs_one_object_per_line() {
    let c = Case::new("roelbuddy-galahad");
    let mut env = c.env.clone();
    env.push(("MYBUDDY_LOG_FORMAT".into(), "json".into()));
    let child = c.script("ok.sh", "exit 0");
    let s = c.run_once(&env, &[&child]);
    let log = s.log();
    let mut steps = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if v["message"] == "boot step done" {
            steps.push(v["step"].as_str().unwrap().to_string());
            assert!(v["ms"].is_number());
        }
    }
    assert_eq!(
        steps,
        [
            "signals",
            "privileges",
            "restore",
            "render",
            "state",
            "share",
            "swarm",
            "register"
        ]
    );
}

#[test]
fn the_test_only_flags_patch_the_config_under_the_policy_and_pass_only_named_variables() {
    let c = Case::new("roelbuddy-galahad");
    // An overlay that points the provider elsewhere, with a ${VAR} in it.
    let overlay = c.f.path("overlay.json");
    fs::write(
        &overlay,
        r#"{"models": {"providers": {"google": {"baseUrl": "http://127.0.0.1:9/v1beta", "apiKey": "${GEMINI_API_KEY}", "api": "google-generative-ai", "models": []}}}}"#,
    )
    .unwrap();
    let mut env = c.env.clone();
    env.push(("NODE_EXTRA_CA_CERTS".into(), "/tmp/test-ca.pem".into()));
    env.push(("NOT_PASSED".into(), "stays-with-the-supervisor".into()));
    let child = c.script("env.sh", "env | sort\nexit 0");
    let args = c.args(
        &[
            "--restart",
            "never",
            "--config-overlay",
            overlay.to_str().unwrap(),
            "--gateway-env",
            "NODE_EXTRA_CA_CERTS",
        ],
        &[&child],
    );
    let mut s = Sup::start(c.f.tmp.path(), false, &args, &env);
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0), "{}", s.log());
    let out = s.out();
    assert!(
        out.contains("NODE_EXTRA_CA_CERTS=/tmp/test-ca.pem\n"),
        "{out}"
    );
    assert!(!out.contains("stays-with-the-supervisor"), "{out}");
    assert!(
        s.log()
            .contains("config overlay applied (tests and offline runs only)")
    );
    let rendered: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(c.f.state.join("openclaw.json")).unwrap())
            .unwrap();
    let google = &rendered["models"]["providers"]["google"];
    assert_eq!(google["baseUrl"], "http://127.0.0.1:9/v1beta");
    assert_eq!(google["apiKey"], marker("GEMINI_API_KEY"));
    // The template is still under it: the overlay patched, not replaced.
    assert_eq!(rendered["models"]["catalogRefresh"]["enabled"], false);

    // The policy holds under an overlay, and names the overlay file; bad
    // --gateway-env names are all reported; on a Fly Machine both flags
    // are refused outright.
    fs::write(
        &overlay,
        r#"{"tools": {"codeMode": "auto"}, "gateway": {"bind": "lan", "auth": {"mode": "none"}}}"#,
    )
    .unwrap();
    let mut fly = env.clone();
    fly.push(("FLY_MACHINE_ID".into(), "e784079b449483".into()));
    for (e, extra, needles) in [
        (
            &env,
            vec!["--gateway-env", "NODE_EXTRA_CA_CERTS"],
            vec![
                "overlay.json: tools.codeMode: must be false",
                "overlay.json: gateway.auth.mode",
            ],
        ),
        (
            &env,
            vec!["--gateway-env", "FLY_API_TOKEN,HOME,UNSET_ONE,9BAD"],
            vec![
                "--gateway-env FLY_API_TOKEN: the Fly org token never reaches a gateway",
                "--gateway-env HOME: the supervisor sets it",
                "--gateway-env UNSET_ONE: not set",
                "--gateway-env \"9BAD\": not a variable name",
            ],
        ),
        (
            &fly,
            vec!["--gateway-env", "NODE_EXTRA_CA_CERTS"],
            vec!["refused on a Fly Machine"],
        ),
    ] {
        let mut flags = vec![
            "--restart",
            "never",
            "--config-overlay",
            overlay.to_str().unwrap(),
        ];
        flags.extend(extra);
        let mut s = Sup::start(c.f.tmp.path(), false, &c.args(&flags, &["true"]), e);
        assert_eq!(
            s.wait_exit(Duration::from_secs(30)),
            Some(78),
            "{}",
            s.log()
        );
        for n in needles {
            assert!(s.log().contains(n), "{n:?} not in:\n{}", s.log());
        }
    }
}
