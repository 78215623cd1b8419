//! A Buddy live end to end: the real supervisor as PID 1 of its own PID
//! namespace, the real gateway with its channels on, in a network namespace
//! with only `lo`, where the Telegram and Gemini stand-ins (crate
//! `mybuddy-standins`) serve. The supervisor points the Buddy at them the way
//! an offline run does: `--config-overlay` (the Telegram proxy, the google
//! provider's baseUrl) and `--gateway-env NODE_EXTRA_CA_CERTS` (the test CA).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mybuddy_standins::telegram::is_status;
use mybuddy_standins::{Bot, Sent, Standins};

use super::*;

/// The Human's Telegram user id (what `<SLUG>_HUMAN_TELEGRAM_ID` holds).
pub const HUMAN: i64 = 424_242_001;

/// The gateway's port inside the namespace (each Live has its own).
pub const LIVE_PORT: u16 = 18789;

pub struct Live {
    pub f: Fixture,
    pub b: PathBuf,
    pub ns: NetNs,
    pub st: Standins,
    pub sup: Sup,
    /// The supervisor's environment (the Buddy's marker secrets among it).
    pub env: Vec<(String, String)>,
    /// Its `supervisor run` arguments (for [`Live::reboot`]).
    pub args: Vec<String>,
}

impl Live {
    /// Boots Buddy `slug` (after `prep` edited its files) and waits until
    /// its gateway is ready and has reached the Telegram stand-in.
    pub fn start(slug: &str, prep: impl FnOnce(&Fixture, &Path)) -> Live {
        Self::start_with(slug, &[], prep)
    }

    /// The same, with more `supervisor run` arguments.
    pub fn start_with(slug: &str, extra: &[&str], prep: impl FnOnce(&Fixture, &Path)) -> Live {
        Self::start_full(slug, extra, prep, |_, _| Vec::new())
    }

    /// The same, with more of the supervisor's environment, made once the
    /// namespace exists (`more` may start servers in it, e.g. the Fly API's
    /// stand-in).
    pub fn start_full(
        slug: &str,
        extra: &[&str],
        prep: impl FnOnce(&Fixture, &Path),
        more: impl FnOnce(&Fixture, &NetNs) -> Vec<(String, String)>,
    ) -> Live {
        let f = Fixture::new();
        let b = f.buddy(slug);
        prep(&f, &b);
        let ns = NetNs::new();
        let more_env = more(&f, &ns);
        let st = Standins::start(Some(Path::new(&ns.path())), Bot::default(), None)
            .expect("start the stand-ins");
        let ca = f.path("standins-ca.pem");
        fs::write(&ca, &st.ca_pem).unwrap();
        // WhatsApp has no stand-in: a Buddy with WhatsApp keeps it on (the
        // policy holds under an overlay too), unlinked, with nowhere to go.
        let overlay = st.overlay("${GEMINI_API_KEY}");
        let overlay_path = f.path("overlay.json");
        fs::write(&overlay_path, overlay.to_string()).unwrap();
        let mut env = marker_env(&b);
        for (k, v) in env.iter_mut() {
            if k.ends_with("_HUMAN_TELEGRAM_ID") {
                *v = HUMAN.to_string();
            }
        }
        let token = env
            .iter()
            .find(|(k, _)| k.ends_with("_TELEGRAM_TOKEN"))
            .map(|(_, v)| v.clone())
            .expect("a Telegram Buddy");
        st.telegram.expect_token(&token);
        // The gateway's PATH holds the supervisor, as the image's
        // /usr/local/bin does: agents run `supervisor resonate`.
        let bin = supervisor().parent().unwrap().display().to_string();
        env.push(("PATH".into(), format!("{bin}:{}", gateway_path())));
        env.push(("NODE_EXTRA_CA_CERTS".into(), ca.display().to_string()));
        env.push(("NO_COLOR".into(), "1".into()));
        env.extend(more_env);
        let seed = repo().join("images/swarm-seed");
        let mut args = vec![
            "--swarm-seed",
            seed.to_str().unwrap(),
            "--config-overlay",
            overlay_path.to_str().unwrap(),
            "--gateway-env",
            "NODE_EXTRA_CA_CERTS",
            "--stop-timeout",
            "15",
        ];
        args.extend_from_slice(extra);
        let args = real_gateway_args(&f, &b, &args);
        let sup = Self::boot(&f, &ns, &args, &env);
        let live = Live {
            f,
            b,
            ns,
            st,
            sup,
            env,
            args,
        };
        live.wait_ready(Duration::from_secs(240));
        live
    }

