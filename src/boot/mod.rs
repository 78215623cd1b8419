//! `supervisor run`: the boot sequence, then the supervision loop.
//!
//! Boot is a list of named steps, each logged with its duration:
//! signals → privileges → restore → render → state → share → swarm → spells →
//! supervise (start) →
//! register. Registering runs while the gateway starts (the gateway does not
//! need it), off the loop; from then on the entry follows the Buddy's life
//! (`swarm::presence`). A step that fails refuses the boot: recorded and
//! waited out ([`refusal`]).
//! The first step takes the signals before anything else can happen (as PID 1
//! an unhandled SIGTERM would otherwise be dropped); a stop that arrives during
//! boot is honoured between steps.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use tracing::{error, info, warn};

use crate::buddy::Role;
use crate::config::render::{self, RenderOptions, Rendered};
use crate::config::secrets;
use crate::health::metrics::{self, metrics};
use crate::pid1::memory;
use crate::pid1::privileges::{self, Credentials};
use crate::pid1::supervise::{Hooks, Life, Policy, Repair, Supervisor};
use crate::pid1::sys::{self, SpawnSpec};
use crate::state::{self, Layout};
use crate::swarm;
use crate::swarm::share::{self, mounts::Mounts};

/// Everything `supervisor run` needs; the CLI fills it from flags and env.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub buddy_dir: PathBuf,
    pub template: PathBuf,
    pub state_dir: PathBuf,
    /// The gateway's install (`${MYBUDDY_GATEWAY_DIR}`: the plugins load from it).
    pub gateway_dir: PathBuf,
    pub swarm_dir: PathBuf,
    pub swarm_unmounted_ok: bool,
    /// How long the share step (and each remount) may take per volume.
    pub share_timeout: Duration,
    /// Where the share's mounts keep their block caches.
    pub share_cache: PathBuf,
    /// The spell socket a Magician holding the Fly token listens on.
    pub spell_socket: PathBuf,
    /// None: root drops to the default gateway user; non-root stays itself.
    pub user: Option<String>,
    pub env_file: Option<PathBuf>,
    pub rotate_token: bool,
    /// Local runs: render the channels disabled so a workstation never
    /// competes with the deployed Buddy for its Telegram updates.
    pub channels_off: bool,
    /// Overrides the config's `gateway.port`.
    pub port: Option<u16>,
    /// A warm gateway compile cache shipped in the image, seeded into the
    /// state's TMPDIR so the first start on a fresh volume is fast.
    pub warm_cache: Option<PathBuf>,
    /// What the image ships to seed a new swarm share.
    pub swarm_seed: Option<PathBuf>,
    /// Tests and offline runs only (`--config-overlay`).
    pub config_overlay: Option<PathBuf>,
    /// Tests and offline runs only (`--gateway-env`): more of our variables
    /// the gateway gets, checked by [`gateway_env_problems`].
    pub gateway_env: Vec<String>,
    pub policy: Policy,
    /// Empty: the real gateway.
    pub command: Vec<String>,
    /// How often the registry entry is stamped while nothing changes.
    pub heartbeat: Duration,
    /// The wait after the second boot refused in a row, and the longest
    /// (see [`refusal`]).
    pub refusal_backoff: (Duration, Duration),
}

mod refusal;

/// Exit code when the boot itself fails (bad config, swarm refused...).
pub const BOOT_FAILED: i32 = 78; // EX_CONFIG

/// Why the boot ended before the gateway started: the exit code, the step,
/// and what it said.
struct Failed {
    code: i32,
    step: &'static str,
    why: String,
}

/// Runs a timed boot step and logs it.
fn step<T, E: std::fmt::Display>(
    name: &'static str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, Failed> {
    let t = Instant::now();
    match f() {
        Ok(v) => {
            info!(step = name, ms = round_ms(t.elapsed()), "boot step done");
            metrics().boot_step(name, t.elapsed().as_secs_f64());
            Ok(v)
        }
        Err(e) => {
            error!(
                step = name,
                ms = round_ms(t.elapsed()),
                "boot step failed:\n{e}"
            );
            Err(Failed {
                code: BOOT_FAILED,
                step: name,
                why: e.to_string(),
            })
        }
    }
}

/// A stop signal that arrived during boot ends the boot between steps (Err
/// carries exit code 0); other signals are kept for the loop.
fn stop_pending(sfd: &SignalFd, deferred: &mut Vec<Signal>) -> Result<(), Failed> {
    for s in sys::read_signals(sfd) {
        if sys::STOP_SIGNALS.contains(&s) {
            info!(signal = s.as_str(), "stop requested during boot; exiting");
            return Err(Failed {
                code: 0,
                step: "",
                why: format!("{} during boot", s.as_str()),
            });
        }
        if s != Signal::SIGCHLD {
            deferred.push(s);
        }
    }
    Ok(())
}

/// The secret values a render reads: the env file (re-read on every render,
/// so a reload picks up a changed secret) over the process environment.
struct SecretSource {
    env_file: Option<PathBuf>,
}

