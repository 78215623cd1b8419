//! `spawn`, `upgrade`, `deploy`, `adopt`, `machine-config`: growing and
//! keeping the swarm from the command line.

use std::path::PathBuf;

use clap::Args;

use super::swarm::caster;
use super::{CasterArgs, SwarmDirArg, fail};

#[derive(Debug, Args)]
pub struct SpawnArgs {
    /// The spell file (YAML, see spellbook/spells/spawn_buddy.md)
    pub spell: PathBuf,
    /// A MyBuddyTalk checkout to write the new Buddy into (buddies/<id>/) and
    /// deploy with its scripts/deploy; without it the Buddy is recorded in the
    /// SpellBook (spellbook/buddies/<id>/) and deployed over the Fly Machines API
    #[arg(long)]
    pub repo: Option<PathBuf>,
    #[command(flatten)]
    pub swarm: SwarmDirArg,
    #[command(flatten)]
    pub caster: CasterArgs,
    /// Set the Buddy's secrets and deploy it
    #[arg(long)]
    pub deploy: bool,
    /// The config template a SpellBook Buddy is made with, never the share's
    /// [default: this Machine's own, /opt/mybuddy/_machine/template.json, else the image's]
    #[arg(long, env = "MYBUDDY_TEMPLATE")]
    pub template: Option<PathBuf>,
    /// Show every change and make none
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Keep what the cast makes in this journal (in a root-only directory) so
    /// that a cast cut short is taken back by `supervisor rollback`
    #[arg(long)]
    pub journal: Option<PathBuf>,
}

/// Where and how a deploy over the Machines API goes (FLY_API_HOSTNAME and
/// FLY_API_TOKEN come from the environment).
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The base image, pinned by digest [default: this Machine's own, FLY_IMAGE_REF]
    #[arg(long, env = "FLY_IMAGE_REF")]
    pub image: Option<String>,
    /// The Fly organisation new apps are made in
    #[arg(long, env = "MYBUDDY_FLY_ORG", default_value = "personal")]
    pub org: String,
    /// The region [default: fly.toml's primary_region]
    #[arg(long)]
    pub region: Option<String>,
    /// The fly.toml a Machine is made from [default: the image's, /opt/mybuddy/fly.toml]
    #[arg(long, env = "MYBUDDY_FLY_TOML")]
    pub fly_toml: Option<PathBuf>,
    /// How long a new Machine may take to start and pass its checks, seconds
    #[arg(long, env = "MYBUDDY_CHECKS_TIMEOUT", default_value_t = 300)]
    pub checks_timeout: u64,
}

impl ApiArgs {
    /// The API deploy's settings; every problem at once. `pin_tags`: an
    /// image given by tag is pinned to its digest by asking the registry (a
    /// spell takes only a pinned image: the one its Machine runs).
    fn deploy(&self, pin_tags: bool) -> Result<crate::fleet::apply::ApiDeploy, String> {
        use crate::fleet::{fly, machine};
        let mut problems = Vec::new();
        let client = fly::Client::from_env()
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        let fly_toml = self
            .fly_toml
            .clone()
            .unwrap_or_else(|| PathBuf::from(machine::IMAGE_FLY_TOML));
        let facts = machine::fly_facts(&fly_toml)
            .map_err(|p| problems.extend(p.iter().map(ToString::to_string)))
            .ok();
        let image = match (&self.image, &client) {
            (Some(i), Some(c)) if pin_tags && !i.contains("@sha256:") => match c.pin(i) {
                Ok(p) => Some(p),
                Err(e) => {
                    problems.push(format!("--image {i}: cannot pin it to a digest: {e}"));
                    None
                }
            },
            _ => self.image.clone().filter(|i| i.contains("@sha256:")),
        };
        if image.is_none() && problems.is_empty() {
            problems.push("--image: the base image pinned by digest (…@sha256:…) is needed; on a Fly Machine FLY_IMAGE_REF names its own".into());
        }
        match (client, facts, image) {
            (Some(client), Some(facts), Some(image)) if problems.is_empty() => {
                Ok(crate::fleet::apply::ApiDeploy {
                    region: self.region.clone().unwrap_or_else(|| facts.region.clone()),
                    client,
                    facts,
                    image,
                    org: self.org.clone(),
                    checks_timeout: std::time::Duration::from_secs(self.checks_timeout),
                })
            }
            _ => Err(format!(
                "cannot deploy over the Fly Machines API:\n  - {}",
                problems.join("\n  - ")
            )),
        }
    }
}