    fn boot(f: &Fixture, ns: &NetNs, args: &[String], env: &[(String, String)]) -> Sup {
        let mut sup = Sup::start_in_netns(f.tmp.path(), ns, args, env);
        let booted = wait_for(Duration::from_secs(120), || {
            if sup.child.try_wait().ok().flatten().is_some() {
                return Some(false);
            }
            sup.log().contains("gateway started").then_some(true)
        });
        assert_eq!(booted, Some(true), "the Buddy did not boot:\n{}", sup.log());
        sup
    }

    /// Stops the Buddy (SIGTERM, exit 0) and returns that run's log.
    pub fn stop(&mut self) -> String {
        self.sup.signal("TERM");
        let code = self.sup.wait_exit(Duration::from_secs(40));
        assert_eq!(code, Some(0), "{}", self.sup.log());
        self.sup.log()
    }

    /// Boots the stopped Buddy again on the same state dir, with the same
    /// arguments and environment, and waits until it is ready.
    pub fn reboot(&mut self) {
        // Ready means its channel started too: a gateway stopped while its
        // Telegram channel still starts can take longer than the stop
        // timeout to exit (its in-flight calls aborted, then its drain).
        let before = self.st.telegram.calls().len();
        self.sup = Self::boot(&self.f, &self.ns, &self.args, &self.env);
        let pid = self.sup.pid();
        let ready = wait_for(Duration::from_secs(240), || {
            let ok = http_get_in(pid, LIVE_PORT, "/readyz").is_some_and(|(c, _)| c == 200);
            let me = self.st.telegram.calls()[before..]
                .iter()
                .any(|c| c.method == "getMe");
            (ok && me).then_some(())
        });
        assert!(
            ready.is_some(),
            "not ready after the reboot\n{}",
            self.diagnostics()
        );
    }

    /// Until /readyz is 200 and the bot has called getMe through the proxy.
    pub fn wait_ready(&self, timeout: Duration) {
        let pid = self.sup.pid();
        let ready = wait_for(timeout, || {
            let ok = http_get_in(pid, LIVE_PORT, "/readyz").is_some_and(|(c, _)| c == 200);
            let me = self.st.telegram.calls().iter().any(|c| c.method == "getMe");
            (ok && me).then_some(())
        });
        assert!(
            ready.is_some(),
            "the Buddy was not ready with Telegram reached in {timeout:?}\n{}",
            self.diagnostics()
        );
    }

    pub fn state(&self) -> &Path {
        &self.f.state
    }

    pub fn swarm(&self) -> &Path {
        &self.f.swarm
    }

    /// The Human sends `text`; returns the bot's first sendMessage to them after it.
    pub fn say(&self, text: &str) -> Sent {
        self.say_as(HUMAN, "Roel", text, Duration::from_secs(120))
    }

    /// `from` sends `text`; returns the bot's reply to that chat once the
    /// turn has settled: the last message sent (or edited) to it, after the
    /// gateway's "Working" status while tools run, when two seconds pass
    /// with no further call to the chat.
    pub fn say_as(&self, from: i64, name: &str, text: &str, timeout: Duration) -> Sent {
        let tg = &self.st.telegram;
        let since = tg.calls().len();
        tg.post_message(from, name, text);
        let to_chat = |c: &Sent| c.chat_id() == Some(from);
        let is_text = |c: &Sent| {
            matches!(c.method.as_str(), "sendMessage" | "editMessageText") && c.text().is_some()
        };
        let settled = wait_for(timeout, || {
            let calls: Vec<Sent> = tg.calls_since(since).into_iter().filter(to_chat).collect();
            let last = calls.iter().rev().find(|c| is_text(c))?;
            let quiet = tg.elapsed_ms().saturating_sub(calls.last()?.at_ms) >= 2000;
            (quiet && !is_status(last.text().unwrap_or_default())).then(|| last.clone())
        });
        settled.unwrap_or_else(|| {
            panic!(
                "no reply to {text:?} from {from} within {timeout:?}\n{}",
                self.diagnostics()
            )
        })
    }

