//! The gateway token: `${AUTO_GENERATED}` in the template.
//!
//! 256 bits from the OS RNG, written as URL-safe base64 (43 characters) to
//! `<state>/gateway-token` with mode 0600. The state dir is the Buddy's Fly
//! volume, the only thing that survives a Machine restart, so every boot
//! reuses the same token and paired clients keep working.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::TryRng;

use crate::untrusted::Dir;

pub const TOKEN_FILE: &str = "gateway-token";
/// The template's placeholder for the token.
pub const AUTO_GENERATED: &str = "AUTO_GENERATED";

/// Where the token came from, for the boot log (never the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The Buddy's `<PREFIX>_GATEWAY_TOKEN` secret.
    Secret,
    /// Read back from the state dir.
    Persisted,
    /// Made now (first boot, unreadable file, or `--rotate-token`).
    Generated,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot read the gateway token {path}: {source} (fix its permissions, or pass --rotate-token to replace it)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write the gateway token {path}: {source} (is the state dir writable and not full?)"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the OS random number generator failed: {0}")]
    Rng(String),
}

pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKEN_FILE)
}

pub fn generate() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| TokenError::Rng(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A persisted token is only trusted if it still looks like one we made: a
/// truncated or hand-edited file is replaced rather than served.
fn plausible(token: &str) -> bool {
    token.len() >= 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Returns the gateway token for this boot and where it came from.
pub fn obtain(
    state_dir: &Path,
    explicit: Option<String>,
    rotate: bool,
) -> Result<(String, TokenSource), TokenError> {
    if let Some(t) = explicit.filter(|t| !t.is_empty()) {
        return Ok((t, TokenSource::Secret));
    }
    let path = token_path(state_dir);
    let write_err = |source| TokenError::Write {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(state_dir).map_err(write_err)?;
    // The state dir is the gateway's: its token file may be a link or a
    // FIFO the agent left; read through a handle, bounded, regular files
    // only (anything else is replaced, never followed).
    let dir = Dir::open(state_dir).map_err(write_err)?;
    if !rotate {
        match dir.read(TOKEN_FILE, 4096) {
            Ok(t) => {
                let t = String::from_utf8_lossy(&t);
                if plausible(t.trim()) {
                    return Ok((t.trim().to_string(), TokenSource::Persisted));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if crate::untrusted::is_planted(&e) => {}
            Err(source) => return Err(TokenError::Read { path, source }),
        }
    }
    let token = generate()?;
    dir.replace(TOKEN_FILE, format!("{token}\n").as_bytes(), 0o600, true)
        .map_err(write_err)?;
    Ok((token, TokenSource::Generated))
}