/// The config template this Machine's own Buddy renders with (the one
/// its Machine carries, else the image's): root's, unlike the share's.
fn own_template() -> PathBuf {
    crate::config::render::default_template(std::path::Path::new(super::IMAGE_BUDDY_DIR))
}

pub(super) fn cmd_spawn(a: SpawnArgs) -> i32 {
    use crate::fleet::spell;
    // Inside a Magician's Machine the agent has no token: its supervisor
    // casts for it, on the spell socket.
    if a.repo.is_none() && a.deploy && std::env::var_os("FLY_API_TOKEN").is_none() {
        let content = match std::fs::read_to_string(&a.spell) {
            Ok(c) => c,
            Err(e) => return fail(format!("{}: {e}", a.spell.display())),
        };
        let req = crate::fleet::socket::Request::Spawn {
            spell_file: content,
            deploy: true,
            dry_run: a.dry_run,
        };
        return match crate::fleet::socket::cast(&crate::fleet::socket::path_from_env(), &req) {
            Ok(code) => code,
            Err(e) => fail(e),
        };
    }
    // A stop (the supervisor that runs this spell is stopping) lets the
    // cast take back what it made instead of dying mid-cast.
    if let Err(e) = crate::pid1::sys::catch_stop() {
        return fail(format!("cannot take SIGTERM: {e}"));
    }
    let swarm = a.swarm.swarm_dir.clone();
    let template = a.template.clone().unwrap_or_else(own_template);
    let world = match spell::World::at(a.repo.as_deref(), &swarm, &template) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let say = |m: &str| eprintln!("{m}");
    let who = match caster(&a.caster, a.repo.as_deref(), &swarm) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = spell::check_caster(&world, &who, "SpawnBuddy") {
        return fail(e);
    }
    let deploy = match (&a.repo, a.deploy) {
        (_, false) => spell::Deploy::Skip,
        (Some(repo), true) => spell::Deploy::Script(repo.join("scripts/deploy")),
        (None, true) => match a.api.deploy(false) {
            Ok(d) => spell::Deploy::Api(Box::new(d)),
            Err(e) => return fail(e),
        },
    };
    let _lock = match spell::lock(&world) {
        Ok(l) => l,
        Err(e) => {
            return fail(format!(
                "{}: cannot lock for the spell: {e}",
                world.buddies().display()
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
        deploy,
        dry_run: a.dry_run,
        env: |n| std::env::var(n).ok(),
        journal: a.journal.clone(),
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

#[derive(Debug, Args)]
pub struct MachineConfigArgs {
    /// The Buddy's directory (buddy.json, config.json, workspace/)
    #[arg(long = "buddy")]
    pub buddy_dir: PathBuf,
    /// The base image, pinned by digest (registry.fly.io/mybuddytalk-base@sha256:…)
    #[arg(long)]
    pub image: String,
    /// The id of the Buddy's state volume
    #[arg(long)]
    pub volume: Option<String>,
    /// The template the Machine carries and renders with [default: BUDDY/../_machine/template.json if present, else BUDDY/../_template/config.json]
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// Also write the Machine's files under this new directory, each at its
    /// guest path (what scripts/build-buddy-image builds a local image from)
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// The fly.toml whose facts the Machine is made of
    #[arg(long, default_value = "fly.toml")]
    pub fly_toml: PathBuf,
}

pub(super) fn cmd_machine_config(a: MachineConfigArgs) -> i32 {
    use crate::fleet::machine;
    let made = machine::fly_facts(&a.fly_toml).and_then(|f| {
        let template = a
            .template
            .clone()
            .unwrap_or_else(|| crate::config::render::default_template(&a.buddy_dir));
        let def = machine::Definition::new(&a.buddy_dir, &template);
        machine::config(&f, def, &a.image, a.volume.as_deref())
    });
    match made {
        Ok(v) => {
            if let Some(root) = &a.rootfs {
                // A fresh directory: files are never laid over someone's tree.
                if let Err(e) = std::fs::create_dir(root) {
                    return fail(format!(
                        "--rootfs {}: {e} (give a new directory)",
                        root.display()
                    ));
                }
                if let Err(e) = machine::lay_out(&v, root) {
                    return fail(e);
                }
            }
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Err(p) => fail(crate::config::problem::Problems::new(
            format!("no Machine config for {}", a.buddy_dir.display()),
            p,
        )),
    }
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The checkout the Buddies are copied into (its buddies/)
    #[arg(long)]
    pub repo: PathBuf,
    #[command(flatten)]
    pub swarm: SwarmDirArg,
    /// Only these Buddies (ids); default: every one the SpellBook records
    pub ids: Vec<String>,
}

pub(super) fn cmd_adopt(a: AdoptArgs) -> i32 {
    match crate::fleet::spell::adopt(&a.swarm.swarm_dir, &a.repo, &a.ids) {
        Ok(copied) if copied.is_empty() => {
            println!("nothing to adopt: every Buddy the SpellBook records is in the checkout");
            0
        }
        Ok(copied) => {
            for s in &copied {
                println!("adopted buddies/{s}/ (commit it: git add buddies/{s})");
            }
            0
        }
        Err(e) => fail(e),
    }
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The new base image, pinned by digest (registry.fly.io/mybuddytalk-base@sha256:…)
    #[arg(long)]
    pub image: String,
    /// Only these Buddies (ids); default: every deployed one in the registry
    pub ids: Vec<String>,
    /// The Buddy upgraded first [default: the first Buddy-role one]
    #[arg(long)]
    pub canary: Option<String>,
    #[command(flatten)]
    pub swarm: SwarmDirArg,
    #[command(flatten)]
    pub caster: CasterArgs,
    /// A checkout whose buddies/ holds definitions (besides the SpellBook's record)
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// The fly.toml a Machine's files are made with [default: the checkout's, else the image's]
    #[arg(long, env = "MYBUDDY_FLY_TOML")]
    pub fly_toml: Option<PathBuf>,
    /// How long an updated Machine may take to start and pass its checks, seconds
    #[arg(long, env = "MYBUDDY_CHECKS_TIMEOUT", default_value_t = 300)]
    pub checks_timeout: u64,
    /// How long, after its checks pass, the Buddy may take to register the new version, seconds
    #[arg(long, default_value_t = 120)]
    pub version_timeout: u64,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

pub(super) fn cmd_upgrade(a: UpgradeArgs) -> i32 {
    use crate::fleet::{machine, upgrade};
    if a.repo.is_none() && std::env::var_os("FLY_API_TOKEN").is_none() {
        let req = crate::fleet::socket::Request::Upgrade {
            image: a.image.clone(),
            canary: a.canary.clone(),
            ids: a.ids.clone(),
            dry_run: a.dry_run,
        };
        return match crate::fleet::socket::cast(&crate::fleet::socket::path_from_env(), &req) {
            Ok(code) => code,
            Err(e) => fail(e),
        };
    }
    let swarm = a.swarm.swarm_dir.clone();
    let who = match caster(&a.caster, a.repo.as_deref(), &swarm) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = crate::pid1::sys::catch_stop() {
        return fail(format!("cannot take SIGTERM: {e}"));
    }
    let template = own_template();
    let world = match crate::fleet::spell::World::at(a.repo.as_deref(), &swarm, &template) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    if let Err(e) = crate::fleet::spell::check_caster(&world, &who, "UpgradeBuddy") {
        return fail(e);
    }
    let client = match crate::fleet::fly::Client::from_env() {
        Ok(c) => c,
        Err(e) if a.dry_run => {
            eprintln!("(dry run without FLY_API_TOKEN: {e})");
            crate::fleet::fly::Client::new(crate::fleet::fly::DEFAULT_BASE, "")
        }
        Err(e) => return fail(e),
    };
    // The SpellBook's records, copied out through handles into our private
    // directory: a Machine's files are made from what was read here, never
    // from a path a gateway can point elsewhere.
    let records = world.private().join("records");
    let copied = world
        .buddies_dir()
        .and_then(|d| crate::untrusted::copy_out(&d, &records, 256 * 1024, 64 << 20));
    if let Err(e) = copied {
        return fail(format!(
            "{}: cannot read the SpellBook's records: {e}",
            world.buddies().display()
        ));
    }
    let mut definitions = vec![records];
    if let Some(r) = &a.repo {
        definitions.insert(0, r.join("buddies"));
    }
    let own = std::env::var("FLY_MACHINE_ID").ok();
    // With the API at hand, each entry's Machine must be its Buddy's before
    // it is planned (a made-up entry never becomes the canary).
    let has_token = std::env::var_os("FLY_API_TOKEN").is_some() && !a.dry_run;
    let verify = |t: &upgrade::Target| {
        if has_token {
            upgrade::owned_machine(&client, t)
        } else {
            Ok(())
        }
    };
    let (targets, notes) = match upgrade::plan(
        &swarm,
        &a.ids,
        a.canary.as_deref(),
        own.as_deref(),
        &definitions,
        &verify,
    ) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    for n in &notes {
        eprintln!("{n}");
    }
    if targets.is_empty() {
        return fail("no deployed Buddy to upgrade (the registry names none with a Fly Machine)");
    }
    let fly_toml = a.fly_toml.clone().unwrap_or_else(|| world.fly_toml());
    let facts = machine::fly_facts(&fly_toml).ok();
    let opts = upgrade::Options {
        image: a.image.clone(),
        checks_timeout: std::time::Duration::from_secs(a.checks_timeout),
        version_timeout: std::time::Duration::from_secs(a.version_timeout),
        lease_ttl: (a.checks_timeout + a.version_timeout + 120) as u32,
        dry_run: a.dry_run,
        template: a
            .repo
            .as_ref()
            .map(|r| r.join("buddies/_template").join(crate::buddy::CONFIG_FILE)),
    };
    let mut say = |m: &str| eprintln!("{m}");
    match upgrade::rollout(
        &client,
        facts.as_ref(),
        &swarm,
        &who.id(),
        &targets,
        &opts,
        &mut say,
    ) {
        Ok(o) if a.dry_run => {
            let _ = o;
            println!("dry run: nothing was changed");
            0
        }
        Ok(o) => match o.stopped {
            None => {
                println!(
                    "upgraded {} Buddies to {}: {}",
                    o.upgraded.len(),
                    a.image,
                    o.upgraded.join(", ")
                );
                0
            }
            Some((id, why)) => {
                println!(
                    "upgrade stopped at {id} (put back on its old config): {why}; upgraded before it: {}",
                    if o.upgraded.is_empty() {
                        "none".into()
                    } else {
                        o.upgraded.join(", ")
                    }
                );
                1
            }
        },
        Err(e) => fail(e),
    }
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The Buddy's directory (buddies/<id>)
    pub buddy_dir: PathBuf,
    /// Print what would be done and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Replace a running Machine without its backup first (when the backup itself is what fails)
    #[arg(long)]
    pub no_backup: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `supervisor deploy`: one Buddy onto its Fly Machine over the Machines API,
/// with the same Machine definition a spell makes. Secrets in groups, each
/// all from the environment or none (then already on the app): the Buddy's
/// own, the share's for its role, and for a Magician the org token
/// (`MYBUDDY_MAGICIAN_FLY_TOKEN`); what the role may not hold is unset.
pub(super) fn cmd_deploy(a: DeployArgs) -> i32 {
    use crate::config::render::{self, Secret};
    use crate::fleet::apply;
    let template = render::default_template(&a.buddy_dir);
    let (prepared, problems) = crate::check::check_buddy(&a.buddy_dir, &template);
    let Some(prepared) = prepared.filter(|_| problems.is_empty()) else {
        return fail(crate::config::problem::Problems::new(
            format!(
                "{} does not pass check-config; nothing was deployed",
                a.buddy_dir.display()
            ),
            problems,
        ));
    };
    let id = prepared.buddy.identity.clone();
    let role = id.role;
    let env = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    let optional = format!("{}_GATEWAY_TOKEN", id.env_prefix());
    let own: Vec<String> = prepared
        .secret_vars()
        .into_iter()
        .filter(|n| *n != optional)
        .collect();
    let mut secrets = apply::Secrets::default();
    let mut problems = Vec::new();
    for (what, names) in [
        ("this Buddy's secrets".to_string(), own),
        (
            format!("the share's secrets for a {role}"),
            crate::swarm::share::machine_secrets(role),
        ),
        (
            "this Buddy's backup secrets".to_string(),
            crate::backup::SECRETS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
    ] {
        let (have, missing): (Vec<&String>, Vec<&String>) =
            names.iter().partition(|n| env(n).is_some());
        if !have.is_empty() && !missing.is_empty() {
            problems.push(format!(
                "set all of {what} or none; missing: {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        } else if have.is_empty() {
            // The backup is not yet every app's (SpawnBuddy makes no
            // bucket): none given leaves the app's as they are, required
            // of nobody; the boot says when a Buddy runs without backups.
            if !names
                .iter()
                .any(|n| crate::backup::SECRETS.contains(&n.as_str()))
            {
                secrets.on_app.extend(names.iter().cloned());
            }
        } else {
            secrets.set.extend(
                names
                    .iter()
                    .map(|n| (n.clone(), Secret(env(n).unwrap_or_default()))),
            );
        }
    }
    if !problems.is_empty() {
        return fail(problems.join("\n"));
    }
    if !secrets.set.is_empty()
        && let Some(t) = env(&optional)
    {
        secrets.set.push((optional.clone(), Secret(t)));
    }
    match (role, env("MYBUDDY_MAGICIAN_FLY_TOKEN")) {
        (crate::buddy::Role::Magician, Some(t)) => {
            secrets.set.push(("FLY_API_TOKEN".into(), Secret(t)));
        }
        (crate::buddy::Role::Buddy, Some(_)) => eprintln!(
            "deploy: MYBUDDY_MAGICIAN_FLY_TOKEN is set but {} is a buddy: not given to its app",
            id.id()
        ),
        _ => {}
    }
    secrets.unset = crate::swarm::share::forbidden_secrets(role);
    if role == crate::buddy::Role::Buddy {
        secrets.unset.push("FLY_API_TOKEN".into());
    }
    let app = apply::app_name(&id.slug());
    if a.dry_run {
        for line in [
            format!(
                "look up the Fly app {app}; create it in {} with a Flycast address if free",
                a.api.org
            ),
            format!(
                "set its secrets ({}), keep ({}), unset any of ({})",
                secrets
                    .set
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                secrets.on_app.join(" "),
                secrets.unset.join(" ")
            ),
            "make its state volume if it has none".into(),
            format!(
                "create its Machine on {}, or replace the config of the one it runs (lease, update, healthy or put back)",
                a.api.image.as_deref().unwrap_or("--image")
            ),
        ] {
            eprintln!("+ would {line}");
        }
        println!("dry run: nothing was changed");
        return 0;
    }
    let api = match a.api.deploy(true) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    eprintln!(
        "deploy: {} as {app} on {} ({})",
        id.id(),
        api.image,
        api.client.base()
    );
    let _ = crate::pid1::sys::catch_stop();
    let mut journal = crate::fleet::journal::Journal::memory(&format!("deploy of {}", id.id()));
    let mut say = |m: &str| eprintln!("{m}");
    let no_backup = a.no_backup;
    let client = &api.client;
    let backup_first = move |app: &str, m: &crate::fleet::fly::Machine| {
        if no_backup {
            return Ok("replaced without a backup first (--no-backup)".to_string());
        }
        crate::fleet::replace::backup_before_replace(client, app, m)
    };
    match apply::deploy(
        &api,
        &id,
        crate::fleet::machine::Definition::new(&a.buddy_dir, &template),
        &secrets,
        apply::Existing::Replace,
        &backup_first,
        &mut journal,
        &mut say,
    ) {
        Ok(machine) => {
            journal.done();
            println!(
                "deployed {} as {app}, Machine {machine} on {}",
                id.id(),
                api.image
            );
            0
        }
        Err(why) => {
            eprintln!("deploy: {why}");
            for line in journal.undo_all(Some(&api.client)) {
                eprintln!("  {line}");
            }
            1
        }
    }
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The directory of cast journals (root's, 0700; a Magician's boot gives it)
    #[arg(long)]
    pub journals: PathBuf,
}

/// Takes back, over the Machines API (FLY_API_TOKEN), what every journal
/// in `--journals` records: casts cut short by a stop or a crash.
pub(super) fn cmd_rollback(a: RollbackArgs) -> i32 {
    let client = crate::fleet::fly::Client::from_env().ok();
    match crate::fleet::journal::rollback(&a.journals, client.as_ref()) {
        Ok(notes) => {
            for n in &notes {
                eprintln!("rollback: {n}");
            }
            i32::from(notes.iter().any(|n| n.contains("could not undo")))
        }
        Err(e) => fail(e),
    }
}