impl SecretSource {
    fn snapshot(&self) -> Result<BTreeMap<String, String>, crate::config::problem::Problem> {
        match &self.env_file {
            Some(p) => secrets::read_env_file(p),
            None => Ok(BTreeMap::new()),
        }
    }
}

fn lookup<'a>(file: &'a BTreeMap<String, String>) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| file.get(name).cloned().or_else(|| std::env::var(name).ok())
}

struct Boot {
    cfg: RunConfig,
    layout: Layout,
    creds: Option<Credentials>,
    source: SecretSource,
    /// Set once the swarm is ready; taken by the register step.
    to_register: Option<crate::buddy::Identity>,
    /// Registered: the gateway's life goes to its registry entry.
    presence: Option<swarm::presence::Presence>,
    /// The gateway's port, asked on loopback to tell booting from running
    /// (None: a `-- CMD` child, running once started).
    port: Option<u16>,
    /// How the gateway's last run ended and why it is not started again:
    /// the `stopped` entry's reason.
    ending: Option<(crate::pid1::supervise::End, crate::pid1::supervise::Ending)>,
    /// JuiceFS mode: the share's mounts, children of ours.
    mounts: Option<Mounts>,
    role: Role,
    /// The signal mask the supervisor was started with, for the mounts.
    mask: SigSet,
    /// The next wait after a failed remount (doubles to [`REMOUNT_BACKOFF_MAX`]).
    remount_backoff: Duration,
    /// A Magician holding the Fly token: the spells its gateway asks for.
    spells: Option<crate::fleet::socket::Server>,
    /// The backup's settings (None: backups off, said at boot).
    backup_settings: Option<crate::backup::Settings>,
    /// The backup cycles, started with the gateway.
    backups: Option<crate::backup::schedule::Scheduler>,
    /// Share volumes whose mount ended, until the repair brings them back.
    unmounted: Vec<&'static str>,
}

/// How long the exit waits for the registry writer's last changes.
const REGISTRY_FLUSH: Duration = Duration::from_secs(2);

