//! The Fly Machines API client (`fleet::fly`) against the stand-in Machines
//! API, both in a loopback-only network namespace: the calls a spell makes,
//! the token header as flyctl forms it, retries where they are safe and
//! none where they are not (an ambiguous Machine create), and the token in
//! no error.

mod support;

use std::time::Duration;

use mybuddy_standins::FlyStandin;
use mybuddytalk::config::render::Secret;
use mybuddytalk::fleet::fly::{AppState, Client, FlyError};
use serde_json::json;
use support::*;

const TOKEN: &str = "fm2_lQ-fake-macaroon-0123456789,fm2_second-part";

struct World {
    ns: NetNs,
    fly: FlyStandin,
}

impl World {
    fn new() -> World {
        let ns = NetNs::new();
        let fly = fly_api(&ns, Some(TOKEN));
        World { ns, fly }
    }

    fn client(&self) -> Client {
        Client::new(&self.fly.base_url(), TOKEN).with_backoff(Duration::from_millis(10))
    }
}

#[test]
fn a_spawn_s_calls_reach_the_api_as_flyctl_sends_them() {
    let w = World::new();
    let app = "mybuddytalk-estherbuddy-lyra";
    let c = w.client();
    w.ns.run(|| {
        assert_eq!(c.app_state(app).unwrap(), AppState::Free);
        c.create_app(app, "personal").unwrap();
        assert_eq!(c.app_state(app).unwrap(), AppState::Ours);
        let token = Secret("123456:bot-token-value".into());
        let version = c
            .set_secrets(
                app,
                &[("ESTHERBUDDY_LYRA_TELEGRAM_TOKEN".into(), Some(&token))],
            )
            .unwrap();
        assert_eq!(version, 1);
        assert_eq!(
            c.secret_names(app).unwrap(),
            ["ESTHERBUDDY_LYRA_TELEGRAM_TOKEN"]
        );
        let vol = c
            .create_volume(app, "buddy_state", "ams", 3, Some(14))
            .unwrap();
        assert_eq!(c.volumes(app).unwrap().len(), 1);
        let body = json!({
            "name": "estherbuddy-lyra", "region": "ams", "min_secrets_version": version,
            "config": {"image": "registry.fly.io/mybuddytalk-base@sha256:aa",
                       "metadata": {"mybuddy_cast": "cast-1"},
                       "mounts": [{"volume": vol.id, "path": "/data"}],
                       "checks": {"healthz": {"type": "http", "port": 18789, "path": "/healthz"}}}
        });
        let m = c.create_machine(app, &body).unwrap();
        c.wait_started(app, &m.id, &m.instance_id, Duration::from_secs(5))
            .unwrap();
        assert!(c.machine(app, &m.id).unwrap().checks_pass());
        let tagged = c.machines_tagged(app, "mybuddy_cast", "cast-1").unwrap();
        assert_eq!(tagged.len(), 1);
        assert!(
            c.machines_tagged(app, "mybuddy_cast", "other")
                .unwrap()
                .is_empty()
        );
        // An upgrade's round: lease, update the whole config, release.
        let nonce = c.lease(app, &m.id, 60).unwrap();
        let mut cfg = m.config.clone();
        cfg["image"] = json!("registry.fly.io/mybuddytalk-base@sha256:bb");
        let m2 = c
            .update_machine(app, &m.id, &nonce, &json!({"config": cfg}))
            .unwrap();
        assert_ne!(m2.instance_id, m.instance_id);
        c.release_lease(app, &m.id, &nonce).unwrap();
        c.allocate_private_ip(app).unwrap();
        // And taken down again.
        c.destroy_machine(app, &m.id).unwrap();
        c.delete_volume(app, &vol.id).unwrap();
        c.delete_app(app).unwrap();
        assert_eq!(c.app_state(app).unwrap(), AppState::Free);
    });
    let calls = w.fly.api.calls();
    let lines: Vec<String> = calls.iter().map(|c| c.line()).collect();
    assert_eq!(
        lines[..6],
        [
            format!("GET /v1/apps/{app}"),
            "POST /v1/apps".to_string(),
            format!("GET /v1/apps/{app}"),
            format!("POST /v1/apps/{app}/secrets"),
            format!("GET /v1/apps/{app}/secrets"),
            format!("POST /v1/apps/{app}/volumes"),
        ]
    );
    // Both names for the app, as the docs and fly-go each want.
    assert_eq!(calls[1].body["app_name"], app);
    assert_eq!(calls[1].body["name"], app);
    assert_eq!(calls[1].body["org_slug"], "personal");
    // Every call carried the macaroon as FlyV1, and the update its lease.
    assert!(
        calls
            .iter()
            .all(|c| c.authorization.as_deref() == Some(&format!("FlyV1 {TOKEN}")[..])),
        "{calls:?}"
    );
    let update = calls
        .iter()
        .find(|c| c.method == "POST" && c.lease_nonce.is_some())
        .unwrap();
    assert!(
        update.line().contains("/machines/m") && !update.line().ends_with("/lease"),
        "{update:?}"
    );
    assert!(update.lease_nonce.as_deref().unwrap().starts_with("nonce-"));
    // Nothing failed but the two looks at a free name.
    let not_ok: Vec<(u64, u16)> = calls
        .iter()
        .filter(|c| c.status >= 300)
        .map(|c| (c.seq, c.status))
        .collect();
    assert_eq!(not_ok, [(1, 404), (calls.len() as u64, 404)], "{calls:?}");
    // The bot token went in the secrets call and nowhere else.
    let with_token = calls_carrying(&w.fly.api, "bot-token-value");
    assert_eq!(with_token, [format!("POST /v1/apps/{app}/secrets")]);
}

