//! A spell cast with `--repo` (a workstation with a checkout) deploys
//! through the checkout's `scripts/deploy` (which runs `supervisor deploy`,
//! the Machines API path of [`crate::fleet::apply`]); this module runs it
//! and says what an operator would run.

use std::path::Path;
use std::process::Command;

use crate::fleet::spell::Spawn;

/// Runs `scripts/deploy SLUG` with the spell's secrets in its environment
/// (they reach Fly through the Machines API's secrets call, never a command
/// line).
pub fn run_script(script: &Path, s: &Spawn, slug: &str) -> Result<(), String> {
    let mut cmd = Command::new(script);
    cmd.arg(slug);
    for (k, v) in s.secrets() {
        cmd.env(k, &v.0);
    }
    match cmd.status() {
        Ok(st) if st.success() => Ok(()),
        Ok(st) => Err(format!(
            "scripts/deploy {slug} exited with {st}; a Fly app it created may remain: fly apps destroy mybuddytalk-{slug}"
        )),
        Err(e) => Err(format!("cannot run {}: {e}", script.display())),
    }
}

/// The deploy commands an operator runs, with the spell's secrets named, not shown.
pub fn operator_lines(s: &Spawn, slug: &str) -> Vec<String> {
    let mut lines: Vec<String> = s
        .secrets()
        .iter()
        .map(|(k, _)| format!("export {k}=…   # from the spell"))
        .collect();
    lines.push("export GEMINI_API_KEY=… BRAVE_API_KEY=…   # the swarm's shared keys".into());
    lines.push(format!(
        "export {}   # the swarm share's, for a {} (supervisor secrets --buddy buddies/{slug} --share)",
        crate::swarm::share::machine_secrets(s.identity.role)
            .iter()
            .map(|n| format!("{n}=…"))
            .collect::<Vec<_>>()
            .join(" "),
        s.identity.role
    ));
    lines.push(format!("scripts/deploy {slug}"));
    lines
}
