//! `supervisor check-config`: the whole repository, with the same code the
//! boot runs, every problem at once. A Buddy that passes here renders and
//! boots; CI learns that a Buddy is broken before Fly does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;

use crate::buddy::Identity;
use crate::config::problem::{PathSeg, Problem, json_path};
use crate::config::render;

mod buddies;
mod fly;
mod images;
mod secrets;

use buddies::*;
use fly::*;
use images::*;
use secrets::*;

/// Where deliberate exceptions to the plaintext-secret rule are listed:
/// `path[:location]  # why`, paths relative to the repository.
pub const ALLOW_FILE: &str = "buddies/.secrets-allow";
/// The base image every Buddy image must be built on.
pub const BASE_IMAGE_NAME: &str = "mybuddytalk-base";
pub const ENTRYPOINT: &str = r#"ENTRYPOINT ["/usr/local/bin/supervisor", "run"]"#;
/// Where the Buddy's persistent state is mounted (the supervisor's default).
pub const STATE_MOUNT: &str = "/data";

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub buddies: usize,
    pub problems: Vec<Problem>,
}

/// Checks the repository at `repo`.
pub fn check_repo(repo: &Path) -> Report {
    let mut problems = Vec::new();
    let buddies_dir = repo.join("buddies");
    let template = buddies_dir
        .join("_template")
        .join(crate::buddy::CONFIG_FILE);
    let template_vars = match crate::config::jsonfile::read_json_object(&template) {
        Ok(v) => crate::config::secrets::referenced_vars(&v),
        Err(p) => {
            problems.push(p);
            BTreeSet::new()
        }
    };
    let mut identities: Vec<(PathBuf, Identity)> = Vec::new();
    let mut vars_by_buddy: Vec<(String, PathBuf, BTreeSet<String>)> = Vec::new();
    let mut dirs: Vec<PathBuf> = fs::read_dir(&buddies_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    !n.starts_with('_') && !n.starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    for dir in &dirs {
        let (prepared, found) = check_buddy(dir, &template);
        problems.extend(found);
        if let Some(prepared) = prepared {
            let id = prepared.buddy.identity.clone();
            vars_by_buddy.push((
                id.slug(),
                prepared.personal_path.clone(),
                prepared.secret_vars(),
            ));
            identities.push((prepared.buddy.identity_path(), id));
        }
        problems.extend(check_buddy_leftovers(dir));
    }
    problems.extend(crate::config::workspace::check(
        &buddies_dir.join("_template/workspace"),
    ));
    problems.extend(check_unique_ids(&identities));
    problems.extend(check_whatsapp_limit(&identities));
    problems.extend(check_secret_names(&vars_by_buddy, &template_vars));
    problems.extend(check_template_vars(&template, &template_vars));
    problems.extend(scan_plaintext_secrets(repo, &buddies_dir));
    problems.extend(check_fly_toml(repo));
    problems.extend(check_machines(repo, &identities));
    problems.extend(check_base_dockerfile(repo));
    problems.extend(check_buddy_image(repo));
    // Paths relative to the repository read better in CI.
    for p in &mut problems {
        if let Ok(rel) = p.file.strip_prefix(repo) {
            p.file = rel.to_path_buf();
        }
    }
    Report {
        buddies: dirs.len(),
        problems,
    }
}

/// One Buddy alone, as the boot would take it: it renders with the
/// template (placeholder secrets exercise every `${VAR}` as the boot
/// substitutes them) and passes the policy, and its workspace holds only
/// what the gateway reads. The repository's check runs it for each Buddy;
/// a spell cast from the SpellBook runs it for the Buddy it made.
pub fn check_buddy(dir: &Path, template: &Path) -> (Option<render::Prepared>, Vec<Problem>) {
    let (prepared, mut problems) = render::prepare_all(dir, template);
    if let Some(prepared) = &prepared {
        let placeholder = |n: &str| Some(format!("placeholder-{}", n.to_lowercase()));
        let builtins = render::Builtins {
            state_dir: Path::new(STATE_MOUNT),
            gateway_dir: Path::new(render::IMAGE_GATEWAY_DIR),
            swarm_dir: Path::new(crate::swarm::IMAGE_SWARM_DIR),
        };
        if let Err(e) = prepared.substitute(builtins, Some("placeholder-token"), &placeholder) {
            problems.extend(e.items);
        }
    }
    problems.extend(crate::config::workspace::check(&dir.join("workspace")));
    (prepared, problems)
}

/// The report as text: one line per problem, then a summary line.
pub fn to_text(r: &Report) -> String {
    let mut s = String::new();
    for p in &r.problems {
        s.push_str(&p.to_string());
        s.push('\n');
    }
    s.push_str(&format!(
        "check-config: {} Buddies, {} problem{}\n",
        r.buddies,
        r.problems.len(),
        if r.problems.len() == 1 { "" } else { "s" }
    ));
    s
}
