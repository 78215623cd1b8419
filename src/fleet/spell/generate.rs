//! The spell's second step: the new Buddy's directory, made from the
//! template's workspace and the spell's personality.

use std::fs;
use std::path::PathBuf;

use serde_json::json;

use super::{Spawn, World};
use crate::config::policy::SWARM_DIR_VAR;

/// The files of the new Buddy directory: (relative path, content).
pub fn generate(world: &World, s: &Spawn) -> Result<Vec<(PathBuf, String)>, String> {
    let id = &s.identity;
    let prefix = id.env_prefix();
    let mut files = Vec::new();
    let mut ident = serde_json::to_string_pretty(id).map_err(|e| e.to_string())?;
    ident.push('\n');
    files.push((PathBuf::from("buddy.json"), ident));
    let mut env = serde_json::Map::new();
    let mut channels = serde_json::Map::new();
    let mut config = serde_json::Map::new();
    if id.channels.telegram {
        let mut tg =
            json!({"botToken": format!("${{{prefix}_TELEGRAM_TOKEN}}"), "dmPolicy": "pairing"});
        // Its Human is let in by id; anyone else gets the pairing answer.
        if s.human_telegram_id.is_some() {
            tg["allowFrom"] = json!([format!("${{{prefix}_HUMAN_TELEGRAM_ID}}")]);
        }
        tg["groupPolicy"] = json!("allowlist");
        channels.insert("telegram".into(), tg);
    }
    if s.human_telegram_id.is_some() {
        env.insert(
            "TELEGRAM_ADMIN_ID".into(),
            json!(format!("${{{prefix}_HUMAN_TELEGRAM_ID}}")),
        );
    }
    if id.channels.whatsapp {
        channels.insert(
            "whatsapp".into(),
            json!({"sendReadReceipts": true, "dmPolicy": "allowlist", "allowFrom": [format!("${{{prefix}_HUMAN_PHONE}}")]}),
        );
    }
    if !env.is_empty() {
        config.insert("env".into(), json!({ "vars": env }));
    }
    config.insert("channels".into(), channels.into());
    // A Magician's spells are skills: the gateway loads the SpellBook's
    // spell directories (a Buddy-role gateway could not even read them).
    if id.role == crate::buddy::Role::Magician {
        config.insert(
            "skills".into(),
            json!({"load": {"extraDirs": [format!("${{{SWARM_DIR_VAR}}}/spellbook/spells")]}}),
        );
    }
    // The template enables Telegram and disables WhatsApp; say what differs.
    let mut entries = serde_json::Map::new();
    if !id.channels.telegram {
        entries.insert("telegram".into(), json!({"enabled": false}));
    }
    if id.channels.whatsapp {
        entries.insert("whatsapp".into(), json!({"enabled": true}));
    }
    if !entries.is_empty() {
        config.insert("plugins".into(), json!({"entries": entries}));
    }
    let mut cfg = serde_json::to_string_pretty(&serde_json::Value::Object(config))
        .map_err(|e| e.to_string())?;
    cfg.push('\n');
    files.push((PathBuf::from("config.json"), cfg));
    let tpl = world.template().join("workspace");
    let fill = |t: &str| {
        t.replace("{Human}", &id.human)
            .replace("{BotName}", &id.name)
    };
    // Every file the template's workspace holds (the names the gateway
    // reads), with the spell's own SOUL and IDENTITY where it gives them.
    let mut names: Vec<String> = fs::read_dir(&tpl)
        .map_err(|e| format!("{}: {e}", tpl.display()))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let from_spell = match name.as_str() {
            "SOUL.md" => s.soul.clone(),
            "IDENTITY.md" => s.identity_text.clone(),
            _ => None,
        };
        let text = match from_spell {
            Some(t) => {
                let mut t = t.trim_end().to_string();
                t.push('\n');
                t
            }
            None => fill(
                &fs::read_to_string(tpl.join(&name))
                    .map_err(|e| format!("{}: {e}", tpl.join(&name).display()))?,
            ),
        };
        files.push((PathBuf::from("workspace").join(name), text));
    }
    // No Dockerfile: a Buddy is the base image plus these files, on Fly
    // and in a local image alike (scripts/build-buddy-image).
    Ok(files)
}
