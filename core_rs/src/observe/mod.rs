//! What a finished request leaves behind: its metrics sample and its access log line, both made in
//! Rust when the response body is done (or dropped), never by Python.
pub mod accesslog;
pub mod loggers;
pub mod metrics;
pub mod trace;
pub mod waitq;
use crate::observe::accesslog::{AccessLog, Capture, Done};
use crate::observe::metrics::shm::{
    G_CONN_ACCEPTED, G_CONN_ACTIVE, G_CONN_HANDLED, G_FILE_LOG_DROPPED, G_HTTP_LOG_DROPPED,
    G_HTTP_LOG_FAILED, G_LOG_DROPPED, G_SPANS_DROPPED,
};
use crate::observe::metrics::{HttpSample, Recorder};
use loggers::{LogCapture, LoggerSinks, RouteLoggers};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use trace::{Span, SpanQueue, TraceCtx};

/// A worker's observability sinks.
pub struct Observer {
    pub rec: Recorder,
    pub log: Option<AccessLog>,
    pub spans: Arc<SpanQueue>,
    /// `file-logger` writers and the `http-logger` queue.
    pub loggers: LoggerSinks,
    pub plugin_times: Option<PluginTimesPull>,
    pub housekeeping: Housekeeping,
}

/// The housekeeping task (log flushes, plugin timings; `server::log_housekeeping`) ticks while the
/// worker works and sleeps while it is idle: an idle worker has no timer waking it.
#[derive(Default)]
pub struct Housekeeping {
    /// A request began or a log line was buffered since the last tick.
    active: Cell<bool>,
    sleeping: Cell<bool>,
    wake: tokio::sync::Notify,
}

impl Housekeeping {
    /// Work for the housekeeping task is coming (a request began, a log line was written).
    #[inline]
    pub fn note(&self) {
        self.active.set(true);
        if self.sleeping.get() {
            self.sleeping.set(false);
            self.wake.notify_one();
        }
    }

    /// Nothing was noted since the last call.
    pub fn quiet(&self) -> bool {
        !self.active.replace(false)
    }

    /// Until the next `note`.
    pub async fn sleep(&self) {
        self.sleeping.set(true);
        self.wake.notified().await;
    }
}

/// Pulls the Python plugin timings gathered since the last call into the recorder (set by `py/`).
pub type PluginTimesPull = Box<dyn Fn(&Recorder) + Send>;

impl Observer {
    /// Record the Python plugin timings sampled since the last pull (the housekeeping task calls
    /// this once a second while busy and when going idle, on the I/O thread, the slab's only
    /// writer).
    pub fn pull_plugin_times(&self) {
        if let Some(pull) = self.plugin_times.as_ref() {
            pull(&self.rec);
        }
    }

    pub fn conn_opened(&self) {
        self.rec.bump(G_CONN_ACCEPTED, 1);
        self.rec.bump(G_CONN_HANDLED, 1);
        self.rec.bump(G_CONN_ACTIVE, 1);
    }
    pub fn conn_closed(&self) {
        self.rec.bump(G_CONN_ACTIVE, -1);
    }
    /// Hand buffered log lines to the writer (the periodic flush and shutdown call this).
    pub fn flush_log(&self) {
        if let Some(log) = &self.log {
            let dropped = log.flush();
            if dropped > 0 {
                self.rec.bump(G_LOG_DROPPED, dropped as i64);
            }
        }
        let dropped = self.loggers.flush();
        if dropped > 0 {
            self.rec.bump(G_FILE_LOG_DROPPED, dropped as i64);
        }
        let failed = self.loggers.http.take_failed();
        if failed > 0 {
            self.rec.bump(G_HTTP_LOG_FAILED, failed as i64);
        }
    }
}

/// What metrics and logs say about a route (APISIX's prometheus labels).
pub struct RouteObs {
    pub id: Arc<str>,
    /// `route` label: the id, or the name with `prometheus.prefer_name`.
    pub label: Arc<str>,
    pub name: String,
    pub service: String,
    pub matched_uri: String,
    pub matched_host: String,
    /// The `prometheus` plugin is on for this route.
    pub metrics: bool,
}

