//! `swarm check`, `registry` and `resonate`: the swarm share from the
//! command line.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CasterArgs, SwarmDirArg, fail};

#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Verify the mount, create the layout, repair and probe permissions
    Check(SwarmCheckArgs),
}

#[derive(Debug, Subcommand)]
pub enum ShareCommand {
    /// Format the volumes the environment configures (idempotent: a formatted volume is checked) and set their roots' group and mode
    Format(ShareArgs),
    /// Report each configured volume: mounted under the swarm dir, metadata reachable
    Check(ShareArgs),
}

#[derive(Debug, Args)]
pub struct ShareArgs {
    #[command(flatten)]
    pub swarm: SwarmDirArg,
    /// Give up on a mount or a metadata answer after this many seconds
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Print JSON instead of text (check)
    #[arg(long)]
    pub json: bool,
}

pub(super) fn cmd_share(c: ShareCommand) -> i32 {
    use crate::swarm::share;
    let (ShareCommand::Format(a) | ShareCommand::Check(a)) = &c;
    let env = crate::config::render::process_env;
    let cfg = match share::from_env(&env) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if cfg.mode == share::Mode::Dir {
        return fail(
            "MYBUDDY_SHARE is not \"juicefs\": the share is a mounted directory, nothing to format or check here",
        );
    }
    let timeout = std::time::Duration::from_secs_f64(a.timeout.max(1.0));
    match c {
        ShareCommand::Format(_) => {
            let mut code = 0;
            for v in &cfg.volumes {
                match share::format(v, &env, timeout) {
                    Ok(share::Formatted::Created) => {
                        println!(
                            "{}: formatted (trash off), root {} mode 2770",
                            v.name, v.gid
                        )
                    }
                    Ok(share::Formatted::AlreadyFormatted) => println!(
                        "{}: already formatted (trash off), root {} mode 2770",
                        v.name, v.gid
                    ),
                    Err(e) => code = fail(e),
                }
            }
            code
        }
        ShareCommand::Check(a) => {
            let health = share::check(&cfg, &a.swarm.swarm_dir, timeout);
            let ok = health.iter().all(|h| h.mounted && h.metadata_ok);
            if a.json {
                println!("{}", serde_json::to_string(&health).unwrap_or_default());
            } else {
                for h in &health {
                    println!(
                        "{}: {} at {}; metadata {}",
                        h.volume,
                        if h.mounted { "mounted" } else { "NOT mounted" },
                        h.mount_point.display(),
                        if h.metadata_ok {
                            format!("ok ({})", h.metadata)
                        } else {
                            format!("FAILING: {}", h.metadata)
                        }
                    );
                }
            }
            if ok { 0 } else { 1 }
        }
    }
}

#[derive(Debug, Args)]
pub struct SwarmCheckArgs {
    #[command(flatten)]
    pub swarm: SwarmDirArg,
    /// Accept a swarm dir that is not a mount point (local development; warns)
    #[arg(long, env = "MYBUDDY_SWARM_UNMOUNTED")]
    pub swarm_dir_unmounted: bool,
    /// Report wrong groups and modes instead of repairing them
    #[arg(long)]
    pub no_repair: bool,
    /// The gateways' user for the access probe, USER or UID[:GID] [default: buddy when root]
    #[arg(long, env = "MYBUDDY_USER")]
    pub user: Option<String>,
    /// Seed for a new share
    #[arg(
        long,
        env = "MYBUDDY_SWARM_SEED",
        default_value = "/opt/mybuddy/swarm-seed"
    )]
    pub swarm_seed: PathBuf,
    /// The Buddy template directory copied into mybuddybook/templates/_template
    #[arg(long)]
    pub template_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    pub swarm: SwarmDirArg,
    /// Print the registry as JSON instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<RegistryCommand>,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Add or update a Buddy's entry from its directory (keeps a registered status)
    Register {
        /// The Buddy's directory (buddy.json)
        #[arg(long = "buddy")]
        buddy_dir: PathBuf,
        /// Set this status instead of keeping the registered one
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
    },
    /// Change a registered Buddy's status (e.g. migration -> active)
    SetStatus {
        /// The Buddy's id (RoelBuddy-Emrys or roelbuddy-emrys)
        id: String,
        #[arg(value_enum)]
        status: StatusArg,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusArg {
    Active,
    Planned,
    Migration,
}

impl From<StatusArg> for crate::buddy::Status {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Active => crate::buddy::Status::Active,
            StatusArg::Planned => crate::buddy::Status::Planned,
            StatusArg::Migration => crate::buddy::Status::Migration,
        }
    }
}

#[derive(Debug, Args)]
pub struct ResonateArgs {
    /// What to tell the swarm
    pub message: String,
    #[command(flatten)]
    pub swarm: SwarmDirArg,
    #[command(flatten)]
    pub caster: CasterArgs,
}

