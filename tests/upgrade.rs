//! UpgradeBuddy over the Machines API stand-in, in a loopback-only network
//! namespace: the four Buddies deployed on the old base image, each Machine
//! "booting" (the stand-in's start hook plays the Buddy's supervisor and
//! writes the version it runs into the registry). A canary first; a canary
//! that fails is put back on its old config and nobody else is touched.

mod support;

use std::fs;

use std::process::Output;

use mybuddy_standins::FlyStandin;
use mybuddytalk::fleet::{fly::Client, machine};
use mybuddytalk::swarm::registry;
use serde_json::json;
use support::*;

const FLY_TOKEN: &str = "fm2_stand-in-org-token";
const OLD: &str = "registry.fly.io/mybuddytalk-base@sha256:aaaaaaaaaaaa0000000000000000000000000000000000000000000000000000";
const NEW: &str = "registry.fly.io/mybuddytalk-base@sha256:bbbbbbbbbbbb0000000000000000000000000000000000000000000000000000";
const SLUGS: [&str; 4] = [
    "estherbuddy-kazeh",
    "estherbuddy-morgan",
    "roelbuddy-emrys",
    "roelbuddy-galahad",
];

struct World {
    f: Fixture,
    ns: NetNs,
    fly: FlyStandin,
}

impl World {
    /// The four Buddies deployed on OLD, registered at its version.
    fn new() -> World {
        let f = Fixture::new();
        fs::create_dir_all(f.swarm.join("mybuddybook/announcements")).unwrap();
        fs::create_dir_all(f.swarm.join("spellbook")).unwrap();
        let ns = NetNs::new();
        let fly = fly_api(&ns, Some(FLY_TOKEN));
        // Each Machine that starts is its Buddy booting: its supervisor
        // registers the version its image carries.
        let book = f.swarm.join("mybuddybook");
        fly.api.on_start(move |_app, m| {
            let slug = m.config["metadata"]["mybuddy_buddy"]
                .as_str()
                .unwrap_or_default();
            let v = m.config["env"]["MYBUDDY_IMAGE_VERSION"]
                .as_str()
                .map(str::to_string);
            let _ = registry::update(&book, slug, |e| e.version = v);
        });
        let facts = machine::fly_facts(&repo().join("fly.toml")).unwrap();
        let client = Client::new(&fly.base_url(), FLY_TOKEN);
        for slug in SLUGS {
            assert!(
                registry_register(&f.swarm, &f.buddy(slug), &[])
                    .status
                    .success()
            );
            let app = format!("mybuddytalk-{slug}");
            fly.api.add_app(&app);
            let (dir, template) = (f.buddy(slug), f.buddies.join("_template/config.json"));
            let def = machine::Definition::new(&dir, &template);
            let config = machine::config(&facts, def, OLD, Some("vol_x")).unwrap();
            let m = ns.run(|| {
                client
                    .create_machine(
                        &app,
                        &json!({"name": slug, "region": "ams", "config": config}),
                    )
                    .unwrap()
            });
            registry::update(&f.swarm.join("mybuddybook"), slug, |e| {
                e.machine = Some(m.id.clone())
            })
            .unwrap();
        }
        World { f, ns, fly }
    }

    fn upgrade(&self, extra: &[&str]) -> Output {
        self.ns
            .command(supervisor().to_str().unwrap())
            .args(["upgrade", "--image", NEW])
            .args(["--swarm", self.f.swarm.to_str().unwrap()])
            .args(["--as", "RoelBuddy-Emrys"])
            .args(["--fly-toml", repo().join("fly.toml").to_str().unwrap()])
            .args(["--checks-timeout", "2", "--version-timeout", "2"])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("FLY_API_HOSTNAME", self.fly.base_url())
            .env("FLY_API_TOKEN", FLY_TOKEN)
            .output()
            .unwrap()
    }

    /// The file at `guest_path` in Buddy `slug`'s Machine config.
    fn file(&self, slug: &str, guest_path: &str) -> Option<String> {
        use base64::Engine;
        let a = self.fly.api.app(&format!("mybuddytalk-{slug}")).unwrap();
        let files = a.machines[0].config["files"].as_array()?.clone();
        let f = files.iter().find(|f| f["guest_path"] == guest_path)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(f["raw_value"].as_str()?)
            .ok()?;
        String::from_utf8(raw).ok()
    }

    /// The id of Buddy `slug`'s Machine.
    fn machine_id(&self, slug: &str) -> String {
        let app = format!("mybuddytalk-{slug}");
        self.fly.api.app(&app).unwrap().machines[0].id.clone()
    }

    /// Each Buddy's Machine: (its image now, how many configs it has run).
    fn machines(&self) -> Vec<(String, usize)> {
        SLUGS
            .iter()
            .map(|s| {
                let a = self.fly.api.app(&format!("mybuddytalk-{s}")).unwrap();
                let m = &a.machines[0];
                (
                    m.config["image"].as_str().unwrap().to_string(),
                    m.history.len(),
                )
            })
            .collect()
    }

