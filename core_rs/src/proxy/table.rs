//! The compiled route table a worker serves from: built from a `Snapshot` off the hot path and
//! published atomically (arc-swap), so a config change never blocks or fails a request.
use crate::config::{conf_in, CompileError, RouteConf, Snapshot, TimeoutConf, UpstreamConf};
use crate::limit::key_hash;
use crate::observe::{NodePool, RouteObs};
use crate::plugins::limit::{
    compile_consumer, compile_global, compile_limits, ConsumerLimits, Limits,
};
use crate::plugins::prometheus::PrometheusConf;
use crate::proxy::phases::PluginChain;
use crate::router::{RouteSpec, Router};
use crate::upstream::lb::{Balancer, LbKind};
use http::HeaderValue;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct RouteTable<C: PluginChain> {
    pub version: u64,
    pub router: Router,
    pub routes: Vec<CompiledRoute<C>>,
    /// Count requests that match no route (a global rule enables `prometheus`).
    pub metrics_unmatched: bool,
    /// Global `file-logger` / `http-logger`: log requests that match no route (as APISIX does).
    pub unmatched_loggers: Option<Arc<crate::plugins::loggers::RouteLoggers>>,
    /// Native limiters configured on consumers and consumer groups, by username.
    pub consumer_limits: HashMap<String, ConsumerLimits>,
    /// Global rules' `limit-count` / `limit-req`, applied to every routed request.
    pub global_limits: Vec<Limits>,
}

pub struct CompiledRoute<C: PluginChain> {
    pub id: Arc<str>,
    pub upstream: Arc<Upstream>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// The route's `limit-req` / `limit-count` (a consumer's replace them).
    pub limits: Limits,
    pub chain: Option<Arc<C>>,
    /// Mixed into the seed of limiters whose counters are per route.
    pub seed: u64,
    /// Labels for metrics and the access log.
    pub obs: Arc<RouteObs>,
    /// The `opentelemetry` plugin: trace context and spans.
    pub otel: Option<crate::plugins::otel::OtelConf>,
    /// The `real-ip` plugin: the client address from a trusted proxy's header.
    pub real_ip: Option<crate::plugins::realip::RealIp>,
    /// `file-logger` / `http-logger`.
    pub loggers: Option<Arc<crate::plugins::loggers::RouteLoggers>>,
    /// The `gzip` plugin: compress eligible responses.
    pub gzip: Option<crate::plugins::gzip::GzipConf>,
}

pub struct Upstream {
    /// `name` label of upstream metrics: the upstream id, or the route id for an inline one.
    pub name: Arc<str>,
    pub nodes: Vec<Node>,
    pub balancer: Balancer,
    pub https: bool,
    pub tls_verify: bool,
    pub pass_host: PassHost,
    pub retries: usize,
    pub hash_on: HashOn,
}

impl NodePool for Upstream {
    fn name(&self) -> &str {
        &self.name
    }
    fn addr(&self, i: usize) -> (&str, u16) {
        (self.nodes[i].addr_host.as_str(), self.nodes[i].port)
    }
    fn health(&self, i: usize) -> &std::sync::atomic::AtomicU8 {
        &self.nodes[i].health
    }
}

pub struct Node {
    /// The host as configured (an IPv6 literal without brackets): what to connect to.
    pub addr_host: String,
    pub port: u16,
    /// `host:port` as a Host header value (pass_host: node) and URI authority.
    pub authority: HeaderValue,
    /// Passive health last reported to metrics: 0 unknown, 1 reachable, 2 not.
    pub health: std::sync::atomic::AtomicU8,
}

pub enum PassHost {
    Pass,
    Node,
    Rewrite(HeaderValue),
}

/// What chash hashes on (APISIX `hash_on` + `key`).
pub enum HashOn {
    None,
    Var(String),
    Header(String),
    Cookie(String),
    Consumer,
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.001))
}

fn plugin_conf<T: for<'de> Deserialize<'de>>(
    route: &RouteConf,
    name: &str,
) -> Result<Option<T>, CompileError> {
    conf_in(&route.plugins, &format!("routes[{}]", route.id), name)
}

