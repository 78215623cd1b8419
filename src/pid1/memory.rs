//! The Machine's memory, as PID 1 must see it.
//!
//! OpenClaw's gateway is known to grow to several GB within minutes
//! (openclaw#154812, #82518); on a 2 GB Machine the kernel's OOM killer then
//! picks a victim, and it may pick anything. So: the gateway's V8 heap is
//! capped for the VM's size (a heap that hits its cap ends the gateway with
//! Node's own "heap out of memory" error, which the loop restarts, instead
//! of starving the Machine); the supervisor and the share's mounts are made
//! the OOM killer's last choice (`oom_score_adj` -900, where the kernel
//! lets us lower it), the gateway its first (+500, set at its spawn); and a gateway the kernel kills for memory is told apart
//! from any other SIGKILL by the OOM-kill counter of our memory cgroup (or
//! the kernel's, on a VM where we are the only tenant), read before and
//! after.

use std::path::{Path, PathBuf};

/// The supervisor's own `oom_score_adj`, inherited by what it starts for
/// itself (the share's mounts, backups, spells): the OOM killer takes
/// anything else first. Not -1000: a supervisor that leaks must still die.
pub const SUPERVISOR_OOM_SCORE_ADJ: i32 = -900;
/// The gateway's (and its tools'): raised, which needs no privilege, so
/// the gateway is the OOM killer's first choice even where lowering our own
/// is refused (a sandbox that answers EIO to any negative value).
pub const GATEWAY_OOM_SCORE_ADJ: i32 = 500;
/// The share of the VM's memory the gateway's V8 heap may take: 1536 MB on
/// Fly's 2 GB Machine, as OpenClaw's own Fly guide sets it.
const HEAP_SHARE: (u64, u64) = (3, 4);
/// Below this a Machine is not one the gateway runs on: no cap is set
/// rather than one that could not boot it.
const MIN_VM_MB: u64 = 512;

/// `--max-old-space-size` (MB) for a VM of `vm_mb` (Fly's
/// `FLY_VM_MEMORY_MB`); None when unknown or too small to mean anything.
pub fn heap_cap_mb(vm_mb: Option<&str>) -> Option<u64> {
    let mb: u64 = vm_mb?.trim().parse().ok()?;
    (mb >= MIN_VM_MB).then(|| mb * HEAP_SHARE.0 / HEAP_SHARE.1)
}

/// `NODE_OPTIONS` with the heap cap added, unless the options already set
/// one (an operator's choice stands).
pub fn with_heap_cap(node_options: Option<&str>, cap_mb: u64) -> String {
    let existing = node_options.unwrap_or("").trim();
    if existing.contains("--max-old-space-size") || existing.contains("--max_old_space_size") {
        return existing.to_string();
    }
    let cap = format!("--max-old-space-size={cap_mb}");
    if existing.is_empty() {
        cap
    } else {
        format!("{existing} {cap}")
    }
}

/// Where the kernel counts the OOM kills that concern us.
#[derive(Debug, Clone)]
enum Counter {
    /// cgroup v2 `memory.events` (`oom_kill N`), ours and our children's.
    V2(PathBuf),
    /// cgroup v1 `memory.oom_control` (`oom_kill N`).
    V1(PathBuf),
    /// The kernel's `/proc/vmstat` (`oom_kill N`): on a Fly VM the Machine
    /// is ours alone.
    VmStat,
}

/// Tells an OOM kill from another SIGKILL: the counter's value when last
/// asked.
#[derive(Debug)]
pub struct OomWatch {
    counter: Counter,
    seen: u64,
}

impl Default for OomWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl OomWatch {
    /// Finds our memory cgroup's counter (from /proc/self/cgroup), else the
    /// kernel's.
    pub fn new() -> OomWatch {
        let counter = own_counter(Path::new("/sys/fs/cgroup")).unwrap_or(Counter::VmStat);
        let seen = read_counter(&counter).unwrap_or(0);
        OomWatch { counter, seen }
    }

    /// The OOM kills since the last call (0 when the counter cannot be
    /// read).
    pub fn new_kills(&mut self) -> u64 {
        let now = read_counter(&self.counter).unwrap_or(self.seen);
        let n = now.saturating_sub(self.seen);
        self.seen = now;
        n
    }

    /// Where it counts (for the log).
    pub fn source(&self) -> String {
        match &self.counter {
            Counter::V2(p) | Counter::V1(p) => p.display().to_string(),
            Counter::VmStat => "/proc/vmstat".into(),
        }
    }
}

/// Our memory cgroup's directory and whether it is v2 (a pure v2 mount,
/// or the hybrid layout's `unified` with the memory controller), else v1's
/// `memory` hierarchy.
fn own_memory_cgroup(root: &Path) -> Option<(PathBuf, bool)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            for base in [root.to_path_buf(), root.join("unified")] {
                let d = base.join(rel);
                if d.join("memory.events").is_file() && v2.is_none() {
                    v2 = Some((d, true));
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let d = root.join("memory").join(rel);
            if d.join("memory.oom_control").is_file() {
                return Some((d, false));
            }
        }
    }
    v2
}

fn own_counter(root: &Path) -> Option<Counter> {
    Some(match own_memory_cgroup(root)? {
        (d, true) => Counter::V2(d.join("memory.events")),
        (d, false) => Counter::V1(d.join("memory.oom_control")),
    })
}

/// The memory charged to our cgroup now (ours, the gateway's, the mounts'),
/// in bytes.
pub fn cgroup_memory_bytes() -> Option<u64> {
    // Found once: a process does not change cgroups under us, and every
    // scrape asks.
    static OWN: std::sync::OnceLock<Option<(PathBuf, bool)>> = std::sync::OnceLock::new();
    let (dir, v2) = OWN
        .get_or_init(|| own_memory_cgroup(Path::new("/sys/fs/cgroup")))
        .as_ref()?;
    let file = if *v2 {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    std::fs::read_to_string(dir.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn read_counter(c: &Counter) -> Option<u64> {
    let path = match c {
        Counter::V2(p) | Counter::V1(p) => p.as_path(),
        Counter::VmStat => Path::new("/proc/vmstat"),
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "oom_kill").then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_cap_follows_the_vm() {
        assert_eq!(heap_cap_mb(Some("2048")), Some(1536));
        assert_eq!(heap_cap_mb(Some("4096")), Some(3072));
        assert_eq!(heap_cap_mb(Some("256")), None);
        assert_eq!(heap_cap_mb(Some("lots")), None);
        assert_eq!(heap_cap_mb(None), None);
        assert_eq!(with_heap_cap(None, 1536), "--max-old-space-size=1536");
        assert_eq!(
            with_heap_cap(Some("--enable-source-maps"), 1536),
            "--enable-source-maps --max-old-space-size=1536"
        );
        assert_eq!(
            with_heap_cap(Some("--max-old-space-size=900"), 1536),
            "--max-old-space-size=900"
        );
    }
}
