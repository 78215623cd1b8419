//! The real, pinned OpenClaw accepts every Buddy's rendered config as it is
//! (`openclaw config validate`), finds nothing critical in it (`openclaw
//! security audit`), and reads back exactly the values we substituted,
//! escaped ones included.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use support::*;

/// `openclaw ARGS` against `config`, as the gateway user's environment has it.
fn openclaw(state: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new("openclaw")
        .args(args)
        .env_clear()
        .envs(openclaw_env(state))
        .env("OPENCLAW_CONFIG_PATH", config)
        .output()
        .expect("run openclaw")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `openclaw config get PATH --json`.
fn config_get(state: &Path, config: &Path, path: &str) -> Result<Value, String> {
    let o = openclaw(state, config, &["config", "get", path, "--json"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    if !o.status.success() {
        return Err(text(&o));
    }
    serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))
}

fn render_to(buddy: &Path, state: &Path, env: &[(String, String)]) -> std::path::PathBuf {
    let out = state.join("openclaw.json");
    fs::create_dir_all(state.join("tmp")).unwrap();
    // The state dir is private, as the supervisor's state step makes it
    // (the audit flags a world-readable one).
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(state, fs::Permissions::from_mode(0o700)).unwrap();
    let o = Command::new(supervisor())
        .args(["render", "--buddy"])
        .arg(buddy)
        .arg("--state-dir")
        .arg(state)
        .arg("--gateway-dir")
        .arg(gateway_dir())
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
fn the_real_gateway_validates_audits_and_reads_back_every_buddy() {
    let f = Fixture::new();
    // A value that the naive `jq | envsubst` entrypoint would corrupt, and
    // that the gateway would expand if we wrote it unescaped.
    let nasty = "q\"uo\\te\nline ${HOME} $${X} end";
    for slug in SWARM_MEMBERS {
        let b = f.buddy(slug);
        let prefix = slug.to_uppercase().replace('-', "_");
        let admin_var = format!("{prefix}_HUMAN_TELEGRAM_ID");
        let mut env = marker_env(&b);
        env.retain(|(k, _)| *k != admin_var);
        env.push((admin_var.clone(), nasty.into()));
        let state = f.state.join(slug);
        let config = render_to(&b, &state, &env);
        let before = fs::read(&config).unwrap();

        let v = openclaw(&state, &config, &["config", "validate"]);
        assert!(v.status.success(), "{slug}: config validate:\n{}", text(&v));
        assert!(text(&v).contains("Config valid"), "{}", text(&v));

        let a = openclaw(&state, &config, &["security", "audit", "--json"]);
        let out = String::from_utf8_lossy(&a.stdout).to_string();
        let audit: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{slug}: audit output {e}:\n{}", text(&a)));
        let critical: Vec<&Value> = audit["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["severity"] == "critical")
            .collect();
        assert_eq!(
            audit["summary"]["critical"],
            json!(0),
            "{slug}: {critical:#?}"
        );
        assert!(critical.is_empty(), "{slug}: {critical:#?}");

        // Read back through the gateway's own parser: the escaped value is
        // exactly what we were given (secrets are shown redacted by the CLI,
        // so this checks a non-secret variable of the same grammar).
        let vars = config_get(&state, &config, "env.vars").unwrap();
        assert_eq!(vars["TELEGRAM_ADMIN_ID"], json!(nasty), "{slug}");
        assert!(vars.get("GEMINI_API_KEY").is_some(), "{slug}: {vars}");
        if slug == "roelbuddy-emrys" || slug == "estherbuddy-kazeh" {
            let wa = config_get(&state, &config, "channels.whatsapp").unwrap();
            assert_eq!(
                wa["allowFrom"],
                json!([marker(&format!("{prefix}_HUMAN_PHONE"))])
            );
        }
        let gw = config_get(&state, &config, "gateway").unwrap();
        assert_eq!(gw["bind"], json!("lan"));
        assert_eq!(gw["auth"]["mode"], json!("token"));
        let plugins = config_get(&state, &config, "plugins.load.paths").unwrap();
        for p in plugins.as_array().unwrap() {
            let p = p.as_str().unwrap();
            assert!(
                p.starts_with(gateway_dir().to_str().unwrap()) && Path::new(p).is_dir(),
                "{slug}: plugin path {p} is not in the gateway's install"
            );
        }
        // None of it made the gateway touch the file.
        assert_eq!(
            fs::read(&config).unwrap(),
            before,
            "{slug}: the gateway rewrote it"
        );
    }
}

#[test]
fn the_check_has_teeth_the_gateway_rejects_an_invalid_key_and_only_warns_on_a_missing_var() {
    // The Clawdbot-era shape (a variable directly under `env`, as our old
    // template had it) is no longer in the schema: the same validation that
    // passes our renders fails, as the policy's env rule says.
    let f = Fixture::new();
    let b = f.buddy("roelbuddy-emrys");
    let state = f.state.clone();
    let config = render_to(&b, &state, &marker_env(&b));
    let good = fs::read_to_string(&config).unwrap();
    let mut v: Value = serde_json::from_str(&good).unwrap();
    v["env"]["GEMINI_API_KEY"] = json!("old-shape");
    fs::write(&config, serde_json::to_string(&v).unwrap()).unwrap();
    let o = openclaw(&state, &config, &["config", "validate"]);
    assert!(
        !o.status.success(),
        "the gateway must refuse:\n{}",
        text(&o)
    );
    assert!(text(&o).contains("env"), "{}", text(&o));

    // A missing ${VAR} only warns in OpenClaw 2026.9 (the value stays
    // `${X}`): the supervisor's render is the check that fails closed.
    let mut v: Value = serde_json::from_str(&good).unwrap();
    v["env"]["vars"]["TELEGRAM_ADMIN_ID"] = json!("${MYBUDDY_TEST_MISSING_VAR}");
    fs::write(&config, serde_json::to_string(&v).unwrap()).unwrap();
    let o = openclaw(&state, &config, &["config", "validate"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("MYBUDDY_TEST_MISSING_VAR"),
        "{}",
        text(&o)
    );
    let mut env = marker_env(&b);
    env.retain(|(k, _)| k != "ROELBUDDY_EMRYS_HUMAN_TELEGRAM_ID");
    let r = Command::new(supervisor())
        .args(["render", "--buddy"])
        .arg(&b)
        .arg("--state-dir")
        .arg(&state)
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("ROELBUDDY_EMRYS_HUMAN_TELEGRAM_ID"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}
