//! The request path of one worker. `handle` is all of it, in this order:
//!
//! 1. **route** (`request.rs`): URI checks, path normalization, route match, real-ip, trace context;
//! 2. **request phases**: the route's plugin chain runs `rewrite` and `access` (auth sets the consumer);
//! 3. **limits**: the native `limit-count` / `limit-req` of the global rules, then of the consumer or
//!    the route (`plugins/limit.rs`);
//! 4. **before_proxy**: the chain's last request phase;
//! 5. **forward** (`forward.rs`): X-Forwarded-*, node choice, retries, header pass-through;
//! 6. **respond** (`respond.rs`): quota headers, `header_filter`, `body_filter`, `log`, gzip.
//!
//! Plugins that are not native are reached only through `phases::PluginChain` (the worker's is the
//! Python chain in `py/host.rs`; the tests use a fake), so this module has no PyO3 in it.
pub mod body;
mod forward;
pub mod phases;
pub mod request;
mod respond;
pub mod service;
pub mod table;
#[cfg(test)]
mod tests;

pub use request::normalize;
pub use respond::{error_response, meter};

use crate::limit::ShmTable;
use crate::observe::Exchange;
use crate::plugins::limit::{self as limits, Quota, Rejected};
use crate::server::h1::ClientBody;
use arc_swap::ArcSwap;
use body::GwBody;
use bytes::Bytes;
use forward::{proxy_to_upstream, Forward};
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use phases::{Flow, Phase, PluginChain, ReqEdits, ReqInfo};
pub(crate) use request::InboundBody;
use request::{read_body, Routed};
use respond::{finish_resp, finish_short};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use table::{CompiledRoute, RouteTable};

/// What every connection of a worker's (single) I/O thread serves from: the route table, the
/// shared-memory limiter table and the observability sinks. `C` is the routes' plugin chain.
pub struct WorkerState<C: PluginChain> {
    pub table: Arc<ArcSwap<RouteTable<C>>>,
    pub shm: Arc<ShmTable>,
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

/// Serve one request: route → request phases → limits → before_proxy → forward → respond.
pub async fn handle<C: PluginChain>(
    state: Rc<WorkerState<C>>,
    req: Request<ClientBody>,
    peer: SocketAddr,
    ex: &mut Exchange,
) -> Response<GwBody> {
    let table = state.table.load_full();
    let mut at = match request::route(&state, &table, &req, peer, ex) {
        Ok(at) => at,
        Err(resp) => return resp,
    };
    let route = &table.routes[at.idx];
    let (mut out, mut body) = Outgoing::from_request(req, std::mem::take(&mut at.path));

    let mut plugin_req: Option<C::Req> = None;
    if let Some(chain) = &route.chain {
        let first = if chain.needs_body() || !chain.all_sync(&FIRST) {
            // Boxed: the async path's state stays out of every request's future.
            Box::pin(request_phases_async(chain, route, &at, &mut out, &mut body)).await
        } else {
            request_phases(chain, route, &at, &mut out, None)
        };
        match first {
            Ok(p) => plugin_req = Some(p),
            Err(resp) => return resp,
        }
    }
    if ex.observed {
        ex.consumer.clone_from(&out.consumer);
    }

    let quota = match apply_limits(&state, &table, route, &at, &out) {
        Ok((quota, 0)) => quota,
        Ok((quota, delay_ns)) => {
            // limit-req over its rate but within its burst: the request waits its turn.
            Box::pin(tokio::time::sleep(std::time::Duration::from_nanos(
                delay_ns,
            )))
            .await;
            quota
        }
        Err(no) => return finish_resp(route, plugin_req, respond::rejected(no)),
    };

    if let (Some(chain), Some(p)) = (&route.chain, &plugin_req) {
        if chain.has(Phase::BeforeProxy) {
            if let Flow::Respond(r) = Box::pin(chain.request_phase(p, Phase::BeforeProxy)).await {
                return finish_short(chain, plugin_req.expect("checked"), r);
            }
            out.apply(chain.edits(p, Phase::BeforeProxy));
        }
    }

    if let Some(t) = &ex.trace {
        if let Ok(v) = HeaderValue::from_str(&t.upstream_header()) {
            out.headers
                .insert(crate::observe::trace::TRACEPARENT.clone(), v);
        }
    }
    let to = Forward {
        remote: at.remote,
        host: &at.host,
        orig_host: at.orig_host.as_ref(),
        raw_headers: forward::raw_headers(route, &at, quota.is_some()),
    };
    let resp = proxy_to_upstream(route, &mut out, body, to, ex).await;
    respond::respond(route, &at, plugin_req, quota, resp)
}

impl Outgoing {
    /// The request as it came in, before any plugin: its body stays with the connection.
    fn from_request(req: Request<ClientBody>, path: String) -> (Outgoing, InboundBody) {
        let (parts, incoming) = req.into_parts();
        let out = Outgoing {
            method: parts.method,
            path,
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            consumer: None,
            node_override: None,
            body: None,
        };
        (out, InboundBody::Stream(incoming))
    }

