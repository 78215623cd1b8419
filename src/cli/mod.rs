//! The `supervisor` command line: parses arguments and calls the library.
//! Every flag with a path also reads an environment variable; the defaults are
//! the paths inside a Buddy image. One file per command group: [`run`] (`run`,
//! `init`), [`config`] (`render`, `secrets`, `check-config`), [`swarm`]
//! (`swarm`, `registry`, `resonate`), [`status`], [`fleet`] (`spawn`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::render;

mod backup;
mod config;
mod fleet;
mod run;
mod status;
mod swarm;

use config::{CheckConfigArgs, RenderArgs, SecretsArgs};
use fleet::{AdoptArgs, DeployArgs, MachineConfigArgs, RollbackArgs, SpawnArgs, UpgradeArgs};
use run::{InitArgs, RunArgs};
use swarm::{RegistryArgs, ResonateArgs, ShareCommand, SwarmCommand};

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
    /// Render the Buddy's gateway config, openclaw.json (template + personal config + secrets + token + policy)
    Render(RenderArgs),
    /// Print the names of the environment variables (secrets) a Buddy needs, one per line
    Secrets(SecretsArgs),
    /// Check every Buddy of the repository with the boot's own code (CI runs this)
    CheckConfig(CheckConfigArgs),
    /// The swarm share: prepare and check it alone (the boot's swarm steps)
    #[command(subcommand)]
    Swarm(SwarmCommand),
    /// The share's JuiceFS volumes: format them (operator, once) and check their health
    #[command(subcommand)]
    Share(ShareCommand),
    /// List the swarm's Buddies from registry.json
    Registry(RegistryArgs),
    /// Every Buddy judged: Machine and checks (Machines API, with FLY_API_TOKEN), image, registry state and heartbeat, restarts, backup, channels; exit 1 when any is not healthy
    Status(status::StatusArgs),
    /// Cast the SpawnBuddy spell (Magicians only): create, deploy, register and announce a Buddy
    Spawn(SpawnArgs),
    /// Deploy one Buddy onto its Fly Machine over the Machines API (scripts/deploy runs it)
    Deploy(DeployArgs),
    /// Cast UpgradeBuddy (Magicians only): roll a new base image over the deployed Buddies, a canary first
    Upgrade(UpgradeArgs),
    /// Copy the Buddies the SpellBook records (spells cast on a Machine) into a checkout, so they enter git
    Adopt(AdoptArgs),
    /// Take back what spells cut short made, from their journals (a Magician's boot runs it)
    Rollback(RollbackArgs),
    /// Print a Buddy's Fly Machine config (JSON): the pinned base image, fly.toml's facts and the Buddy's own files
    MachineConfig(MachineConfigArgs),
    /// This Buddy's backups: back up now, list, restore (the supervisor backs up every interval)
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Broadcast a message to the swarm (mybuddybook/announcements/)
    Resonate(ResonateArgs),
    #[command(about = RUN_ABOUT)]
    Run(Box<RunArgs>),
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

#[derive(Debug, Args, Clone)]
pub struct BuddyArgs {
    /// The Buddy's directory (buddy.json, config.json, workspace/)
    #[arg(long = "buddy", env = "MYBUDDY_BUDDY_DIR", default_value = IMAGE_BUDDY_DIR)]
    pub buddy_dir: PathBuf,
    /// The MyBuddy base template [default: BUDDY/../_template/config.json]
    #[arg(long, env = "MYBUDDY_TEMPLATE")]
    pub template: Option<PathBuf>,
    /// Where the gateway and its plugins are installed (`${MYBUDDY_GATEWAY_DIR}` in configs)
    #[arg(long, env = "MYBUDDY_GATEWAY_DIR", default_value = render::IMAGE_GATEWAY_DIR)]
    pub gateway_dir: PathBuf,
}

impl BuddyArgs {
    pub fn template(&self) -> PathBuf {
        self.template
            .clone()
            .unwrap_or_else(|| render::default_template(&self.buddy_dir))
    }
}

#[derive(Debug, Args)]
pub struct SwarmDirArg {
    /// The swarm share (MyBuddyBook and SpellBook)
    #[arg(
        long = "swarm",
        env = "MYBUDDY_SWARM_DIR",
        default_value = crate::swarm::IMAGE_SWARM_DIR
    )]
    pub swarm_dir: PathBuf,
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

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    // `run` may be PID 1: take the signals before anything else, even before
    // parsing arguments, so no SIGTERM can fall into a gap.
    let early = std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "run" || a == "init")
        .then(crate::pid1::sys::take_signals);
    let command = match std::env::args_os().nth(1) {
        Some(a) if a == "run" => Command::Run(Box::new(parse_alone("run", RUN_ABOUT))),
        Some(a) if a == "init" => Command::Init(parse_alone("init", INIT_ABOUT)),
        _ => Cli::parse().command,
    };
    crate::logging::init();
    match command {
        Command::Render(a) => config::cmd_render(a),
        Command::Secrets(a) => config::cmd_secrets(a),
        Command::CheckConfig(a) => config::cmd_check_config(a),
        Command::Spawn(a) => fleet::cmd_spawn(a),
        Command::MachineConfig(a) => fleet::cmd_machine_config(a),
        Command::Adopt(a) => fleet::cmd_adopt(a),
        Command::Rollback(a) => fleet::cmd_rollback(a),
        Command::Upgrade(a) => fleet::cmd_upgrade(a),
        Command::Deploy(a) => fleet::cmd_deploy(a),
        Command::Resonate(a) => swarm::cmd_resonate(a),
        Command::Backup(c) => backup::cmd_backup(c),
        Command::Swarm(SwarmCommand::Check(a)) => swarm::cmd_swarm_check(a),
        Command::Share(c) => swarm::cmd_share(c),
        Command::Registry(a) => swarm::cmd_registry(a),
        Command::Status(a) => status::cmd_status(a),
        Command::Run(a) => match early {
            Some(Ok((sfd, mask))) => run::cmd_run(*a, sfd, mask),
            Some(Err(e)) => fail(format!("cannot take signals: {e}")),
            None => fail("`run` must be the first argument"),
        },
        Command::Init(a) => match early {
            Some(Ok((sfd, mask))) => run::cmd_init(a, sfd, mask),
            Some(Err(e)) => fail(format!("cannot take signals: {e}")),
            None => fail("`init` must be the first argument"),
        },
    }
}

pub(crate) fn fail(err: impl std::fmt::Display) -> i32 {
    eprintln!("error: {err}");
    1
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
