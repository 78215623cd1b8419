//! `spawn`: the SpawnBuddy spell from the command line.

use std::path::PathBuf;

use clap::Args;

use super::swarm::caster;
use super::{CasterArgs, SwarmDirArg, fail};

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

pub(super) fn cmd_spawn(a: SpawnArgs) -> i32 {
    use crate::fleet::spell;
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
    /// The fly.toml whose facts the Machine is made of
    #[arg(long, default_value = "fly.toml")]
    pub fly_toml: PathBuf,
}

pub(super) fn cmd_machine_config(a: MachineConfigArgs) -> i32 {
    use crate::fleet::machine;
    let made = machine::fly_facts(&a.fly_toml)
        .and_then(|f| machine::config(&f, &a.buddy_dir, &a.image, a.volume.as_deref()));
    match made {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Err(p) => fail(crate::config::problem::Problems::new(
            format!("no Machine config for {}", a.buddy_dir.display()),
            p,
        )),
    }
}