pub(super) fn cmd_swarm_check(a: SwarmCheckArgs) -> i32 {
    let root = crate::pid1::sys::is_root();
    let creds = match (&a.user, root) {
        (Some(u), true) => Some(u.clone()),
        (None, true) => Some(crate::pid1::privileges::GATEWAY_USER.to_string()),
        _ => None,
    }
    .map(|u| crate::pid1::privileges::resolve(&u, crate::buddy::Role::Buddy));
    let creds = match creds.transpose() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // JuiceFS mode: the volumes this Machine's configuration mounts.
    let volumes = crate::swarm::share::from_env(&crate::config::render::process_env)
        .ok()
        .filter(|c| c.mode == crate::swarm::share::Mode::JuiceFs)
        .map(|c| c.volumes.iter().map(|v| v.name).collect());
    let opts = crate::swarm::Options {
        root: a.swarm.swarm_dir.clone(),
        allow_unmounted: a.swarm_dir_unmounted,
        volumes,
        repair: !a.no_repair,
        want_mask: true,
        seeds: crate::swarm::Seeds {
            share: Some(a.swarm_seed),
            template_dir: a.template_dir,
        },
    };
    match crate::swarm::prepare(&opts, creds.as_ref()) {
        Ok(r) => {
            println!(
                "swarm {} ok: {} created, {} repaired, access {}, SpellBook mask {}",
                a.swarm.swarm_dir.display(),
                r.created.len(),
                r.repairs.len(),
                if r.verified {
                    "verified"
                } else {
                    "not verified (not root)"
                },
                if r.can_mask {
                    "available"
                } else {
                    "not available (permissions only)"
                }
            );
            0
        }
        Err(e) => fail(e),
    }
}

pub(super) fn cmd_registry(a: RegistryArgs) -> i32 {
    let book = crate::swarm::Paths::new(&a.swarm.swarm_dir).book();
    match a.command {
        Some(RegistryCommand::Register { buddy_dir, status }) => {
            let b = match crate::buddy::load(&buddy_dir) {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
            let entry = crate::swarm::registry::Entry::from_identity(&b.identity);
            let r = crate::swarm::registry::lock(&book).and_then(|mut l| {
                let slug = b.identity.slug();
                let mut entry = entry;
                match (status, l.registry.buddies.get(&slug)) {
                    (Some(s), _) => entry.status = s.into(),
                    (None, Some(old)) => entry.status = old.status,
                    (None, None) => {}
                }
                if let Some(old) = l.registry.buddies.get(&slug) {
                    entry.last_boot = old.last_boot.clone();
                    entry.version = old.version.clone();
                    entry.machine = old.machine.clone();
                }
                l.registry.buddies.insert(slug, entry);
                l.commit()
            });
            return match r {
                Ok(()) => 0,
                Err(e) => fail(e),
            };
        }
        Some(RegistryCommand::SetStatus { id, status }) => {
            let slug = id.to_lowercase();
            return match crate::swarm::registry::update(&book, &slug, |e| e.status = status.into())
            {
                Ok(true) => {
                    println!("{slug}: status {}", crate::buddy::Status::from(status));
                    0
                }
                Ok(false) => fail(format!(
                    "{slug} is not in {}",
                    crate::swarm::registry::path_in(&book).display()
                )),
                Err(e) => fail(e),
            };
        }
        None => {}
    }
    match crate::swarm::registry::read(&book) {
        Ok(r) if a.json => {
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            0
        }
        Ok(r) => {
            print!("{}", crate::swarm::registry::table(&r));
            0
        }
        Err(e) => fail(e),
    }
}

pub(super) fn cmd_resonate(a: ResonateArgs) -> i32 {
    let who = match caster(&a.caster, None, &a.swarm.swarm_dir) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match crate::swarm::resonate::announce(
        &a.swarm.swarm_dir,
        &who.id(),
        "message",
        serde_json::json!({}),
        &a.message,
    ) {
        Ok(p) => {
            println!("{}", p.display());
            0
        }
        Err(e) => fail(e),
    }
}

/// Who is acting: `--as` (looked up in the repository, then the registry) or
/// the Buddy this runs in.
pub(super) fn caster(
    a: &CasterArgs,
    repo: Option<&std::path::Path>,
    swarm: &std::path::Path,
) -> Result<crate::buddy::Identity, String> {
    let Some(id) = &a.as_id else {
        return crate::buddy::load(&a.buddy_dir)
            .map(|b| b.identity)
            .map_err(|e| {
                format!("who is casting? pass --as BUDDY_ID, or run inside a Buddy: {e}")
            });
    };
    let slug = id.to_lowercase();
    if let Some(repo) = repo
        && let Ok(b) = crate::buddy::load(&repo.join("buddies").join(&slug))
    {
        return Ok(b.identity);
    }
    let reg = crate::swarm::registry::read(&crate::swarm::Paths::new(swarm).book())
        .map_err(|e| e.to_string())?;
    reg.buddies
        .get(&slug)
        .map(|e| crate::buddy::Identity {
            human: e.human.clone(),
            name: e.name.clone(),
            role: e.role,
            channels: e.channels,
            status: e.status,
        })
        .ok_or_else(|| format!("--as {id}: no such Buddy in the repository or the registry"))
}
