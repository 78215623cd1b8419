//! A Buddy that answers (issue 13): a Human's Telegram message in, an agent
//! turn of the real gateway against the scripted model, the reply out through
//! sendMessage; the persona in the prompt, the pairing answer for a stranger,
//! MyBuddyBook through the agent's own tools, the SpellBook refused to a
//! Buddy and open to a Magician, memory through embeddings, and a Telegram
//! outage survived. Each Buddy runs live: the supervisor as PID 1 of its
//! namespace, in a network namespace with only `lo` (see support/e2e.rs);
//! every test ends by checking that nothing secret reached any output.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use mybuddy_standins::{Down, Step};
use serde_json::json;
use support::*;

/// The SpellBook's spell, as the seed ships it: a line of it is how a test
/// knows whether the model ever saw the spell's text.
fn spell_line() -> String {
    let text = fs::read_to_string(repo().join("images/swarm-seed/spellbook/spells/spawn_buddy.md"))
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("Only a Magician"))
        .expect("a distinctive line of spawn_buddy.md");
    line.trim().to_string()
}

fn json_escaped(s: &str) -> String {
    let e = serde_json::to_string(s).unwrap();
    e[1..e.len() - 1].to_string()
}

#[test]
fn a_magician_answers_its_human_with_its_persona_pairs_strangers_and_reads_its_spells() {
    let soul_line = "Emrys answers in riddles only when Roel asks for one.";
    let live = Live::start("roelbuddy-emrys", |_, b| {
        let soul = b.join("workspace/SOUL.md");
        let mut text = fs::read_to_string(&soul).unwrap();
        text.push_str(&format!("\n{soul_line}\n"));
        fs::write(&soul, text).unwrap();
    });

    // 1. The Human's message gets the model's answer, to the Human's chat,
    // and the model's request carried the Buddy's own SOUL and IDENTITY.
    live.st
        .gemini
        .script([Step::text("Hallo Roel, Emrys hier.")]);
    let reply = live.say("Hoi Emrys, wie ben je?");
    assert_eq!(reply.text(), Some("Hallo Roel, Emrys hier."), "{reply:?}");
    assert_eq!(reply.chat_id(), Some(HUMAN));
    let turns = live.st.gemini.turns();
    assert_eq!(turns.len(), 1, "{}", live.diagnostics());
    assert!(
        turns[0].body["contents"]
            .to_string()
            .contains("Hoi Emrys, wie ben je?"),
        "{}",
        turns[0].body["contents"]
    );
    let system = turns[0].system_text();
    let identity = fs::read_to_string(live.b.join("workspace/IDENTITY.md")).unwrap();
    let full_id = identity
        .lines()
        .find(|l| l.contains("**Full id:**"))
        .unwrap();
    for needle in [soul_line, full_id.trim()] {
        assert!(
            system.contains(needle),
            "{needle:?} is not in the system prompt"
        );
    }
    // A Magician's spells are among its skills.
    assert!(
        system.contains("spawn-buddy") && system.contains("spellbook/spells/spawn-buddy/SKILL.md"),
        "the SpellBook's spells are not among the Magician's skills"
    );

    // 2. A stranger gets the gateway's pairing answer, and no agent turn.
    let stranger = 555_000_111;
    let pairing = live.say_as(stranger, "Mallory", "hello?", Duration::from_secs(60));
    let text = pairing.text().unwrap_or_default().to_lowercase();
    assert!(
        text.contains("pairing") && text.contains(&stranger.to_string()),
        "not the pairing answer: {pairing:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        live.st.gemini.turns().len(),
        1,
        "a stranger's message reached the model"
    );

    // 4b. The Magician reads the spell through its read tool.
    let spell = live
        .swarm()
        .join("mybuddybook/../spellbook/spells/spawn_buddy.md");
    let spell = spell.to_str().unwrap().replace("mybuddybook/../", "");
    live.st.gemini.script([
        Step::call("read", json!({"path": spell})),
        Step::quote("The spell says: "),
    ]);
    let reply = live.say("Lees de SpawnBuddy spell voor me.");
    assert!(
        reply.text().unwrap_or_default().contains(&spell_line()),
        "the Magician did not get the spell's text: {reply:?}"
    );

    live.finish();
}

