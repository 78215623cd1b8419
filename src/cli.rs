//! The `supervisor` command line: parses arguments and calls the library.
//! Every flag with a path also reads an environment variable; the defaults are
//! the paths inside a Buddy image.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::boot::{self, RunConfig};
use crate::render::{self, RenderOptions};
use crate::supervise::{Policy, RestartPolicy};

/// Where a Buddy image keeps the Buddy's own files.
pub const IMAGE_BUDDY_DIR: &str = "/opt/mybuddy/buddy";
/// The Buddy's Fly volume: everything that must survive a restart.
pub const IMAGE_STATE_DIR: &str = "/data";

#[derive(Debug, Parser)]
#[command(
    name = "supervisor",
    version,
    about = "Boots and supervises one MyBuddyTalk Buddy (a Clawdbot gateway), and manages the swarm",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render the Buddy's clawdbot.json (template + personal config + secrets + token + policy)
    Render(RenderArgs),
    /// Print the names of the environment variables (secrets) a Buddy needs, one per line
    Secrets(SecretsArgs),
    /// Check every Buddy of the repository with the boot's own code (CI runs this)
    CheckConfig(CheckConfigArgs),
    /// The swarm share: prepare and check it alone (the boot's swarm steps)
    #[command(subcommand)]
    Swarm(SwarmCommand),
    /// List the swarm's Buddies from registry.json
    Registry(RegistryArgs),
    /// Cast the SpawnBuddy spell (Magicians only): create, deploy, register and announce a Buddy
    Spawn(SpawnArgs),
    /// Broadcast a message to the swarm (mybuddybook/announcements/)
    Resonate(ResonateArgs),
    #[command(about = RUN_ABOUT)]
    Run(RunArgs),
    #[command(about = INIT_ABOUT)]
    Init(InitArgs),
}

const RUN_ABOUT: &str =
    "Boot the Buddy and supervise its gateway (the image's ENTRYPOINT; PID 1 or subreaper)";
const INIT_ABOUT: &str =
    "Be a plain init for COMMAND (no Buddy): reap, forward signals, stop, restart as asked";

/// `run` and `init` start every container, as PID 1: they parse only their
/// own arguments instead of building the whole command tree first (that was
/// a tenth of a plain init's start). `supervisor help run` and `supervisor
/// run --help` describe the same arguments (a test holds them equal).
fn parse_alone<A: clap::Args + clap::FromArgMatches>(name: &'static str, about: &'static str) -> A {
    let m = alone::<A>(name, about).get_matches_from(std::env::args_os().skip(1));
    A::from_arg_matches(&m).unwrap_or_else(|e| e.exit())
}

fn alone<A: clap::Args>(name: &'static str, about: &'static str) -> clap::Command {
    A::augment_args(clap::Command::new(name))
        .bin_name(format!("supervisor {name}"))
        .display_name(format!("supervisor-{name}"))
        .about(about)
        .version(env!("CARGO_PKG_VERSION"))
}

// How the child is supervised; shared by `run` and `init`. (A doc comment here
// would become the about text of both.)
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// Seconds the child gets to stop before its process group is killed
    #[arg(long, env = "MYBUDDY_STOP_TIMEOUT", default_value_t = 10.0)]
    pub stop_timeout: f64,
    /// When to restart a child that exited on its own [default: `always` for run, `never` for init]
    #[arg(long, env = "MYBUDDY_RESTART", value_enum)]
    pub restart: Option<RestartPolicy>,
    /// More restarts than this within --restart-window ends the supervisor (non-zero)
    #[arg(long, env = "MYBUDDY_MAX_RESTARTS", default_value_t = 5)]
    pub max_restarts: u32,
    /// Seconds over which restarts are counted
    #[arg(long, env = "MYBUDDY_RESTART_WINDOW", default_value_t = 300.0)]
    pub restart_window: f64,
    /// First restart delay, doubled after each crash
    #[arg(long, env = "MYBUDDY_BACKOFF_INITIAL_MS", default_value_t = 500)]
    pub backoff_initial_ms: u64,
    /// Longest restart delay
    #[arg(long, env = "MYBUDDY_BACKOFF_MAX_MS", default_value_t = 30_000)]
    pub backoff_max_ms: u64,
    /// Seconds of uptime after which a run counts as healthy and the backoff resets
    #[arg(long, env = "MYBUDDY_RESET_AFTER", default_value_t = 60.0)]
    pub reset_after: f64,
}

