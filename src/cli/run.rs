//! `supervisor run` (boot a Buddy, then supervise its gateway) and
//! `supervisor init` (the same loop for any program).

use std::path::PathBuf;

use clap::Args;
use nix::sys::signal::SigSet;
use nix::sys::signalfd::SignalFd;

use super::{BuddyArgs, IMAGE_STATE_DIR};
use crate::boot::{self, RunConfig};
use crate::pid1::supervise::{Policy, RestartPolicy};

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
    /// Give up (exit non-zero) after more restarts than this within --restart-window [default: never: keep restarting with capped backoff through any outage]
    #[arg(long, env = "MYBUDDY_MAX_RESTARTS")]
    pub max_restarts: Option<u32>,
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
        default_value = crate::swarm::IMAGE_SWARM_DIR
    )]
    pub swarm_dir: PathBuf,
    /// Accept a swarm dir that is not a mount point (local development; warns)
    #[arg(long, env = "MYBUDDY_SWARM_UNMOUNTED")]
    pub swarm_dir_unmounted: bool,
    /// JuiceFS mode (MYBUDDY_SHARE=juicefs): seconds each volume may take to mount, at boot and at every remount
    #[arg(long, env = "MYBUDDY_SHARE_TIMEOUT", default_value_t = 30.0)]
    pub share_timeout: f64,
    /// JuiceFS mode: where the mounts keep their block caches (<dir>/<volume>, root's)
    #[arg(
        long,
        env = "MYBUDDY_SHARE_CACHE_DIR",
        default_value = "/var/cache/juicefs"
    )]
    pub share_cache_dir: PathBuf,
    /// A Magician holding FLY_API_TOKEN: where its gateway asks for spells (SO_PEERCRED: its uid only)
    #[arg(
        long,
        env = "MYBUDDY_SPELL_SOCKET",
        default_value = crate::fleet::socket::DEFAULT_PATH
    )]
    pub spell_socket: PathBuf,
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
    /// Node's compile cache for the gateway, seeded into the state's TMPDIR (skipped if missing)
    #[arg(
        long,
        env = "MYBUDDY_WARM_CACHE",
        default_value = "/opt/mybuddy/gateway/warm/node-compile-cache"
    )]
    pub warm_cache: PathBuf,
    /// Tests and offline runs only: an RFC 7396 patch applied after the personal config, before the policy (`${VAR}`s substituted); check-config refuses it in a deployment
    #[arg(long, env = "MYBUDDY_CONFIG_OVERLAY")]
    pub config_overlay: Option<PathBuf>,
    /// Tests and offline runs only: pass this variable of ours to the gateway too (repeatable; env: comma-separated), e.g. NODE_EXTRA_CA_CERTS
    #[arg(long, env = "MYBUDDY_GATEWAY_ENV", value_delimiter = ',')]
    pub gateway_env: Vec<String>,
    /// Seconds between heartbeats in the Buddy's registry entry (a reader calls an entry silent for three of them `unknown`)
    #[arg(long, env = "MYBUDDY_HEARTBEAT", default_value_t = 60.0)]
    pub heartbeat: f64,
    /// A boot refused again (exit 78) waits this many seconds before it exits, doubling per refusal in a row, so a restart policy does not spin it (the first refusal exits at once)
    #[arg(long, env = "MYBUDDY_REFUSAL_BACKOFF", default_value_t = 10.0)]
    pub refusal_backoff: f64,
    /// The longest wait of a refused boot, in seconds
    #[arg(long, env = "MYBUDDY_REFUSAL_BACKOFF_MAX", default_value_t = 300.0)]
    pub refusal_backoff_max: f64,
    /// The child to supervise instead of `openclaw gateway --bind lan --port <port>`
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Channels {
    On,
    Off,
}

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s.max(0.0))
}

fn run_config(a: RunArgs) -> RunConfig {
    RunConfig {
        template: a.buddy.template(),
        buddy_dir: a.buddy.buddy_dir,
        gateway_dir: a.buddy.gateway_dir,
        state_dir: a.state_dir,
        swarm_dir: a.swarm_dir,
        swarm_unmounted_ok: a.swarm_dir_unmounted,
        share_timeout: secs(a.share_timeout),
        share_cache: a.share_cache_dir,
        spell_socket: a.spell_socket,
        user: a.user,
        env_file: a.env_file,
        rotate_token: a.rotate_token,
        channels_off: a.channels == Channels::Off,
        port: a.port,
        warm_cache: Some(a.warm_cache),
        swarm_seed: Some(a.swarm_seed),
        config_overlay: a.config_overlay,
        gateway_env: a.gateway_env,
        policy: a.supervise.policy(RestartPolicy::Always),
        command: a.command,
        heartbeat: secs(a.heartbeat.max(1.0)),
        refusal_backoff: (secs(a.refusal_backoff), secs(a.refusal_backoff_max)),
    }
}

pub(super) fn cmd_run(a: RunArgs, sfd: SignalFd, mask: SigSet) -> i32 {
    boot::run(run_config(a), sfd, mask)
}

pub(super) fn cmd_init(a: InitArgs, sfd: SignalFd, mask: SigSet) -> i32 {
    crate::pid1::init::run(
        a.command,
        a.supervise.policy(RestartPolicy::Never),
        &sfd,
        mask,
    )
}
