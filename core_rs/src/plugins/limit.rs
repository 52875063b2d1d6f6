//! `limit-req` and `limit-count`, native: their confs, compile, key and quota headers. Counters live in
//! the shared-memory limiter table (`crate::limit`), exact across workers.
use crate::config::{conf_in, CompileError, ConsumerLimitsConf, GlobalLimitsConf};
use crate::limit::{key_hash, monotonic_ns, ShmTable};
use crate::observe::metrics::Recorder;
use crate::proxy::body::GwBody;
use crate::proxy::error_response;
use crate::proxy::phases::PluginChain;
use crate::proxy::table::CompiledRoute;
use crate::router::ReqVars;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A consumer's limiters (its own conf over its group's). APISIX precedence: consumer > consumer group
/// > route, so once the consumer is identified these replace the route's.
pub struct ConsumerLimits {
    /// `None`: the route's applies; `Some(None)`: overridden by nothing native (a Python
    /// `policy: redis` conf or a disabled one).
    pub limit_count: Option<Option<LimitCount>>,
    pub limit_req: Option<Option<LimitReq>>,
}

impl ConsumerLimits {
    /// The limiters that apply to a request of `consumer` on `route`.
    pub fn effective<'a, C: PluginChain>(
        table: &'a HashMap<String, ConsumerLimits>,
        consumer: Option<&str>,
        route: &'a CompiledRoute<C>,
    ) -> (Option<&'a LimitCount>, Option<&'a LimitReq>) {
        let own = consumer.and_then(|c| table.get(c));
        let count = match own.map(|c| &c.limit_count) {
            Some(Some(l)) => l.as_ref(),
            _ => route.limit_count.as_ref(),
        };
        let req = match own.map(|c| &c.limit_req) {
            Some(Some(l)) => l.as_ref(),
            _ => route.limit_req.as_ref(),
        };
        (count, req)
    }
}

/// Where a limiter's key comes from (APISIX `key_type: var` with `key`).
#[derive(Clone)]
pub enum LimitKey {
    RemoteAddr,
    ConsumerName,
    Header(String),
    Var(String),
}

pub struct LimitReq {
    pub rate: f64,
    pub burst: f64,
    pub key: LimitKey,
    pub rejected_code: u16,
    pub rejected_msg: Option<String>,
    pub nodelay: bool,
    /// Counter identity: the conf's source, mixed with the route's seed when `per_route`.
    pub seed: u64,
    pub per_route: bool,
}

pub struct LimitCount {
    pub count: u64,
    pub window_ns: u64,
    pub window_secs: u64,
    pub key: LimitKey,
    pub rejected_code: u16,
    pub rejected_msg: Option<String>,
    pub show_headers: bool,
    /// Counter identity: the conf's source (or its `group`), mixed with the route's seed when
    /// `per_route` (no `group`: APISIX counts per route and conf).
    pub seed: u64,
    pub per_route: bool,
}

impl LimitReq {
    pub fn seed(&self, route_seed: u64) -> u64 {
        if self.per_route {
            self.seed ^ route_seed
        } else {
            self.seed
        }
    }
}

impl LimitCount {
    pub fn seed(&self, route_seed: u64) -> u64 {
        if self.per_route {
            self.seed ^ route_seed
        } else {
            self.seed
        }
    }
}

fn parse_key(key: &str) -> LimitKey {
    match key {
        "remote_addr" => LimitKey::RemoteAddr,
        "consumer_name" => LimitKey::ConsumerName,
        k if k.starts_with("http_") => {
            LimitKey::Header(k[5..].replace('_', "-").to_ascii_lowercase())
        }
        k => LimitKey::Var(k.to_string()),
    }
}

#[derive(Deserialize)]
struct LimitReqConf {
    rate: f64,
    burst: f64,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "default_rejected")]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    nodelay: bool,
}

#[derive(Deserialize)]
struct LimitCountConf {
    count: u64,
    time_window: u64,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "default_rejected")]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default = "default_true")]
    show_limit_quota_header: bool,
    /// Routes (and consumers) whose confs name the same group share one counter per key (APISIX).
    #[serde(default)]
    group: Option<String>,
}

fn default_key() -> String {
    "remote_addr".into()
}
fn default_rejected() -> u16 {
    503
}
fn default_true() -> bool {
    true
}

