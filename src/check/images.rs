//! The Dockerfiles: the base image's entrypoint and state mount, each
//! Buddy's built on it and carrying only its files, no test-only variable.

use super::*;

/// The Dockerfile lines after joining `\` continuations.
pub(super) fn dockerfile_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if cur.is_empty() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            start = i + 1;
        }
        if let Some(l) = line.strip_suffix('\\') {
            cur.push_str(l);
            cur.push(' ');
        } else {
            cur.push_str(line);
            out.push((start, std::mem::take(&mut cur)));
        }
    }
    out
}

/// Flags of `supervisor run` for tests and offline runs only: no
/// deployment sets them (the supervisor also refuses them on a Fly Machine).
pub const TEST_ONLY_ENV: &[&str] = &["MYBUDDY_CONFIG_OVERLAY", "MYBUDDY_GATEWAY_ENV"];

/// ENV (or ARG) lines of a Dockerfile that set a test-only variable.
pub(super) fn test_only_env_lines(path: &Path, lines: &[(usize, String)]) -> Vec<Problem> {
    let mut out = Vec::new();
    for (n, l) in lines {
        let (instr, rest) = l.split_once(' ').unwrap_or((l.as_str(), ""));
        if !matches!(instr.to_ascii_uppercase().as_str(), "ENV" | "ARG") {
            continue;
        }
        for name in TEST_ONLY_ENV {
            let set = rest
                .split_whitespace()
                .any(|w| w == *name || w.starts_with(&format!("{name}=")));
            if set {
                out.push(Problem::new(path, format!("line {n}"), format!("sets {name}: a test-only flag (stand-ins on loopback); no image may carry it")));
            }
        }
    }
    out
}

pub(super) fn check_buddy_dockerfile(dir: &Path) -> Vec<Problem> {
    let path = dir.join("Dockerfile");
    let slug = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let Ok(text) = fs::read_to_string(&path) else {
        return vec![Problem::new(
            &path,
            "",
            "missing: every Buddy needs a Dockerfile FROM the base image (see buddies/_template or spawn)",
        )];
    };
    let lines = dockerfile_lines(&text);
    let mut out = Vec::new();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut from_ok = None;
    for (n, l) in &lines {
        let (instr, rest) = l.split_once(' ').unwrap_or((l.as_str(), ""));
        let rest = rest.trim();
        match instr.to_ascii_uppercase().as_str() {
            "ARG" => {
                if let Some((k, v)) = rest.split_once('=') {
                    args.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
            "FROM" if from_ok.is_none() => {
                let image = rest.split_whitespace().next().unwrap_or("");
                let resolved = image
                    .strip_prefix("${")
                    .and_then(|s| s.strip_suffix('}'))
                    .or_else(|| image.strip_prefix('$'))
                    .and_then(|a| args.get(a).cloned())
                    .unwrap_or_else(|| image.to_string());
                from_ok = Some(resolved.contains(BASE_IMAGE_NAME));
                if from_ok == Some(false) {
                    out.push(Problem::new(&path, format!("line {n}"), format!("FROM {image} is not the base image ({BASE_IMAGE_NAME}); Buddies build on it")));
                }
            }
            "ENTRYPOINT" if l.as_str() != ENTRYPOINT => {
                out.push(Problem::new(
                    &path,
                    format!("line {n}"),
                    format!(
                        "the ENTRYPOINT must stay the base image's `{ENTRYPOINT}`; remove this line"
                    ),
                ));
            }
            "COPY" | "ADD" => {
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                for src in words.iter().take(words.len().saturating_sub(1)) {
                    if !src.starts_with(&format!("buddies/{slug}/")) || src.contains("credentials")
                    {
                        out.push(Problem::new(&path, format!("line {n}"), format!("copies {src}: a Buddy image gets only buddies/{slug}/ (buddy.json, config.json, workspace/), never credentials")));
                    }
                }
            }
            _ => {}
        }
    }
    if from_ok.is_none() {
        out.push(Problem::new(&path, "", "no FROM line"));
    }
    out.extend(test_only_env_lines(&path, &lines));
    out
}

pub(super) fn check_base_dockerfile(repo: &Path) -> Vec<Problem> {
    let path = repo.join("Dockerfile");
    let Ok(text) = fs::read_to_string(&path) else {
        return vec![Problem::new(
            &path,
            "",
            "missing: the base image's Dockerfile",
        )];
    };
    let lines = dockerfile_lines(&text);
    let mut out = test_only_env_lines(&path, &lines);
    let last_entry = lines
        .iter()
        .rev()
        .find(|(_, l)| l.to_ascii_uppercase().starts_with("ENTRYPOINT"));
    if last_entry.map(|(_, l)| l.as_str()) != Some(ENTRYPOINT) {
        out.push(Problem::new(
            &path,
            last_entry
                .map(|(n, _)| format!("line {n}"))
                .unwrap_or_default(),
            format!("the base image's entrypoint must be `{ENTRYPOINT}`"),
        ));
    }
    let fly_signal = fs::read_to_string(repo.join("fly.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|d| {
            d.get("kill_signal")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        });
    let stop = lines
        .iter()
        .rev()
        .find(|(_, l)| l.to_ascii_uppercase().starts_with("STOPSIGNAL"));
    let stop_sig = stop
        .and_then(|(_, l)| l.split_whitespace().nth(1))
        .map(str::to_string);
    if stop_sig.is_none() || stop_sig != fly_signal {
        out.push(Problem::new(
            &path,
            stop.map(|(n, _)| format!("line {n}")).unwrap_or_default(),
            format!(
                "STOPSIGNAL {} must match fly.toml's kill_signal {}",
                stop_sig.unwrap_or_else(|| "(none)".into()),
                fly_signal.unwrap_or_else(|| "(none)".into())
            ),
        ));
    }
    out
}