/// The first wait after a failed remount, and the longest.
const REMOUNT_BACKOFF: Duration = Duration::from_secs(1);
const REMOUNT_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Boot {
    fn render(&self) -> Result<Rendered, String> {
        let file = self.source.snapshot().map_err(|p| p.to_string())?;
        let opts = RenderOptions {
            buddy_dir: self.cfg.buddy_dir.clone(),
            template: self.cfg.template.clone(),
            state_dir: self.cfg.state_dir.clone(),
            gateway_dir: self.cfg.gateway_dir.clone(),
            swarm_dir: self.cfg.swarm_dir.clone(),
            rotate_token: self.cfg.rotate_token,
            overlay: self.cfg.config_overlay.clone(),
        };
        let mut problems = gateway_env_problems(&self.cfg.gateway_env);
        let test_only = self.cfg.config_overlay.is_some() || !self.cfg.gateway_env.is_empty();
        if test_only && std::env::var_os("FLY_MACHINE_ID").is_some() {
            problems.push(
                "--config-overlay and --gateway-env are for tests and offline runs: refused on a Fly Machine (FLY_MACHINE_ID is set)"
                    .to_string(),
            );
        }
        // Everything wrong is reported at once: the flags' problems with the
        // render's.
        let mut r = match render::render(&opts, &lookup(&file)) {
            Ok(r) if problems.is_empty() => r,
            Ok(_) => return Err(problems.join("; ")),
            Err(e) => {
                problems.push(e.to_string());
                return Err(problems.join("; "));
            }
        };
        if self.cfg.channels_off {
            r.disable_channels();
        }
        if let Some(p) = self.cfg.port {
            r.set_port(p);
        }
        Ok(r)
    }

    /// Writes the config if its content changed; returns whether it did.
    /// Through a handle on the state dir: the gateway runs meanwhile (a
    /// reload) and may have put a link or a FIFO at the config's name.
    fn write(&self, r: &Rendered) -> Result<bool, String> {
        let path = self.layout.config();
        let name = render::CONFIG_FILE_NAME;
        let new = r.to_json();
        let dir = crate::untrusted::Dir::open(&self.layout.root)
            .map_err(|e| format!("{}: cannot open: {e}", self.layout.root.display()))?;
        if dir
            .read(name, 16 << 20)
            .is_ok_and(|old| old == new.as_bytes())
        {
            return Ok(false);
        }
        let owner = self
            .creds
            .as_ref()
            .map(|c| (c.uid.as_raw(), c.gid.as_raw()));
        dir.replace_owned(name, new.as_bytes(), 0o600, false, owner)
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        Ok(true)
    }
    /// Step state: the volume's layout, the seeded workspace and warm
    /// cache, the rendered config, all owned by the gateway's user.
    fn prepare_state(&self, rendered: &Rendered) -> Result<(), String> {
        let owner = self.creds.as_ref().map(|c| (c.uid, c.gid));
        let workspace = rendered.prepared.buddy.workspace_path();
        let warm = self.cfg.warm_cache.as_deref().filter(|p| p.is_dir());
        let p = state::prepare(&self.layout, Some(&workspace), warm, owner)
            .map_err(|e| e.to_string())?;
        self.write(rendered)?;
        let m = &p.migrated;
        if m.changed() {
            info!(renamed = ?m.workspace.renamed, replaced_generic = ?m.replaced_generic, removed = ?m.removed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(), "state carried over from an older image");
        }
        for (old, new) in &m.workspace.kept_both {
            warn!(workspace = %self.layout.workspace().display(), "both {old} and {new} hold text: kept both; the gateway reads only {new}, merge {old} into it by hand");
        }
        info!(state = %self.cfg.state_dir.display(), seeded_files = p.seeded_files, warm_cache_files = p.warm_files, chowned = p.chowned, token = ?rendered.token_source, "state ready");
        Ok(())
    }

    /// Step restore: before anything is written to the state dir, a volume
    /// with no state (new, or lost with its host) gets the Buddy's newest
    /// backup. Never fails the boot: a Buddy that cannot be restored still
    /// answers its Human (as a stranger, said loudly), and the operator can
    /// restore at the next boot (`supervisor backup restore --next-boot`).
    fn restore(&mut self) -> Result<(), String> {
        use crate::backup::{self, restore::Restored};
        let settings = match backup::from_env(&crate::config::render::process_env) {
            Ok(Some(s)) => s,
            Ok(None) => {
                warn!(
                    "backups off: no MYBUDDY_BACKUP_* settings; this Buddy's state lives on its volume alone"
                );
                return Ok(());
            }
            Err(p) => {
                error!("backups off:\n{p}");
                return Ok(());
            }
        };
        if !nix::unistd::geteuid().is_root() {
            warn!(
                "backups off: they need root (the backup reads the state dir through a private mount)"
            );
            return Ok(());
        }
        let state = self.cfg.state_dir.clone();
        if let Err(e) = std::fs::create_dir_all(&state)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                backup::cycle::prepare_cache(&settings, &state).map_err(|e| e.to_string())
            })
        {
            error!("backups off: {e}");
            return Ok(());
        }
        let t = Instant::now();
        match backup::restore::at_boot(&settings, &state, &sys::stop_waiting) {
            Ok(Restored::StatePresent) => info!("restore: the volume has state; nothing restored"),
            Ok(Restored::NoBackup) => {
                info!(repository = %settings.repository, "restore: the volume is empty and there is no backup yet (a new Buddy)")
            }
            Ok(Restored::Done {
                snapshot,
                time,
                files,
                refused,
            }) => info!(
                snapshot,
                backup_time = %time,
                entries = files,
                refused = refused.len(),
                ms = round_ms(t.elapsed()),
                "restore: the volume was empty; restored the Buddy's state from its backup"
            ),
            Err(e) => error!(
                "restore: the volume is empty and no backup could be restored; this Buddy starts without its memories:\n{e}"
            ),
        }
        self.backup_settings = Some(settings);
        Ok(())
    }

    /// Step share: in JuiceFS mode, one supervised `juicefs mount` per
    /// volume this role may hold, each ready (or the boot fails) within the
    /// share timeout. In directory mode nothing: the swarm step checks the
    /// directory is a mount point.
    fn mount_share(&mut self) -> Result<(), String> {
        let cfg =
            share::from_env(&crate::config::render::process_env).map_err(|e| e.to_string())?;
        if cfg.mode == share::Mode::Dir {
            info!(swarm = %self.cfg.swarm_dir.display(), "share: a directory mounted by someone else (MYBUDDY_SHARE=dir)");
            return Ok(());
        }
        // What this role may not hold, all of it named (the same list
        // scripts/deploy unsets on the app).
        let held: Vec<String> = share::forbidden_secrets(self.role)
            .into_iter()
            .filter(|n| std::env::var_os(n).is_some())
            .collect();
        if !held.is_empty() {
            let mut why = Vec::new();
            if held.iter().any(|n| n.contains("_SPELLBOOK_")) {
                why.push("a Buddy-role Machine holds the SpellBook's credentials; only Magicians may mount the SpellBook");
            }
            if held
                .iter()
                .any(|n| n.ends_with("_BUCKET") || n.ends_with("_KEY"))
            {
                why.push("bucket keys are for `supervisor share format` only (JuiceFS keeps them in the volume's metadata)");
            }
            return Err(format!(
                "this {}-role Machine holds {}: {}. Remove them from this app's secrets (scripts/deploy does)",
                self.role,
                held.join(", "),
                why.join("; ")
            ));
        }
        let spellbook = cfg.volumes.iter().any(|v| v.name == swarm::SPELLBOOK);
        if self.role == Role::Magician && !spellbook {
            return Err(
                "a Magician mounts the SpellBook too: set MYBUDDY_SPELLBOOK_META_URL and MYBUDDY_SPELLBOOK_META_PASSWORD".into(),
            );
        }
        let mut m = Mounts::new(
            cfg.volumes,
            &self.cfg.swarm_dir,
            &self.cfg.share_cache,
            self.cfg.share_timeout,
            self.mask,
        );
        m.mount_all()?;
        info!(volumes = ?m.volumes(), pids = ?m.pids().iter().map(|p| p.as_raw()).collect::<Vec<_>>(), "share mounted");
        for v in m.volumes() {
            metrics().mount(v, true);
        }
        self.mounts = Some(m);
        Ok(())
    }

    /// Step spells (only with `FLY_API_TOKEN`): a Magician's supervisor keeps
    /// the token and casts its gateway's spells on the spell socket; a
    /// Buddy-role Machine has no use for the token and says so.
    fn listen_for_spells(&mut self, identity: &crate::buddy::Identity) -> Result<(), String> {
        let creds = match (identity.role, &self.creds) {
            (Role::Buddy, _) => {
                warn!(
                    "FLY_API_TOKEN is set on a Buddy-role Machine: unused, and no gateway gets it; remove it from this app's secrets (scripts/deploy does)"
                );
                return Ok(());
            }
            (Role::Magician, None) => {
                warn!(
                    "not root: no spell socket (it needs the gateway's own uid to check callers)"
                );
                return Ok(());
            }
            (Role::Magician, Some(c)) => c,
        };
        let group = crate::pid1::privileges::swarm_gid(crate::pid1::privileges::MAGICIANS_GROUP);
        // Root's corner of the Magician's volume, where casts keep journals.
        let journals = match crate::fleet::journal::prepare_dir(
            &self.cfg.state_dir,
            state::JOURNALS,
        ) {
            Ok(p) => Some(p),
            Err(e) => {
                warn!(error = %e, "spells: no journal directory; a cast cut short is not taken back at the next boot");
                None
            }
        };
        let mut s = crate::fleet::socket::Server::bind(
            &self.cfg.spell_socket,
            creds.uid.as_raw(),
            group.as_raw(),
            crate::fleet::socket::Caster {
                id: identity.id(),
                swarm: self.cfg.swarm_dir.clone(),
                template: self.cfg.template.clone(),
            },
            journals,
            self.mask,
        )
        .map_err(|e| format!("{}: cannot listen: {e}", self.cfg.spell_socket.display()))?;
        info!(socket = %s.path().display(), uid = creds.uid.as_raw(), "spells: the gateway casts through this socket; the Fly token stays here");
        s.rollback_pending();
        self.spells = Some(s);
        Ok(())
    }

    /// Step swarm: the share checked, laid out, repaired and probed.
    fn prepare_swarm(&self, role: Role) -> Result<swarm::Report, swarm::SwarmError> {
        let opts = swarm::Options {
            root: self.cfg.swarm_dir.clone(),
            allow_unmounted: self.cfg.swarm_unmounted_ok,
            volumes: self.mounts.as_ref().map(|m| m.volumes()),
            repair: true,
            want_mask: role == Role::Buddy,
            seeds: swarm::Seeds {
                share: self.cfg.swarm_seed.clone(),
                // The image's template directory, never the Machine's one
                // file (the share's copy wants config.json and workspace/).
                template_dir: Some(crate::config::render::template_dir(&self.cfg.buddy_dir)),
            },
        };
        swarm::prepare(&opts, self.creds.as_ref())
    }

    /// Logs what the swarm step found and returns the SpellBook to mask: a
    /// Buddy-role gateway does not even see it where we can mount.
    fn swarm_ready(&self, report: &swarm::Report, role: Role) -> Option<PathBuf> {
        let mask_dir = (report.can_mask && role == Role::Buddy)
            .then(|| swarm::Paths::new(&self.cfg.swarm_dir).spellbook());
        info!(
            verified = report.verified,
            created = report.created.len(),
            repaired = report.repairs.len(),
            quarantined = report.quarantined.len(),
            left_alone = report.skipped_count,
            spellbook_masked = mask_dir.is_some(),
            "swarm ready"
        );
        mask_dir
    }

    /// What the supervise step starts: the gateway (or `-- CMD`) with its
    /// own environment, credentials and mask.
    fn gateway_spec(&self, rendered: &Rendered, mask_dir: Option<PathBuf>) -> SpawnSpec {
        let secret_values = self.source.snapshot().unwrap_or_default();
        let env = child_env(
            &self.cfg,
            &self.layout,
            rendered,
            self.creds.as_ref(),
            &secret_values,
        );
        let (program, args) = if self.cfg.command.is_empty() {
            (
                PathBuf::from("openclaw"),
                vec![
                    "gateway".into(),
                    "--bind".into(),
                    "lan".into(),
                    "--port".into(),
                    rendered.port().to_string(),
                ],
            )
        } else {
            (
                PathBuf::from(&self.cfg.command[0]),
                self.cfg.command[1..].to_vec(),
            )
        };
        SpawnSpec {
            program,
            args,
            env,
            cwd: self.cfg.state_dir.clone(),
            credentials: self.creds.clone(),
            mask_dir,
            harden: true,
            stdio: None,
            oom_score_adj: Some(memory::GATEWAY_OOM_SCORE_ADJ),
        }
    }
}

