//! The swarm share with real kernel objects: a tmpfs in a private mount
//! namespace, gateways running as real uids with their role's groups, real
//! permission checks, concurrent writers and kill -9.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(60);

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn buddies_share_mybuddybook_and_only_magicians_read_the_spellbook() {
    let f = Fixture::new();
    let swarm = f.swarm.display().to_string();
    let buddy1 = script(
        f.tmp.path(),
        "buddy1.sh",
        &format!(
            r#"cd {swarm}
echo "B-LIST: $(ls spellbook 2>&1)"
echo "B-READ: $(cat spellbook/spells/spawn_buddy.md 2>&1 | head -1)"
echo "B-CHANGELOG: $(cat spellbook/changelog.md 2>&1 | head -1)"
echo "B-FIND: $(find spellbook 2>&1 | head -3 | tr '\n' ' ')"
echo from-galahad > mybuddybook/wisdom/a.md && echo B-WRITE-OK
exit 0"#
        ),
    );
    let magician = script(
        f.tmp.path(),
        "magician.sh",
        &format!(
            r#"cd {swarm}
echo "M-READ: $(head -1 spellbook/spells/spawn_buddy.md 2>&1)"
echo from-emrys >> mybuddybook/wisdom/a.md && echo M-EDIT-OK
echo from-emrys > mybuddybook/wisdom/b.md && echo M-WRITE-OK
exit 0"#
        ),
    );
    let buddy2 = script(
        f.tmp.path(),
        "buddy2.sh",
        &format!(
            r#"cd {swarm}
echo more-from-galahad >> mybuddybook/wisdom/b.md && echo B-EDIT-OK
echo "B-SEES: $(cat mybuddybook/wisdom/a.md | tr '\n' ' ')"
exit 0"#
        ),
    );
    let seed = repo().join("images/swarm-seed").display().to_string();
    // The Buddies' Machines carry the template they were checked with: the
    // share's template is still seeded from the image's template directory
    // (config.json and workspace/), not from that one file.
    std::fs::create_dir_all(f.buddies.join("_machine")).unwrap();
    std::fs::copy(
        f.buddies.join("_template/config.json"),
        f.buddies.join("_machine/template.json"),
    )
    .unwrap();
    let run = |slug: &str, user: &str, child: &Path| {
        format!(
            "{} run --buddy {} --state-dir {} --swarm {swarm} --swarm-seed {seed} --user {user} --restart never -- {}",
            quote(&supervisor().display().to_string()),
            quote(&f.buddy(slug).display().to_string()),
            quote(&f.state.join(slug).display().to_string()),
            quote(&child.display().to_string()),
        )
    };
    let all = format!(
        "set -e\nmount -t tmpfs -o mode=0755 tmpfs {swarm}\n{}\n{}\n{}\nls -ln {swarm}/mybuddybook/wisdom {swarm}\nstat -c '%a %g %n' {swarm}/spellbook {swarm}/spellbook/changelog.md {swarm}/mybuddybook/wisdom/a.md\necho \"TPL: $(ls {swarm}/mybuddybook/templates/_template | tr '\\n' ' ')\"\n",
        run("roelbuddy-galahad", "10001", &buddy1),
        run("roelbuddy-emrys", "10002", &magician),
        run("roelbuddy-galahad", "10001", &buddy2),
    );
    let mut env = base_env();
    env.extend(marker_env(&f.buddy("roelbuddy-galahad")));
    env.extend(marker_env(&f.buddy("roelbuddy-emrys")));
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &all])
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{out}\n{err}");
    // The Buddy's gateway cannot list or read the SpellBook, however it tries.
    for probe in ["B-LIST:", "B-READ:", "B-CHANGELOG:", "B-FIND:"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(probe))
            .unwrap_or_else(|| panic!("{probe} missing:\n{out}"));
        assert!(line.contains("Permission denied"), "{line}\n{out}");
        assert!(
            !line.contains("SpawnBuddy") && !line.contains("# SpellBook"),
            "{line}"
        );
    }
    assert!(out.contains("M-READ: # Spell: SpawnBuddy"), "{out}\n{err}");
    for ok in ["B-WRITE-OK", "M-EDIT-OK", "M-WRITE-OK", "B-EDIT-OK"] {
        assert!(out.contains(ok), "{ok} missing:\n{out}\n{err}");
    }
    assert!(out.contains("B-SEES: from-galahad from-emrys"), "{out}");
    assert!(out.contains("TPL: config.json workspace "), "{out}");
    // Files made by different uids share the group and stay group-writable.
    assert!(
        out.contains("2770 10101 ") && out.contains(" 10100 "),
        "{out}"
    );
    assert!(
        err.contains("spellbook_masked=true"),
        "the Buddy-role gateway got no SpellBook mask:\n{err}"
    );
    assert!(err.contains("verified=true"), "{err}");
}

