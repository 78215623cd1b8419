//! The swarm share's local servers (issue 14, first part): `scripts/swarm-local`
//! starts two Redis and SeaweedFS on 127.0.0.1 only and formats both JuiceFS
//! volumes; a Buddy's configuration holds nothing of the SpellBook's; two
//! mounts of one volume in separate mount namespaces ("two Machines") see
//! each other's files at once with the cache settings the facts call for.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

use support::*;

#[test]
fn two_machines_share_mybuddybook_and_a_buddy_holds_nothing_of_the_spellbook() {
    let s = Share::up();
    // Idempotent: a second `up` finds everything running and formatted.
    let again = s.up_again();
    assert!(again.contains("mybuddybook: already formatted"), "{again}");
    assert!(!again.contains(": formatted"), "{again}");

    let magician = s.env("magician");
    let buddy = s.env("buddy");
    assert_eq!(magician["MYBUDDY_SHARE"], "juicefs");
    assert!(magician.contains_key("MYBUDDY_SPELLBOOK_META_URL"));
    assert!(magician.contains_key("MYBUDDY_SPELLBOOK_META_PASSWORD"));
    let spell_password = &magician["MYBUDDY_SPELLBOOK_META_PASSWORD"];
    for (k, v) in &buddy {
        assert!(
            !k.contains("SPELLBOOK"),
            "a Buddy's configuration names {k}"
        );
        assert_ne!(v, spell_password);
    }
    assert_ne!(
        magician["MYBUDDY_BOOK_META_PASSWORD"], *spell_password,
        "the two volumes share a password"
    );

    // Everything listens on loopback only.
    let listening = sh(Command::new("ss").args(["-Hltnp"]));
    for line in listening
        .lines()
        .filter(|l| l.contains("redis") || l.contains("weed"))
    {
        let local = line.split_whitespace().nth(3).unwrap_or("");
        assert!(local.starts_with("127.0.0.1:"), "not on loopback: {line}");
    }

    // The SpellBook's password does not open MyBuddyBook's metadata, nor
    // the other way round (each volume its own database and password).
    let book_url = &buddy["MYBUDDY_BOOK_META_URL"];
    let o = Command::new(juicefs())
        .args(["status", book_url])
        .env("META_PASSWORD", spell_password)
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "the SpellBook's password opened MyBuddyBook"
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains(spell_password.as_str()));
    assert!(!String::from_utf8_lossy(&o.stderr).contains(spell_password.as_str()));

    // Two Machines, one volume: what one writes the other sees at once,
    // including a write-temp-and-rename (the registry's way of writing).
    let tmp = tempfile::tempdir().unwrap();
    let pw = &buddy["MYBUDDY_BOOK_META_PASSWORD"];
    let (swarm_a, swarm_b) = (tmp.path().join("machine-a"), tmp.path().join("machine-b"));
    let pa = swarm_a.join("mybuddybook");
    let pb = swarm_b.join("mybuddybook");
    let a = ShareMount::new(book_url, pw, &pa, &tmp.path().join("cache-a"));
    let b = ShareMount::new(book_url, pw, &pb, &tmp.path().join("cache-b"));
    // `share format` gave the volume's root its group and the setgid mode.
    assert_eq!(
        a.run(&["stat", "-c", "%g %a", pa.to_str().unwrap()]).trim(),
        "10100 2770"
    );
    a.run(&[
        "sh",
        "-c",
        &format!(
            "echo 'Kazeh: green tea at 80 degrees' > {0}/tea.md && echo v1 > {0}/reg.tmp && mv {0}/reg.tmp {0}/reg.json && echo v2 > {0}/reg.tmp && mv {0}/reg.tmp {0}/reg.json",
            pa.display()
        ),
    ]);
    assert_eq!(
        b.run(&["cat", &format!("{}/tea.md", pb.display())]).trim(),
        "Kazeh: green tea at 80 degrees"
    );
    assert_eq!(
        b.run(&["cat", &format!("{}/reg.json", pb.display())])
            .trim(),
        "v2"
    );
    // Neither Machine's mount is visible on the host.
    assert!(fs::read_dir(&pa).unwrap().next().is_none());

    // `supervisor share check` inside Machine A: mounted, metadata answering
    // (two sessions: both Machines); outside it: not mounted.
    let check = |envs: &BTreeMap<String, String>, ns: Option<u32>| {
        let mut c = match ns {
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--mount=/proc/{pid}/ns/mnt"))
                    .arg("--")
                    .arg(supervisor());
                c
            }
            None => Command::new(supervisor()),
        };
        let o = c
            .args(["share", "check", "--swarm"])
            .arg(&swarm_a)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("MYBUDDY_JUICEFS", juicefs())
            .envs(envs)
            .output()
            .unwrap();
        let text =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        (o.status.code(), text)
    };
    let (code, out) = check(&buddy, Some(a.ns_pid));
    assert_eq!(code, Some(0), "{out}");
    // Both Machines' sessions (a third can linger a moment: the format's own
    // short mount, which set the root's mode, closing its session).
    let sessions: usize = out
        .split("metadata ok (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        out.contains("mybuddybook: mounted at") && sessions >= 2,
        "{out}"
    );
    assert!(!out.contains("spellbook"), "{out}");
    let (code, out) = check(&buddy, None);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("mybuddybook: NOT mounted"), "{out}");
    // A wrong password: the volume named, the cause said, nothing secret printed.
    let mut wrong = buddy.clone();
    wrong.insert(
        "MYBUDDY_BOOK_META_PASSWORD".into(),
        "not-the-password-4711".into(),
    );
    let (code, out) = check(&wrong, Some(a.ns_pid));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("volume mybuddybook: metadata at redis://127.0.0.1:"),
        "{out}"
    );
    assert!(
        !out.contains("not-the-password-4711") && !out.contains(pw.as_str()),
        "{out}"
    );
}
