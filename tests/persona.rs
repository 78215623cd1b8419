//! The persona reaches the model: one agent turn of the real gateway, run by
//! `openclaw agent --local` on a Buddy's rendered config and seeded
//! workspace, against a recording Gemini stand-in in a loopback-only network
//! namespace. The system prompt it sends holds the Buddy's own SOUL and
//! IDENTITY text and the swarm's AGENTS.md, and nothing of the gateway's
//! generic templates.

mod support;

use std::fs;

use support::*;

#[test]
fn the_system_prompt_of_a_turn_carries_the_buddys_own_soul_and_identity() {
    let f = Fixture::new();
    let slug = "roelbuddy-emrys";
    let b = f.buddy(slug);
    let soul_line = "Emrys answers in riddles only when Roel asks for one.";
    let soul = b.join("workspace/SOUL.md");
    let mut text = fs::read_to_string(&soul).unwrap();
    text.push_str(&format!("\n{soul_line}\n"));
    fs::write(&soul, text).unwrap();
    let state = f.state.clone();
    // The real boot prepares the state (seeds the workspace, renders the
    // config) and runs `true` as its "gateway".
    let mut env = marker_env(&b);
    env.push(("PATH".into(), gateway_path()));
    let args = real_gateway_args(
        &f,
        &b,
        &[
            "--channels",
            "off",
            "--swarm-seed",
            repo().join("images/swarm-seed").to_str().unwrap(),
            "--restart",
            "never",
            "--",
            "true",
        ],
    );
    let mut s = Sup::start_wrapped(f.tmp.path(), false, false, &args, &env);
    assert_eq!(
        s.wait_exit(std::time::Duration::from_secs(60)),
        Some(0),
        "{}",
        s.log()
    );

    // The model provider pointed at the stand-in (test only: #13's overlay
    // does this through the supervisor).
    let ns = NetNs::new();
    let st = mybuddy_standins::Standins::start(
        Some(std::path::Path::new(&ns.path())),
        Default::default(),
        None,
    )
    .unwrap();
    st.gemini
        .script([mybuddy_standins::Step::text("Hallo Roel, Emrys hier.")]);
    let config = state.join("openclaw.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    v["models"]["providers"] = st.overlay("test-key")["models"]["providers"].clone();
    fs::write(&config, serde_json::to_string_pretty(&v).unwrap()).unwrap();

    let o = ns
        .command("openclaw")
        .args([
            "agent",
            "--local",
            "--agent",
            "main",
            "--message",
            "Hoi Emrys, wie ben je?",
            "--json",
        ])
        .env_clear()
        .envs(openclaw_env(&state))
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let seen = st.gemini.seen();
    let turn = seen
        .iter()
        .find(|r| r.path.contains(":streamGenerateContent"))
        .unwrap_or_else(|| panic!("no model call; the stand-in saw {seen:?}\n{out}"));
    assert!(o.status.success(), "{out}");
    assert!(out.contains("Hallo Roel, Emrys hier."), "{out}");
    let system = turn.body["systemInstruction"].to_string();
    let identity = fs::read_to_string(b.join("workspace/IDENTITY.md")).unwrap();
    let full_id = identity
        .lines()
        .find(|l| l.contains("**Full id:**"))
        .unwrap();
    for needle in [
        soul_line,
        full_id.trim(),
        "Every Buddy shares `/mnt/swarm/mybuddybook/`",
    ] {
        let escaped = serde_json::to_string(needle).unwrap();
        let escaped = &escaped[1..escaped.len() - 1];
        assert!(
            system.contains(escaped),
            "{needle:?} is not in the system prompt:\n{system}"
        );
    }
    // Emrys is a Magician: the SpellBook's spells are among its skills.
    assert!(
        system.contains("spawn-buddy") && system.contains("spellbook/spells/spawn-buddy/SKILL.md"),
        "the Magician's spells are not among its skills:\n{system}"
    );
    // None of the gateway's generic SOUL template (what it writes into a
    // workspace that lacks SOUL.md) is in the prompt, and no old name is left.
    assert!(
        !system.contains("You're not a chatbot. You're becoming someone."),
        "the gateway's generic SOUL reached the prompt:\n{system}"
    );
    let old: Vec<String> = fs::read_dir(state.join("workspace"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".MD"))
        .collect();
    assert!(old.is_empty(), "{old:?}");
}