/// The `limit-req` and `limit-count` of one plugin map (a route's or a consumer's). `sources` name
/// where each conf lives, (limit-req's, limit-count's): empty for a route (the route's seed tells
/// routes apart), `consumer:<name>` or `group:<id>` for a consumer's.
pub(crate) fn compile_limits(
    plugins: &Map<String, Value>,
    label: &str,
    sources: (&str, &str),
) -> Result<(Option<LimitReq>, Option<LimitCount>), CompileError> {
    let seed = key_hash(&[b"source", sources.0.as_bytes()]);
    let limit_req = conf_in::<LimitReqConf>(plugins, label, "limit-req")?.map(|c| LimitReq {
        rate: c.rate,
        burst: c.burst,
        key: parse_key(&c.key),
        rejected_code: c.rejected_code,
        rejected_msg: c.rejected_msg,
        nodelay: c.nodelay,
        seed: seed ^ 0x6c72,
        per_route: true,
    });
    let limit_count =
        conf_in::<LimitCountConf>(plugins, label, "limit-count")?.map(|c| LimitCount {
            count: c.count,
            window_ns: c.time_window.saturating_mul(1_000_000_000),
            window_secs: c.time_window,
            key: parse_key(&c.key),
            rejected_code: c.rejected_code,
            rejected_msg: c.rejected_msg,
            show_headers: c.show_limit_quota_header,
            seed: match &c.group {
                Some(g) => key_hash(&[b"group", g.as_bytes()]),
                None => key_hash(&[b"source", sources.1.as_bytes()]),
            } ^ 0x6c63,
            per_route: c.group.is_none(),
        });
    if let Some(l) = &limit_req {
        if l.rate <= 0.0 || l.burst < 0.0 {
            return Err(CompileError(format!(
                "{label}.plugins.limit-req.rate: must be > 0"
            )));
        }
    }
    if let Some(l) = &limit_count {
        if l.count == 0 || l.window_ns == 0 {
            return Err(CompileError(format!(
                "{label}.plugins.limit-count.count: count and time_window must be > 0"
            )));
        }
    }
    Ok((limit_req, limit_count))
}

/// A global rule's `limit-req` / `limit-count`: applied to every request, before the route's (or
/// the consumer's), with one counter per key across all routes (APISIX keys a global rule's
/// counter by the rule, not the route).
pub struct GlobalLimits {
    pub limit_req: Option<LimitReq>,
    pub limit_count: Option<LimitCount>,
}

pub(crate) fn compile_global(g: &GlobalLimitsConf) -> Result<GlobalLimits, CompileError> {
    let source = format!("global_rule:{}", g.id);
    let label = format!("global_rules[{}]", g.id);
    let (mut limit_req, mut limit_count) = compile_limits(&g.plugins, &label, (&source, &source))?;
    if let Some(l) = &mut limit_req {
        l.per_route = false;
    }
    if let Some(l) = &mut limit_count {
        l.per_route = false;
    }
    Ok(GlobalLimits {
        limit_req,
        limit_count,
    })
}

pub(crate) fn compile_consumer(
    name: &str,
    c: &ConsumerLimitsConf,
) -> Result<ConsumerLimits, CompileError> {
    let label = format!("consumers[{name}]");
    let source = |plugin: &str| {
        let s = c
            .sources
            .get(plugin)
            .and_then(Value::as_str)
            .unwrap_or("consumer");
        if s == "consumer" {
            format!("consumer:{name}")
        } else {
            s.to_string()
        }
    };
    let sources = (source("limit-req"), source("limit-count"));
    let (limit_req, limit_count) = compile_limits(&c.plugins, &label, (&sources.0, &sources.1))?;
    Ok(ConsumerLimits {
        limit_req: c.plugins.contains_key("limit-req").then_some(limit_req),
        limit_count: c.plugins.contains_key("limit-count").then_some(limit_count),
    })
}

