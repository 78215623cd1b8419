//! `${VAR}` references in config values: finding them, substituting them from
//! the environment, escaping the result for the gateway, and redacting it.
//!
//! The grammar is exactly the gateway's own (Clawdbot `config/env-substitution`):
//! `${NAME}` with NAME matching `[A-Z_][A-Z0-9_]*` is a reference, `$${NAME}` is
//! a literal `${NAME}`, and any other `$` is literal. Neither the `envsubst`
//! crate (leaves a missing variable in place, refuses values with `$`, `{`, `}`)
//! nor `subst` (also expands `$NAME` and treats `\` as an escape, so it would
//! change values the gateway keeps literally) parses this grammar, so the
//! scanner is ours; it works per JSON string value, never on serialized text,
//! so a substituted value is data and cannot break the JSON around it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use crate::config::problem::{PathSeg, Problem, json_path};

/// What redacted output shows instead of a secret.
/// The swarm's shared keys: the only `${VAR}`s the Buddy template may use
/// besides the renderer's own, and the only ones of the caster's
/// environment a spell passes to a new Buddy's app (with the Buddy's own
/// prefixed secrets). check-config holds the template to it.
pub const SHARED_KEYS: [&str; 2] = ["GEMINI_API_KEY", "BRAVE_API_KEY"];

pub const REDACTED: &str = "***";

pub fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Literal(String),
    Var(&'a str),
}

/// Splits a string value into literal text and variable references. A `${`
/// that is neither a reference nor an escape is refused: the gateway would keep
/// it literally, which for a mistyped `${bot_token}` means sending that text as
/// the token.
pub fn parse(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        if bytes[i] != b'$' {
            let ch = s[i..].chars().next().unwrap_or_default();
            lit.push(ch);
            i += ch.len_utf8();
            continue;
        }
        // `$${NAME}`: a literal `${NAME}`.
        if s[i..].starts_with("$${")
            && let Some(name) = braced_name(s, i + 3)
            && is_var_name(name)
        {
            lit.push_str("${");
            lit.push_str(name);
            lit.push('}');
            i += 3 + name.len() + 1;
            continue;
        }
        if s[i..].starts_with("${") {
            match braced_name(s, i + 2) {
                Some(name) if is_var_name(name) => {
                    if !lit.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Var(name));
                    i += 2 + name.len() + 1;
                    continue;
                }
                Some(name) => {
                    return Err(format!(
                        "\"${{{name}}}\" is not a valid variable reference: names are UPPER_CASE letters, digits and _ (write \"$${{\" for a literal \"${{\")"
                    ));
                }
                None => {
                    return Err(
                        "\"${\" without a closing \"}\" (write \"$${\" for a literal \"${\")"
                            .into(),
                    );
                }
            }
        }
        lit.push('$');
        i += 1;
    }
    if !lit.is_empty() {
        pieces.push(Piece::Literal(lit));
    }
    Ok(pieces)
}

fn braced_name(s: &str, start: usize) -> Option<&str> {
    let rest = s.get(start..)?;
    rest.find('}').map(|end| &rest[..end])
}

/// Escapes a literal value so that the gateway's own substitution gives back
/// exactly `s`: every `${NAME}` it would expand gets one more `$`.
pub fn escape_for_gateway(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with("${")
            && let Some(name) = braced_name(s, i + 2)
            && is_var_name(name)
        {
            out.push_str("$${");
            out.push_str(name);
            out.push('}');
            i += 2 + name.len() + 1;
            continue;
        }
        let ch = s[i..].chars().next().unwrap_or_default();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// What the gateway reads from a value we wrote, by the gateway's own rules
/// (a transcription of Clawdbot's `substituteString`); None if the gateway
/// would expand a reference in it. Proves that escaping keeps secrets literal.
pub fn gateway_unescape(value: &str) -> Option<String> {
    let chars: Vec<char> = value.chars().collect();
    let find = |start: usize| -> Option<(usize, String)> {
        let end = (start..chars.len()).find(|&j| chars[j] == '}')?;
        Some((end, chars[start..end].iter().collect()))
    };
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        let after = chars.get(i + 2).copied();
        if next == Some('$')
            && after == Some('{')
            && let Some((end, name)) = find(i + 3).filter(|(_, n)| is_var_name(n))
        {
            out.push_str(&format!("${{{name}}}"));
            i = end + 1;
            continue;
        }
        if next == Some('{') && find(i + 2).is_some_and(|(_, n)| is_var_name(&n)) {
            return None;
        }
        out.push('$');
        i += 1;
    }
    Some(out)
}

