//! The request path of one worker: checks → normalize → route → plugins → upstream → response.
pub mod body;
pub mod normalize;
pub mod service;
pub mod table;
pub mod vars;

use crate::limit::{key_hash, monotonic_ns, ShmTable};
use crate::observe::{Exchange, NodeRef};
use crate::py::host::{self, Flow, PyBodyFilter, PyChain, PyObj, PyReq, ReqInfo, ShortResponse};
use crate::server::h1::ClientBody;
use crate::upstream::{Target, TlsMode, UpstreamError, UpstreamRequest};
use arc_swap::ArcSwap;
use body::ChunkFilter;
use body::{DropHook, GwBody};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use table::{CompiledRoute, ConsumerLimits, HashOn, LimitKey, PassHost, RouteTable, Upstream};
use vars::ReqVars;

/// Per-worker state shared by every connection of the worker's (single) I/O thread.
pub struct Shared {
    pub table: Arc<ArcSwap<RouteTable>>,
    pub shm: Arc<ShmTable>,
    /// Python callable `submit(coro, waker)` that runs async hooks on the worker's asyncio loop.
    pub submit: Option<Arc<PyObj<pyo3::PyAny>>>,
    pub max_uri_len: usize,
    pub obs: Rc<crate::observe::Observer>,
}

