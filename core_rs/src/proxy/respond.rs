//! The response side of the request path: gateway-made responses (through the server's one error
//! builder) and the response phases (`header_filter`, `body_filter`, `log`), limit-count's
//! refusals and quota headers, and gzip.
use super::body::{self, ChunkFilter, DropHook, GwBody};
use super::phases::{Phase, PluginChain, ShortResponse};
use super::request::Routed;
use super::table::CompiledRoute;
use crate::http1::BoxError;
use crate::observe::accesslog::Capture;
use crate::observe::{Exchange, Meter, Observer};
use crate::plugins::limit::{self, Quota, Rejected};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use std::rc::Rc;
use std::sync::Arc;

/// A short JSON error made by the gateway (404, 413, 414, 502, 504, a limiter's refusal, ...):
/// built by the server's builder, so every gateway-made error has one shape
/// (docs/architecture.md, "The request path"). Whether the connection closes after it is the
/// caller's (`with_close`).
pub fn error_response(status: StatusCode, msg: &str) -> Response<GwBody> {
    crate::server::error_response::<GwBody>(status, msg)
}

/// A limiter's refusal as the response: the gateway's JSON error, with limit-count's quota headers
/// when it shows them.
pub(crate) fn rejected(no: Rejected<'_>) -> Response<GwBody> {
    let mut r = error_response(no.status, no.msg);
    if let Some(quota) = no.quota {
        limit::quota_headers(r.headers_mut(), quota);
    }
    r
}

/// Put limit-count's quota on the response: appended to the upstream's header lines when they are
/// passed through (the upstream's own were left out), else into the header map.
fn add_quota(resp: &mut Response<GwBody>, quota: Quota) {
    let raw = match resp.body_mut() {
        GwBody::Upstream(b) => b.raw_lines_mut(),
        _ => None,
    };
    match raw {
        Some(lines) => limit::quota_lines(lines, quota),
        None => limit::quota_headers(resp.headers_mut(), quota),
    }
}

/// The response with `Connection: close`: the request left the connection in a state not worth
/// keeping (a URI or body the gateway refused).
pub(crate) fn with_close(mut r: Response<GwBody>) -> Response<GwBody> {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The upstream's (or the gateway's) response on its way out: limit-count's quota, the response
/// phases, gzip.
pub(crate) fn respond<C: PluginChain>(
    route: &CompiledRoute<C>,
    at: &Routed,
    plugin_req: Option<C::Req>,
    quota: Option<Quota>,
    mut resp: Response<GwBody>,
) -> Response<GwBody> {
    if let Some(quota) = quota {
        add_quota(&mut resp, quota);
    }
    let resp = finish_resp(route, plugin_req, resp);
    match (&route.gzip, &at.gzip_ask) {
        (Some(conf), Some(ask)) => crate::plugins::gzip::apply(conf, ask, resp),
        _ => resp,
    }
}

pub(crate) fn short(resp: ShortResponse) -> Response<GwBody> {
    let mut r = Response::new(GwBody::full(resp.body));
    *r.status_mut() =
        StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    apply_headers(r.headers_mut(), &resp.headers);
    r
}

/// Set response headers from a plugin's short-circuit response.
fn apply_headers(headers: &mut HeaderMap, pairs: &[(String, String)]) {
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
}

/// A plugin's response, through the response phases.
pub(crate) fn finish_short<C: PluginChain>(
    chain: &Arc<C>,
    req: C::Req,
    r: ShortResponse,
) -> Response<GwBody> {
    finish_with_chain(chain, req, short(r))
}

/// `resp` through the response phases, when the route has a chain.
pub(crate) fn finish_resp<C: PluginChain>(
    route: &CompiledRoute<C>,
    plugin_req: Option<C::Req>,
    resp: Response<GwBody>,
) -> Response<GwBody> {
    match (&route.chain, plugin_req) {
        (Some(chain), Some(p)) => finish_with_chain(chain, p, resp),
        _ => resp,
    }
}

/// `body_filter` over a streamed body: one chain call per chunk.
struct ChainBodyFilter<C: PluginChain> {
    chain: Arc<C>,
    req: Arc<C::Req>,
}

impl<C: PluginChain> ChunkFilter for ChainBodyFilter<C> {
    fn filter(&mut self, chunk: Bytes, eof: bool) -> Result<Bytes, BoxError> {
        self.chain.body_filter(&self.req, chunk, eof)
    }
}

/// Response phases: header_filter, body_filter (streamed), log (when the body is done).
fn finish_with_chain<C: PluginChain>(
    chain: &Arc<C>,
    mut req: C::Req,
    resp: Response<GwBody>,
) -> Response<GwBody> {
    let (mut parts, body) = resp.into_parts();
    let mut status = parts.status.as_u16();
    if let Some(err) = chain.header_filter(&mut req, &mut status, &mut parts.headers) {
        return short(err);
    }
    parts.status = StatusCode::from_u16(status).unwrap_or(parts.status);
    let req = Arc::new(req);
    let mut body = body;
    if chain.has(Phase::BodyFilter) {
        let mut filter = ChainBodyFilter {
            chain: chain.clone(),
            req: req.clone(),
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
                Err(_) => return short(ShortResponse::internal_error("plugin error")),
            },
            other => other,
        };
    }
    if chain.has(Phase::Log) {
        let chain = chain.clone();
        let req = req.clone();
        body = GwBody::Hooked(Box::new((
            body,
            DropHook(Some(Box::new(move || chain.log(&req)))),
        )));
    }
    Response::from_parts(parts, body)
}

fn resp_head_len(r: &Response<GwBody>) -> u64 {
    let headers: usize = r
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    // Header lines passed through as received (the map then holds only what the gateway adds).
    let raw = r.body().raw_headers().map_or(0, |(lines, _)| lines.len());
    // Status line plus the Date/Content-Length the server adds (approximately).
    (17 + headers + raw + 60) as u64
}

/// Wrap the response so its end records metrics and the access log line; untouched when neither
/// is wanted for this request.
pub fn meter(
    obs: &Rc<Observer>,
    resp: Response<GwBody>,
    ex: Exchange,
    capture: Option<Box<Capture>>,
) -> Response<GwBody> {
    if !ex.records() && capture.is_none() {
        crate::observe::record_health(obs, &ex);
        return resp;
    }
    let status = resp.status().as_u16();
    let head = resp_head_len(&resp);
    let (parts, body) = resp.into_parts();
    let meter = Meter::new(obs, ex, status, head, capture);
    Response::from_parts(parts, GwBody::Metered(Box::new((body, meter))))
}
