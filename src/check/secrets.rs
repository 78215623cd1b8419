//! No plaintext secret in the repository: every JSON and Dockerfile value
//! scanned for the shapes of tokens and keys, `${VAR}` references allowed,
//! deliberate exceptions listed in `buddies/.secrets-allow`.

use super::*;

pub(super) struct Allow {
    entries: Vec<(String, Option<String>)>,
}

impl Allow {
    fn load(repo: &Path) -> Allow {
        let text = fs::read_to_string(repo.join(ALLOW_FILE)).unwrap_or_default();
        let entries = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((f, loc)) => (f.to_string(), Some(loc.to_string())),
                None => (l.to_string(), None),
            })
            .collect();
        Allow { entries }
    }
    fn allows(&self, rel: &str, location: &str) -> bool {
        self.entries
            .iter()
            .any(|(f, loc)| f == rel && loc.as_deref().is_none_or(|l| l == location))
    }
}

pub(super) struct Shapes {
    telegram_token: Regex,
    google_key: Regex,
    phone: Regex,
    secret_key: Regex,
}

impl Shapes {
    fn new() -> Shapes {
        Shapes {
            telegram_token: Regex::new(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}").expect("regex"),
            google_key: Regex::new(r"AIza[0-9A-Za-z_-]{35}").expect("regex"),
            phone: Regex::new(r"\+\d[\d ]{7,16}\d").expect("regex"),
            secret_key: Regex::new(r"(?i)(token|api_?key|secret|password|passwd|phone|allowfrom|admin_?id|telegram_?id|chat_?id|credential)").expect("regex"),
        }
    }

    /// What a value looks like, if it looks like a secret.
    fn shape_of(&self, s: &str) -> Option<&'static str> {
        if self.telegram_token.is_match(s) {
            Some("a Telegram bot token")
        } else if self.google_key.is_match(s) {
            Some("a Google API key")
        } else if self.phone.is_match(s) {
            Some("a phone number")
        } else {
            None
        }
    }
}

/// Whether a string is nothing but `${VAR}` references.
pub(super) fn only_references(s: &str) -> bool {
    match crate::config::secrets::parse(s) {
        Ok(pieces) => {
            !pieces.is_empty()
                && pieces
                    .iter()
                    .all(|p| matches!(p, crate::config::secrets::Piece::Var(_)))
        }
        Err(_) => false,
    }
}

/// No plaintext secret anywhere under buddies/: by key name in JSON, by value
/// shape in every file. Deliberate exceptions go in buddies/.secrets-allow.
pub(super) fn scan_plaintext_secrets(repo: &Path, buddies: &Path) -> Vec<Problem> {
    let allow = Allow::load(repo);
    let shapes = Shapes::new();
    let mut out = Vec::new();
    let mut stack = vec![buddies.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                // Runtime credentials are gitignored and never checked in.
                if name != "credentials" {
                    stack.push(path);
                }
                continue;
            }
            if path == repo.join(ALLOW_FILE) {
                continue;
            }
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let rel = path
                .strip_prefix(repo)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let mut found = Vec::new();
            if name.ends_with(".json") {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    scan_json(&v, &mut Vec::new(), false, &shapes, &mut found);
                }
            } else {
                for (i, line) in text.lines().enumerate() {
                    if let Some(shape) = shapes
                        .telegram_token
                        .is_match(line)
                        .then_some("a Telegram bot token")
                        .or_else(|| {
                            shapes
                                .google_key
                                .is_match(line)
                                .then_some("a Google API key")
                        })
                    {
                        found.push((format!("line {}", i + 1), format!("looks like {shape}")));
                    }
                }
            }
            for (location, what) in found {
                if !allow.allows(&rel, &location) {
                    out.push(Problem::new(
                        &path,
                        location.clone(),
                        format!("{what}: secrets are never committed; use a ${{VAR}} reference (or list `{rel}:{location}` in {ALLOW_FILE} with the reason, if it is deliberate)"),
                    ));
                }
            }
        }
    }
    out
}

pub(super) fn scan_json(
    v: &Value,
    path: &mut Vec<PathSeg>,
    secret_key: bool,
    shapes: &Shapes,
    out: &mut Vec<(String, String)>,
) {
    match v {
        Value::String(s) => {
            if only_references(s) {
                return;
            }
            if let Some(shape) = shapes.shape_of(s) {
                out.push((json_path(path), format!("looks like {shape}")));
            } else if secret_key && !s.is_empty() {
                out.push((
                    json_path(path),
                    "a secret-looking key holds a literal value".into(),
                ));
            }
        }
        Value::Number(_) if secret_key => {
            out.push((
                json_path(path),
                "a secret-looking key holds a literal value".into(),
            ));
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(PathSeg::Index(i));
                scan_json(x, path, secret_key, shapes, out);
                path.pop();
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                path.push(PathSeg::Key(k.clone()));
                // Policy names (dmPolicy) and booleans are not secrets.
                let is_secret =
                    shapes.secret_key.is_match(k) && !k.to_lowercase().ends_with("policy");
                scan_json(x, path, secret_key || is_secret, shapes, out);
                path.pop();
            }
        }
        _ => {}
    }
}