fn compile_upstream(route_id: &str, u: &UpstreamConf) -> Result<Upstream, CompileError> {
    let err = |field: &str, msg: String| {
        CompileError(format!("routes[{route_id}].upstream.{field}: {msg}"))
    };
    let kind = LbKind::parse(&u.lb_type)
        .ok_or_else(|| err("type", format!("unknown balancer {:?}", u.lb_type)))?;
    let mut nodes = Vec::with_capacity(u.nodes.len());
    for n in &u.nodes {
        let host = if n.host.contains(':') && !n.host.starts_with('[') {
            format!("[{}]", n.host) // IPv6 literal in an authority
        } else {
            n.host.clone()
        };
        let authority = HeaderValue::from_str(&format!("{host}:{}", n.port))
            .map_err(|_| err("nodes", format!("invalid host {:?}", n.host)))?;
        nodes.push(Node {
            addr_host: n
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: n.port,
            authority,
            health: Default::default(),
        });
    }
    if nodes.is_empty() {
        return Err(err("nodes", "at least one node is required".into()));
    }
    let weights: Vec<u32> = u.nodes.iter().map(|n| n.weight).collect();
    let pass_host = match u.pass_host.as_str() {
        "pass" => PassHost::Pass,
        "node" => PassHost::Node,
        "rewrite" => {
            let h = u.upstream_host.as_deref().unwrap_or("");
            PassHost::Rewrite(
                HeaderValue::from_str(h)
                    .map_err(|_| err("upstream_host", "invalid host".into()))?,
            )
        }
        other => return Err(err("pass_host", format!("unknown value {other:?}"))),
    };
    let https = match u.scheme.as_str() {
        "http" => false,
        "https" => true,
        other => return Err(err("scheme", format!("unsupported scheme {other:?}"))),
    };
    let key = u.key.clone().unwrap_or_default();
    let hash_on = match (kind_is_chash(&u.lb_type), u.hash_on.as_str()) {
        (false, _) => HashOn::None,
        (true, "vars") => HashOn::Var(if key.is_empty() {
            "remote_addr".into()
        } else {
            key
        }),
        (true, "header") => HashOn::Header(key.to_ascii_lowercase()),
        (true, "cookie") => HashOn::Cookie(key),
        (true, "consumer") => HashOn::Consumer,
        (true, other) => return Err(err("hash_on", format!("unsupported value {other:?}"))),
    };
    let retries = u
        .retries
        .map(|r| r as usize)
        .unwrap_or(nodes.len().saturating_sub(1));
    Ok(Upstream {
        name: Arc::from(u.id.as_deref().unwrap_or(route_id)),
        balancer: Balancer::new(kind, &weights),
        nodes,
        https,
        tls_verify: u.tls_verify,
        pass_host,
        retries,
        hash_on,
    })
}

fn kind_is_chash(t: &str) -> bool {
    t == "chash"
}

fn compile_route<C: PluginChain>(
    r: &RouteConf,
    chain: Option<Arc<C>>,
) -> Result<CompiledRoute<C>, CompileError> {
    let u = r
        .upstream
        .as_ref()
        .ok_or_else(|| CompileError(format!("routes[{}].upstream: required", r.id)))?;
    let upstream = compile_upstream(&r.id, u)?;
    let t: TimeoutConf = r.timeout.or(u.timeout).unwrap_or_default();
    let limits = compile_limits(&r.plugins, &format!("routes[{}]", r.id), ("", ""))?;
    let real_ip = match r.plugins.get("real-ip") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            crate::plugins::realip::RealIp::compile(v)
                .map_err(|e| CompileError(format!("routes[{}].plugins.real-ip.{e}", r.id)))?,
        ),
    };
    let gzip = plugin_conf::<crate::plugins::gzip::RawConf>(r, "gzip")?
        .map(|c| c.compile())
        .transpose()
        .map_err(|e| CompileError(format!("routes[{}].plugins.gzip.{e}", r.id)))?;
    let prometheus = plugin_conf::<PrometheusConf>(r, "prometheus")?;
    let id: Arc<str> = Arc::from(r.id.as_str());
    let obs = RouteObs {
        label: PrometheusConf::label(prometheus.as_ref(), &id, r.name.as_deref()),
        id: id.clone(),
        name: r.name.clone().unwrap_or_default(),
        service: r.service_id.clone().unwrap_or_default(),
        matched_uri: r.uris.first().cloned().unwrap_or_default(),
        matched_host: r.hosts.first().cloned().unwrap_or_default(),
        metrics: prometheus.is_some(),
    };
    Ok(CompiledRoute {
        id,
        upstream: Arc::new(upstream),
        connect_timeout: secs(t.connect),
        read_timeout: secs(t.read),
        limits,
        chain,
        seed: key_hash(&[r.id.as_bytes()]),
        obs: Arc::new(obs),
        otel: plugin_conf(r, "opentelemetry")?,
        real_ip,
        loggers: crate::plugins::loggers::compile(r)?,
        gzip,
    })
}

impl<C: PluginChain> RouteTable<C> {
    pub fn empty() -> RouteTable<C> {
        RouteTable {
            version: 0,
            router: Router::build(&[]).expect("empty router"),
            routes: Vec::new(),
            metrics_unmatched: false,
            unmatched_loggers: None,
            consumer_limits: HashMap::new(),
            global_limits: Vec::new(),
        }
    }

