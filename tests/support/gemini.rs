//! A loopback-only network namespace, and a minimal recording stand-in for
//! the Gemini API inside it: enough for one agent turn of the real gateway
//! (`streamGenerateContent?alt=sse` answered with one text chunk,
//! `embedContent` with a fixed vector), recording every request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A network namespace with only `lo` (up), held by a sleeping process.
pub struct NetNs {
    holder: Child,
}

impl NetNs {
    pub fn new() -> NetNs {
        let holder = Command::new("unshare")
            .args([
                "--net",
                "/bin/sh",
                "-c",
                "ip link set lo up && echo up && exec sleep 100000",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare --net");
        let mut ns = NetNs { holder };
        let mut line = String::new();
        BufReader::new(ns.holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "up", "lo did not come up");
        ns
    }

    /// `/proc/PID/ns/net`, for nsenter and setns.
    pub fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// One request the stand-in saw: the path (with query) and the JSON body.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub body: serde_json::Value,
}

pub struct FakeGemini {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeGemini {
    /// Listens on 127.0.0.1 inside `ns` (the listening thread joins the
    /// namespace; its socket stays there) and answers every generate call
    /// with `reply`.
    pub fn start_in(ns: &NetNs, reply: &str) -> FakeGemini {
        let nsfile = std::fs::File::open(ns.path()).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let reply = reply.to_string();
        let log = seen.clone();
        std::thread::spawn(move || {
            // setns applies to this thread only: the test's other threads
            // stay in the host namespace.
            nix::sched::setns(nsfile.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(l.local_addr().unwrap().port()).unwrap();
            for conn in l.incoming().flatten() {
                let _ = serve(conn, &reply, &log);
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        FakeGemini { port, seen }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1beta", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    mut conn: std::net::TcpStream,
    reply: &str,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    loop {
        let mut request = String::new();
        if r.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        log.lock().unwrap().push(Seen {
            path: path.clone(),
            body,
        });
        let (ctype, payload) = if path.contains(":streamGenerateContent") {
            let chunk = serde_json::json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": reply}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 5, "totalTokenCount": 105}
            });
            ("text/event-stream", format!("data: {chunk}\r\n\r\n"))
        } else if path.contains(":embedContent") {
            let v: Vec<f64> = (0..8).map(|i| f64::from(i) / 8.0).collect();
            (
                "application/json",
                serde_json::json!({"embedding": {"values": v}}).to_string(),
            )
        } else if path.contains(":batchEmbedContents") {
            let v: Vec<f64> = (0..8).map(|i| f64::from(i) / 8.0).collect();
            (
                "application/json",
                serde_json::json!({"embeddings": [{"values": v}]}).to_string(),
            )
        } else {
            ("application/json", "{}".to_string())
        };
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        )?;
        conn.flush()?;
    }
}
