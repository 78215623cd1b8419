//! Faults and bad conditions, with real processes and real filesystems.
//! Each test prints one `FIGURE:` line; scripts/reliability collects them.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

const T: Duration = Duration::from_secs(60);

fn figure(s: &str) {
    eprintln!("FIGURE: {s}");
}

fn buddy_args(f: &Fixture, slug: &str, extra: &[&str], child: &[&str]) -> Vec<String> {
    run_args(&f.buddy(slug), &f.state, &f.swarm, extra, child)
}

fn env_for(f: &Fixture, slug: &str) -> Vec<(String, String)> {
    let mut env = base_env();
    env.extend(marker_env(&f.buddy(slug)));
    env
}

/// Runs `script` as root in a private mount namespace (for tmpfs mounts).
fn in_mount_ns(script: &str, env: &[(String, String)]) -> std::process::Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

#[test]
fn disk_full_while_writing_the_config_keeps_the_previous_file() {
    let f = Fixture::new();
    let env = env_for(&f, "roelbuddy-galahad");
    let state = f.state.display().to_string();
    let sup = supervisor().display().to_string();
    let buddy = f.buddy("roelbuddy-galahad").display().to_string();
    // A 64 KiB tmpfs holding a previous config and a token, then filled up.
    let script = format!(
        r#"set -e
mkdir -p {state}
mount -t tmpfs -o size=64k tmpfs {state}
printf '{{"previous": true}}\n' > {state}/openclaw.json
{sup} render --buddy {buddy} --state-dir {state} --out {state}/seed.json >/dev/null 2>&1
rm {state}/seed.json
dd if=/dev/zero of={state}/filler bs=4k 2>/dev/null || true
set +e
{sup} render --buddy {buddy} --state-dir {state} --out {state}/openclaw.json
echo "render-exit=$?"
cat {state}/openclaw.json
ls -a {state}"#
    );
    let o = in_mount_ns(&script, &env);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("render-exit=1"), "{out}{err}");
    assert!(
        err.contains("No space left on device") && err.contains("openclaw.json"),
        "{err}"
    );
    assert!(
        out.contains("{\"previous\": true}"),
        "the previous config was damaged:\n{out}"
    );
    assert!(!out.contains(".tmp-"), "a temp file was left: {out}");
    figure(
        "disk full while writing openclaw.json: clear error, previous file intact, no temp file left",
    );
}

#[test]
fn disk_full_while_writing_the_registry_keeps_the_previous_file() {
    let f = Fixture::new();
    let swarm = f.swarm.display().to_string();
    let sup = supervisor().display().to_string();
    let script = format!(
        r#"set -e
mount -t tmpfs -o size=64k tmpfs {swarm}
{sup} registry --swarm {swarm} register --buddy {emrys}
dd if=/dev/zero of={swarm}/filler bs=4k 2>/dev/null || true
set +e
{sup} registry --swarm {swarm} register --buddy {galahad}
echo "exit=$?"
{sup} registry --swarm {swarm} --json"#,
        emrys = f.buddy("roelbuddy-emrys").display(),
        galahad = f.buddy("roelbuddy-galahad").display(),
    );
    let o = in_mount_ns(&script, &base_env());
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("exit=1"), "{out}{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let json = out.split("exit=1").nth(1).unwrap();
    let reg: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(
        reg["buddies"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["roelbuddy-emrys"]
    );
    figure("disk full while writing registry.json: clear error, previous registry intact");
}

#[test]
fn kill_9_at_random_moments_of_boot_never_tears_state() {
    let f = Fixture::new();
    let env = env_for(&f, "roelbuddy-galahad");
    let args = buddy_args(
        &f,
        "roelbuddy-galahad",
        &["--restart", "never"],
        &["/bin/true"],
    );
    // How long one whole (warm) boot takes here; kills land anywhere from
    // the very start to past its end.
    let boot = || {
        let t = Instant::now();
        let st = run_cmd(&args, &env).status().unwrap();
        assert!(st.success());
        t.elapsed()
    };
    boot();
    let boot_us = boot().as_micros() as u32;
    let mut seed = 0x2545F491u32;
    let mut mid_boot = 0;
    let rounds = 200;
    for i in 0..rounds {
        next_random(&mut seed);
        let mut child = run_cmd(&args, &env).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(u64::from(
            seed % (boot_us + boot_us / 4),
        )));
        if child.try_wait().unwrap().is_none() {
            mid_boot += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        for file in [
            f.state.join("openclaw.json"),
            f.swarm.join("mybuddybook/registry.json"),
        ] {
            if let Ok(text) = fs::read_to_string(&file) {
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{} torn after kill {i}: {e}", file.display()));
            }
        }
        if let Ok(t) = fs::read_to_string(f.state.join("gateway-token")) {
            assert_eq!(t.trim().len(), 43, "token torn after kill {i}");
        }
    }
    // The next boot succeeds and keeps the token it had.
    let token = fs::read_to_string(f.state.join("gateway-token")).unwrap();
    let mut s = Sup::start(f.tmp.path(), false, &args, &env);
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
    assert_eq!(
        fs::read_to_string(f.state.join("gateway-token")).unwrap(),
        token
    );
    assert!(mid_boot > 50, "only {mid_boot} kills landed during a boot");
    figure(&format!(
        "kill -9 during boot: {rounds} kills at random moments of a {} ms boot ({mid_boot} mid-boot), 0 torn files, next boot ok",
        boot_us / 1000
    ));
}

#[test]
fn a_flooding_child_does_not_slow_the_stop() {
    let f = Fixture::new();
    let env = env_for(&f, "roelbuddy-galahad");
    let args = buddy_args(
        &f,
        "roelbuddy-galahad",
        &["--stop-timeout", "5"],
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do echo flood flood flood flood flood flood flood flood; done",
        ],
    );
    let mut child = run_cmd(&args, &env).stdout(Stdio::piped()).spawn().unwrap();
    // A reader like Fly's log shipper: drains everything.
    let mut out = child.stdout.take().unwrap();
    let drain = std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()).unwrap());
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let took = t.elapsed();
    let bytes = drain.join().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(5),
        "stop took {took:?} under a stdout flood"
    );
    assert!(bytes > 1_000_000, "the child flooded only {bytes} bytes");
    figure(&format!(
        "stdout flood: {} MB passed through untouched, stop in {} ms, exit 0",
        bytes / 1_000_000,
        took.as_millis()
    ));
}