impl Hooks for Boot {
    fn reload(&mut self) -> bool {
        info!("SIGHUP: reloading the config");
        let t = Instant::now();
        match self.render().and_then(|r| self.write(&r)) {
            Ok(changed) => info!(
                changed,
                ms = round_ms(t.elapsed()),
                "reload: config re-rendered{}",
                if changed {
                    "; the gateway applies it through its file watcher"
                } else {
                    " (unchanged)"
                }
            ),
            Err(e) => error!("reload failed; the gateway keeps its current config:\n{e}"),
        }
        true
    }

    fn withheld(&self, sig: Signal) -> Option<&'static str> {
        (sig == Signal::SIGUSR1).then_some(
            "SIGUSR1 would open the gateway's Node inspector on 127.0.0.1:9229; SIGUSR2 restarts the gateway in place, SIGHUP reloads the config",
        )
    }

    fn after_first_start(&mut self) -> Option<i32> {
        let identity = self.to_register.take()?;
        if let Some(s) = self.backup_settings.take() {
            info!(interval_s = s.interval.as_secs(), repository = %s.repository, "backups: every interval while the gateway runs");
            metrics().backups_enabled.set(1);
            self.backups = Some(crate::backup::schedule::Scheduler::new(
                s,
                self.cfg.state_dir.clone(),
                self.mask,
            ));
        }
        let book = swarm::Paths::new(&self.cfg.swarm_dir).book();
        let mounted: Vec<&str> = self.mounts.iter().flat_map(|m| m.volumes()).collect();
        match swarm::presence::Presence::start(
            book,
            &identity,
            self.port,
            self.cfg.heartbeat,
            &mounted,
        ) {
            Ok(p) => self.presence = Some(p),
            Err(e) => {
                error!(error = %e, "cannot start the registry writer; this Buddy stays unregistered")
            }
        }
        // A boot that got this far is not refused: the next refusal, if
        // any, starts its backoff afresh.
        refusal::clear(&self.cfg.state_dir);
        None
    }

    fn listeners(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.spells
            .as_ref()
            .map(|s| s.fds().to_vec())
            .unwrap_or_default()
    }

    fn accept(&mut self) {
        if let Some(s) = &mut self.spells {
            s.accept();
        }
    }

    fn stopping(&mut self) {
        if let Some(s) = &mut self.spells {
            s.stop();
        }
        if let Some(b) = &mut self.backups {
            b.stop();
        }
    }

    fn busy(&self) -> bool {
        self.spells.as_ref().is_some_and(|s| s.busy())
            || self.backups.as_ref().is_some_and(|b| b.busy())
    }

    fn kill_busy(&mut self) {
        if let Some(s) = &mut self.spells {
            s.kill();
        }
        if let Some(b) = &mut self.backups {
            b.kill();
        }
    }

    fn gateway_stopped(&mut self) {
        if let Some(b) = &mut self.backups {
            b.gateway_stopped();
        }
    }

    fn next_tick(&self) -> Option<Instant> {
        let backups = self.backups.as_ref().and_then(|b| b.next_wake());
        let presence = self.presence.as_ref().and_then(|p| p.next_tick());
        [backups, presence].into_iter().flatten().min()
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if let Some(b) = &mut self.backups
            && b.next_wake().is_some_and(|t| now >= t)
        {
            b.tick();
            metrics().backed_up(b.backed_up_at());
            if let Some(p) = &mut self.presence {
                p.backed_up(b.last_backup());
            }
        }
        if let Some(p) = &mut self.presence
            && p.next_tick().is_some_and(|t| now >= t)
        {
            p.tick();
        }
    }

    fn child_ended(&mut self, pid: nix::unistd::Pid, exit: sys::Exit) -> bool {
        if self.spells.as_mut().is_some_and(|s| s.ended(pid, exit)) {
            return false;
        }
        if let Some(b) = &mut self.backups
            && b.ended(pid, exit)
        {
            metrics().backed_up(b.backed_up_at());
            if let Some(p) = &mut self.presence {
                p.backed_up(b.last_backup());
            }
            return false;
        }
        let Some(volume) = self.mounts.as_mut().and_then(|m| m.ended(pid)) else {
            return false;
        };
        // Every lock taken through it is gone, and a Buddy-role gateway's
        // private view of the share died with it.
        error!(volume, pid = pid.as_raw(), status = %exit, "share: the mount process ended; remounting");
        metrics().mount(volume, false);
        if let Some(p) = &mut self.presence {
            p.mount(volume, false);
        }
        if !self.unmounted.contains(&volume) {
            self.unmounted.push(volume);
        }
        true
    }

    fn repair(&mut self) -> Repair {
        let Some(m) = self.mounts.as_mut() else {
            return Repair::Ready;
        };
        let progress = match m.start_missing() {
            Ok(()) => m.poll(),
            Err(e) => share::mounts::Progress::Failed(e),
        };
        let failed = |boot: &mut Boot, e: &str| {
            if let Some(p) = &mut boot.presence {
                p.share_degraded(true);
            }
            let retry_in = boot.remount_backoff;
            boot.remount_backoff = (retry_in * 2).min(REMOUNT_BACKOFF_MAX);
            error!(
                retry_in_ms = retry_in.as_millis() as u64,
                "share: remount failed:\n{e}"
            );
            Repair::Failed { retry_in }
        };
        match progress {
            share::mounts::Progress::Pending => Repair::Pending(Duration::from_millis(20)),
            share::mounts::Progress::Failed(e) => failed(self, &e),
            share::mounts::Progress::Ready => {
                // The layout, permissions and probes again, on the new mount.
                match step("swarm", || self.prepare_swarm(self.role)) {
                    Ok(r) => {
                        self.swarm_ready(&r, self.role);
                        self.remount_backoff = REMOUNT_BACKOFF;
                        info!("share: remounted");
                        for v in std::mem::take(&mut self.unmounted) {
                            metrics().remounted(v);
                            if let Some(p) = &mut self.presence {
                                p.mount(v, true);
                            }
                        }
                        if let Some(p) = &mut self.presence {
                            p.share_degraded(false);
                        }
                        Repair::Ready
                    }
                    Err(_) => failed(
                        self,
                        "the swarm step failed on the remounted share (logged above)",
                    ),
                }
            }
        }
    }

    fn life(&mut self, event: Life) {
        let m = metrics();
        match event {
            Life::Started { pid, .. } => {
                m.gateway_running(Some(pid.as_raw()));
                m.gateway_starts.inc();
            }
            Life::Exited { end } => {
                m.gateway_running(None);
                m.gateway_last_exit_code.set(end.exit.code() as i64);
                if end.oom {
                    m.gateway_oom_kills.inc();
                }
            }
            Life::Restarting { .. } => {
                m.gateway_restarts.inc();
            }
            Life::CrashLooping { .. } => {
                m.gateway_restarts.inc();
                m.gateway_crash_looping.set(1);
            }
            Life::Recovered { .. } => {
                m.gateway_crash_looping.set(0);
            }
            Life::Ended { end, why } => self.ending = Some((end, why)),
            Life::Stopping { .. } => {}
        }
        // The share may itself be what is failing: the writes happen off
        // the loop, are retried, and never stop the supervision.
        let Some(p) = &mut self.presence else {
            return;
        };
        match event {
            Life::Started { .. } => p.started(),
            Life::Restarting { end } => p.restarting(end.to_string()),
            Life::CrashLooping { exits, end } => p.crash_looping(exits, end.to_string()),
            Life::Recovered { exits } => p.recovered(exits),
            Life::Stopping { signal } => p.stopping(&format!("{} received", signal.as_str())),
            Life::Exited { .. } | Life::Ended { .. } => {}
        }
    }
}