    /// `chain_for(route_id)` gives the route's Python plugin chain (global rules' plugins first), if any.
    pub fn compile(
        snap: &Snapshot,
        mut chain_for: impl FnMut(&str) -> Option<Arc<C>>,
    ) -> Result<RouteTable<C>, CompileError> {
        let specs: Vec<RouteSpec> = snap
            .routes
            .iter()
            .map(|r| RouteSpec {
                uris: r.uris.clone(),
                hosts: r.hosts.clone(),
                methods: r.methods.clone(),
                remote_addrs: r.remote_addrs.clone(),
                vars: r.vars.clone(),
                priority: r.priority,
            })
            .collect();
        let router = Router::build(&specs).map_err(|e| {
            let id = snap
                .routes
                .get(e.route)
                .map(|r| r.id.as_str())
                .unwrap_or("?");
            CompileError(format!("routes[{id}].{}: {}", e.field, e.message))
        })?;
        let mut routes = Vec::with_capacity(snap.routes.len());
        for r in &snap.routes {
            routes.push(compile_route(r, chain_for(&r.id))?);
        }
        let mut consumer_limits = HashMap::with_capacity(snap.consumer_limits.len());
        for (name, c) in &snap.consumer_limits {
            consumer_limits.insert(name.clone(), compile_consumer(name, c)?);
        }
        let global_limits = snap
            .global_limits
            .iter()
            .map(compile_global)
            .collect::<Result<_, _>>()?;
        Ok(RouteTable {
            consumer_limits,
            global_limits,
            version: snap.version,
            router,
            routes,
            metrics_unmatched: snap.metrics_unmatched,
            unmatched_loggers: crate::plugins::loggers::compile(&RouteConf {
                id: "global".into(),
                plugins: snap.unmatched_loggers.clone(),
                ..Default::default()
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(
        consumer_limits: Value,
    ) -> Result<RouteTable<crate::proxy::tests::FakeChain>, CompileError> {
        let snap: Snapshot = serde_json::from_value(serde_json::json!({
            "routes": [
                {"id": "a", "uris": ["/a"], "upstream": {"nodes": [{"host": "127.0.0.1", "port": 1}]}},
                {"id": "b", "uris": ["/b"], "upstream": {"nodes": [{"host": "127.0.0.1", "port": 1}]},
                 "plugins": {"limit-count": {"count": 9, "time_window": 1}}},
            ],
            "consumer_limits": consumer_limits,
        }))
        .unwrap();
        RouteTable::compile(&snap, |_| None)
    }

    #[test]
    fn consumer_conf_errors_name_the_consumer_and_field() {
        let err = table(serde_json::json!({"jack": {
            "plugins": {"limit-count": {"count": 0, "time_window": 1}},
            "sources": {"limit-count": "consumer"},
        }}))
        .err()
        .unwrap();
        assert!(
            err.0
                .starts_with("consumers[jack].plugins.limit-count.count:"),
            "{err}"
        );
        let err = table(serde_json::json!({"rose": {"plugins": {"limit-req": {"rate": 1}}}}))
            .err()
            .unwrap();
        assert!(
            err.0
                .starts_with("consumers[rose].plugins.limit-req: missing field `burst`"),
            "{err}"
        );
    }

    #[test]
    fn precedence_and_counter_identity() {
        let conf = |extra: Value| {
            let mut c = serde_json::json!({"count": 2, "time_window": 1, "key": "consumer_name"});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            c
        };
        let t = table(serde_json::json!({
            "jack": {"plugins": {"limit-count": conf(serde_json::json!({}))}, "sources": {"limit-count": "group:free"}},
            "rose": {"plugins": {"limit-count": conf(serde_json::json!({}))}, "sources": {"limit-count": "group:free"}},
            "tom": {"plugins": {"limit-count": conf(serde_json::json!({}))}},
            "vip": {"plugins": {"limit-count": conf(serde_json::json!({"group": "pool"}))}},
            "redis": {"plugins": {"limit-count": null}},
        }))
        .unwrap();
        let (a, b) = (&t.routes[0], &t.routes[1]);
        let pick = |who: Option<&str>, r: &CompiledRoute<_>| {
            ConsumerLimits::effective(&t.consumer_limits, who, &r.limits)
                .0
                .map(|l| (l.count, l.seed(r.seed)))
        };
        assert_eq!(pick(None, b).unwrap().0, 9); // no consumer: the route's
        assert_eq!(pick(Some("mike"), b).unwrap().0, 9); // no conf of its own: the route's
        assert_eq!(pick(Some("redis"), b), None); // overridden by a Python conf
        assert_eq!(pick(Some("jack"), b).unwrap().0, 2);
        // One group's conf: one counter per route, shared by its consumers (the key tells them apart).
        assert_eq!(pick(Some("jack"), a), pick(Some("rose"), a));
        assert_ne!(pick(Some("jack"), a), pick(Some("jack"), b));
        assert_ne!(pick(Some("jack"), a), pick(Some("tom"), a)); // the consumer's own conf
                                                                 // `group`: one counter across routes.
        assert_eq!(pick(Some("vip"), a), pick(Some("vip"), b));
    }
}
