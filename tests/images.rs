//! The real Dockerfiles: the base image and a Buddy image built with `docker
//! build` (BuildKit) on local stand-ins for the public base images (nothing can
//! be pulled here), then run with --network host: the real gateway answers on
//! its port and `docker stop` ends it cleanly.

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
        "-t",
        "mybuddytalk-base:test",
        ".",
    ]));
    sh(docker_build().args([
        "-f",
        "buddies/estherbuddy-kazeh/Dockerfile",
        "--build-arg",
        "BASE_IMAGE=mybuddytalk-base:test",
        "-t",
        "mybuddytalk-estherbuddy-kazeh:test",
        ".",
    ]));
    // The image holds this Buddy and nothing else of anyone's.
    let listing = sh(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        "mybuddytalk-estherbuddy-kazeh:test",
        "-c",
        "find /opt/mybuddy/buddy /data -type f | sort; grep -c . /etc/group; id buddy; ls -d /opt/mybuddy/gateway/node_modules/@openclaw/*/openclaw.plugin.json; find / -xdev -name 'standins*' -o -name '*mybuddy_standins*' -o -name 'standins-ca.pem' | sed 's/^/stand-in: /'",
    ]));
    assert!(
        listing.contains("/opt/mybuddy/buddy/buddy.json")
            && listing.contains("/opt/mybuddy/buddy/workspace/SOUL.md")
            && listing.contains("/opt/mybuddy/buddy/workspace/AGENTS.md"),
        "{listing}"
    );
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

    let f = Fixture::new();
    let port = free_port_block();
    let token = "image-test-token-0123456789abcdef0123456789";
    let c = Container(format!("mybuddy-image-test-{}", std::process::id()));
    let mut cmd = Command::new("docker");
    cmd.args([
        "run",
        "-d",
        "--name",
        &c.0,
        "--network",
        "host",
        "--tmpfs",
        "/mnt/swarm",
    ]);
    for (k, v) in marker_env(&f.buddy("estherbuddy-kazeh")) {
        cmd.args(["-e", &format!("{k}={v}")]);
    }
    cmd.args(["-e", &format!("ESTHERBUDDY_KAZEH_GATEWAY_TOKEN={token}")])
        .args([
            "-e",
            "MYBUDDY_CHANNELS=off",
            "-e",
            &format!("MYBUDDY_GATEWAY_PORT={port}"),
        ])
        .arg("mybuddytalk-estherbuddy-kazeh:test");
    sh(&mut cmd);
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
    let t = Instant::now();
    sh(Command::new("docker").args(["stop", "-t", "20", &c.0]));
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "docker stop had to kill it"
    );
    assert_eq!(c.exit_code(), 0, "{}", c.logs());
    assert!(c.logs().contains("gateway stopped"));
}
