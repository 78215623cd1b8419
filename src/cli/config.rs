//! `render`, `secrets` and `check-config`: the config pipeline from the
//! command line.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{BuddyArgs, IMAGE_STATE_DIR, SwarmDirArg, fail};
use crate::config::render::{self, RenderOptions};

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub buddy: BuddyArgs,
    /// The Buddy's persistent state dir (its Fly volume): holds the gateway token
    #[arg(long, env = "MYBUDDY_STATE_DIR", default_value = IMAGE_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Write the config here (atomically, mode 0600); without it, print it with secrets redacted
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the persisted gateway token with a new one
    #[arg(long)]
    pub rotate_token: bool,
    #[command(flatten)]
    pub swarm: SwarmDirArg,
}

#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[command(flatten)]
    pub buddy: BuddyArgs,
    /// Instead: the swarm share's secrets this Buddy's Machine holds (by its role)
    #[arg(long, conflicts_with_all = ["forbidden", "backup"])]
    pub share: bool,
    /// Instead: the backup's secrets this Buddy's Machine holds (its own bucket, key and password)
    #[arg(long, conflicts_with = "forbidden")]
    pub backup: bool,
    /// Instead: the secrets this Buddy's Fly app must never hold (the share's
    /// settings its role may not have, the Fly org token for a Buddy)
    #[arg(long)]
    pub forbidden: bool,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The repository (holding buddies/, Dockerfile, fly.toml)
    #[arg(default_value = ".")]
    pub repo: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub(super) fn cmd_render(a: RenderArgs) -> i32 {
    let opts = RenderOptions {
        buddy_dir: a.buddy.buddy_dir.clone(),
        template: a.buddy.template(),
        state_dir: a.state_dir,
        gateway_dir: a.buddy.gateway_dir.clone(),
        swarm_dir: a.swarm.swarm_dir.clone(),
        rotate_token: a.rotate_token,
        overlay: None,
    };
    let rendered = match render::render(&opts, &render::process_env) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    match &a.out {
        Some(path) => {
            if let Err(e) = render::write_config(&rendered, path) {
                return fail(e);
            }
            tracing::info!(
                buddy = %rendered.prepared.buddy.identity.id(),
                out = %path.display(),
                token = ?rendered.token_source,
                "rendered config"
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            if out
                .write_all(rendered.to_redacted_json().as_bytes())
                .is_err()
            {
                return 1;
            }
        }
    }
    0
}

pub(super) fn cmd_secrets(a: SecretsArgs) -> i32 {
    let prepared = match render::prepare(&a.buddy.buddy_dir, &a.buddy.template()) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let role = prepared.buddy.identity.role;
    let names = if a.backup {
        crate::backup::SECRETS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else if a.share {
        crate::swarm::share::machine_secrets(role)
    } else if a.forbidden {
        let mut n = crate::swarm::share::forbidden_secrets(role);
        if role == crate::buddy::Role::Buddy {
            n.push("FLY_API_TOKEN".to_string());
        }
        n
    } else {
        prepared.secret_vars().into_iter().collect()
    };
    for name in names {
        println!("{name}");
    }
    0
}

pub(super) fn cmd_check_config(a: CheckConfigArgs) -> i32 {
    let report = crate::check::check_repo(&a.repo);
    match a.format {
        Format::Text => print!("{}", crate::check::to_text(&report)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
    }
    i32::from(!report.problems.is_empty())
}
