//! `limit-req` and `limit-count`, native: their confs, compile, key and quota headers. Counters live in
//! the shared-memory limiter table (`crate::limit`), exact across workers.
//!
//! A decision is a value ([`Ctx::apply`]: the quota and delay, or a [`Rejected`]); the proxy turns a
//! rejection into the response and puts the quota on the way out, so this file knows nothing of
//! the proxy's body or route types (plugins sit below the proxy: docs/architecture.md, "The Rust
//! core").
use crate::config::{conf_in, CompileError, ConsumerLimitsConf, GlobalLimitsConf};
use crate::limit::{key_hash, monotonic_ns, ShmTable};
use crate::observe::metrics::Recorder;
use crate::router::ReqVars;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
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

/// The `limit-req` and `limit-count` of a route, or of a global rule.
#[derive(Default)]
pub struct Limits {
    pub limit_req: Option<LimitReq>,
    pub limit_count: Option<LimitCount>,
}

impl ConsumerLimits {
    /// The limiters that apply to a request of `consumer` on a route with limiters `route`.
    /// Inlined: called on every routed request, and the plain route's answer is two `None`s
    /// (out of line it cost ~30 instructions a request, callgrind).
    #[inline]
    pub fn effective<'a>(
        table: &'a HashMap<String, ConsumerLimits>,
        consumer: Option<&str>,
        route: &'a Limits,
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
) -> Result<Limits, CompileError> {
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
    Ok(Limits {
        limit_req,
        limit_count,
    })
}

/// A global rule's `limit-req` / `limit-count`: applied to every request, before the route's (or
/// the consumer's), with one counter per key across all routes (APISIX keys a global rule's
/// counter by the rule, not the route).
pub(crate) fn compile_global(g: &GlobalLimitsConf) -> Result<Limits, CompileError> {
    let source = format!("global_rule:{}", g.id);
    let label = format!("global_rules[{}]", g.id);
    let mut limits = compile_limits(&g.plugins, &label, (&source, &source))?;
    if let Some(l) = &mut limits.limit_req {
        l.per_route = false;
    }
    if let Some(l) = &mut limits.limit_count {
        l.per_route = false;
    }
    Ok(limits)
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
    let Limits {
        limit_req,
        limit_count,
    } = compile_limits(&c.plugins, &label, (&sources.0, &sources.1))?;
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

/// A limiter refused the request: the answer to give, built by the proxy as a gateway-made error
/// (`{"error_msg": msg}`).
#[derive(Debug, PartialEq)]
pub struct Rejected<'a> {
    /// The conf's `rejected_code` (503 if it is not a status).
    pub status: StatusCode,
    /// The conf's `rejected_msg`, else the status's reason phrase.
    pub msg: &'a str,
    /// limit-count's quota headers (with none remaining), when it shows them.
    pub quota: Option<Quota>,
}

impl<'a> Rejected<'a> {
    fn new(code: u16, msg: Option<&'a str>, quota: Option<Quota>) -> Rejected<'a> {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        Rejected {
            status,
            msg: msg.unwrap_or(status.canonical_reason().unwrap_or("rejected")),
            quota,
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
    pub(crate) fn apply<'c>(
        &self,
        count: Option<&'c LimitCount>,
        req: Option<&'c LimitReq>,
    ) -> Result<(Option<Quota>, u64), Rejected<'c>> {
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
                    let quota = lc.show_headers.then_some([lc.count, 0, reset]);
                    return Err(Rejected::new(
                        lc.rejected_code,
                        lc.rejected_msg.as_deref(),
                        quota,
                    ));
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
                        return Err(Rejected::new(
                            lr.rejected_code,
                            lr.rejected_msg.as_deref(),
                            None,
                        ));
                    }
                    Ok(delay) if !lr.nodelay => delay_ns = delay,
                    Ok(_) => {}
                }
            }
        }
        Ok((quota, delay_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::shm::MetricsShm;
    use std::sync::Arc;

    fn limits(plugins: serde_json::Value) -> Limits {
        compile_limits(plugins.as_object().unwrap(), "routes[r]", ("", "")).unwrap()
    }

    #[test]
    fn decisions_are_values_with_the_confs_answer() {
        let shm = ShmTable::anonymous(1024).unwrap();
        let rec = Recorder::new(Arc::new(MetricsShm::anonymous(1, 1 << 16).unwrap()), 0);
        let headers = HeaderMap::new();
        let vars = ReqVars {
            headers: &headers,
            query: None,
            path: "/",
            host: "h",
            method: "GET",
            remote: "10.0.0.1".parse().unwrap(),
            scheme: "http",
            consumer: None,
        };
        let ctx = Ctx {
            shm: &shm,
            rec: &rec,
            route_id: "r",
            route_seed: 7,
            vars: &vars,
        };
        let count = limits(serde_json::json!({"limit-count": {
            "count": 2, "time_window": 60, "rejected_code": 429, "rejected_msg": "slow down"
        }}));
        let lc = count.limit_count.as_ref();
        let (quota, delay) = ctx.apply(lc, None).unwrap();
        assert_eq!(
            (quota.map(|q| q[..2].to_vec()), delay),
            (Some(vec![2, 1]), 0)
        );
        ctx.apply(lc, None).unwrap();
        let no = ctx.apply(lc, None).unwrap_err();
        assert_eq!(
            (no.status, no.msg),
            (StatusCode::TOO_MANY_REQUESTS, "slow down")
        );
        assert_eq!(no.quota.map(|q| q[..2].to_vec()), Some(vec![2, 0]));

        // No message: the status's reason phrase; limit-req shows no quota.
        let req = limits(serde_json::json!({"limit-req": {
            "rate": 1, "burst": 0, "nodelay": true
        }}));
        let lr = req.limit_req.as_ref();
        ctx.apply(None, lr).unwrap();
        let no = ctx.apply(None, lr).unwrap_err();
        assert_eq!(
            no,
            Rejected {
                status: StatusCode::SERVICE_UNAVAILABLE,
                msg: "Service Unavailable",
                quota: None,
            }
        );
    }
}