    fn version(&self, slug: &str) -> String {
        registry::read(&self.f.swarm.join("mybuddybook"))
            .unwrap()
            .buddies[slug]
            .version
            .clone()
            .unwrap_or_default()
    }

    /// The Machines updated, in order (the app of each update call).
    fn updates(&self) -> Vec<String> {
        self.fly
            .api
            .calls()
            .iter()
            .filter(|c| c.method == "POST" && c.lease_nonce.is_some())
            .map(|c| c.path.split('/').nth(3).unwrap_or_default().to_string())
            .collect()
    }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn the_new_image_rolls_over_every_buddy_one_at_a_time_canary_first() {
    let w = World::new();
    assert_eq!(w.version("roelbuddy-galahad"), "sha256:aaaaaaaaaaaa");
    // Kazeh's definition is a SpellBook record (its SOUL changed since its
    // deploy), and a gateway planted a template beside the records.
    let records = w.f.swarm.join("spellbook/buddies");
    copy_tree(
        &w.f.buddy("estherbuddy-kazeh"),
        &records.join("estherbuddy-kazeh"),
    );
    fs::write(
        records.join("estherbuddy-kazeh/workspace/SOUL.md"),
        "Kazeh, upgraded.\n",
    )
    .unwrap();
    fs::create_dir_all(records.join("_template")).unwrap();
    fs::write(
        records.join("_template/config.json"),
        "{\"env\": {\"vars\": {\"X\": \"${FLY_API_TOKEN}\"}}}",
    )
    .unwrap();
    let template_before = w.file("estherbuddy-kazeh", machine::TEMPLATE_GUEST_PATH);
    assert!(template_before.is_some());
    let o = w.upgrade(&[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // Its files are made again from the record; the template it carries is
    // the one it was deployed with (no checkout named one to check).
    assert_eq!(
        w.file("estherbuddy-kazeh", "/opt/mybuddy/buddy/workspace/SOUL.md")
            .as_deref(),
        Some("Kazeh, upgraded.\n")
    );
    assert_eq!(
        w.file("estherbuddy-kazeh", machine::TEMPLATE_GUEST_PATH),
        template_before
    );
    // The canary is the first Buddy-role one; then the others, one at a time.
    assert_eq!(
        w.updates(),
        SLUGS.map(|s| format!("mybuddytalk-{s}")),
        "{out}"
    );
    assert!(
        out.contains("[1/4] EstherBuddy-Kazeh (canary): leased"),
        "{out}"
    );
    // Each Buddy was backed up on its own Machine before it changed.
    assert!(
        out.contains("[1/4] EstherBuddy-Kazeh (canary): backed up before the change"),
        "{out}"
    );
    for s in SLUGS {
        let a = w.fly.api.app(&format!("mybuddytalk-{s}")).unwrap();
        assert_eq!(a.machines[0].execs.len(), 1, "{s}");
    }
    for (image, runs) in w.machines() {
        assert_eq!((image.as_str(), runs), (NEW, 2));
    }
    for s in SLUGS {
        assert_eq!(w.version(s), "sha256:bbbbbbbbbbbb", "{s}");
    }
    // Every lease was released.
    let releases = w
        .fly
        .api
        .calls()
        .iter()
        .filter(|c| c.method == "DELETE" && c.path.ends_with("/lease") && c.status == 200)
        .count();
    assert_eq!(releases, 4);
    // (No other definition is known here, no SpellBook record nor checkout:
    // those Machines keep their files, only the image and version change.)
    let changelog = fs::read_to_string(w.f.swarm.join("spellbook/changelog.md")).unwrap();
    assert!(
        changelog.contains("RoelBuddy-Emrys cast upgrade_buddy: EstherBuddy-Kazeh, EstherBuddy-Morgan, RoelBuddy-Emrys, RoelBuddy-Galahad upgraded to"),
        "{changelog}"
    );
    let anns = fs::read_dir(w.f.swarm.join("mybuddybook/announcements"))
        .unwrap()
        .count();
    assert_eq!(anns, 1);
}

#[test]
fn a_failing_canary_is_put_back_and_the_others_are_untouched() {
    // Its checks never pass on the new image.
    let w = World::new();
    w.fly.api.checks_never_pass("sha256:bbbbbbbbbbbb");
    let o = w.upgrade(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("upgrade stopped at EstherBuddy-Kazeh"),
        "{out}"
    );
    assert!(out.contains("healthz: critical"), "{out}");
    assert!(out.contains("back on its old config and healthy"), "{out}");
    let m = w.machines();
    // The canary ran the new config once and is back on the old one.
    assert_eq!(m[0], (OLD.to_string(), 3), "{out}");
    for other in &m[1..] {
        assert_eq!(other, &(OLD.to_string(), 1));
    }
    assert_eq!(w.updates().len(), 2);
    assert_eq!(w.version("estherbuddy-kazeh"), "sha256:aaaaaaaaaaaa");
    assert!(
        fs::read_to_string(w.f.swarm.join("spellbook/changelog.md"))
            .unwrap()
            .contains("stopped at EstherBuddy-Kazeh, put back on its old config")
    );

    // A canary that passes its checks but never runs the new version (its
    // registry entry stays old): put back too.
    let w = World::new();
    w.fly.api.on_start(|_, _| {});
    let o = w.upgrade(&["--canary", "RoelBuddy-Galahad"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("[1/4] RoelBuddy-Galahad (canary)"), "{out}");
    assert!(
        out.contains("its registry entry says sha256:aaaaaaaaaaaa"),
        "{out}"
    );
    assert_eq!(w.machines()[3], (OLD.to_string(), 3));
    assert_eq!(w.machines()[0], (OLD.to_string(), 1));

    // The canary's backup fails: nothing is updated, the rollout stops.
    let w = World::new();
    let kazeh = w.machine_id("estherbuddy-kazeh");
    w.fly.api.exec_answers(
        "mybuddytalk-estherbuddy-kazeh",
        &kazeh,
        1,
        "error: restic backup failed: connection refused",
    );
    let o = w.upgrade(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "the backup of Machine {kazeh} before the change failed"
        )) && out.contains("upgrade stopped at EstherBuddy-Kazeh"),
        "{out}"
    );
    assert!(w.updates().is_empty());

    // Someone else holds the canary's lease: nothing is updated.
    let w = World::new();
    let kazeh = w.machine_id("estherbuddy-kazeh");
    w.fly
        .api
        .hold_lease("mybuddytalk-estherbuddy-kazeh", &kazeh);
    let o = w.upgrade(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("someone else holds its lease"), "{out}");
    assert!(w.updates().is_empty());
}

#[test]
fn dry_run_prints_the_plan_and_calls_nothing() {
    let w = World::new();
    let before = w.fly.api.calls().len();
    let o = w.upgrade(&["--dry-run"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("[1/4] EstherBuddy-Kazeh (canary): back it up on its Machine, lease"),
        "{out}"
    );
    assert!(out.contains("[4/4] RoelBuddy-Galahad"), "{out}");
    assert_eq!(w.fly.api.calls().len(), before);
    // A Buddy-role caster is refused before anything.
    let o =
        w.ns.command(supervisor().to_str().unwrap())
            .args(["upgrade", "--image", NEW, "--as", "RoelBuddy-Galahad"])
            .args(["--swarm", w.f.swarm.to_str().unwrap()])
            .env("FLY_API_HOSTNAME", w.fly.base_url())
            .env("FLY_API_TOKEN", FLY_TOKEN)
            .output()
            .unwrap();
    assert!(
        text(&o).contains("only a Magician may cast UpgradeBuddy"),
        "{}",
        text(&o)
    );
    assert_eq!(w.fly.api.calls().len(), before);
}

/// A Buddy's agent writes the registry (issue 21): a key that walks up the
/// API's paths, a Machine id with a query, and a made-up Buddy-role entry
/// that sorts first and names another Buddy's Machine. None of it reaches
/// an API path; the made-up entry never becomes the canary.
#[test]
fn registry_entries_a_gateway_wrote_never_reach_an_api_path() {
    let w = World::new();
    w.fly.api.add_app("victim-app");
    let path = w.f.swarm.join("mybuddybook/registry.json");
    let mut reg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let kazeh_machine = reg["buddies"]["estherbuddy-kazeh"]["machine"].clone();
    let mut walker = reg["buddies"]["roelbuddy-galahad"].clone();
    walker["machine"] = json!("m000001");
    reg["buddies"]["a/../../apps/victim-app"] = walker;
    reg["buddies"]["roelbuddy-galahad"]["machine"] = json!("x?force=true&");
    reg["buddies"]["aaabuddy-evil"] = json!({
        "id": "AaaBuddy-Evil", "human": "Aaa", "name": "Evil", "role": "buddy",
        "channels": {"telegram": true}, "status": "active", "machine": kazeh_machine,
    });
    fs::write(&path, serde_json::to_string(&reg).unwrap()).unwrap();
    let o = w.upgrade(&[]);
    let out = text(&o);
    for c in w.fly.api.calls() {
        assert!(
            !c.path.contains("..") && !c.path.contains("victim") && !c.path.contains("force=true&"),
            "{} reached the API:\n{out}",
            c.path
        );
    }
    assert!(
        out.contains("\"a/../../apps/victim-app\": not a valid registry entry"),
        "{out}"
    );
    assert!(
        out.contains("\"roelbuddy-galahad\": not a valid registry entry"),
        "{out}"
    );
    assert!(
        out.contains("AaaBuddy-Evil: no Machine") && out.contains("skipped"),
        "{out}"
    );
    // The canary is the first real Buddy-role Buddy; the rest follow.
    assert!(out.contains("[1/3] EstherBuddy-Kazeh (canary)"), "{out}");
    assert_eq!(
        w.updates(),
        [
            "mybuddytalk-estherbuddy-kazeh",
            "mybuddytalk-estherbuddy-morgan",
            "mybuddytalk-roelbuddy-emrys"
        ],
        "{out}"
    );
}
