//! `supervisor check-config`: the repository passes, and each rule fires on a
//! broken copy, all problems at once.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::*;

struct Repo {
    f: Fixture,
}

impl Repo {
    fn new() -> Repo {
        let f = Fixture::new();
        for file in ["Dockerfile", "fly.toml"] {
            fs::copy(repo().join(file), f.path(file)).unwrap();
        }
        Repo { f }
    }
    fn root(&self) -> &Path {
        self.f.tmp.path()
    }
    fn edit_json(&self, rel: &str, change: impl FnOnce(&mut Value)) {
        let p = self.root().join(rel);
        let mut v: Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        change(&mut v);
        fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    fn edit(&self, rel: &str, from: &str, to: &str) {
        let p = self.root().join(rel);
        let t = fs::read_to_string(&p).unwrap();
        assert!(t.contains(from), "{rel} has no {from:?}");
        fs::write(&p, t.replace(from, to)).unwrap();
    }
    fn check(&self) -> (i32, String) {
        let o = Command::new(supervisor())
            .arg("check-config")
            .arg(self.root())
            .output()
            .unwrap();
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    }
    fn expect(&self, needles: &[&str]) -> String {
        let (code, out) = self.check();
        assert_eq!(code, 1, "expected problems:\n{out}");
        for n in needles {
            assert!(out.contains(n), "{n:?} not reported:\n{out}");
        }
        out
    }
}

#[test]
fn the_repository_passes() {
    let o = Command::new(supervisor())
        .arg("check-config")
        .arg(repo())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert_eq!(out.trim(), "check-config: 4 Buddies, 0 problems");
}

#[test]
fn a_buddy_that_does_not_render_or_breaks_policy_is_reported() {
    let r = Repo::new();
    r.edit_json("buddies/roelbuddy-galahad/config.json", |v| {
        v["plugins"] = json!({"entries": {"moltbook": {"enabled": false}}});
        v["channels"]["telegram"]["botToken"] = json!("${roel_token}");
    });
    r.edit_json("buddies/estherbuddy-morgan/buddy.json", |v| {
        v["role"] = json!("wizard")
    });
    r.edit_json("buddies/estherbuddy-kazeh/buddy.json", |v| {
        v["name"] = json!("Kaz")
    });
    let out = r.expect(&[
        "buddies/roelbuddy-galahad/config.json: plugins.entries.moltbook: the moltbook plugin is not part of MyBuddy",
        "buddies/roelbuddy-galahad/config.json: channels.telegram.botToken: \"${roel_token}\" is not a valid variable reference",
        "buddies/estherbuddy-morgan/buddy.json: role: unknown variant `wizard`",
        "the directory is named \"estherbuddy-kazeh\" but the id EstherBuddy-Kaz needs \"estherbuddy-kaz\"",
    ]);
    assert!(
        out.ends_with("problems\n") && out.contains("check-config: 4 Buddies, "),
        "{out}"
    );
}

#[test]
fn two_whatsapp_buddies_for_one_human_name_both() {
    let r = Repo::new();
    r.edit_json("buddies/roelbuddy-galahad/buddy.json", |v| {
        v["channels"]["whatsapp"] = json!(true)
    });
    r.edit_json("buddies/roelbuddy-galahad/config.json", |v| {
        v["plugins"] = json!({"entries": {"whatsapp": {"enabled": true}}});
        v["channels"]["whatsapp"] =
            json!({"dmPolicy": "allowlist", "allowFrom": ["${ROELBUDDY_GALAHAD_HUMAN_PHONE}"]});
    });
    r.expect(&[
        "buddies/roelbuddy-emrys/buddy.json: channels.whatsapp: Roel has 2 WhatsApp Buddies (RoelBuddy-Emrys, RoelBuddy-Galahad); at most one per Human",
        "buddies/roelbuddy-galahad/buddy.json: channels.whatsapp: Roel has 2 WhatsApp Buddies",
    ]);
}

#[test]
fn plaintext_secrets_are_found_by_key_and_by_shape_unless_allowed() {
    let r = Repo::new();
    r.edit_json("buddies/roelbuddy-galahad/config.json", |v| {
        v["channels"]["telegram"]["botToken"] =
            json!("123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw");
        v["env"]["vars"]["TELEGRAM_ADMIN_ID"] = json!("48213377");
    });
    r.edit_json("buddies/roelbuddy-emrys/config.json", |v| {
        v["channels"]["whatsapp"]["allowFrom"] = json!(["+31 6 12345678"]);
        v["env"]["vars"]["NOTE"] = json!("call me at +31612345678");
    });
    let soul = r.root().join("buddies/estherbuddy-kazeh/workspace/SOUL.md");
    let mut text = fs::read_to_string(&soul).unwrap();
    text.push_str("\nkey: AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY\n");
    fs::write(&soul, text).unwrap();
    let out = r.expect(&[
        "buddies/roelbuddy-galahad/config.json: channels.telegram.botToken: looks like a Telegram bot token",
        "buddies/roelbuddy-galahad/config.json: env.vars.TELEGRAM_ADMIN_ID: a secret-looking key holds a literal value",
        "buddies/roelbuddy-emrys/config.json: channels.whatsapp.allowFrom[0]: looks like a phone number",
        "buddies/roelbuddy-emrys/config.json: env.vars.NOTE: looks like a phone number",
        "buddies/estherbuddy-kazeh/workspace/SOUL.md: line ",
    ]);
    assert!(out.contains("looks like a Google API key"), "{out}");
    assert!(
        !out.contains("AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw") && !out.contains("AIzaSyD-9tSrke72"),
        "the report repeats the secret:\n{out}"
    );
    // A deliberate exception, with its reason, silences exactly that place.
    fs::write(
        r.root().join("buddies/.secrets-allow"),
        "buddies/roelbuddy-emrys/config.json:env.vars.NOTE  # the public support line, not a secret\n",
    )
    .unwrap();
    let (_, out) = r.check();
    assert!(!out.contains("env.vars.NOTE"), "{out}");
    assert!(
        out.contains("allowFrom[0]: looks like a phone number"),
        "{out}"
    );
}

#[test]
fn secrets_shared_between_buddies_or_without_the_buddys_prefix_are_reported() {
    let r = Repo::new();
    r.edit_json("buddies/roelbuddy-galahad/config.json", |v| {
        v["channels"]["telegram"]["botToken"] = json!("${ROELBUDDY_EMRYS_TELEGRAM_TOKEN}");
        v["env"]["vars"]["TELEGRAM_ADMIN_ID"] = json!("${ROEL_TELEGRAM_ID}");
    });
    r.expect(&[
        "secret ${ROELBUDDY_EMRYS_TELEGRAM_TOKEN} is not specific to this Buddy: name it ROELBUDDY_GALAHAD_...",
        "secret ${ROEL_TELEGRAM_ID} is not specific to this Buddy",
        "secret ${ROELBUDDY_EMRYS_TELEGRAM_TOKEN} is used by roelbuddy-emrys and roelbuddy-galahad",
    ]);
}

#[test]
fn dockerfiles_must_build_on_the_base_and_no_buddy_keeps_its_own() {
    let r = Repo::new();
    // A per-Buddy Dockerfile left from before: its image would not be the
    // Buddy's Machine.
    fs::write(
        r.root().join("buddies/estherbuddy-kazeh/Dockerfile"),
        "FROM registry.fly.io/mybuddytalk-base:latest\nCOPY buddies/estherbuddy-kazeh/credentials /data/credentials\n",
    )
    .unwrap();
    fs::create_dir_all(r.root().join("images/buddy")).unwrap();
    fs::write(
        r.root().join("images/buddy/Dockerfile"),
        "ARG BASE_IMAGE=debian:bookworm\nFROM ${BASE_IMAGE}\nCOPY . /\nENTRYPOINT [\"node\"]\n",
    )
    .unwrap();
    r.edit("Dockerfile", "STOPSIGNAL SIGTERM", "STOPSIGNAL SIGQUIT");
    r.expect(&[
        "buddies/estherbuddy-kazeh/Dockerfile: no longer used",
        "images/buddy/Dockerfile: line 2: FROM ${BASE_IMAGE} is not the base image",
        "images/buddy/Dockerfile: line 4: a Buddy image keeps the base image's",
        "STOPSIGNAL SIGQUIT must match fly.toml's kill_signal SIGTERM",
    ]);
}

#[test]
fn fly_toml_must_parse_mount_the_state_and_outwait_the_supervisor() {
    let r = Repo::new();
    r.edit("fly.toml", "kill_timeout = 30", "kill_timeout = 5");
    r.edit(
        "fly.toml",
        "destination = \"/data\"",
        "destination = \"/state\"",
    );
    r.expect(&[
        "fly.toml: kill_timeout: 5 s must be longer than the supervisor's stop timeout (20 s",
        "fly.toml: mounts.destination: the Buddy's state volume must be mounted at /data",
    ]);
    r.edit("fly.toml", "[mounts]", "[mounts");
    r.expect(&["fly.toml: line ", "invalid TOML"]);
}

#[test]
fn a_fly_deployment_names_its_share_and_keeps_its_secrets_out_of_fly_toml() {
    let r = Repo::new();
    r.edit(
        "fly.toml",
        "MYBUDDY_SHARE = \"juicefs\"",
        "MYBUDDY_SHARE = \"dir\"\n  MYBUDDY_BOOK_META_PASSWORD = \"hunter2\"\n  FLY_API_TOKEN = \"fm2_x\"",
    );
    let out = r.expect(&[
        "fly.toml: env.MYBUDDY_SHARE: must be \"juicefs\"",
        "fly.toml: env.MYBUDDY_BOOK_META_PASSWORD: the share's settings are per-app secrets",
        "fly.toml: env.FLY_API_TOKEN: the Fly org token is a secret of the Magicians' apps alone",
    ]);
    assert!(!out.contains("hunter2"), "{out}");
}

#[test]
fn json_format_lists_the_same_problems() {
    let r = Repo::new();
    r.edit("fly.toml", "kill_timeout = 30", "kill_timeout = 5");
    let o = Command::new(supervisor())
        .args(["check-config", "--format", "json"])
        .arg(r.root())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["buddies"], json!(4));
    assert_eq!(v["problems"][0]["file"], json!("fly.toml"));
    assert_eq!(v["problems"][0]["location"], json!("kill_timeout"));
}

