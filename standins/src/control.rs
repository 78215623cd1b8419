//! The control API of the `standins` binary: HTTP on a Unix socket (a path
//! is reachable from any network namespace, so `scripts/talk` outside the
//! Buddy's loopback-only namespace can still drive the stand-ins in it), and
//! its client.
//!
//! - `POST /telegram/messages` `{"from": ID, "name": "Roel", "text": "…"}` → `{"update_id", "since"}`
//! - `GET /telegram/calls?since=N&method=sendMessage&chat=ID&wait=S` → the calls from N on (long poll)
//! - `POST /telegram/down` `{"mode": "refused" | "reset"}`, `POST /telegram/up`
//! - `POST /gemini/script` `[Step, …]`, `GET /gemini/seen?since=N`

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{UnixListener, UnixStream};

use crate::http::{self, Request, Resp};
use crate::{Down, Gemini, Step, Telegram};

/// Binds the control socket (replacing a stale one) and returns its server.
pub fn bind(
    path: &Path,
    tg: Arc<Telegram>,
    gm: Arc<Gemini>,
) -> anyhow::Result<impl std::future::Future<Output = ()> + use<>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    Ok(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (tg, gm) = (tg.clone(), gm.clone());
            tokio::spawn(http::serve(stream, move |req: Request| {
                let (tg, gm) = (tg.clone(), gm.clone());
                async move { answer(&tg, &gm, req).await }
            }));
        }
    })
}

fn bad(msg: &str) -> Resp {
    http::json(StatusCode::BAD_REQUEST, &json!({"error": msg}))
}

async fn answer(tg: &Telegram, gm: &Gemini, req: Request) -> Resp {
    let q: std::collections::HashMap<String, String> = req.query().into_iter().collect();
    let num = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
    let body = req.json();
    match (req.method.as_str(), req.path_only()) {
        ("POST", "/telegram/messages") => {
            let (Some(from), Some(text)) = (body["from"].as_i64(), body["text"].as_str()) else {
                return bad("want {\"from\": <telegram user id>, \"text\": \"…\"}");
            };
            let since = tg.calls().len();
            let name = body["name"].as_str().unwrap_or("Human");
            let id = tg.post_message(from, name, text);
            http::json(StatusCode::OK, &json!({"update_id": id, "since": since}))
        }
        ("GET", "/telegram/calls") => {
            let since = num("since").unwrap_or(0).max(0) as usize;
            let wait = Duration::from_secs(num("wait").unwrap_or(0).clamp(0, 600) as u64);
            let method = q.get("method").cloned();
            let chat = num("chat");
            let calls = tg
                .wait_call_async(since, wait, |c| {
                    method.as_ref().is_none_or(|m| &c.method == m)
                        && chat.is_none_or(|id| c.chat_id() == Some(id))
                })
                .await;
            http::json(
                StatusCode::OK,
                &serde_json::to_value(calls).unwrap_or_default(),
            )
        }
        ("POST", "/telegram/down") => {
            let mode = match body["mode"].as_str().unwrap_or("refused") {
                "refused" => Down::Refused,
                "reset" => Down::Reset,
                _ => return bad("mode is \"refused\" or \"reset\""),
            };
            tg.set_down(Some(mode));
            http::json(StatusCode::OK, &json!({"down": mode}))
        }
        ("POST", "/telegram/up") => {
            tg.set_down(None);
            http::json(StatusCode::OK, &json!({"down": null}))
        }
        ("POST", "/gemini/script") => match serde_json::from_value::<Vec<Step>>(body) {
            Ok(steps) => {
                gm.script(steps);
                http::json(StatusCode::OK, &json!({"remaining": gm.remaining()}))
            }
            Err(e) => bad(&format!("a JSON array of steps: {e}")),
        },
        ("GET", "/gemini/seen") => {
            let since = num("since").unwrap_or(0).max(0) as usize;
            let seen: Vec<_> = gm.seen().into_iter().skip(since).collect();
            http::json(
                StatusCode::OK,
                &serde_json::to_value(seen).unwrap_or_default(),
            )
        }
        _ => http::json(
            StatusCode::NOT_FOUND,
            &json!({"error": "no such control call"}),
        ),
    }
}

/// One control call: `method path` with an optional JSON body; the JSON answer.
pub fn call(sock: &Path, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stream = UnixStream::connect(sock).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the stand-ins at {}: {e} (is `scripts/run-local BUDDY --offline` running?)",
                sock.display()
            )
        })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let data = body.map(Value::to_string).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "standins")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(data)))?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("{method} {path}: {status} {v}");
        }
        Ok(v)
    })
}