/// A short JSON error made by the gateway.
pub fn error_response(status: StatusCode, msg: &str) -> Response<GwBody> {
    let mut r = Response::new(GwBody::full(crate::http1::error_body(msg)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn with_close(mut r: Response<GwBody>) -> Response<GwBody> {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn short(resp: ShortResponse) -> Response<GwBody> {
    let mut r = Response::new(GwBody::full(resp.body));
    *r.status_mut() =
        StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    host::apply_headers(r.headers_mut(), &resp.headers);
    r
}

/// Remove hop-by-hop headers (`crate::http1::is_hop_by_hop`), including any the `Connection` header
/// names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names first: most requests carry none of them.
    let mut hop: Vec<HeaderName> = h
        .keys()
        .filter(|k| crate::http1::is_hop_by_hop(k))
        .cloned()
        .collect();
    if hop.is_empty() {
        return;
    }
    if let Some(conn) = h.get(header::CONNECTION) {
        hop.extend(
            conn.as_bytes()
                .split(|&b| b == b',')
                .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok()),
        );
    }
    for n in hop {
        h.remove(n);
    }
}

fn host_of(req: &Request<ClientBody>) -> String {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    // Strip the port (keep IPv6 brackets' content intact).
    let hostpart = if raw.starts_with('[') {
        raw.split(']').next().map(|s| &s[1..]).unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map(|(h, _)| h).unwrap_or(raw)
    };
    hostpart.to_ascii_lowercase()
}

fn limit_key<'a>(k: &LimitKey, vars: &'a ReqVars<'a>) -> Option<std::borrow::Cow<'a, str>> {
    use crate::router::VarSource;
    match k {
        LimitKey::RemoteAddr => Some(std::borrow::Cow::Owned(
            crate::observe::accesslog::ip_string(vars.remote),
        )),
        LimitKey::ConsumerName => vars.consumer.map(std::borrow::Cow::Borrowed),
        LimitKey::Header(h) => vars
            .headers
            .get(h.as_str())
            .map(|v| String::from_utf8_lossy(v.as_bytes())),
        LimitKey::Var(name) => vars.var(name),
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Everything needed to build the upstream request, after plugins have had their say.
struct Outgoing {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    consumer: Option<String>,
    node_override: Option<(String, u16)>,
    /// Set when a plugin asked for the whole body (`needs_body`): forwarded instead of the stream.
    body: Option<Bytes>,
}

pub async fn handle(
    shared: Rc<Shared>,
    req: Request<ClientBody>,
    peer: SocketAddr,
    ex: &mut Exchange,
) -> Response<GwBody> {
    // Framing (Content-Length, Transfer-Encoding) was checked where the request came in: byte by
    // byte for HTTP/1 (`server::edge`), on the header map for HTTP/2 (`server::h1::serve_h2`).
    let h1_client = matches!(req.body(), ClientBody::H1(_));
    let uri_len = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if uri_len > shared.max_uri_len {
        return with_close(error_response(
            StatusCode::URI_TOO_LONG,
            "request URI too long",
        ));
    }
    let path = match normalize::normalize_path(req.uri().path()) {
        Ok(p) => p.into_owned(),
        Err(e) => return with_close(error_response(StatusCode::BAD_REQUEST, e.message())),
    };
    let host = host_of(&req);
    let remote = match peer.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let table = shared.table.load_full();
    let vars = ReqVars {
        headers: req.headers(),
        query: req.uri().query(),
        path: &path,
        host: &host,
        method: req.method().as_str(),
        remote,
        scheme: "http",
        consumer: None,
    };
    let route_idx = table.router.find(&crate::router::MatchInput {
        path: &path,
        host: &host,
        method: req.method().as_str(),
        remote_addr: remote,
        vars: &vars,
    });
    let Some(idx) = route_idx else {
        ex.metrics = table.metrics_unmatched;
        ex.observed = ex.metrics || table.unmatched_loggers.is_some() || shared.obs.log.is_some();
        if ex.observed {
            ex.begin(&req);
        }
        if let Some(l) = &table.unmatched_loggers {
            capture_for_loggers(ex, l, &req, peer);
        }
        return error_response(StatusCode::NOT_FOUND, "404 Route Not Found");
    };
    let route = &table.routes[idx];
    // real-ip: from here on (plugins, limiters, X-Forwarded-For, log) the client is the real one.
    let real = route
        .real_ip
        .as_ref()
        .and_then(|r| r.client(&vars, peer.port()));
    let (remote, client_port) = real.unwrap_or((remote, peer.port()));
    ex.client_ip = real.map(|r| r.0);
    ex.metrics = route.obs.metrics;
    ex.observed = route.obs.metrics || shared.obs.log.is_some() || route.loggers.is_some();
    if ex.observed {
        ex.begin(&req);
    }
    if let Some(l) = &route.loggers {
        capture_for_loggers(ex, l, &req, SocketAddr::new(remote, client_port));
    }
    if let Some(conf) = &route.otel {
        let tp = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        let t = crate::plugins::otel::TraceCtx::start(conf, tp);
        ex.trace_id = Some(crate::plugins::otel::hex(&t.trace));
        if t.sampled {
            ex.span_target = Some((req.method().clone(), req.uri().to_string()));
            ex.mark_start();
        }
        ex.trace = Some(t);
    }
    if ex.observed || ex.span_target.is_some() {
        ex.route = Some(route.obs.clone());
    }
    let gzip_ask = route.gzip.as_ref().map(|g| {
        (
            g,
            crate::plugins::gzip::Ask::of(g, req.method(), req.version(), req.headers()),
        )
    });
    let (parts, incoming) = req.into_parts();
    let mut body = ReqBody::Stream(incoming);
    let query = parts.uri.query().map(str::to_string);
    let orig_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });

    let mut preq: Option<PyReq> = None;
    let mut out = Outgoing {
        method: parts.method,
        path,
        query,
        headers: parts.headers,
        consumer: None,
        node_override: None,
        body: None,
    };

    // Python request phases: rewrite, access (before native limiters so auth sets the consumer).
    if let (Some(chain), Some(submit)) = (&route.chain, &shared.submit) {
        let mut buffered = None;
        if chain.needs_body() {
            let ReqBody::Stream(incoming) = body else {
                unreachable!("streamed until here")
            };
            match Box::pin(read_body(incoming)).await {
                Ok(b) => buffered = Some(b),
                Err(resp) => return resp,
            }
            body = ReqBody::Buffered;
        }
        let info = ReqInfo {
            body: buffered,
            method: out.method.clone(),
            path: std::mem::take(&mut out.path),
            query: out.query.take(),
            headers: std::mem::take(&mut out.headers),
            client_ip: remote,
            client_port,
            host: host.clone(),
            scheme: "http",
            route_id: route.id.clone(),
        };
        const FIRST: [u8; 2] = [host::REWRITE, host::ACCESS];
        if chain.all_sync(&FIRST) {
            // The common case: one trip into Python for the view, both phases and the outcome.
            match chain.begin_and_run(info, &FIRST) {
                (p, Err(r)) => return finish_short(chain, p, r),
                (p, Ok(outcome)) => {
                    apply_outcome(&mut out, outcome);
                    preq = Some(p);
                }
            }
        } else {
            let p = chain.begin(info);
            for phase in FIRST {
                if chain.has(phase) {
                    if let Flow::Respond(r) = Box::pin(chain.request_phase(submit, &p, phase)).await
                    {
                        return finish_short(chain, p, r);
                    }
                }
            }
            sync_outgoing(&mut out, chain, &p, host::ACCESS);
            preq = Some(p);
        }
    }

    if ex.observed {
        ex.consumer.clone_from(&out.consumer);
    }
    // Native limiters (shared-memory state, exact across workers).
    let mut quota: Option<(u64, u64, u64)> = None;
    // APISIX precedence: the identified consumer's (or its group's) limiter confs over the route's.
    let (limit_count, limit_req) =
        ConsumerLimits::effective(&table.consumer_limits, out.consumer.as_deref(), route);
    if limit_count.is_some() || limit_req.is_some() {
        let vars = ReqVars {
            headers: &out.headers,
            query: out.query.as_deref(),
            path: &out.path,
            host: &host,
            method: out.method.as_str(),
            remote,
            scheme: "http",
            consumer: out.consumer.as_deref(),
        };
        if let Some(lc) = limit_count {
            if let Some(k) = limit_key(&lc.key, &vars) {
                let d = shared.shm.fixed_window(
                    lc.seed(route) ^ key_hash(&[k.as_bytes()]),
                    lc.count,
                    lc.window_ns,
                    monotonic_ns(),
                );
                if !d.allowed {
                    shared.obs.rec.limit_rejected(&route.id, "limit-count");
                    let mut r = rejected(lc.rejected_code, lc.rejected_msg.as_deref());
                    if lc.show_headers {
                        quota_headers(
                            r.headers_mut(),
                            [
                                lc.count,
                                0,
                                d.reset_ns.div_ceil(1_000_000_000).min(lc.window_secs),
                            ],
                        );
                    }
                    return finish_resp(route, preq, r);
                }
                if lc.show_headers {
                    quota = Some((
                        lc.count,
                        d.remaining,
                        d.reset_ns.div_ceil(1_000_000_000).min(lc.window_secs),
                    ));
                }
            }
        }
        if let Some(lr) = limit_req {
            if let Some(k) = limit_key(&lr.key, &vars) {
                match shared.shm.gcra(
                    lr.seed(route) ^ key_hash(&[k.as_bytes()]),
                    lr.rate,
                    lr.burst,
                    monotonic_ns(),
                ) {
                    Err(()) => {
                        shared.obs.rec.limit_rejected(&route.id, "limit-req");
                        let r = rejected(lr.rejected_code, lr.rejected_msg.as_deref());
                        return finish_resp(route, preq, r);
                    }
                    Ok(delay) if delay > 0 && !lr.nodelay => {
                        Box::pin(tokio::time::sleep(std::time::Duration::from_nanos(delay))).await;
                    }
                    Ok(_) => {}
                }
            }
        }
    }

    if let (Some(chain), Some(p), Some(submit)) = (&route.chain, &preq, &shared.submit) {
        if chain.has(host::BEFORE_PROXY) {
            if let Flow::Respond(r) =
                Box::pin(chain.request_phase(submit, p, host::BEFORE_PROXY)).await
            {
                let preq = preq.expect("checked");
                return finish_short(chain, preq, r);
            }
            sync_outgoing(&mut out, chain, p, host::BEFORE_PROXY);
        }
    }

    if let Some(t) = &ex.trace {
        if let Ok(v) = HeaderValue::from_str(&t.upstream_header()) {
            out.headers.insert(TRACEPARENT.clone(), v);
        }
    }
    // Nothing on this route reads the response headers or changes them beyond setting limit-count's
    // (no plugin sees the response; metrics, logs and traces take the status and sizes only), and
    // our HTTP/1 server writes the head: the upstream's header lines go to the client as they are,
    // and limit-count's replace any of the same names.
    let raw_headers = (h1_client
        && route.chain.as_ref().is_none_or(|c| !c.sees_response())
        && gzip_ask.is_none())
    .then_some(if quota.is_some() { QUOTA_HEADERS } else { &[] });
    let to = Forward {
        remote,
        host: &host,
        orig_host: orig_host.as_ref(),
        raw_headers,
    };
    let resp = proxy_to_upstream(route, &mut out, body, to, ex).await;
    let mut resp = resp;
    if let Some((limit, remaining, reset)) = quota {
        let quota = [limit, remaining, reset];
        let raw = match resp.body_mut() {
            GwBody::Upstream(b) => b.raw_lines_mut(),
            _ => None,
        };
        match raw {
            // Lines passed through: the quota goes out with them (the upstream's own were left out).
            Some(lines) => quota_lines(lines, quota),
            None => quota_headers(resp.headers_mut(), quota),
        }
    }
    let resp = finish_resp(route, preq, resp);
    match gzip_ask {
        Some((conf, ask)) => crate::plugins::gzip::apply(conf, &ask, resp),
        None => resp,
    }
}

/// What `file-logger` / `http-logger` will log of this request, taken before the request is consumed.
fn capture_for_loggers(
    ex: &mut Exchange,
    l: &Arc<crate::plugins::loggers::RouteLoggers>,
    req: &Request<ClientBody>,
    client: SocketAddr,
) {
    ex.logs = Some(crate::plugins::loggers::LogCapture::new(l, req, client));
    if ex.trace_id.is_none() {
        ex.trace_id = crate::observe::trace_id(req);
    }
}

/// The request body: streamed to the upstream, or read whole because a plugin asked for it (the
/// bytes then live in the plugin view, where plugins may replace them).
enum ReqBody {
    Stream(ClientBody),
    Buffered,
}

/// Read a whole request body for plugins that need it: at most 1 MiB (413), 30 s idle (408).
async fn read_body(incoming: ClientBody) -> Result<Bytes, Response<GwBody>> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(incoming, MAX_BUFFERED_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(with_close(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "request body timed out",
        ))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(with_close(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than 1 MiB",
            )))
        }
        Ok(Err(_)) => Err(with_close(error_response(
            StatusCode::BAD_REQUEST,
            "malformed request body",
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

const MAX_BUFFERED_BODY: usize = 1024 * 1024;
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Copy what the request phases changed back into the outgoing request.
fn sync_outgoing(out: &mut Outgoing, chain: &PyChain, p: &PyReq, phase: u8) {
    apply_outcome(out, chain.outcome(p, phase));
}

fn apply_outcome(out: &mut Outgoing, o: host::ReqOutcome) {
    if o.state.body.is_some() {
        out.body = o.state.body;
    }
    out.method = o.state.method;
    out.path = o.state.path;
    out.query = o.state.query;
    out.consumer = o.state.consumer;
    out.node_override = o.state.upstream;
    out.headers = o.headers;
}

fn rejected(code: u16, msg: Option<&str>) -> Response<GwBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match msg {
        Some(m) => error_response(status, m),
        None => {
            let mut r = error_response(status, status.canonical_reason().unwrap_or("rejected"));
            *r.status_mut() = status;
            r
        }
    }
}

// Names made at compile time: `insert("x-…", v)` with a `&str` parses the name on every call.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// The names `quota_headers` and `quota_lines` set.
const QUOTA_HEADERS: &[&[u8]] = &[
    b"x-ratelimit-limit",
    b"x-ratelimit-remaining",
    b"x-ratelimit-reset",
];

fn quota_headers(h: &mut HeaderMap, [limit, remaining, reset]: [u64; 3]) {
    h.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(limit));
    h.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
    h.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(reset));
}

/// The same as encoded header lines, appended to lines passed through from the upstream.
fn quota_lines(lines: &mut Vec<u8>, quota: [u64; 3]) {
    for (name, n) in QUOTA_HEADERS.iter().zip(quota) {
        lines.extend_from_slice(name);
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        lines.extend_from_slice(b"\r\n");
    }
}

fn finish_short(chain: &Arc<PyChain>, preq: PyReq, r: ShortResponse) -> Response<GwBody> {
    finish_with_chain(chain, preq, short(r))
}

fn finish_resp(
    route: &CompiledRoute,
    preq: Option<PyReq>,
    resp: Response<GwBody>,
) -> Response<GwBody> {
    match (&route.chain, preq) {
        (Some(chain), Some(p)) => finish_with_chain(chain, p, resp),
        _ => resp,
    }
}

/// Response phases: header_filter, body_filter (streamed), log (when the body is done).
fn finish_with_chain(
    chain: &Arc<PyChain>,
    mut preq: PyReq,
    resp: Response<GwBody>,
) -> Response<GwBody> {
    let (mut parts, body) = resp.into_parts();
    let mut status = parts.status.as_u16();
    if let Some(err) = chain.header_filter(&mut preq, &mut status, &mut parts.headers) {
        return short(err);
    }
    parts.status = StatusCode::from_u16(status).unwrap_or(parts.status);
    let preq = Arc::new(preq);
    let mut body = body;
    if chain.has(host::BODY_FILTER) {
        let mut filter = PyBodyFilter {
            chain: chain.clone(),
            preq: preq.clone(),
        };
        body = match body {
            inner @ GwBody::Upstream(_) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                GwBody::Filtered(Box::new(body::Filtered {
                    inner,
                    filter: Box::new(filter),
                    done: false,
                }))
            }
            // A gateway-made body is one chunk: filter it now, as its last.
            GwBody::Full(b) => match filter.filter(b.map(|b| *b).unwrap_or_default(), true) {
                Ok(out) => {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
                    GwBody::full(out)
                }
                Err(_) => return short(host::internal_error("plugin error")),
            },
            other => other,
        };
    }
    if chain.has(host::LOG) {
        let chain = chain.clone();
        let preq = preq.clone();
        body = GwBody::Hooked(Box::new((
            body,
            DropHook(Some(Box::new(move || chain.log(&preq)))),
        )));
    }
    Response::from_parts(parts, body)
}

