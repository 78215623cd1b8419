//! `supervisor status` over the swarm's registry and the Machines API
//! stand-in (in a loopback-only network namespace): four Buddies in mixed
//! states, one table, one JSON report, one exit code.

mod support;

use std::fs;
use std::process::Output;
use std::time::{Duration, SystemTime};

use mybuddy_standins::FlyStandin;
use mybuddytalk::fleet::{fly::Client, machine};
use serde_json::{Value, json};
use support::*;

const FLY_TOKEN: &str = "fm2_stand-in-org-token";
const NEWEST: &str = "sha256:bbbbbbbbbbbb0000000000000000000000000000000000000000000000000000";
const OLDER: &str = "sha256:aaaaaaaaaaaa0000000000000000000000000000000000000000000000000000";

/// A Buddy deployed on an image digest, its registry entry then changed.
type Deployed<'a> = (&'a str, &'a str, fn(&mut Value));

struct World {
    f: Fixture,
    ns: NetNs,
    fly: FlyStandin,
}

fn ago(s: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(s)).to_string()
}

impl World {
    /// Each Buddy deployed (its app, its Machine on `image`) and registered
    /// as its supervisor would have written it, then `entry` applied.
    fn new(buddies: &[Deployed]) -> World {
        let f = Fixture::new();
        let ns = NetNs::new();
        let fly = fly_api(&ns, Some(FLY_TOKEN));
        fly.api.add_image("mybuddytalk-base:latest", NEWEST);
        let facts = machine::fly_facts(&repo().join("fly.toml")).unwrap();
        let client = Client::new(&fly.base_url(), FLY_TOKEN);
        for (slug, digest, _) in buddies {
            assert!(
                registry_register(&f.swarm, &f.buddy(slug), &["--status", "active"])
                    .status
                    .success()
            );
            let app = format!("mybuddytalk-{slug}");
            fly.api.add_app(&app);
            let image = format!("registry.fly.io/mybuddytalk-base@{digest}");
            let (dir, template) = (f.buddy(slug), f.buddies.join("_template/config.json"));
            let def = machine::Definition::new(&dir, &template);
            let config = machine::config(&facts, def, &image, Some("vol_x")).unwrap();
            ns.run(|| {
                client
                    .create_machine(
                        &app,
                        &json!({"name": slug, "region": "ams", "config": config}),
                    )
                    .unwrap()
            });
        }
        let path = f.swarm.join("mybuddybook/registry.json");
        let mut r: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        for (slug, digest, entry) in buddies {
            let m = fly
                .api
                .app(&format!("mybuddytalk-{slug}"))
                .unwrap()
                .machines[0]
                .clone();
            let e = &mut r["buddies"][slug];
            e["machine"] = json!(m.id);
            e["version"] = json!(format!("sha256:{}", &digest[7..19]));
            e["last_boot"] = json!(ago(7200));
            e["gateway"] = json!({"state": "running", "since": ago(7000)});
            e["seen_at"] = json!(ago(20));
            e["heartbeat_s"] = json!(60);
            e["restarts_24h"] = json!(0);
            e["backup_at"] = json!(ago(45));
            e["ready"] = json!({"ready": true, "failing": [], "at": ago(20)});
            e["mounts"] = json!({"mybuddybook": true});
            entry(e);
        }
        fs::write(&path, serde_json::to_string_pretty(&r).unwrap()).unwrap();
        World { f, ns, fly }
    }

    fn status(&self, json: bool, token: bool) -> Output {
        let mut c = self.ns.command(supervisor().to_str().unwrap());
        c.args(["status", "--swarm", self.f.swarm.to_str().unwrap()])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("FLY_API_HOSTNAME", self.fly.base_url())
            .env("MYBUDDY_REGISTRY_URL", self.fly.base_url());
        if json {
            c.arg("--json");
        }
        if token {
            c.env("FLY_API_TOKEN", FLY_TOKEN);
        }
        c.output().unwrap()
    }

    fn machine_id(&self, slug: &str) -> String {
        self.fly
            .api
            .app(&format!("mybuddytalk-{slug}"))
            .unwrap()
            .machines[0]
            .id
            .clone()
    }
}

fn row<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["buddies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {report:#}"))
}