#[test]
fn a_configuration_that_would_make_a_buddy_public_is_rejected() {
    let r = Repo::new();
    // fly.toml: a public HTTPS service, TLS on a port, the readiness check.
    r.edit(
        "fly.toml",
        "[[services]]",
        "[http_service]\n  internal_port = 18789\n  force_https = true\n\n[[services]]",
    );
    r.edit(
        "fly.toml",
        "handlers = [\"http\"]",
        "handlers = [\"tls\", \"http\"]",
    );
    r.edit("fly.toml", "path = \"/healthz\"", "path = \"/readyz\"");
    r.edit("fly.toml", "policy = \"always\"", "policy = \"on-failure\"");
    // The gateway: a public origin for the Control UI, Tailscale funnel,
    // no brute-force limit, a loopback bind Flycast cannot reach.
    r.edit_json("buddies/roelbuddy-galahad/config.json", |v| {
        v["gateway"] = json!({
            "bind": "loopback",
            "controlUi": {"allowedOrigins": ["https://galahad.example.com"]},
            "tailscale": {"mode": "funnel"},
        });
    });
    r.edit_json("buddies/_template/config.json", |v| {
        v["gateway"]["auth"]
            .as_object_mut()
            .unwrap()
            .remove("rateLimit");
    });
    r.expect(&[
        "fly.toml: http_service: a Buddy has no public HTTP service",
        "fly.toml: services[0].ports[0].handlers: a tls handler terminates TLS on a public address",
        "fly.toml: checks.healthz.path: not /readyz",
        "fly.toml: checks: needs an http check of the gateway's /healthz on port 18789",
        "fly.toml: restart: needs [[restart]] policy = \"always\"",
        "buddies/roelbuddy-galahad/config.json: gateway.bind: must be \"lan\"",
        "buddies/roelbuddy-galahad/config.json: gateway.controlUi.allowedOrigins[0]: only the operator's browser",
        "buddies/roelbuddy-galahad/config.json: gateway.tailscale.mode: must be \"off\"",
        "buddies/_template/config.json: gateway.auth.rateLimit: must be set",
    ]);
}

