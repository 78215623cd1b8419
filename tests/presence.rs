//! What a Buddy's supervisor says about it in the registry: its states
//! through a whole life, a heartbeat a reader can judge, a run that is not
//! the deployed Machine leaving the deployed entry alone, and a refused boot
//! recorded and slowed down instead of spun. Real supervisors, real
//! registry files, fault-injection children.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(30);
const SLUG: &str = "roelbuddy-galahad";

fn registry_path(f: &Fixture) -> std::path::PathBuf {
    f.swarm.join("mybuddybook/registry.json")
}

fn entry(f: &Fixture) -> Option<Value> {
    let r: Value = serde_json::from_str(&fs::read_to_string(registry_path(f)).ok()?).ok()?;
    let e = r["buddies"][SLUG].clone();
    (!e.is_null()).then_some(e)
}

/// Waits until the entry's state is `state`.
fn wait_state(f: &Fixture, state: &str) -> Value {
    wait_for(T, || entry(f).filter(|e| e["gateway"]["state"] == state))
        .unwrap_or_else(|| panic!("never {state}: {:?}", entry(f)))
}

/// The states the supervisor recorded, in the order it logged them.
fn recorded_states(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            l.split("state recorded in the registry state=")
                .nth(1)
                .or_else(|| l.contains("registered in the swarm").then_some("booting"))
        })
        .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

/// Whether `want` appears in `seen` in this order (other states may come
/// between).
fn in_order(seen: &[String], want: &[&str]) -> bool {
    let mut it = seen.iter();
    want.iter().all(|w| it.any(|s| s == w))
}

/// `supervisor registry` as a table.
fn table(f: &Fixture) -> String {
    sh(std::process::Command::new(supervisor())
        .args(["registry", "--swarm"])
        .arg(&f.swarm))
}