impl SuperviseArgs {
    fn policy(&self, default_restart: RestartPolicy) -> Policy {
        Policy {
            restart: self.restart.unwrap_or(default_restart),
            max_restarts: self.max_restarts,
            restart_window: secs(self.restart_window),
            backoff_initial: std::time::Duration::from_millis(self.backoff_initial_ms),
            backoff_max: std::time::Duration::from_millis(self.backoff_max_ms),
            reset_after: secs(self.reset_after),
            stop_timeout: secs(self.stop_timeout),
        }
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub supervise: SuperviseArgs,
    /// The program to run and its arguments; it gets our environment as it is
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub buddy: BuddyArgs,
    /// The Buddy's persistent state dir (its Fly volume)
    #[arg(long, env = "MYBUDDY_STATE_DIR", default_value = IMAGE_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The swarm share (MyBuddyBook and SpellBook)
    #[arg(
        long = "swarm",
        env = "MYBUDDY_SWARM_DIR",
        default_value = "/mnt/swarm"
    )]
    pub swarm_dir: PathBuf,
    /// Accept a swarm dir that is not a mount point (local development; warns)
    #[arg(long, env = "MYBUDDY_SWARM_UNMOUNTED")]
    pub swarm_dir_unmounted: bool,
    /// Run the gateway as USER, UID or UID:GID [default: buddy when root, yourself otherwise]
    #[arg(long, env = "MYBUDDY_USER")]
    pub user: Option<String>,
    #[command(flatten)]
    pub supervise: SuperviseArgs,
    /// Extra secrets, NAME=value per line, re-read on every render (SIGHUP picks up changes)
    #[arg(long, env = "MYBUDDY_ENV_FILE")]
    pub env_file: Option<PathBuf>,
    /// Replace the persisted gateway token with a new one
    #[arg(long)]
    pub rotate_token: bool,
    /// `off` renders Telegram and WhatsApp disabled (local runs must not steal the deployed Buddy's updates)
    #[arg(long, env = "MYBUDDY_CHANNELS", value_enum, default_value_t = Channels::On)]
    pub channels: Channels,
    /// Listen on this port instead of the config's gateway.port
    #[arg(long, env = "MYBUDDY_GATEWAY_PORT")]
    pub port: Option<u16>,
    /// What the image ships to seed a new swarm share (spawn_buddy.md...; skipped if missing)
    #[arg(
        long,
        env = "MYBUDDY_SWARM_SEED",
        default_value = "/opt/mybuddy/swarm-seed"
    )]
    pub swarm_seed: PathBuf,
    /// A warm gateway compile cache to seed into the state's TMPDIR (skipped if missing)
    #[arg(
        long,
        env = "MYBUDDY_WARM_CACHE",
        default_value = "/opt/mybuddy/warm/jiti"
    )]
    pub warm_cache: PathBuf,
    /// The child to supervise instead of `clawdbot gateway --bind lan --port <port>`
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CasterArgs {
    /// Act as this Buddy (id like RoelBuddy-Emrys); default: the Buddy this runs in
    #[arg(long = "as")]
    pub as_id: Option<String>,
    /// The Buddy this runs in (its buddy.json), when --as is not given
    #[arg(long = "buddy", env = "MYBUDDY_BUDDY_DIR", default_value = IMAGE_BUDDY_DIR)]
    pub buddy_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct SpawnArgs {
    /// The spell file (YAML, see spellbook/spells/spawn_buddy.md)
    pub spell: PathBuf,
    /// The MyBuddyTalk repository the new Buddy is written into
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub swarm: SwarmDirArg,
    #[command(flatten)]
    pub caster: CasterArgs,
    /// Set the Buddy's secrets and deploy it (through scripts/deploy)
    #[arg(long)]
    pub deploy: bool,
    /// Show every change and make none
    #[arg(long)]
    pub dry_run: bool,
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

#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Verify the mount, create the layout, repair and probe permissions
    Check(SwarmCheckArgs),
}

#[derive(Debug, Args)]
pub struct SwarmDirArg {
    /// The swarm share (MyBuddyBook and SpellBook)
    #[arg(
        long = "swarm",
        env = "MYBUDDY_SWARM_DIR",
        default_value = "/mnt/swarm"
    )]
    pub swarm_dir: PathBuf,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Channels {
    On,
    Off,
}

