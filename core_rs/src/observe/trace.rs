//! W3C trace context and spans: what a traced request carries (`TraceCtx`, started by the
//! `opentelemetry` plugin), the `traceparent` the upstream gets, and the queue of finished spans.
//! The queue is drained about once a second by the worker's exporter thread (OTLP/HTTP), never per
//! request; when it is full, spans are dropped and counted.
use crate::observe::waitq::WaitQueue;
use http::HeaderName;
use std::sync::Arc;
use std::time::Duration;

/// The W3C trace context header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

fn hex_to<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// The caller's context from `traceparent`: (trace id, parent span id, sampled).
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut p = v.trim().split('-');
    let (ver, trace, parent, flags) = (p.next()?, p.next()?, p.next()?, p.next()?);
    if ver.len() != 2 || ver == "ff" {
        return None;
    }
    let trace: [u8; 16] = hex_to(trace)?;
    let parent: [u8; 8] = hex_to(parent)?;
    let flags: [u8; 1] = hex_to(flags)?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags[0] & 1 == 1))
}

/// One request's trace context: the gateway's server span and its client span to the upstream.
pub struct TraceCtx {
    pub trace: [u8; 16],
    pub parent: Option<[u8; 8]>,
    pub server_span: [u8; 8],
    pub client_span: [u8; 8],
    pub sampled: bool,
    pub start_unix_ns: u64,
}

pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl TraceCtx {
    /// The `traceparent` the upstream gets: our client span is its parent.
    pub fn upstream_header(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex(&self.trace),
            hex(&self.client_span),
            if self.sampled { "01" } else { "00" }
        )
    }
}

pub const KIND_SERVER: u8 = 2;
pub const KIND_CLIENT: u8 = 3;

/// A finished span, ready for the exporter.
pub struct Span {
    pub trace: [u8; 16],
    pub span: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub kind: u8,
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// OTLP status: 0 unset, 2 error (5xx).
    pub error: bool,
    pub attrs: Vec<(&'static str, String)>,
}

/// Finished spans waiting for the exporter; bounded.
#[derive(Default)]
pub struct SpanQueue {
    q: WaitQueue<Span>,
}

pub const MAX_QUEUED: usize = 8192;

impl SpanQueue {
    /// Queue spans; returns how many were dropped because the queue is full.
    pub fn push(&self, spans: impl IntoIterator<Item = Span>) -> u64 {
        self.q.push_with(|q| {
            let mut dropped = 0;
            for s in spans {
                if q.len() >= MAX_QUEUED {
                    dropped += 1;
                } else {
                    q.push_back(s);
                }
            }
            dropped
        })
    }

    pub fn drain(&self, max: usize) -> Vec<Span> {
        self.q.drain(max)
    }

    /// Block until a span is queued or `timeout` passes; true = spans are waiting.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.q.wait(timeout)
    }
}

pub type SharedQueue = Arc<SpanQueue>;