    /// Take what plugins left after a request phase.
    fn apply(&mut self, e: ReqEdits) {
        if e.body.is_some() {
            self.body = e.body;
        }
        self.method = e.method;
        self.path = e.path;
        self.query = e.query;
        self.consumer = e.consumer;
        self.node_override = e.upstream;
        self.headers = e.headers;
    }
}

/// The first request phases, before the native limiters (so auth sets the consumer).
const FIRST: [Phase; 2] = [Phase::Rewrite, Phase::Access];

/// `rewrite` and `access` when every hook of them is sync: one trip into the chain for the view,
/// both phases and the edits. The chain's per-request state, or the response a plugin gave.
#[allow(clippy::result_large_err)] // the response is made once, on the way out
fn request_phases<C: PluginChain>(
    chain: &Arc<C>,
    route: &CompiledRoute<C>,
    at: &Routed,
    out: &mut Outgoing,
    body: Option<Bytes>,
) -> Result<C::Req, Response<GwBody>> {
    match chain.begin_and_run(req_info(route, at, out, body), &FIRST) {
        (p, Err(r)) => Err(finish_short(chain, p, r)),
        (p, Ok(edits)) => {
            out.apply(edits);
            Ok(p)
        }
    }
}

/// `rewrite` and `access` when a hook is async or a plugin reads the whole body.
async fn request_phases_async<C: PluginChain>(
    chain: &Arc<C>,
    route: &CompiledRoute<C>,
    at: &Routed,
    out: &mut Outgoing,
    body: &mut InboundBody,
) -> Result<C::Req, Response<GwBody>> {
    let mut buffered = None;
    if chain.needs_body() {
        let InboundBody::Stream(incoming) = std::mem::replace(body, InboundBody::Buffered) else {
            unreachable!("streamed until here")
        };
        buffered = Some(read_body(incoming).await?);
    }
    if chain.all_sync(&FIRST) {
        return request_phases(chain, route, at, out, buffered);
    }
    let p = chain.begin(req_info(route, at, out, buffered));
    for phase in FIRST {
        if chain.has(phase) {
            if let Flow::Respond(r) = chain.request_phase(&p, phase).await {
                return Err(finish_short(chain, p, r));
            }
        }
    }
    out.apply(chain.edits(&p, Phase::Access));
    Ok(p)
}

/// The request as plugins first see it (moved out of `out`; the edits bring it back).
fn req_info<C: PluginChain>(
    route: &CompiledRoute<C>,
    at: &Routed,
    out: &mut Outgoing,
    body: Option<Bytes>,
) -> ReqInfo {
    ReqInfo {
        body,
        method: out.method.clone(),
        path: std::mem::take(&mut out.path),
        query: out.query.take(),
        headers: std::mem::take(&mut out.headers),
        client_ip: at.remote,
        client_port: at.client_port,
        host: at.host.clone(),
        scheme: "http",
        route_id: route.id.clone(),
    }
}

/// The native limiters (shared-memory counters, exact across workers): the global rules' first,
/// then the consumer's (or its group's) over the route's, as APISIX ranks them. The quota to send
/// and the delay limit-req asks for (summed), or the rejection.
fn apply_limits<'t, C: PluginChain>(
    state: &WorkerState<C>,
    table: &'t RouteTable<C>,
    route: &'t CompiledRoute<C>,
    at: &Routed,
    out: &Outgoing,
) -> Result<(Option<Quota>, u64), Rejected<'t>> {
    let (count, req) = limits::ConsumerLimits::effective(
        &table.consumer_limits,
        out.consumer.as_deref(),
        &route.limits,
    );
    if table.global_limits.is_empty() && count.is_none() && req.is_none() {
        return Ok((None, 0));
    }
    let vars = crate::router::ReqVars {
        headers: &out.headers,
        query: out.query.as_deref(),
        path: &out.path,
        host: &at.host,
        method: out.method.as_str(),
        remote: at.remote,
        scheme: "http",
        consumer: out.consumer.as_deref(),
    };
    let ctx = limits::Ctx {
        shm: &state.shm,
        rec: &state.obs.rec,
        route_id: &route.id,
        route_seed: route.seed,
        vars: &vars,
    };
    let (mut quota, mut delay_ns) = (None, 0);
    for g in table.global_limits.iter() {
        let (q, d) = ctx.apply(g.limit_count.as_ref(), g.limit_req.as_ref())?;
        (quota, delay_ns) = (q.or(quota), delay_ns + d);
    }
    let (q, d) = ctx.apply(count, req)?;
    Ok((q.or(quota), delay_ns + d))
}