#[test]
fn the_old_schema_and_workspace_names_are_rejected_with_the_fix() {
    let r = Repo::new();
    r.edit_json("buddies/roelbuddy-emrys/config.json", |v| {
        v["env"]["CLAWDBOT_TELEGRAM_TOKEN"] = json!("${ROELBUDDY_EMRYS_TELEGRAM_TOKEN}");
        v["agents"] =
            json!({"defaults": {"model": {"fallbacks": ["google/gemini-3-pro-preview"]}}});
        v["plugins"]["load"] = json!({"paths": ["${MYBUDDY_STATE_DIR}/plugins/whatsapp"]});
    });
    let ws = r.root().join("buddies/roelbuddy-emrys/workspace");
    fs::rename(ws.join("SOUL.md"), ws.join("SOUL.MD")).unwrap();
    fs::write(ws.join("notes.txt"), "a note\n").unwrap();
    r.expect(&[
        "buddies/roelbuddy-emrys/config.json: env.CLAWDBOT_TELEGRAM_TOKEN: variables go under env.vars: move this to env.vars.CLAWDBOT_TELEGRAM_TOKEN",
        "agents.defaults.model.fallbacks[0]: google/gemini-3-pro-preview was shut down and the gateway refuses it; use google/gemini-3.1-pro-preview",
        "plugins.load.paths[0]: plugins load from the image only",
        "buddies/roelbuddy-emrys/workspace/SOUL.MD: the gateway reads SOUL.md, not SOUL.MD (names are case-sensitive): rename it to SOUL.md",
        "buddies/roelbuddy-emrys/workspace/notes.txt: the gateway never reads notes.txt",
    ]);
}

