//! The SpawnBuddy spell, resonate and the registry table, end to end through
//! the binary, on a copy of the repository and a local swarm share.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mybuddy_standins::FlyStandin;
use support::*;

const TOKEN: &str = "987654321:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawX";
const PHONE: &str = "+31687654321";

struct World {
    f: Fixture,
    repo: PathBuf,
    fly: FakeFly,
    /// The Machines API scripts/deploy talks to, in `ns` (loopback only).
    ns: NetNs,
    api: FlyStandin,
}

const FLY_TOKEN: &str = "fm2_operator-token";

impl World {
    fn new() -> World {
        let f = Fixture::new();
        let repo = f.path("repo");
        fs::create_dir_all(&repo).unwrap();
        fs::rename(&f.buddies, repo.join("buddies")).unwrap();
        for file in ["Dockerfile", "fly.toml"] {
            fs::copy(support::repo().join(file), repo.join(file)).unwrap();
        }
        copy_tree(&support::repo().join("scripts"), &repo.join("scripts"));
        use std::os::unix::fs::PermissionsExt;
        for e in fs::read_dir(repo.join("scripts")).unwrap().flatten() {
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::create_dir_all(f.swarm.join("mybuddybook/announcements")).unwrap();
        fs::create_dir_all(f.swarm.join("spellbook")).unwrap();
        let fly = FakeFly::new(f.tmp.path());
        let ns = NetNs::new();
        let api = fly_api(&ns, Some(FLY_TOKEN));
        api.api.add_image(
            "mybuddytalk-base:latest",
            "sha256:4444444444444444444444444444444444444444444444444444444444444444",
        );
        World {
            f,
            repo,
            fly,
            ns,
            api,
        }
    }

    fn spell(&self, name: &str, human: &str, bot: &str, role: &str, whatsapp: bool) -> PathBuf {
        let p = self.f.path(name);
        let wa = if whatsapp {
            format!("    whatsapp: true\n    whatsapp_phone: \"{PHONE}\"\n")
        } else {
            "    whatsapp: false\n".into()
        };
        fs::write(
            &p,
            format!(
                "spell: spawn_buddy\nparameters:\n  human: \"{human}\"\n  name: \"{bot}\"\n  role: \"{role}\"\n  channels:\n    telegram: true\n    telegram_token: \"{TOKEN}\"\n{wa}  personality:\n    soul: \"{bot} is gentle and curious.\"\n    identity: \"# IDENTITY\\n\\n{bot}, {human}'s buddy.\"\n"
            ),
        )
        .unwrap();
        p
    }

    fn spawn(&self, spell: &Path, caster: &str, extra: &[&str]) -> Output {
        self.ns
            .command(supervisor().to_str().unwrap())
            .arg("spawn")
            .arg(spell)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--swarm")
            .arg(&self.f.swarm)
            .args(["--as", caster])
            .args(extra)
            .env_clear()
            .env("PATH", self.fly.path_env())
            .env("HOME", "/root")
            .env("SUPERVISOR", supervisor())
            .env("GEMINI_API_KEY", "shared-gemini")
            .env("BRAVE_API_KEY", "shared-brave")
            // The share's, as the operator exports them for every deploy.
            .env("MYBUDDY_BOOK_META_URL", "rediss://book.example:6379/0")
            .env("MYBUDDY_BOOK_META_PASSWORD", "shared-book-password")
            // scripts/deploy's Machines API and registry: the stand-in.
            .env("FLY_API_HOSTNAME", self.api.base_url())
            .env("MYBUDDY_REGISTRY_URL", self.api.base_url())
            .env("FLY_API_TOKEN", FLY_TOKEN)
            .env("MYBUDDY_CHECKS_TIMEOUT", "3")
            .output()
            .unwrap()
    }

    fn registry(&self) -> serde_json::Value {
        serde_json::from_str(
            &fs::read_to_string(self.f.swarm.join("mybuddybook/registry.json"))
                .unwrap_or_else(|_| "{\"buddies\":{}}".into()),
        )
        .unwrap()
    }

    fn announcements(&self) -> Vec<PathBuf> {
        fs::read_dir(self.f.swarm.join("mybuddybook/announcements"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    /// Every file of the repository copy and the share, for leak checks.
    fn all_text(&self) -> String {
        let mut out = String::new();
        let mut stack = vec![self.repo.join("buddies"), self.f.swarm.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_no_leak(w: &World, outputs: &[&str]) {
    let files = w.all_text();
    for secret in [TOKEN, PHONE, "AAHdqTcvCH1vGWJ"] {
        assert!(!files.contains(secret), "{secret} written to a file");
        for o in outputs {
            assert!(!o.contains(secret), "{secret} in the output:\n{o}");
        }
    }
}

#[test]
fn a_magician_spawns_a_buddy_step_by_step() {
    let w = World::new();
    let spell = w.spell("lyra.yaml", "Esther", "Lyra", "buddy", false);
    let o = w.spawn(&spell, "RoelBuddy-Emrys", &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for step in [
        "[1/5] validate",
        "[2/5] generate",
        "[3/5] deploy: skipped",
        "scripts/deploy estherbuddy-lyra",
        "[4/5] register",
        "[5/5] resonate",
    ] {
        assert!(t.contains(step), "{step} missing:\n{t}");
    }
    let dir = w.repo.join("buddies/estherbuddy-lyra");
    let identity: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("buddy.json")).unwrap()).unwrap();
    assert_eq!(identity["status"], "planned");
    assert_eq!(
        fs::read_to_string(dir.join("workspace/SOUL.md")).unwrap(),
        "Lyra is gentle and curious.\n"
    );
    assert!(
        fs::read_to_string(dir.join("workspace/USER.md"))
            .unwrap()
            .contains("**Name:** Esther")
    );
    // Every name the gateway reads, the swarm's AGENTS.md filled in for Lyra.
    let mut names: Vec<String> = fs::read_dir(dir.join("workspace"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "AGENTS.md",
            "HEARTBEAT.md",
            "IDENTITY.md",
            "MEMORY.md",
            "SOUL.md",
            "TOOLS.md",
            "USER.md"
        ]
    );
    let agents = fs::read_to_string(dir.join("workspace/AGENTS.md")).unwrap();
    assert!(
        agents.contains("You are EstherBuddy-Lyra") && !agents.contains("{Human}"),
        "{agents}"
    );
    assert!(
        fs::read_to_string(dir.join("config.json"))
            .unwrap()
            .contains("${ESTHERBUDDY_LYRA_TELEGRAM_TOKEN}")
    );
    assert!(!dir.join(".spell-pending").exists());
    // The result passes the same check CI runs.
    let check = Command::new(supervisor())
        .arg("check-config")
        .arg(&w.repo)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
    assert_eq!(
        w.registry()["buddies"]["estherbuddy-lyra"]["status"],
        "planned"
    );
    let ann = w.announcements();
    assert_eq!(ann.len(), 1);
    let header = mybuddytalk::swarm::resonate::read_header(&ann[0]).unwrap();
    assert_eq!(
        (
            header["kind"].as_str(),
            header["from"].as_str(),
            header["buddy"].as_str()
        ),
        (
            Some("spawn"),
            Some("RoelBuddy-Emrys"),
            Some("EstherBuddy-Lyra")
        )
    );
    assert!(
        fs::read_to_string(&ann[0])
            .unwrap()
            .contains("welcome EstherBuddy-Lyra")
    );
    assert!(
        fs::read_to_string(w.f.swarm.join("spellbook/changelog.md"))
            .unwrap()
            .contains("RoelBuddy-Emrys cast spawn_buddy: EstherBuddy-Lyra (buddy, TG, planned)")
    );
    assert!(w.fly.calls().is_empty());
    assert_no_leak(&w, &[&t]);
    // The registry table shows it.
    let table = Command::new(supervisor())
        .args(["registry", "--swarm"])
        .arg(&w.f.swarm)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&table.stdout)
            .contains("EstherBuddy-Lyra  Esther  buddy  TG        planned  never booted  -"),
        "{}",
        text(&table)
    );
}

#[test]
fn a_non_magician_is_refused_before_anything_changes() {
    let w = World::new();
    let spell = w.spell("x.yaml", "Esther", "Lyra", "buddy", false);
    let o = w.spawn(&spell, "RoelBuddy-Galahad", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o)
            .contains("refused: RoelBuddy-Galahad is a buddy; only a Magician may cast SpawnBuddy"),
        "{}",
        text(&o)
    );
    assert!(!w.repo.join("buddies/estherbuddy-lyra").exists());
    assert!(w.announcements().is_empty());
    assert!(!w.f.swarm.join("mybuddybook/registry.json").exists());
    // Claiming to be a Magician that does not exist is refused too.
    let o = w.spawn(&spell, "NoBuddy-Here", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no such Buddy"), "{}", text(&o));
}

#[test]
fn the_whatsapp_limit_counts_the_repository_and_the_registry() {
    let w = World::new();
    let spell = w.spell("wa.yaml", "Esther", "Lyra", "buddy", true);
    let o = w.spawn(&spell, "EstherBuddy-Morgan", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains(
            "Esther already has a WhatsApp Buddy (EstherBuddy-Kazeh); at most one per Human"
        ),
        "{}",
        text(&o)
    );
    assert!(!w.repo.join("buddies/estherbuddy-lyra").exists());
    // A Human whose WhatsApp Buddy is only in the registry (deployed elsewhere).
    let reg = w.f.swarm.join("mybuddybook/registry.json");
    fs::write(&reg, r#"{"version":1,"buddies":{"noorbuddy-ash":{"id":"NoorBuddy-Ash","human":"Noor","name":"Ash","role":"buddy","channels":{"telegram":false,"whatsapp":true},"status":"active"}}}"#).unwrap();
    let spell = w.spell("noor.yaml", "Noor", "Birch", "buddy", true);
    let o = w.spawn(&spell, "RoelBuddy-Emrys", &[]);
    assert!(
        text(&o).contains("Noor already has a WhatsApp Buddy (NoorBuddy-Ash)"),
        "{}",
        text(&o)
    );
    assert_no_leak(&w, &[&text(&o)]);
}

#[test]
fn every_validation_problem_is_reported_at_once_without_the_secrets() {
    let w = World::new();
    let p = w.f.path("bad.yaml");
    fs::write(&p, "spell: spawn_buddy\nparameters:\n  human: \"esther\"\n  name: \"Kazeh\"\n  role: \"wizard\"\n  channels:\n    telegram: true\n    telegram_token: \"12345:short\"\n    whatsapp: true\n    whatsapp_phone: \"0612345678\"\n").unwrap();
    let o = w.spawn(&p, "RoelBuddy-Emrys", &[]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    for needle in [
        "parameters.human: \"esther\" must be one capitalised word",
        "parameters.role: \"wizard\" is not a role",
        "parameters.channels.telegram_token: is not a Telegram bot token",
        "parameters.channels.whatsapp_phone: is not a phone number in international format",
        "(4 problems)",
    ] {
        assert!(t.contains(needle), "{needle:?} not in:\n{t}");
    }
    assert!(
        !t.contains("12345:short") && !t.contains("0612345678"),
        "{t}"
    );
    // An existing id; path traversal in a name.
    let spell = w.spell("dup.yaml", "Esther", "Kazeh", "buddy", false);
    assert!(
        text(&w.spawn(&spell, "RoelBuddy-Emrys", &[])).contains("EstherBuddy-Kazeh already exists")
    );
    let spell = w.spell("trav.yaml", "Esther", "../../x", "buddy", false);
    let o = w.spawn(&spell, "RoelBuddy-Emrys", &[]);
    assert!(
        text(&o).contains("parameters.name: \"../../x\" must be one capitalised word"),
        "{}",
        text(&o)
    );
    // Unknown fields and YAML errors name the problem, never the content.
    fs::write(&p, format!("spell: spawn_buddy\nparameters:\n  human: Esther\n  name: Lyra\n  role: buddy\n  channels: {{telegram: true, telegram_token: \"{TOKEN}\"}}\n  colour: red\n")).unwrap();
    let o = w.spawn(&p, "RoelBuddy-Emrys", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("the spell file is invalid"),
        "{}",
        text(&o)
    );
    assert_no_leak(&w, &[&text(&o)]);
}

#[test]
fn deploy_through_the_fly_boundary_marks_the_buddy_active() {
    let w = World::new();
    let spell = w.spell("lyra.yaml", "Esther", "Lyra", "buddy", false);
    let o = w.spawn(&spell, "EstherBuddy-Morgan", &["--deploy"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // scripts/deploy put it on its Machine over the Machines API: its app,
    // private (a Flycast address), its secrets, one Machine.
    let app = w
        .api
        .api
        .app("mybuddytalk-estherbuddy-lyra")
        .unwrap_or_else(|| panic!("no app: {t}"));
    assert_eq!(app.ips, ["private_v6"]);
    assert_eq!(app.machines.len(), 1);
    // The spell's token reached Fly through the secrets call, and nowhere else.
    assert_eq!(app.secrets["ESTHERBUDDY_LYRA_TELEGRAM_TOKEN"], TOKEN);
    assert_eq!(app.secrets["GEMINI_API_KEY"], "shared-gemini");
    let with_token = calls_carrying(&w.api.api, TOKEN);
    assert_eq!(
        with_token,
        ["POST /v1/apps/mybuddytalk-estherbuddy-lyra/secrets"]
    );
    for c in &w.fly.calls() {
        assert!(!c.iter().any(|a| a.contains(TOKEN)));
    }
    assert_eq!(
        w.registry()["buddies"]["estherbuddy-lyra"]["status"],
        "active"
    );
    assert_no_leak(&w, &[&t]);
}

#[test]
fn a_failing_fly_rolls_everything_back_and_a_rerun_succeeds() {
    let w = World::new();
    w.api.api.fail("POST", "/machines", 500, 3);
    let spell = w.spell("lyra.yaml", "Esther", "Lyra", "buddy", false);
    let o = w.spawn(&spell, "RoelBuddy-Emrys", &["--deploy"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("step deploy failed: scripts/deploy estherbuddy-lyra exited"),
        "{t}"
    );
    assert!(t.contains("undone: removed"), "{t}");
    assert!(
        !w.repo.join("buddies/estherbuddy-lyra").exists(),
        "generated files were left behind"
    );
    // What the deploy made on Fly went with it.
    assert!(
        w.api.api.app_names().is_empty(),
        "{:?}",
        w.api.api.app_names()
    );
    assert!(w.registry()["buddies"].get("estherbuddy-lyra").is_none());
    assert!(w.announcements().is_empty());
    assert_no_leak(&w, &[&t]);
    // Fly works again: the same spell, cast again, completes.
    let o = w.spawn(&spell, "RoelBuddy-Emrys", &["--deploy"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        w.registry()["buddies"]["estherbuddy-lyra"]["status"],
        "active"
    );
}

#[test]
fn a_half_done_spell_is_safe_to_cast_again() {
    let w = World::new();
    // What a spell killed mid-way leaves: the directory with its marker, a planned entry.
    let dir = w.repo.join("buddies/estherbuddy-lyra");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(".spell-pending"), "x").unwrap();
    fs::write(dir.join("config.json"), "{ torn").unwrap();
    let spell = w.spell("lyra.yaml", "Esther", "Lyra", "buddy", false);
    let o = w.spawn(&spell, "RoelBuddy-Emrys", &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!dir.join(".spell-pending").exists());
    assert!(
        fs::read_to_string(dir.join("config.json"))
            .unwrap()
            .contains("botToken")
    );
}

#[test]
fn dry_run_changes_nothing() {
    let w = World::new();
    let spell = w.spell("lyra.yaml", "Esther", "Lyra", "buddy", false);
    let before = w.all_text();
    let o = w.spawn(&spell, "RoelBuddy-Emrys", &["--dry-run", "--deploy"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("[generate] would create buddies/estherbuddy-lyra/")
            && t.contains("[deploy] would run: scripts/deploy estherbuddy-lyra"),
        "{t}"
    );
    assert_eq!(w.all_text(), before);
    assert!(!w.repo.join("buddies/estherbuddy-lyra").exists());
    assert!(w.fly.calls().is_empty());
}

#[test]
fn concurrent_spells_keep_the_whatsapp_limit() {
    let w = World::new();
    let a = w.spell("a.yaml", "Noor", "Ash", "buddy", true);
    let b = w.spell("b.yaml", "Noor", "Birch", "buddy", true);
    let c = w.spell("c.yaml", "Sam", "Cedar", "buddy", false);
    let outs: Vec<Output> = std::thread::scope(|s| {
        let hs: Vec<_> = [&a, &b, &c]
            .iter()
            .map(|p| s.spawn(|| w.spawn(p, "RoelBuddy-Emrys", &[])))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok_noor = outs[..2].iter().filter(|o| o.status.success()).count();
    assert_eq!(
        ok_noor,
        1,
        "exactly one of Noor's WhatsApp spells may succeed: {:?}",
        outs.iter().map(text).collect::<Vec<_>>()
    );
    assert!(
        outs[..2]
            .iter()
            .any(|o| text(o).contains("Noor already has a WhatsApp Buddy"))
    );
    assert!(outs[2].status.success(), "{}", text(&outs[2]));
    let reg = w.registry();
    assert_eq!(reg["buddies"].as_object().unwrap().len(), 2);
}

#[test]
fn any_buddy_can_resonate() {
    let w = World::new();
    let o = Command::new(supervisor())
        .args([
            "resonate",
            "Found a great bread recipe, see wisdom/",
            "--swarm",
        ])
        .arg(&w.f.swarm)
        .arg("--buddy")
        .arg(w.repo.join("buddies/roelbuddy-galahad"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let path = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let header = mybuddytalk::swarm::resonate::read_header(&path).unwrap();
    assert_eq!(header["from"], "RoelBuddy-Galahad");
    assert_eq!(header["kind"], "message");
    assert!(
        fs::read_to_string(&path)
            .unwrap()
            .ends_with("Found a great bread recipe, see wisdom/\n")
    );
    let o = Command::new(supervisor())
        .args(["resonate", "  ", "--swarm"])
        .arg(&w.f.swarm)
        .arg("--buddy")
        .arg(w.repo.join("buddies/roelbuddy-galahad"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("the message is empty"));
}