#[test]
fn signal_storms_are_absorbed() {
    let f = Fixture::new();
    let env = env_for(&f, "roelbuddy-galahad");
    let child = script(
        f.tmp.path(),
        "storm.sh",
        "trap 'echo usr2' USR2\ntrap 'exit 0' TERM\necho ready\n# 3000 short-lived orphans: a SIGCHLD storm at the supervisor\ni=0; while [ $i -lt 3000 ]; do (true &); i=$((i+1)); done\necho storm-done\nwhile :; do sleep 1000 & wait $!; done",
    );
    let args = buddy_args(&f, "roelbuddy-galahad", &[], &[child.to_str().unwrap()]);
    let mut s = Sup::start(f.tmp.path(), false, &args, &env);
    assert!(s.wait_out("ready", T));
    let pid = Pid::from_raw(s.pid());
    for _ in 0..1000 {
        kill(pid, Signal::SIGHUP).unwrap();
    }
    kill(pid, Signal::SIGUSR2).unwrap();
    assert!(
        s.wait_out("usr2", T),
        "USR2 lost in the storm:\n{}",
        s.log()
    );
    assert!(s.wait_out("storm-done", T));
    let reloads = s.log().matches("SIGHUP: reloading the config").count();
    assert!(reloads >= 1);
    assert_eq!(
        s.log().matches("gateway started").count(),
        1,
        "the storm restarted the gateway"
    );
    let zombies = lasting_zombies(s.pid(), Duration::from_secs(2)).len();
    s.signal("TERM");
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
    assert_eq!(zombies, 0);
    figure(&format!(
        "signal storms: 1000 SIGHUP (coalesced into {reloads} reloads) + 3000-orphan SIGCHLD storm; USR2 still forwarded, gateway never restarted, 0 zombies"
    ));
}

#[test]
fn a_gateway_that_hangs_on_stop_is_killed_on_time() {
    let f = Fixture::new();
    let env = env_for(&f, "roelbuddy-galahad");
    let hang = script(
        f.tmp.path(),
        "hang.sh",
        "trap '' TERM INT\necho ready\nwhile :; do sleep 1000 & wait $!; done",
    );
    let args = buddy_args(
        &f,
        "roelbuddy-galahad",
        &["--stop-timeout", "2"],
        &[hang.to_str().unwrap()],
    );
    let mut s = Sup::start(f.tmp.path(), false, &args, &env);
    assert!(s.wait_out("ready", T));
    let t = Instant::now();
    s.signal("TERM");
    assert_eq!(s.wait_exit(T), Some(137));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert!(!Path::new(&format!("/proc/{}", s.pid())).exists() || s.wait_exit(T).is_some());
    figure(&format!(
        "gateway hanging on stop: killed after {} ms (timeout 2000 ms), exit 137",
        took.as_millis()
    ));
}

