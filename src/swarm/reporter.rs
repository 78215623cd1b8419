//! The supervisor's own registry writes (its entry at boot, its gateway's
//! health since), on a thread of their own.
//!
//! The registry's lock is a file every gateway can open and `flock`, and
//! the share itself can stall for tens of seconds (a metadata server that
//! went away). The loop that reaps and handles signals must never wait on
//! either, so it hands each change here and goes on; this thread takes the
//! lock with a deadline, applies every change it holds in order, commits,
//! and when that fails keeps them and tries again later (1 s doubling to a
//! minute), each failure logged. A change is a function of the registry as
//! read under the lock, so applying it again after a failure is safe.
//!
//! The thread makes no child and waits on none: the one reaper stays the
//! loop's.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::registry::{self, Registry};

/// A change to the registry; Ok is what to log once it is committed (None:
/// nothing to say, or nothing changed).
pub type Change = Box<dyn FnMut(&mut Registry) -> Result<Option<Done>, String> + Send>;

/// What a committed change says in the log.
pub struct Done {
    pub message: &'static str,
    pub fields: Vec<(&'static str, String)>,
}

/// The first wait after a failed write, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

enum Msg {
    /// The bool: replaces a pending change of the same name.
    Change(&'static str, Change, Instant, bool),
    /// Try what is pending now, then say so.
    Flush(Sender<()>),
}

/// The sending side, owned by the boot.
pub struct Reporter {
    tx: Sender<Msg>,
}

impl Reporter {
    /// Starts the writer thread for the registry in `book`.
    pub fn start(book: PathBuf) -> std::io::Result<Reporter> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("registry".into())
            .stack_size(256 * 1024)
            .spawn(move || run(book, rx))?;
        Ok(Reporter { tx })
    }

    /// Queues `change` (named `what` in the log); never blocks.
    pub fn send(&self, what: &'static str, change: Change) {
        let _ = self
            .tx
            .send(Msg::Change(what, change, Instant::now(), false));
    }

    /// Like [`Reporter::send`], for a change only whose latest matters (a
    /// heartbeat): one still pending from before is dropped, so a share
    /// that is away for hours does not pile them up.
    pub fn send_latest(&self, what: &'static str, change: Change) {
        let _ = self
            .tx
            .send(Msg::Change(what, change, Instant::now(), true));
    }

    /// Before the supervisor exits: what is still pending is tried once
    /// more, waiting at most `wait` (a short run's entry is written; a
    /// share that hangs does not hold the exit).
    pub fn flush(&self, wait: Duration) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(wait);
        }
    }
}

type Pending = (&'static str, Change, Instant);

fn run(book: PathBuf, rx: Receiver<Msg>) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut backoff = RETRY_FIRST;
    let mut retry_at: Option<Instant> = None;
    loop {
        let next = match retry_at {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
        };
        let mut acks = Vec::new();
        for m in std::iter::once(next).chain(rx.try_iter().map(Ok)) {
            match m {
                Ok(Msg::Change(w, c, t, latest)) => {
                    if latest {
                        pending.retain(|(p, _, _)| *p != w);
                    }
                    pending.push((w, c, t))
                }
                Ok(Msg::Flush(ack)) => acks.push(ack),
                Err(RecvTimeoutError::Timeout) => {}
                // The supervisor is exiting.
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let now = acks.is_empty() && retry_at.is_some_and(|t| Instant::now() < t);
        if pending.is_empty() || now {
            for a in acks {
                let _ = a.send(());
            }
            continue;
        }
        let result = apply(&book, &mut pending);
        for a in acks {
            let _ = a.send(());
        }
        match result {
            Ok(()) => {
                pending.clear();
                retry_at = None;
                backoff = RETRY_FIRST;
            }
            Err(e) => {
                crate::health::metrics::metrics()
                    .registry_write_failures
                    .inc();
                warn!(
                    error = %e,
                    changes = pending.len(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "registry: cannot write this supervisor's entry; kept, retried later"
                );
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Applies every pending change under one lock and commits them together.
fn apply(book: &std::path::Path, pending: &mut [Pending]) -> Result<(), String> {
    let mut l = registry::lock(book).map_err(|e| e.to_string())?;
    let before = l.registry.clone();
    let mut done = Vec::new();
    for (what, change, queued) in pending.iter_mut() {
        match change(&mut l.registry) {
            Ok(d) => done.push((*what, d, *queued)),
            // Not applicable (its entry is gone): said, and dropped.
            Err(why) => warn!(change = *what, "registry: {why}"),
        }
    }
    if l.registry != before {
        l.commit().map_err(|e| e.to_string())?;
    }
    drop(l);
    for (what, d, queued) in done {
        let ms = (queued.elapsed().as_secs_f64() * 100_000.0).round() / 100.0;
        if let Some(d) = d {
            let fields: Vec<String> = d.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            info!(change = what, ms, "{} {}", d.message, fields.join(" "));
        }
        if what == "register" {
            // The boot's last step ends here, off the loop (see boot.rs).
            info!(step = what, ms, "boot step done");
        }
    }
    Ok(())
}
