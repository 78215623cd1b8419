//! The share mounted and supervised by the supervisor itself (issue 14):
//! each test boots supervisors as "Machines" (PID 1 of their own PID and
//! mount namespaces, each with its own `juicefs mount`s of the same volumes
//! served by `scripts/swarm-local` on 127.0.0.1), and acts inside a Machine
//! as its gateway's uid through `nsenter`. The gateway is a long-running
//! child (what matters here is the share under it, its restarts and its
//! environment, not what it says).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

struct Machine {
    sup: Sup,
    swarm: PathBuf,
    uid: u32,
    groups: &'static str,
}

/// Boots `slug` as a Machine of `role` on `share` (or with `env` overriding
/// what the share would give, for the fault tests).
fn boot(f: &Fixture, slug: &str, share_env: &BTreeMap<String, String>, timeout_s: u32) -> Machine {
    let (uid, groups) = match slug {
        "roelbuddy-emrys" => (10002, "10100,10101"),
        _ => (10001, "10100"),
    };
    let swarm = f.path(&format!("swarm-{slug}"));
    fs::create_dir_all(&swarm).unwrap();
    let gw = script(f.tmp.path(), "gateway.sh", "exec sleep 100000\n");
    let args: Vec<String> = [
        "--buddy",
        &f.buddy(slug).display().to_string(),
        "--state-dir",
        &f.state.join(slug).display().to_string(),
        "--swarm",
        &swarm.display().to_string(),
        "--swarm-seed",
        &repo().join("images/swarm-seed").display().to_string(),
        "--share-cache-dir",
        &f.path(&format!("cache-{slug}")).display().to_string(),
        "--share-timeout",
        &timeout_s.to_string(),
        "--user",
        &uid.to_string(),
        "--restart",
        "always",
        "--stop-timeout",
        "5",
        "--",
        &gw.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut env = base_env();
    env.extend(marker_env(&f.buddy(slug)));
    env.push(("MYBUDDY_JUICEFS".into(), juicefs().display().to_string()));
    env.extend(share_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Machine {
        sup: Sup::start(f.tmp.path(), true, &args, &env),
        swarm,
        uid,
        groups,
    }
}

impl Machine {
    fn ready(&self) {
        assert!(
            self.sup
                .wait_log("gateway started", Duration::from_secs(60)),
            "{}",
            self.sup.log()
        );
    }

    /// `sh -c script` in this Machine's mount namespace, as its gateway's
    /// uid and groups, from the swarm dir; stdout and stderr together.
    fn as_gateway(&self, script: &str) -> String {
        self.nsenter(
            &[
                "setpriv",
                &format!("--reuid={}", self.uid),
                &format!("--regid={}", self.uid),
                &format!("--groups={}", self.groups),
                "--",
            ],
            // The gateway's umask (the supervisor gives it 007).
            &format!("umask 007; {script}"),
        )
    }

    /// The same as root (the supervisor's CLI).
    fn as_root(&self, script: &str) -> String {
        self.nsenter(&[], script)
    }

    fn nsenter(&self, wrap: &[&str], script: &str) -> String {
        let o = Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.sup.pid()))
            .arg("--")
            .args(wrap)
            .args([
                "sh",
                "-c",
                &format!("cd {} && {script}", self.swarm.display()),
            ])
            .env("PATH", std::env::var("PATH").unwrap())
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    }

    /// The supervisor's children by name: the gateway (`sleep`) and the mounts (`juicefs`).
    fn children(&self, comm: &str) -> Vec<i32> {
        children_of(self.sup.pid())
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .collect()
    }

    fn gateway(&self) -> i32 {
        wait_for(Duration::from_secs(30), || {
            self.children("sleep").first().copied()
        })
        .expect("the gateway runs")
    }

    fn mounts(&self) -> Vec<String> {
        fs::read_to_string(format!("/proc/{}/mountinfo", self.sup.pid()))
            .unwrap()
            .lines()
            .filter(|l| l.contains(" fuse.juicefs "))
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect()
    }
}