/// The environment the gateway gets: only what it needs.
fn child_env(
    cfg: &RunConfig,
    layout: &Layout,
    r: &Rendered,
    creds: Option<&Credentials>,
    secret_values: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    env.insert("PATH".into(), path);
    env.insert("HOME".into(), cfg.state_dir.display().to_string());
    let user = creds
        .map(|c| c.user.clone())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".into());
    env.insert("USER".into(), user.clone());
    env.insert("LOGNAME".into(), user);
    env.insert("TMPDIR".into(), layout.tmp().display().to_string());
    env.insert(
        "OPENCLAW_STATE_DIR".into(),
        cfg.state_dir.display().to_string(),
    );
    env.insert(
        "OPENCLAW_CONFIG_PATH".into(),
        layout.config().display().to_string(),
    );
    // One supervisor, one process tree: no respawning wrapper in between.
    // (NODE_COMPILE_CACHE is never passed: openclaw's launcher respawns a
    // child when it is set, whatever OPENCLAW_NO_RESPAWN says; the cache is
    // found in $TMPDIR/node-compile-cache, seeded by the state step.)
    env.insert("OPENCLAW_NO_RESPAWN".into(), "1".into());
    // mDNS advertising inside a Fly VM or container reaches nobody.
    env.insert("OPENCLAW_DISABLE_BONJOUR".into(), "1".into());
    for name in ["TZ", "LANG", "LC_ALL", "TERM", "NO_COLOR", "FORCE_COLOR"] {
        if let Ok(v) = std::env::var(name) {
            env.insert(name.into(), v);
        }
    }
    // Fly's machine metadata is not secret; its API token is, and it can
    // create and delete every app of the organisation: no gateway gets it,
    // not even a Magician's (its agent runs shell commands; the spells go
    // through its supervisor instead).
    for (k, v) in std::env::vars() {
        if k.starts_with("FLY_") && k != "FLY_API_TOKEN" {
            env.insert(k, v);
        }
    }
    for name in &cfg.gateway_env {
        if let Ok(v) = std::env::var(name) {
            env.insert(name.clone(), v);
        }
    }
    // The Buddy's own secrets, and no one else's.
    let look = lookup(secret_values);
    for name in r.prepared.secret_vars() {
        if let Some(v) = look(&name) {
            env.insert(name, v);
        }
    }
    // V8's heap capped for the VM: a gateway that grows ends with Node's
    // own out-of-memory error and is restarted, instead of starving the
    // Machine (see pid1::memory).
    if let Some(cap) = memory::heap_cap_mb(std::env::var("FLY_VM_MEMORY_MB").ok().as_deref()) {
        let options = memory::with_heap_cap(env.get("NODE_OPTIONS").map(String::as_str), cap);
        env.insert("NODE_OPTIONS".into(), options);
    }
    env.into_iter().collect()
}