#[test]
fn retries_where_safe_and_never_for_an_ambiguous_machine_create() {
    let w = World::new();
    let app = "mybuddytalk-roelbuddy-galahad";
    w.fly.api.add_app(app);
    let c = w.client();
    let calls_of = |line: &str| {
        w.fly
            .api
            .calls()
            .iter()
            .filter(|c| c.line() == line)
            .count()
    };
    // Two 500s then an answer: retried. A 429 (Retry-After: 0): retried.
    w.fly.api.fail("GET", &format!("/v1/apps/{app}"), 500, 2);
    w.ns.run(|| assert_eq!(c.app_state(app).unwrap(), AppState::Ours));
    assert_eq!(calls_of(&format!("GET /v1/apps/{app}")), 3);
    w.fly.api.fail("POST", "/secrets", 429, 1);
    let v =
        w.ns.run(|| c.set_secrets(app, &[("A".into(), None)]).unwrap());
    assert_eq!(v, 1);
    assert_eq!(calls_of(&format!("POST /v1/apps/{app}/secrets")), 2);

    // A Machine create that fails with a 500 is not repeated by the client.
    let body = json!({"name": "x", "region": "ams", "config": {"image": "img", "metadata": {"mybuddy_cast": "c2"}}});
    w.fly.api.fail("POST", "/machines", 500, 1);
    let e = w.ns.run(|| c.create_machine(app, &body).unwrap_err());
    assert_eq!(e.status(), Some(500));
    let text = e.to_string();
    assert!(
        text.contains("POST /v1/apps/mybuddytalk-roelbuddy-galahad/machines: 500")
            && text.contains("fly-request-id standin-"),
        "{text}"
    );
    assert_eq!(calls_of(&format!("POST /v1/apps/{app}/machines")), 1);
    // An ambiguous 408: the Machine exists; the client says 408 and the
    // caller finds it by its tag.
    w.fly.api.ambiguous_create(1);
    let e = w.ns.run(|| c.create_machine(app, &body).unwrap_err());
    assert_eq!(e.status(), Some(408));
    let found =
        w.ns.run(|| c.machines_tagged(app, "mybuddy_cast", "c2").unwrap());
    assert_eq!(found.len(), 1);
    assert_eq!(w.fly.api.app(app).unwrap().machines.len(), 1);

    // A lease someone else holds: 409, said plainly.
    let id = found[0].id.clone();
    w.fly.api.hold_lease(app, &id);
    let e = w.ns.run(|| c.lease(app, &id, 60).unwrap_err());
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("lease held by someone else"), "{e}");

    // No error anywhere names the token.
    for err in [text, e.to_string()] {
        assert!(!err.contains("fm2_"), "{err}");
    }
}

#[test]
fn a_wrong_token_and_an_unreachable_api_are_clear_errors() {
    let w = World::new();
    let wrong = Client::new(&w.fly.base_url(), "fo1_not-the-token");
    let e = w.ns.run(|| wrong.app_state("mybuddytalk-x").unwrap_err());
    assert_eq!(e.status(), Some(401), "{e}");
    assert!(!e.to_string().contains("not-the-token"), "{e}");

    // The public endpoint from a loopback-only namespace: a transport error
    // (nothing leaves the machine), the token in none of it.
    let public = Client::new(mybuddytalk::fleet::fly::DEFAULT_BASE, TOKEN)
        .with_backoff(Duration::from_millis(10));
    let e = w.ns.run(|| public.app_state("mybuddytalk-x").unwrap_err());
    assert!(matches!(e, FlyError::Transport { .. }), "{e}");
    assert!(!e.to_string().contains("fm2_"), "{e}");
}
