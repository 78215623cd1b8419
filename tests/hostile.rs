//! The share is hostile input (issue 21): each attack a prompt-injected
//! agent could make with its gateway's uid (10001, group mybuddybook), made
//! for real against root's code: the supervisor's swarm step and boot as
//! PID 1, on a tmpfs and on the JuiceFS share. Each test failed on the
//! supervisor before handles (to see it, point `MYBUDDY_TEST_SUPERVISOR` at
//! an older build).

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(30);

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `sh -c script` as a Buddy's gateway would run it: uid 10001, group
/// mybuddybook, umask 007.
fn as_gateway(script: &str) -> String {
    format!(
        "setpriv --reuid=10001 --regid=10001 --groups=10100 -- sh -c {}",
        shell_quote(&format!("umask 007; {script}"))
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `sh -c script` as root in private mount and PID namespaces: mounts it
/// makes stay there, and whatever it leaves running (a mount process)
/// ends with it.
fn in_private_ns(script: &str, env: &[(&str, &str)]) -> Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .args(["--pid", "--fork", "--kill-child"])
        .args(["sh", "-c", script])
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// A root-only directory outside the share holding `n` files a gateway
/// must never be given: root:root, 0600, in a 0700 directory.
fn root_only(dir: &Path, n: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        fs::write(dir.join(format!("f{i}")), "root's secret").unwrap();
        fs::set_permissions(dir.join(format!("f{i}")), fs::Permissions::from_mode(0o600)).unwrap();
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
}

/// Every file of `dir` (and the dir) still root:root with its modes.
fn untouched(dir: &Path) -> Result<(), String> {
    let md = fs::symlink_metadata(dir).unwrap();
    if (md.uid(), md.gid(), md.mode() & 0o7777) != (0, 0, 0o700) {
        return Err(format!(
            "{}: now {}:{} {:o}",
            dir.display(),
            md.uid(),
            md.gid(),
            md.mode() & 0o7777
        ));
    }
    for e in fs::read_dir(dir).unwrap().flatten() {
        let md = e.metadata().unwrap();
        if (md.uid(), md.gid(), md.mode() & 0o7777) != (0, 0, 0o600) {
            return Err(format!(
                "{}: now {}:{} {:o}",
                e.path().display(),
                md.uid(),
                md.gid(),
                md.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// The swap race of the issue: a directory of MyBuddyBook renamed away and
/// replaced by a link to a root-only directory, and back, over and over,
/// by the gateway's uid, while root's swarm step walks the share again and
/// again. `mount` makes `<swarm>/mybuddybook` (a tmpfs, or the JuiceFS
/// volume) inside a private mount namespace; everything runs there.
fn swap_race(
    f: &Fixture,
    mount: &str,
    env: &[(&str, &str)],
    files: usize,
    rounds: usize,
) -> String {
    let swarm = f.swarm.clone();
    let target = f.path("root-only");
    root_only(&target, files);
    let stop = f.scratch("stop");
    let sup = quote(&supervisor());
    let book = swarm.join("mybuddybook");
    let racer = as_gateway(&format!(
        "cd {book}/wisdom && n=0; while [ ! -e {stop} ]; do mv big big.real && ln -s {target} big; n=$((n+1)); rm -f big; mv big.real big; done; echo SWAPS=$n",
        book = quote(&book),
        stop = quote(&stop),
        target = quote(&target),
    ));
    let make_big = as_gateway(&format!(
        "mkdir {book}/wisdom/big && cd {book}/wisdom/big && i=0; while [ $i -lt {files} ]; do echo x > f$i; i=$((i+1)); done",
        book = quote(&book),
    ));
    let script = format!(
        r#"set -e
{mount}
{sup} swarm check --swarm-dir-unmounted --swarm {swarm} >/dev/null 2>&1
{make_big}
({racer}) &
racer=$!
fails=0
i=0
while [ $i -lt {rounds} ]; do
  {sup} swarm check --swarm-dir-unmounted --swarm {swarm} > {log}.$i 2>&1 || {{ fails=$((fails+1)); echo "ROUND $i FAILED:"; cat {log}.$i; }}
  i=$((i+1))
done
touch {stop}
wait $racer
echo FAILS=$fails
"#,
        swarm = quote(&swarm),
        log = quote(&f.path("check")),
        stop = quote(&stop),
    );
    let o = in_private_ns(&script, env);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    out
}

fn assert_race_lost(f: &Fixture, out: &str, what: &str, rounds: usize) {
    let swaps: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("SWAPS="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no swap count:\n{out}"));
    assert!(swaps > 10, "the racer barely ran ({swaps} swaps):\n{out}");
    assert!(out.contains("FAILS=0"), "a swarm step failed:\n{out}");
    if let Err(e) = untouched(&f.path("root-only")) {
        panic!("root changed a file outside the share after {swaps} swaps: {e}\n{out}");
    }
    eprintln!(
        "FIGURE: swap race on {what}: {swaps} swaps of a MyBuddyBook directory for a link to a root-only one, by uid 10001, during {rounds} swarm steps: 0 steps failed, 0 files outside the share changed"
    );
}

#[test]
fn the_permission_walk_never_follows_a_swapped_directory_out_of_the_share() {
    let f = Fixture::new();
    let mount = format!("mount -t tmpfs -o mode=0755 tmpfs {}", quote(&f.swarm));
    let out = swap_race(&f, &mount, &[], 2000, 40);
    assert_race_lost(&f, &out, "a tmpfs (2,000 files)", 40);
}

#[test]
fn the_permission_walk_never_leaves_the_juicefs_share_either() {
    let share = Share::up();
    let f = Fixture::new();
    let (mount, password) = juicefs_book(&share, &f);
    let out = swap_race(&f, &mount, &[("BOOK_PASSWORD", &password)], 300, 12);
    assert_race_lost(&f, &out, "the JuiceFS share (300 files)", 12);
}

/// The shell lines that mount the share's MyBuddyBook volume at
/// `<swarm>/mybuddybook` (in the foreground, backgrounded, with the boot's
/// own flags) and wait for it; the password goes in `$BOOK_PASSWORD`.
fn juicefs_book(share: &Share, f: &Fixture) -> (String, String) {
    let book = f.swarm.join("mybuddybook");
    fs::create_dir_all(&book).unwrap();
    let env = share.env("buddy");
    let meta = &env["MYBUDDY_BOOK_META_URL"];
    let flags = mybuddytalk::swarm::share::mounts::MOUNT_FLAGS.join(" ");
    // The password through the environment, never a command line.
    let mount = format!(
        "META_PASSWORD=$BOOK_PASSWORD {juicefs} mount {flags} --cache-dir {cache} {meta} {book} >/dev/null 2>&1 &
for i in $(seq 1 300); do [ \"$(stat -c %i {book})\" = 1 ] && break; sleep 0.1; done
[ \"$(stat -c %i {book})\" = 1 ]",
        juicefs = quote(&juicefs()),
        cache = quote(&f.path("cache")),
        book = quote(&book),
    );
    (mount, env["MYBUDDY_BOOK_META_PASSWORD"].clone())
}

/// A spell (root) reads the share's template through handles on JuiceFS as
/// on a directory: MyBuddyBook is a mount of its own there, which the
/// confined path walk must enter by its one name.
#[test]
fn a_spell_reads_the_template_through_handles_on_the_juicefs_share_too() {
    let share = Share::up();
    let f = Fixture::new();
    let (mount, password) = juicefs_book(&share, &f);
    let spell = f.path("lyra.yaml");
    fs::write(
        &spell,
        "spell: spawn_buddy\nparameters:\n  human: Esther\n  name: Lyra\n  role: buddy\n  channels:\n    telegram: true\n    telegram_token: \"987654321:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawX\"\n",
    )
    .unwrap();
    let sup = quote(&supervisor());
    let swarm = quote(&f.swarm);
    let script = format!(
        "set -e\n{mount}\n{sup} swarm check --swarm-dir-unmounted --swarm {swarm} --template-dir {tpl} >/dev/null 2>&1\n{sup} registry --swarm {swarm} register --buddy {emrys}\n{sup} spawn {spell} --swarm {swarm} --as RoelBuddy-Emrys --dry-run 2>&1\n",
        tpl = quote(&repo().join("buddies/_template")),
        emrys = quote(&f.buddy("roelbuddy-emrys")),
        spell = quote(&spell),
    );
    let o = in_private_ns(&script, &[("BOOK_PASSWORD", &password)]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("[generate] would create spellbook/buddies/estherbuddy-lyra/"),
        "{out}"
    );
    assert!(out.contains("workspace/SOUL.md"), "{out}");
}

/// What the swarm step prints, run as root in a private mount namespace
/// over a tmpfs share after `setup` (root) and `attack` (as the gateway).
fn planted(f: &Fixture, setup: &str, attack: &str) -> (bool, String) {
    let sup = quote(&supervisor());
    let swarm = quote(&f.swarm);
    let seed = quote(&repo().join("images/swarm-seed"));
    let template = quote(&repo().join("buddies/_template"));
    let check = format!(
        "{sup} swarm check --swarm-dir-unmounted --swarm {swarm} --swarm-seed {seed} --template-dir {template}"
    );
    let script = format!(
        "set -e\nmount -t tmpfs -o mode=0755 tmpfs {swarm}\n{check} >/dev/null 2>&1\n{setup}\n{attack}\nset +e\n{check} 2>&1\necho EXIT=$?\nfind {swarm} -printf '%y %p\\n' | sort\n",
        attack = as_gateway(attack),
    );
    let o = in_private_ns(&script, &[]);
    let out = text(&o);
    (out.contains("EXIT=0"), out)
}

#[test]
fn links_fifos_and_sockets_never_stop_the_swarm_step_and_owned_names_are_taken_back() {
    let f = Fixture::new();
    let outside = f.path("outside");
    fs::create_dir_all(&outside).unwrap();
    let etc_before = fs::metadata("/etc").unwrap();
    let attack = format!(
        r#"cd {swarm}/mybuddybook
mv templates/_template templates/old && ln -s {outside} templates/_template
rm -f registry.json.lock && ln -s {outside}/lock registry.json.lock
rm -f wisdom/README.md && ln -s {outside}/readme wisdom/README.md
ln -s /etc wisdom/etc
mkfifo wisdom/pipe
python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('wisdom/sock')"
mkdir -p wisdom/deep/er && ln -s /etc/shadow wisdom/deep/er/shadow"#,
        swarm = quote(&f.swarm),
        outside = quote(&outside),
    );
    let (ok, out) = planted(&f, "", &attack);
    assert!(ok, "the swarm step failed:\n{out}");
    // Nothing was written outside the share, nothing outside was changed.
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "root wrote through a link:\n{out}"
    );
    let etc = fs::metadata("/etc").unwrap();
    assert_eq!(
        (etc.mode(), etc.gid()),
        (etc_before.mode(), etc_before.gid())
    );
    let shadow = fs::metadata("/etc/shadow").unwrap();
    assert_ne!(shadow.gid(), 10100, "{out}");
    // The names the swarm owns hold the real thing again; what sat there is
    // kept aside under a quarantine name.
    for (line, why) in [
        ("d ", "templates/_template"),
        ("f ", "templates/_template/config.json"),
        ("f ", "registry.json.lock"),
        ("f ", "wisdom/README.md"),
        ("l ", "templates/_template.quarantined-"),
        ("l ", "registry.json.lock.quarantined-"),
        ("l ", "wisdom/README.md.quarantined-"),
    ] {
        let needle = format!("{line}{}/mybuddybook/{why}", f.swarm.display());
        assert!(out.contains(&needle), "{needle:?} not in:\n{out}");
    }
    // The rest is left where it is, reported, never followed.
    for name in [
        "wisdom/etc",
        "wisdom/pipe",
        "wisdom/sock",
        "wisdom/deep/er/shadow",
    ] {
        let needle = format!("{}/mybuddybook/{name} why=", f.swarm.display());
        let line = out
            .lines()
            .find(|l| l.contains("left alone") && l.contains(&needle))
            .unwrap_or_else(|| panic!("{name} not reported:\n{out}"));
        assert!(line.contains("never followed"), "{line}");
    }
}

/// A boot (PID 1) on `f`'s swarm dir with `sleep` as the gateway.
fn boot(f: &Fixture, slug: &str, extra: &[&str], child: &[&str]) -> Sup {
    let mut env = base_env();
    env.extend(marker_env(&f.buddy(slug)));
    let seed = repo().join("images/swarm-seed");
    let mut flags = vec!["--swarm-seed", seed.to_str().unwrap()];
    flags.extend_from_slice(extra);
    let args = run_args(&f.buddy(slug), &f.state.join(slug), &f.swarm, &flags, child);
    Sup::start(f.tmp.path(), true, &args, &env)
}

/// The share laid out and repaired by a swarm step, as every boot leaves it
/// (a gateway can write MyBuddyBook and its registry).
fn lay_out(f: &Fixture) {
    let o = Command::new(supervisor())
        .args(["swarm", "check", "--swarm-dir-unmounted", "--swarm"])
        .arg(&f.swarm)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

fn registry(f: &Fixture) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(f.swarm.join("mybuddybook/registry.json")).unwrap())
        .unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_fifo_at_the_registry_or_its_lock_never_hangs_a_boot() {
    let f = Fixture::new();
    let book = f.swarm.join("mybuddybook");
    fs::create_dir_all(&book).unwrap();
    for name in ["registry.json", "registry.json.lock"] {
        sh(Command::new("mkfifo").arg(book.join(name)));
    }
    let began = Instant::now();
    let mut s = boot(
        &f,
        "roelbuddy-galahad",
        &["--stop-timeout", "5"],
        &["sleep", "1000"],
    );
    assert!(
        s.wait_log("registered in the swarm", T),
        "the boot hung on a FIFO:\n{}",
        s.log()
    );
    assert_eq!(
        registry(&f)["buddies"]["roelbuddy-galahad"]["id"],
        "RoelBuddy-Galahad"
    );
    let names = names_in(&book);
    for fifo in [
        "registry.json.quarantined-",
        "registry.json.lock.quarantined-",
    ] {
        assert!(names.iter().any(|n| n.starts_with(fifo)), "{names:?}");
    }
    let registered = began.elapsed();
    let stopped = stop_within(&mut s, Duration::from_secs(5), Some(143));
    eprintln!(
        "FIGURE: FIFOs planted at registry.json and its lock: the boot registered {} ms after it began, both moved aside; SIGTERM honoured in {} ms",
        registered.as_millis(),
        stopped.as_millis()
    );
}

#[test]
fn garbage_in_the_registry_never_stops_a_boot_and_the_good_copy_brings_it_back() {
    for garbage in [
        "garbage",
        r#"{"version":"1","buddies":{}}"#,
        r#"{"version":1,"buddies":7}"#,
    ] {
        let f = Fixture::new();
        lay_out(&f);
        for slug in ["roelbuddy-emrys", "estherbuddy-kazeh"] {
            let o = registry_register(&f.swarm, &f.buddy(slug), &[]);
            assert!(o.status.success(), "{}", text(&o));
        }
        let book = f.swarm.join("mybuddybook");
        let good = fs::metadata(book.join("registry.json.good")).unwrap();
        assert_eq!((good.uid(), good.mode() & 0o777), (0, 0o640));
        // A Buddy's agent breaks the file the whole swarm boots from.
        sh(Command::new("sh").arg("-c").arg(as_gateway(&format!(
            "printf '%s' {} > {}",
            shell_quote(garbage),
            quote(&book.join("registry.json"))
        ))));
        let mut s = boot(&f, "roelbuddy-galahad", &[], &["sleep", "1000"]);
        assert!(s.wait_log("registered in the swarm", T), "{}", s.log());
        let log = s.log();
        assert!(log.contains("the last good copy is used instead"), "{log}");
        let mut ids: Vec<String> = registry(&f)["buddies"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            ["estherbuddy-kazeh", "roelbuddy-emrys", "roelbuddy-galahad"],
            "{garbage}"
        );
        // The broken file is kept aside for whoever looks into it.
        let kept = names_in(&book)
            .into_iter()
            .find(|n| n.starts_with("registry.json.quarantined-"))
            .unwrap_or_else(|| panic!("{:?}", names_in(&book)));
        assert_eq!(fs::read_to_string(book.join(kept)).unwrap(), garbage);
        s.signal("TERM");
        assert_eq!(s.wait_exit(T), Some(143), "{}", s.log());
    }
    eprintln!(
        "FIGURE: registry.json overwritten by uid 10001 (not JSON, a string version, a wrong type): each next boot went on, the good copy brought back both earlier entries, the broken file kept aside"
    );
}

#[test]
fn bad_registry_entries_are_left_out_and_the_good_ones_kept() {
    let f = Fixture::new();
    lay_out(&f);
    for slug in ["roelbuddy-emrys", "estherbuddy-kazeh"] {
        assert!(
            registry_register(&f.swarm, &f.buddy(slug), &[])
                .status
                .success()
        );
    }
    let book = f.swarm.join("mybuddybook");
    let mut reg = registry(&f);
    let good = reg["buddies"]["roelbuddy-emrys"].clone();
    let mut bad = good.clone();
    bad["machine"] = serde_json::json!("x?force=true&");
    reg["buddies"]["estherbuddy-kazeh"]["machine"] = serde_json::json!("x?force=true&");
    reg["buddies"]["a/../../apps/victim-app"] = good;
    reg["buddies"]["estherbuddy-morgan"] = serde_json::json!({"id": ["not", "a", "string"]});
    let text = serde_json::to_string(&reg).unwrap();
    let path = f.scratch("reg.json");
    fs::write(&path, &text).unwrap();
    sh(Command::new("sh").arg("-c").arg(as_gateway(&format!(
        "cat {} > {}",
        quote(&path),
        quote(&book.join("registry.json"))
    ))));
    let mut s = boot(&f, "roelbuddy-galahad", &[], &["sleep", "1000"]);
    assert!(s.wait_log("registered in the swarm", T), "{}", s.log());
    let log = s.log();
    for key in [
        "estherbuddy-kazeh",
        "a/../../apps/victim-app",
        "estherbuddy-morgan",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("entry left out") && l.contains(&format!("key={key}"))),
            "{key}:\n{log}"
        );
    }
    let mut ids: Vec<String> = registry(&f)["buddies"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    ids.sort();
    assert_eq!(ids, ["roelbuddy-emrys", "roelbuddy-galahad"]);
    let rejected = names_in(&book)
        .into_iter()
        .find(|n| n.starts_with("registry.json.rejected-"))
        .unwrap_or_else(|| panic!("{:?}", names_in(&book)));
    let kept: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(book.join(rejected)).unwrap()).unwrap();
    assert_eq!(kept.as_array().unwrap().len(), 3, "{kept}");
    s.signal("TERM");
    assert_eq!(s.wait_exit(T), Some(143), "{}", s.log());
}

/// SIGTERM to the supervisor: it exits (with `code`, if given) within
/// `limit`. How long it took.
fn stop_within(s: &mut Sup, limit: Duration, code: Option<i32>) -> Duration {
    let t = Instant::now();
    s.signal("TERM");
    let exit = s.wait_exit(T);
    assert!(exit.is_some(), "{}", s.log());
    if code.is_some() {
        assert_eq!(exit, code, "{}", s.log());
    }
    let took = t.elapsed();
    assert!(took < limit, "SIGTERM took {took:?}:\n{}", s.log());
    took
}

/// A gateway's process holding `flock` on a file until dropped (the whole
/// process group goes: flock's own child holds the lock).
struct Holder(std::process::Child);

impl Holder {
    fn flock(file: &Path) -> Holder {
        use std::os::unix::process::CommandExt;
        let c = Command::new("sh")
            .arg("-c")
            .arg(as_gateway(&format!("exec flock {} sleep 600", quote(file))))
            .process_group(0)
            .spawn()
            .unwrap();
        Holder(c)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

#[test]
fn a_gateway_holding_the_registry_lock_never_freezes_the_loop() {
    let f = Fixture::new();
    // The layout (and the lock file) first, as every Machine's boot makes it.
    lay_out(&f);
    let lock = f.swarm.join("mybuddybook/registry.json.lock");
    let holder = Holder::flock(&lock);
    // Held before the boot starts.
    std::thread::sleep(Duration::from_millis(300));
    let crash = script(f.tmp.path(), "crash.sh", "sleep 0.3; exit 3\n");
    let mut s = boot(
        &f,
        "roelbuddy-galahad",
        &[
            "--restart",
            "always",
            "--backoff-initial-ms",
            "100",
            "--backoff-max-ms",
            "300",
            "--stop-timeout",
            "3",
        ],
        &[crash.to_str().unwrap()],
    );
    // The dead gateway is reaped and restarted, again and again, while the
    // registration waits on the lock off the loop.
    assert!(s.wait_log("start=4", T), "{}", s.log());
    assert!(
        s.wait_log(
            "cannot write this supervisor's entry; kept, retried later",
            T
        ),
        "{}",
        s.log()
    );
    let zombies = lasting_zombies(s.pid(), Duration::from_secs(2));
    assert!(zombies.is_empty(), "{zombies:?}");
    let restarts = s.log().matches("gateway started").count();
    // Once the gateway lets go, the registration lands.
    let released = Instant::now();
    drop(holder);
    assert!(
        s.wait_log("registered in the swarm", Duration::from_secs(70)),
        "{}",
        s.log()
    );
    let landed = released.elapsed();
    let stopped = stop_within(&mut s, Duration::from_secs(5), None);
    eprintln!(
        "FIGURE: registry lock held by uid 10001: the dead gateway started {restarts} times meanwhile, 0 zombies; the registration landed {} ms after the lock was let go; SIGTERM honoured in {} ms",
        landed.as_millis(),
        stopped.as_millis()
    );
}

#[test]
fn a_held_lock_never_holds_a_stop() {
    let f = Fixture::new();
    lay_out(&f);
    let lock = f.swarm.join("mybuddybook/registry.json.lock");
    let holder = Holder::flock(&lock);
    std::thread::sleep(Duration::from_millis(300));
    let mut s = boot(
        &f,
        "roelbuddy-galahad",
        &["--stop-timeout", "3"],
        &["sleep", "1000"],
    );
    assert!(s.wait_log("gateway started", T), "{}", s.log());
    // SIGTERM while the registration waits on the gateway's lock: the stop
    // takes the stop timeout at most, whatever the lock does.
    stop_within(&mut s, Duration::from_secs(4), Some(143));
    drop(holder);
}