/// A route's upstream nodes as metrics and logs see them (the proxy's compiled upstream).
pub trait NodePool: Send + Sync {
    /// `name` label of upstream metrics.
    fn name(&self) -> &str;
    /// Node `i`'s host (an IPv6 literal without brackets) and port.
    fn addr(&self, i: usize) -> (&str, u16);
    /// Node `i`'s passive health last reported to metrics: 0 unknown, 1 reachable, 2 not.
    fn health(&self, i: usize) -> &std::sync::atomic::AtomicU8;
}

/// The upstream node a request went to.
pub enum NodeRef {
    Pool(Arc<dyn NodePool>, usize),
    /// Chosen by a plugin.
    Custom(String, u16),
}

impl NodeRef {
    fn addr(&self) -> (&str, u16) {
        match self {
            NodeRef::Pool(u, i) => u.addr(*i),
            NodeRef::Custom(h, p) => (h.as_str(), *p),
        }
    }
}

/// Filled in by the request path as it learns things.
#[derive(Default)]
pub struct Exchange {
    pub route: Option<Arc<RouteObs>>,
    /// Record metrics for this request (the route's `prometheus`, or a global one for a 404).
    pub metrics: bool,
    /// Metrics or a log will record this request: the request path fills in the consumer, the
    /// upstream node and timings (plain routes skip that work).
    pub observed: bool,
    /// Bytes of the request head (and declared body), for `$request_length` and ingress.
    pub ingress: u64,
    pub consumer: Option<String>,
    pub node: Option<NodeRef>,
    /// Nodes that refused a connection before the one that answered (passive health).
    pub failed: Vec<NodeRef>,
    pub upstream_us: Option<u64>,
    pub upstream_status: Option<u16>,
    pub trace_id: Option<String>,
    /// Trace context on routes with the `opentelemetry` plugin.
    pub trace: Option<TraceCtx>,
    /// Method and target of a sampled request (span attributes).
    pub span_target: Option<(http::Method, String)>,
    pub upstream_start_ns: u64,
    /// The client address `real-ip` found (the access log's `$remote_addr` prefers it to the peer).
    pub client_ip: Option<std::net::IpAddr>,
    /// Captured on routes with `file-logger` / `http-logger`.
    pub logs: Option<Box<LogCapture>>,
    /// When the request began, for its latency: read only for requests that are observed.
    pub started: Option<Instant>,
}

impl Exchange {
    /// Metrics or a log will record this request: note its head size and start time.
    pub fn begin<B>(&mut self, req: &http::Request<B>) {
        self.ingress = head_len(req);
        self.mark_start();
    }

    /// A request that matched no route: metrics with a global `prometheus`, a log line with the
    /// access log or a global logger.
    pub fn unmatched<B>(
        &mut self,
        metrics: bool,
        loggers: Option<&Arc<RouteLoggers>>,
        access_log: bool,
        req: &http::Request<B>,
        peer: SocketAddr,
    ) {
        self.metrics = metrics;
        self.observed = metrics || loggers.is_some() || access_log;
        if self.observed {
            self.begin(req);
        }
        if let Some(l) = loggers {
            self.capture_for_loggers(l, req, peer);
        }
    }

    /// The request matched a route: what its `prometheus`, loggers and `opentelemetry` (the trace
    /// context it started) will record.
    /// `client` is the client's address and whether `real-ip` found it.
    pub fn matched<B>(
        &mut self,
        obs: &Arc<RouteObs>,
        loggers: Option<&Arc<RouteLoggers>>,
        trace: Option<TraceCtx>,
        access_log: bool,
        req: &http::Request<B>,
        (client, real_ip): (SocketAddr, bool),
    ) {
        self.client_ip = real_ip.then_some(client.ip());
        self.metrics = obs.metrics;
        self.observed = obs.metrics || access_log || loggers.is_some();
        if self.observed {
            self.begin(req);
        }
        if let Some(l) = loggers {
            self.capture_for_loggers(l, req, client);
        }
        if let Some(t) = trace {
            self.trace_id = Some(trace::hex(&t.trace));
            if t.sampled {
                self.span_target = Some((req.method().clone(), req.uri().to_string()));
                self.mark_start();
            }
            self.trace = Some(t);
        }
        if self.observed || self.span_target.is_some() {
            self.route = Some(obs.clone());
        }
    }

