//! The spell's first step: every problem with a parsed spell at once, and no
//! secret in any message.

use std::path::Path;

use regex::Regex;

use super::{ChannelParams, Spawn, SpellError, SpellFileParsed, World};
use crate::buddy::{self, Channels, Identity, Role, Status};
use crate::config::problem::{Problem, Problems};
use crate::config::render::Secret;
use crate::swarm::{Paths, registry};

/// Validates a parsed spell: every problem at once, no secret in any message.
/// Each check below adds what it finds through `bad(location, message)`.
pub fn validate(world: &World, path: &Path, f: SpellFileParsed) -> Result<Spawn, SpellError> {
    let SpellFileParsed(f) = f;
    let p = f.parameters;
    let mut problems = Vec::new();
    let mut bad = |loc: &str, msg: String| problems.push(Problem::new(path, loc, msg));
    if f.spell != "spawn_buddy" {
        bad(
            "spell",
            format!("this is the SpawnBuddy spell; found {:?}", f.spell),
        );
    }
    if let Err(why) = buddy::check_name_part(&p.human) {
        bad("parameters.human", why);
    }
    if let Err(why) = buddy::check_name_part(&p.name) {
        bad("parameters.name", why);
    }
    let role = match p.role.as_str() {
        "buddy" => Some(Role::Buddy),
        "magician" => Some(Role::Magician),
        other => {
            bad(
                "parameters.role",
                format!("{other:?} is not a role: buddy or magician"),
            );
            None
        }
    };
    let ch = &p.channels;
    if !ch.telegram && !ch.whatsapp {
        bad(
            "parameters.channels",
            "a Buddy needs at least one channel (telegram or whatsapp)".into(),
        );
    }
    check_channels(ch, &mut bad);
    let identity = role.map(|role| Identity {
        human: p.human.clone(),
        name: p.name.clone(),
        role,
        channels: Channels {
            telegram: ch.telegram,
            whatsapp: ch.whatsapp,
        },
        status: Status::Planned,
    });
    if let Some(id) = &identity
        && id.env_prefix().starts_with("MYBUDDY_")
    {
        // Its secrets would be named like the supervisor's own settings
        // (MYBUDDY_BOOK_META_PASSWORD...).
        bad(
            "parameters.human",
            format!(
                "{} would give the Buddy's secrets the prefix {}, which the supervisor's own settings use; choose another name",
                id.id(),
                id.env_prefix()
            ),
        );
    }
    if let Some(id) = &identity {
        let reg = registry::read(&Paths::new(world.swarm).book()).unwrap_or_default();
        check_name_free(world, id, &reg, &mut bad);
        if id.channels.whatsapp {
            check_whatsapp_slot(world, id, &reg, &mut bad);
        }
    }
    if !problems.is_empty() {
        return Err(SpellError::Invalid(Problems::new(
            "the spell cannot be cast",
            problems,
        )));
    }
    let identity = identity.expect("validated");
    let secret = |s: &Option<String>| s.as_ref().map(|v| Secret(v.trim().replace([' '], "")));
    Ok(Spawn {
        telegram_token: secret(&ch.telegram_token),
        whatsapp_phone: secret(&ch.whatsapp_phone),
        human_telegram_id: secret(&ch.human_telegram_id),
        soul: p.personality.soul,
        identity_text: p.personality.identity,
        identity,
    })
}

/// The channels' secrets: there when the channel is on, absent when off,
/// and shaped like what they claim to be (never echoed).
fn check_channels(ch: &ChannelParams, bad: &mut impl FnMut(&str, String)) {
    let token_re = Regex::new(r"^\d{6,12}:[A-Za-z0-9_-]{30,}$").expect("regex");
    let phone_re = Regex::new(r"^\+[1-9]\d{7,14}$").expect("regex");
    match (&ch.telegram_token, ch.telegram) {
        (Some(t), true) if !token_re.is_match(t.trim()) => bad(
            "parameters.channels.telegram_token",
            "is not a Telegram bot token (digits, a colon, then at least 30 letters, digits, - or _: ask BotFather)".into(),
        ),
        (None, true) => bad("parameters.channels.telegram_token", "telegram is on: the bot token from BotFather is needed".into()),
        (Some(_), false) => bad("parameters.channels.telegram_token", "given but telegram is off".into()),
        _ => {}
    }
    match (&ch.whatsapp_phone, ch.whatsapp) {
        (Some(ph), true) if !phone_re.is_match(&ph.replace([' ', '-'], "")) => bad(
            "parameters.channels.whatsapp_phone",
            "is not a phone number in international format (+ country code and number, like +31…)"
                .into(),
        ),
        (None, true) => bad(
            "parameters.channels.whatsapp_phone",
            "whatsapp is on: the Human's phone number is needed".into(),
        ),
        (Some(_), false) => bad(
            "parameters.channels.whatsapp_phone",
            "given but whatsapp is off".into(),
        ),
        _ => {}
    }
    if let Some(id) = &ch.human_telegram_id
        && (!id.trim().chars().all(|c| c.is_ascii_digit()) || id.trim().is_empty())
    {
        bad(
            "parameters.channels.human_telegram_id",
            "must be the Human's numeric Telegram user id".into(),
        );
    }
}

/// A new Buddy's name is free in the repository and in the registry (a
/// `planned` entry or a half-made directory of an earlier cast is its own).
fn check_name_free(
    world: &World,
    id: &Identity,
    reg: &registry::Registry,
    bad: &mut impl FnMut(&str, String),
) {
    let slug = id.slug();
    if world.record(&slug) == super::Record::Done {
        bad(
            "parameters.name",
            format!(
                "{} already exists (buddies/{slug}); choose another name",
                id.id()
            ),
        );
    } else if reg
        .buddies
        .get(&slug)
        .is_some_and(|e| e.status != Status::Planned)
    {
        bad(
            "parameters.name",
            format!(
                "{} is already registered in the swarm; choose another name",
                id.id()
            ),
        );
    }
}

/// One WhatsApp Buddy per Human, across the repository and the registry.
fn check_whatsapp_slot(
    world: &World,
    id: &Identity,
    reg: &registry::Registry,
    bad: &mut impl FnMut(&str, String),
) {
    let slug = id.slug();
    let mut holders: Vec<String> = world
        .repo_identities()
        .into_iter()
        .filter(|o| o.human == id.human && o.channels.whatsapp && o.slug() != slug)
        .map(|o| o.id())
        .collect();
    holders.extend(
        reg.buddies
            .values()
            .filter(|e| e.human == id.human && e.channels.whatsapp && e.id.to_lowercase() != slug)
            .map(|e| e.id.clone()),
    );
    holders.sort();
    holders.dedup();
    if !holders.is_empty() {
        bad(
            "parameters.channels.whatsapp",
            format!(
                "{} already has a WhatsApp Buddy ({}); at most one per Human",
                id.human,
                holders.join(", ")
            ),
        );
    }
}
