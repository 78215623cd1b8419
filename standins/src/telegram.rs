//! The Telegram Bot API, as the gateway reaches it: through an HTTP proxy
//! (`channels.telegram.proxy`) that answers `CONNECT api.telegram.org:443`,
//! then TLS with a leaf from the test CA, then the Bot API's
//! `/bot<token>/<method>` calls. A test (or the control socket) posts a
//! Human's message as an update, reads every call the bot made, and switches
//! the API down (new connections refused or reset, open tunnels cut) and up.
//!
//! Update ids and message ids start at the Unix time of the stand-in's start
//! and only grow: the gateway keeps its update offset on the volume and drops
//! a message id it has already seen in a chat, so both must keep growing
//! across gateway restarts and stand-in restarts (one id per second of
//! downtime is plenty).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::Bot;
use crate::http::{self, Request, Resp};

/// The host the gateway tunnels to.
pub const HOST: &str = "api.telegram.org";

/// The longest getUpdates long poll served (Telegram's own limit is 50 s).
const MAX_POLL: Duration = Duration::from_secs(50);

/// One Bot API call the gateway made (never the token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    /// Position in the record, from 0.
    pub seq: usize,
    pub method: String,
    /// Query and body parameters, merged (JSON or form-encoded bodies).
    pub params: Value,
    /// Milliseconds since the stand-in started.
    pub at_ms: u64,
}

impl Sent {
    pub fn chat_id(&self) -> Option<i64> {
        let c = &self.params["chat_id"];
        c.as_i64().or_else(|| c.as_str()?.parse().ok())
    }

    pub fn text(&self) -> Option<&str> {
        self.params["text"].as_str()
    }
}

/// Whether a message text is the gateway's progress status while a turn
/// runs its tools (`<b>Working</b>`, deleted once the answer is sent), not
/// an answer.
pub fn is_status(text: &str) -> bool {
    text.starts_with("<b>") && text.ends_with("</b>") && text.len() < 40
}

/// How the API is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Down {
    /// Nothing listens on the proxy port: connection refused.
    Refused,
    /// The proxy accepts and resets at once: connection reset.
    Reset,
}

pub struct Telegram {
    bot: Bot,
    started: Instant,
    inner: Mutex<Inner>,
    /// Woken on every new update and every recorded call.
    changed: Notify,
    down: watch::Sender<Option<Down>>,
}

