//! Shared helpers for the integration tests, one file per subject:
//! [`fixtures`] (a copy of the repository's Buddies, marker secrets, run
//! arguments), [`process`] (the supervisor run for real, optionally as PID 1
//! of a new PID namespace, and /proc), [`gateway`] (the pinned gateway, its
//! ports and handshake), [`docker`] (static supervisor, containers), [`fly`]
//! (the recording `fly` stand-in), [`netns`] (a loopback-only network
//! namespace), [`share`] (the share's servers on loopback), [`e2e`] (a Buddy live in one, with the Telegram and Gemini
//! stand-ins). Here: what every subject uses.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub mod docker;
pub mod e2e;
pub mod fixtures;
pub mod fly;
pub mod gateway;
pub mod netns;
pub mod process;
pub mod share;

// Each test binary uses some of them.
#[allow(unused_imports)]
pub use docker::*;
#[allow(unused_imports)]
pub use e2e::*;
#[allow(unused_imports)]
pub use fixtures::*;
#[allow(unused_imports)]
pub use fly::*;
#[allow(unused_imports)]
pub use gateway::*;
#[allow(unused_imports)]
pub use netns::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use share::*;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The supervisor under test: this build's, or `MYBUDDY_TEST_SUPERVISOR`
/// (an older build, to see a new test fail on it).
pub fn supervisor() -> PathBuf {
    std::env::var_os("MYBUDDY_TEST_SUPERVISOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_supervisor")))
}

/// Copies a directory tree (test fixtures only).
/// Every file under `dir`.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

pub fn copy_tree(src: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    for e in fs::read_dir(src).unwrap().flatten() {
        let to = dest.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Waits for `f` to return Some, polling every 20 ms, up to `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command, asserting success, returning stdout.
pub fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A small deterministic pseudo-random sequence (xorshift32) for fault timing:
/// reproducible runs without a dependency.
pub fn next_random(state: &mut u32) -> u32 {
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    *state
}