    /// What `file-logger` / `http-logger` will log of this request, taken before it is consumed.
    fn capture_for_loggers<B>(
        &mut self,
        l: &Arc<RouteLoggers>,
        req: &http::Request<B>,
        client: SocketAddr,
    ) {
        self.logs = Some(LogCapture::new(l, req, client));
        if self.trace_id.is_none() {
            self.trace_id = trace_id(req);
        }
    }

    /// Metrics, a trace span or a logger will record this request when its response ends.
    pub fn records(&self) -> bool {
        self.metrics || self.span_target.is_some() || self.logs.is_some()
    }

    /// Its latency counts from now, unless an earlier start was noted.
    pub fn mark_start(&mut self) {
        self.started.get_or_insert_with(Instant::now);
    }
}

/// The trace id of a valid W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id<B>(req: &http::Request<B>) -> Option<String> {
    let v = req.headers().get(&trace::TRACEPARENT)?.to_str().ok()?;
    trace::parse_traceparent(v).map(|(t, _, _)| trace::hex(&t))
}

/// Bytes of a request head as received (request line + headers), for `$request_length`/ingress.
pub fn head_len<B>(req: &http::Request<B>) -> u64 {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let body = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    (line + headers + 2 + body) as u64
}

impl Meter {
    /// Rides with a response of `status` whose head is `head` bytes: records `ex` when the body ends.
    pub fn new(
        obs: &Rc<Observer>,
        ex: Exchange,
        status: u16,
        head: u64,
        capture: Option<Box<Capture>>,
    ) -> Meter {
        record_health(obs, &ex);
        let mut capture = capture;
        if let (Some(c), Some(ip)) = (capture.as_mut(), ex.client_ip) {
            c.peer.set_ip(ip);
        }
        Meter {
            obs: obs.clone(),
            ingress: ex.ingress,
            started: ex.started.unwrap_or_else(Instant::now),
            ex,
            status,
            head,
            body_bytes: 0,
            capture,
        }
    }
}

/// Report the nodes' passive health (written to metrics only when it changes).
pub fn record_health(obs: &Observer, ex: &Exchange) {
    let report = |n: &NodeRef, ok: bool| {
        if let NodeRef::Pool(u, i) = n {
            let want = if ok { 1 } else { 2 };
            // Written on change only: the common path is one relaxed load (no locked swap).
            let health = u.health(*i);
            if health.load(Ordering::Relaxed) != want
                && health.swap(want, Ordering::Relaxed) != want
            {
                let (host, port) = u.addr(*i);
                obs.rec.upstream_health(u.name(), host, port, ok);
            }
        }
    };
    for n in &ex.failed {
        report(n, false);
    }
    if let (Some(n), Some(_)) = (&ex.node, ex.upstream_status) {
        report(n, true);
    }
}

/// Rides along with a response body; records when the body is finished or dropped.
pub struct Meter {
    obs: Rc<Observer>,
    ex: Exchange,
    started: Instant,
    status: u16,
    head: u64,
    pub body_bytes: u64,
    ingress: u64,
    capture: Option<Box<Capture>>,
}