fn environ(pid: i32) -> String {
    String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/environ")).unwrap()).replace('\0', "\n")
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn registry_len(m: &Machine) -> usize {
    let text = m.as_root("cat mybuddybook/registry.json");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v["buddies"].as_object().unwrap().len()
}

#[test]
fn two_machines_share_mybuddybook_and_only_the_magician_mounts_the_spellbook() {
    let s = Share::up();
    let f = Fixture::new();
    let emrys = boot(&f, "roelbuddy-emrys", &s.env("magician"), 20);
    let galahad = boot(&f, "roelbuddy-galahad", &s.env("buddy"), 20);
    emrys.ready();
    galahad.ready();
    for m in [&emrys, &galahad] {
        assert!(m.sup.log().contains("step=\"share\""), "{}", m.sup.log());
        assert!(m.sup.log().contains("share mounted"), "{}", m.sup.log());
    }

    // Mounts: the Magician both volumes, the Buddy MyBuddyBook only.
    let em = emrys.mounts();
    assert_eq!(em.len(), 2, "{em:?}");
    assert!(
        em.iter().any(|p| p.ends_with("/mybuddybook"))
            && em.iter().any(|p| p.ends_with("/spellbook"))
    );
    let gm = galahad.mounts();
    assert_eq!(gm.len(), 1, "{gm:?}");
    assert!(gm[0].ends_with("/mybuddybook"), "{gm:?}");
    // One process per mount: juicefs runs with us as its supervisor (no watchdog).
    assert_eq!(emrys.children("juicefs").len(), 2);
    assert_eq!(galahad.children("juicefs").len(), 1);

    // Wisdom one Buddy writes, the other reads.
    let w = galahad.as_gateway("echo 'Kazeh: green tea at 80 degrees' > mybuddybook/wisdom/tea.md && stat -c '%u %g %a' mybuddybook/wisdom/tea.md");
    assert_eq!(w.trim(), "10001 10100 660", "{w}");
    assert_eq!(
        emrys.as_gateway("cat mybuddybook/wisdom/tea.md").trim(),
        "Kazeh: green tea at 80 degrees"
    );

    // An announcement the Magician resonates is listed by the Buddy within a second.
    let out = emrys.as_root(&format!(
        "{} resonate --swarm . --buddy {} 'The tea wisdom is in.'",
        supervisor().display(),
        f.buddy("roelbuddy-emrys").display()
    ));
    let t = Instant::now();
    let seen = wait_for(Duration::from_secs(1), || {
        galahad
            .as_gateway("cat mybuddybook/announcements/*")
            .contains("The tea wisdom is in.")
            .then_some(())
    });
    assert!(seen.is_some(), "not seen within 1 s: {out}");
    eprintln!(
        "announcement seen on the other Machine after {:?}",
        t.elapsed()
    );

    // The SpellBook: the Magician reads the spell; the Buddy's gateway has no
    // way in (an empty local directory, no credentials anywhere).
    assert!(
        emrys
            .as_gateway("head -1 spellbook/spells/spawn_buddy.md")
            .contains("SpawnBuddy")
    );
    let probe = galahad.as_gateway("ls spellbook; cat spellbook/spells/spawn_buddy.md");
    assert!(probe.contains("Permission denied"), "{probe}");
    assert!(!probe.contains("SpawnBuddy"), "{probe}");
    let magician_env = s.env("magician");
    let spell_pw = &magician_env["MYBUDDY_SPELLBOOK_META_PASSWORD"];
    let book_pw = &magician_env["MYBUDDY_BOOK_META_PASSWORD"];
    let sup_env = environ(galahad.sup.pid());
    assert!(
        !sup_env.contains("SPELLBOOK") && !sup_env.contains(spell_pw.as_str()),
        "{sup_env}"
    );
    for m in [&emrys, &galahad] {
        let gw = environ(m.gateway());
        for secret in [spell_pw, book_pw] {
            assert!(
                !gw.contains(secret.as_str()),
                "a share password in the gateway's environment"
            );
        }
        assert!(!gw.contains("MYBUDDY_"), "{gw}");
        for pid in m.children("juicefs") {
            let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
            assert!(!cmdline.contains(spell_pw.as_str()) && !cmdline.contains(book_pw.as_str()));
        }
    }

    // 2×100 concurrent upserts from the two Machines: 200 entries (plus the two Buddies).
    let loads = f.path("load");
    let run_loads = |m: &Machine, prefix: &str| {
        let list = make_buddies(&loads, prefix, 100)
            .iter()
            .map(|d| quote(&d.display().to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        let cmd = format!(
            "for d in {list}; do {} registry --swarm . register --buddy \"$d\" || exit 1; done; echo LOADS-DONE",
            supervisor().display()
        );
        Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", m.sup.pid()))
            .args([
                "--",
                "sh",
                "-c",
                &format!("cd {} && {cmd}", m.swarm.display()),
            ])
            .output()
            .unwrap()
    };
    let t = Instant::now();
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| run_loads(&emrys, "A"));
        let b = sc.spawn(|| run_loads(&galahad, "B"));
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!(
        "2x100 registry upserts from two Machines: {:?}",
        t.elapsed()
    );
    for o in [&a, &b] {
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("LOADS-DONE"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(registry_len(&emrys), 202);
    assert_eq!(registry_len(&galahad), 202);

    // Stop: the gateway first, then a clean unmount of each volume.
    let mut emrys = emrys;
    emrys.sup.signal("TERM");
    // (The stand-in gateway, `sleep`, ends by the signal: 143.)
    assert_eq!(
        emrys.sup.wait_exit(Duration::from_secs(20)),
        Some(143),
        "{}",
        emrys.sup.log()
    );
    let log = emrys.sup.log();
    let stopped = log.find("gateway stopped").expect("gateway stopped");
    let unmounted = log.find("share: unmounted").expect("share: unmounted");
    assert!(stopped < unmounted, "{log}");
    assert_eq!(log.matches("share: unmounted").count(), 2, "{log}");
    for secret in [spell_pw, book_pw] {
        assert!(!log.contains(secret.as_str()) && !emrys.sup.out().contains(secret.as_str()));
    }
}

#[test]
fn a_buddy_keeps_running_through_share_faults_and_a_killed_mount_is_remounted() {
    let s = Share::up();
    let f = Fixture::new();
    let g = boot(&f, "roelbuddy-galahad", &s.env("buddy"), 20);
    g.ready();
    let gateway = g.gateway();
    assert!(
        g.sup
            .wait_log("registered in the swarm", Duration::from_secs(10))
    );
    let entries = registry_len(&g);
    let mounts = |m: &Machine| -> serde_json::Value {
        let text = m.as_root("cat mybuddybook/registry.json");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["buddies"]["roelbuddy-galahad"]["mounts"].clone()
    };
    assert_eq!(mounts(&g), serde_json::json!({"mybuddybook": true}));

    // The metadata database restarted while mounted: the Buddy keeps running,
    // the share works again after.
    let pw = s.setting("BOOK_META_PASSWORD");
    let port = s.setting("BOOK_REDIS_PORT");
    let o = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "shutdown"])
        .env("REDISCLI_AUTH", &pw)
        .output()
        .unwrap();
    assert!(o.status.success() || o.stdout.is_empty(), "{o:?}");
    std::thread::sleep(Duration::from_secs(2));
    s.up_again();
    let back = wait_for(Duration::from_secs(60), || {
        g.as_gateway("echo after-redis > mybuddybook/wisdom/r.md && cat mybuddybook/wisdom/r.md")
            .contains("after-redis")
            .then_some(())
    });
    assert!(back.is_some(), "{}", g.sup.log());

    // The S3 server restarted: the same.
    let weed: i32 = fs::read_to_string(s.dir.path().join("s3/weed.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(weed),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for(Duration::from_secs(20), || {
        (!Path::new(&format!("/proc/{weed}")).exists()).then_some(())
    });
    s.up_again();
    let back = wait_for(Duration::from_secs(90), || {
        g.as_gateway("echo after-s3 > mybuddybook/wisdom/s.md && cat mybuddybook/wisdom/s.md mybuddybook/wisdom/r.md")
            .contains("after-s3\nafter-redis")
            .then_some(())
    });
    assert!(back.is_some(), "{}", g.sup.log());
    assert_eq!(
        g.gateway(),
        gateway,
        "the gateway was restarted by a server fault"
    );
    assert!(!g.sup.log().contains("remounting"), "{}", g.sup.log());

    // The mount process SIGKILLed: remounted, the swarm step again, the
    // gateway restarted on the new mount, the registry intact.
    let mount = g.children("juicefs")[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(mount),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        g.sup.wait_log("share: remounted", Duration::from_secs(60)),
        "{}",
        g.sup.log()
    );
    assert!(
        g.sup
            .wait_log_count("gateway started", 2, Duration::from_secs(30)),
        "{}",
        g.sup.log()
    );
    let log = g.sup.log();
    for (a, b) in [
        (
            "share: the mount process ended; remounting",
            "gateway stopped for the repair",
        ),
        ("gateway stopped for the repair", "share: mounting"),
        ("swarm ready", "repaired: starting the gateway"),
    ] {
        let (ia, ib) = (log.rfind(a), log.rfind(b));
        assert!(
            ia.is_some() && ib.is_some() && ia < ib,
            "{a} before {b}:\n{log}"
        );
    }
    let new_gateway = g.gateway();
    assert_ne!(new_gateway, gateway);
    assert_ne!(g.children("juicefs")[0], mount);
    assert_eq!(registry_len(&g), entries);
    // The registry saw it gone and back.
    assert!(
        wait_for(Duration::from_secs(20), || (mounts(&g)
            == serde_json::json!({"mybuddybook": true})
            && g.sup
                .log()
                .contains("state recorded in the registry state=booting"))
        .then_some(()))
        .is_some(),
        "{}",
        g.sup.log()
    );
    assert!(
        g.as_gateway("cat mybuddybook/wisdom/s.md")
            .contains("after-s3")
    );
    assert!(Path::new(&format!("/proc/{}", g.sup.pid())).exists());
}

#[test]
fn a_share_that_cannot_mount_fails_the_boot_clearly_and_in_time() {
    let s = Share::up();
    let f = Fixture::new();
    let check = |env: BTreeMap<String, String>, want: &[&str], secrets: &[&str]| {
        // Each a first refusal (a second one in a row waits before its exit).
        let _ = std::fs::remove_file(f.state.join("roelbuddy-galahad/.supervisor-refusals"));
        let mut m = boot(&f, "roelbuddy-galahad", &env, 4);
        let t = Instant::now();
        let code = m.sup.wait_exit(Duration::from_secs(30));
        let log = m.sup.log() + &m.sup.out();
        assert_eq!(code, Some(78), "{log}");
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        for w in want {
            assert!(log.contains(w), "{w:?} missing:\n{log}");
        }
        for secret in secrets {
            assert!(!log.contains(secret), "a secret in the output:\n{log}");
        }
        assert!(!log.contains("gateway started"), "{log}");
    };

    // Metadata unreachable (nothing listens there): the boot timeout, not juicefs's 72 s.
    let mut env = s.env("buddy");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    env.insert(
        "MYBUDDY_BOOK_META_URL".into(),
        format!("redis://127.0.0.1:{port}/1"),
    );
    check(
        env,
        &[
            "step=\"share\"",
            "volume mybuddybook",
            "not mounted within 4s",
        ],
        &[],
    );

    // A wrong password: the volume named, nothing secret printed.
    let mut env = s.env("buddy");
    let right = env["MYBUDDY_BOOK_META_PASSWORD"].clone();
    env.insert(
        "MYBUDDY_BOOK_META_PASSWORD".into(),
        "not-the-password-4711".into(),
    );
    check(
        env,
        &[
            "volume mybuddybook",
            "MYBUDDY_BOOK_META_PASSWORD is wrong or missing",
        ],
        &["not-the-password-4711", &right],
    );

    // A Buddy-role Machine given the SpellBook's credentials refuses them,
    // and any Machine refuses bucket keys (only `share format` needs them).
    let magician = s.env("magician");
    check(
        magician.clone(),
        &[
            "MYBUDDY_SPELLBOOK_META_URL, MYBUDDY_SPELLBOOK_META_PASSWORD",
            "a Buddy-role Machine holds the SpellBook's credentials",
        ],
        &[&magician["MYBUDDY_SPELLBOOK_META_PASSWORD"]],
    );
    let mut env = s.env("buddy");
    env.insert(
        "MYBUDDY_BOOK_SECRET_KEY".into(),
        "bucket-secret-4711".into(),
    );
    check(
        env,
        &[
            "holds MYBUDDY_BOOK_SECRET_KEY",
            "bucket keys are for `supervisor share format` only",
        ],
        &["bucket-secret-4711"],
    );
}