/// A value a reference resolves to.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub value: String,
    /// Redacted in any output meant for humans.
    pub secret: bool,
}

/// Where a JSON path's value came from (template or personal config).
pub type Provenance<'a> = dyn Fn(&[PathSeg]) -> PathBuf + 'a;

/// The result of substituting a whole config.
#[derive(Debug, Clone)]
pub struct Substituted {
    /// What the gateway reads: substituted and escaped.
    pub rendered: Value,
    /// The same with every value that holds a secret replaced by `***`.
    pub redacted: Value,
}

/// Substitutes every string value of `config`. Every missing variable and
/// every malformed reference is reported, each with its file and JSON path.
pub fn substitute(
    config: &Value,
    lookup: &dyn Fn(&str) -> Option<Resolved>,
    provenance: &Provenance<'_>,
) -> Result<Substituted, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut path = Vec::new();
    let (rendered, redacted) = walk(config, lookup, provenance, &mut path, &mut problems);
    if problems.is_empty() {
        Ok(Substituted { rendered, redacted })
    } else {
        Err(problems)
    }
}

fn walk(
    v: &Value,
    lookup: &dyn Fn(&str) -> Option<Resolved>,
    provenance: &Provenance<'_>,
    path: &mut Vec<PathSeg>,
    problems: &mut Vec<Problem>,
) -> (Value, Value) {
    match v {
        Value::String(s) => {
            let file = || provenance(path);
            let pieces = match parse(s) {
                Ok(p) => p,
                Err(why) => {
                    problems.push(Problem::new(&file(), json_path(path), why));
                    return (v.clone(), v.clone());
                }
            };
            let mut out = String::new();
            let mut secret = false;
            for piece in pieces {
                match piece {
                    Piece::Literal(l) => out.push_str(&l),
                    Piece::Var(name) => match lookup(name) {
                        Some(r) if !r.value.is_empty() => {
                            secret |= r.secret;
                            out.push_str(&r.value);
                        }
                        Some(_) => problems.push(Problem::new(
                            &file(),
                            json_path(path),
                            format!("${{{name}}} is set but empty; give it a value"),
                        )),
                        None => problems.push(Problem::new(
                            &file(),
                            json_path(path),
                            format!(
                                "${{{name}}} is not set; set it in the environment (on Fly: fly secrets set {name}=...)"
                            ),
                        )),
                    },
                }
            }
            let redacted = if secret {
                Value::String(REDACTED.into())
            } else {
                Value::String(out.clone())
            };
            (Value::String(escape_for_gateway(&out)), redacted)
        }
        Value::Array(items) => {
            let mut r = Vec::with_capacity(items.len());
            let mut d = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.push(PathSeg::Index(i));
                let (a, b) = walk(item, lookup, provenance, path, problems);
                path.pop();
                r.push(a);
                d.push(b);
            }
            (Value::Array(r), Value::Array(d))
        }
        Value::Object(map) => {
            let mut r = serde_json::Map::new();
            let mut d = serde_json::Map::new();
            for (k, item) in map {
                path.push(PathSeg::Key(k.clone()));
                let (a, b) = walk(item, lookup, provenance, path, problems);
                path.pop();
                r.insert(k.clone(), a);
                d.insert(k.clone(), b);
            }
            (Value::Object(r), Value::Object(d))
        }
        other => (other.clone(), other.clone()),
    }
}

