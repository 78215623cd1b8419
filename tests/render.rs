//! `supervisor render` and `supervisor secrets`, end to end through the binary.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use support::*;

fn render(buddy: &Path, state: &Path, env: &[(String, String)], extra: &[&str]) -> Output {
    Command::new(supervisor())
        .args(["render", "--buddy"])
        .arg(buddy)
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_json(p: &Path, v: &Value) {
    fs::write(p, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

#[test]
fn every_swarm_member_renders_with_its_secrets() {
    let f = Fixture::new();
    for slug in SWARM_MEMBERS {
        let b = f.buddy(slug);
        let env = marker_env(&b);
        let out_file = f.state.join(slug).join("openclaw.json");
        let o = render(
            &b,
            &f.state.join(slug),
            &env,
            &["--out", out_file.to_str().unwrap()],
        );
        assert!(o.status.success(), "{slug}: {}", text(&o));
        let v: Value = serde_json::from_str(&fs::read_to_string(&out_file).unwrap()).unwrap();
        let prefix = slug.to_uppercase().replace('-', "_");
        assert_eq!(
            v["channels"]["telegram"]["botToken"],
            json!(marker(&format!("{prefix}_TELEGRAM_TOKEN")))
        );
        let wa = slug == "roelbuddy-emrys" || slug == "estherbuddy-kazeh";
        assert_eq!(
            v["plugins"]["entries"]["whatsapp"]["enabled"],
            json!(wa),
            "{slug}"
        );
        assert_eq!(v["channels"]["whatsapp"].is_object(), wa, "{slug}");
        assert_eq!(v["gateway"]["bind"], json!("lan"));
        let state = f.state.join(slug);
        assert_eq!(
            v["agents"]["defaults"]["workspace"],
            json!(format!("{}/workspace", state.display()))
        );
        let token = fs::read_to_string(state.join("gateway-token")).unwrap();
        assert_eq!(v["gateway"]["auth"]["token"], json!(token.trim()));
    }
}

#[test]
fn merge_is_rfc7396_personal_wins_arrays_replaced_null_deletes() {
    let f = Fixture::new();
    let b = f.buddy("roelbuddy-galahad");
    let mut personal: Value =
        serde_json::from_str(&fs::read_to_string(b.join("config.json")).unwrap()).unwrap();
    personal["agents"] = json!({"defaults": {"model": {"fallbacks": ["google/gemini-2.5-pro", "google/gemini-2.5-flash"]}}});
    personal["plugins"] = json!({"entries": {"brave": null}});
    personal["gateway"] = json!({"port": 19999});
    write_json(&b.join("config.json"), &personal);
    let env = marker_env(&b);
    assert!(
        !env.iter().any(|(k, _)| k == "BRAVE_API_KEY"),
        "a deleted key needs no secret"
    );
    let out_file = f.path("out.json");
    let o = render(&b, &f.state, &env, &["--out", out_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_str(&fs::read_to_string(&out_file).unwrap()).unwrap();
    // Nested objects merge: the template's primary survives beside the new fallbacks.
    assert_eq!(
        v["agents"]["defaults"]["model"]["primary"],
        json!("google/gemini-3-flash-preview")
    );
    assert_eq!(
        v["agents"]["defaults"]["model"]["fallbacks"],
        json!(["google/gemini-2.5-pro", "google/gemini-2.5-flash"])
    );
    assert!(v["plugins"]["entries"].get("brave").is_none());
    assert!(v["plugins"]["entries"].get("telegram").is_some());
    assert!(v["env"]["vars"].get("GEMINI_API_KEY").is_some());
    assert_eq!(v["gateway"]["port"], json!(19999));
    assert_eq!(v["gateway"]["mode"], json!("local"));
}

#[test]
fn every_missing_variable_is_listed_with_file_and_path() {
    let f = Fixture::new();
    let b = f.buddy("roelbuddy-emrys");
    let mut env: Vec<(String, String)> = marker_env(&b)
        .into_iter()
        .filter(|(k, _)| k != "GEMINI_API_KEY" && k != "ROELBUDDY_EMRYS_HUMAN_PHONE")
        .collect();
    // Set but empty counts as missing: never render an empty secret.
    env.retain(|(k, _)| k != "ROELBUDDY_EMRYS_TELEGRAM_TOKEN");
    env.push(("ROELBUDDY_EMRYS_TELEGRAM_TOKEN".into(), String::new()));
    let out_file = f.path("out.json");
    let o = render(&b, &f.state, &env, &["--out", out_file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    let template = f.buddies.join("_template/config.json");
    let personal = b.join("config.json");
    for (file, path, var) in [
        (&template, "env.vars.GEMINI_API_KEY", "GEMINI_API_KEY"),
        (
            &personal,
            "channels.whatsapp.allowFrom[0]",
            "ROELBUDDY_EMRYS_HUMAN_PHONE",
        ),
        (
            &personal,
            "channels.telegram.botToken",
            "ROELBUDDY_EMRYS_TELEGRAM_TOKEN",
        ),
    ] {
        let line = format!("{}: {path}: ${{{var}}}", file.display());
        assert!(t.contains(&line), "missing line {line:?} in:\n{t}");
    }
    assert!(t.contains("(3 problems)"), "{t}");
    assert!(
        !out_file.exists(),
        "nothing is written when the render fails"
    );
    assert!(
        !f.state.join("gateway-token").exists(),
        "a failed render leaves no token"
    );
}

#[test]
fn secrets_with_quotes_backslashes_newlines_and_references_stay_literal() {
    let f = Fixture::new();
    let b = f.buddy("roelbuddy-galahad");
    let nasty = "a\"b\\c\nd ${OTHER} $${X} }{ é";
    let mut env = marker_env(&b);
    env.retain(|(k, _)| k != "GEMINI_API_KEY");
    env.push(("GEMINI_API_KEY".into(), nasty.into()));
    let out_file = f.path("out.json");
    let o = render(&b, &f.state, &env, &["--out", out_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_str(&fs::read_to_string(&out_file).unwrap()).unwrap();
    // Written escaped for the gateway's own ${VAR} expansion; the real gateway
    // reading it back is proven in tests/gateway_config.rs.
    assert_eq!(
        v["env"]["vars"]["GEMINI_API_KEY"],
        json!("a\"b\\c\nd $${OTHER} $$${X} }{ é")
    );
}

#[test]
fn token_is_256_bits_urlsafe_0600_persisted_overridable_and_rotatable() {
    let f = Fixture::new();
    let b = f.buddy("estherbuddy-morgan");
    let env = marker_env(&b);
    let out = f.path("out.json");
    let args = ["--out", out.to_str().unwrap()];
    let read_token = || {
        let v: Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
        v["gateway"]["auth"]["token"].as_str().unwrap().to_string()
    };
    assert!(render(&b, &f.state, &env, &args).status.success());
    let t1 = read_token();
    assert_eq!(t1.len(), 43, "32 bytes, URL-safe base64 without padding");
    assert!(
        t1.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    );
    let file = f.state.join("gateway-token");
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(render(&b, &f.state, &env, &args).status.success());
    assert_eq!(read_token(), t1, "restarts keep the token");
    let mut rot = args.to_vec();
    rot.push("--rotate-token");
    assert!(render(&b, &f.state, &env, &rot).status.success());
    let t2 = read_token();
    assert_ne!(t2, t1);
    assert_eq!(fs::read_to_string(&file).unwrap().trim(), t2);
    let mut with_secret = env.clone();
    with_secret.push((
        "ESTHERBUDDY_MORGAN_GATEWAY_TOKEN".into(),
        "explicit-token-value".into(),
    ));
    assert!(render(&b, &f.state, &with_secret, &args).status.success());
    assert_eq!(read_token(), "explicit-token-value");
    assert_eq!(
        fs::read_to_string(&file).unwrap().trim(),
        t2,
        "the secret does not replace the file"
    );
}

#[test]
fn out_is_0600_and_stdout_is_redacted() {
    let f = Fixture::new();
    let b = f.buddy("roelbuddy-emrys");
    let env = marker_env(&b);
    let out = f.path("deep/dir/openclaw.json");
    let o = render(&b, &f.state, &env, &["--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let leftovers: Vec<_> = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "openclaw.json")
        .collect();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
    let o = render(&b, &f.state, &env, &[]);
    assert!(o.status.success());
    let shown: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["gateway"]["auth"]["token"], json!("***"));
    assert_eq!(shown["channels"]["whatsapp"]["allowFrom"], json!(["***"]));
    assert_eq!(shown["env"]["vars"]["GEMINI_API_KEY"], json!("***"));
    assert_eq!(
        shown["gateway"]["mode"],
        json!("local"),
        "non-secrets are shown"
    );
}

#[test]
fn secrets_command_lists_exactly_the_buddys_variables() {
    let f = Fixture::new();
    assert_eq!(
        secret_names(&f.buddy("estherbuddy-kazeh")),
        [
            "BRAVE_API_KEY",
            "ESTHERBUDDY_KAZEH_HUMAN_PHONE",
            "ESTHERBUDDY_KAZEH_HUMAN_TELEGRAM_ID",
            "ESTHERBUDDY_KAZEH_TELEGRAM_TOKEN",
            "GEMINI_API_KEY"
        ]
    );
}

#[test]
fn malformed_json_names_file_line_column_and_expectation() {
    let f = Fixture::new();
    let b = f.buddy("roelbuddy-galahad");
    fs::write(
        b.join("config.json"),
        "{\n  \"env\": {\n    \"A\": \"b\"\n    \"C\": 1\n  }\n}\n",
    )
    .unwrap();
    let o = render(&b, &f.state, &marker_env(&f.buddy("roelbuddy-emrys")), &[]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    let want = format!(
        "{}: line 4 column 5: invalid JSON: expected `,` or `}}`",
        b.join("config.json").display()
    );
    assert!(t.contains(&want), "{t}");
}

#[test]
fn policy_violations_are_all_reported_with_their_paths() {
    let f = Fixture::new();
    let b = f.buddy("roelbuddy-galahad");
    let env = marker_env(&b);
    let mut personal: Value =
        serde_json::from_str(&fs::read_to_string(b.join("config.json")).unwrap()).unwrap();
    personal["agents"] = json!({"defaults": {
        "model": {"primary": "openai/gpt-5", "fallbacks": []},
        "workspace": "/root/clawd"
    }});
    personal["plugins"] = json!({"entries": {
        "moltbook": {"enabled": true}, "beekeeper": {"enabled": true},
        "swarm-manager": {"enabled": false}, "whatsapp": {"enabled": true}
    }, "allow": ["beekeeper"]});
    personal["channels"]["whatsapp"] = json!({"dmPolicy": "allowlist", "allowFrom": []});
    personal["logging"] = json!({"file": "/tmp/openclaw.log"});
    personal["update"] = json!({"checkOnStart": true});
    personal["gateway"] = json!({"mode": "remote", "auth": {"token": null}});
    write_json(&b.join("config.json"), &personal);
    let o = render(&b, &f.state, &env, &[]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    for path in [
        "agents.defaults.model.primary",
        "agents.defaults.model.fallbacks",
        "plugins.entries.moltbook",
        "plugins.entries.beekeeper",
        "plugins.entries.swarm-manager",
        "plugins.allow[0]",
        "plugins.allow",
        "plugins.entries.whatsapp.enabled",
        "channels.whatsapp",
        "agents.defaults.workspace",
        "logging.file",
        "update.checkOnStart",
        "gateway.mode",
        "gateway.auth.token",
    ] {
        assert!(
            t.contains(&format!("{}: {path}: ", b.join("config.json").display())),
            "no problem at {path}:\n{t}"
        );
    }
    for channel in ["telegram", "whatsapp"] {
        assert!(
            t.contains(&format!(
                "plugins.allow: {channel} is enabled but not allowed"
            )),
            "{t}"
        );
    }
    assert!(t.contains("(15 problems)"), "{t}");
}

#[test]
fn whatsapp_allowlist_needs_a_non_empty_allow_from() {
    let f = Fixture::new();
    let b = f.buddy("estherbuddy-kazeh");
    let env = marker_env(&b);
    let mut personal: Value =
        serde_json::from_str(&fs::read_to_string(b.join("config.json")).unwrap()).unwrap();
    personal["channels"]["whatsapp"]["allowFrom"] = json!([]);
    write_json(&b.join("config.json"), &personal);
    let o = render(&b, &f.state, &env, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains(
            "channels.whatsapp.allowFrom: dmPolicy \"allowlist\" needs a non-empty allowFrom"
        ),
        "{}",
        text(&o)
    );
    // And a WhatsApp Buddy must enable the plugin explicitly.
    personal["channels"]["whatsapp"]["allowFrom"] = json!(["${ESTHERBUDDY_KAZEH_HUMAN_PHONE}"]);
    personal["plugins"] = Value::Null;
    write_json(&b.join("config.json"), &personal);
    let o = render(&b, &f.state, &env, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("plugins.entries.whatsapp.enabled: must be true"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_identity_reports_every_field_and_the_directory_name() {
    let f = Fixture::new();
    let b = f.buddy("roelbuddy-galahad");
    fs::write(b.join("buddy.json"), r#"{"human": "roel", "name": "../x", "role": "wizard", "channels": {"telegram": true}, "colour": 1}"#).unwrap();
    let o = render(&b, &f.state, &[], &[]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    for needle in [
        "colour: unknown field",
        "role: unknown variant `wizard`",
        "status: missing",
    ] {
        assert!(t.contains(needle), "{needle:?} not in:\n{t}");
    }
    fs::write(b.join("buddy.json"), r#"{"human": "roel", "name": "../x", "role": "buddy", "channels": {"telegram": true}, "status": "active"}"#).unwrap();
    let t = text(&render(&b, &f.state, &[], &[]));
    assert!(
        t.contains("human: \"roel\" must be one capitalised word"),
        "{t}"
    );
    assert!(
        t.contains("name: \"../x\" must be one capitalised word"),
        "{t}"
    );
    fs::write(b.join("buddy.json"), r#"{"human": "Roel", "name": "Percival", "role": "buddy", "channels": {"telegram": true}, "status": "active"}"#).unwrap();
    let t = text(&render(&b, &f.state, &[], &[]));
    assert!(t.contains("the directory is named \"roelbuddy-galahad\" but the id RoelBuddy-Percival needs \"roelbuddy-percival\""), "{t}");
}

#[test]
fn malformed_reference_is_an_error_not_a_literal() {
    let f = Fixture::new();
    let b = f.buddy("roelbuddy-galahad");
    let mut personal: Value =
        serde_json::from_str(&fs::read_to_string(b.join("config.json")).unwrap()).unwrap();
    personal["channels"]["telegram"]["botToken"] = json!("${roelbuddy_token}");
    write_json(&b.join("config.json"), &personal);
    let o = render(&b, &f.state, &marker_env(&f.buddy("roelbuddy-emrys")), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains(
            "channels.telegram.botToken: \"${roelbuddy_token}\" is not a valid variable reference"
        ),
        "{}",
        text(&o)
    );
}

#[test]
fn no_secret_value_appears_in_any_output() {
    let f = Fixture::new();
    let b = f.buddy("roelbuddy-emrys");
    let env = marker_env(&b);
    let markers: Vec<String> = env.iter().map(|(_, v)| v.clone()).collect();
    let mut outputs = Vec::new();
    let out = f.path("out.json");
    outputs.push(text(&render(&b, &f.state, &env, &[])));
    outputs.push(text(&render(
        &b,
        &f.state,
        &env,
        &["--out", out.to_str().unwrap()],
    )));
    let mut json_logs = env.clone();
    json_logs.push(("MYBUDDY_LOG_FORMAT".into(), "json".into()));
    json_logs.push(("MYBUDDY_LOG".into(), "trace".into()));
    outputs.push(text(&render(
        &b,
        &f.state,
        &json_logs,
        &["--out", out.to_str().unwrap()],
    )));
    // An error path with every secret set: a policy failure.
    let mut personal: Value =
        serde_json::from_str(&fs::read_to_string(b.join("config.json")).unwrap()).unwrap();
    personal["update"] = json!({"checkOnStart": true});
    write_json(&b.join("config.json"), &personal);
    outputs.push(text(&render(
        &b,
        &f.state,
        &env,
        &["--out", out.to_str().unwrap()],
    )));
    // A missing-variable failure with the others set.
    let partial: Vec<_> = env.iter().skip(1).cloned().collect();
    outputs.push(text(&render(&b, &f.state, &partial, &[])));
    let token = fs::read_to_string(f.state.join("gateway-token")).unwrap();
    for (i, o) in outputs.iter().enumerate() {
        assert!(!o.is_empty() || i == 1, "output {i} is empty");
        for m in markers
            .iter()
            .chain(std::iter::once(&token.trim().to_string()))
        {
            assert!(!o.contains(m.as_str()), "output {i} leaks a secret:\n{o}");
        }
    }
}

/// A Machine is the base image plus its `files`: laid out here as Fly
/// writes them (`machine-config --rootfs`: each at its guest path, under a
/// root of ours), on an "image" whose own template differs (an older
/// base). The Buddy renders with the template its Machine carries, the one
/// check-config saw.
#[test]
fn a_machine_renders_with_the_template_it_carries_not_its_image_s() {
    let f = Fixture::new();
    let slug = "roelbuddy-galahad";
    let checked = f.buddies.join("_template/config.json");
    let mut v: Value = serde_json::from_str(&fs::read_to_string(&checked).unwrap()).unwrap();
    v["agents"]["defaults"]["model"]["primary"] = json!("google/gemini-checked-template");
    write_json(&checked, &v);
    let root = f.path("machine");
    let o = Command::new(supervisor())
        .args(["machine-config", "--buddy"])
        .arg(f.buddy(slug))
        .args([
            "--image",
            "registry.fly.io/mybuddytalk-base@sha256:0123456789abcdef",
        ])
        .arg("--fly-toml")
        .arg(repo().join("fly.toml"))
        .arg("--rootfs")
        .arg(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // The image's own template: the repository's, unchanged.
    let image = repo().join("buddies/_template/config.json");
    fs::create_dir_all(root.join("opt/mybuddy/_template")).unwrap();
    fs::copy(&image, root.join("opt/mybuddy/_template/config.json")).unwrap();
    let primary = || {
        let out_file = f.path("openclaw.json");
        let o = render(
            &root.join("opt/mybuddy/buddy"),
            &f.state,
            &marker_env(&f.buddy(slug)),
            &["--out", out_file.to_str().unwrap()],
        );
        assert!(o.status.success(), "{}", text(&o));
        let r: Value = serde_json::from_str(&fs::read_to_string(&out_file).unwrap()).unwrap();
        r["agents"]["defaults"]["model"]["primary"].clone()
    };
    assert_eq!(primary(), "google/gemini-checked-template");
    // Without what the Machine carries, the image's template is the one.
    fs::remove_file(root.join("opt/mybuddy/_machine/template.json")).unwrap();
    let image: Value = serde_json::from_str(&fs::read_to_string(&image).unwrap()).unwrap();
    assert_eq!(primary(), image["agents"]["defaults"]["model"]["primary"]);
    assert_ne!(primary(), "google/gemini-checked-template");
}
