//! The HTTP plumbing the stand-ins share: hyper's HTTP/1.1 server on any
//! stream (a TCP connection, a TLS tunnel, a Unix socket), whole bodies, and
//! JSON / server-sent-event answers.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::{HeaderValue, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

pub type Resp = hyper::Response<Full<Bytes>>;

/// A request, read whole: method, path with query, headers, body.
pub struct Request {
    pub method: hyper::Method,
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Request {
    pub fn query(&self) -> Vec<(String, String)> {
        self.path
            .split_once('?')
            .map(|(_, q)| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default()
    }

    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Serves HTTP/1.1 (keep-alive) on `io` until the peer closes, answering
/// each whole request with `handle`.
pub async fn serve<IO, F, Fut>(io: IO, handle: F)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Resp> + Send,
{
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        let handle = handle.clone();
        async move {
            let (parts, body) = req.into_parts();
            // A body cut off mid-way is answered as an empty one: the
            // client is gone anyway.
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let path = parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
            Ok::<_, Infallible>(
                handle(Request {
                    method: parts.method,
                    path,
                    headers: parts.headers,
                    body,
                })
                .await,
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// A plain-HTTP listener on 127.0.0.1 whose every request is answered by
/// one function (the Gemini API, the Fly Machines API).
pub struct Server {
    listener: tokio::net::TcpListener,
    answer: std::sync::Arc<dyn Fn(Request) -> Resp + Send + Sync>,
}

impl Server {
    pub async fn bind(
        answer: impl Fn(Request) -> Resp + Send + Sync + 'static,
    ) -> anyhow::Result<Server> {
        Ok(Server {
            listener: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            answer: std::sync::Arc::new(answer),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |a| a.port())
    }

    /// Serves every connection until the process exits.
    pub async fn run(self) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let answer = self.answer.clone();
            tokio::spawn(serve(stream, move |req: Request| {
                let answer = answer.clone();
                async move { answer(req) }
            }));
        }
    }
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = hyper::Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Server-sent events, one `data:` line per chunk (what
/// `streamGenerateContent?alt=sse` answers).
pub fn sse(chunks: &[serde_json::Value]) -> Resp {
    let mut text = String::new();
    for c in chunks {
        text.push_str("data: ");
        text.push_str(&c.to_string());
        text.push_str("\r\n\r\n");
    }
    let mut r = hyper::Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}
