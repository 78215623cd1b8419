//! Stand-ins for the services outside the swarm, on loopback only: the
//! Telegram Bot API (reached through the gateway's `channels.telegram.proxy`,
//! TLS from a CA made here), Gemini (the google provider's `baseUrl`) and
//! the Fly Machines API (`FLY_API_HOSTNAME`). They speak the real
//! protocols, record what they saw, and take faults (Telegram "down", Fly
//! errors, ambiguous creates, held leases, failing checks). Used in-process by the tests and as the `standins`
//! binary by `scripts/run-local --offline`, `scripts/talk` and the bench.
//! Never part of an image.
//!
//! Layout, one concern per file: [`ca`] (the test CA and the Bot API's leaf),
//! [`telegram`] (Bot API state, the CONNECT proxy, TLS), [`gemini`] (the
//! scripted model, embeddings), [`flyapi`] (the Machines API's state and
//! faults), [`control`] (the binary's control socket), [`http`] (hyper
//! plumbing they share).

pub mod ca;
pub mod control;
pub mod flyapi;
pub mod gemini;
pub mod http;
pub mod telegram;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use flyapi::FlyApi;
pub use gemini::{Gemini, Step};
pub use telegram::{Down, Sent, Telegram};

/// Both stand-ins, serving on 127.0.0.1 of one network namespace from a
/// thread of their own (a single-threaded tokio runtime: the tests' threads
/// stay where they are).
pub struct Standins {
    pub telegram: Arc<Telegram>,
    pub gemini: Arc<Gemini>,
    /// The port of the HTTP proxy that answers `CONNECT api.telegram.org:443`.
    pub proxy_port: u16,
    /// The port of the Gemini API (plain HTTP; `base_url`).
    pub gemini_port: u16,
    /// The test CA's certificate, PEM (what `NODE_EXTRA_CA_CERTS` names).
    pub ca_pem: String,
}

/// The Telegram bot the stand-in plays, as getMe answers.
#[derive(Debug, Clone)]
pub struct Bot {
    pub id: i64,
    pub username: String,
    pub first_name: String,
}

impl Default for Bot {
    fn default() -> Self {
        Bot {
            id: 7_000_000_001,
            username: "mybuddy_standin_bot".into(),
            first_name: "Buddy".into(),
        }
    }
}

/// Runs `setup` on a thread of its own with a single-threaded tokio
/// runtime, in the network namespace `netns` (a `/proc/PID/ns/net`; the
/// thread joins it before anything binds) or the caller's, and serves what
/// it spawned until the process exits. Returns what `setup` returned (the
/// ports it bound).
fn serve_in_thread<T: Send + 'static>(
    netns: Option<&Path>,
    name: &str,
    setup: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    let ns = netns.map(File::open).transpose()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(ns) = ns {
                // setns is per thread: only this one (and the runtime on
                // it) moves into the test's loopback-only namespace.
                if let Err(e) = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                {
                    let _ = tx.send(Err(anyhow::anyhow!(
                        "setns into the network namespace: {e}"
                    )));
                    return;
                }
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                match setup.await {
                    Ok(v) => {
                        let _ = tx.send(Ok(v));
                        // Serve until the process exits.
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow::anyhow!("the stand-ins did not start within 10 s"))?
}

/// The Fly Machines API stand-in, serving on 127.0.0.1 from a thread of its own.
pub struct FlyStandin {
    pub api: Arc<FlyApi>,
    pub port: u16,
}

impl FlyStandin {
    /// `authorization`: the one header value accepted (None: any).
    pub fn start(netns: Option<&Path>, authorization: Option<&str>) -> anyhow::Result<FlyStandin> {
        let api = Arc::new(FlyApi::new(authorization, "personal"));
        let a = api.clone();
        let port = serve_in_thread(netns, "fly-standin", async move {
            let server = http::Server::bind(move |req| a.answer(req)).await?;
            let port = server.port();
            tokio::spawn(server.run());
            anyhow::Ok(port)
        })?;
        Ok(FlyStandin { api, port })
    }

    /// What `FLY_API_HOSTNAME` says to reach it.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Standins {
    /// Starts both stand-ins. `netns`: a `/proc/PID/ns/net` to serve in
    /// (the serving thread joins it before it binds anything), or None for
    /// the caller's own namespace. `control`: a Unix socket path for the
    /// control API (the binary's; tests call the methods directly).
    pub fn start(
        netns: Option<&Path>,
        bot: Bot,
        control: Option<&Path>,
    ) -> anyhow::Result<Standins> {
        let ca = ca::TestCa::new()?;
        let ca_pem = ca.cert_pem.clone();
        let tls = Arc::new(ca.server_config(telegram::HOST)?);
        let telegram = Arc::new(Telegram::new(bot));
        let gemini = Arc::new(Gemini::new());
        let (tg, gm) = (telegram.clone(), gemini.clone());
        let control = control.map(Path::to_path_buf);
        let (proxy_port, gemini_port) = serve_in_thread(netns, "standins", async move {
            let proxy = telegram::Proxy::bind(tg.clone(), tls).await?;
            let g = gm.clone();
            let gemini = http::Server::bind(move |req| g.clone().answer(req)).await?;
            let ports = (proxy.port(), gemini.port());
            if let Some(path) = &control {
                let c = control::bind(path, tg.clone(), gm.clone())?;
                tokio::spawn(c);
            }
            tokio::spawn(proxy.run());
            tokio::spawn(gemini.run());
            anyhow::Ok(ports)
        })?;
        Ok(Standins {
            telegram,
            gemini,
            proxy_port,
            gemini_port,
            ca_pem,
        })
    }

    /// `channels.telegram.proxy` for the gateway.
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    /// `models.providers.google.baseUrl` for the gateway.
    pub fn gemini_base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1beta", self.gemini_port)
    }

    /// A config overlay (RFC 7396, what `supervisor run --config-overlay`
    /// takes) pointing a Buddy's Telegram channel and its google provider
    /// here. `api_key_ref` is what the provider's apiKey says (a `${VAR}`
    /// reference, substituted by the supervisor like every other).
    pub fn overlay(&self, api_key_ref: &str) -> serde_json::Value {
        serde_json::json!({
            "channels": {"telegram": {"proxy": self.proxy_url()}},
            "models": {"providers": {"google": {
                "baseUrl": self.gemini_base_url(),
                "apiKey": api_key_ref,
                "api": "google-generative-ai",
                "models": [
                    {"id": gemini::MODEL, "name": "Gemini 3 Flash (stand-in)"},
                    {"id": "gemini-3.1-pro-preview", "name": "Gemini 3.1 Pro (stand-in)"}
                ]
            }}}
        })
    }
}
