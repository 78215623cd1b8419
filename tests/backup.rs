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

#[test]
fn a_buddy_whose_volume_is_lost_comes_back_with_its_memory_history_credentials_and_token() {
    let mut share = None;
    let cache = tempfile::tempdir().unwrap();
    let cache_path = cache.path().to_path_buf();
    // A WhatsApp Buddy's link lives in credentials/: losing it means
    // pairing again with the Human's phone in hand.
    let creds: Vec<u8> = (0..4096u64)
        .map(|i| (i * 2_654_435_761 % 251) as u8)
        .collect();
    let creds_rel = Path::new("credentials/whatsapp/default/creds.json");
    let mut live = Live::start_full(
        "roelbuddy-galahad",
        &[],
        |f, _| {
            let p = f.state.join(creds_rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, &creds).unwrap();
        },
        |_, ns| {
            let s = Share::up_in(ns);
            let mut env = s.backup_env(Some(ns), "roelbuddy-galahad");
            share = Some(s);
            env.push(("MYBUDDY_BACKUP_INTERVAL".into(), "5".into()));
            env.push((
                "MYBUDDY_BACKUP_CACHE".into(),
                cache_path.display().to_string(),
            ));
            env
        },
    );
    let first_log = live.sup.log();
    assert!(
        first_log.contains("restore: the volume has state; nothing restored"),
        "{first_log}"
    );

    // The Buddy learns a fact and talks with its Human.
    let note = live.state().join("workspace/memory/2026-12-06.md");
    live.st.gemini.script([
        Step::call(
            "write",
            json!({"path": note, "content": "# 2026-12-06\n\nRoel's boat is called Wavecrest.\n"}),
        ),
        Step::text("Noted."),
    ]);
    assert_eq!(
        live.say("Remember: my boat is called Wavecrest.").text(),
        Some("Noted.")
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
    for e in fs::read_dir(live.state()).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
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