#[test]
fn a_supervisor_killed_outright_takes_its_gateway_with_it() {
    // SIGKILL (or the OOM killer) gives the supervisor no chance to stop the
    // gateway; the kernel's parent-death signal does it, so a supervisor
    // started again never finds a second gateway on the same state.
    let f = Fixture::new();
    let env = env_for(&f, "roelbuddy-galahad");
    let child = script(
        f.tmp.path(),
        "pid.sh",
        "echo \"gateway-pid=$$\"\ntrap '' TERM INT HUP\nwhile :; do sleep 1000 & wait $!; done",
    );
    let args = buddy_args(&f, "roelbuddy-galahad", &[], &[child.to_str().unwrap()]);
    let mut s = Sup::start(f.tmp.path(), false, &args, &env);
    assert!(s.wait_out("gateway-pid=", T), "{}", s.log());
    let gw: i32 = s
        .out()
        .split("gateway-pid=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{gw}")).exists());
    kill(Pid::from_raw(s.pid()), Signal::SIGKILL).unwrap();
    let _ = s.wait_exit(T);
    let t = Instant::now();
    let gone = wait_for(Duration::from_secs(5), || {
        // A zombie waiting for its new parent counts as gone.
        let st = std::fs::read_to_string(format!("/proc/{gw}/stat")).unwrap_or_default();
        (st.is_empty() || st.contains(") Z ")).then_some(())
    });
    assert!(
        gone.is_some(),
        "the gateway outlived its SIGKILLed supervisor"
    );
    figure(&format!(
        "supervisor SIGKILLed: its gateway (ignoring TERM/INT/HUP) gone {} ms later",
        t.elapsed().as_millis()
    ));
}

/// The memory guard: in a cgroup of 96 MiB, a gateway that allocates past
/// it is what the kernel's OOM killer takes (the supervisor is its last
/// choice), the death is logged, counted and recorded as an OOM, the
/// gateway restarted, the supervisor unharmed. The gateway's heap cap comes
/// from the VM's size.
#[test]
fn a_gateway_killed_for_memory_is_told_apart_and_restarted() {
    let f = Fixture::new();
    let cg = MemoryCgroup::new(96 << 20);
    let count = f.path("runs");
    fs::write(&count, "0").unwrap();
    fs::set_permissions(&count, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let child = script(
        f.tmp.path(),
        "hog.sh",
        &format!(
            "n=$(cat {count}); n=$((n+1)); echo $n > {count}\n\
             [ $n = 1 ] && exec python3 -c 'x = b\"x\" * (400 << 20); print(len(x))'\n\
             echo \"heap=$NODE_OPTIONS adj=$(cat /proc/self/oom_score_adj)\"\n\
             trap 'exit 0' TERM\nwhile :; do sleep 1000 & wait $!; done",
            count = count.display()
        ),
    );
    let mut env = env_for(&f, "roelbuddy-galahad");
    env.push(("FLY_VM_MEMORY_MB".into(), "2048".into()));
    let args = buddy_args(
        &f,
        "roelbuddy-galahad",
        &["--backoff-initial-ms", "100"],
        &[child.to_str().unwrap()],
    );
    let mut s = Sup::start_in_cgroup(f.tmp.path(), &cg, &args, &env);
    assert!(s.wait_out("heap=", T), "{}\n{}", s.log(), s.out());
    let log = s.log();
    assert!(
        log.contains("gateway killed for memory (the kernel's OOM killer)"),
        "{log}"
    );
    assert!(log.contains("oom_kills=1"), "{log}");
    assert_eq!(log.matches("gateway started").count(), 2, "{log}");
    // The gateway's V8 heap: 3/4 of the VM; its OOM score raised.
    assert!(
        s.out().contains("heap=--max-old-space-size=1536 adj=500"),
        "{}",
        s.out()
    );
    // The supervisor survived: -900 where the kernel lets it lower its
    // own (this machine's answers EIO to any negative value: then said).
    let own = fs::read_to_string(format!("/proc/{}/oom_score_adj", s.pid())).unwrap();
    assert!(
        own.trim() == "-900" || log.contains("cannot lower our own oom_score_adj"),
        "{own}\n{log}"
    );
    let last_exit = wait_for(T, || {
        let r: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(f.swarm.join("mybuddybook/registry.json")).ok()?,
        )
        .ok()?;
        r["buddies"]["roelbuddy-galahad"]["gateway"]["last_exit"]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(
        last_exit.as_deref(),
        Some("killed for memory (OOM, signal SIGKILL)"),
        "{}",
        s.log()
    );
    s.signal("TERM");
    assert_eq!(s.wait_exit(T), Some(0), "{}", s.log());
    figure(
        "OOM: a gateway allocating 400 MB in a 96 MiB cgroup was the OOM killer's choice, logged and recorded as such, restarted; the supervisor (oom_score_adj -900) survived",
    );
}
