//! scripts/deploy: one Buddy onto its Fly Machine over the Machines API
//! (the stand-in, in a loopback-only namespace) with the very Machine config
//! a spell makes, the `fly` CLI (a recording stand-in first on PATH) only for
//! the public addresses; secrets never on a command line.

mod support;

use std::process::{Command, Output};

use mybuddy_standins::FlyStandin;
use mybuddytalk::fleet::fly::Client;
use serde_json::json;
use support::*;

const FLY_TOKEN: &str = "fm2_operator-token";
const DIGEST: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

struct World {
    /// Holds the temporary directory the `fly` stand-in lives in.
    _f: Fixture,
    ns: NetNs,
    api: FlyStandin,
    fly: FakeFly,
}

impl World {
    fn new() -> World {
        let f = Fixture::new();
        let ns = NetNs::new();
        let api = fly_api(&ns, Some(FLY_TOKEN));
        // What `scripts/deploy --base` pushed: the tag the registry pins.
        api.api.add_image("mybuddytalk-base:latest", DIGEST);
        let fly = FakeFly::new(f.tmp.path());
        World {
            _f: f,
            ns,
            api,
            fly,
        }
    }

    fn deploy(&self, env: &[(String, String)], args: &[&str]) -> Output {
        self.ns
            .command(repo().join("scripts/deploy").to_str().unwrap())
            .args(args)
            .env_clear()
            .env("PATH", self.fly.path_env())
            .env("HOME", "/root")
            .env("SUPERVISOR", supervisor())
            .env("FLY_API_HOSTNAME", self.api.base_url())
            .env("MYBUDDY_REGISTRY_URL", self.api.base_url())
            .env("FLY_API_TOKEN", FLY_TOKEN)
            .env("MYBUDDY_CHECKS_TIMEOUT", "3")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    fn lines(&self) -> Vec<String> {
        self.api.api.calls().iter().map(|c| c.line()).collect()
    }

    /// A Buddy's app and Machine as an earlier deploy left them.
    fn deployed_before(&self, slug: &str, secret_names: &[String]) -> String {
        let app = format!("mybuddytalk-{slug}");
        self.api.api.add_app(&app);
        let c = Client::new(&self.api.base_url(), FLY_TOKEN);
        let facts = mybuddytalk::fleet::machine::fly_facts(&repo().join("fly.toml")).unwrap();
        let old = "registry.fly.io/mybuddytalk-base@sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let dir = repo().join("buddies").join(slug);
        let template = repo().join("buddies/_template/config.json");
        let config = mybuddytalk::fleet::machine::config(
            &facts,
            mybuddytalk::fleet::machine::Definition::new(&dir, &template),
            old,
            Some("vol_old"),
        )
        .unwrap();
        self.ns.run(|| {
            let marker = mybuddytalk::config::render::Secret("set-before".into());
            let set: Vec<(String, Option<&mybuddytalk::config::render::Secret>)> = secret_names
                .iter()
                .map(|n| (n.clone(), Some(&marker)))
                .collect();
            c.set_secrets(&app, &set).unwrap();
            c.create_volume(&app, "buddy_state", "ams", 3, None)
                .unwrap();
            c.create_machine(
                &app,
                &json!({"name": slug, "region": "ams", "config": config}),
            )
            .unwrap()
            .id
        })
    }
}

/// The secret names a Buddy's app holds: its own and the share's for its role.
fn own_and_share_secrets(slug: &str) -> Vec<String> {
    let dir = repo().join("buddies").join(slug);
    let mut names = secret_names(&dir);
    names.extend(secret_names_of(&dir, &["--share"]));
    names
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// The share's secrets for this Buddy's role, as an operator exports them.
fn share_env(buddy: &str) -> Vec<(String, String)> {
    secret_names_of(&repo().join("buddies").join(buddy), &["--share"])
        .into_iter()
        .map(|n| {
            let v = marker(&n);
            (n, v)
        })
        .collect()
}

#[test]
fn a_first_deploy_makes_the_app_its_secrets_volume_and_machine_the_spells_way() {
    let w = World::new();
    let mut env = marker_env(&repo().join("buddies/estherbuddy-kazeh"));
    env.extend(share_env("estherbuddy-kazeh"));
    let o = w.deploy(&env, &["estherbuddy-kazeh", "--region", "cdg"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let app = "mybuddytalk-estherbuddy-kazeh";
    let lines = w.lines();
    let a = w.api.api.app(app).unwrap();
    assert_eq!(
        lines[0], "HEAD /v2/mybuddytalk-base/manifests/latest",
        "{out}"
    );
    assert_eq!(
        lines[1..],
        first_deploy_calls(app, &a.machines[0].id),
        "{out}"
    );
    // Only the addresses go through the CLI.
    assert_eq!(
        w.fly.calls(),
        [["ips", "list", "--app", app, "--json"]
            .map(String::from)
            .to_vec()]
    );
    assert_eq!(a.ips, ["private_v6"]);
    // Every secret through the API, none on a command line or in the output.
    for (k, v) in &env {
        assert_eq!(a.secrets.get(k), Some(v), "{k}");
        assert!(
            !out.contains(v.as_str()),
            "a secret value reached the output"
        );
        for call in w.fly.calls() {
            assert!(!call.iter().any(|x| x.contains(v.as_str())));
        }
    }
    assert!(!a.secrets.keys().any(|k| k.contains("SPELLBOOK")));
    // Its volume keeps Fly's daily snapshots as long as fly.toml says.
    assert_eq!(a.volumes.len(), 1);
    assert_eq!(a.volumes[0].snapshot_retention, Some(14));
    // The Machine is exactly `supervisor machine-config` of this Buddy on the
    // pinned base image (the definition a spell's Machine has too), tagged.
    let m = &a.machines[0];
    let pinned = format!("registry.fly.io/mybuddytalk-base@{DIGEST}");
    assert_eq!(m.config["image"], pinned.as_str());
    let want = Command::new(supervisor())
        .args(["machine-config", "--buddy"])
        .arg(repo().join("buddies/estherbuddy-kazeh"))
        .args(["--image", &pinned, "--volume", a.volumes[0].id.as_str()])
        .arg("--fly-toml")
        .arg(repo().join("fly.toml"))
        .output()
        .unwrap();
    let mut want: serde_json::Value = serde_json::from_slice(&want.stdout).unwrap();
    want["metadata"]["mybuddy_cast"] = m.config["metadata"]["mybuddy_cast"].clone();
    assert_eq!(m.config, want);
    assert_eq!(m.region, "cdg");
    assert!(
        out.contains("fly proxy 18789:18789 --app mybuddytalk-estherbuddy-kazeh"),
        "{out}"
    );
}

#[test]
fn a_second_deploy_replaces_the_machine_keeps_the_secrets_and_unsets_what_the_role_may_not_hold() {
    let w = World::new();
    let slug = "roelbuddy-galahad";
    let app = "mybuddytalk-roelbuddy-galahad";
    let mut names = own_and_share_secrets(slug);
    // Left over from when Galahad was a Magician.
    names.extend([
        "MYBUDDY_SPELLBOOK_META_PASSWORD".into(),
        "FLY_API_TOKEN".into(),
    ]);
    let machine = w.deployed_before(slug, &names);
    // Deployed before Buddies were private: public addresses to release.
    w.fly.answer(
        "ips",
        r#"[{"Address":"fdaa:0:1::3","Type":"private_v6"},{"Address":"2a09:8280:1::1","Type":"v6"},{"Address":"66.241.124.9","Type":"shared_v4"}]"#,
    );
    let o = w.deploy(&[], &[slug]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("secrets: kept on the app"), "{out}");
    let a = w.api.api.app(app).unwrap();
    // One Machine, the same one, now on the new image; its volume reused.
    assert_eq!(a.machines.len(), 1);
    assert_eq!(a.machines[0].id, machine);
    assert_eq!(a.machines[0].history.len(), 2);
    assert_eq!(
        a.machines[0].config["image"],
        format!("registry.fly.io/mybuddytalk-base@{DIGEST}").as_str()
    );
    assert_eq!(a.volumes.len(), 1);
    // What a Buddy may not hold is gone; its own secrets are kept.
    assert!(!a.secrets.contains_key("MYBUDDY_SPELLBOOK_META_PASSWORD"));
    assert!(!a.secrets.contains_key("FLY_API_TOKEN"));
    assert!(a.secrets.contains_key("ROELBUDDY_GALAHAD_TELEGRAM_TOKEN"));
    // The update went under a lease, released after.
    let calls = w.api.api.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.method == "POST" && c.lease_nonce.is_some())
    );
    assert!(
        calls
            .iter()
            .any(|c| c.method == "DELETE" && c.path.ends_with("/lease"))
    );
    // The running Buddy was backed up on its own Machine first, before the
    // lease (over the Machines API: its backup keys never leave it).
    assert_eq!(
        a.machines[0].execs,
        vec![json!({"command": ["supervisor", "backup", "now"], "timeout": 120})]
    );
    let lines = w.lines();
    let exec_at = lines.iter().position(|l| l.ends_with("/exec")).unwrap();
    let lease_at = lines.iter().position(|l| l.ends_with("/lease")).unwrap();
    assert!(exec_at < lease_at, "{lines:?}");
    assert!(
        out.contains("backed up before the change: backed-up: snapshot"),
        "{out}"
    );
    let fly_calls = w.fly.calls();
    // The public addresses went; the Flycast one stayed.
    assert!(
        fly_calls.contains(
            &["ips", "release", "2a09:8280:1::1", "--app", app, "--yes"]
                .map(String::from)
                .to_vec()
        )
    );
    assert!(
        fly_calls.contains(
            &["ips", "release", "66.241.124.9", "--app", app, "--yes"]
                .map(String::from)
                .to_vec()
        )
    );
    assert!(
        !fly_calls
            .iter()
            .any(|c| c.contains(&"fdaa:0:1::3".to_string()))
    );
    assert!(
        calls.iter().all(|c| !c.path.contains("emrys")
            && !c.path.contains("kazeh")
            && !c.path.contains("morgan")),
        "another Buddy was touched"
    );
}

#[test]
fn missing_secrets_a_failing_api_and_bad_ids_deploy_nothing() {
    // Some of a group but not all: refused before any API call.
    let w = World::new();
    let env: Vec<(String, String)> = marker_env(&repo().join("buddies/roelbuddy-emrys"))
        .into_iter()
        .skip(1)
        .collect();
    let o = w.deploy(&env, &["roelbuddy-emrys"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("set all of this Buddy's secrets or none; missing: BRAVE_API_KEY"),
        "{}",
        text(&o)
    );
    assert!(w.lines().is_empty(), "{:?}", w.lines());
    // None given and none on the new app: refused, naming them, and the app
    // it made is taken back.
    let o = w.deploy(&[], &["roelbuddy-emrys"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("mybuddytalk-roelbuddy-emrys lacks secrets BRAVE_API_KEY GEMINI_API_KEY ROELBUDDY_EMRYS_HUMAN_PHONE"),
        "{out}"
    );
    assert!(
        out.contains("undone: deleted the Fly app mybuddytalk-roelbuddy-emrys"),
        "{out}"
    );
    assert!(w.api.api.app_names().is_empty());
    // A Machine create that keeps failing: the volume and the app go again.
    let mut env = marker_env(&repo().join("buddies/roelbuddy-emrys"));
    env.extend(share_env("roelbuddy-emrys"));
    w.api.api.fail("POST", "/machines", 500, 3);
    let o = w.deploy(&env, &["roelbuddy-emrys"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("undone: deleted the volume"), "{out}");
    assert!(w.api.api.app_names().is_empty());
    // An unknown Buddy or a bad id: nothing at all.
    let before = w.lines().len();
    for bad in ["nobuddy-here", "../etc", "RoelBuddy-Emrys"] {
        let o = w.deploy(&[], &[bad]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
    }
    assert_eq!(w.lines().len(), before);
}

#[test]
fn a_magician_gets_the_spellbook_and_its_org_token_a_buddy_neither() {
    let w = World::new();
    let mut env = marker_env(&repo().join("buddies/roelbuddy-emrys"));
    let share = share_env("roelbuddy-emrys");
    assert_eq!(share.len(), 4, "{share:?}");
    env.extend(share.clone());
    env.push((
        "MYBUDDY_MAGICIAN_FLY_TOKEN".into(),
        "fm2_magician-org-token".into(),
    ));
    let o = w.deploy(&env, &["roelbuddy-emrys"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("fm2_magician-org-token"));
    let a = w.api.api.app("mybuddytalk-roelbuddy-emrys").unwrap();
    assert_eq!(a.secrets["FLY_API_TOKEN"], "fm2_magician-org-token");
    assert!(a.secrets.contains_key("MYBUDDY_SPELLBOOK_META_PASSWORD"));
    // The share's group is all or nothing, like the Buddy's own.
    let mut partial = marker_env(&repo().join("buddies/roelbuddy-emrys"));
    partial.extend(share.into_iter().filter(|(k, _)| !k.contains("SPELLBOOK")));
    let o = w.deploy(&partial, &["roelbuddy-emrys"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("set all of the share's secrets for a magician or none; missing: MYBUDDY_SPELLBOOK_META_URL MYBUDDY_SPELLBOOK_META_PASSWORD"),
        "{}",
        text(&o)
    );
    // A Buddy never gets the org token, even exported.
    let mut env = marker_env(&repo().join("buddies/estherbuddy-kazeh"));
    env.extend(share_env("estherbuddy-kazeh"));
    env.push((
        "MYBUDDY_MAGICIAN_FLY_TOKEN".into(),
        "fm2_magician-org-token".into(),
    ));
    let o = w.deploy(&env, &["estherbuddy-kazeh"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("not given to its app"));
    let a = w.api.api.app("mybuddytalk-estherbuddy-kazeh").unwrap();
    assert!(!a.secrets.contains_key("FLY_API_TOKEN"));
}

#[test]
fn dry_run_prints_the_plan_and_calls_nothing() {
    let w = World::new();
    let env = marker_env(&repo().join("buddies/roelbuddy-galahad"));
    let o = w.deploy(&env, &["roelbuddy-galahad", "--dry-run"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("+ would look up the Fly app mybuddytalk-roelbuddy-galahad"),
        "{out}"
    );
    assert!(out.contains("set its secrets (BRAVE_API_KEY GEMINI_API_KEY ROELBUDDY_GALAHAD_HUMAN_TELEGRAM_ID ROELBUDDY_GALAHAD_TELEGRAM_TOKEN)"), "{out}");
    assert!(w.lines().is_empty() && w.fly.calls().is_empty());
    let o = w.deploy(&[], &["--base", "--dry-run"]);
    assert!(text(&o).contains("+ fly deploy --app mybuddytalk-base --config fly.toml --dockerfile Dockerfile --build-only --push --image-label latest"));
}

#[test]
fn a_running_buddy_whose_backup_fails_is_not_replaced() {
    let w = World::new();
    let slug = "roelbuddy-galahad";
    let app = "mybuddytalk-roelbuddy-galahad";
    let names = own_and_share_secrets(slug);
    let machine = w.deployed_before(slug, &names);
    let fails = "error: restic backup failed: disk full";
    w.api.api.exec_answers(app, &machine, 1, fails);
    let o = w.deploy(&[], &[slug]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    let said = format!("the backup of Machine {machine} before the change failed");
    assert!(
        out.contains(&said) && out.contains("disk full") && out.contains("--no-backup"),
        "{out}"
    );
    // Nothing of the Machine changed: no lease, no update.
    assert_eq!(w.api.api.app(app).unwrap().machines[0].history.len(), 1);
    assert!(!w.api.api.calls().iter().any(|c| c.path.ends_with("/lease")));

    // A Buddy whose backups are off: said, and the deploy goes on.
    w.api.api.exec_answers(
        app,
        &machine,
        3,
        "backups are off: no MYBUDDY_BACKUP_REPOSITORY",
    );
    let o = w.deploy(&[], &[slug]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("its backups are off, nothing backed up first"),
        "{out}"
    );
    assert_eq!(w.api.api.app(app).unwrap().machines[0].history.len(), 2);

    // With --no-backup (the backup itself broken) it goes on, said.
    w.api.api.exec_answers(app, &machine, 1, fails);
    let o = w.deploy(&[], &[slug, "--no-backup"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("replaced without a backup first (--no-backup)"),
        "{out}"
    );
    assert_eq!(w.api.api.app(app).unwrap().machines[0].history.len(), 3);
}