pub(crate) fn limit_key<'a>(
    k: &LimitKey,
    vars: &'a ReqVars<'a>,
) -> Option<std::borrow::Cow<'a, str>> {
    use crate::router::VarSource;
    match k {
        LimitKey::RemoteAddr => Some(std::borrow::Cow::Owned(crate::http1::ip_string(
            vars.remote,
        ))),
        LimitKey::ConsumerName => vars.consumer.map(std::borrow::Cow::Borrowed),
        LimitKey::Header(h) => vars
            .headers
            .get(h.as_str())
            .map(|v| String::from_utf8_lossy(v.as_bytes())),
        LimitKey::Var(name) => vars.var(name),
    }
}

pub(crate) fn rejected(code: u16, msg: Option<&str>) -> Response<GwBody> {
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

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// The names `quota_headers` and `quota_lines` set.
pub(crate) const QUOTA_HEADERS: &[&[u8]] = &[
    b"x-ratelimit-limit",
    b"x-ratelimit-remaining",
    b"x-ratelimit-reset",
];

pub(crate) fn quota_headers(h: &mut HeaderMap, [limit, remaining, reset]: [u64; 3]) {
    h.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(limit));
    h.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
    h.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(reset));
}

/// The same as encoded header lines, appended to lines passed through from the upstream.
pub(crate) fn quota_lines(lines: &mut Vec<u8>, quota: [u64; 3]) {
    for (name, n) in QUOTA_HEADERS.iter().zip(quota) {
        lines.extend_from_slice(name);
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        lines.extend_from_slice(b"\r\n");
    }
}

/// limit-count's quota for the response: (limit, remaining, reset seconds).
pub type Quota = [u64; 3];

/// What a limiter decision needs of the request.
pub(crate) struct Ctx<'a> {
    pub shm: &'a ShmTable,
    pub rec: &'a Recorder,
    pub route_id: &'a str,
    pub route_seed: u64,
    pub vars: &'a ReqVars<'a>,
}

impl Ctx<'_> {
    /// Count the request against `count`, then `req`: the quota to send and how long limit-req
    /// wants the request delayed (ns; 0 with `nodelay`), or the rejection.
    #[allow(clippy::result_large_err)] // the response is made once, on the way out
    pub(crate) fn apply(
        &self,
        count: Option<&LimitCount>,
        req: Option<&LimitReq>,
    ) -> Result<(Option<Quota>, u64), Response<GwBody>> {
        let mut quota = None;
        let mut delay_ns = 0;
        if let Some(lc) = count {
            if let Some(k) = limit_key(&lc.key, self.vars) {
                let d = self.shm.fixed_window(
                    lc.seed(self.route_seed) ^ key_hash(&[k.as_bytes()]),
                    lc.count,
                    lc.window_ns,
                    monotonic_ns(),
                );
                let reset = d.reset_ns.div_ceil(1_000_000_000).min(lc.window_secs);
                if !d.allowed {
                    self.rec.limit_rejected(self.route_id, "limit-count");
                    let mut r = rejected(lc.rejected_code, lc.rejected_msg.as_deref());
                    if lc.show_headers {
                        quota_headers(r.headers_mut(), [lc.count, 0, reset]);
                    }
                    return Err(r);
                }
                if lc.show_headers {
                    quota = Some([lc.count, d.remaining, reset]);
                }
            }
        }
        if let Some(lr) = req {
            if let Some(k) = limit_key(&lr.key, self.vars) {
                match self.shm.gcra(
                    lr.seed(self.route_seed) ^ key_hash(&[k.as_bytes()]),
                    lr.rate,
                    lr.burst,
                    monotonic_ns(),
                ) {
                    Err(()) => {
                        self.rec.limit_rejected(self.route_id, "limit-req");
                        return Err(rejected(lr.rejected_code, lr.rejected_msg.as_deref()));
                    }
                    Ok(delay) if !lr.nodelay => delay_ns = delay,
                    Ok(_) => {}
                }
            }
        }
        Ok((quota, delay_ns))
    }
}

/// Put limit-count's quota on the response: appended to the upstream's header lines when they are
/// passed through (the upstream's own were left out), else into the header map.
pub(crate) fn add_quota(resp: &mut Response<GwBody>, quota: Quota) {
    let raw = match resp.body_mut() {
        GwBody::Upstream(b) => b.raw_lines_mut(),
        _ => None,
    };
    match raw {
        Some(lines) => quota_lines(lines, quota),
        None => quota_headers(resp.headers_mut(), quota),
    }
}