fn swarm_check(swarm: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(supervisor())
        .args(["swarm", "check", "--swarm"])
        .arg(swarm)
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_world_readable_spellbook_is_repaired_or_refused() {
    let f = Fixture::new();
    let sb = f.swarm.join("spellbook/spells");
    fs::create_dir_all(&sb).unwrap();
    fs::write(sb.join("secret-spell.md"), "power").unwrap();
    fs::set_permissions(f.swarm.join("spellbook"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&sb, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(
        sb.join("secret-spell.md"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // Without repair: every deviation is reported and the check refuses.
    let o = swarm_check(&f.swarm, &["--swarm-dir-unmounted", "--no-repair"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    for needle in [
        "spellbook: group is 0, must be 10101",
        "spellbook: mode is 0755, must be 2770",
        "secret-spell.md: mode is 0644, must be 0660",
    ] {
        assert!(t.contains(needle), "{needle:?} not in:\n{t}");
    }
    // With repair (the default as root): fixed, logged, then probed for real.
    let o = swarm_check(&f.swarm, &["--swarm-dir-unmounted"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("swarm: repaired") && t.contains("mode 0644 -> 0660"),
        "{t}"
    );
    assert!(t.contains("access verified"), "{t}");
    let md = fs::metadata(sb.join("secret-spell.md")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.gid()), (0o660, 10101));
    assert_eq!(
        fs::metadata(f.swarm.join("spellbook")).unwrap().mode() & 0o7777,
        0o2770
    );
    // Idempotent: a second check changes nothing.
    let o = swarm_check(&f.swarm, &["--swarm-dir-unmounted"]);
    assert!(text(&o).contains("0 created, 0 repaired"), "{}", text(&o));
}

/// Every Machine runs the swarm step on the same MyBuddyBook while other
/// Machines' gateways write there: two checks at once, each PID 1 of its own
/// PID namespace (so both supervisors have the same pid, as on Fly), while
/// files appear, are renamed and vanish under their permission walk.
#[test]
fn swarm_steps_on_two_machines_at_once_survive_a_busy_share() {
    let f = Fixture::new();
    let o = swarm_check(&f.swarm, &["--swarm-dir-unmounted"]);
    assert!(o.status.success(), "{}", text(&o));
    let churn = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {}/mybuddybook && i=0; while :; do i=$((i+1)); echo x > wisdom/.tmp-$i; mv wisdom/.tmp-$i wisdom/n-$i; mkdir -p d-$i; rm -rf wisdom/n-$i d-$i; done",
            quote(&f.swarm.display().to_string())
        ))
        .spawn()
        .unwrap();
    let churn = KillOnDrop(churn);
    let machine = || {
        let mut failures = Vec::new();
        for _ in 0..20 {
            let o = Command::new("unshare")
                .args(["--pid", "--fork", "--"])
                .arg(supervisor())
                .args(["swarm", "check", "--swarm-dir-unmounted", "--swarm"])
                .arg(&f.swarm)
                .output()
                .unwrap();
            if !o.status.success() {
                failures.push(text(&o));
            }
        }
        failures
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(machine);
        let b = s.spawn(machine);
        (a.join().unwrap(), b.join().unwrap())
    });
    drop(churn);
    assert!(a.is_empty() && b.is_empty(), "{a:?}\n{b:?}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_unmounted_swarm_dir_is_a_clear_error() {
    let f = Fixture::new();
    let o = swarm_check(&f.swarm, &[]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains(&format!("{} is not a mount point", f.swarm.display())),
        "{t}"
    );
    assert!(t.contains("--swarm-dir-unmounted"), "{t}");
    assert!(
        !f.swarm.join("mybuddybook").exists(),
        "nothing is created on an unmounted share"
    );
    // The boot refuses the same way.
    let mut env = base_env();
    env.extend(marker_env(&f.buddy("roelbuddy-galahad")));
    let args: Vec<String> = [
        "--buddy",
        f.buddy("roelbuddy-galahad").to_str().unwrap(),
        "--state-dir",
        f.state.to_str().unwrap(),
        "--swarm",
        f.swarm.to_str().unwrap(),
        "--restart",
        "never",
        "--",
        "true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut s = Sup::start(f.tmp.path(), false, &args, &env);
    assert_eq!(s.wait_exit(T), Some(78), "{}", s.log());
    assert!(s.log().contains("is not a mount point"));
    // On a real mount point it passes.
    let mut s = Sup::start_with_tmpfs(f.tmp.path(), false, &f.swarm, &args, &env);
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
}

#[test]
fn concurrent_registry_writers_lose_nothing() {
    let f = Fixture::new();
    let book = f.swarm.join("mybuddybook");
    fs::create_dir_all(&book).unwrap();
    let dirs = f.path("load");
    let mut workers = Vec::new();
    for prefix in ["A", "B"] {
        let list: Vec<String> = make_buddies(&dirs, prefix, 200)
            .iter()
            .map(|d| quote(&d.display().to_string()))
            .collect();
        let loop_sh = format!(
            "for d in {}; do {} registry --swarm {} register --buddy \"$d\" || exit 1; done",
            list.join(" "),
            quote(&supervisor().display().to_string()),
            quote(&f.swarm.display().to_string())
        );
        workers.push(Command::new("sh").args(["-c", &loop_sh]).spawn().unwrap());
    }
    for mut w in workers {
        assert!(w.wait().unwrap().success());
    }
    let reg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(book.join("registry.json")).unwrap()).unwrap();
    let buddies = reg["buddies"].as_object().unwrap();
    assert_eq!(buddies.len(), 400);
    for (k, v) in buddies {
        assert_eq!(&v["id"].as_str().unwrap().to_lowercase(), k);
    }
    let leftovers: Vec<_> = fs::read_dir(&book)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn kill_9_during_registry_writes_never_tears_the_file() {
    let f = Fixture::new();
    let book = f.swarm.join("mybuddybook");
    fs::create_dir_all(&book).unwrap();
    // A big registry makes each write long enough to be hit mid-way.
    let dirs = make_buddies(&f.path("load"), "K", 300);
    for d in &dirs {
        let o = Command::new(supervisor())
            .args(["registry", "--swarm"])
            .arg(&f.swarm)
            .args(["register", "--buddy"])
            .arg(d)
            .output()
            .unwrap();
        assert!(o.status.success());
    }
    let reg_path = book.join("registry.json");
    let mut seed = 0x9e3779b9u32;
    let mut killed_mid_run = 0;
    for i in 0..200 {
        next_random(&mut seed);
        let mut child = Command::new(supervisor())
            .args(["registry", "--swarm"])
            .arg(&f.swarm)
            .args([
                "register",
                "--status",
                if i % 2 == 0 { "active" } else { "planned" },
                "--buddy",
            ])
            .arg(&dirs[i % dirs.len()])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(u64::from(seed % 4000)));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let text = fs::read_to_string(&reg_path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("torn registry after kill {i}: {e}"));
        assert_eq!(
            v["buddies"].as_object().unwrap().len(),
            300,
            "an entry was lost at kill {i}"
        );
    }
    assert!(
        killed_mid_run > 20,
        "only {killed_mid_run} kills hit a running writer"
    );
    // The next writer cleans up what killed writers left.
    let o = Command::new(supervisor())
        .args(["registry", "--swarm"])
        .arg(&f.swarm)
        .args(["register", "--buddy"])
        .arg(&dirs[0])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        !fs::read_dir(&book)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
    );
    let table = Command::new(supervisor())
        .args(["registry", "--swarm"])
        .arg(&f.swarm)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(
        t.starts_with("ID") && t.contains("LoadBuddy-K000") && t.lines().count() == 301,
        "{t}"
    );
}

#[test]
fn booting_on_fly_activates_a_planned_buddy_but_not_a_migration() {
    let f = Fixture::new();
    let galahad = f.buddy("roelbuddy-galahad");
    let kazeh = f.buddy("estherbuddy-kazeh");
    assert!(
        registry_register(&f.swarm, &galahad, &["--status", "planned"])
            .status
            .success()
    );
    assert!(registry_register(&f.swarm, &kazeh, &[]).status.success());
    for (slug, dir) in [
        ("roelbuddy-galahad", &galahad),
        ("estherbuddy-kazeh", &kazeh),
    ] {
        let mut env = base_env();
        env.extend(marker_env(dir));
        env.push(("FLY_MACHINE_ID".into(), format!("m-{slug}")));
        let args = run_args(
            dir,
            &f.state.join(slug),
            &f.swarm,
            &["--restart", "never"],
            &["true"],
        );
        let mut s = Sup::start(f.tmp.path(), false, &args, &env);
        assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
    }
    let reg: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(f.swarm.join("mybuddybook/registry.json")).unwrap(),
    )
    .unwrap();
    let g = &reg["buddies"]["roelbuddy-galahad"];
    assert_eq!(
        (g["status"].as_str(), g["machine"].as_str()),
        (Some("active"), Some("m-roelbuddy-galahad"))
    );
    assert!(g["last_boot"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(reg["buddies"]["estherbuddy-kazeh"]["status"], "migration");
}
