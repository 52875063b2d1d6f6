//! Forwarding to the upstream: hop-by-hop headers, X-Forwarded-*, node choice and retries.
use super::body::GwBody;
use super::phases::PluginChain;
use super::request::Routed;
use super::respond::error_response;
use super::table::{CompiledRoute, HashOn, PassHost, Upstream};
use super::{InboundBody, Outgoing};
use crate::observe::{Exchange, NodeRef};
use crate::router::reqvars::{self, ReqVars};
use crate::upstream::{Target, TlsMode, UpstreamError, UpstreamRequest};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use std::net::IpAddr;

/// Remove hop-by-hop headers (`crate::http1::is_hop_by_hop`), including any the `Connection` header
/// names.
/// Whether the upstream's header lines may go to the client as they are (`UpstreamRequest::raw_headers`),
/// and which names the gateway adds to them (limit-count's quota, when `quota`).
///
/// Nothing on this route reads the response headers or changes them beyond setting limit-count's
/// (no plugin sees the response; metrics, logs and traces take the status and sizes only), and
/// our HTTP/1 server writes the head: the upstream's header lines go to the client as they are,
/// and limit-count's replace any of the same names.
pub(crate) fn raw_headers<C: PluginChain>(
    route: &CompiledRoute<C>,
    at: &Routed,
    quota: bool,
) -> Option<&'static [&'static [u8]]> {
    (at.h1_client
        && route.chain.as_ref().is_none_or(|c| !c.sees_response())
        && at.gzip_ask.is_none())
    .then_some(if quota {
        crate::plugins::limit::QUOTA_HEADERS
    } else {
        &[]
    })
}

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

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

// Names made at compile time: `insert("x-…", v)` with a `&str` parses the name on every call.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn hash_key(u: &Upstream, out: &Outgoing, host: &str, remote: IpAddr) -> Option<Vec<u8>> {
    use crate::router::VarSource;
    match &u.hash_on {
        HashOn::None => None,
        HashOn::Var(v) => {
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
            vars.var(v).map(|s| s.as_bytes().to_vec())
        }
        HashOn::Header(h) => out.headers.get(h.as_str()).map(|v| v.as_bytes().to_vec()),
        HashOn::Cookie(c) => reqvars::cookie(&out.headers, c).map(|s| s.as_bytes().to_vec()),
        HashOn::Consumer => out.consumer.as_ref().map(|s| s.as_bytes().to_vec()),
    }
}

/// Where the request came from, and how its response may be passed back.
pub(crate) struct Forward<'a> {
    pub(crate) remote: IpAddr,
    pub(crate) host: &'a str,
    pub(crate) orig_host: Option<&'a HeaderValue>,
    /// See `UpstreamRequest::raw_headers`.
    pub(crate) raw_headers: Option<&'static [&'static [u8]]>,
}

pub(crate) async fn proxy_to_upstream<C: PluginChain>(
    route: &CompiledRoute<C>,
    out: &mut Outgoing,
    body: InboundBody,
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
    crate::http1::put_ip(&mut xff, remote);
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
        (InboundBody::Stream(b), _) => hyper::body::Body::is_end_stream(b),
        (InboundBody::Buffered, b) => b.as_ref().is_none_or(|b| b.is_empty()),
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
            (Some(InboundBody::Stream(b)), _) => crate::upstream::SendBody::Stream(b),
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
            ex.upstream_start_ns = crate::observe::trace::unix_ns();
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