/// Variables the supervisor sets for the gateway itself: `--gateway-env`
/// cannot replace them (the state dir, the config, no respawn).
const OWN_GATEWAY_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "TMPDIR",
    "OPENCLAW_STATE_DIR",
    "OPENCLAW_CONFIG_PATH",
    "OPENCLAW_NO_RESPAWN",
    "OPENCLAW_DISABLE_BONJOUR",
    // Makes openclaw's launcher respawn a child (see child_env).
    "NODE_COMPILE_CACHE",
];

/// What is wrong with `--gateway-env`, all of it: a name that is not a
/// variable name, one we set ourselves, the Fly org token (never for a
/// gateway), or one that is not set.
pub fn gateway_env_problems(names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        // The grammar of the `${VAR}`s the configs use, one definition.
        if !secrets::is_var_name(n) {
            out.push(format!(
                "--gateway-env {n:?}: not a variable name (UPPER_CASE letters, digits, _)"
            ));
        } else if OWN_GATEWAY_ENV.contains(&n.as_str()) {
            out.push(format!(
                "--gateway-env {n}: the supervisor sets it for the gateway itself; drop it"
            ));
        } else if share::is_share_setting(n) {
            out.push(format!(
                "--gateway-env {n}: the swarm share's setting goes to its mount processes only, never to a gateway"
            ));
        } else if crate::backup::is_backup_setting(n) {
            out.push(format!(
                "--gateway-env {n}: the backup's setting goes to the backup alone, never to a gateway (its agent could read or delete every backup)"
            ));
        } else if n == "FLY_API_TOKEN" {
            out.push(
                "--gateway-env FLY_API_TOKEN: the Fly org token never reaches a gateway"
                    .to_string(),
            );
        } else if std::env::var_os(n).is_none() {
            out.push(format!(
                "--gateway-env {n}: not set in the supervisor's environment; set it or drop the name"
            ));
        }
    }
    out
}

