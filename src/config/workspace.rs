//! A Buddy's workspace: the files the gateway reads, under the names it
//! reads them by.
//!
//! OpenClaw injects a fixed set of bootstrap files into every system prompt
//! and matches their names case-sensitively: `SOUL.MD` is never read (it
//! then writes its own generic `SOUL.md` beside it). The memory tools index
//! `MEMORY.md` and `memory/*.md`; skills are `skills/<name>/SKILL.md`. So a
//! workspace in the repository holds only those names ([`check`]), and a
//! volume written under the old upper-case names is renamed once
//! ([`migrate`]), never overwriting what the Buddy wrote since.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::problem::Problem;
use crate::untrusted::{Dir, Kind};

/// Injected into the system prompt of every turn, in this order.
pub const BOOTSTRAP_FILES: [&str; 7] = [
    "AGENTS.md",
    "SOUL.md",
    "TOOLS.md",
    "IDENTITY.md",
    "USER.md",
    "HEARTBEAT.md",
    "BOOTSTRAP.md",
];
/// Indexed by the memory tools (with `memory/*.md`), not injected.
pub const MEMORY_FILE: &str = "MEMORY.md";
pub const MEMORY_DIR: &str = "memory";
pub const SKILLS_DIR: &str = "skills";

/// Every top-level file name the gateway reads.
pub fn read_names() -> impl Iterator<Item = &'static str> {
    BOOTSTRAP_FILES.iter().copied().chain([MEMORY_FILE])
}

/// The name the gateway reads for `name` if they differ only in case.
fn read_name_for(name: &str) -> Option<&'static str> {
    read_names().find(|n| n.eq_ignore_ascii_case(name) && *n != name)
}

/// Every entry of a workspace in the repository the gateway would never
/// read, each with how to fix it.
pub fn check(workspace: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(workspace) else {
        return out;
    };
    let mut names: Vec<(String, bool)> = entries
        .flatten()
        .map(|e| {
            let dir = e.file_type().is_ok_and(|t| t.is_dir());
            (e.file_name().to_string_lossy().into_owned(), dir)
        })
        .collect();
    names.sort();
    let fail = |out: &mut Vec<Problem>, path: PathBuf, msg: String| {
        out.push(Problem::new(&path, "", msg));
    };
    for (name, is_dir) in names {
        let path = workspace.join(&name);
        if is_dir {
            match name.as_str() {
                MEMORY_DIR => out.extend(check_memory_dir(&path)),
                SKILLS_DIR => out.extend(check_skills_dir(&path)),
                _ => fail(
                    &mut out,
                    path,
                    format!(
                        "the gateway never reads a directory {name:?} in the workspace: only {MEMORY_DIR}/ (memory notes) and {SKILLS_DIR}/ (skills); move or remove it"
                    ),
                ),
            }
        } else if read_names().any(|n| n == name) {
        } else if let Some(right) = read_name_for(&name) {
            fail(
                &mut out,
                path,
                format!(
                    "the gateway reads {right}, not {name} (names are case-sensitive): rename it to {right}"
                ),
            );
        } else {
            fail(
                &mut out,
                path,
                format!(
                    "the gateway never reads {name}: a workspace holds {} and {MEMORY_FILE}; put notes in {MEMORY_DIR}/*.md",
                    BOOTSTRAP_FILES.join(", ")
                ),
            );
        }
    }
    out
}

fn check_memory_dir(dir: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".md") {
            out.push(Problem::new(
                &e.path(),
                "",
                format!("the memory tools index only {MEMORY_DIR}/*.md: rename {name} to end in .md, or remove it"),
            ));
        }
    }
    out
}

fn check_skills_dir(dir: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.path().join("SKILL.md").is_file() {
            out.push(Problem::new(
                &e.path(),
                "",
                "a skill is a directory holding SKILL.md (front matter: name, description); this one has none",
            ));
        }
    }
    out
}

/// What [`migrate`] did to a volume's workspace.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migration {
    /// Old name → the name the gateway reads.
    pub renamed: Vec<(String, String)>,
    /// Both names held text the Buddy may have written: nothing was touched.
    pub kept_both: Vec<(String, String)>,
}

/// Renames the old upper-case names (`SOUL.MD`...) on a volume to the ones
/// the gateway reads, where no such file exists yet. Where one does, it is
/// replaced only if it still holds exactly what Clawdbot writes into an
/// empty workspace (its generic template, which it wrote beside ours):
/// anything else may be the Buddy's own words, and both stay.
pub fn migrate(workspace: &Dir) -> io::Result<Migration> {
    let mut m = Migration::default();
    let mut old: Vec<(String, &'static str)> = workspace
        .entries()?
        .into_iter()
        .filter(|e| e.kind == Some(Kind::File))
        .filter_map(|e| {
            let name = e.name.to_string_lossy().into_owned();
            read_name_for(&name).map(|right| (name, right))
        })
        .collect();
    old.sort();
    for (name, right) in old {
        let replace = match workspace.read(right, MAX_PERSONA_BYTES) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            // A link or FIFO the agent left at the right name: not the
            // Buddy's words; the old file takes its place.
            Err(e) if crate::untrusted::is_planted(&e) => true,
            Err(e) => return Err(e),
            Ok(bytes) => is_generic_template(right, &bytes),
        };
        if replace {
            // rename(2) replaces atomically: no moment without the file.
            workspace.rename(&name, right)?;
            m.renamed.push((name, right.to_string()));
        } else {
            m.kept_both.push((name, right.to_string()));
        }
    }
    Ok(m)
}

