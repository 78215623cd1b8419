//! A Buddy's identity, declared once in `buddies/<id>/buddy.json`.
//!
//! The id is `{Human}Buddy-{BotName}` (e.g. `RoelBuddy-Emrys`); its lowercase
//! form names the directory, the Fly Machine and, upper-cased, the prefix of
//! every Buddy-specific secret (`ROELBUDDY_EMRYS_...`), so that Buddies sharing
//! one Fly app never collide in its secret namespace.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::jsonfile;
use crate::config::problem::{Problem, Problems};

pub const IDENTITY_FILE: &str = "buddy.json";
pub const CONFIG_FILE: &str = "config.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Buddy,
    Magician,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Buddy => "buddy",
            Role::Magician => "magician",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Planned,
    Migration,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Active => "active",
            Status::Planned => "planned",
            Status::Migration => "migration",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Channels {
    #[serde(default)]
    pub telegram: bool,
    #[serde(default)]
    pub whatsapp: bool,
}

impl fmt::Display for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match (self.telegram, self.whatsapp) {
            (true, true) => "TG + WA",
            (true, false) => "TG",
            (false, true) => "WA",
            (false, false) => "-",
        };
        f.write_str(s)
    }
}

/// The content of `buddy.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub human: String,
    pub name: String,
    pub role: Role,
    pub channels: Channels,
    pub status: Status,
}

impl Identity {
    /// `RoelBuddy-Emrys`.
    pub fn id(&self) -> String {
        format!("{}Buddy-{}", self.human, self.name)
    }

    /// `roelbuddy-emrys`: directory, Fly Machine name, registry key.
    pub fn slug(&self) -> String {
        self.id().to_lowercase()
    }

    /// `ROELBUDDY_EMRYS`: prefix of every Buddy-specific secret.
    pub fn env_prefix(&self) -> String {
        env_prefix_of_slug(&self.slug())
    }

    /// The secret that, when set, overrides the auto-generated gateway token.
    pub fn gateway_token_var(&self) -> String {
        format!("{}_GATEWAY_TOKEN", self.env_prefix())
    }

    /// Checks the fields a deserializer cannot: name shapes. Every problem is
    /// returned, each naming the field.
    pub fn check(&self, file: &Path) -> Vec<Problem> {
        let mut out = Vec::new();
        for (field, value) in [("human", &self.human), ("name", &self.name)] {
            if let Err(why) = check_name_part(value) {
                out.push(Problem::new(file, field, why));
            }
        }
        out
    }
}

pub fn env_prefix_of_slug(slug: &str) -> String {
    slug.to_ascii_uppercase().replace('-', "_")
}

/// A Human's or a Buddy's name: a capitalised word of ASCII letters and digits.
/// That keeps ids safe as directory names, Fly Machine names and variable
/// prefixes: no path separators, dots, spaces or shell metacharacters.
pub fn check_name_part(value: &str) -> Result<(), String> {
    let ok_chars = value.chars().all(|c| c.is_ascii_alphanumeric());
    let first_upper = value.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    if value.is_empty() {
        Err("must not be empty".into())
    } else if value.len() > 24 {
        Err(format!(
            "{value:?} is too long ({} characters, at most 24)",
            value.len()
        ))
    } else if !ok_chars || !first_upper {
        Err(format!(
            "{value:?} must be one capitalised word of ASCII letters and digits (like \"Emrys\")"
        ))
    } else {
        Ok(())
    }
}

/// A Buddy directory: identity plus where its files are.
#[derive(Debug, Clone)]
pub struct BuddyDir {
    pub dir: PathBuf,
    pub identity: Identity,
}

impl BuddyDir {
    pub fn identity_path(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }
    pub fn workspace_path(&self) -> PathBuf {
        self.dir.join("workspace")
    }
}

/// Loads and checks `DIR/buddy.json`, including that the directory is named
/// after the id. All problems are reported together.
pub fn load(dir: &Path) -> Result<BuddyDir, Problems> {
    let path = dir.join(IDENTITY_FILE);
    let headline = format!("Buddy {} has an invalid identity", dir.display());
    let value =
        jsonfile::read_json_object(&path).map_err(|p| Problems::new(headline.clone(), vec![p]))?;
    let identity = parse_identity(&path, value).map_err(|p| Problems::new(headline.clone(), p))?;
    let mut problems = identity.check(&path);
    if problems.is_empty() {
        let expected = identity.slug();
        let actual = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
        // Inside an image the Buddy lives at a fixed path (/opt/mybuddy/buddy),
        // so only a directory under buddies/ must carry the id's name.
        let in_repo = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.parent().map(|p| p.ends_with("buddies")))
            .unwrap_or(false);
        if in_repo && actual.as_deref() != Some(expected.as_str()) {
            problems.push(Problem::new(
                &path,
                "",
                format!(
                    "the directory is named {:?} but the id {} needs {:?} (lowercased {{Human}}Buddy-{{BotName}})",
                    actual.unwrap_or_default(),
                    identity.id(),
                    expected
                ),
            ));
        }
    }
    if problems.is_empty() {
        Ok(BuddyDir {
            dir: dir.to_path_buf(),
            identity,
        })
    } else {
        Err(Problems::new(headline, problems))
    }
}

/// Field-by-field parse so that every missing or wrong field is reported.
fn parse_identity(path: &Path, value: Value) -> Result<Identity, Vec<Problem>> {
    let obj = value.as_object().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for key in obj.keys() {
        if !["human", "name", "role", "channels", "status"].contains(&key.as_str()) {
            problems.push(Problem::new(
                path,
                key.as_str(),
                "unknown field (allowed: human, name, role, channels, status)",
            ));
        }
    }
    fn field<T: serde::de::DeserializeOwned>(
        path: &Path,
        obj: &serde_json::Map<String, Value>,
        key: &str,
        hint: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<T> {
        match obj.get(key) {
            None => {
                problems.push(Problem::new(path, key, format!("missing; expected {hint}")));
                None
            }
            Some(v) => match serde_json::from_value(v.clone()) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(Problem::new(path, key, format!("{e}; expected {hint}")));
                    None
                }
            },
        }
    }
    let human: Option<String> = field(path, &obj, "human", "a name like \"Roel\"", &mut problems);
    let name: Option<String> = field(path, &obj, "name", "a name like \"Emrys\"", &mut problems);
    let role: Option<Role> = field(
        path,
        &obj,
        "role",
        "\"buddy\" or \"magician\"",
        &mut problems,
    );
    let channels: Option<Channels> = field(
        path,
        &obj,
        "channels",
        "{\"telegram\": true|false, \"whatsapp\": true|false}",
        &mut problems,
    );
    let status: Option<Status> = field(
        path,
        &obj,
        "status",
        "\"active\", \"planned\" or \"migration\"",
        &mut problems,
    );
    match (human, name, role, channels, status) {
        (Some(human), Some(name), Some(role), Some(channels), Some(status))
            if problems.is_empty() =>
        {
            Ok(Identity {
                human,
                name,
                role,
                channels,
                status,
            })
        }
        _ => Err(problems),
    }
}
