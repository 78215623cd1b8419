//! Docker: the static supervisor for images without libc, and containers
//! removed when dropped.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::*;

/// The supervisor built static (for images without libc): from scripts/test,
/// or built here into its own target dir.
pub fn static_supervisor() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("MYBUDDY_STATIC_SUPERVISOR") {
            return PathBuf::from(p);
        }
        let path = sh(&mut Command::new(repo().join("scripts/build-static")));
        PathBuf::from(path.trim())
    })
    .clone()
}

/// A container removed when dropped.
pub struct Container(pub String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

impl Container {
    pub fn logs(&self) -> String {
        let o = Command::new("docker")
            .args(["logs", &self.0])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }
    pub fn exit_code(&self) -> i32 {
        sh(Command::new("docker").args(["inspect", "-f", "{{.State.ExitCode}}", &self.0]))
            .parse()
            .unwrap()
    }
    pub fn wait_logs(&self, needle: &str, timeout: Duration) -> bool {
        wait_for(timeout, || self.logs().contains(needle).then_some(())).is_some()
    }
}
