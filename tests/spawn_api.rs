//! SpawnBuddy cast as on a Magician's Machine: no checkout, no `fly` CLI.
//! The new Buddy is recorded in the SpellBook (`spellbook/buddies/<id>/`,
//! made from the template on the share) and deployed over the Fly Machines
//! API, here the stand-in, in a loopback-only network namespace with the
//! supervisor. Each fault rolls back exactly what the cast made.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use base64::Engine;
use mybuddy_standins::FlyStandin;
use support::*;

const TOKEN: &str = "987654321:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawX";
const FLY_TOKEN: &str = "fm2_stand-in-org-token";
const IMAGE: &str = "registry.fly.io/mybuddytalk-base@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const APP: &str = "mybuddytalk-estherbuddy-lyra";

struct World {
    f: Fixture,
    ns: NetNs,
    fly: FlyStandin,
}

impl World {
    fn new() -> World {
        let f = Fixture::new();
        // The share as the swarm step leaves it: the template on MyBuddyBook,
        // the caster in the registry.
        copy_tree(
            &repo().join("buddies/_template"),
            &f.swarm.join("mybuddybook/templates/_template"),
        );
        fs::create_dir_all(f.swarm.join("mybuddybook/announcements")).unwrap();
        fs::create_dir_all(f.swarm.join("spellbook")).unwrap();
        let o = registry_register(&f.swarm, &f.buddy("roelbuddy-emrys"), &[]);
        assert!(o.status.success());
        let ns = NetNs::new();
        let fly = fly_api(&ns, Some(FLY_TOKEN));
        World { f, ns, fly }
    }

    fn spell(&self) -> PathBuf {
        let p = self.f.path("lyra.yaml");
        fs::write(
            &p,
            format!("spell: spawn_buddy\nparameters:\n  human: Esther\n  name: Lyra\n  role: buddy\n  channels:\n    telegram: true\n    telegram_token: \"{TOKEN}\"\n  personality:\n    soul: \"Lyra is gentle and curious.\"\n"),
        )
        .unwrap();
        p
    }

    /// `supervisor spawn` inside the namespace, as root on a Magician's
    /// Machine: its environment holds the org token, the shared keys and
    /// the share's settings (the SpellBook's too: it is a Magician's).
    fn cast(&self, extra: &[&str]) -> Output {
        self.ns
            .command(supervisor().to_str().unwrap())
            .arg("spawn")
            .arg(self.spell())
            .args(["--swarm", self.f.swarm.to_str().unwrap()])
            .args(["--as", "RoelBuddy-Emrys", "--deploy", "--image", IMAGE])
            .args(["--fly-toml", repo().join("fly.toml").to_str().unwrap()])
            .args(["--checks-timeout", "3"])
            // The Magician's own config template (on a Machine: the one
            // it carries, root's), as its supervisor passes it.
            .args(
                (!extra.contains(&"--template"))
                    .then(|| ["--template".into(), own_template()])
                    .into_iter()
                    .flatten(),
            )
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("FLY_API_HOSTNAME", self.fly.base_url())
            .env("FLY_API_TOKEN", FLY_TOKEN)
            .env("GEMINI_API_KEY", "shared-gemini-key")
            .env("BRAVE_API_KEY", "shared-brave-key")
            .env(
                "MYBUDDY_BOOK_META_URL",
                "rediss://default@book.example:6379/0",
            )
            .env("MYBUDDY_BOOK_META_PASSWORD", "book-password")
            .env(
                "MYBUDDY_SPELLBOOK_META_URL",
                "rediss://default@spell.example:6379/0",
            )
            .env("MYBUDDY_SPELLBOOK_META_PASSWORD", "spellbook-password")
            .output()
            .unwrap()
    }

    fn record(&self) -> PathBuf {
        self.f.swarm.join("spellbook/buddies/estherbuddy-lyra")
    }

    fn registry(&self) -> serde_json::Value {
        serde_json::from_str(
            &fs::read_to_string(self.f.swarm.join("mybuddybook/registry.json")).unwrap(),
        )
        .unwrap()
    }

    fn lines(&self) -> Vec<String> {
        self.fly.api.calls().iter().map(|c| c.line()).collect()
    }
}

/// The Magician's own config template in these tests: the repository's.
fn own_template() -> std::ffi::OsString {
    repo().join("buddies/_template/config.json").into()
}

