//! The real, pinned Clawdbot accepts every Buddy's rendered config and reads
//! back exactly the secrets we substituted, escaped values included.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::*;

/// `clawdbot config get PATH --json` against `config`, as the gateway user would.
fn clawdbot_get(state: &Path, config: &Path, path: &str) -> Result<Value, String> {
    let o = Command::new("clawdbot")
        .args(["config", "get", path, "--json"])
        .env_clear()
        .env("PATH", gateway_path())
        .env("HOME", state)
        .env("TMPDIR", state.join("tmp"))
        .env("CLAWDBOT_STATE_DIR", state)
        .env("CLAWDBOT_CONFIG_PATH", config)
        .env("NO_COLOR", "1")
        .output()
        .expect("run clawdbot");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    if !o.status.success() {
        return Err(format!("{text}{}", String::from_utf8_lossy(&o.stderr)));
    }
    serde_json::from_str(text.trim()).map_err(|e| format!("{e}: {text}"))
}

fn render_to(buddy: &Path, state: &Path, env: &[(String, String)]) -> std::path::PathBuf {
    let out = state.join("clawdbot.json");
    fs::create_dir_all(state.join("tmp")).unwrap();
    let o = Command::new(supervisor())
        .args(["render", "--buddy"])
        .arg(buddy)
        .arg("--state-dir")
        .arg(state)
        .arg("--out")
        .arg(&out)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn the_real_gateway_accepts_every_buddy_and_reads_back_the_secrets() {
    let f = Fixture::new();
    // A secret that the naive `jq | envsubst` entrypoint would corrupt, and
    // that the gateway would expand if we wrote it unescaped.
    let nasty = "q\"uo\\te\nline ${HOME} $${X} end";
    for slug in SWARM_MEMBERS {
        let b = f.buddy(slug);
        let mut env = marker_env(&b);
        env.retain(|(k, _)| k != "GEMINI_API_KEY");
        env.push(("GEMINI_API_KEY".into(), nasty.into()));
        let state = f.state.join(slug);
        let config = render_to(&b, &state, &env);
        let prefix = slug.to_uppercase().replace('-', "_");
        let got_env = clawdbot_get(&state, &config, "env")
            .unwrap_or_else(|e| panic!("{slug}: the gateway rejects the config:\n{e}"));
        assert_eq!(got_env["GEMINI_API_KEY"], json!(nasty), "{slug}");
        assert_eq!(
            got_env["CLAWDBOT_TELEGRAM_TOKEN"],
            json!(marker(&format!("{prefix}_TELEGRAM_TOKEN")))
        );
        let channels = clawdbot_get(&state, &config, "channels").unwrap();
        assert_eq!(
            channels["telegram"]["botToken"],
            json!(marker(&format!("{prefix}_TELEGRAM_TOKEN")))
        );
        if slug == "roelbuddy-emrys" || slug == "estherbuddy-kazeh" {
            assert_eq!(
                channels["whatsapp"]["allowFrom"],
                json!([marker(&format!("{prefix}_HUMAN_PHONE"))])
            );
        }
        let token = fs::read_to_string(state.join("gateway-token")).unwrap();
        let gw = clawdbot_get(&state, &config, "gateway").unwrap();
        assert_eq!(gw["auth"]["token"], json!(token.trim()));
        assert_eq!(gw["bind"], json!("lan"));
        // The gateway did not have to rewrite the file (it does so for a
        // channel whose plugin is not explicitly enabled or disabled).
        let after: Value = serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
        assert!(after["plugins"]["entries"]["whatsapp"]["enabled"].is_boolean());
    }
}

#[test]
fn the_check_has_teeth_the_gateway_rejects_the_documents_invalid_key() {
    // The architecture document's idea of `channels.whatsapp.enabled` is not
    // in the real schema; the same check that passes our renders fails here.
    let f = Fixture::new();
    let b = f.buddy("roelbuddy-emrys");
    let state = f.state.clone();
    let config = render_to(&b, &state, &marker_env(&b));
    let mut v: Value = serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    v["channels"]["whatsapp"]["enabled"] = json!(true);
    fs::write(&config, serde_json::to_string(&v).unwrap()).unwrap();
    let err = clawdbot_get(&state, &config, "gateway").expect_err("the gateway must refuse");
    assert!(
        err.contains("channels.whatsapp") && err.contains("enabled"),
        "{err}"
    );
}
