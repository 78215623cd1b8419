//! Casting a validated spell: generate → deploy → register → resonate, each
//! step announced; a failing step undoes, in reverse, what the earlier ones
//! made, and the error names the step and every undo.

use std::fs;
use std::path::PathBuf;

use serde_json::json;

use super::{PENDING_MARKER, Spawn, SpellError, World, generate};
use crate::buddy::{Identity, Status};
use crate::fleet::deploy;
use crate::swarm::{Paths, registry, resonate};

/// How the spell's deploy step runs.
#[derive(Debug, Clone)]
pub enum Deploy {
    /// Not at all: the commands an operator runs are printed.
    Skip,
    /// `scripts/deploy` of a checkout (from a workstation).
    Script(PathBuf),
    /// Over the Fly Machines API (a Magician's Machine: no checkout, no CLI).
    Api(Box<crate::fleet::apply::ApiDeploy>),
}

/// How the spell runs.
#[derive(Debug, Clone)]
pub struct CastOptions {
    pub deploy: Deploy,
    pub dry_run: bool,
    /// The caster's environment (the shared keys and the share's settings
    /// the new app gets over the API).
    pub env: fn(&str) -> Option<String>,
}

/// What a cast did (for the caller's summary).
#[derive(Debug)]
pub struct Outcome {
    pub slug: String,
    pub announcement: Option<PathBuf>,
    pub deployed: bool,
}

/// What the cast has made so far, and how to take each back.
#[derive(Default)]
struct Undo(Vec<crate::fleet::apply::Undo>);

impl Undo {
    fn push(&mut self, f: impl FnOnce() -> Result<String, String> + 'static) {
        self.0.push(Box::new(f));
    }

    /// Undoes everything in reverse and returns the step's error with a
    /// line per undo.
    fn fail(self, step: &'static str, why: String) -> SpellError {
        let notes = crate::fleet::apply::undo_all(self.0);
        SpellError::Step {
            step,
            why,
            undo: if notes.is_empty() {
                String::new()
            } else {
                format!("\n  {}", notes.join("\n  "))
            },
        }
    }
}

struct Cast<'a> {
    world: &'a World<'a>,
    caster: &'a Identity,
    spawn: &'a Spawn,
    slug: String,
    dir: PathBuf,
    undo: Undo,
    progress: &'a mut dyn FnMut(&str),
}

