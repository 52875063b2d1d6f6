//! Where `file-logger` and `http-logger` entries go (the plugins' confs are `crate::plugins::loggers`):
//! the log entry of a request is formatted in Rust when its response ends (the access log's
//! `LogFormat`), never by Python.
//!
//! - `file-logger`: lines go to a writer thread per distinct path (the access log's machinery:
//!   batched, bounded, reopened on SIGUSR1).
//! - `http-logger`: entries go to a bounded per-worker queue that the worker's sender thread
//!   (`pygateway/http_logger.py`) drains, batches and POSTs. An entry counts as pending from its
//!   push until the sender reports its batch delivered or given up; when `max_pending_entries` are
//!   pending, new entries are dropped and counted instead of queued without bound.
use crate::observe::accesslog::{AccessLog, Capture, Done, LogFormat, Sink};
use crate::observe::waitq::WaitQueue;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The loggers a route has (its own conf or a global rule's).
pub struct RouteLoggers {
    pub file: Option<FileLogger>,
    pub http: Option<HttpLogger>,
}

pub struct FileLogger {
    pub format: LogFormat,
    pub path: Arc<str>,
}

pub struct HttpLogger {
    pub format: LogFormat,
    /// The plugin conf without `log_format` as JSON: tells the sender where and how to send.
    pub target: Arc<str>,
    pub max_pending: usize,
}

/// Default `max_pending_entries` (APISIX's batch processor default).
pub const MAX_PENDING: usize = 8192;

/// What a request with loggers carries until its response ends.
pub struct LogCapture {
    pub loggers: Arc<RouteLoggers>,
    file: Option<Capture>,
    http: Option<Capture>,
}

impl LogCapture {
    pub fn new<B>(
        loggers: &Arc<RouteLoggers>,
        req: &http::Request<B>,
        peer: std::net::SocketAddr,
    ) -> Box<LogCapture> {
        Box::new(LogCapture {
            file: loggers
                .file
                .as_ref()
                .map(|f| Capture::new(&f.format, req, peer)),
            http: loggers
                .http
                .as_ref()
                .map(|h| Capture::new(&h.format, req, peer)),
            loggers: loggers.clone(),
        })
    }
}

/// Dropped entries, by cause, for the worker's metrics.
#[derive(Default)]
pub struct Dropped {
    pub file: u64,
    pub http: u64,
}

/// A worker's logger sinks (I/O thread only, except the queue the sender thread drains).
#[derive(Default)]
pub struct LoggerSinks {
    /// file-logger writers by path; None when the file could not be opened (retried on SIGUSR1).
    files: RefCell<HashMap<Arc<str>, Option<AccessLog>>>,
    pub http: Arc<HttpLogQueue>,
}

impl LoggerSinks {
    /// Format and hand off the request's entries.
    pub fn log(&self, lc: &LogCapture, d: &Done<'_>) -> Dropped {
        let mut dropped = Dropped::default();
        if let (Some(f), Some(c)) = (&lc.loggers.file, &lc.file) {
            let mut files = self.files.borrow_mut();
            let w = files.entry(f.path.clone()).or_insert_with(|| {
                // The format given here is unused: file-logger lines use the route's (`log_with`).
                AccessLog::open(f.format.clone(), Sink::File((*f.path).into()))
                    .map_err(|e| eprintln!("pygateway: file-logger: cannot open {}: {e}", f.path))
                    .ok()
            });
            match w {
                Some(w) => dropped.file += w.log_with(&f.format, c, d),
                None => dropped.file += 1,
            }
        }
        if let (Some(h), Some(c)) = (&lc.loggers.http, &lc.http) {
            let mut line = Vec::with_capacity(512);
            h.format.write(&mut line, c, d);
            line.pop(); // the newline: the sender joins entries itself
            if !self.http.push(&h.target, line, h.max_pending) {
                dropped.http += 1;
            }
        }
        dropped
    }

    /// Hand buffered file lines to their writers; returns lines dropped.
    pub fn flush(&self) -> u64 {
        self.files
            .borrow()
            .values()
            .flatten()
            .map(AccessLog::flush)
            .sum()
    }

    /// SIGUSR1: reopen every file (and retry the ones that failed to open).
    pub fn reopen(&self) {
        let mut files = self.files.borrow_mut();
        files.retain(|_, w| w.is_some());
        for w in files.values().flatten() {
            w.reopen();
        }
    }
}

/// http-logger entries waiting for the sender thread: `(target, JSON entry)`.
#[derive(Default)]
pub struct HttpLogQueue {
    q: WaitQueue<(Arc<str>, Vec<u8>)>,
    /// Entries pushed and not yet reported done (delivered or given up) by the sender.
    pending: AtomicUsize,
    /// Entries the sender gave up on, not yet moved into the metrics (by the I/O thread).
    failed: AtomicU64,
}

impl HttpLogQueue {
    /// Queue one entry unless `max_pending` are pending; false = dropped.
    pub fn push(&self, target: &Arc<str>, entry: Vec<u8>, max_pending: usize) -> bool {
        if self.pending.load(Ordering::Relaxed) >= max_pending {
            return false;
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.q.push_with(|q| q.push_back((target.clone(), entry)));
        true
    }

    /// Block until an entry is queued or `timeout` passes; true = entries are waiting.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.q.wait(timeout)
    }

    /// Up to `max` entries, grouped by target in order of first appearance.
    pub fn drain(&self, max: usize) -> Vec<(Arc<str>, Vec<Vec<u8>>)> {
        let taken = self.q.drain(max);
        let mut out: Vec<(Arc<str>, Vec<Vec<u8>>)> = Vec::new();
        for (t, e) in taken {
            match out
                .iter_mut()
                .find(|(k, _)| Arc::ptr_eq(k, &t) || **k == *t)
            {
                Some((_, v)) => v.push(e),
                None => out.push((t, vec![e])),
            }
        }
        out
    }

    /// The sender finished with `n` entries, `failed` of them given up after retries.
    pub fn done(&self, n: usize, failed: u64) {
        // Failures first: whoever sees the entries no longer pending (`pending`, Acquire) also
        // sees them counted.
        self.failed.fetch_add(failed, Ordering::Relaxed);
        let _ = self
            .pending
            .fetch_update(Ordering::Release, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(n))
            });
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Failures since the last call (the I/O thread moves them into its metrics slab).
    pub fn take_failed(&self) -> u64 {
        self.failed.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_bounded_by_pending_entries() {
        let q = HttpLogQueue::default();
        let t: Arc<str> = Arc::from("t");
        assert!(q.push(&t, b"1".to_vec(), 2));
        assert!(q.push(&t, b"2".to_vec(), 2));
        assert!(!q.push(&t, b"3".to_vec(), 2));
        let d = q.drain(10);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1.len(), 2);
        // Drained but not done: still pending.
        assert!(!q.push(&t, b"4".to_vec(), 2));
        q.done(2, 1);
        assert!(q.push(&t, b"5".to_vec(), 2));
        assert_eq!(q.take_failed(), 1);
        assert_eq!(q.take_failed(), 0);
    }
}
