//! The swarm share's local servers (issue 14, first part): `scripts/swarm-local`
//! starts two Redis and SeaweedFS on 127.0.0.1 only and formats both JuiceFS
//! volumes; a Buddy's configuration holds nothing of the SpellBook's; two
//! mounts of one volume in separate mount namespaces ("two Machines") see
//! each other's files at once with the cache settings the facts call for.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

struct Share {
    dir: tempfile::TempDir,
}

impl Share {
    fn up() -> Share {
        let dir = tempfile::Builder::new()
            .prefix("mybuddy-share-")
            .tempdir()
            .unwrap();
        let o = Command::new(repo().join("scripts/swarm-local"))
            .arg("up")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Share { dir }
    }

    fn env(&self, role: &str) -> BTreeMap<String, String> {
        let out = sh(Command::new(repo().join("scripts/swarm-local"))
            .args(["env", role])
            .arg(self.dir.path()));
        out.lines()
            .map(|l| {
                let (k, v) = l.strip_prefix("export ").unwrap().split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/swarm-local"))
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}

fn juicefs() -> PathBuf {
    let out = sh(&mut Command::new(repo().join("scripts/install-share")));
    PathBuf::from(out).join("bin/juicefs")
}

/// A "Machine": `juicefs mount` in the foreground in a private mount
/// namespace of its own, with the cross-Machine cache settings.
struct Mount {
    child: Child,
    ns_pid: u32,
}

impl Mount {
    fn new(meta: &str, password: &str, point: &Path, cache: &Path) -> Mount {
        fs::create_dir_all(point).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .arg(juicefs())
            .args([
                "mount",
                "--no-usage-report",
                "--no-syslog",
                "--attr-cache",
                "0",
                "--entry-cache",
                "0",
                "--dir-entry-cache",
                "0",
                "--heartbeat",
                "3s",
                "--cache-dir",
            ])
            .arg(cache)
            .arg(meta)
            .arg(point)
            .env("META_PASSWORD", password)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ns_pid = child.id();
        let m = Mount { child, ns_pid };
        let p = point.to_path_buf();
        let ready = wait_for(Duration::from_secs(30), || {
            let o = m.run(&["stat", "-c", "%i", p.to_str().unwrap()]);
            // The root of a JuiceFS volume is inode 1.
            (o.trim() == "1").then_some(())
        });
        assert!(
            ready.is_some(),
            "the volume never mounted at {}",
            point.display()
        );
        m
    }

    /// Runs a command in this Machine's mount namespace.
    fn run(&self, argv: &[&str]) -> String {
        let o = Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.ns_pid))
            .arg("--")
            .args(argv)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = wait_for(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_machines_share_mybuddybook_and_a_buddy_holds_nothing_of_the_spellbook() {
    let s = Share::up();
    // Idempotent: a second `up` finds everything running and formatted.
    let again = Command::new(repo().join("scripts/swarm-local"))
        .arg("up")
        .arg(s.dir.path())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stderr).contains("formatting"));

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
    let a = Mount::new(
        book_url,
        pw,
        &tmp.path().join("a"),
        &tmp.path().join("cache-a"),
    );
    let b = Mount::new(
        book_url,
        pw,
        &tmp.path().join("b"),
        &tmp.path().join("cache-b"),
    );
    let pa = tmp.path().join("a");
    let pb = tmp.path().join("b");
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
}