    /// The gateway's own log files.
    pub fn gateway_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = fs::read_dir(self.state().join("logs")) {
            for e in rd.flatten() {
                out.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// Everything the run printed or logged: the supervisor's stdout and
    /// stderr (the gateway's output goes through it) and the gateway's logs.
    pub fn all_output(&self) -> String {
        format!(
            "{}{}{}",
            self.sup.out(),
            self.sup.log(),
            self.gateway_logs()
        )
    }

    /// The secret values of this run: the Buddy's secrets (markers; the
    /// Human's id is not one) and the generated gateway token.
    pub fn secret_values(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .env
            .iter()
            .filter(|(k, _)| {
                !k.ends_with("_HUMAN_TELEGRAM_ID")
                    && !matches!(
                        k.as_str(),
                        "PATH"
                            | "NODE_EXTRA_CA_CERTS"
                            | "NO_COLOR"
                            // Addresses and paths, not secrets.
                            | "FLY_API_HOSTNAME"
                            | "FLY_IMAGE_REF"
                            | "MYBUDDY_FLY_TOML"
                            | "MYBUDDY_SPELL_SOCKET"
                            | "MYBUDDY_BOOK_META_URL"
                            | "MYBUDDY_BACKUP_REPOSITORY"
                            | "MYBUDDY_BACKUP_INTERVAL"
                            | "MYBUDDY_BACKUP_CACHE"
                    )
            })
            .map(|(_, v)| v.clone())
            .collect();
        if let Ok(t) = fs::read_to_string(self.state().join("gateway-token")) {
            v.push(t.trim().to_string());
        }
        v
    }

    /// Asserts that nothing of the run left loopback and no secret value
    /// appears in any of its output.
    pub fn assert_private_and_quiet(&self) {
        assert_eq!(
            self.ns.links(),
            vec!["lo".to_string()],
            "the namespace has more than lo"
        );
        let all = self.all_output();
        for s in self.secret_values() {
            assert!(!s.is_empty());
            assert!(
                !all.contains(&s),
                "a secret value appears in the run's output (the token, an API key...)"
            );
        }
        // Every tunnel the gateway asked for went to api.telegram.org.
        assert!(
            !self
                .st
                .telegram
                .calls()
                .iter()
                .any(|c| c.method == "(connect refused)" || c.method == "(unauthorized)"),
            "{:?}",
            self.st.telegram.calls()
        );
    }

    pub fn diagnostics(&self) -> String {
        let tail = |s: String, n: usize| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let calls: Vec<String> = self
            .st
            .telegram
            .calls()
            .iter()
            .map(|c| format!("{} {}", c.method, c.params))
            .collect();
        let seen: Vec<String> = self
            .st
            .gemini
            .seen()
            .iter()
            .map(|s| format!("{} step={:?}", s.path, s.step))
            .collect();
        format!(
            "--- supervisor (tail)\n{}\n--- telegram calls\n{}\n--- gemini requests\n{}",
            tail(self.sup.log(), 60),
            calls.join("\n"),
            seen.join("\n")
        )
    }

    /// How every live test ends: nothing left loopback, nothing secret in
    /// any output, and a clean stop (SIGTERM → the supervisor exits 0).
    pub fn finish(mut self) {
        self.assert_private_and_quiet();
        self.sup.signal("TERM");
        let code = self.sup.wait_exit(Duration::from_secs(40));
        assert_eq!(code, Some(0), "{}", self.sup.log());
    }
}
