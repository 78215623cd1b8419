//! Casting a validated spell: generate → deploy → register → resonate, each
//! step announced; a failing step undoes, in reverse, what the earlier ones
//! made, and the error names the step and every undo.

use std::fs;
use std::path::PathBuf;

use serde_json::json;

use super::{PENDING_MARKER, Spawn, SpellError, World, generate};
use crate::buddy::{Identity, Status};
use crate::fleet::deploy;
use crate::fleet::fly::Client;
use crate::fleet::journal::{Journal, Made};
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
    /// Where the cast keeps what it makes, so a cast cut short is taken
    /// back at the next boot (the spell socket's casts); None: in memory.
    pub journal: Option<PathBuf>,
}

/// What a cast did (for the caller's summary).
#[derive(Debug)]
pub struct Outcome {
    pub slug: String,
    pub announcement: Option<PathBuf>,
    pub deployed: bool,
}

/// Undoes everything the cast made, in reverse, and returns the step's
/// error with a line per undo.
fn fail(journal: Journal, client: Option<&Client>, step: &'static str, why: String) -> SpellError {
    let notes = journal.undo_all(client);
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

struct Cast<'a> {
    world: &'a World<'a>,
    caster: &'a Identity,
    spawn: &'a Spawn,
    slug: String,
    /// The new Buddy's files as checked and deployed: ours alone (the
    /// SpellBook's copy is written for the swarm to read, never read back).
    dir: PathBuf,
    journal: Journal,
    client: Option<Client>,
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
    let journal = match &opts.journal {
        Some(p) => {
            Journal::at(p, &format!("SpawnBuddy of {}", s.identity.id())).map_err(|why| {
                SpellError::Step {
                    step: "generate",
                    why,
                    undo: String::new(),
                }
            })?
        }
        None => Journal::memory(&format!("SpawnBuddy of {}", s.identity.id())),
    };
    let client = match &opts.deploy {
        Deploy::Api(api) => Some(api.client.clone()),
        _ => None,
    };
    let mut c = Cast {
        world,
        caster,
        spawn: s,
        dir: match world.repo {
            Some(_) => world.buddies().join(&slug),
            None => world.private().join(&slug),
        },
        slug,
        journal,
        client,
        progress,
    };
    macro_rules! step {
        ($name:literal, $e:expr) => {
            match $e.and_then(|v| crate::fleet::apply::check_stop().map(|_| v)) {
                Ok(v) => v,
                Err(why) => return Err(fail(c.journal, c.client.as_ref(), $name, why)),
            }
        };
    }
    step!("generate", c.write_files(&files));
    step!("generate", c.check_generated(files.len()));
    step!("generate", c.publish(&files));
    let deployed = step!("deploy", c.deploy(opts));
    let status = if deployed {
        Status::Active
    } else {
        Status::Planned
    };
    step!("register", c.register(status));
    let announcement = step!("resonate", c.resonate(status));
    // As before handles: a marker left behind only makes the next cast of
    // this Buddy start over; it never undoes a cast that is done.
    let _ = c.unmark();
    c.journal.done();
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
    /// Generate, part 1: the files where they are checked. In a checkout,
    /// in place (check-config reads the checkout), staged beside it and
    /// renamed in so the directory appears whole, with the marker that says
    /// a spell is still working on it (a cast killed midway is started over
    /// by the next). For the SpellBook, in our private directory: what is
    /// checked and deployed is what we wrote, whatever a gateway does to
    /// the share meanwhile.
    fn write_files(&mut self, files: &[(PathBuf, String)]) -> Result<(), String> {
        if self.world.repo.is_some() {
            return self.publish_at(files, 0o755, 0o644);
        }
        let write = || -> std::io::Result<()> {
            for (p, content) in files {
                let path = self.dir.join(p);
                fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
                fs::write(path, content)?;
            }
            Ok(())
        };
        write().map_err(|e| format!("{}: {e}", self.dir.display()))
    }

    /// Generate, part 3 (SpellBook): the checked files written into the
    /// SpellBook for the swarm (and `supervisor adopt`), through handles.
    fn publish(&mut self, files: &[(PathBuf, String)]) -> Result<(), String> {
        if self.world.repo.is_some() {
            return Ok(());
        }
        self.publish_at(files, 0o2770, 0o660)
    }

    /// Writes `files` as `<buddies>/<slug>/`, whole (staged, then renamed
    /// in), with the pending marker; journaled.
    fn publish_at(
        &mut self,
        files: &[(PathBuf, String)],
        dir_mode: u32,
        file_mode: u32,
    ) -> Result<(), String> {
        let shown = self.world.buddies().join(&self.slug);
        let err = |e: std::io::Error| format!("{}: {e}", shown.display());
        let d = self.world.buddies_dir().map_err(err)?;
        let stage = format!(".spell-{}.tmp", self.slug);
        d.remove_tree(&stage).map_err(err)?;
        if self.world.record(&self.slug) == super::Record::Pending {
            d.remove_tree(&self.slug).map_err(err)?;
        }
        let write = || -> std::io::Result<()> {
            let st = d.ensure_dir(&stage, dir_mode)?.dir;
            for (p, content) in files {
                let mut here = st.try_clone()?;
                let names: Vec<_> = p.iter().collect();
                let Some((file, parents)) = names.split_last() else {
                    continue;
                };
                for n in parents {
                    here = here.ensure_dir(n, dir_mode)?.dir;
                }
                here.create_whole(file, content.as_bytes(), file_mode)?;
            }
            st.create_whole(
                PENDING_MARKER,
                b"a SpawnBuddy spell is creating this Buddy\n",
                file_mode,
            )?;
            d.rename(&stage, &self.slug)
        };
        if let Err(e) = write() {
            let _ = d.remove_tree(&stage);
            return Err(err(e));
        }
        self.journal.push(Made::Record {
            dir: self.world.buddies(),
            name: self.slug.clone(),
        })
    }

    /// The cast is done: its record is no longer pending.
    fn unmark(&self) -> Result<(), String> {
        let shown = self.world.buddies().join(&self.slug);
        match self
            .world
            .buddies_dir()
            .and_then(|d| d.dir(&self.slug))
            .and_then(|d| d.unlink(PENDING_MARKER))
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", shown.display())),
        }
    }

    /// Generate, part 2: the new Buddy passes the same check-config CI runs.
    fn check_generated(&mut self, n_files: usize) -> Result<(), String> {
        let id = self.spawn.identity.id();
        let slug = &self.slug;
        let problems = match self.world.repo {
            Some(repo) => crate::check::check_repo(repo).problems,
            None => {
                // The SpellBook's record: the Buddy alone, with this
                // Machine's config template, and its Machine (what the
                // deploy will create).
                let (_, mut p) =
                    crate::check::check_buddy(&self.dir, &self.world.config_template());
                if let Ok(facts) = crate::fleet::machine::fly_facts(&self.world.fly_toml()) {
                    let image = format!("placeholder@sha256:{}", "0".repeat(64));
                    let template = self.world.config_template();
                    let def = crate::fleet::machine::Definition::new(&self.dir, &template);
                    if let Err(m) = crate::fleet::machine::config(&facts, def, &image, None) {
                        p.extend(m);
                    }
                }
                p
            }
        };
        // What the new Buddy's config asks for from the caster's environment:
        // the swarm's shared keys and its own prefixed secrets, nothing else
        // (the template is root's, but a refusal here costs nothing).
        let (prepared, _) =
            crate::config::render::prepare_all(&self.dir, &self.world.config_template());
        let vars = prepared.map(|p| p.secret_vars()).unwrap_or_default();
        crate::fleet::apply::allowed_vars(&self.spawn.identity, vars.iter())?;
        // A checkout's check covers every Buddy: this one's problems count.
        // The SpellBook's is this Buddy alone with the template it is made
        // from: every problem counts.
        let ours = |p: &&crate::config::problem::Problem| {
            self.world.repo.is_none()
                || p.file.to_string_lossy().contains(slug.as_str())
                || p.message.contains(&id)
                || p.message.contains(slug.as_str())
        };
        let mine: Vec<String> = problems
            .iter()
            .filter(ours)
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
                let vars: Vec<String> =
                    crate::config::render::prepare(&self.dir, &self.world.config_template())
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
                let template = self.world.config_template();
                let machine = crate::fleet::apply::deploy(
                    api,
                    &self.spawn.identity,
                    crate::fleet::machine::Definition::new(&self.dir, &template),
                    &secrets,
                    crate::fleet::apply::Existing::Refuse,
                    // A spell never replaces a running Machine.
                    &|_, _| Ok(String::new()),
                    &mut self.journal,
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
        self.journal.push(Made::Registered {
            swarm: self.world.swarm.to_path_buf(),
            slug: self.slug.clone(),
        })?;
        registry::upsert(&book, entry).map_err(|e| e.to_string())?;
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
        self.journal.push(Made::Announced {
            swarm: self.world.swarm.to_path_buf(),
            name: ann
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        })?;
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
