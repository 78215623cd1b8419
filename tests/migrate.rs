//! scripts/migrate-buddy against a local directory standing in for the old VPS.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn migrate(args: &[&str]) -> Output {
    Command::new(repo().join("scripts/migrate-buddy"))
        .args(args)
        .env("SUPERVISOR", supervisor())
        .output()
        .unwrap()
}

fn old_server(root: &Path) -> std::path::PathBuf {
    let vps = root.join("vps/.clawdbot");
    fs::create_dir_all(vps.join("workspace/memory")).unwrap();
    fs::write(vps.join("workspace/MEMORY.MD"), "Esther likes tulips.\n").unwrap();
    fs::write(
        vps.join("workspace/memory/2026-01-30.md"),
        "Planned the garden.\n",
    )
    .unwrap();
    fs::create_dir_all(vps.join("credentials/whatsapp/default")).unwrap();
    fs::write(
        vps.join("credentials/whatsapp/default/creds.json"),
        r#"{"noiseKey":{"private":"x"},"me":{"id":"316..."}}"#,
    )
    .unwrap();
    fs::create_dir_all(vps.join("memory")).unwrap();
    fs::write(vps.join("memory/lancedb.bin"), "vectors").unwrap();
    vps
}

#[test]
fn migrating_kazeh_copies_verifies_and_activates() {
    let f = Fixture::new();
    let vps = old_server(f.tmp.path());
    // The registry knows Kazeh as a migration in progress.
    let reg = registry_register(&f.swarm, &repo().join("buddies/estherbuddy-kazeh"), &[]);
    assert!(reg.status.success());
    let reg_file = f.swarm.join("mybuddybook/registry.json");
    assert!(
        fs::read_to_string(&reg_file)
            .unwrap()
            .contains("\"migration\"")
    );
    let state = f.state.clone();
    let args = [
        "estherbuddy-kazeh",
        "--from",
        vps.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--swarm",
        f.swarm.to_str().unwrap(),
    ];
    // A dry run changes nothing.
    let o = migrate(&[&args[..], &["--dry-run"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!state.join("credentials").exists());
    let o = migrate(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let creds = state.join("credentials/whatsapp/default/creds.json");
    let md = fs::metadata(&creds).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o777),
        (10001, 10001, 0o600)
    );
    assert_eq!(
        fs::metadata(state.join("credentials")).unwrap().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::read_to_string(state.join("workspace/memory/2026-01-30.md")).unwrap(),
        "Planned the garden.\n"
    );
    assert!(state.join("memory/lancedb.bin").exists());
    let reg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&reg_file).unwrap()).unwrap();
    assert_eq!(reg["buddies"]["estherbuddy-kazeh"]["status"], "active");
    assert!(err.contains("1 WhatsApp session file(s)"), "{err}");
    assert!(
        !err.contains("noiseKey"),
        "credential content in the output"
    );
    // Running it again never overwrites what the Buddy wrote since.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(
        state.join("workspace/MEMORY.MD"),
        "Esther likes tulips and roses.\n",
    )
    .unwrap();
    let o = migrate(&args);
    assert!(o.status.success());
    assert_eq!(
        fs::read_to_string(state.join("workspace/MEMORY.MD")).unwrap(),
        "Esther likes tulips and roses.\n"
    );
}

