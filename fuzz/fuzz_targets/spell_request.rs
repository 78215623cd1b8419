//! Any bytes a caller sends the spell socket are a checked request or a
//! refusal, never a panic; the command line the supervisor builds from a
//! request parses back to exactly the spell and values asked for, so no
//! field of it can become a flag of its own (`--repo`, `--swarm`...).
#![no_main]
use clap::Parser;
use libfuzzer_sys::fuzz_target;
use mybuddytalk::cli::{Cli, Command};
use mybuddytalk::fleet::socket::{Request, parse_request, spell_args};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_request(data) else { return };
    let mut argv = vec!["supervisor".to_string()];
    argv.extend(spell_args(
        &req,
        "RoelBuddy-Emrys",
        "/mnt/swarm",
        Some(std::path::Path::new("/run/mybuddy/spells/0.yaml")),
        None,
    ));
    let parsed = Cli::try_parse_from(&argv).expect("the supervisor's own command line parses");
    match (req, parsed.command) {
        (Request::Upgrade { image, canary, ids, dry_run }, Command::Upgrade(a)) => {
            assert_eq!(a.image, image);
            assert_eq!(a.canary, canary);
            assert_eq!(a.ids, ids);
            assert_eq!(a.dry_run, dry_run);
            assert!(a.repo.is_none());
            assert_eq!(a.swarm.swarm_dir, std::path::Path::new("/mnt/swarm"));
            assert_eq!(a.caster.as_id.as_deref(), Some("RoelBuddy-Emrys"));
        }
        (Request::Spawn { deploy, dry_run, .. }, Command::Spawn(a)) => {
            assert_eq!((a.deploy, a.dry_run), (deploy, dry_run));
            assert!(a.repo.is_none());
            assert_eq!(a.spell, std::path::Path::new("/run/mybuddy/spells/0.yaml"));
        }
        (r, c) => panic!("{r:?} became {c:?}"),
    }
});