/// A config template asking for the org token, a share password and
/// another Buddy's secret.
fn ask_for_what_is_not_its_own(v: &mut serde_json::Value) {
    v["env"]["vars"]["X"] = serde_json::json!("${FLY_API_TOKEN}");
    v["env"]["vars"]["Y"] = serde_json::json!("${MYBUDDY_BOOK_META_PASSWORD}");
    v["env"]["vars"]["Z"] = serde_json::json!("${ROELBUDDY_EMRYS_TELEGRAM_TOKEN}");
}

/// A Machine config's files: (guest path, content).
fn files_of(config: &serde_json::Value) -> Vec<(String, String)> {
    config["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(f["raw_value"].as_str().unwrap())
                .unwrap();
            (
                f["guest_path"].as_str().unwrap().to_string(),
                String::from_utf8_lossy(&raw).into_owned(),
            )
        })
        .collect()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn a_magician_spawns_a_buddy_over_the_machines_api() {
    let w = World::new();
    let o = w.cast(&[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(
        w.lines(),
        first_deploy_calls(APP, &w.fly.api.app(APP).unwrap().machines[0].id)
    );
    let app = w.fly.api.app(APP).unwrap();
    assert_eq!(app.ips, ["private_v6"]);
    // Its secrets: its own, the shared keys, MyBuddyBook's share settings;
    // nothing of the SpellBook's (a Buddy-role app).
    let names: Vec<&str> = app.secrets.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "BRAVE_API_KEY",
            "ESTHERBUDDY_LYRA_TELEGRAM_TOKEN",
            "GEMINI_API_KEY",
            "MYBUDDY_BOOK_META_PASSWORD",
            "MYBUDDY_BOOK_META_URL"
        ]
    );
    assert_eq!(app.secrets["ESTHERBUDDY_LYRA_TELEGRAM_TOKEN"], TOKEN);
    // One Machine: the pinned base image, its volume, its files, the facts
    // of fly.toml, and the secrets' version.
    assert_eq!(app.machines.len(), 1);
    let m = &app.machines[0];
    assert_eq!(m.config["image"], IMAGE);
    assert_eq!(m.config["mounts"][0]["volume"], app.volumes[0].id);
    assert_eq!(m.config["guest"]["memory_mb"], 2048);
    assert_eq!(m.config["restart"]["policy"], "always");
    assert_eq!(m.min_secrets_version, Some(app.secrets_version));
    assert_eq!(m.config["metadata"]["mybuddy_buddy"], "estherbuddy-lyra");
    let files: Vec<(String, String)> = m.config["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(f["raw_value"].as_str().unwrap())
                .unwrap();
            (
                f["guest_path"].as_str().unwrap().to_string(),
                String::from_utf8(raw).unwrap(),
            )
        })
        .collect();
    let soul = files
        .iter()
        .find(|(p, _)| p == "/opt/mybuddy/buddy/workspace/SOUL.md")
        .unwrap();
    assert!(soul.1.contains("Lyra is gentle and curious."));
    assert!(
        files
            .iter()
            .any(|(p, c)| p == "/opt/mybuddy/buddy/buddy.json" && c.contains("\"Lyra\""))
    );
    // It carries the config template it was checked with (the Magician's
    // own), which its boot renders with instead of the image's.
    let template = fs::read_to_string(repo().join("buddies/_template/config.json")).unwrap();
    assert!(
        files
            .iter()
            .any(|(p, c)| p == "/opt/mybuddy/_machine/template.json" && *c == template),
        "{:?}",
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    // The bot token went in the secrets call and nowhere else: no file, no
    // other call, no record, registry entry, announcement or output.
    let with_token = calls_carrying(&w.fly.api, TOKEN);
    assert_eq!(with_token, [format!("POST /v1/apps/{APP}/secrets")]);
    assert!(!files.iter().any(|(_, c)| c.contains(TOKEN)));
    assert!(!out.contains(TOKEN) && !out.contains(FLY_TOKEN), "{out}");
    for entry in walk_files(&w.f.swarm) {
        let content = fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&content).contains(TOKEN),
            "{} holds the bot token",
            entry.display()
        );
    }
    // The swarm knows what it made: the SpellBook's record (no Dockerfile:
    // the base image plus these files is the Buddy), active in the registry,
    // announced.
    assert!(w.record().join("buddy.json").is_file());
    assert!(w.record().join("workspace/SOUL.md").is_file());
    assert!(!w.record().join("Dockerfile").exists());
    assert!(!w.record().join(".spell-pending").exists());
    assert_eq!(
        w.registry()["buddies"]["estherbuddy-lyra"]["status"],
        "active"
    );
    assert!(out.contains("[5/5] resonate"), "{out}");

    // The operator brings what the swarm made into git.
    let checkout = w.f.path("checkout");
    copy_tree(&repo().join("buddies"), &checkout.join("buddies"));
    for f in ["Dockerfile", "fly.toml"] {
        fs::copy(repo().join(f), checkout.join(f)).unwrap();
    }
    let adopt = |w: &World| {
        Command::new(supervisor())
            .args(["adopt", "--repo", checkout.to_str().unwrap()])
            .args(["--swarm", w.f.swarm.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = adopt(&w);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("adopted buddies/estherbuddy-lyra/"),
        "{}",
        text(&o)
    );
    let o = Command::new(supervisor())
        .args(["check-config", checkout.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(text(&o).contains("5 Buddies, 0 problems"), "{}", text(&o));
    // No Dockerfile comes with it: a local image is built from the Machine
    // definition (scripts/build-buddy-image).
    assert!(
        !checkout
            .join("buddies/estherbuddy-lyra/Dockerfile")
            .exists()
    );
    assert!(text(&adopt(&w)).contains("nothing to adopt"));

    // Deployed again from the checkout with scripts/deploy: the spell's
    // Machine gets exactly the config it had (one Machine definition), its
    // base image pinned from the registry's tag, its secrets kept.
    copy_tree(&repo().join("scripts"), &checkout.join("scripts"));
    {
        use std::os::unix::fs::PermissionsExt;
        for e in fs::read_dir(checkout.join("scripts")).unwrap().flatten() {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    w.fly
        .api
        .add_image("mybuddytalk-base:latest", IMAGE.split_once('@').unwrap().1);
    let cli = FakeFly::new(&w.f.path("cli"));
    let o =
        w.ns.command(checkout.join("scripts/deploy").to_str().unwrap())
            .arg("estherbuddy-lyra")
            .env_clear()
            .env("PATH", cli.path_env())
            .env("HOME", "/root")
            .env("SUPERVISOR", supervisor())
            .env("FLY_API_HOSTNAME", w.fly.base_url())
            .env("MYBUDDY_REGISTRY_URL", w.fly.base_url())
            .env("FLY_API_TOKEN", FLY_TOKEN)
            .env("MYBUDDY_CHECKS_TIMEOUT", "3")
            .output()
            .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let m = &w.fly.api.app(APP).unwrap().machines[0];
    assert_eq!(
        m.history.len(),
        2,
        "the deploy replaced the spell's Machine"
    );
    let without_tag = |c: &serde_json::Value| {
        let mut c = c.clone();
        c["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("mybuddy_cast");
        c
    };
    assert_eq!(without_tag(&m.history[0]), without_tag(&m.history[1]));
}

#[test]
fn each_fault_rolls_back_what_the_cast_made_and_casting_again_works() {
    // A Machine create that fails three times: the volume, the app (with
    // its secrets and address) and the record are taken back, in reverse.
    let w = World::new();
    w.fly.api.fail("POST", "/machines", 500, 3);
    let o = w.cast(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("step deploy failed"), "{out}");
    let undone: Vec<&str> = out.lines().filter(|l| l.contains("undone: ")).collect();
    assert!(
        undone[0].contains("deleted the volume")
            && undone[1].contains(&format!("deleted the Fly app {APP}"))
            && undone[2].contains("removed"),
        "{out}"
    );
    assert!(
        w.fly.api.app_names().is_empty(),
        "{:?}",
        w.fly.api.app_names()
    );
    assert!(!w.record().exists());
    assert!(w.registry()["buddies"].get("estherbuddy-lyra").is_none());
    // Cast again: it works.
    let o = w.cast(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(w.fly.api.app(APP).unwrap().machines.len(), 1);

    // The ambiguous 408 on create: the Machine exists, found by the cast's
    // tag; no second Machine.
    let w = World::new();
    w.fly.api.ambiguous_create(1);
    let o = w.cast(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("but it exists"), "{}", text(&o));
    assert_eq!(w.fly.api.app(APP).unwrap().machines.len(), 1);

    // Checks that never pass: the Machine, volume and app are taken back.
    let w = World::new();
    w.fly.api.checks_never_pass("sha256:1111");
    let o = w.cast(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("checks did not pass within 3s"), "{out}");
    assert!(out.contains("healthz: critical"), "{out}");
    assert!(out.contains("destroyed the Machine"), "{out}");
    assert!(w.fly.api.app_names().is_empty());

    // A rate limit (429) is waited out.
    let w = World::new();
    w.fly.api.fail("POST", "/secrets", 429, 2);
    let o = w.cast(&[]);
    assert!(o.status.success(), "{}", text(&o));

    // An app that existed before is never deleted: a failure takes back
    // only the secrets it lacked.
    let w = World::new();
    w.fly.api.add_app(APP);
    w.fly.api.fail("POST", "/machines", 500, 3);
    let o = w.cast(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let app = w.fly.api.app(APP).expect("the app that existed is kept");
    assert!(app.secrets.is_empty(), "{:?}", app.secrets.keys());
    assert!(app.volumes.is_empty() && app.machines.is_empty());
}

#[test]
fn missing_settings_and_a_taken_name_change_nothing() {
    let w = World::new();
    // Without the shared keys in the caster's environment: refused before
    // any Fly call that changes anything, naming each one.
    let o =
        w.ns.command(supervisor().to_str().unwrap())
            .arg("spawn")
            .arg(w.spell())
            .args(["--swarm", w.f.swarm.to_str().unwrap()])
            .args(["--as", "RoelBuddy-Emrys", "--deploy", "--image", IMAGE])
            .args(["--fly-toml", repo().join("fly.toml").to_str().unwrap()])
            .arg("--template")
            .arg(own_template())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("FLY_API_HOSTNAME", w.fly.base_url())
            .env("FLY_API_TOKEN", FLY_TOKEN)
            .output()
            .unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for name in [
        "GEMINI_API_KEY",
        "BRAVE_API_KEY",
        "MYBUDDY_BOOK_META_URL",
        "MYBUDDY_BOOK_META_PASSWORD",
    ] {
        assert!(out.contains(name), "{name} not named:\n{out}");
    }
    assert!(w.fly.api.calls().is_empty(), "{:?}", w.lines());
    assert!(!w.record().exists());
    // No token here: the spell goes to the Magician's supervisor, and
    // without one listening that is the error.
    let spawn = |token: Option<&str>| {
        let mut c = Command::new(supervisor());
        c.arg("spawn")
            .arg(w.spell())
            .args(["--swarm", w.f.swarm.to_str().unwrap()])
            .args([
                "--as",
                "RoelBuddy-Emrys",
                "--deploy",
                "--image",
                "base:latest",
            ])
            .args(["--fly-toml", repo().join("fly.toml").to_str().unwrap()])
            .arg("--template")
            .arg(own_template())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("MYBUDDY_SPELL_SOCKET", w.f.path("no-such.sock"));
        if let Some(t) = token {
            c.env("FLY_API_TOKEN", t);
        }
        text(&c.output().unwrap())
    };
    let out = spawn(None);
    assert!(
        out.contains("cannot reach the spell socket") && out.contains("FLY_API_TOKEN"),
        "{out}"
    );
    // With a token, an image not pinned by digest is refused.
    let out = spawn(Some(FLY_TOKEN));
    assert!(out.contains("pinned by digest"), "{out}");
    // An app name another organisation holds.
    w.fly.api.add_foreign_app(APP);
    let o = w.cast(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("belongs to another organisation"), "{out}");
    assert!(!w.record().exists());
}

/// A Buddy's agent edits the share's template (issue 21): the org token, a
/// share password and another Buddy's secret asked for, a plugin loaded
/// from the share. None of it reaches the new Buddy: its config template is
/// the Magician's own, the share's config.json is never used.
#[test]
fn a_share_template_asking_for_the_org_token_never_reaches_the_new_buddy() {
    let w = World::new();
    let tpl =
        w.f.swarm
            .join("mybuddybook/templates/_template/config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&tpl).unwrap()).unwrap();
    ask_for_what_is_not_its_own(&mut v);
    v["plugins"]["load"]["paths"] = serde_json::json!(["/mnt/swarm/mybuddybook/wisdom/evil"]);
    fs::write(&tpl, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let o = w.cast(&[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let app = w.fly.api.app(APP).unwrap();
    // (The share's settings for its role it gets as any Buddy does.)
    for name in ["FLY_API_TOKEN", "ROELBUDDY_EMRYS_TELEGRAM_TOKEN"] {
        assert!(!app.secrets.contains_key(name), "{name} given to the app");
    }
    let config = app.machines[0].config.to_string();
    let files = files_of(&app.machines[0].config);
    for planted in [
        "FLY_API_TOKEN",
        "META_PASSWORD",
        "ROELBUDDY_EMRYS",
        "wisdom/evil",
    ] {
        let in_files = files.iter().any(|(_, c)| c.contains(planted));
        assert!(
            !in_files && !config.contains(planted),
            "{planted} reached the Machine"
        );
    }
    assert!(
        !out.contains(FLY_TOKEN) && !out.contains("book-password"),
        "{out}"
    );
}

/// The config template (the Magician's own) asking for the org token, a
/// share password or another Buddy's secret refuses the cast before any
/// call, every name said: what the caster's environment may give a new
/// Buddy does not rest on the template alone.
#[test]
fn a_template_asking_for_the_org_token_refuses_the_cast_before_any_call() {
    let w = World::new();
    let tpl = w.f.path("own-template.json");
    let mut v: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(repo().join("buddies/_template/config.json")).unwrap(),
    )
    .unwrap();
    ask_for_what_is_not_its_own(&mut v);
    fs::write(&tpl, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let o = w.cast(&["--template", tpl.to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for name in [
        "FLY_API_TOKEN",
        "MYBUDDY_BOOK_META_PASSWORD",
        "ROELBUDDY_EMRYS_TELEGRAM_TOKEN",
    ] {
        assert!(out.contains(name), "{name} not named:\n{out}");
    }
    assert!(out.contains("refused before anything was made"), "{out}");
    assert!(w.fly.api.calls().is_empty(), "{:?}", w.fly.api.calls());
    assert!(
        !w.f.swarm
            .join("spellbook/buddies/estherbuddy-lyra")
            .exists()
    );
    assert!(
        !out.contains(FLY_TOKEN) && !out.contains("book-password"),
        "{out}"
    );
}

/// The template a link to a root-only directory, its config a link to a
/// root-only file: the spell (root) reads neither (issue 21).
#[test]
fn a_linked_template_is_never_read_by_the_spell() {
    let w = World::new();
    let secret = w.f.path("root-only");
    fs::create_dir_all(secret.join("workspace")).unwrap();
    fs::write(
        secret.join("config.json"),
        "{\"env\":{\"vars\":{\"K\":\"root-secret\"}}}",
    )
    .unwrap();
    let tpl = w.f.swarm.join("mybuddybook/templates/_template");
    fs::rename(&tpl, w.f.swarm.join("mybuddybook/templates/old")).unwrap();
    std::os::unix::fs::symlink(&secret, &tpl).unwrap();
    let o = w.cast(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("cannot read the swarm's template"), "{out}");
    assert!(w.fly.api.calls().is_empty());
    // And a template whose config.json and a workspace file alone are links:
    // both are left out of the spell's copy, nothing of them reaches the
    // new Buddy (its config template is the Magician's own anyway).
    fs::remove_file(&tpl).unwrap();
    fs::rename(w.f.swarm.join("mybuddybook/templates/old"), &tpl).unwrap();
    fs::write(secret.join("workspace/TOOLS.md"), "root-secret tools\n").unwrap();
    for f in ["config.json", "workspace/TOOLS.md"] {
        fs::remove_file(tpl.join(f)).unwrap();
        std::os::unix::fs::symlink(secret.join(f), tpl.join(f)).unwrap();
    }
    let o = w.cast(&[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("left out of the template"), "{out}");
    assert!(!out.contains("root-secret"), "{out}");
    assert!(calls_carrying(&w.fly.api, "root-secret").is_empty());
    let app = w.fly.api.app(APP).unwrap();
    assert!(
        !files_of(&app.machines[0].config)
            .iter()
            .any(|(_, c)| c.contains("root-secret"))
    );
}
