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

/// How the spell runs.
#[derive(Debug, Clone)]
pub struct CastOptions {
    pub deploy: bool,
    pub dry_run: bool,
    /// The deploy script (scripts/deploy in the repository).
    pub deploy_script: PathBuf,
}

/// What a cast did (for the caller's summary).
#[derive(Debug)]
pub struct Outcome {
    pub slug: String,
    pub announcement: Option<PathBuf>,
    pub deployed: bool,
}

type UndoFn = Box<dyn FnOnce() -> Result<String, String>>;

/// What the cast has made so far, and how to take each back.
#[derive(Default)]
struct Undo(Vec<UndoFn>);

impl Undo {
    fn push(&mut self, f: impl FnOnce() -> Result<String, String> + 'static) {
        self.0.push(Box::new(f));
    }

    /// Undoes everything in reverse and returns the step's error with a
    /// line per undo.
    fn fail(self, step: &'static str, why: String) -> SpellError {
        let notes: Vec<String> = self
            .0
            .into_iter()
            .rev()
            .map(|u| match u() {
                Ok(n) => format!("undone: {n}"),
                Err(n) => format!("could not undo: {n}"),
            })
            .collect();
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
        dry_run(s, &slug, &files, opts.deploy, progress);
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
    s: &Spawn,
    slug: &str,
    files: &[(PathBuf, String)],
    deploy: bool,
    progress: &mut dyn FnMut(&str),
) {
    let id = &s.identity;
    progress(&format!("[generate] would create buddies/{slug}/:"));
    for (p, _) in files {
        progress(&format!("    {}", p.display()));
    }
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
        let report = crate::check::check_repo(self.world.repo);
        let mine: Vec<String> = report
            .problems
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
            "[2/5] generate: buddies/{slug}/ ({n_files} files) passes check-config"
        ));
        Ok(())
    }

    /// With `--deploy`, runs the deploy; without, prints what to run.
    fn deploy(&mut self, opts: &CastOptions) -> Result<bool, String> {
        let slug = &self.slug;
        if !opts.deploy {
            (self.progress)("[3/5] deploy: skipped (no --deploy); to deploy, run:");
            for line in deploy::operator_lines(self.spawn, slug) {
                (self.progress)(&format!("    {line}"));
            }
            return Ok(false);
        }
        deploy::run_script(&opts.deploy_script, self.spawn, slug)?;
        (self.progress)(&format!("[3/5] deploy: mybuddytalk-{slug} deployed"));
        Ok(true)
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
