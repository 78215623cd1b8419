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
    boot_with(f, ns, fly, slug, token, &[])
}

/// [`boot`] with more flags for `supervisor run`.
fn boot_with(
    f: &Fixture,
    ns: &NetNs,
    fly: &FlyStandin,
    slug: &str,
    token: bool,
    extra: &[&str],
) -> Machine {
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
    ]
    .iter()
    .chain(extra)
    .chain(["--", gw.to_str().unwrap()].iter())
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
    cast_cmd(f, m, uid, groups).output().unwrap()
}

/// The command [`cast_as`] runs, to start in the background.
fn cast_cmd(f: &Fixture, m: &Machine, uid: &str, groups: &str) -> Command {
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
    let mut cmd = Command::new("setpriv");
    cmd.args([
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
    .env("MYBUDDY_SPELL_SOCKET", &m.socket);
    cmd
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

    // `supervisor status` from the gateway, without the token: its
    // supervisor answers with the Machines API's view.
    let o = Command::new("setpriv")
        .args([
            "--reuid=10002",
            "--regid=10002",
            "--groups=10100,10101",
            "--",
        ])
        .arg(supervisor())
        .args(["status", "--json", "--swarm", f.swarm.to_str().unwrap()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("MYBUDDY_SPELL_SOCKET", &m.socket)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&o), m.sup.log()));
    let lyra = report["buddies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == "NoraBuddy-Lyra")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(lyra["machine"]["id"], fm.id, "{report:#}");
    assert_eq!(lyra["machine"]["state"], "started", "{report:#}");
    assert!(
        !report["unseen"].to_string().contains("was not asked"),
        "{report:#}"
    );
    assert!(!text(&o).contains(FLY_TOKEN));
    assert!(
        fly.api.calls().len() > calls,
        "the supervisor asked the Machines API"
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

/// A client of the spell socket as `uid`: `slow` sends a byte every 1.5 s
/// (at most 14), `silent` sends nothing; either prints what it is answered.
fn client(m: &Machine, uid: &str, groups: &str, how: &str) -> std::process::Child {
    let py = r#"
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print("CONNECTED", flush=True)
s.settimeout(20)
t = time.time()
if sys.argv[2] == "slow":
    for ch in '{"spell":"upgr':
        try:
            s.send(ch.encode())
        except OSError:
            break
        time.sleep(1.5)
out = b""
while True:
    try:
        b = s.recv(4096)
    except OSError:
        break
    if not b:
        break
    out += b
print("ANSWER after %.1f s: %s" % (time.time() - t, out.decode(errors="replace")), flush=True)
"#;
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            &format!("--groups={groups}"),
            "--",
            // The system's: the gateway's uid cannot reach root's pyenv.
            "/usr/bin/python3",
            "-c",
            py,
        ])
        .arg(&m.socket)
        .arg(how)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the client says it is connected (a loaded machine starts
/// Python slowly).
fn connected(c: &mut std::process::Child) {
    use std::io::BufRead;
    let out = c.stdout.as_mut().unwrap();
    let mut line = String::new();
    let mut r = std::io::BufReader::with_capacity(1, out);
    r.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "CONNECTED");
}

fn answer(c: std::process::Child) -> String {
    let o = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Issue 21: the caller's uid is checked before a byte is read; callers
/// that trickle their request (a byte every 1.5 s) are cut off at the
/// deadline, more than four at once are refused, and meanwhile the loop
/// reaps and restarts a dead gateway and honours SIGTERM.
#[test]
fn a_caller_is_judged_before_it_speaks_and_no_caller_holds_the_loop() {
    let f = Fixture::new();
    let ns = NetNs::new();
    let fly = fly_api(&ns, Some(FLY_TOKEN));
    let m = boot_with(
        &f,
        &ns,
        &fly,
        "roelbuddy-emrys",
        true,
        &["--stop-timeout", "5"],
    );
    let silent = client(&m, "10001", "10100,10101", "silent");
    let mut slow: Vec<_> = (0..4)
        .map(|_| client(&m, "10002", "10100,10101", "slow"))
        .collect();
    slow.iter_mut().for_each(connected);
    let fifth = client(&m, "10002", "10100,10101", "slow");
    let a = answer(silent);
    assert!(
        a.contains("refused: uid 10001 may not cast spells here"),
        "{a}"
    );
    let secs: f64 = a[a.find("ANSWER after ").expect("an answer") + "ANSWER after ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs < 1.0, "answered only after {secs} s: {a}");
    let a = answer(fifth);
    assert!(a.contains("spell connections are open already"), "{a}");
    // The gateway dies while four callers trickle: reaped and restarted.
    let gw = children_of(m.sup.pid())
        .into_iter()
        .map(|(p, _)| p)
        .find(|p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep"))
        .expect("the gateway");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        m.sup.wait_log("start=2", Duration::from_secs(3)),
        "the dead gateway was not restarted while callers trickled:\n{}",
        m.sup.log()
    );
    for c in slow {
        let a = answer(c);
        assert!(a.contains("did not arrive whole within 5 s"), "{a}");
    }
    let mut sup = m.sup;
    let t = std::time::Instant::now();
    sup.signal("TERM");
    assert!(sup.wait_exit(Duration::from_secs(10)).is_some());
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    eprintln!(
        "FIGURE: spell socket: a wrong uid refused after {secs:.1} s, before a byte was read; 4 callers trickling a byte every 1.5 s cut off at 5 s, a 5th refused at once; a gateway killed meanwhile restarted; SIGTERM honoured in {} ms",
        t.elapsed().as_millis()
    );
}

/// Waits until the stand-in has made the cast's Machine.
fn machine_made(fly: &FlyStandin) -> bool {
    wait_for(Duration::from_secs(30), || {
        fly.api
            .calls()
            .iter()
            .any(|c| {
                c.method == "POST"
                    && c.path == format!("/v1/apps/{APP}/machines")
                    && c.status == 200
            })
            .then_some(())
    })
    .is_some()
}

fn journals(f: &Fixture) -> Vec<String> {
    fs::read_dir(f.state.join("roelbuddy-emrys/.spell-journals"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // (Not a journal being replaced: its temporary file.)
                .filter(|n| n.starts_with("cast-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 21: the supervisor stops while a cast waits for its new Machine's
/// checks: the spell gets SIGTERM and the rest of the stop timeout, and
/// takes back all it made before the supervisor exits.
#[test]
fn a_spell_running_at_the_stop_takes_back_what_it_made_within_the_stop_timeout() {
    let f = Fixture::new();
    let ns = NetNs::new();
    let fly = fly_api(&ns, Some(FLY_TOKEN));
    fly.api.checks_never_pass(IMAGE);
    let m = boot_with(
        &f,
        &ns,
        &fly,
        "roelbuddy-emrys",
        true,
        &["--stop-timeout", "20"],
    );
    let cast = cast_cmd(&f, &m, "10002", "10100,10101")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(machine_made(&fly), "{}", m.sup.log());
    assert_eq!(journals(&f).len(), 1, "no journal while casting");
    let mut sup = m.sup;
    let t = std::time::Instant::now();
    sup.signal("TERM");
    assert!(
        sup.wait_exit(Duration::from_secs(30)).is_some(),
        "{}",
        sup.log()
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let stopped_in = t.elapsed();
    let o = cast.wait_with_output().unwrap();
    let out = text(&o);
    assert!(out.contains("stopped"), "{out}");
    for undone in [
        "destroyed the Machine".to_string(),
        "deleted the volume".to_string(),
        format!("deleted the Fly app {APP}"),
    ] {
        assert!(
            out.contains(&format!("undone: {undone}")),
            "{undone}:\n{out}\n{}",
            sup.log()
        );
    }
    assert!(fly.api.app(APP).is_none());
    assert!(journals(&f).is_empty(), "{:?}", journals(&f));
    eprintln!(
        "FIGURE: SIGTERM mid-cast (stop timeout 20 s): the spell took back its Machine, volume and app, and the supervisor exited in {} ms",
        stopped_in.as_millis()
    );
}

/// Issue 21: a cast cut short anyway (the whole Machine killed mid-cast)
/// leaves its journal; the next boot takes back what it made. A journal the
/// gateway planted (it owns the volume) is never believed.
#[test]
fn a_cast_cut_short_is_taken_back_at_the_next_boot_and_a_planted_journal_is_not() {
    let f = Fixture::new();
    let ns = NetNs::new();
    let fly = fly_api(&ns, Some(FLY_TOKEN));
    fly.api.checks_never_pass(IMAGE);
    fly.api.add_app("mybuddytalk-roelbuddy-galahad");
    let m = boot(&f, &ns, &fly, "roelbuddy-emrys", true);
    let cast = cast_cmd(&f, &m, "10002", "10100,10101")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(machine_made(&fly), "{}", m.sup.log());
    let mut sup = m.sup;
    sup.signal("KILL");
    assert!(sup.wait_exit(Duration::from_secs(10)).is_some());
    drop(cast);
    let left = journals(&f);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(fly.api.app(APP).is_some(), "the cast was not cut short");
    // The gateway (it owns its volume) plants a journal of its own: the
    // Magician's other Buddy's app to delete.
    let state = f.state.join("roelbuddy-emrys");
    let fake = state.join("fake");
    fs::create_dir_all(&fake).unwrap();
    fs::write(
        fake.join("cast-0000000000000001.json"),
        r#"{"what":"x","made":[{"made":"app","app":"mybuddytalk-roelbuddy-galahad"}]}"#,
    )
    .unwrap();
    sh(Command::new("chown").args(["-R", "10002:10002"]).arg(&fake));
    // Root's journal put away, the gateway's in its place.
    // (Out of the state dir: a boot gives all of it to the gateway.)
    fs::rename(state.join(".spell-journals"), f.path("real")).unwrap();
    fs::rename(&fake, state.join(".spell-journals")).unwrap();
    let m = boot(&f, &ns, &fly, "roelbuddy-emrys", true);
    assert!(
        m.sup.wait_log(
            "a journal directory we did not make; moved aside",
            Duration::from_secs(10)
        ),
        "{}",
        m.sup.log()
    );
    assert!(fly.api.app("mybuddytalk-roelbuddy-galahad").is_some());
    drop(m);
    // Root's journal back in its place: the next boot takes the cast back.
    let _ = fs::remove_dir_all(state.join(".spell-journals"));
    fs::rename(f.path("real"), state.join(".spell-journals")).unwrap();
    let m = boot(&f, &ns, &fly, "roelbuddy-emrys", true);
    assert!(
        m.sup
            .wait_log("spell socket: the spell ended", Duration::from_secs(30)),
        "{}",
        m.sup.log()
    );
    let log = m.sup.log();
    assert!(log.contains("casts cut short earlier"), "{log}");
    assert!(
        log.contains(&format!("undone: deleted the Fly app {APP}")),
        "{log}"
    );
    assert!(fly.api.app(APP).is_none(), "{log}");
    assert!(fly.api.app("mybuddytalk-roelbuddy-galahad").is_some());
    assert!(journals(&f).is_empty(), "{:?}", journals(&f));
}
