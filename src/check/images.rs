//! The Dockerfiles: the base image's entrypoint and stop signal, the one
//! generic Buddy image built on it, no test-only variable in either, and
//! no per-Buddy Dockerfile left over.

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

/// A Buddy's local image is built by the one generic `images/buddy/Dockerfile`
/// from its Machine definition: a Dockerfile left in a Buddy's directory
/// (each Buddy had one before) would build an image that is not its Machine.
pub(super) fn check_buddy_leftovers(dir: &Path) -> Vec<Problem> {
    let path = dir.join("Dockerfile");
    if fs::symlink_metadata(&path).is_err() {
        return Vec::new();
    }
    vec![Problem::new(
        &path,
        "",
        "no longer used: a Buddy's local image is the base plus its Machine's files (scripts/build-buddy-image, images/buddy/Dockerfile); remove this file",
    )]
}

/// The generic Buddy image (local runs only): built on the base image,
/// keeping its entrypoint, no test-only variable. A checkout without it
/// builds no local Buddy images; that is no problem.
pub(super) fn check_buddy_image(repo: &Path) -> Vec<Problem> {
    let path = repo.join("images/buddy/Dockerfile");
    let Ok(text) = fs::read_to_string(&path) else {
        return Vec::new();
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
            "ENTRYPOINT" => {
                out.push(Problem::new(
                    &path,
                    format!("line {n}"),
                    format!(
                        "a Buddy image keeps the base image's `{ENTRYPOINT}`; remove this line"
                    ),
                ));
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