#[test]
fn a_broken_whatsapp_session_fails_verification_and_keeps_the_status() {
    let f = Fixture::new();
    let vps = old_server(f.tmp.path());
    fs::write(
        vps.join("credentials/whatsapp/default/creds.json"),
        "{ torn",
    )
    .unwrap();
    let reg = registry_register(&f.swarm, &repo().join("buddies/estherbuddy-kazeh"), &[]);
    assert!(reg.status.success());
    let o = migrate(&[
        "estherbuddy-kazeh",
        "--from",
        vps.to_str().unwrap(),
        "--state",
        f.state.to_str().unwrap(),
        "--swarm",
        f.swarm.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not parse as a WhatsApp session"),
        "{err}"
    );
    let reg: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(f.swarm.join("mybuddybook/registry.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(reg["buddies"]["estherbuddy-kazeh"]["status"], "migration");
    // No session at all is a failure too; a bad id is refused.
    fs::remove_dir_all(vps.join("credentials")).unwrap();
    fs::create_dir_all(vps.join("credentials")).unwrap();
    let f2 = Fixture::new();
    let o = migrate(&[
        "estherbuddy-kazeh",
        "--from",
        vps.to_str().unwrap(),
        "--state",
        f2.state.to_str().unwrap(),
        "--swarm",
        f2.swarm.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no WhatsApp session"));
    assert_eq!(migrate(&["../x", "--from", "/tmp"]).status.code(), Some(1));
}

/// The old VPS as Clawdbot 2026.1.24-3 left it (tests/fixtures/kazeh-vps:
/// made by running that version), with the WhatsApp session in its place.
fn kazeh_vps(root: &Path) -> std::path::PathBuf {
    let fixture = repo().join("tests/fixtures/kazeh-vps");
    let vps = root.join("vps/.clawdbot");
    fs::create_dir_all(vps.parent().unwrap()).unwrap();
    let o = Command::new("cp")
        .arg("-r")
        .arg(fixture.join("clawdbot"))
        .arg(&vps)
        .output()
        .unwrap();
    assert!(o.status.success());
    let wa = vps.join("credentials/whatsapp/default");
    fs::create_dir_all(&wa).unwrap();
    for e in fs::read_dir(fixture.join("whatsapp-session")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), wa.join(e.file_name())).unwrap();
    }
    vps
}

#[test]
fn kazeh_migrated_from_clawdbot_boots_on_openclaw_with_nothing_lost() {
    let f = Fixture::new();
    let vps = kazeh_vps(f.tmp.path());
    let reg = registry_register(&f.swarm, &repo().join("buddies/estherbuddy-kazeh"), &[]);
    assert!(reg.status.success());
    let state = f.state.clone();
    let o = migrate(&[
        "estherbuddy-kazeh",
        "--from",
        vps.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--swarm",
        f.swarm.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wa_before: Vec<(std::ffi::OsString, Vec<u8>)> = {
        let mut v: Vec<_> = fs::read_dir(vps.join("credentials/whatsapp/default"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };

    // First boot of the new image on the migrated volume: the real gateway,
    // offline, channels off (no WhatsApp login attempt from a test).
    let b = f.buddy("estherbuddy-kazeh");
    let port = free_port_block();
    set_buddy_port(&b, port);
    let mut env = marker_env(&b);
    env.push(("PATH".into(), gateway_path()));
    let args = real_gateway_args(&f, &b, &["--channels", "off"]);
    let mut sup = Sup::start_wrapped(f.tmp.path(), false, true, &args, &env);
    let ready = wait_for(std::time::Duration::from_secs(120), || {
        (http_get_in(sup.pid(), port, "/readyz")?.0 == 200).then_some(())
    });
    assert!(ready.is_some(), "{}\n{}", sup.log(), sup.out());
    let log = sup.log();
    assert!(
        log.contains("state carried over from an older image"),
        "{log}"
    );

    let openclaw = |args: &[&str]| {
        let o = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", sup.pid()))
            .arg("--")
            .arg("openclaw")
            .args(args)
            .env_clear()
            .envs(openclaw_env(&state))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "openclaw {args:?}:\n{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_str::<serde_json::Value>(out.trim())
            .unwrap_or_else(|e| panic!("openclaw {args:?}: {e}:\n{out}"))
    };
    // Sessions: the old session is the gateway's, its transcript imported.
    let sessions = openclaw(&["sessions", "--json"]);
    let s = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "agent:main:main")
        .unwrap_or_else(|| panic!("the old session is gone: {sessions}"));
    assert_eq!(s["sessionId"], "383c2690-8159-41eb-9c65-207ef3e2efb8");
    let store = fs::read(state.join("agents/main/agent/openclaw-agent.sqlite")).unwrap();
    assert!(
        store.windows(17).any(|w| w == b"Goedemorgen Kazeh"),
        "the transcript did not reach the session store"
    );
    // Cron jobs: both of Esther's jobs, as they were scheduled.
    // The CLI finds the gateway (port, token) in its config, as an operator's would.
    let cron = openclaw(&["cron", "list", "--json"]);
    let jobs = cron["jobs"].as_array().unwrap();
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j["name"] == name)
            .unwrap_or_else(|| panic!("cron job {name} lost: {cron}"))
    };
    let morning = job("ochtendgroet");
    assert_eq!(morning["schedule"]["expr"], "0 8 * * *");
    assert_eq!(morning["schedule"]["tz"], "Europe/Amsterdam");
    assert_eq!(
        job("weekoverzicht")["payload"]["text"],
        "Maak het weekoverzicht voor Esther."
    );
    // WhatsApp: every credential file where the new WhatsApp plugin reads
    // it (credentials/whatsapp/default), byte for byte.
    for (name, bytes) in &wa_before {
        let now = fs::read(state.join("credentials/whatsapp/default").join(name)).unwrap();
        assert_eq!(&now, bytes, "{name:?} changed");
    }
    // Memory and persona: Kazeh's own words under the names the gateway
    // reads; the generic files Clawdbot wrote are replaced by the swarm's.
    let ws = state.join("workspace");
    let old_soul =
        fs::read_to_string(repo().join("tests/fixtures/kazeh-vps/clawdbot/workspace/SOUL.MD"))
            .unwrap();
    assert_eq!(fs::read_to_string(ws.join("SOUL.md")).unwrap(), old_soul);
    assert!(
        fs::read_to_string(ws.join("MEMORY.md"))
            .unwrap()
            .contains("MEMORY")
    );
    assert!(
        fs::read_to_string(ws.join("memory/2026-11-30.md"))
            .unwrap()
            .contains("tulip bulbs")
    );
    assert!(
        fs::read_to_string(ws.join("AGENTS.md"))
            .unwrap()
            .contains("EstherBuddy-Kazeh")
    );
    assert!(
        !ws.join("BOOTSTRAP.md").exists(),
        "the generic first-run ritual is still there"
    );
    assert!(!ws.join("SOUL.MD").exists());
    sup.signal("TERM");
    assert!(sup.wait_exit(std::time::Duration::from_secs(60)).is_some());
}