#[test]
fn no_deployment_sets_the_test_only_flags() {
    let r = Repo::new();
    r.edit(
        "fly.toml",
        "MYBUDDY_STOP_TIMEOUT = \"20\"",
        "MYBUDDY_STOP_TIMEOUT = \"20\"\n  MYBUDDY_CONFIG_OVERLAY = \"/data/overlay.json\"",
    );
    r.edit(
        "Dockerfile",
        "ENV PATH=",
        "ENV MYBUDDY_GATEWAY_ENV=NODE_EXTRA_CA_CERTS\nENV PATH=",
    );
    let dockerfile = r.root().join("images/buddy/Dockerfile");
    fs::create_dir_all(dockerfile.parent().unwrap()).unwrap();
    let mut t = fs::read_to_string(repo().join("images/buddy/Dockerfile")).unwrap();
    t.push_str("ENV MYBUDDY_CONFIG_OVERLAY=/opt/overlay.json\n");
    fs::write(&dockerfile, t).unwrap();
    r.expect(&[
        "fly.toml: env.MYBUDDY_CONFIG_OVERLAY: a test-only flag",
        "Dockerfile: line ",
        "sets MYBUDDY_GATEWAY_ENV: a test-only flag",
        "images/buddy/Dockerfile: line ",
        "sets MYBUDDY_CONFIG_OVERLAY: a test-only flag",
    ]);
}

#[test]
fn every_buddy_s_machine_is_made_from_fly_toml_and_fits_a_machine_config() {
    let r = Repo::new();
    // A fly.toml without the VM's size: no Machine could be made from it.
    r.edit(
        "fly.toml",
        "[[vm]]\n  size = \"shared-cpu-2x\"\n  memory = \"2gb\"",
        "",
    );
    // A workspace carrying a large file: too much for a Machine config.
    let notes = r.root().join("buddies/roelbuddy-galahad/workspace/memory");
    fs::create_dir_all(&notes).unwrap();
    fs::write(notes.join("dump.md"), "x".repeat(300 * 1024)).unwrap();
    r.expect(&["fly.toml: vm (size and memory, e.g. shared-cpu-2x and 2gb): missing"]);
    // With the VM back, the size is what is left.
    r.edit(
        "fly.toml",
        "[checks]",
        "[[vm]]\n  size = \"shared-cpu-2x\"\n  memory = \"2gb\"\n\n[checks]",
    );
    let out = r.expect(&[
        "buddies/roelbuddy-galahad: its files weigh",
        "keep large or generated files on the volume",
    ]);
    assert!(!out.contains("fly.toml: vm"), "{out}");
}
