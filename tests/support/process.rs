//! The supervisor run for real, directly or as PID 1 of a new PID namespace
//! (`unshare --pid --fork --mount-proc`), and what /proc says about its
//! children; fault-injection children written as shell scripts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::*;

/// A running `supervisor run`, directly or as PID 1 of a new PID namespace.
pub struct Sup {
    pub child: Child,
    pub pid1: bool,
    pub stderr: PathBuf,
    pub stdout: PathBuf,
    status: Option<ExitStatus>,
}

impl Sup {
    /// Starts `supervisor run ARGS` with exactly `env`.
    pub fn start(dir: &Path, pid1: bool, args: &[String], env: &[(String, String)]) -> Sup {
        Self::start_wrapped(dir, pid1, false, args, env)
    }

    /// Starts it in a private mount namespace with a fresh tmpfs mounted at
    /// `tmpfs` first (a real mount point for the swarm share).
    pub fn start_with_tmpfs(
        dir: &Path,
        pid1: bool,
        tmpfs: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Sup {
        let mut full = vec![
            "-c".to_string(),
            "mount -t tmpfs -o mode=0755 tmpfs \"$0\" && exec \"$@\"".to_string(),
            tmpfs.display().to_string(),
            supervisor().display().to_string(),
            "run".to_string(),
        ];
        full.extend(args.iter().cloned());
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private"]);
        if pid1 {
            cmd.args(["--pid", "--fork", "--mount-proc"]);
        }
        cmd.arg("/bin/sh").args(&full);
        Self::spawn(dir, pid1, cmd, env)
    }

    /// Spawns `cmd` (the supervisor, or what wraps it) with exactly `env`,
    /// no stdin, and its output in files under `dir`.
    fn spawn(dir: &Path, pid1: bool, mut cmd: Command, env: &[(String, String)]) -> Sup {
        let stderr = dir.join(format!("sup-{}.err", unique()));
        let stdout = dir.join(format!("sup-{}.out", unique()));
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap());
        Sup {
            child: cmd.spawn().expect("start supervisor"),
            pid1,
            stderr,
            stdout,
            status: None,
        }
    }

    /// Like `start`; `offline` runs it in a new network namespace with no
    /// route anywhere, for a gateway that would try to reach the internet.
    pub fn start_wrapped(
        dir: &Path,
        pid1: bool,
        offline: bool,
        args: &[String],
        env: &[(String, String)],
    ) -> Sup {
        Self::start_sub(dir, pid1, offline, "run", args, env)
    }

    /// Starts `supervisor run ARGS` as PID 1 of a new PID namespace inside
    /// the network namespace `netns` (where the stand-ins already serve).
    pub fn start_in_netns(
        dir: &Path,
        netns: &NetNs,
        args: &[String],
        env: &[(String, String)],
    ) -> Sup {
        // nsenter joins the net namespace and execs unshare (same pid), whose
        // forked child is the supervisor, PID 1 of its namespace.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.path()))
            .args(["--", "unshare", "--pid", "--fork", "--mount-proc"])
            .arg(supervisor())
            .arg("run")
            .args(args);
        Self::spawn(dir, true, cmd, env)
    }

    /// Starts `supervisor run ARGS` (a subreaper) inside the memory cgroup
    /// `cgroup`, with exactly `env`.
    pub fn start_in_cgroup(
        dir: &Path,
        cgroup: &MemoryCgroup,
        args: &[String],
        env: &[(String, String)],
    ) -> Sup {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
            .arg(cgroup.dir.join("cgroup.procs"))
            .arg(supervisor())
            .arg("run")
            .args(args);
        Self::spawn(dir, false, cmd, env)
    }

    /// Starts `supervisor init ARGS` (the plain init) with exactly `env`.
    pub fn start_init(dir: &Path, pid1: bool, args: &[String], env: &[(String, String)]) -> Sup {
        Self::start_sub(dir, pid1, false, "init", args, env)
    }

    fn start_sub(
        dir: &Path,
        pid1: bool,
        offline: bool,
        sub: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Sup {
        let mut cmd = Command::new("unshare");
        if offline {
            // Without --fork unshare execs: same pid. The namespace has only
            // lo, brought up (it starts down) before the supervisor execs.
            cmd.arg("--net");
        }
        if pid1 {
            cmd.args(["--pid", "--fork", "--mount-proc"]);
        }
        if offline {
            cmd.args(["/bin/sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""]);
        }
        cmd.arg(supervisor()).arg(sub).args(args);
        Self::spawn(dir, pid1, cmd, env)
    }

    /// The supervisor's pid as seen from here.
    pub fn pid(&self) -> i32 {
        if !self.pid1 {
            return self.child.id() as i32;
        }
        let unshare = self.child.id();
        wait_for(Duration::from_secs(5), || {
            let kids =
                fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
            kids.split_whitespace().next()?.parse().ok()
        })
        .expect("the supervisor inside the namespace")
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn out(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until the supervisor's log contains `needle` `n` times.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        wait_for(timeout, || {
            (self.log().matches(needle).count() >= n).then_some(())
        })
        .is_some()
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_log_count(needle, 1, timeout)
    }

    pub fn wait_out(&self, needle: &str, timeout: Duration) -> bool {
        wait_for(timeout, || self.out().contains(needle).then_some(())).is_some()
    }

    /// Waits for the exit and returns the code (128+n for a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        if self.status.is_none() {
            let child = &mut self.child;
            self.status = wait_for(timeout, || child.try_wait().ok().flatten());
        }
        self.status.map(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        })
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let pid = self.pid();
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Processes whose parent is `ppid`, with their state letter.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        if f.len() > 2 && f[1].parse::<i32>() == Ok(ppid) {
            out.push((pid, f[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

/// The zombies among `ppid`'s children that outlive `grace`. A child that
/// has just exited is a zombie until the reaper's next `waitpid`, so one
/// look at /proc can catch a zombie the reaper is about to take; a reaper
/// that misses children leaves them there for good.
pub fn lasting_zombies(ppid: i32, grace: Duration) -> Vec<(i32, char)> {
    let zombies = || -> Vec<(i32, char)> {
        children_of(ppid)
            .into_iter()
            .filter(|(_, st)| *st == 'Z')
            .collect()
    };
    wait_for(grace, || zombies().is_empty().then_some(())).map_or_else(zombies, |()| Vec::new())
}

/// A status field of /proc/<pid>/status (Uid, Groups, SigBlk, NoNewPrivs...).
pub fn proc_status(pid: i32, field: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

/// A shell script fault-injection child, written to `dir/name`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A memory cgroup of its own with a limit: cgroup v2 where the memory
/// controller is there, else v1's `memory` hierarchy. Removed on drop (its
/// processes killed first).
pub struct MemoryCgroup {
    pub dir: PathBuf,
}

impl MemoryCgroup {
    pub fn new(limit_bytes: u64) -> MemoryCgroup {
        let name = format!("mybuddy-test-{}", unique());
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_memory = fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, limit_file) = if v2_memory {
            (v2.join(&name), "memory.max")
        } else {
            (v2.join("memory").join(&name), "memory.limit_in_bytes")
        };
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        fs::write(dir.join(limit_file), limit_bytes.to_string()).unwrap();
        if !v2_memory {
            // v1 counts swap apart: without this the limit only pushes to swap.
            let _ = fs::write(
                dir.join("memory.memsw.limit_in_bytes"),
                limit_bytes.to_string(),
            );
        }
        MemoryCgroup { dir }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for p in procs.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", p]).status();
            }
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