/// Issue 15 through the agent's own tools: Emrys's Human asks for a new
/// Buddy; the agent writes the spell to a private temp file and runs
/// `supervisor spawn … --deploy` with its exec tool. Its gateway holds no
/// Fly token: the command asks Emrys's supervisor on the spell socket,
/// which casts over the Machines API (the stand-in, in the same
/// loopback-only namespace) and streams the result back into the tool.
#[test]
fn a_magician_s_agent_spawns_a_buddy_through_its_supervisor() {
    const FLY_TOKEN: &str = "fm2_org-token-kept-by-the-supervisor";
    const BOT: &str = "987654321:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawX";
    let fly = std::cell::RefCell::new(None);
    let socket = std::cell::RefCell::new(None);
    let live = Live::start_full(
        "roelbuddy-emrys",
        &[],
        |_, _| {},
        |f, ns| {
            let api = fly_api(ns, Some(FLY_TOKEN));
            let run = f.path("run");
            fs::create_dir_all(&run).unwrap();
            fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            *socket.borrow_mut() = Some(run.join("spell.sock"));
            let env = vec![
                ("FLY_API_TOKEN".into(), FLY_TOKEN.into()),
                ("FLY_API_HOSTNAME".into(), api.base_url()),
                ("FLY_IMAGE_REF".into(), "registry.fly.io/mybuddytalk-base@sha256:5555555555555555555555555555555555555555555555555555555555555555".into()),
                ("MYBUDDY_FLY_TOML".into(), repo().join("fly.toml").display().to_string()),
                ("MYBUDDY_SPELL_SOCKET".into(), run.join("spell.sock").display().to_string()),
                ("MYBUDDY_BOOK_META_URL".into(), "rediss://default@book.example:6379/0".into()),
                ("MYBUDDY_BOOK_META_PASSWORD".into(), "book-password".into()),
            ];
            *fly.borrow_mut() = Some(api);
            env
        },
    );
    let fly = fly.into_inner().unwrap();
    let socket = socket.into_inner().unwrap();
    assert!(
        live.sup.log().contains("step=\"spells\""),
        "{}",
        live.sup.log()
    );
    let spell = live.state().join("tmp/lyra-spell.yaml");
    let yaml = format!(
        "spell: spawn_buddy\nparameters:\n  human: Nora\n  name: Lyra\n  role: buddy\n  channels:\n    telegram: true\n    telegram_token: \"{BOT}\"\n"
    );
    let cast = format!(
        "umask 077; MYBUDDY_SPELL_SOCKET={} supervisor spawn {} --swarm {} --deploy; echo exit=$?; rm -f {}",
        socket.display(),
        spell.display(),
        live.swarm().display(),
        spell.display()
    );
    live.st.gemini.script([
        Step::call("write", json!({"path": spell, "content": yaml})),
        Step::call("exec", json!({"command": cast, "title": "cast SpawnBuddy"})),
        Step::quote("SpawnBuddy: "),
    ]);
    let reply = live.say("Maak een Buddy Lyra voor Nora, Telegram, dit is de bot token.");
    let text = reply.text().unwrap_or_default();
    assert!(
        text.contains("spawned norabuddy-lyra (deployed)") && text.contains("exit=0"),
        "{reply:?}\n{}",
        live.diagnostics()
    );
    let app = fly
        .api
        .app("mybuddytalk-norabuddy-lyra")
        .expect("the app was made");
    assert_eq!(app.machines.len(), 1);
    assert_eq!(app.secrets["NORABUDDY_LYRA_TELEGRAM_TOKEN"], BOT);
    assert!(!spell.exists(), "the agent's spell file was left behind");
    // The agent's gateway never held the token: the supervisor cast for it.
    assert!(
        live.sup
            .log()
            .contains("spell socket: casting for the gateway")
    );
    let gateway = children_of(live.sup.pid())
        .into_iter()
        .map(|(p, _)| p)
        .find(|p| {
            fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("openclaw") || c.contains("node"))
        })
        .expect("the gateway runs");
    let environ = String::from_utf8_lossy(&fs::read(format!("/proc/{gateway}/environ")).unwrap())
        .into_owned();
    assert!(!environ.contains("FLY_API_TOKEN") && !environ.contains(FLY_TOKEN));
    assert!(!text.contains(FLY_TOKEN));
    live.finish();
}

