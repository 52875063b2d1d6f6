//! The response side of the request path: gateway-made responses and the response phases.
use super::body::{self, ChunkFilter, DropHook, GwBody};
use super::table::CompiledRoute;
use crate::py::host::{self, PyBodyFilter, PyChain, PyReq, ShortResponse};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use std::sync::Arc;

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

pub(crate) fn with_close(mut r: Response<GwBody>) -> Response<GwBody> {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

pub(crate) fn short(resp: ShortResponse) -> Response<GwBody> {
    let mut r = Response::new(GwBody::full(resp.body));
    *r.status_mut() =
        StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    host::apply_headers(r.headers_mut(), &resp.headers);
    r
}

pub(crate) fn finish_short(
    chain: &Arc<PyChain>,
    preq: PyReq,
    r: ShortResponse,
) -> Response<GwBody> {
    finish_with_chain(chain, preq, short(r))
}

pub(crate) fn finish_resp(
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