/// Larger than any persona file: not read whole (a link to /dev/zero the
/// agent left must not exhaust the supervisor's memory).
const MAX_PERSONA_BYTES: u64 = 16 << 20;

/// SHA-256 of the files Clawdbot 2026.1.24-3 writes into a workspace that
/// lacks them, at its first agent turn (measured: tests/fixtures/kazeh-vps
/// holds them). Files with these exact bytes are the gateway's, not the
/// Buddy's. (OpenClaw writes none: the state step seeds every name first.)
const GENERIC_TEMPLATES: &[(&str, &str)] = &[
    (
        "AGENTS.md",
        "e9e4308a75acd28fe2018925d95a31ad586697c9633ebb7501462e5c2b6bcf29",
    ),
    (
        "SOUL.md",
        "4b4deccd437b1efb662e0a1591730791171a640a717060a6dc9c4528f656bef6",
    ),
    (
        "BOOTSTRAP.md",
        "881c4c15b27b67eb93cbfa525b80900dd720fe301d8e8bd430184a39bdc49df6",
    ),
    (
        "IDENTITY.md",
        "b71463fdacf81190f687bbb9766623f5d9f4c6c5a62e0337227eb7cca0a3b302",
    ),
    (
        "HEARTBEAT.md",
        "a561d649c695d01d97b6b9d025517db7f51566267b4a67d94d8a6b3a91b733ae",
    ),
    (
        "TOOLS.md",
        "1dfcc57c8e42ca7ee69bf69a4b64a12ea20c80451f0e3fa05b3de2a9bdfb5c98",
    ),
    (
        "USER.md",
        "ecf39e1d961bb6a7f69e290526e0025b9a406fedd5ae287618ecc4c1d07622a1",
    ),
];

/// Removes the gateway's own generic files where the image ships the
/// Buddy's version, so seeding puts ours in their place, and its generic
/// BOOTSTRAP.md (a first-run "who am I?" ritual for a Buddy that has long
/// known). Returns the names.
pub fn drop_generic(workspace: &Dir, image_workspace: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for name in BOOTSTRAP_FILES {
        if name != "BOOTSTRAP.md" && !image_workspace.join(name).is_file() {
            continue;
        }
        match workspace.read(name, MAX_PERSONA_BYTES) {
            Ok(bytes) if is_generic_template(name, &bytes) => {
                workspace.unlink(name)?;
                out.push(name.to_string());
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // A link, FIFO or giant: left alone (the seed step moves a
            // non-file aside), never read.
            Err(e) if crate::untrusted::is_planted(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn is_generic_template(name: &str, bytes: &[u8]) -> bool {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    GENERIC_TEMPLATES
        .iter()
        .any(|(n, h)| *n == name && *h == hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_names_are_renamed_once_and_the_buddys_words_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let w = d.path();
        fs::write(w.join("SOUL.MD"), "our soul").unwrap();
        fs::write(w.join("USER.MD"), "old user").unwrap();
        fs::write(w.join("USER.md"), "the Buddy rewrote this").unwrap();
        fs::write(w.join("notes.txt"), "left alone").unwrap();
        let m = migrate(&Dir::open(w).unwrap()).unwrap();
        assert_eq!(m.renamed, [("SOUL.MD".to_string(), "SOUL.md".to_string())]);
        assert_eq!(
            m.kept_both,
            [("USER.MD".to_string(), "USER.md".to_string())]
        );
        assert_eq!(fs::read_to_string(w.join("SOUL.md")).unwrap(), "our soul");
        assert!(!w.join("SOUL.MD").exists());
        assert_eq!(
            fs::read_to_string(w.join("USER.md")).unwrap(),
            "the Buddy rewrote this"
        );
        assert!(w.join("USER.MD").exists() && w.join("notes.txt").exists());
        // Twice is once.
        assert_eq!(
            migrate(&Dir::open(w).unwrap()).unwrap().renamed,
            Vec::<(String, String)>::new()
        );
    }

    #[test]
    fn check_names_what_the_gateway_would_never_read() {
        let d = tempfile::tempdir().unwrap();
        let w = d.path();
        for f in ["SOUL.md", "MEMORY.md", "IDENTITY.MD", "notes.txt"] {
            fs::write(w.join(f), "x").unwrap();
        }
        fs::create_dir_all(w.join("memory")).unwrap();
        fs::write(w.join("memory/2026-12-01.md"), "x").unwrap();
        fs::write(w.join("memory/raw.json"), "x").unwrap();
        fs::create_dir_all(w.join("skills/empty")).unwrap();
        let p: Vec<String> = check(w).iter().map(|p| p.to_string()).collect();
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].contains("IDENTITY.MD") && p[0].contains("rename it to IDENTITY.md"));
        assert!(p[1].contains("raw.json"));
        assert!(p[2].contains("notes.txt") && p[2].contains("never reads"));
        assert!(p[3].contains("skills/empty"));
    }
}