/// The supervisor's metrics, parsed as Prometheus text (OpenMetrics).
fn scrape(port: u16) -> Vec<prometheus_parse::Sample> {
    let (code, body) = http_get(port, "/metrics").expect("the metrics answer");
    assert_eq!(code, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{e}: {body}"))
        .samples
}

/// One sample's value: `name` (a counter's `_total` included) with `label`.
fn value(samples: &[prometheus_parse::Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    let s = samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {name} {label:?} in {samples:#?}"));
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

fn args(f: &Fixture, extra: &[&str], child: &[&str]) -> Vec<String> {
    let seed = repo().join("images/swarm-seed");
    let mut flags = vec!["--swarm-seed", seed.to_str().unwrap()];
    flags.extend_from_slice(extra);
    run_args(&f.buddy(SLUG), &f.state, &f.swarm, &flags, child)
}

fn env(f: &Fixture) -> Vec<(String, String)> {
    let mut env = base_env();
    env.extend(marker_env(&f.buddy(SLUG)));
    env
}

#[test]
fn a_buddys_life_is_in_the_registry_from_boot_to_stop() {
    let f = Fixture::new();
    let count = f.path("runs");
    let killme = f.path("killme");
    // Run 1 lives until the test kills it; runs 2-4 fail at once (a crash
    // loop); run 5 stays up (the recovery).
    let child = script(
        f.tmp.path(),
        "life.sh",
        &format!(
            "n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}\n\
             case $n in 2|3|4) exit 3;; esac\n\
             [ $n = 1 ] && echo $$ > {killme}\n\
             echo run-$n\ntrap 'exit 0' TERM\nwhile :; do sleep 1000 & wait $!; done",
            count = count.display(),
            killme = killme.display()
        ),
    );
    let metrics_port = free_port_block();
    let mut env = env(&f);
    env.push((
        "MYBUDDY_METRICS_ADDR".into(),
        format!("127.0.0.1:{metrics_port}"),
    ));
    // Written by the gateway's uid.
    for (p, text) in [(&count, "0"), (&killme, "")] {
        fs::write(p, text).unwrap();
        fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    }
    let mut s = Sup::start(
        f.tmp.path(),
        false,
        &args(
            &f,
            &[
                "--heartbeat",
                "1",
                "--backoff-initial-ms",
                "50",
                "--backoff-max-ms",
                "200",
                "--reset-after",
                "3",
            ],
            &[child.to_str().unwrap()],
        ),
        &env,
    );
    assert!(s.wait_out("run-1", T), "{}", s.log());
    let e = wait_state(&f, "running");
    assert_eq!(e["heartbeat_s"], 1, "{e}");
    // The heartbeat stamps the entry while nothing changes.
    let first = e["seen_at"].as_str().unwrap().to_string();
    let later = wait_for(T, || {
        entry(&f).filter(|e| e["seen_at"].as_str() != Some(&first))
    })
    .unwrap_or_else(|| panic!("no heartbeat after {first}:\n{}", s.log()));
    assert_eq!(later["gateway"]["state"], "running", "{later}");
    assert!(table(&f).contains("running"), "{}", table(&f));
    let m = scrape(metrics_port);
    assert_eq!(value(&m, "mybuddy_gateway_up", None), 1.0);
    assert_eq!(
        value(&m, "mybuddy_gateway_state", Some(("state", "running"))),
        1.0
    );
    assert_eq!(
        value(&m, "mybuddy_gateway_state", Some(("state", "booting"))),
        0.0
    );
    assert_eq!(value(&m, "mybuddy_gateway_starts_total", None), 1.0);
    assert_eq!(value(&m, "mybuddy_gateway_crash_looping", None), 0.0);
    assert_eq!(
        value(&m, "mybuddy_registry_write_failures_total", None),
        0.0
    );
    assert!(value(&m, "mybuddy_boot_step_seconds", Some(("step", "render"))) > 0.0);
    // The gateway's group and the Machine, read at the scrape.
    assert!(value(&m, "mybuddy_gateway_rss_bytes", None) > 100_000.0);
    let (used, total) = (
        value(&m, "mybuddy_machine_memory_used_bytes", None),
        value(&m, "mybuddy_machine_memory_total_bytes", None),
    );
    assert!(used > 0.0 && used < total, "{used} of {total}");
    assert_eq!(value(&m, "mybuddy_backups_enabled", None), 0.0);

    let pid = fs::read_to_string(&killme).unwrap();
    sh(std::process::Command::new("kill").args(["-KILL", pid.trim()]));
    assert!(s.wait_out("run-5", T), "{}", s.log());
    // Runs 2-4 failed: a loop from the third exit in a row, each exit
    // written as it came.
    let e = wait_for(T, || {
        entry(&f).filter(|e| e["gateway"]["state"] == "crash-looping" && e["gateway"]["exits"] == 4)
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", entry(&f), s.log()));
    assert_eq!(e["gateway"]["last_exit"], "exit code 3", "{e}");
    let m = scrape(metrics_port);
    // Unless the recovery came first (it is logged before the metric moves).
    if !s.log().contains("gateway recovered") {
        assert_eq!(value(&m, "mybuddy_gateway_crash_looping", None), 1.0);
        assert_eq!(
            value(
                &m,
                "mybuddy_gateway_state",
                Some(("state", "crash-looping"))
            ),
            1.0
        );
    }
    assert!(s.wait_log("gateway recovered", T), "{}", s.log());
    let e = wait_state(&f, "running");
    assert_eq!(e["gateway"]["exits"], 4, "{e}");
    let m = scrape(metrics_port);
    assert_eq!(value(&m, "mybuddy_gateway_crash_looping", None), 0.0);
    assert_eq!(value(&m, "mybuddy_gateway_starts_total", None), 5.0);
    assert_eq!(value(&m, "mybuddy_gateway_restarts_total", None), 4.0);
    assert_eq!(value(&m, "mybuddy_gateway_last_exit_code", None), 3.0);
    assert_eq!(
        value(&m, "mybuddy_gateway_state", Some(("state", "running"))),
        1.0
    );
    assert_eq!(value(&m, "mybuddy_gateway_oom_kills_total", None), 0.0);

    s.signal("TERM");
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
    // Written before the supervisor exited.
    let e = entry(&f).unwrap();
    assert_eq!(e["gateway"]["state"], "stopped", "{e}");
    assert_eq!(
        e["gateway"]["reason"], "stopped by SIGTERM (supervisor exit 0)",
        "{e}"
    );
    assert_eq!(e["gateway"]["last_exit"], "exit code 0", "{e}");
    // A stopped entry is believed however old: nothing heartbeats for it.
    assert!(table(&f).contains("stopped"), "{}", table(&f));
    // `status --json` reads the same life back, judged.
    let o = std::process::Command::new(supervisor())
        .args(["status", "--json", "--swarm"])
        .arg(&f.swarm)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "a stopped Buddy is not healthy");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &r["buddies"][0];
    assert_eq!(row["state"], "stopped", "{r:#}");
    assert_eq!(row["restarts_24h"], 4, "{r:#}");
    assert_eq!(
        row["problems"],
        json!(["stopped: stopped by SIGTERM (supervisor exit 0)"]),
        "{r:#}"
    );

    let states = recorded_states(&s.log());
    assert!(
        in_order(
            &states,
            &[
                "booting",
                "running",
                "restarting",
                "crash-looping",
                "running",
                "stopping",
                "stopped"
            ]
        ),
        "{states:?}"
    );
    // The kill showed as such before the loop began.
    assert!(
        s.log()
            .contains("state recorded in the registry state=restarting"),
        "{}",
        s.log()
    );
}

#[test]
fn a_killed_supervisors_entry_turns_unknown_after_three_heartbeats() {
    let f = Fixture::new();
    let child = script(
        f.tmp.path(),
        "up.sh",
        "echo up\ntrap 'exit 0' TERM\nwhile :; do sleep 1000 & wait $!; done",
    );
    let mut s = Sup::start(
        f.tmp.path(),
        false,
        &args(&f, &["--heartbeat", "1"], &[child.to_str().unwrap()]),
        &env(&f),
    );
    wait_state(&f, "running");
    s.signal("KILL");
    s.wait_exit(T);
    let killed = Instant::now();
    let seen_at = entry(&f).unwrap()["seen_at"].as_str().unwrap().to_string();
    // Believed while it could still be heartbeating...
    let t = table(&f);
    if killed.elapsed() < Duration::from_secs(2) {
        assert!(t.contains("running"), "{t}");
    }
    // ...then no longer.
    let t = wait_for(Duration::from_secs(10), || {
        let t = table(&f);
        t.contains("unknown since").then_some(t)
    })
    .unwrap_or_else(|| panic!("never unknown:\n{}", table(&f)));
    assert!(t.contains(&format!("unknown since {seen_at}")), "{t}");
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "unknown after {:?}",
        killed.elapsed()
    );
    // The file still says running: `unknown` is what a reader concludes.
    assert_eq!(entry(&f).unwrap()["gateway"]["state"], "running");
}

/// A deployed entry, as its Machine `machine` wrote it `ago` seconds ago.
fn deployed(f: &Fixture, machine: &str, ago: u64) -> Value {
    assert!(
        registry_register(&f.swarm, &f.buddy(SLUG), &["--status", "active"])
            .status
            .success()
    );
    let path = registry_path(f);
    let mut r: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let t = |s: u64| {
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() - Duration::from_secs(s))
            .to_string()
    };
    let e = &mut r["buddies"][SLUG];
    e["machine"] = json!(machine);
    e["version"] = json!("sha256:0a1b2c");
    e["last_boot"] = json!(t(ago + 3600));
    e["gateway"] = json!({"state": "running", "since": t(ago + 3000)});
    e["seen_at"] = json!(t(ago));
    e["heartbeat_s"] = json!(60);
    let e = e.clone();
    fs::write(&path, serde_json::to_string_pretty(&r).unwrap()).unwrap();
    e
}

/// One short run (`true`, `--restart never`) with `env`, exited cleanly.
fn run_once(f: &Fixture, env: &[(String, String)]) -> Sup {
    let mut s = Sup::start(
        f.tmp.path(),
        false,
        &args(f, &["--restart", "never"], &["true"]),
        env,
    );
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
    s
}

#[test]
fn a_run_that_is_not_the_deployed_machine_leaves_its_entry_alone() {
    let f = Fixture::new();
    let before = deployed(&f, "e784079b449483", 5);
    // run-local, offline, a test: no Machine id.
    let s = run_once(&f, &env(&f));
    assert_eq!(entry(&f).unwrap(), before, "{}", s.log());
    assert!(
        s.log().contains("this run leaves the entry alone")
            && s.log().contains("has no FLY_MACHINE_ID"),
        "{}",
        s.log()
    );
    // Said once, not at every heartbeat or state.
    assert_eq!(
        s.log().matches("this run leaves the entry alone").count(),
        1,
        "{}",
        s.log()
    );

    // Another Machine while the entry's own still heartbeats.
    let mut with_id = env(&f);
    with_id.push(("FLY_MACHINE_ID".into(), "3d8d9015b23e89".into()));
    let s = run_once(&f, &with_id);
    assert_eq!(entry(&f).unwrap(), before, "{}", s.log());
    assert!(
        s.log().contains("two Machines of one Buddy?"),
        "{}",
        s.log()
    );

    // Once the entry's Machine has gone silent, the new Machine takes over.
    deployed(&f, "e784079b449483", 3600);
    let s = run_once(&f, &with_id);
    let e = entry(&f).unwrap();
    assert_eq!(e["machine"], "3d8d9015b23e89", "{e}");
    assert_eq!(e["gateway"]["state"], "stopped", "{e}");
    assert!(
        s.log().contains("this Machine takes the entry over"),
        "{}",
        s.log()
    );
}

#[test]
fn a_refused_boot_is_recorded_and_the_next_one_waits_before_it_exits() {
    let f = Fixture::new();
    assert!(
        registry_register(&f.swarm, &f.buddy(SLUG), &[])
            .status
            .success()
    );
    let names = secret_names(&f.buddy(SLUG));
    let missing = names[0].clone();
    let without: Vec<(String, String)> =
        env(&f).into_iter().filter(|(k, _)| *k != missing).collect();
    let flags = ["--refusal-backoff", "60", "--restart", "never"];

    // The first refusal exits at once, recorded.
    let t = Instant::now();
    let mut s = Sup::start(f.tmp.path(), false, &args(&f, &flags, &["true"]), &without);
    assert_eq!(s.wait_exit(T), Some(78), "{}", s.log());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let e = entry(&f).unwrap();
    assert_eq!(e["gateway"]["state"], "refused", "{e}");
    let reason = e["gateway"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("render step: Buddy ") && reason.contains(&missing),
        "{reason}"
    );
    assert!(!reason.contains('\n'));
    assert!(table(&f).contains("refused"), "{}", table(&f));
    // Counted on the volume, root's.
    let count = f.state.join(".supervisor-refusals");
    assert_eq!(fs::read_to_string(&count).unwrap().trim(), "1");

    // The second waits (here 60 s); a stop ends the wait.
    let mut s = Sup::start(f.tmp.path(), false, &args(&f, &flags, &["true"]), &without);
    assert!(
        s.wait_log("boot refused 2 times in a row: waiting", T),
        "{}",
        s.log()
    );
    assert!(s.wait_exit(Duration::from_secs(1)).is_none(), "{}", s.log());
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(5)), Some(78), "{}", s.log());
    assert_eq!(fs::read_to_string(&count).unwrap().trim(), "2");

    // A count the gateway planted (it owns the volume) is not believed.
    fs::remove_file(&count).unwrap();
    fs::write(&count, "40\n").unwrap();
    std::os::unix::fs::chown(&count, Some(10001), Some(10001)).unwrap();
    let mut s = Sup::start(f.tmp.path(), false, &args(&f, &flags, &["true"]), &without);
    assert_eq!(s.wait_exit(T), Some(78), "{}", s.log());
    assert!(!s.log().contains("waiting before the exit"), "{}", s.log());

    // A boot that starts the gateway starts the count over.
    let mut s = Sup::start(f.tmp.path(), false, &args(&f, &flags, &["true"]), &env(&f));
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
    assert!(!count.exists());
    assert_eq!(entry(&f).unwrap()["gateway"]["state"], "stopped");
}