/// Casts a validated spell, step by step, undoing on failure.
pub fn cast(
    world: &World,
    caster: &Identity,
    s: &Spawn,
    opts: &CastOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome, SpellError> {
    let slug = s.identity.slug();
    let files = generate(world, s).map_err(|why| SpellError::Step {
        step: "generate",
        why,
        undo: String::new(),
    })?;
    if opts.dry_run {
        dry_run(world, s, &slug, &files, &opts.deploy, progress);
        return Ok(Outcome {
            slug,
            announcement: None,
            deployed: false,
        });
    }
    let mut c = Cast {
        world,
        caster,
        spawn: s,
        dir: world.buddies().join(&slug),
        slug,
        undo: Undo::default(),
        progress,
    };
    if let Err(why) = c.write_files(&files) {
        return Err(c.undo.fail("generate", why));
    }
    if let Err(why) = c.check_generated(files.len()) {
        return Err(c.undo.fail("generate", why));
    }
    let deployed = match c.deploy(opts) {
        Ok(d) => d,
        Err(why) => return Err(c.undo.fail("deploy", why)),
    };
    let status = if deployed {
        Status::Active
    } else {
        Status::Planned
    };
    if let Err(why) = c.register(status) {
        return Err(c.undo.fail("register", why));
    }
    let announcement = match c.resonate(status) {
        Ok(a) => a,
        Err(why) => return Err(c.undo.fail("resonate", why)),
    };
    let _ = fs::remove_file(c.dir.join(PENDING_MARKER));
    Ok(Outcome {
        slug: c.slug,
        announcement: Some(announcement),
        deployed,
    })
}

/// `--dry-run`: every change the cast would make, none made.
fn dry_run(
    world: &World,
    s: &Spawn,
    slug: &str,
    files: &[(PathBuf, String)],
    how: &Deploy,
    progress: &mut dyn FnMut(&str),
) {
    let id = &s.identity;
    let deploy = !matches!(how, Deploy::Skip);
    progress(&format!("[generate] would create {}:", world.shown(slug)));
    for (p, _) in files {
        progress(&format!("    {}", p.display()));
    }
    if let Deploy::Api(api) = how {
        let app = crate::fleet::apply::app_name(slug);
        for line in [
            format!(
                "look up the Fly app {app}; create it in {} if free",
                api.org
            ),
            format!(
                "set its secrets: {}",
                s.secrets()
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
                    + " + the shared keys and the share's settings"
            ),
            format!(
                "create the volume {} in {}",
                api.facts.mount_source, api.region
            ),
            format!(
                "create a Machine on {} with the Buddy's files, wait until started and every check passes",
                api.image
            ),
        ] {
            progress(&format!("[deploy] would {line}"));
        }
    } else {
        for line in deploy::operator_lines(s, slug) {
            progress(&format!(
                "[deploy] {}{line}",
                if deploy {
                    "would run: "
                } else {
                    "to run later: "
                }
            ));
        }
    }
    progress(&format!(
        "[register] would add {} to registry.json as {}",
        id.id(),
        if deploy { "active" } else { "planned" }
    ));
    progress(&format!(
        "[resonate] would announce {} in mybuddybook/announcements/ and log it in spellbook/changelog.md",
        id.id()
    ));
}

impl Cast<'_> {
    /// Generate, part 1: staged beside its final place, then renamed in, so
    /// the directory appears whole; the marker says a spell is still working
    /// on it (a cast killed midway is started over by the next).
    fn write_files(&mut self, files: &[(PathBuf, String)]) -> Result<(), String> {
        let stage = self
            .world
            .buddies()
            .join(format!(".spell-{}.tmp", self.slug));
        let _ = fs::remove_dir_all(&stage);
        if self.dir.join(PENDING_MARKER).exists() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        let write = || -> std::io::Result<()> {
            for (p, content) in files {
                let path = stage.join(p);
                fs::create_dir_all(path.parent().unwrap_or(&stage))?;
                fs::write(path, content)?;
            }
            fs::write(
                stage.join(PENDING_MARKER),
                "a SpawnBuddy spell is creating this Buddy\n",
            )?;
            fs::rename(&stage, &self.dir)
        };
        if let Err(e) = write() {
            let _ = fs::remove_dir_all(&stage);
            return Err(format!("{}: {e}", self.dir.display()));
        }
        let d = self.dir.clone();
        self.undo.push(move || {
            fs::remove_dir_all(&d)
                .map(|_| format!("removed {}", d.display()))
                .map_err(|e| e.to_string())
        });
        Ok(())
    }

    /// Generate, part 2: the new Buddy passes the same check-config CI runs.
    fn check_generated(&mut self, n_files: usize) -> Result<(), String> {
        let id = self.spawn.identity.id();
        let slug = &self.slug;
        let problems = match self.world.repo {
            Some(repo) => crate::check::check_repo(repo).problems,
            None => {
                // The SpellBook's record: the Buddy alone, with the share's
                // template, and its Machine (what the deploy will create).
                let (_, mut p) = crate::check::check_buddy(
                    &self.dir,
                    &self.world.template().join("config.json"),
                );
                if let Ok(facts) = crate::fleet::machine::fly_facts(&self.world.fly_toml()) {
                    let image = format!("placeholder@sha256:{}", "0".repeat(64));
                    if let Err(m) = crate::fleet::machine::config(&facts, &self.dir, &image, None) {
                        p.extend(m);
                    }
                }
                p
            }
        };
        let mine: Vec<String> = problems
            .iter()
            .filter(|p| {
                p.file.to_string_lossy().contains(slug.as_str())
                    || p.message.contains(&id)
                    || p.message.contains(slug.as_str())
            })
            .map(|p| p.to_string())
            .collect();
        if !mine.is_empty() {
            return Err(format!(
                "the new Buddy does not pass check-config:\n  {}",
                mine.join("\n  ")
            ));
        }
        (self.progress)(&format!(
            "[2/5] generate: {} ({n_files} files) passes check-config",
            self.world.shown(&self.slug)
        ));
        Ok(())
    }

    /// With `--deploy`, runs the deploy; without, prints what to run.
    fn deploy(&mut self, opts: &CastOptions) -> Result<bool, String> {
        let slug = self.slug.clone();
        match &opts.deploy {
            Deploy::Skip => {
                (self.progress)("[3/5] deploy: skipped (no --deploy); to deploy, run:");
                for line in deploy::operator_lines(self.spawn, &slug) {
                    (self.progress)(&format!("    {line}"));
                }
                Ok(false)
            }
            Deploy::Script(script) => {
                deploy::run_script(script, self.spawn, &slug)?;
                (self.progress)(&format!("[3/5] deploy: mybuddytalk-{slug} deployed"));
                Ok(true)
            }
            Deploy::Api(api) => {
                let vars: Vec<String> = crate::config::render::prepare(
                    &self.dir,
                    &self.world.template().join("config.json"),
                )
                .map_err(|e| e.to_string())?
                .secret_vars()
                .into_iter()
                .collect();
                let own = self
                    .spawn
                    .secrets()
                    .into_iter()
                    .map(|(k, v)| (k, v.clone()))
                    .collect();
                let set =
                    crate::fleet::apply::app_secrets(&self.spawn.identity, own, &vars, &opts.env)?;
                let secrets = crate::fleet::apply::Secrets {
                    set,
                    ..Default::default()
                };
                (self.progress)(&format!(
                    "[3/5] deploy: {} over the Fly Machines API ({})",
                    crate::fleet::apply::app_name(&slug),
                    api.client.base()
                ));
                let undo = &mut self.undo;
                let machine = crate::fleet::apply::deploy(
                    api,
                    &self.spawn.identity,
                    &self.dir,
                    &secrets,
                    crate::fleet::apply::Existing::Refuse,
                    &mut |u| undo.0.push(u),
                    self.progress,
                )?;
                (self.progress)(&format!(
                    "[3/5] deploy: {} deployed (Machine {machine})",
                    crate::fleet::apply::app_name(&slug)
                ));
                Ok(true)
            }
        }
    }

    fn register(&mut self, status: Status) -> Result<(), String> {
        let id = &self.spawn.identity;
        let book = Paths::new(self.world.swarm).book();
        let mut entry = registry::Entry::from_identity(id);
        entry.status = status;
        registry::upsert(&book, entry).map_err(|e| e.to_string())?;
        let sl = self.slug.clone();
        self.undo.push(move || {
            registry::remove(&book, &sl)
                .map(|_| format!("removed {sl} from the registry"))
                .map_err(|e| e.to_string())
        });
        (self.progress)(&format!(
            "[4/5] register: {} is {status} in registry.json",
            id.id()
        ));
        Ok(())
    }

    /// An announcement for the swarm and a line in the SpellBook changelog.
    fn resonate(&mut self, status: Status) -> Result<PathBuf, String> {
        let id = &self.spawn.identity;
        let caster = self.caster;
        let text = format!(
            "{} cast SpawnBuddy: welcome {}, a new {} for {} on {}. Status: {status}.",
            caster.id(),
            id.id(),
            id.role,
            id.human,
            match (id.channels.telegram, id.channels.whatsapp) {
                (true, true) => "Telegram and WhatsApp",
                (true, false) => "Telegram",
                _ => "WhatsApp",
            }
        );
        let header = json!({"buddy": id.id(), "human": id.human, "role": id.role, "channels": id.channels, "status": status, "spell": "spawn_buddy"});
        let ann = resonate::announce(self.world.swarm, &caster.id(), "spawn", header, &text)
            .map_err(|e| e.to_string())?;
        let a = ann.clone();
        self.undo.push(move || {
            fs::remove_file(&a)
                .map(|_| format!("removed {}", a.display()))
                .map_err(|e| e.to_string())
        });
        resonate::changelog(
            self.world.swarm,
            &format!(
                "{} cast spawn_buddy: {} ({}, {}, {status})",
                caster.id(),
                id.id(),
                id.role,
                id.channels
            ),
        )
        .map_err(|e| e.to_string())?;
        (self.progress)(&format!("[5/5] resonate: announced in {}", ann.display()));
        Ok(ann)
    }
}