#[test]
fn a_buddy_shares_wisdom_through_its_tools_and_is_refused_the_spellbook() {
    let live = Live::start("roelbuddy-galahad", |_, _| {});
    let book = live.swarm().join("mybuddybook");
    let book_gid = fs::metadata(&book).unwrap().gid();
    let uid = 10001;

    // 3a. Wisdom another Buddy wrote (another Machine: the same gateway
    // user, the swarm's group and modes), read through the read tool.
    let theirs = book.join("wisdom/green-tea.md");
    fs::write(
        &theirs,
        "# Green tea\n\nKazeh learned: brew green tea at 80 degrees, never boiling.\n",
    )
    .unwrap();
    nix::unistd::chown(&theirs, Some(uid.into()), Some(book_gid.into())).unwrap();
    fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o660)).unwrap();
    live.st.gemini.script([
        Step::call("read", json!({"path": theirs})),
        Step::quote("Kazeh wrote: "),
    ]);
    let reply = live.say("What does the swarm know about green tea?");
    assert!(
        reply
            .text()
            .unwrap_or_default()
            .contains("brew green tea at 80 degrees"),
        "{reply:?}\n{}",
        live.diagnostics()
    );

    // 3b. It writes a wisdom article (write) and resonates (exec).
    let mine = book.join("wisdom/sourdough.md");
    let resonate = format!(
        "supervisor resonate --swarm {} --buddy {} 'Galahad wrote wisdom/sourdough.md'",
        live.swarm().display(),
        live.b.display()
    );
    live.st.gemini.script([
        Step::call(
            "write",
            json!({"path": mine, "content": "# Sourdough\n\nFeed the starter twice a day.\n"}),
        ),
        Step::call(
            "exec",
            json!({"command": resonate, "title": "tell the swarm"}),
        ),
        Step::text("Written and announced."),
    ]);
    let reply = live.say("Write down what we learned about sourdough, and tell the swarm.");
    assert_eq!(
        reply.text(),
        Some("Written and announced."),
        "{}",
        live.diagnostics()
    );
    let md = fs::metadata(&mine).unwrap_or_else(|e| panic!("{e}: {}", live.diagnostics()));
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (uid, book_gid, 0o660)
    );
    let ann = book.join("announcements");
    let found: Vec<_> = fs::read_dir(&ann)
        .unwrap()
        .flatten()
        .filter(|e| {
            fs::read_to_string(e.path())
                .is_ok_and(|t| t.contains("Galahad wrote wisdom/sourdough.md"))
        })
        .collect();
    assert_eq!(found.len(), 1, "no announcement: {}", live.diagnostics());
    let md = found[0].metadata().unwrap();
    assert_eq!(
        (md.gid(), md.mode() & 0o070),
        (book_gid, 0o060),
        "{:o}",
        md.mode()
    );

    // 4a. The SpellBook, through read and through exec cat: a permission
    // error in the tool result, and the spell's text never reaches the model.
    let spell = live.swarm().join("spellbook/spells/spawn_buddy.md");
    live.st.gemini.script([
        Step::call("read", json!({"path": spell})),
        Step::quote("read said: "),
    ]);
    let by_read = live.say("Read the SpawnBuddy spell.");
    live.st.gemini.script([
        Step::call(
            "exec",
            json!({"command": format!("cat {}", spell.display()), "title": "read the spell"}),
        ),
        Step::quote("cat said: "),
    ]);
    let by_cat = live.say("Then cat it.");
    for (how, r) in [("read", &by_read), ("exec cat", &by_cat)] {
        let t = r.text().unwrap_or_default().to_lowercase();
        assert!(
            t.contains("permission denied") || t.contains("eacces"),
            "{how}: no permission error in the tool result: {r:?}"
        );
    }
    let line = json_escaped(&spell_line());
    for s in live.st.gemini.seen() {
        assert!(
            !s.body.to_string().contains(&line),
            "the model received the spell's text"
        );
    }

    live.finish();
}

