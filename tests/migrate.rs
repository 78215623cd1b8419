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