/// Every variable referenced anywhere in `config`, sorted, without duplicates.
/// Malformed references are skipped here; `substitute` reports them.
pub fn referenced_vars(config: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    fn visit(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) => {
                if let Ok(pieces) = parse(s) {
                    for p in pieces {
                        if let Piece::Var(name) = p {
                            out.insert(name.to_string());
                        }
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| visit(x, out)),
            Value::Object(m) => m.values().for_each(|x| visit(x, out)),
            _ => {}
        }
    }
    visit(config, &mut out);
    out
}

/// Reads an env file: `NAME=value` per line, `#` comments and blank lines
/// ignored, the value taken verbatim up to the end of the line (no quoting, so
/// a secret with quotes or `$` needs no escaping). Values are never shown in
/// an error: only the line number.
pub fn read_env_file(
    path: &std::path::Path,
) -> Result<std::collections::BTreeMap<String, String>, Problem> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Problem::new(path, "", format!("cannot read the env file: {e}")))?;
    let mut out = std::collections::BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, value)) = trimmed.split_once('=') else {
            return Err(Problem::new(
                path,
                format!("line {}", i + 1),
                "expected NAME=value",
            ));
        };
        let name = name.trim().trim_start_matches("export ").trim();
        if !is_var_name(name) {
            return Err(Problem::new(
                path,
                format!("line {}", i + 1),
                "the name must be UPPER_CASE letters, digits and _",
            ));
        }
        out.insert(name.to_string(), value.to_string());
    }
    Ok(out)
}

/// How the swarm share's two volumes name their settings
/// (`MYBUDDY_BOOK_…`, `MYBUDDY_SPELLBOOK_…`).
pub const SHARE_INFIXES: [&str; 2] = ["BOOK", "SPELLBOOK"];

/// The per-volume settings, as in `MYBUDDY_BOOK_META_URL`.
pub const SHARE_SETTINGS: [&str; 5] = [
    "META_URL",
    "META_PASSWORD",
    "BUCKET",
    "ACCESS_KEY",
    "SECRET_KEY",
];

/// Whether `name` is one of the swarm share's settings (`MYBUDDY_SHARE`,
/// `MYBUDDY_<V>_META_URL`, `_META_PASSWORD`, `_BUCKET`, `_ACCESS_KEY`,
/// `_SECRET_KEY`): the supervisor's and its mounts' alone, never a
/// gateway's, so a Buddy's config may not name one.
pub fn is_share_setting(name: &str) -> bool {
    name == "MYBUDDY_SHARE"
        || SHARE_INFIXES.iter().any(|infix| {
            SHARE_SETTINGS
                .iter()
                .any(|what| name == format!("MYBUDDY_{infix}_{what}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_values_read_back_exactly() {
        let cases = [
            "plain",
            "${OTHER}",
            "$${OTHER}",
            "$$${OTHER}",
            "a${B}c${D}",
            "${lower}",
            "${",
            "$",
            "$$",
            "}${A",
            "quote\" back\\slash\nnewline ${X} é ${Y_2}",
            "${A}}",
            "${{A}}",
        ];
        for c in cases {
            assert_eq!(
                gateway_unescape(&escape_for_gateway(c)).as_deref(),
                Some(c),
                "case {c:?}"
            );
        }
    }

    #[test]
    fn parse_follows_gateway_grammar() {
        assert_eq!(
            parse("a${B}c").unwrap(),
            vec![
                Piece::Literal("a".into()),
                Piece::Var("B"),
                Piece::Literal("c".into())
            ]
        );
        assert_eq!(parse("$${B}").unwrap(), vec![Piece::Literal("${B}".into())]);
        assert_eq!(
            parse("$5 and $").unwrap(),
            vec![Piece::Literal("$5 and $".into())]
        );
        assert!(parse("${bot_token}").unwrap_err().contains("UPPER_CASE"));
        assert!(parse("x ${OPEN").unwrap_err().contains("closing"));
    }

    #[test]
    fn var_names() {
        assert!(is_var_name("A"));
        assert!(is_var_name("_A1"));
        assert!(!is_var_name("1A"));
        assert!(!is_var_name(""));
        assert!(!is_var_name("a"));
        assert!(!is_var_name("A-B"));
    }
}