#[test]
fn a_fact_written_to_memory_is_found_by_the_memory_tool_in_a_later_turn() {
    let live = Live::start("roelbuddy-galahad", |_, _| {});
    let note = live.state().join("workspace/memory/2026-12-02.md");
    live.st.gemini.script([
        Step::call(
            "write",
            json!({"path": note, "content": "# 2026-12-02\n\nRoel's favourite colour is teal.\n"}),
        ),
        Step::text("Noted."),
    ]);
    assert_eq!(
        live.say("Remember: my favourite colour is teal.").text(),
        Some("Noted.")
    );

    // A later turn asks the memory tool (behind the gateway's tool search).
    let found = wait_for(Duration::from_secs(90), || {
        live.st.gemini.script([
            Step::call(
                "tool_call",
                json!({"id": "memory_search", "args": {"query": "Roel favourite colour"}}),
            ),
            Step::quote("memory: "),
        ]);
        let r = live.say("What is my favourite colour?");
        let t = r.text().unwrap_or_default().to_string();
        t.contains("teal").then_some(t)
    });
    assert!(
        found.is_some(),
        "the memory tool never found the fact\n{}",
        live.diagnostics()
    );
    // It was found through embeddings from the stand-in: the note was
    // embedded, and so was the query.
    let embedded: Vec<String> = live
        .st
        .gemini
        .seen()
        .iter()
        .filter(|s| s.is_embed())
        .flat_map(|s| s.embed_texts())
        .collect();
    assert!(
        embedded
            .iter()
            .any(|t| t.contains("favourite colour is teal")),
        "{embedded:?}"
    );
    assert!(
        embedded.iter().any(|t| t.contains("Roel favourite colour")),
        "{embedded:?}"
    );

    live.finish();
}

#[test]
fn after_a_long_telegram_outage_the_next_message_is_answered_without_a_restart() {
    let live = Live::start_with(
        "roelbuddy-galahad",
        &["--restart-window", "30", "--backoff-max-ms", "5000"],
        |_, _| {},
    );
    live.st.gemini.script([Step::text("Before the outage.")]);
    assert_eq!(live.say("hello").text(), Some("Before the outage."));
    let sup_pid = live.sup.pid();
    let gateway = children_of(sup_pid);
    assert_eq!(gateway.len(), 1, "{gateway:?}");

    // Down for 100 s: refused, then reset. Longer than the supervisor's
    // crash-loop window here (--restart-window 30) and the gateway's polling
    // backoffs, so anything that gives up on a long outage would have.
    live.st.telegram.set_down(Some(Down::Refused));
    std::thread::sleep(Duration::from_secs(50));
    live.st.telegram.set_down(Some(Down::Reset));
    std::thread::sleep(Duration::from_secs(50));
    live.st.telegram.set_down(None);
    let up = Instant::now();
    live.st.gemini.script([Step::text("Back again.")]);
    let reply = live.say_as(HUMAN, "Roel", "are you there?", Duration::from_secs(60));
    assert_eq!(reply.text(), Some("Back again."));
    assert!(up.elapsed() < Duration::from_secs(60), "{:?}", up.elapsed());
    // No restart of the Machine, nor of the gateway: the same processes.
    assert_eq!(live.sup.pid(), sup_pid);
    assert_eq!(
        children_of(sup_pid).first().map(|c| c.0),
        Some(gateway[0].0)
    );
    assert!(
        !live.sup.log().contains("gateway exited"),
        "{}",
        live.sup.log()
    );

    live.finish();
}