#[derive(Debug, Args, Clone)]
pub struct BuddyArgs {
    /// The Buddy's directory (buddy.json, config.json, workspace/)
    #[arg(long = "buddy", env = "MYBUDDY_BUDDY_DIR", default_value = IMAGE_BUDDY_DIR)]
    pub buddy_dir: PathBuf,
    /// The MyBuddy base template [default: BUDDY/../_template/config.json]
    #[arg(long, env = "MYBUDDY_TEMPLATE")]
    pub template: Option<PathBuf>,
}

impl BuddyArgs {
    pub fn template(&self) -> PathBuf {
        self.template
            .clone()
            .unwrap_or_else(|| render::default_template(&self.buddy_dir))
    }
}

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
}

#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[command(flatten)]
    pub buddy: BuddyArgs,
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    // `run` may be PID 1: take the signals before anything else, even before
    // parsing arguments, so no SIGTERM can fall into a gap.
    let early = std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "run" || a == "init")
        .then(crate::sys::take_signals);
    let command = match std::env::args_os().nth(1) {
        Some(a) if a == "run" => Command::Run(parse_alone("run", RUN_ABOUT)),
        Some(a) if a == "init" => Command::Init(parse_alone("init", INIT_ABOUT)),
        _ => Cli::parse().command,
    };
    crate::logging::init();
    match command {
        Command::Render(a) => cmd_render(a),
        Command::Secrets(a) => cmd_secrets(a),
        Command::CheckConfig(a) => cmd_check_config(a),
        Command::Spawn(a) => cmd_spawn(a),
        Command::Resonate(a) => cmd_resonate(a),
        Command::Swarm(SwarmCommand::Check(a)) => cmd_swarm_check(a),
        Command::Registry(a) => cmd_registry(a),
        Command::Run(a) => match early {
            Some(Ok((sfd, mask))) => boot::run(run_config(a), sfd, mask),
            Some(Err(e)) => fail(format!("cannot take signals: {e}")),
            None => fail("`run` must be the first argument"),
        },
        Command::Init(a) => match early {
            Some(Ok((sfd, mask))) => crate::supervise::init(
                a.command,
                a.supervise.policy(RestartPolicy::Never),
                &sfd,
                mask,
            ),
            Some(Err(e)) => fail(format!("cannot take signals: {e}")),
            None => fail("`init` must be the first argument"),
        },
    }
}

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s.max(0.0))
}

fn run_config(a: RunArgs) -> RunConfig {
    RunConfig {
        template: a.buddy.template(),
        buddy_dir: a.buddy.buddy_dir,
        state_dir: a.state_dir,
        swarm_dir: a.swarm_dir,
        swarm_unmounted_ok: a.swarm_dir_unmounted,
        user: a.user,
        env_file: a.env_file,
        rotate_token: a.rotate_token,
        channels_off: a.channels == Channels::Off,
        port: a.port,
        warm_cache: Some(a.warm_cache),
        swarm_seed: Some(a.swarm_seed),
        policy: a.supervise.policy(RestartPolicy::Always),
        command: a.command,
    }
}

fn fail(err: impl std::fmt::Display) -> i32 {
    eprintln!("error: {err}");
    1
}

