//! A loopback-only network namespace for the stand-ins (crate
//! `mybuddy-standins`) and the gateway that talks to them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A network namespace with only `lo` (up), held by a sleeping process.
pub struct NetNs {
    holder: Child,
}

impl NetNs {
    pub fn new() -> NetNs {
        let holder = Command::new("unshare")
            .args([
                "--net",
                "/bin/sh",
                "-c",
                "ip link set lo up && echo up && exec sleep 100000",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare --net");
        let mut ns = NetNs { holder };
        let mut line = String::new();
        BufReader::new(ns.holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "up", "lo did not come up");
        ns
    }

    /// `/proc/PID/ns/net`, for nsenter and setns.
    pub fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// The interfaces the namespace has (`ip -o link`): only `lo` here.
    pub fn links(&self) -> Vec<String> {
        let o = self.command("ip").args(["-o", "link"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| Some(l.split(':').nth(1)?.trim().to_string()))
            .collect()
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }
}

impl NetNs {
    /// Runs `f` on a thread that has joined this namespace (network
    /// namespaces are per thread): a client in the test reaches only what
    /// listens in here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsFd;
        let ns = std::fs::File::open(self.path()).unwrap();
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