/// Boots and supervises; returns the process exit code.
pub fn run(cfg: RunConfig, sfd: SignalFd, original_mask: SigSet) -> i32 {
    let mut deferred = Vec::new();
    let (mut boot, spec) = match boot(cfg, &sfd, original_mask, &mut deferred) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let policy = boot.cfg.policy.clone();
    // Signals that arrived during boot (USR1, HUP...) are not lost: re-raise
    // them into our own queue so the loop handles them in order.
    for s in deferred {
        let _ = nix::sys::signal::raise(s);
    }
    let code = Supervisor::new(&sfd, original_mask, spec, policy, &mut boot).run();
    // `stopped`, and what the registry writer still holds, go out while
    // the share is there (a run of seconds is registered too), never
    // holding the exit for long.
    if let Some(p) = &mut boot.presence {
        let (why, last) = stopped_reason(boot.ending, code);
        p.stopped(&why, last, REGISTRY_FLUSH);
    }
    // The gateway is gone: now the share can go (a clean unmount each).
    if let Some(m) = &mut boot.mounts {
        m.stop();
    }
    code
}

/// The boot steps up to the gateway's start, in docs/architecture.md's order; the
/// register step runs from the loop once the gateway has started. Err is
/// the exit code: 78 for a failed step, 0 for a stop during boot.
fn boot(
    cfg: RunConfig,
    sfd: &SignalFd,
    mask: SigSet,
    deferred: &mut Vec<Signal>,
) -> Result<(Boot, SpawnSpec), i32> {
    step("signals", take_orphans).map_err(|f| f.code)?;
    // Served from the start: a Buddy that refuses its boot, or is long in
    // restoring, is seen too. Never a reason to fail the boot.
    match metrics::address(&crate::config::render::process_env) {
        Ok(Some(addr)) => {
            if let Err(e) = metrics::serve(addr) {
                warn!("metrics not served: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => warn!("metrics not served: {e}"),
    }
    let creds = step("privileges", || gateway_identity(&cfg)).map_err(|f| f.code)?;
    stop_pending(sfd, deferred).map_err(|f| f.code)?;

    let mut boot = Boot {
        layout: Layout::new(&cfg.state_dir),
        creds,
        source: SecretSource {
            env_file: cfg.env_file.clone(),
        },
        cfg,
        to_register: None,
        presence: None,
        port: None,
        ending: None,
        mounts: None,
        role: Role::Buddy,
        mask,
        remount_backoff: REMOUNT_BACKOFF,
        spells: None,
        backup_settings: None,
        backups: None,
        unmounted: Vec::new(),
    };
    match boot_steps(&mut boot, sfd, deferred) {
        Ok(spec) => Ok((boot, spec)),
        Err(f) => {
            if f.code == BOOT_FAILED {
                boot.refused(&f, sfd);
            }
            Err(f.code)
        }
    }
}

/// The boot steps from restore to spells (see [`boot`]).
fn boot_steps(
    boot: &mut Boot,
    sfd: &SignalFd,
    deferred: &mut Vec<Signal>,
) -> Result<SpawnSpec, Failed> {
    step("restore", || boot.restore())?;
    stop_pending(sfd, deferred)?;
    let rendered = step("render", || boot.render())?;
    if let Some(o) = &boot.cfg.config_overlay {
        warn!(overlay = %o.display(), "config overlay applied (tests and offline runs only)");
    }
    if !boot.cfg.gateway_env.is_empty() {
        warn!(names = ?boot.cfg.gateway_env, "passing extra variables to the gateway (tests and offline runs only)");
    }
    if boot.cfg.channels_off {
        warn!(
            "channels are off for this run (--channels off): Telegram and WhatsApp stay disconnected"
        );
    }
    stop_pending(sfd, deferred)?;

    step("state", || boot.prepare_state(&rendered))?;
    stop_pending(sfd, deferred)?;

    let identity = rendered.prepared.buddy.identity.clone();
    boot.role = identity.role;
    // (A failure from here on drops `boot`, and with it any mount started.)
    step("share", || boot.mount_share())?;
    stop_pending(sfd, deferred)?;

    let report = step("swarm", || boot.prepare_swarm(identity.role))?;
    let mask_dir = boot.swarm_ready(&report, identity.role);
    stop_pending(sfd, deferred)?;

    if std::env::var_os("FLY_API_TOKEN").is_some() {
        step("spells", || boot.listen_for_spells(&identity))?;
    }
    boot.to_register = Some(identity);

    boot.port = boot.cfg.command.is_empty().then(|| rendered.port());
    let spec = boot.gateway_spec(&rendered, mask_dir);
    info!(buddy = %rendered.prepared.buddy.identity.id(), port = rendered.port(), "boot complete");
    Ok(spec)
}

/// Step signals: the signalfd was taken before arguments were parsed; what
/// is left is to get the gateway's orphans back when we are not PID 1.
fn take_orphans() -> Result<(), std::io::Error> {
    let pid1 = sys::is_pid1();
    if !pid1 {
        sys::become_subreaper()?;
    }
    // The OOM killer's last choice (the share's mounts and backups inherit
    // it; the gateway's is raised at its spawn).
    if let Err(e) = sys::set_own_oom_score_adj(memory::SUPERVISOR_OOM_SCORE_ADJ) {
        warn!(error = %e, gateway = memory::GATEWAY_OOM_SCORE_ADJ, "cannot lower our own oom_score_adj; the gateway's is raised all the same, so it stays the OOM killer's first choice");
    }
    info!(pid1, subreaper = !pid1, "signals taken");
    Ok(())
}

/// Step privileges: who the gateway runs as. None: not root, the gateway
/// runs as the supervisor's own user.
fn gateway_identity(cfg: &RunConfig) -> Result<Option<Credentials>, String> {
    let root = sys::is_root();
    // The role picks the gateway's groups and is read before the render
    // step: a broken buddy.json is reported by that step; until then
    // assume the least privileged role.
    let role = crate::buddy::load(&cfg.buddy_dir)
        .map(|b| b.identity.role)
        .unwrap_or(Role::Buddy);
    let spec = match (&cfg.user, root) {
        (Some(u), _) => Some(u.clone()),
        (None, true) => Some(privileges::GATEWAY_USER.to_string()),
        (None, false) => None,
    };
    let Some(spec) = spec else {
        info!("not root: the gateway runs as the supervisor's own user");
        return Ok(None);
    };
    let c = privileges::resolve(&spec, role).map_err(|e| e.to_string())?;
    if !root && c.uid != nix::unistd::getuid() {
        return Err(format!("--user {spec}: switching users needs root"));
    }
    info!(user = %c.user, uid = c.uid.as_raw(), gid = c.gid.as_raw(), groups = ?c.groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>(), role = %role, "gateway identity");
    Ok(if root { Some(c) } else { None })
}

/// What the `stopped` entry says: why the gateway is not running, and how
/// its last run ended.
fn stopped_reason(
    ending: Option<(crate::pid1::supervise::End, crate::pid1::supervise::Ending)>,
    code: i32,
) -> (String, Option<String>) {
    use crate::pid1::supervise::Ending;
    match ending {
        Some((end, Ending::Asked(sig))) => (
            format!("stopped by {} (supervisor exit {code})", sig.as_str()),
            Some(end.to_string()),
        ),
        Some((end, Ending::Policy)) => (
            format!(
                "the gateway exited and the restart policy does not restart it (supervisor exit {code})"
            ),
            Some(end.to_string()),
        ),
        Some((end, Ending::GaveUp { crashes })) => (
            format!(
                "gave up after {crashes} crashes in the restart window (supervisor exit {code})"
            ),
            Some(end.to_string()),
        ),
        None => (format!("the supervisor exited ({code})"), None),
    }
}

fn round_ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}
