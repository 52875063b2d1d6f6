//! The config snapshot the master pushes to every worker (JSON).
//!
//! The Python side (`pygateway/config/`) validates the user's APISIX-shaped config and flattens it:
//! services, plugin_configs and `upstream_id` references are already merged into each route here, so the
//! worker only compiles what it is given.
//!
//! The helpers every compile step shares live here too, below the route table (`proxy/table.rs`)
//! and the native plugins (`plugins/`) that both use them: [`conf_in`] parses one plugin's conf
//! and [`CompileError`] names what was wrong (docs/architecture.md, "The Rust core").
use serde::Deserialize;
use serde_json::{Map, Value};

/// A snapshot the worker cannot serve: the message names the object and field
/// (`routes[r1].plugins.gzip.comp_level: ...`). The worker keeps its last good table.
#[derive(Debug)]
pub struct CompileError(pub String);

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `plugins[name]` parsed; errors read `<label>.plugins.<name>: ...`.
pub(crate) fn conf_in<T: for<'de> Deserialize<'de>>(
    plugins: &Map<String, Value>,
    label: &str,
    name: &str,
) -> Result<Option<T>, CompileError> {
    match plugins.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| CompileError(format!("{label}.plugins.{name}: {e}"))),
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Snapshot {
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub routes: Vec<RouteConf>,
    /// A global rule enables `prometheus`: requests that match no route are counted too.
    #[serde(default)]
    pub metrics_unmatched: bool,
    /// Global `file-logger` / `http-logger` confs: they log requests that match no route too.
    #[serde(default)]
    pub unmatched_loggers: Map<String, Value>,
    /// Per consumer: its native limiter confs (`limit-count`, `limit-req`), its own over its group's.
    /// A `null` conf means the consumer overrides the route's with a Python implementation or a
    /// disabled conf, so the route's native limiter does not apply to it.
    #[serde(default)]
    pub consumer_limits: std::collections::HashMap<String, ConsumerLimitsConf>,
    /// Global rules' native limiters (`limit-count`, `limit-req`), applied to every request.
    #[serde(default)]
    pub global_limits: Vec<GlobalLimitsConf>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct GlobalLimitsConf {
    /// The global rule's id: its counters are the rule's, shared by every route.
    pub id: String,
    #[serde(default)]
    pub plugins: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ConsumerLimitsConf {
    /// Where the confs come from: `consumer` (the consumer's own) or `group:<id>` per plugin name.
    #[serde(default)]
    pub sources: Map<String, Value>,
    #[serde(default)]
    pub plugins: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct RouteConf {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub service_id: Option<String>,
    /// `uri` and `uris` merged; `/a/*` is a prefix, `/a/:id` has a parameter segment.
    #[serde(default)]
    pub uris: Vec<String>,
    /// `host` and `hosts` merged; `*.example.com` wildcards allowed.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// CIDRs or plain addresses, v4 or v6.
    #[serde(default)]
    pub remote_addrs: Vec<String>,
    /// APISIX `vars` expression (lua-resty-expr shape), unparsed.
    #[serde(default)]
    pub vars: Option<Value>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub upstream: Option<UpstreamConf>,
    /// Route-level timeout; overrides the upstream's.
    #[serde(default)]
    pub timeout: Option<TimeoutConf>,
    /// Native (Rust) plugin configs by name, e.g. `limit-req`, `limit-count`.
    #[serde(default)]
    pub plugins: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamConf {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type", default = "default_lb")]
    pub lb_type: String,
    #[serde(default)]
    pub nodes: Vec<NodeConf>,
    #[serde(default = "default_scheme")]
    pub scheme: String,
    #[serde(default = "default_pass_host")]
    pub pass_host: String,
    #[serde(default)]
    pub upstream_host: Option<String>,
    #[serde(default)]
    pub timeout: Option<TimeoutConf>,
    /// Extra tries on connection failure for idempotent requests; `None` = number of nodes - 1.
    #[serde(default)]
    pub retries: Option<u32>,
    /// chash only: `vars` | `header` | `cookie` | `consumer` | `vars_combinations`.
    #[serde(default = "default_hash_on")]
    pub hash_on: String,
    #[serde(default)]
    pub key: Option<String>,
    /// Verify the upstream's TLS certificate chain and name (`upstream.tls.verify`).
    #[serde(default = "default_true")]
    pub tls_verify: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeConf {
    pub host: String,
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub priority: i32,
}

/// Seconds, as in APISIX.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct TimeoutConf {
    #[serde(default = "default_connect")]
    pub connect: f64,
    #[serde(default = "default_rw")]
    pub send: f64,
    #[serde(default = "default_rw")]
    pub read: f64,
}

impl Default for TimeoutConf {
    fn default() -> Self {
        TimeoutConf {
            connect: default_connect(),
            send: default_rw(),
            read: default_rw(),
        }
    }
}

fn default_lb() -> String {
    "roundrobin".into()
}
fn default_scheme() -> String {
    "http".into()
}
fn default_pass_host() -> String {
    "pass".into()
}
fn default_hash_on() -> String {
    "vars".into()
}
fn default_true() -> bool {
    true
}
fn default_weight() -> u32 {
    1
}
fn default_connect() -> f64 {
    5.0
}
fn default_rw() -> f64 {
    15.0
}