impl Drop for Meter {
    fn drop(&mut self) {
        let request_us = self.started.elapsed().as_micros() as u64;
        let ex = &self.ex;
        let (route, label, service, muri, mhost) = match &ex.route {
            Some(r) => (
                &*r.id,
                &*r.label,
                r.service.as_str(),
                r.matched_uri.as_str(),
                r.matched_host.as_str(),
            ),
            None => ("", "", "", "", ""),
        };
        let addr = ex.node.as_ref().map(NodeRef::addr);
        let consumer = ex.consumer.as_deref().unwrap_or("");
        if ex.metrics {
            self.obs.rec.http(&HttpSample {
                code: self.status,
                route: label,
                matched_uri: muri,
                matched_host: mhost,
                service,
                consumer,
                node: addr.map_or("", |a| a.0),
                ingress: self.ingress,
                egress: self.head + self.body_bytes,
                request_us,
                upstream_us: ex.upstream_us,
            });
        }
        if let (Some(t), Some((method, target))) = (&ex.trace, &ex.span_target) {
            let dropped = self.obs.spans.push(spans(
                t,
                method,
                target,
                self.status,
                ex,
                route,
                consumer,
                addr,
            ));
            if dropped > 0 {
                self.obs.rec.bump(G_SPANS_DROPPED, dropped as i64);
            }
        }
        if self.capture.is_none() && ex.logs.is_none() {
            return;
        }
        self.obs.housekeeping.note(); // lines to flush
        let done = Done {
            status: self.status,
            body_bytes: self.body_bytes,
            bytes_sent: self.head + self.body_bytes,
            request_length: self.ingress,
            request_us,
            upstream_addr: addr,
            upstream_status: ex.upstream_status,
            upstream_us: ex.upstream_us,
            route_id: route,
            service_id: service,
            consumer,
            trace_id: ex.trace_id.as_deref().unwrap_or(""),
        };
        if let (Some(log), Some(c)) = (&self.obs.log, &self.capture) {
            let dropped = log.log(c, &done);
            if dropped > 0 {
                self.obs.rec.bump(G_LOG_DROPPED, dropped as i64);
            }
        }
        if let Some(lc) = &ex.logs {
            let d = self.obs.loggers.log(lc, &done);
            if d.file > 0 {
                self.obs.rec.bump(G_FILE_LOG_DROPPED, d.file as i64);
            }
            if d.http > 0 {
                self.obs.rec.bump(G_HTTP_LOG_DROPPED, d.http as i64);
            }
        }
    }
}

/// The gateway's server span and, when the upstream was called, its client span.
#[allow(clippy::too_many_arguments)]
fn spans(
    t: &TraceCtx,
    method: &http::Method,
    target: &str,
    status: u16,
    ex: &Exchange,
    route: &str,
    consumer: &str,
    addr: Option<(&str, u16)>,
) -> Vec<Span> {
    let end = trace::unix_ns();
    let route_name = ex.route.as_ref().map_or("", |r| r.name.as_str());
    let mut attrs = vec![
        ("http.method", method.to_string()),
        ("http.target", target.to_string()),
        ("http.status_code", status.to_string()),
        ("apisix.route_id", route.to_string()),
        ("apisix.route_name", route_name.to_string()),
    ];
    if let Some(r) = &ex.route {
        if !r.service.is_empty() {
            attrs.push(("apisix.service_id", r.service.clone()));
        }
    }
    if !consumer.is_empty() {
        attrs.push(("apisix.consumer", consumer.to_string()));
    }
    let matched = ex.route.as_ref().map_or("", |r| r.matched_uri.as_str());
    let mut out = vec![Span {
        trace: t.trace,
        span: t.server_span,
        parent: t.parent,
        kind: trace::KIND_SERVER,
        name: format!("{method} {matched}"),
        start_ns: t.start_unix_ns,
        end_ns: end,
        error: status >= 500,
        attrs,
    }];
    if let (Some((host, port)), Some(us)) = (addr, ex.upstream_us) {
        let start = ex.upstream_start_ns;
        out.push(Span {
            trace: t.trace,
            span: t.client_span,
            parent: Some(t.server_span),
            kind: trace::KIND_CLIENT,
            name: format!("upstream {method}"),
            start_ns: start,
            end_ns: start + us * 1000,
            error: ex.upstream_status.is_none_or(|s| s >= 500),
            attrs: vec![
                ("net.peer.name", host.to_string()),
                ("net.peer.port", port.to_string()),
                (
                    "http.status_code",
                    ex.upstream_status.unwrap_or(0).to_string(),
                ),
            ],
        });
    }
    out
}