struct Inner {
    next_update_id: i64,
    next_message_id: i64,
    pending: Vec<Value>,
    calls: Vec<Sent>,
    expected_token: Option<String>,
    tunnels: u64,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Telegram {
    pub fn new(bot: Bot) -> Telegram {
        Telegram {
            bot,
            started: Instant::now(),
            inner: Mutex::new(Inner {
                next_update_id: unix_now(),
                // The gateway drops a message id it has seen in a chat: ids
                // must grow across stand-in restarts too, as in Telegram.
                next_message_id: unix_now(),
                pending: Vec::new(),
                calls: Vec::new(),
                expected_token: None,
                tunnels: 0,
            }),
            changed: Notify::new(),
            down: watch::Sender::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Only calls with this bot token are answered (others get 401, as the
    /// real API gives a wrong token).
    pub fn expect_token(&self, token: &str) {
        self.lock().expected_token = Some(token.to_string());
    }

    /// A Human's private message to the bot, queued for getUpdates.
    /// Returns its update id.
    pub fn post_message(&self, from: i64, first_name: &str, text: &str) -> i64 {
        let mut g = self.lock();
        let id = g.next_update_id;
        g.next_update_id += 1;
        let message_id = g.next_message_id;
        g.next_message_id += 1;
        let user =
            json!({"id": from, "is_bot": false, "first_name": first_name, "language_code": "en"});
        let mut message = json!({
            "message_id": message_id,
            "date": unix_now(),
            "chat": {"id": from, "type": "private", "first_name": first_name},
            "from": user,
            "text": text,
        });
        if text.starts_with('/') {
            let len = text
                .split_whitespace()
                .next()
                .map_or(0, |c| c.encode_utf16().count());
            message["entities"] = json!([{"type": "bot_command", "offset": 0, "length": len}]);
        }
        g.pending.push(json!({"update_id": id, "message": message}));
        drop(g);
        self.changed.notify_waiters();
        id
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Sent> {
        self.lock().calls.clone()
    }

    /// Calls from position `since` on.
    pub fn calls_since(&self, since: usize) -> Vec<Sent> {
        self.lock()
            .calls
            .get(since..)
            .map(<[Sent]>::to_vec)
            .unwrap_or_default()
    }

    /// Blocks until a call at position `since` or later satisfies `pred`.
    pub fn wait_call(
        &self,
        since: usize,
        timeout: Duration,
        pred: impl Fn(&Sent) -> bool,
    ) -> Option<Sent> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(c) = self.calls_since(since).into_iter().find(|c| pred(c)) {
                return Some(c);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The same, for async callers (the control socket's long poll).
    pub async fn wait_call_async(
        &self,
        since: usize,
        timeout: Duration,
        pred: impl Fn(&Sent) -> bool,
    ) -> Vec<Sent> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let found: Vec<Sent> = self
                .calls_since(since)
                .into_iter()
                .filter(|c| pred(c))
                .collect();
            if !found.is_empty() {
                return found;
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return Vec::new();
            }
        }
    }

    /// Milliseconds since the stand-in started (the clock of `Sent::at_ms`).
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Switches the API down (or back up with None).
    pub fn set_down(&self, down: Option<Down>) {
        self.down.send_replace(down);
    }

    pub fn is_down(&self) -> Option<Down> {
        *self.down.borrow()
    }

    /// How many CONNECT tunnels were opened.
    pub fn tunnels(&self) -> u64 {
        self.lock().tunnels
    }

    fn record(&self, method: &str, params: Value) {
        let mut g = self.lock();
        let seq = g.calls.len();
        g.calls.push(Sent {
            seq,
            method: method.to_string(),
            params,
            at_ms: self.elapsed_ms(),
        });
        drop(g);
        self.changed.notify_waiters();
    }

    fn bot_user(&self) -> Value {
        json!({
            "id": self.bot.id, "is_bot": true, "first_name": self.bot.first_name,
            "username": self.bot.username, "can_join_groups": true,
            "can_read_all_group_messages": false, "supports_inline_queries": false,
            "can_connect_to_business": false, "has_main_web_app": false,
        })
    }

    /// One Bot API request (already out of the tunnel).
    async fn answer(self: Arc<Self>, req: Request) -> Resp {
        let path = req.path_only().to_string();
        let Some((token, method)) = path
            .strip_prefix("/bot")
            .and_then(|rest| rest.split_once('/'))
        else {
            return http::json(
                StatusCode::NOT_FOUND,
                &json!({"ok": false, "error_code": 404, "description": "Not Found"}),
            );
        };
        let method = method.to_string();
        let params = params_of(&req);
        let expected = self.lock().expected_token.clone();
        if expected.is_some_and(|t| t != token) {
            self.record("(unauthorized)", json!({"method": method}));
            return http::json(
                StatusCode::UNAUTHORIZED,
                &json!({"ok": false, "error_code": 401, "description": "Unauthorized"}),
            );
        }
        if method == "getUpdates" {
            // Long polls are not recorded one by one (there are many); the
            // updates they hand out are what matters.
            let result = self.get_updates(&params).await;
            return ok(result);
        }
        self.record(&method, params.clone());
        let result = match method.as_str() {
            "getMe" => self.bot_user(),
            "getWebhookInfo" => {
                json!({"url": "", "has_custom_certificate": false, "pending_update_count": self.lock().pending.len()})
            }
            "getMyCommands" => json!([]),
            "getChat" => {
                json!({"id": params["chat_id"], "type": "private", "first_name": "Human"})
            }
            "sendMessage" | "editMessageText" | "sendPhoto" | "sendDocument" | "sendVoice"
            | "sendAudio" | "sendVideo" | "sendSticker" => self.message_result(&params),
            _ => json!(true),
        };
        ok(result)
    }

    fn message_result(&self, params: &Value) -> Value {
        let mut g = self.lock();
        let id = params["message_id"].as_i64().unwrap_or_else(|| {
            let id = g.next_message_id;
            g.next_message_id += 1;
            id
        });
        drop(g);
        let chat = &params["chat_id"];
        let chat_id = chat
            .as_i64()
            .or_else(|| chat.as_str()?.parse().ok())
            .unwrap_or(0);
        let mut m = json!({
            "message_id": id, "date": unix_now(),
            "chat": {"id": chat_id, "type": "private", "first_name": "Human"},
            "from": self.bot_user(),
        });
        for k in ["text", "caption"] {
            if let Some(t) = params[k].as_str() {
                m[k] = json!(t);
            }
        }
        m
    }

    async fn get_updates(&self, params: &Value) -> Value {
        let num = |k: &str| {
            let v = &params[k];
            v.as_i64().or_else(|| v.as_str()?.parse().ok())
        };
        let offset = num("offset").unwrap_or(0);
        let limit = num("limit").unwrap_or(100).clamp(1, 100) as usize;
        let wait = Duration::from_secs(num("timeout").unwrap_or(0).max(0) as u64).min(MAX_POLL);
        let end = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut g = self.lock();
                // An offset confirms every update before it, as in the real API.
                g.pending
                    .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
                if !g.pending.is_empty() {
                    return Value::Array(g.pending.iter().take(limit).cloned().collect());
                }
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return json!([]);
            }
        }
    }
}

fn ok(result: Value) -> Resp {
    http::json(StatusCode::OK, &json!({"ok": true, "result": result}))
}

/// The call's parameters: the query string, then a JSON or form body.
fn params_of(req: &Request) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in req.query() {
        out.insert(k, json_or_string(&v));
    }
    let ctype = req
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.starts_with("application/json") {
        if let Value::Object(m) = req.json() {
            out.extend(m);
        }
    } else if ctype.starts_with("application/x-www-form-urlencoded") {
        for (k, v) in form_urlencoded::parse(&req.body) {
            out.insert(k.into_owned(), json_or_string(&v));
        }
    } else if !req.body.is_empty() {
        out.insert("_body_type".into(), json!(ctype));
    }
    Value::Object(out)
}

/// Form values that hold JSON (reply_markup, numbers) as JSON.
fn json_or_string(v: &str) -> Value {
    serde_json::from_str(v).unwrap_or_else(|_| json!(v))
}

/// The proxy: plain TCP on 127.0.0.1, CONNECT to api.telegram.org:443 only.
pub struct Proxy {
    tg: Arc<Telegram>,
    tls: tokio_rustls::TlsAcceptor,
    listener: Option<TcpListener>,
    port: u16,
}

impl Proxy {
    pub async fn bind(tg: Arc<Telegram>, tls: Arc<rustls::ServerConfig>) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        Ok(Proxy {
            tg,
            tls: tokio_rustls::TlsAcceptor::from(tls),
            listener: Some(listener),
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run(mut self) {
        let mut down = self.tg.down.subscribe();
        loop {
            let state = *down.borrow_and_update();
            if state == Some(Down::Refused) {
                // Nothing listens: the gateway's connects are refused.
                self.listener = None;
                let _ = down.changed().await;
                continue;
            }
            let listener = match &self.listener {
                Some(l) => l,
                None => match TcpListener::bind(("127.0.0.1", self.port)).await {
                    Ok(l) => self.listener.insert(l),
                    Err(_) => {
                        // The port is briefly unavailable after the close.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    if state == Some(Down::Reset) {
                        let _ = stream.set_zero_linger();
                        drop(stream);
                        continue;
                    }
                    tokio::spawn(tunnel(self.tg.clone(), self.tls.clone(), stream));
                }
                _ = down.changed() => {}
            }
        }
    }
}

/// One CONNECT tunnel: the proxy's answer, TLS, then the Bot API, until the
/// peer closes or the API goes down.
async fn tunnel(tg: Arc<Telegram>, tls: tokio_rustls::TlsAcceptor, mut stream: TcpStream) {
    let mut down = tg.down.subscribe();
    let Some(target) = read_connect(&mut stream).await else {
        return;
    };
    if target != format!("{HOST}:443") {
        // This proxy reaches one host; anything else stays on the machine.
        tg.record("(connect refused)", json!({"target": target}));
        let _ = stream
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    if stream
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    tg.lock().tunnels += 1;
    let Ok(tls_stream) = tls.accept(stream).await else {
        return;
    };
    let handler = {
        let tg = tg.clone();
        move |req: Request| tg.clone().answer(req)
    };
    tokio::select! {
        _ = http::serve(tls_stream, handler) => {}
        _ = down.wait_for(|d| d.is_some()) => {}
    }
}

/// Reads the proxy request's head; returns the CONNECT target.
async fn read_connect(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut first = text.lines().next()?.split_whitespace();
    if first.next()? != "CONNECT" {
        let _ = stream
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await;
        return None;
    }
    first.next().map(str::to_string)
}