fn cmd_render(a: RenderArgs) -> i32 {
    let opts = RenderOptions {
        buddy_dir: a.buddy.buddy_dir.clone(),
        template: a.buddy.template(),
        state_dir: a.state_dir,
        rotate_token: a.rotate_token,
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

fn cmd_secrets(a: SecretsArgs) -> i32 {
    let prepared = match render::prepare(&a.buddy.buddy_dir, &a.buddy.template()) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    for name in prepared.secret_vars() {
        println!("{name}");
    }
    0
}

fn cmd_swarm_check(a: SwarmCheckArgs) -> i32 {
    let root = crate::sys::is_root();
    let creds = match (&a.user, root) {
        (Some(u), true) => Some(u.clone()),
        (None, true) => Some(crate::privileges::GATEWAY_USER.to_string()),
        _ => None,
    }
    .map(|u| crate::privileges::resolve(&u, crate::buddy::Role::Buddy));
    let creds = match creds.transpose() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let opts = crate::swarm::Options {
        root: a.swarm.swarm_dir.clone(),
        allow_unmounted: a.swarm_dir_unmounted,
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

fn cmd_registry(a: RegistryArgs) -> i32 {
    let book = crate::swarm::Paths::new(&a.swarm.swarm_dir).book();
    match a.command {
        Some(RegistryCommand::Register { buddy_dir, status }) => {
            let b = match crate::buddy::load(&buddy_dir) {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
            let entry = crate::registry::Entry::from_identity(&b.identity);
            let r = crate::registry::lock(&book).and_then(|mut l| {
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
            return match crate::registry::update(&book, &slug, |e| e.status = status.into()) {
                Ok(true) => {
                    println!("{slug}: status {}", crate::buddy::Status::from(status));
                    0
                }
                Ok(false) => fail(format!(
                    "{slug} is not in {}",
                    crate::registry::path_in(&book).display()
                )),
                Err(e) => fail(e),
            };
        }
        None => {}
    }
    match crate::registry::read(&book) {
        Ok(r) if a.json => {
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            0
        }
        Ok(r) => {
            print!("{}", crate::registry::table(&r));
            0
        }
        Err(e) => fail(e),
    }
}

fn cmd_check_config(a: CheckConfigArgs) -> i32 {
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

/// Who is acting: `--as` (looked up in the repository, then the registry) or
/// the Buddy this runs in.
fn caster(
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
    let reg = crate::registry::read(&crate::swarm::Paths::new(swarm).book())
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

fn cmd_spawn(a: SpawnArgs) -> i32 {
    use crate::spell;
    let swarm = a.swarm.swarm_dir.clone();
    let world = spell::World {
        repo: &a.repo,
        swarm: &swarm,
    };
    let say = |m: &str| eprintln!("{m}");
    let who = match caster(&a.caster, Some(&a.repo), &swarm) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = spell::check_caster(&world, &who) {
        return fail(e);
    }
    let _lock = match spell::lock(&a.repo) {
        Ok(l) => l,
        Err(e) => {
            return fail(format!(
                "{}: cannot lock the repository for the spell: {e}",
                a.repo.display()
            ));
        }
    };
    let parsed = match spell::parse(&a.spell) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let spawn = match spell::validate(&world, &a.spell, parsed) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    say(&format!(
        "[1/5] validate: {} ({}, {}) may be spawned by {}",
        spawn.identity.id(),
        spawn.identity.role,
        spawn.identity.channels,
        who.id()
    ));
    let opts = spell::CastOptions {
        deploy: a.deploy,
        dry_run: a.dry_run,
        deploy_script: a.repo.join("scripts/deploy"),
    };
    match spell::cast(&world, &who, &spawn, &opts, &mut |m| say(m)) {
        Ok(o) if a.dry_run => {
            println!("dry run: {} would be spawned; nothing was changed", o.slug);
            0
        }
        Ok(o) => {
            println!(
                "spawned {}{}",
                o.slug,
                if o.deployed {
                    " (deployed)"
                } else {
                    " (planned: deploy with scripts/deploy)"
                }
            );
            0
        }
        Err(e) => fail(e),
    }
}

fn cmd_resonate(a: ResonateArgs) -> i32 {
    let who = match caster(&a.caster, None, &a.swarm.swarm_dir) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match crate::resonate::announce(
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The fast path of `run` and `init` must parse exactly what the full
    /// command tree documents: same help text, same arguments.
    #[test]
    fn run_and_init_parsed_alone_match_the_command_tree() {
        let mut tree = Cli::command();
        tree.build();
        for (name, mut alone) in [
            ("run", alone::<RunArgs>("run", RUN_ABOUT)),
            ("init", alone::<InitArgs>("init", INIT_ABOUT)),
        ] {
            let mut sub = tree.find_subcommand(name).unwrap().clone();
            alone.build();
            assert_eq!(
                alone.render_long_help().to_string(),
                sub.render_long_help().to_string(),
                "{name}"
            );
            assert_eq!(alone.render_version(), sub.render_version(), "{name}");
        }
        assert!(
            alone::<RunArgs>("run", RUN_ABOUT)
                .try_get_matches_from(["run", "--restart", "sometimes"])
                .is_err()
        );
    }
}
