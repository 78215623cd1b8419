//! The Buddies together: ids unique, at most one WhatsApp Buddy per Human,
//! the template's variables, the secret names each Buddy asks for.

use super::*;

pub(super) fn check_unique_ids(ids: &[(PathBuf, Identity)]) -> Vec<Problem> {
    let mut seen: BTreeMap<String, &PathBuf> = BTreeMap::new();
    let mut out = Vec::new();
    for (file, id) in ids {
        if let Some(first) = seen.insert(id.slug(), file) {
            out.push(Problem::new(
                file,
                "",
                format!("id {} is also declared by {}", id.id(), first.display()),
            ));
        }
    }
    out
}

/// At most one WhatsApp Buddy per Human: WhatsApp allows one session per phone.
pub fn check_whatsapp_limit(ids: &[(PathBuf, Identity)]) -> Vec<Problem> {
    let mut by_human: BTreeMap<&str, Vec<&(PathBuf, Identity)>> = BTreeMap::new();
    for entry in ids.iter().filter(|(_, i)| i.channels.whatsapp) {
        by_human
            .entry(entry.1.human.as_str())
            .or_default()
            .push(entry);
    }
    let mut out = Vec::new();
    for (human, list) in by_human {
        if list.len() > 1 {
            let names: Vec<String> = list.iter().map(|(_, i)| i.id()).collect();
            for (file, _) in list {
                out.push(Problem::new(
                    file,
                    "channels.whatsapp",
                    format!(
                        "{human} has {} WhatsApp Buddies ({}); at most one per Human",
                        names.len(),
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    out
}

/// The template (every Buddy's, and the share's copy spells make Buddies
/// from) takes only the swarm's shared keys from the environment: a spell
/// refuses anything else, so CI does too.
pub(super) fn check_template_vars(template: &Path, vars: &BTreeSet<String>) -> Vec<Problem> {
    vars.iter()
        .filter(|v| {
            !crate::config::secrets::SHARED_KEYS.contains(&v.as_str())
                && !crate::config::render::BUILTIN_VARS.contains(&v.as_str())
        })
        .map(|v| {
            Problem::new(
                template,
                "",
                format!(
                    "${{{v}}} is not one of the swarm's shared keys ({}): the template is every Buddy's; a Buddy's own secret goes in its config.json with its prefix",
                    crate::config::secrets::SHARED_KEYS.join(", ")
                ),
            )
        })
        .collect()
}

/// Buddy-specific secrets carry the Buddy's prefix and no two Buddies share
/// one; only the template's variables are shared.
pub(super) fn check_secret_names(
    buddies: &[(String, PathBuf, BTreeSet<String>)],
    shared: &BTreeSet<String>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (slug, file, vars) in buddies {
        let prefix = format!("{}_", crate::buddy::env_prefix_of_slug(slug));
        for v in vars.iter().filter(|v| !shared.contains(*v)) {
            users.entry(v).or_default().push(slug);
            if !v.starts_with(&prefix) {
                out.push(Problem::new(
                    file,
                    "",
                    format!("secret ${{{v}}} is not specific to this Buddy: name it {prefix}... so it cannot collide with another Buddy's"),
                ));
            }
        }
    }
    for (v, slugs) in users {
        if slugs.len() > 1 {
            out.push(Problem::new(
                Path::new("buddies"),
                "",
                format!(
                    "secret ${{{v}}} is used by {}; each Buddy needs its own",
                    slugs.join(" and ")
                ),
            ));
        }
    }
    out
}