#[test]
fn status_judges_four_buddies_in_mixed_states() {
    let w = World::new(&[
        // Healthy, on the newest image.
        ("roelbuddy-galahad", NEWEST, |_| {}),
        // Its Machine stopped (and its supervisor said so on the way out).
        ("roelbuddy-emrys", NEWEST, |e| {
            e["gateway"] = json!({"state": "stopped", "since": ago(600),
                "reason": "stopped by SIGTERM (supervisor exit 0)", "last_exit": "exit code 0"});
            e["seen_at"] = json!(ago(600));
        }),
        // Running by its registry, failing its check by Fly's; an older image.
        ("estherbuddy-kazeh", OLDER, |_| {}),
        // Silent for ten minutes: its Machine died without a word.
        ("estherbuddy-morgan", NEWEST, |e| {
            e["seen_at"] = json!(ago(600));
        }),
    ]);
    w.fly.api.set_state(
        "mybuddytalk-roelbuddy-emrys",
        &w.machine_id("roelbuddy-emrys"),
        "stopped",
    );
    w.fly.api.checks_never_pass("aaaaaaaaaaaa");

    let out = w.status(true, true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["healthy"], false);
    assert_eq!(r["newest_version"], "sha256:bbbbbbbbbbbb");
    assert_eq!(r["unseen"], json!([]), "{r:#}");

    let g = row(&r, "RoelBuddy-Galahad");
    assert_eq!(g["healthy"], true, "{g:#}");
    assert_eq!(g["problems"], json!([]));
    assert_eq!(g["machine"]["state"], "started");
    assert_eq!(g["machine"]["region"], "ams");
    assert_eq!(g["machine"]["checks"], json!([["healthz", "passing"]]));
    assert_eq!(g["newest"], true);
    assert_eq!(g["state"], "running");
    assert_eq!(g["telegram"], "polling");
    assert!(g["backup_lag_s"].as_u64().unwrap() < 120);

    let e = row(&r, "RoelBuddy-Emrys");
    assert_eq!(e["healthy"], false);
    assert_eq!(e["machine"]["state"], "stopped");
    let problems = e["problems"].to_string();
    assert!(
        problems.contains("stopped: stopped by SIGTERM"),
        "{problems}"
    );
    assert!(problems.contains("is stopped"), "{problems}");

    let k = row(&r, "EstherBuddy-Kazeh");
    assert_eq!(k["healthy"], false);
    assert_eq!(k["newest"], false);
    assert_eq!(k["problems"], json!(["check healthz critical"]), "{k:#}");

    let m = row(&r, "EstherBuddy-Morgan");
    assert_eq!(m["healthy"], false);
    assert!(
        m["state"].as_str().unwrap().starts_with("unknown since "),
        "{m:#}"
    );
    assert_eq!(
        m["problems"],
        json!([format!(
            "no heartbeat since {}",
            m["state"]
                .as_str()
                .unwrap()
                .trim_start_matches("unknown since ")
        )])
    );

    // The table says the same, one line per Buddy.
    let out = w.status(false, true);
    assert_eq!(out.status.code(), Some(1));
    let t = String::from_utf8_lossy(&out.stdout);
    let line = |id: &str| {
        t.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no {id}:\n{t}"))
            .to_string()
    };
    assert!(t.starts_with("ID "), "{t}");
    assert!(line("RoelBuddy-Galahad").ends_with("  ok"), "{t}");
    assert!(line("RoelBuddy-Galahad").contains("started ams"), "{t}");
    assert!(
        line("RoelBuddy-Galahad").contains("sha256:bbbbbbbbbbbb (newest)"),
        "{t}"
    );
    assert!(
        line("EstherBuddy-Kazeh").contains("sha256:aaaaaaaaaaaa (old)"),
        "{t}"
    );
    assert!(
        line("EstherBuddy-Kazeh").contains("check healthz critical"),
        "{t}"
    );
    assert!(line("RoelBuddy-Emrys").contains("stopped ams"), "{t}");
    assert!(
        line("EstherBuddy-Morgan").contains("no heartbeat since"),
        "{t}"
    );
    assert!(!t.contains("not seen"), "{t}");

    // Without a token: what the registry says, and what was not seen.
    let out = w.status(false, false);
    let t = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("not seen: the Machines API was not asked"),
        "{t}"
    );
    let kazeh = t
        .lines()
        .find(|l| l.starts_with("EstherBuddy-Kazeh"))
        .unwrap();
    assert!(
        kazeh.ends_with("  ok"),
        "only Fly sees its failing check:\n{t}"
    );
    // No call was made without the token.
    let calls = w.fly.api.calls().len();
    w.status(false, false);
    assert_eq!(w.fly.api.calls().len(), calls);
}

#[test]
fn a_swarm_all_well_exits_zero_and_a_failing_channel_does_not() {
    let w = World::new(&[("roelbuddy-galahad", NEWEST, |_| {})]);
    let out = w.status(false, true);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(t.contains("  mybuddybook  "), "{t}");
    // Telegram not polling, as the gateway's own /readyz said it; the
    // share's volume gone.
    let path = w.f.swarm.join("mybuddybook/registry.json");
    let mut r: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    r["buddies"]["roelbuddy-galahad"]["ready"] =
        json!({"ready": false, "failing": ["telegram"], "at": ago(10)});
    r["buddies"]["roelbuddy-galahad"]["mounts"] = json!({"mybuddybook": false});
    fs::write(&path, serde_json::to_string_pretty(&r).unwrap()).unwrap();
    let out = w.status(true, true);
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = row(&r, "RoelBuddy-Galahad");
    assert_eq!(g["telegram"], "failing");
    assert_eq!(
        g["problems"],
        json!([
            "share volume mybuddybook not mounted",
            "Telegram not polling"
        ])
    );
}
