//! The request path of one worker: checks → normalize → route → plugins → upstream → response.
pub mod body;
mod forward;
pub mod request;
mod respond;
pub mod table;

pub use request::{normalize, vars};
pub use respond::error_response;

use crate::limit::{key_hash, monotonic_ns, ShmTable};
use crate::observe::Exchange;
use crate::plugins::limit::{
    limit_key, quota_headers, quota_lines, rejected, ConsumerLimits, QUOTA_HEADERS,
};
use crate::py::host::{self, Flow, PyChain, PyObj, PyReq, ReqInfo};
use crate::server::h1::ClientBody;
use arc_swap::ArcSwap;
use body::GwBody;
use bytes::Bytes;
use forward::{proxy_to_upstream, Forward};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
pub(crate) use request::ReqBody;
use request::{host_of, read_body};
use respond::{finish_resp, finish_short, with_close};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use table::RouteTable;
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

/// Everything needed to build the upstream request, after plugins have had their say.
pub(crate) struct Outgoing {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) consumer: Option<String>,
    pub(crate) node_override: Option<(String, u16)>,
    /// Set when a plugin asked for the whole body (`needs_body`): forwarded instead of the stream.
    pub(crate) body: Option<Bytes>,
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

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
