//! The request as it came in: which route serves it (`route`), its host, its body, and
//! (`normalize.rs`) its normalized path. The variables routes and plugins read of it are
//! `crate::router::ReqVars`.
pub mod normalize;

use super::body::GwBody;
use super::phases::PluginChain;
use super::respond::{error_response, with_close};
use super::table::RouteTable;
use super::WorkerState;
use crate::observe::Exchange;
use crate::router::ReqVars;
use crate::server::h1::ClientBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use std::net::{IpAddr, SocketAddr};

/// What `route` found: the route and who the client is.
pub(crate) struct Routed {
    /// Index into the table's routes.
    pub idx: usize,
    /// Normalized.
    pub path: String,
    /// Lowercase, without the port.
    pub host: String,
    /// The client: the peer, or the address `real-ip` found.
    pub remote: IpAddr,
    pub client_port: u16,
    /// The Host the client sent (or the URI's authority), for `pass_host: pass` and X-Forwarded-Host.
    pub orig_host: Option<HeaderValue>,
    /// The request came over HTTP/1 (whose writer can pass the upstream's header lines through).
    pub h1_client: bool,
    /// The `gzip` plugin's view of the request, on routes that have it.
    pub gzip_ask: Option<crate::plugins::gzip::Ask>,
}

/// Checks, normalize, match, real-ip, trace: the route that serves `req`, or the response to send
/// instead (414, 400, 404).
#[allow(clippy::result_large_err)] // the response is made once, on the way out
pub(crate) fn route<C: PluginChain>(
    state: &WorkerState<C>,
    table: &RouteTable<C>,
    req: &Request<ClientBody>,
    peer: SocketAddr,
    ex: &mut Exchange,
) -> Result<Routed, Response<GwBody>> {
    // Framing (Content-Length, Transfer-Encoding) was checked where the request came in: byte by
    // byte for HTTP/1 (`server::edge`), on the header map for HTTP/2 (`server::h1::serve_h2`).
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > state.max_uri_len {
        return Err(with_close(error_response(
            StatusCode::URI_TOO_LONG,
            "request URI too long",
        )));
    }
    let path = match normalize::normalize_path(req.uri().path()) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            return Err(with_close(error_response(
                StatusCode::BAD_REQUEST,
                e.message(),
            )))
        }
    };
    let host = host_of(req);
    let remote = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
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
    let found = table.router.find(&crate::router::MatchInput {
        path: &path,
        host: &host,
        method: req.method().as_str(),
        remote_addr: remote,
        vars: &vars,
    });
    let Some(idx) = found else {
        let loggers = table.unmatched_loggers.as_ref();
        ex.unmatched(
            table.metrics_unmatched,
            loggers,
            state.obs.log.is_some(),
            req,
            peer,
        );
        return Err(error_response(StatusCode::NOT_FOUND, "404 Route Not Found"));
    };
    let route = &table.routes[idx];
    // real-ip: from here on (plugins, limiters, X-Forwarded-For, log) the client is the real one.
    let real = route
        .real_ip
        .as_ref()
        .and_then(|r| r.client(&vars, peer.port()));
    let (remote, client_port) = real.unwrap_or((remote, peer.port()));
    ex.matched(
        &route.obs,
        route.loggers.as_ref(),
        route.otel.as_ref().map(|conf| {
            let tp = req.headers().get("traceparent");
            crate::observe::trace::TraceCtx::start(conf, tp.and_then(|v| v.to_str().ok()))
        }),
        state.obs.log.is_some(),
        req,
        (SocketAddr::new(remote, client_port), real.is_some()),
    );
    let gzip_ask = route
        .gzip
        .as_ref()
        .map(|g| crate::plugins::gzip::Ask::of(g, req.method(), req.version(), req.headers()));
    let orig_host = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    Ok(Routed {
        idx,
        path,
        host,
        remote,
        client_port,
        orig_host,
        h1_client: matches!(req.body(), ClientBody::H1(_)),
        gzip_ask,
    })
}

pub(crate) fn host_of(req: &Request<ClientBody>) -> String {
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

/// The request body: streamed to the upstream, or read whole because a plugin asked for it (the
/// bytes then live in the plugin view, where plugins may replace them).
pub(crate) enum InboundBody {
    Stream(ClientBody),
    Buffered,
}

/// Read a whole request body for plugins that need it: at most 1 MiB (413), 30 s idle (408).
pub(crate) async fn read_body(incoming: ClientBody) -> Result<Bytes, Response<GwBody>> {
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