fn hash_key(u: &Upstream, out: &Outgoing, host: &str, remote: IpAddr) -> Option<Vec<u8>> {
    use crate::router::VarSource;
    let vars = ReqVars {
        headers: &out.headers,
        query: out.query.as_deref(),
        path: &out.path,
        host,
        method: out.method.as_str(),
        remote,
        scheme: "http",
        consumer: out.consumer.as_deref(),
    };
    match &u.hash_on {
        HashOn::None => None,
        HashOn::Var(v) => vars.var(v).map(|s| s.as_bytes().to_vec()),
        HashOn::Header(h) => out.headers.get(h.as_str()).map(|v| v.as_bytes().to_vec()),
        HashOn::Cookie(c) => vars::cookie(&out.headers, c).map(|s| s.as_bytes().to_vec()),
        HashOn::Consumer => out.consumer.as_ref().map(|s| s.as_bytes().to_vec()),
    }
}

/// Where the request came from, and how its response may be passed back.
struct Forward<'a> {
    remote: IpAddr,
    host: &'a str,
    orig_host: Option<&'a HeaderValue>,
    /// See `UpstreamRequest::raw_headers`.
    raw_headers: Option<&'static [&'static [u8]]>,
}

async fn proxy_to_upstream(
    route: &CompiledRoute,
    out: &mut Outgoing,
    body: ReqBody,
    to: Forward<'_>,
    ex: &mut Exchange,
) -> Response<GwBody> {
    let Forward {
        remote,
        host,
        orig_host,
        raw_headers,
    } = to;
    let u = &route.upstream;
    let plugin_host = out
        .headers
        .get(header::HOST)
        .filter(|h| Some(*h) != orig_host)
        .cloned();
    strip_hop_by_hop(&mut out.headers);
    // X-Forwarded-*: append the client to any chain it sent (trust decisions belong to real-ip).
    let mut xff = Vec::with_capacity(64);
    if let Some(prev) = out.headers.get(&X_FORWARDED_FOR) {
        xff.extend_from_slice(prev.as_bytes());
        xff.extend_from_slice(b", ");
    }
    crate::observe::accesslog::put_ip(&mut xff, remote);
    let path_q = match &out.query {
        Some(q) => format!("{}?{}", out.path, q),
        None => std::mem::take(&mut out.path),
    };
    let tls = u.https.then_some(if u.tls_verify {
        TlsMode::Verify
    } else {
        TlsMode::NoVerify
    });
    let bodyless = match (&body, &out.body) {
        (ReqBody::Stream(b), _) => hyper::body::Body::is_end_stream(b),
        (ReqBody::Buffered, b) => b.as_ref().is_none_or(|b| b.is_empty()),
    };
    // Another node may be tried only when nothing was sent (connect failed) and the request can be
    // replayed: no streamed body, an idempotent method, a balancer-picked node.
    let can_retry = bodyless
        && is_idempotent(&out.method)
        && out.node_override.is_none()
        && u.retries > 0
        && u.nodes.len() > 1;
    let hkey = hash_key(u, out, host, remote);
    let mut body = Some(body);
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let (target_host, port, authority, node_idx) = match &out.node_override {
            Some((h, p)) => {
                let bracketed = if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                };
                match HeaderValue::from_str(&bracketed) {
                    Ok(a) => (h.as_str(), *p, a, None),
                    Err(_) => {
                        return error_response(
                            StatusCode::BAD_GATEWAY,
                            "invalid upstream node set by plugin",
                        )
                    }
                }
            }
            None => match u.balancer.pick(hkey.as_deref(), &tried) {
                Some(i) => {
                    let n = &u.nodes[i];
                    (n.addr_host.as_str(), n.port, n.authority.clone(), Some(i))
                }
                None => {
                    return error_response(StatusCode::BAD_GATEWAY, "no upstream node available")
                }
            },
        };
        let host_value = match &u.pass_host {
            // A Host header a plugin set (e.g. proxy-rewrite `host`) wins over `pass_host`.
            _ if plugin_host.is_some() => plugin_host.as_ref(),
            PassHost::Pass => orig_host,
            PassHost::Node => None,
            PassHost::Rewrite(h) => Some(h),
        };
        // Host and X-Forwarded-* go in as the head is written (replacing the request's own): four
        // map inserts cost more than the rest of the encoding.
        let extra: [(&HeaderName, &[u8]); 4] = [
            (&header::HOST, host_value.unwrap_or(&authority).as_bytes()),
            (&X_FORWARDED_FOR, &xff),
            (&X_FORWARDED_PROTO, b"http"),
            (
                &X_FORWARDED_HOST,
                orig_host.map_or(&b""[..], |h| h.as_bytes()),
            ),
        ];
        let extra = &extra[..if orig_host.is_some() { 4 } else { 3 }];
        let req_body = match (body.take(), &out.body) {
            _ if bodyless => crate::upstream::SendBody::Empty,
            (Some(ReqBody::Stream(b)), _) => crate::upstream::SendBody::Stream(b),
            (_, Some(b)) => crate::upstream::SendBody::Full(b.clone()),
            _ => crate::upstream::SendBody::Empty,
        };
        let target = Target {
            host: target_host,
            port,
            tls,
        };
        let req = UpstreamRequest {
            method: &out.method,
            path_and_query: &path_q,
            headers: &out.headers,
            extra,
            body: req_body,
            batch: route.chain.is_some(),
            raw_headers,
        };
        let tracked = node_idx.filter(|_| u.balancer.tracks_load());
        let started = tracked.map(|i| {
            u.balancer.on_start(i);
            std::time::Instant::now()
        });
        // Which node and how long: only for requests that metrics, logs or traces record.
        let observed = ex.observed || ex.span_target.is_some();
        let sent_at = observed.then(std::time::Instant::now);
        if ex.span_target.is_some() {
            ex.upstream_start_ns = crate::plugins::otel::unix_ns();
        }
        let result =
            crate::upstream::send(&target, req, route.connect_timeout, route.read_timeout).await;
        if let (Some(i), Some(t)) = (tracked, started) {
            u.balancer.on_finish(i, t.elapsed().as_nanos() as u64);
        }
        let node = observed.then(|| match node_idx {
            Some(i) => NodeRef::Pool(route.upstream.clone(), i),
            None => NodeRef::Custom(target_host.to_string(), port),
        });
        ex.upstream_us = sent_at.map(|t| t.elapsed().as_micros() as u64);
        let err = match result {
            Ok(resp) => {
                ex.upstream_status = Some(resp.status().as_u16());
                ex.node = node;
                // The client leaves hop-by-hop headers out of responses.
                let (parts, inc) = resp.into_parts();
                return Response::from_parts(parts, GwBody::Upstream(inc));
            }
            Err(e) => e,
        };
        let nothing_sent = matches!(
            err,
            UpstreamError::Connect(_) | UpstreamError::ConnectTimeout
        );
        if nothing_sent {
            ex.failed.extend(node);
        } else {
            ex.node = node;
        }
        if nothing_sent && can_retry {
            if let Some(i) = node_idx {
                tried.push(i);
                if tried.len() <= u.retries {
                    continue;
                }
            }
        }
        return match err {
            UpstreamError::ConnectTimeout => {
                error_response(StatusCode::GATEWAY_TIMEOUT, "upstream connect timed out")
            }
            UpstreamError::Timeout => {
                error_response(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
            }
            _ => error_response(StatusCode::BAD_GATEWAY, "upstream unavailable"),
        };
    }
}
