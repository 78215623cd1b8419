//! A Buddy never forgets (issue 22): its state backed up while it runs,
//! restored by the boot onto an empty volume, with the real gateway, the
//! Telegram and Gemini stand-ins, and the share's S3 server
//! (`scripts/swarm-local`) in the test's own network namespace.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mybuddy_standins::gemini::Step;
use serde_json::json;
use support::*;

/// Every regular file under `root` (relative path → bytes), links and
/// SQLite's own files left out.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walk_files(root)
        .into_iter()
        .filter(|p| p.is_file() && !p.is_symlink())
        .map(|p| {
            (
                p.strip_prefix(root).unwrap().to_path_buf(),
                fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Every row of every table of a SQLite database, as text.
fn dump(db: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .flatten()
        .collect();
    let mut out = String::new();
    for t in tables {
        let Ok(mut st) = c.prepare(&format!("SELECT * FROM \"{t}\"")) else {
            continue;
        };
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        while let Ok(Some(r)) = rows.next() {
            for i in 0..n {
                match r.get_ref(i) {
                    Ok(rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t)) => {
                        out.push_str(&String::from_utf8_lossy(t));
                    }
                    Ok(v) => out.push_str(&format!("{v:?}")),
                    Err(_) => {}
                }
                out.push('|');
            }
            out.push('\n');
        }
    }
    out
}

/// The backup cycle's last outcome (root's private cache).
fn last_cycle(cache: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&fs::read(cache.join("last-cycle.json")).ok()?).ok()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Until a cycle that began at or after `since` (seconds) succeeded: the
/// state as of then is in the backup.
fn wait_backed_up(cache: &Path, since: u64, timeout: Duration) -> Option<serde_json::Value> {
    wait_for(timeout, || {
        let o = last_cycle(cache)?;
        let ok = matches!(o["result"].as_str(), Some("backed-up" | "unchanged"));
        (ok && o["started"].as_u64()? >= since).then_some(o)
    })
}

/// Galahad live, backing up every `interval_s` into `cache` and its own
/// bucket on the share's S3 server (in the Buddy's network namespace).
fn live_with_backups(
    interval_s: u32,
    cache: &Path,
    prep: impl FnOnce(&Fixture, &Path),
) -> (Live, Share) {
    let mut share = None;
    let live = Live::start_full("roelbuddy-galahad", &[], prep, |_, ns| {
        let s = Share::up_in(ns);
        let mut env = s.backup_env(Some(ns), "roelbuddy-galahad");
        share = Some(s);
        env.push(("MYBUDDY_BACKUP_INTERVAL".into(), interval_s.to_string()));
        env.push(("MYBUDDY_BACKUP_CACHE".into(), cache.display().to_string()));
        env
    });
    (live, share.unwrap())
}

/// The Human tells a fact; the Buddy writes it to `workspace/<rel>` and
/// answers `reply`.
fn learn(live: &Live, rel: &str, content: &str, told: &str, reply: &str) {
    let note = live.state().join("workspace").join(rel);
    live.st.gemini.script([
        Step::call("write", json!({"path": note, "content": content})),
        Step::text(reply),
    ]);
    assert_eq!(live.say(told).text(), Some(reply));
}

#[test]
fn a_buddy_whose_volume_is_lost_comes_back_with_its_memory_history_credentials_and_token() {
    let cache = tempfile::tempdir().unwrap();
    let cache_path = cache.path().to_path_buf();
    // A WhatsApp Buddy's link lives in credentials/: losing it means
    // pairing again with the Human's phone in hand.
    let creds: Vec<u8> = (0..4096u64)
        .map(|i| (i * 2_654_435_761 % 251) as u8)
        .collect();
    let creds_rel = Path::new("credentials/whatsapp/default/creds.json");
    let (mut live, share) = live_with_backups(5, &cache_path, |f, _| {
        let p = f.state.join(creds_rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, &creds).unwrap();
    });
    let first_log = live.sup.log();
    assert!(
        first_log.contains("restore: the volume has state; nothing restored"),
        "{first_log}"
    );

    // The Buddy learns a fact and talks with its Human.
    learn(
        &live,
        "memory/2026-12-06.md",
        "# 2026-12-06\n\nRoel's boat is called Wavecrest.\n",
        "Remember: my boat is called Wavecrest.",
        "Noted.",
    );
    let written = Instant::now();
    let since = now_secs();
    let o = wait_backed_up(&cache_path, since, Duration::from_secs(90)).unwrap_or_else(|| {
        panic!(
            "no backup began after {since}: {:?}\n{}",
            last_cycle(&cache_path),
            live.sup.log()
        )
    });
    eprintln!(
        "backed up {:.1} s after the turn ended: {o}",
        written.elapsed().as_secs_f64()
    );
    let token = fs::read_to_string(live.state().join("gateway-token")).unwrap();
    let log = live.stop();
    assert!(log.contains("backup done"), "{log}");

    // What the volume held: the workspace, and the sessions (in SQLite).
    let before = files(live.state());
    let dbs = [
        "state/openclaw.sqlite",
        "agents/main/agent/openclaw-agent.sqlite",
    ];
    // The Human's own words (the note says "Roel's boat").
    let said = "my boat is called Wavecrest";
    let with_history: Vec<&str> = dbs
        .iter()
        .copied()
        .filter(|d| dump(&live.state().join(d)).contains(said))
        .collect();
    let files_with_history: Vec<&PathBuf> = before
        .iter()
        .filter(|(_, b)| String::from_utf8_lossy(b).contains(said))
        .map(|(p, _)| p)
        .collect();
    assert!(
        !with_history.is_empty() || !files_with_history.is_empty(),
        "nothing in the state holds the conversation"
    );
    eprintln!("the conversation is in {with_history:?} {files_with_history:?}");

    // The volume is lost: a new, empty one.
    wipe(live.state());
    live.reboot();
    let log = live.sup.log();
    assert!(
        log.contains("restore: the volume was empty; restored the Buddy's state from its backup"),
        "{log}"
    );
    let step = log
        .lines()
        .find(|l| l.contains("step=\"restore\"") || l.contains("\"step\":\"restore\""))
        .unwrap_or_default()
        .to_string();
    eprintln!("restore step: {step}");

    // Byte for byte: the WhatsApp link, the token, the memory note and
    // every session transcript.
    let after = files(live.state());
    assert_eq!(after.get(creds_rel), Some(&creds), "credentials differ");
    assert_eq!(
        fs::read_to_string(live.state().join("gateway-token")).unwrap(),
        token
    );
    assert_eq!(
        after.get(Path::new("workspace/memory/2026-12-06.md")),
        before.get(Path::new("workspace/memory/2026-12-06.md"))
    );
    for d in &with_history {
        assert!(
            dump(&live.state().join(d)).contains(said),
            "{d}: the conversation is not in the restored database"
        );
    }
    for f in &files_with_history {
        assert!(
            after
                .get(*f)
                .is_some_and(|b| String::from_utf8_lossy(b).contains(said)),
            "{}: the conversation is not in the restored file",
            f.display()
        );
    }

    // It remembers: the memory tool finds the fact, and it still answers.
    let found = wait_for(Duration::from_secs(90), || {
        live.st.gemini.script([
            Step::call(
                "tool_call",
                json!({"id": "memory_search", "args": {"query": "Roel boat name"}}),
            ),
            Step::quote("memory: "),
        ]);
        let r = live.say("What is my boat called?");
        let t = r.text().unwrap_or_default().to_string();
        t.contains("Wavecrest").then_some(t)
    });
    assert!(
        found.is_some(),
        "the restored Buddy did not find the fact\n{}",
        live.diagnostics()
    );
    live.st.gemini.script([Step::text("Good morning, Roel.")]);
    assert_eq!(
        live.say("Good morning!").text(),
        Some("Good morning, Roel.")
    );

    // A boot on a volume with state restores nothing (the state is newer
    // than any backup).
    live.stop();
    live.reboot();
    let log = live.sup.log();
    assert!(
        log.contains("restore: the volume has state; nothing restored"),
        "{log}"
    );
    live.finish();
    drop(share);
}

/// `supervisor backup ARGS` with `env` (and nothing else of ours).
fn backup_cmd(env: &[(String, String)], args: &[&str]) -> std::process::Output {
    std::process::Command::new(supervisor())
        .arg("backup")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

/// As the gateway's user would (uid/gid 10001).
fn as_gateway(cmd: &str) {
    let o = std::process::Command::new("setpriv")
        .args([
            "--reuid=10001",
            "--regid=10001",
            "--clear-groups",
            "sh",
            "-c",
            cmd,
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn backups_follow_no_planted_link_block_on_no_fifo_and_one_buddy_cannot_reach_another_s() {
    let share = Share::up();
    let scratch = tempfile::tempdir().unwrap();
    let state = scratch.path().join("state");
    fs::create_dir_all(state.join("workspace/memory")).unwrap();
    fs::create_dir_all(state.join("state")).unwrap();
    // The gateway's database, as it writes it (WAL).
    let db = rusqlite::Connection::open(state.join("state/openclaw.sqlite")).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES ('remembered');",
    )
    .unwrap();
    drop(db);
    sh(std::process::Command::new("chown")
        .args(["-R", "10001:10001"])
        .arg(&state));
    // Root's own secret, which the gateway cannot read.
    let secret = scratch.path().join("root-only");
    fs::write(&secret, "ROOT-ONLY-a5f3c9").unwrap();
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let s = state.display();
    as_gateway(&format!(
        "echo teal > {s}/workspace/memory/a.md && ln -s {} {s}/workspace/secret && ln -s {} {s}/state/evil.sqlite && ln -s /proc/1/environ {s}/workspace/environ && mkfifo {s}/workspace/pipe",
        secret.display(),
        secret.display()
    ));

    let cache = scratch.path().join("cache");
    let mut alice = share.backup_env(None, "alice");
    alice.push(("MYBUDDY_BACKUP_CACHE".into(), cache.display().to_string()));
    let t = Instant::now();
    let o = backup_cmd(&alice, &["now", "--state", &s.to_string()]);
    let said =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains("backed-up") && said.contains("1 databases copied"),
        "{said}"
    );
    eprintln!("backup of the planted state: {:?}", t.elapsed());

    // Restored: the links are links, the FIFO a FIFO, nothing of root's.
    let target = scratch.path().join("restored");
    let o = backup_cmd(
        &alice,
        &["restore", "--target", &target.display().to_string()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        fs::symlink_metadata(target.join("workspace/secret"))
            .unwrap()
            .is_symlink()
    );
    assert!(
        fs::symlink_metadata(target.join("workspace/environ"))
            .unwrap()
            .is_symlink()
    );
    for (p, bytes) in files(&target) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("ROOT-ONLY"),
            "{} holds root's secret",
            p.display()
        );
        assert!(
            !text.contains("MYBUDDY_BACKUP"),
            "{} holds an environment",
            p.display()
        );
    }
    assert_eq!(
        fs::read_to_string(target.join("workspace/memory/a.md")).unwrap(),
        "teal\n"
    );
    let c = rusqlite::Connection::open(target.join("state/openclaw.sqlite")).unwrap();
    let x: String = c.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(x, "remembered");

    // Bob's key and password reach Bob's backups alone.
    let bob = share.backup_env(None, "bob");
    let get =
        |env: &[(String, String)], k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let o = backup_cmd(&bob, &["list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("0 backup(s)"));
    // Bob's key on Alice's bucket: refused by the storage.
    let mut crossed = bob.clone();
    for (k, v) in crossed.iter_mut() {
        if k == "MYBUDDY_BACKUP_REPOSITORY" {
            *v = get(&alice, k);
        }
    }
    let o = backup_cmd(&crossed, &["list"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("Access Denied"),
        "{err}"
    );
    // Alice's key with Bob's password: the data is not readable.
    let mut wrong_key = alice.clone();
    for (k, v) in wrong_key.iter_mut() {
        if k == "MYBUDDY_BACKUP_PASSWORD" {
            *v = get(&bob, k);
        }
    }
    let o = backup_cmd(&wrong_key, &["list"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("wrong password"),
        "{err}"
    );
    // No secret value in anything said.
    for v in [&alice, &bob]
        .iter()
        .flat_map(|e| e.iter())
        .filter(|(k, _)| k != "MYBUDDY_BACKUP_REPOSITORY")
        .map(|(_, v)| v)
    {
        assert!(!said.contains(v.as_str()) && !err.contains(v.as_str()));
    }
}

#[test]
fn with_its_storage_down_a_buddy_keeps_answering_and_its_backup_catches_up_after() {
    let cache = tempfile::tempdir().unwrap();
    let cache_path = cache.path().to_path_buf();
    let (live, share) = live_with_backups(3, &cache_path, |_, _| {});
    let since = now_secs();
    assert!(
        wait_backed_up(&cache_path, since, Duration::from_secs(60)).is_some(),
        "{}",
        live.sup.log()
    );

    // The storage goes away for a while; the Buddy learns and answers.
    share.stop_s3();
    let down_at = now_secs();
    learn(
        &live,
        "memory/outage.md",
        "Roel's kite is red.\n",
        "Remember: my kite is red.",
        "Noted, even now.",
    );
    let failing = "backup failed; the Buddy goes on";
    assert!(
        live.sup.wait_log(failing, Duration::from_secs(30)),
        "{}",
        live.sup.log()
    );
    // Several more failing cycles, said once.
    std::thread::sleep(Duration::from_secs(10));
    let log = live.sup.log();
    assert_eq!(log.matches(failing).count(), 1, "{log}");
    assert!(
        last_cycle(&cache_path).is_some_and(
            |o| o["result"] == "failed" && o["started"].as_u64().unwrap() >= down_at + 3
        ),
        "{:?}",
        last_cycle(&cache_path)
    );

    // Back: the backup catches up (the outage's note in it), said once.
    share.up_again_in(&live.ns);
    let back = now_secs();
    assert!(
        live.sup
            .wait_log("backup: caught up", Duration::from_secs(60)),
        "{}",
        live.sup.log()
    );
    let o = wait_backed_up(&cache_path, back, Duration::from_secs(60)).unwrap();
    eprintln!(
        "caught up {} s after the storage came back: {o}",
        now_secs() - back
    );
    live.st.gemini.script([Step::text("Still here.")]);
    assert_eq!(live.say("Still there?").text(), Some("Still here."));

    // The volume is lost while the storage is down: the boot goes on with
    // a fresh state, said, and asks the next boot to restore.
    let mut live = live;
    live.stop();
    share.stop_s3();
    wipe(live.state());
    live.reboot();
    let log = live.sup.log();
    assert!(
        log.contains("no backup could be restored") && log.contains("the next boot restores"),
        "{log}"
    );
    let request = fs::symlink_metadata(live.state().join(".restore-request")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&request), 0);
    // The storage back, the next boot restores (the fresh state kept aside).
    share.up_again_in(&live.ns);
    live.stop();
    live.reboot();
    let log = live.sup.log();
    assert!(
        log.contains("restored the Buddy's state from its backup"),
        "{log}"
    );
    assert_eq!(
        fs::read_to_string(live.state().join("workspace/memory/outage.md")).unwrap(),
        "Roel's kite is red.\n"
    );
    assert!(!live.state().join(".restore-request").exists());
    assert!(
        fs::read_dir(live.state()).unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with(".restore-replaced-")),
        "the fresh state was not kept aside"
    );
    live.finish();
}

/// Empties a state dir (a lost volume).
fn wipe(state: &Path) {
    for e in fs::read_dir(state).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
}

/// The backup settings plus a cache dir, and restic's own environment for
/// looking into the repository as a test.
fn restic_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
    vec![
        ("RESTIC_REPOSITORY".into(), get("MYBUDDY_BACKUP_REPOSITORY")),
        ("RESTIC_PASSWORD".into(), get("MYBUDDY_BACKUP_PASSWORD")),
        ("AWS_ACCESS_KEY_ID".into(), get("MYBUDDY_BACKUP_ACCESS_KEY")),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            get("MYBUDDY_BACKUP_SECRET_KEY"),
        ),
    ]
}

fn restic(env: &[(String, String)], args: &[&str]) -> String {
    sh(std::process::Command::new("restic")
        .args(args)
        .envs(restic_env(env)))
}

/// A state dir with `mb` megabytes of incompressible files and a database.
fn big_state(dir: &Path, mb: usize, seed: u32) {
    fs::create_dir_all(dir.join("workspace/files")).unwrap();
    fs::create_dir_all(dir.join("state")).unwrap();
    let mut r = seed;
    for i in 0..mb {
        let bytes: Vec<u8> = (0..1 << 20).map(|_| next_random(&mut r) as u8).collect();
        fs::write(dir.join(format!("workspace/files/{i}.bin")), bytes).unwrap();
    }
    let db = rusqlite::Connection::open(dir.join("state/openclaw.sqlite")).unwrap();
    db.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES ('kept');")
        .unwrap();
}

#[test]
fn a_backup_killed_midway_leaves_no_snapshot_and_the_next_backup_and_restore_are_whole() {
    let share = Share::up();
    let scratch = tempfile::tempdir().unwrap();
    let state = scratch.path().join("state");
    big_state(&state, 120, 7);
    let mut env = share.backup_env(None, "killed");
    env.push((
        "MYBUDDY_BACKUP_CACHE".into(),
        scratch.path().join("cache").display().to_string(),
    ));
    let s = state.display().to_string();
    // A first backup makes the repository; then more data, and a backup
    // killed (SIGKILL, its whole group, restic with it) while it sends.
    let o = backup_cmd(&env, &["now", "--state", &s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    big_state(&scratch.path().join("more"), 60, 99);
    fs::rename(
        scratch.path().join("more/workspace/files"),
        state.join("workspace/more"),
    )
    .unwrap();
    let mut child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(supervisor())
            .args(["backup", "now", "--state", &s])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Until restic is sending (a restic in the group), then kill.
    let sending = wait_for(Duration::from_secs(30), || {
        let o = std::process::Command::new("pgrep")
            .args(["-g", &pgid.to_string(), "restic"])
            .output()
            .unwrap();
        (!o.stdout.is_empty()).then_some(())
    });
    assert!(sending.is_some(), "restic never ran");
    std::thread::sleep(Duration::from_millis(700));
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = child.wait();
    let snaps = restic(&env, &["snapshots", "--json", "--no-lock"]);
    let n = serde_json::from_str::<Vec<serde_json::Value>>(&snaps)
        .unwrap()
        .len();
    assert_eq!(n, 1, "the killed backup left a snapshot: {snaps}");

    // The next backup and a restore: every file, byte for byte.
    let o = backup_cmd(&env, &["now", "--state", &s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    restic(&env, &["check", "--no-lock"]);
    let target = scratch.path().join("restored");
    let o = backup_cmd(
        &env,
        &["restore", "--target", &target.display().to_string()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (
        files(&state.join("workspace")),
        files(&target.join("workspace")),
    );
    assert_eq!(a.len(), 180);
    assert!(a == b, "the restored workspace differs");
    let c = rusqlite::Connection::open(target.join("state/openclaw.sqlite")).unwrap();
    let x: String = c.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(x, "kept");
}

#[test]
fn a_corrupt_newest_backup_is_refused_with_its_reason_and_the_next_older_one_restored() {
    let share = Share::up();
    let scratch = tempfile::tempdir().unwrap();
    let state = scratch.path().join("state");
    big_state(&state, 2, 3);
    fs::write(state.join("workspace/fact.md"), "one\n").unwrap();
    let mut env = share.backup_env(None, "corrupt");
    env.push((
        "MYBUDDY_BACKUP_CACHE".into(),
        scratch.path().join("cache").display().to_string(),
    ));
    let s = state.display().to_string();
    assert!(backup_cmd(&env, &["now", "--state", &s]).status.success());
    let between = SystemTime::now();
    std::thread::sleep(Duration::from_millis(1100));
    let packs_before = restic(&env, &["list", "packs", "--no-lock"]);
    fs::write(state.join("workspace/fact.md"), "two\n").unwrap();
    big_state(&scratch.path().join("more"), 3, 11);
    fs::rename(
        scratch.path().join("more/workspace/files"),
        state.join("workspace/more"),
    )
    .unwrap();
    assert!(backup_cmd(&env, &["now", "--state", &s]).status.success());
    let new_packs: Vec<String> = restic(&env, &["list", "packs", "--no-lock"])
        .lines()
        .filter(|p| !packs_before.contains(*p))
        .map(str::to_string)
        .collect();
    assert!(!new_packs.is_empty());
    // As of a time between the two: the older one (the operator's --at).
    let at = humantime::format_rfc3339_seconds(between).to_string();
    let asof = scratch.path().join("as-of");
    let o = backup_cmd(
        &env,
        &[
            "restore",
            "--at",
            &at,
            "--target",
            &asof.display().to_string(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        fs::read_to_string(asof.join("workspace/fact.md")).unwrap(),
        "one\n"
    );
    // The newest backup's data damaged in the bucket: every pack it added
    // overwritten with garbage (as a storage fault would).
    let port = share.setting("S3_PORT");
    let (ak, sk) = (
        share.setting("S3_ADMIN_ACCESS_KEY"),
        share.setting("S3_ADMIN_SECRET_KEY"),
    );
    for p in &new_packs {
        let garbage = scratch.path().join("garbage");
        fs::write(&garbage, vec![0x5a; 4096]).unwrap();
        sh(std::process::Command::new("curl")
            .args([
                "-sf",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
                &format!("{ak}:{sk}"),
                "-T",
            ])
            .arg(&garbage)
            .arg(format!(
                "http://127.0.0.1:{port}/mybuddy-backup-corrupt/data/{}/{p}",
                &p[..2]
            )));
    }
    let target = scratch.path().join("restored");
    let o = backup_cmd(
        &env,
        &["restore", "--target", &target.display().to_string()],
    );
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    assert!(err.contains("refused"), "{err}");
    assert_eq!(
        fs::read_to_string(target.join("workspace/fact.md")).unwrap(),
        "one\n"
    );
    assert!(!target.join("workspace/more").exists());
    // Nothing of the refused attempt is left in the target.
    let leftovers: Vec<_> = fs::read_dir(&target)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".restore-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_full_disk_fails_the_backup_with_a_clear_reason_and_touches_nothing() {
    let share = Share::up();
    let scratch = tempfile::tempdir().unwrap();
    let state = scratch.path().join("state");
    big_state(&state, 1, 5);
    let before = files(&state);
    let env = share.backup_env(None, "fulldisk");
    // The backup's working dir on a 64 KiB filesystem, in a mount
    // namespace of the test's own.
    let cache = scratch.path().join("cache");
    fs::create_dir_all(&cache).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=64k,mode=0700 tmpfs {c} && exec {sup} backup now --state {s}",
        c = cache.display(),
        sup = supervisor().display(),
        s = state.display()
    );
    let o = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("MYBUDDY_BACKUP_CACHE", &cache)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("full") || err.contains("No space left"),
        "no clear reason: {err}"
    );
    // (SQLite's own -wal/-shm, which any reader of a WAL database opens,
    // are not the state.)
    let data = |m: BTreeMap<PathBuf, Vec<u8>>| -> BTreeMap<PathBuf, Vec<u8>> {
        m.into_iter()
            .filter(|(p, _)| {
                let n = p.to_string_lossy();
                !(n.ends_with("-wal") || n.ends_with("-shm"))
            })
            .collect()
    };
    assert!(
        data(before.clone()) == data(files(&state)),
        "the state changed"
    );
    // With room again, the same backup works.
    let mut env = env;
    env.push(("MYBUDDY_BACKUP_CACHE".into(), cache.display().to_string()));
    let o = backup_cmd(&env, &["now", "--state", &state.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
