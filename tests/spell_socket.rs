//! A Magician's agent casts SpawnBuddy without the Fly org token: its
//! supervisor (root, PID 1 of its namespace, holding `FLY_API_TOKEN`) listens
//! on the spell socket, checks the caller's uid with SO_PEERCRED, runs the
//! spell as its own child and streams it back. The caller here is the
//! gateway's uid (10002, Emrys's groups), as `supervisor spawn` run by its
//! `exec` tool would be; the Fly Machines API is the stand-in, in the
//! supervisor's loopback-only network namespace.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use mybuddy_standins::FlyStandin;
use support::*;

const TOKEN: &str = "987654321:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawX";
const PHONE: &str = "+31612345678";
const APP: &str = "mybuddytalk-norabuddy-lyra";
const FLY_TOKEN: &str = "fm2_stand-in-org-token-in-the-supervisor-only";
const IMAGE: &str = "registry.fly.io/mybuddytalk-base@sha256:2222222222222222222222222222222222222222222222222222222222222222";

struct Machine {
    sup: Sup,
    socket: PathBuf,
}

/// Boots `slug` with `token` (or none) as PID 1 inside `ns`; its gateway a
/// sleeping child.
fn boot(f: &Fixture, ns: &NetNs, fly: &FlyStandin, slug: &str, token: bool) -> Machine {
    let uid = if slug == "roelbuddy-emrys" {
        "10002"
    } else {
        "10001"
    };
    let run = f.path(&format!("run-{slug}"));
    fs::create_dir_all(&run).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();
    let socket = run.join("spell.sock");
    let gw = script(f.tmp.path(), "gateway.sh", "exec sleep 100000");
    let args: Vec<String> = [
        "--buddy",
        f.buddy(slug).to_str().unwrap(),
        "--state-dir",
        f.state.join(slug).to_str().unwrap(),
        "--swarm",
        f.swarm.to_str().unwrap(),
        "--swarm-dir-unmounted",
        "--swarm-seed",
        repo().join("images/swarm-seed").to_str().unwrap(),
        "--user",
        uid,
        "--spell-socket",
        socket.to_str().unwrap(),
        "--",
        gw.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut env = base_env();
    env.extend(marker_env(&f.buddy(slug)));
    // What a Magician's app holds: its Buddy's secrets and the shared keys
    // (the markers above), the share's settings, the org token; and what
    // Fly sets on every Machine (its image).
    env.push((
        "MYBUDDY_BOOK_META_URL".into(),
        "rediss://default@book.example:6379/0".into(),
    ));
    env.push(("MYBUDDY_BOOK_META_PASSWORD".into(), "book-password".into()));
    env.push(("FLY_API_HOSTNAME".into(), fly.base_url()));
    env.push(("FLY_IMAGE_REF".into(), IMAGE.into()));
    env.push((
        "MYBUDDY_FLY_TOML".into(),
        repo().join("fly.toml").display().to_string(),
    ));
    if token {
        env.push(("FLY_API_TOKEN".into(), FLY_TOKEN.into()));
    }
    let sup = Sup::start_in_netns(f.tmp.path(), ns, &args, &env);
    assert!(
        sup.wait_log("gateway started", Duration::from_secs(30)),
        "{}",
        sup.log()
    );
    Machine { sup, socket }
}

/// `supervisor spawn SPELL --swarm S --deploy` as `uid` with `groups`,
/// pointed at the socket, without any token (the gateway's environment).
fn cast_as(f: &Fixture, m: &Machine, uid: &str, groups: &str) -> Output {
    let spell = f.path(&format!("spell-{uid}.yaml"));
    fs::write(
        &spell,
        format!("spell: spawn_buddy\nparameters:\n  human: Nora\n  name: Lyra\n  role: buddy\n  channels:\n    telegram: true\n    telegram_token: \"{TOKEN}\"\n    whatsapp: true\n    whatsapp_phone: \"{PHONE}\"\n"),
    )
    .unwrap();
    // The agent's private temp file: its own, nobody else's.
    nix::unistd::chown(
        &spell,
        Some(nix::unistd::Uid::from_raw(uid.parse().unwrap())),
        None,
    )
    .unwrap();
    fs::set_permissions(&spell, fs::Permissions::from_mode(0o600)).unwrap();
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            &format!("--groups={groups}"),
            "--",
        ])
        .arg(supervisor())
        .arg("spawn")
        .arg(&spell)
        .args(["--swarm", f.swarm.to_str().unwrap(), "--deploy"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("MYBUDDY_SPELL_SOCKET", &m.socket)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn gateway_environ(m: &Machine) -> String {
    let gw = wait_for(Duration::from_secs(10), || {
        children_of(m.sup.pid())
            .into_iter()
            .map(|(p, _)| p)
            .find(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
            })
    })
    .expect("the gateway runs");
    String::from_utf8_lossy(&fs::read(format!("/proc/{gw}/environ")).unwrap()).replace('\0', "\n")
}

#[test]
fn a_magician_s_gateway_casts_through_its_supervisor_which_keeps_the_token() {
    let f = Fixture::new();
    let ns = NetNs::new();
    let fly = fly_api(&ns, Some(FLY_TOKEN));
    let m = boot(&f, &ns, &fly, "roelbuddy-emrys", true);
    assert!(
        m.sup
            .wait_log("registered in the swarm", Duration::from_secs(10))
    );
    assert!(m.sup.log().contains("step=\"spells\""), "{}", m.sup.log());
    // The gateway holds no token, and neither does what it runs.
    let environ = gateway_environ(&m);
    assert!(
        !environ.contains("FLY_API_TOKEN") && !environ.contains(FLY_TOKEN),
        "{environ}"
    );
    let md = fs::metadata(&m.socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (0, 10101, 0o660));

    // The gateway's uid with its groups: cast, streamed back, exit 0.
    let o = cast_as(&f, &m, "10002", "10100,10101");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", m.sup.log());
    assert!(
        out.contains(&format!("[3/5] deploy: {APP} deployed")),
        "{out}"
    );
    assert!(out.contains("[5/5] resonate"), "{out}");
    assert!(!out.contains(TOKEN) && !out.contains(FLY_TOKEN), "{out}");
    // Exactly the spawn's calls.
    let app = fly.api.app(APP).expect("the app was made");
    let fm = &app.machines[0];
    let lines: Vec<String> = fly.api.calls().iter().map(|c| c.line()).collect();
    assert_eq!(lines, first_deploy_calls(APP, &fm.id));
    assert_eq!(app.machines.len(), 1);
    assert_eq!(fm.config["image"], IMAGE);
    assert_eq!(app.secrets["NORABUDDY_LYRA_TELEGRAM_TOKEN"], TOKEN);
    assert_eq!(app.secrets["NORABUDDY_LYRA_HUMAN_PHONE"], PHONE);
    // The Machine's files hold the definition; the token and the phone are
    // only in the secrets call: no file, record, registry entry,
    // announcement, Machine config or log has them.
    let files = fm.config["files"].to_string();
    assert!(files.contains("/opt/mybuddy/buddy/buddy.json"), "{files}");
    for secret in [TOKEN, PHONE] {
        let calls = calls_carrying(&fly.api, secret);
        assert_eq!(calls, [format!("POST /v1/apps/{APP}/secrets")]);
        assert!(!fm.config.to_string().contains(secret));
        assert!(!files.contains(&base64_of(secret)));
        for file in walk_files(&f.swarm) {
            let text = String::from_utf8_lossy(&fs::read(&file).unwrap_or_default()).into_owned();
            assert!(!text.contains(secret), "{} holds a secret", file.display());
        }
    }
    // Every API call carried the supervisor's token; the spell's file is gone.
    assert!(
        fly.api
            .calls()
            .iter()
            .all(|c| c.authorization.as_deref() == Some(&format!("FlyV1 {FLY_TOKEN}")[..]))
    );
    let spool = m.socket.parent().unwrap().join("spells");
    assert_eq!(fs::read_dir(&spool).unwrap().count(), 0);
    assert!(
        m.sup
            .log()
            .contains("spell socket: casting for the gateway"),
        "{}",
        m.sup.log()
    );
    assert!(
        m.sup.log().contains("spell socket: the spell ended"),
        "{}",
        m.sup.log()
    );
    let calls = fly.api.calls().len();

    // Another uid (a Buddy's gateway uid, with the Magicians' group even):
    // refused, nothing cast.
    let o = cast_as(&f, &m, "10001", "10100,10101");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(77), "{out}");
    assert!(
        out.contains("refused: uid 10001 may not cast spells here"),
        "{out}"
    );
    assert_eq!(fly.api.calls().len(), calls);
    // Without the Magicians' group the socket cannot even be opened.
    let o = cast_as(&f, &m, "10003", "10100");
    assert_ne!(o.status.code(), Some(0));
    assert!(
        text(&o).contains("cannot reach the spell socket"),
        "{}",
        text(&o)
    );
    assert_eq!(fly.api.calls().len(), calls);
    for s in [m.sup.log(), m.sup.out()] {
        assert!(!s.contains(FLY_TOKEN) && !s.contains(TOKEN) && !s.contains(PHONE));
    }
}

#[test]
fn no_socket_on_a_magician_without_the_token_nor_on_a_buddy() {
    let f = Fixture::new();
    let ns = NetNs::new();
    let fly = fly_api(&ns, None);
    let m = boot(&f, &ns, &fly, "roelbuddy-emrys", false);
    assert!(!m.socket.exists());
    let o = cast_as(&f, &m, "10002", "10100,10101");
    assert_ne!(o.status.code(), Some(0));
    assert!(
        text(&o).contains("cannot reach the spell socket"),
        "{}",
        text(&o)
    );
    // A Buddy-role Machine given the token: not used, said so, no socket,
    // and its gateway never sees it.
    let g = boot(&f, &ns, &fly, "roelbuddy-galahad", true);
    assert!(!g.socket.exists());
    assert!(
        g.sup
            .log()
            .contains("FLY_API_TOKEN is set on a Buddy-role Machine"),
        "{}",
        g.sup.log()
    );
    assert!(!gateway_environ(&g).contains("FLY_API_TOKEN"));
    assert!(fly.api.calls().is_empty());
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
