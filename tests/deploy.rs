//! scripts/deploy against a recording `fly` first on PATH: the exact commands,
//! one Buddy's app only, secrets never on a command line.

mod support;

use std::process::{Command, Output};

use support::*;

fn deploy(fly: &FakeFly, env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(repo().join("scripts/deploy"))
        .args(args)
        .env_clear()
        .env("PATH", fly.path_env())
        .env("HOME", "/root")
        .env("SUPERVISOR", supervisor())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

/// The share's secrets for this Buddy's role, as an operator exports them
/// (marker values).
fn share_env(buddy: &str) -> Vec<(String, String)> {
    secret_names_of(&repo().join("buddies").join(buddy), &["--share"])
        .into_iter()
        .map(|n| {
            let v = marker(&n);
            (n, v)
        })
        .collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn first_deploy_creates_the_app_volume_secrets_and_deploys_only_that_buddy() {
    let f = Fixture::new();
    let fly = FakeFly::new(f.tmp.path());
    let mut env = marker_env(&repo().join("buddies/estherbuddy-kazeh"));
    env.extend(share_env("estherbuddy-kazeh"));
    let o = deploy(&fly, &env, &["estherbuddy-kazeh", "--region", "cdg"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let app = "mybuddytalk-estherbuddy-kazeh";
    assert_eq!(
        fly.calls(),
        vec![
            strs(&["apps", "list", "--json"]),
            strs(&["apps", "create", app, "--org", "personal"]),
            strs(&["volumes", "list", "--app", app, "--json"]),
            strs(&[
                "volumes",
                "create",
                "buddy_state",
                "--app",
                app,
                "--region",
                "cdg",
                "--size",
                "3",
                "--yes"
            ]),
            strs(&["secrets", "import", "--app", app, "--stage"]),
            strs(&["ips", "list", "--app", app, "--json"]),
            strs(&["ips", "allocate-v6", "--private", "--app", app]),
            strs(&[
                "deploy",
                "--app",
                app,
                "--config",
                "fly.toml",
                "--dockerfile",
                "buddies/estherbuddy-kazeh/Dockerfile",
                "--build-arg",
                "BASE_IMAGE=registry.fly.io/mybuddytalk-base:latest",
                "--ha=false",
                "--no-public-ips",
                "--yes",
            ]),
            strs(&["ips", "list", "--app", app, "--json"]),
        ]
    );
    // The secrets went through stdin, each exactly once, and appear in no argument or log.
    let stdin = fly.stdin();
    for (k, v) in &env {
        assert!(stdin.contains(&format!("{k}={v}\n")), "{k} not imported");
        assert!(
            !err.contains(v.as_str()),
            "a secret value reached the output"
        );
        for call in fly.calls() {
            assert!(
                !call.iter().any(|a| a.contains(v.as_str())),
                "a secret value on a command line"
            );
        }
    }
    assert_eq!(stdin.lines().count(), env.len());
    // A Buddy-role app gets MyBuddyBook's credentials and nothing of the SpellBook's.
    assert!(stdin.contains("MYBUDDY_BOOK_META_PASSWORD="), "{stdin}");
    assert!(!stdin.contains("SPELLBOOK"), "{stdin}");
    // Nor the Magicians' org token, even when the operator has it exported.
    let fly = FakeFly::new(&f.path("buddy-with-token"));
    let mut with = env.clone();
    with.push((
        "MYBUDDY_MAGICIAN_FLY_TOKEN".into(),
        "fm2_magician-org-token".into(),
    ));
    let o = deploy(&fly, &with, &["estherbuddy-kazeh", "--region", "cdg"]);
    assert!(o.status.success());
    assert!(!fly.stdin().contains("FLY_API_TOKEN"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not given to its app"));
}

#[test]
fn a_magician_s_app_gets_the_spellbook_too() {
    let f = Fixture::new();
    let fly = FakeFly::new(f.tmp.path());
    let mut env = marker_env(&repo().join("buddies/roelbuddy-emrys"));
    let share = share_env("roelbuddy-emrys");
    assert_eq!(share.len(), 4, "{share:?}");
    env.extend(share.clone());
    let o = deploy(&fly, &env, &["roelbuddy-emrys"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdin = fly.stdin();
    for (k, v) in &share {
        assert!(stdin.contains(&format!("{k}={v}\n")), "{k} not imported");
    }
    assert!(stdin.contains("MYBUDDY_SPELLBOOK_META_PASSWORD="));
    assert!(
        !stdin.contains("FLY_API_TOKEN"),
        "no org token unless one is given for Magicians"
    );
    // The org token for a Magician's supervisor: its own variable, imported
    // as FLY_API_TOKEN, through stdin only.
    let fly = FakeFly::new(&f.path("with-token"));
    let mut with = env.clone();
    with.push((
        "MYBUDDY_MAGICIAN_FLY_TOKEN".into(),
        "fm2_magician-org-token".into(),
    ));
    let o = deploy(&fly, &with, &["roelbuddy-emrys"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        fly.stdin()
            .contains("FLY_API_TOKEN=fm2_magician-org-token\n")
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("fm2_magician-org-token"));
    assert!(
        !fly.calls()
            .iter()
            .any(|c| c.iter().any(|a| a.contains("fm2_magician"))),
        "the token on a command line"
    );
    // The share's group is all or nothing, like the Buddy's own.
    let fly = FakeFly::new(&f.path("partial"));
    let mut env = marker_env(&repo().join("buddies/roelbuddy-emrys"));
    env.extend(share.into_iter().filter(|(k, _)| !k.contains("SPELLBOOK")));
    let o = deploy(&fly, &env, &["roelbuddy-emrys"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("set all of the share's secrets for a magician or none; missing: MYBUDDY_SPELLBOOK_META_URL MYBUDDY_SPELLBOOK_META_PASSWORD"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !fly.calls()
            .iter()
            .any(|c| c[0] == "deploy" || c[0] == "secrets")
    );
}

#[test]
fn a_second_deploy_reuses_the_app_and_keeps_the_secrets_already_set() {
    let f = Fixture::new();
    let fly = FakeFly::new(f.tmp.path());
    let app = "mybuddytalk-roelbuddy-galahad";
    fly.answer("apps", &format!(r#"[{{"Name":"{app}"}}]"#));
    fly.answer("volumes", r#"[{"name":"buddy_state","id":"vol_1"}]"#);
    let mut names = secret_names(&repo().join("buddies/roelbuddy-galahad"));
    names.extend(secret_names_of(
        &repo().join("buddies/roelbuddy-galahad"),
        &["--share"],
    ));
    // Left over from when Galahad was a Magician: the SpellBook's password
    // and the org token, which a Buddy-role app may not hold.
    names.extend([
        "MYBUDDY_SPELLBOOK_META_PASSWORD".into(),
        "FLY_API_TOKEN".into(),
    ]);
    let listed: Vec<String> = names
        .iter()
        .map(|n| format!(r#"{{"Name":"{n}"}}"#))
        .collect();
    fly.answer("secrets", &format!("[{}]", listed.join(",")));
    // Deployed before Buddies were private: a Flycast address and two public ones.
    fly.answer(
        "ips",
        r#"[{"Address":"fdaa:0:1::3","Type":"private_v6"},{"Address":"2a09:8280:1::1","Type":"v6"},{"Address":"66.241.124.9","Type":"shared_v4"}]"#,
    );
    let o = deploy(&fly, &[], &["roelbuddy-galahad"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let calls = fly.calls();
    assert_eq!(calls.len(), 9, "{calls:?}");
    assert_eq!(calls[2], strs(&["secrets", "list", "--app", app, "--json"]));
    assert_eq!(
        calls[3],
        strs(&[
            "secrets",
            "unset",
            "MYBUDDY_SPELLBOOK_META_PASSWORD",
            "FLY_API_TOKEN",
            "--app",
            app,
            "--stage"
        ])
    );
    assert_eq!(calls[4], strs(&["ips", "list", "--app", app, "--json"]));
    assert_eq!(calls[5][..3], strs(&["deploy", "--app", app]));
    assert!(
        calls[5].contains(&"--no-public-ips".to_string()),
        "{calls:?}"
    );
    assert_eq!(calls[6], strs(&["ips", "list", "--app", app, "--json"]));
    assert_eq!(
        calls[7],
        strs(&["ips", "release", "2a09:8280:1::1", "--app", app, "--yes"])
    );
    assert_eq!(
        calls[8],
        strs(&["ips", "release", "66.241.124.9", "--app", app, "--yes"])
    );
    assert!(
        !calls
            .iter()
            .any(|c| c[..2] == strs(&["ips", "allocate-v6"])[..]),
        "{calls:?}"
    );
    assert!(
        err.contains("fly proxy 18789:18789 --app mybuddytalk-roelbuddy-galahad"),
        "{err}"
    );
    assert!(
        calls.iter().all(|c| !c
            .iter()
            .any(|a| a.contains("emrys") || a.contains("kazeh") || a.contains("morgan"))),
        "another Buddy was touched: {calls:?}"
    );
}

#[test]
fn missing_secrets_and_broken_repositories_deploy_nothing() {
    let f = Fixture::new();
    let fly = FakeFly::new(f.tmp.path());
    // Some secrets but not all: refused before any fly call that changes anything.
    let env: Vec<(String, String)> = marker_env(&repo().join("buddies/roelbuddy-emrys"))
        .into_iter()
        .skip(1)
        .collect();
    let o = deploy(&fly, &env, &["roelbuddy-emrys"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("set all of this Buddy's secrets or none; missing: BRAVE_API_KEY")
    );
    assert!(
        !fly.calls()
            .iter()
            .any(|c| c[0] == "deploy" || c[0] == "secrets"),
        "{:?}",
        fly.calls()
    );
    // None in the environment and none on the app: refused, naming them.
    let fly = FakeFly::new(&f.path("second"));
    let o = deploy(&fly, &[], &["roelbuddy-emrys"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("mybuddytalk-roelbuddy-emrys lacks secrets BRAVE_API_KEY GEMINI_API_KEY ROELBUDDY_EMRYS_HUMAN_PHONE"));
    assert!(!fly.calls().iter().any(|c| c[0] == "deploy"));
    // An unknown Buddy or a bad id.
    for bad in ["nobuddy-here", "../etc", "RoelBuddy-Emrys"] {
        let o = deploy(&fly, &[], &[bad]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
    }
    // A fly failure stops the script at that step.
    let fly = FakeFly::new(&f.path("third"));
    fly.fail_on("volumes create");
    let o = deploy(
        &fly,
        &marker_env(&repo().join("buddies/roelbuddy-emrys")),
        &["roelbuddy-emrys"],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(
        !fly.calls()
            .iter()
            .any(|c| c[0] == "deploy" || c[0] == "secrets")
    );
}

#[test]
fn dry_run_prints_the_commands_and_calls_nothing_that_changes() {
    let f = Fixture::new();
    let fly = FakeFly::new(f.tmp.path());
    let env = marker_env(&repo().join("buddies/roelbuddy-galahad"));
    let o = deploy(&fly, &env, &["roelbuddy-galahad", "--dry-run"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(fly.calls().is_empty(), "{:?}", fly.calls());
    for line in [
        "+ fly apps create mybuddytalk-roelbuddy-galahad --org personal",
        "+ fly volumes create buddy_state --app mybuddytalk-roelbuddy-galahad --region ams --size 3 --yes",
        "+ fly secrets import --app mybuddytalk-roelbuddy-galahad --stage   (BRAVE_API_KEY GEMINI_API_KEY ROELBUDDY_GALAHAD_HUMAN_TELEGRAM_ID ROELBUDDY_GALAHAD_TELEGRAM_TOKEN)",
        "+ fly ips allocate-v6 --private --app mybuddytalk-roelbuddy-galahad",
        "+ fly deploy --app mybuddytalk-roelbuddy-galahad --config fly.toml --dockerfile buddies/roelbuddy-galahad/Dockerfile",
    ] {
        assert!(err.contains(line), "{line:?} not in:\n{err}");
    }
    let o = deploy(&fly, &[], &["--base", "--dry-run"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("+ fly deploy --app mybuddytalk-base --config fly.toml --dockerfile Dockerfile --build-only --push --image-label latest"));
}
