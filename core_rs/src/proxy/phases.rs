//! The plugin boundary: what the request path asks of a route's plugin chain, and what it gets back.
//!
//! `trait PluginChain` is all the proxy knows of plugins that are not native: `py/host.rs` implements
//! it for a route's Python chain, and the tests implement it with a fake (no interpreter). The proxy
//! is generic over it rather than holding a `dyn`: one implementation is compiled into the worker,
//! so a phase costs no indirect call and the per-request state (`Req`) is held inline, not boxed.
use crate::http1::BoxError;
use bytes::Bytes;
use http::{HeaderMap, Method};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

/// The phases of a request, in the order they run (APISIX's, without `init`/`balancer`). The one
/// definition: Python reads the list (`_core.PHASES`) and numbers its hooks by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Rewrite = 0,
    Access = 1,
    BeforeProxy = 2,
    HeaderFilter = 3,
    BodyFilter = 4,
    Log = 5,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Rewrite,
        Phase::Access,
        Phase::BeforeProxy,
        Phase::HeaderFilter,
        Phase::BodyFilter,
        Phase::Log,
    ];

    /// The name of the plugin method that hooks this phase.
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Rewrite => "rewrite",
            Phase::Access => "access",
            Phase::BeforeProxy => "before_proxy",
            Phase::HeaderFilter => "header_filter",
            Phase::BodyFilter => "body_filter",
            Phase::Log => "log",
        }
    }
}

/// A set of phases, one bit per phase (bit `Phase as u8`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseSet(pub u8);

impl PhaseSet {
    pub const fn contains(self, p: Phase) -> bool {
        self.0 & (1 << p as u8) != 0
    }

    /// Some phase of the set comes after `p`.
    pub const fn any_after(self, p: Phase) -> bool {
        self.0 >> (p as u8 + 1) != 0
    }

    pub fn of(phases: &[Phase]) -> PhaseSet {
        PhaseSet(phases.iter().fold(0, |s, &p| s | 1 << p as u8))
    }
}

/// A gateway-made response (status, headers, body): what a plugin answers instead of the upstream.
pub struct ShortResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ShortResponse {
    /// A 500 `{"error_msg": what}` (a plugin raised, or returned something that is not a response).
    pub fn internal_error(what: &str) -> ShortResponse {
        ShortResponse {
            status: 500,
            headers: vec![("content-type".into(), "application/json".into())],
            body: crate::http1::error_body(what),
        }
    }
}

/// What a request phase decided.
pub enum Flow {
    Continue,
    Respond(ShortResponse),
}

/// The request as plugins first see it (moved into the chain's per-request state).
pub struct ReqInfo {
    /// The whole body, read before the phases when the chain `needs_body`.
    pub body: Option<Bytes>,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub host: String,
    pub scheme: &'static str,
    pub route_id: Arc<str>,
}

/// The request as plugins left it after a phase: what the proxy forwards.
pub struct ReqEdits {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The consumer an auth plugin identified.
    pub consumer: Option<String>,
    /// A node a plugin chose, instead of the balancer's pick.
    pub upstream: Option<(String, u16)>,
    /// A body a plugin read (or replaced); `None` when the stream is forwarded as it is.
    pub body: Option<Bytes>,
}

/// A route's plugin chain. `Req` is its per-request state, made by `begin`/`begin_and_run` and
/// handed back to every later phase; dropped when the response is done.
pub trait PluginChain: Send + Sync + 'static {
    type Req: Send + Sync + 'static;

    /// The phases some plugin of the chain hooks.
    fn phases(&self) -> PhaseSet;

    fn has(&self, p: Phase) -> bool {
        self.phases().contains(p)
    }

    /// Some plugin reads the request body: the proxy reads it whole before the phases.
    fn needs_body(&self) -> bool;

    /// Some plugin sees the response (its headers, body or log).
    fn sees_response(&self) -> bool {
        let p = self.phases();
        p.contains(Phase::HeaderFilter) || p.contains(Phase::BodyFilter) || p.contains(Phase::Log)
    }

    /// Every hook of `phases` runs synchronously (no hand-off to an event loop).
    fn all_sync(&self, phases: &[Phase]) -> bool;

    /// Make the per-request state.
    fn begin(&self, info: ReqInfo) -> Self::Req;

    /// The common case in one trip: `begin`, the (sync) `phases` that have hooks, and the edits after
    /// the last — or the response a plugin returned.
    fn begin_and_run(
        &self,
        info: ReqInfo,
        phases: &[Phase],
    ) -> (Self::Req, Result<ReqEdits, ShortResponse>);

    /// Run one request phase (`rewrite`, `access`, `before_proxy`), sync or async.
    fn request_phase<'a>(
        &'a self,
        req: &'a Self::Req,
        phase: Phase,
    ) -> impl Future<Output = Flow> + 'a;

    /// The request as plugins left it after `phase`.
    fn edits(&self, req: &Self::Req, phase: Phase) -> ReqEdits;

    /// `header_filter`: plugins may change status and headers; `Some` is a 500 to send instead.
    fn header_filter(
        &self,
        req: &mut Self::Req,
        status: &mut u16,
        headers: &mut HeaderMap,
    ) -> Option<ShortResponse>;

    /// `body_filter` on one chunk of the response body (`eof` on the last).
    fn body_filter(&self, req: &Self::Req, chunk: Bytes, eof: bool) -> Result<Bytes, BoxError>;

    /// `log`, once the response body is done (or dropped).
    fn log(&self, req: &Self::Req);
}
