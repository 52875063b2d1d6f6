//! Route matching with Apache APISIX semantics (`radixtree_uri` router:
//! lua-resty-radixtree + lua-resty-expr).
//!
//! # Matching order
//! 1. **Exact paths** (uris without `*` or a segment-leading `:`): hash lookup of
//!    the whole path. Candidates in *match order* (below).
//! 2. **Radix tree** (prefix and parameter uris), keyed by the uri up to its first
//!    `*` / `:param` marker, as raw bytes. Every key that is a byte-prefix of the
//!    request path is tried, **longest key first**; within one key, candidates in
//!    match order. `/a/*` is stored under `/a/`, `/a*` under `/a` (so it matches
//!    `/a`, `/a/x` and `/ab`), `/user/:id` under `/user/` plus a full-path pattern
//!    check, `/*` (and a route without uris) under `/`.
//!
//! So an exact route beats every prefix/param route whatever the priorities, a
//! longer prefix beats a shorter one, and a parameter route ranks by the literal
//! part before its first parameter: `/user/:id` sits with `/user/*` (same key
//! `/user/`), below `/user/profile/*` and above `/*`.
//!
//! *Match order* among candidates sharing an exact path or a tree key (radixtree
//! `sort_route`): higher `priority` first; on equal priority the longer original
//! uri first (so `/user/:id` is tried before `/user/*`); then earlier spec
//! index (then earlier uri in the spec). A candidate whose methods / remote_addrs /
//! hosts / vars (or parameter pattern) do not match falls through to the next
//! candidate, then to shorter keys.
//!
//! # Predicates
//! * `hosts`: case-insensitive. `*.example.com` is a suffix match on
//!   `.example.com` (any depth: `a.b.example.com`, never `example.com`). A host
//!   pattern containing `:` is compared with the `http_host` var (host with port),
//!   like radixtree.
//! * `methods`: uppercase comparison.
//! * `remote_addrs`: addresses and CIDRs, v4/v6; IPv4-mapped IPv6 clients match
//!   IPv4 networks.
//! * `vars`: lua-resty-expr rules, documented in `vars.rs`.
//!
//! Checked against lua-resty-radixtree `lib/resty/radixtree.lua` (hash_path for
//! `=` paths, `radix_tree_search`/`radix_tree_up` longest-prefix-first walk,
//! `sort_route`, `match_route_opts`, `compare_param`, `match_host`/`has_suffix`)
//! and lua-resty-expr `lib/resty/expr/v1.lua`, plus APISIX docs
//! `router-radixtree.md` (the "Match priority" table is a unit test).
//!
//! # Deliberate deviations from radixtree
//! * A `:` only starts a parameter at the beginning of a segment. radixtree
//!   treats any `:` as a marker, which turns `/v1/things:batchGet` into a prefix
//!   match on `/v1/things`; here it is an exact path.
//! * Literal segments of parameter uris match literally (radixtree pastes them
//!   unescaped into a PCRE, so `/a.b/:x` would also match `/aXb/1`).
//! * Errors radixtree/expr would only hit at request time (regex syntax, a
//!   non-string regex, wrong arity such as `[var, op]` without a value or five
//!   elements, a bad `ipmatch` address) are build errors here. Regexes use the
//!   Rust `regex` syntax (no look-around / back-references).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

mod ip;
mod path;
pub mod reqvars;
mod tree;
mod vars;

#[cfg(test)]
mod tests;

use ip::IpSet;
use path::{ParamPattern, UriKind};
pub use reqvars::ReqVars;
use vars::Expr;

/// One route as the router sees it (built by the caller from the config snapshot).
pub struct RouteSpec {
    /// Exact `/a/b`, prefix `/a/*` or `/a*`, params `/user/:id`; empty = `/*`.
    pub uris: Vec<String>,
    /// `example.com`, `*.example.com`; empty = any host. Case-insensitive.
    pub hosts: Vec<String>,
    /// `GET`, ...; empty = any.
    pub methods: Vec<String>,
    /// `10.0.0.0/8`, `::1`, `192.168.1.5`; empty = any.
    pub remote_addrs: Vec<String>,
    /// lua-resty-expr expression.
    pub vars: Option<serde_json::Value>,
    pub priority: i64,
}

/// Request-side variables for `vars`; [`ReqVars`] reads them from a request (tests use maps).
pub trait VarSource {
    /// Names like "arg_foo", "http_x_api_key", "cookie_session", "uri", "host",
    /// "remote_addr", "request_method"; None when absent.
    fn var(&self, name: &str) -> Option<Cow<'_, str>>;
}

pub struct MatchInput<'a> {
    /// Already normalized, no query string.
    pub path: &'a str,
    /// Lowercase, port stripped.
    pub host: &'a str,
    /// Uppercase.
    pub method: &'a str,
    pub remote_addr: IpAddr,
    pub vars: &'a dyn VarSource,
}

#[derive(Debug)]
pub struct RouterError {
    /// Index into the specs slice.
    pub route: usize,
    /// "uris", "hosts", "methods", "remote_addrs" or "vars".
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route {}: invalid {}: {}",
            self.route, self.field, self.message
        )
    }
}

impl std::error::Error for RouterError {}

/// One (route, uri) candidate.
struct Entry {
    route: u32,
    priority: i64,
    uri_len: usize,
    /// Full-path pattern for parameter uris.
    param: Option<ParamPattern>,
}

struct HostPat {
    /// Lowercased; for wildcards the part after `*` (e.g. `.example.com`).
    host: Box<str>,
    wildcard: bool,
    /// Pattern has a port: compare with the `http_host` var.
    with_port: bool,
}

const KNOWN_METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

fn method_bit(m: &str) -> u16 {
    KNOWN_METHODS
        .iter()
        .position(|k| *k == m)
        .map_or(0, |i| 1 << i)
}

struct CompiledRoute {
    method_mask: u16,
    other_methods: Vec<Box<str>>,
    hosts: Vec<HostPat>,
    remote: Option<IpSet>,
    vars: Option<Expr>,
}

impl CompiledRoute {
    fn matches(&self, input: &MatchInput<'_>) -> bool {
        if self.method_mask != 0 || !self.other_methods.is_empty() {
            let bit = method_bit(input.method);
            let ok = if bit != 0 {
                self.method_mask & bit != 0
            } else {
                self.other_methods.iter().any(|m| **m == *input.method)
            };
            if !ok {
                return false;
            }
        }
        if let Some(set) = &self.remote {
            if !set.contains(input.remote_addr) {
                return false;
            }
        }
        if !self.hosts.is_empty() && !self.hosts.iter().any(|h| h.matches(input)) {
            return false;
        }
        match &self.vars {
            Some(expr) => expr.eval(input.vars),
            None => true,
        }
    }
}

impl HostPat {
    fn matches(&self, input: &MatchInput<'_>) -> bool {
        if self.with_port {
            match input.vars.var("http_host") {
                Some(h) => self.matches_host(&h),
                None => self.matches_host(input.host),
            }
        } else {
            self.matches_host(input.host)
        }
    }

    fn matches_host(&self, host: &str) -> bool {
        let (h, p) = (host.as_bytes(), self.host.as_bytes());
        if self.wildcard {
            h.len() >= p.len() && h[h.len() - p.len()..].eq_ignore_ascii_case(p)
        } else {
            h.eq_ignore_ascii_case(p)
        }
    }
}

/// Compiled route table. `Send + Sync`; immutable after [`Router::build`].
pub struct Router {
    routes: Vec<CompiledRoute>,
    exact: HashMap<Box<str>, Vec<Entry>>,
    tree: tree::Node<Entry>,
}

fn sort_entries(list: &mut [Entry]) {
    // Stable: equal (priority, uri length) keep spec/uri insertion order.
    list.sort_by(|a, b| b.priority.cmp(&a.priority).then(b.uri_len.cmp(&a.uri_len)));
}

fn compile_route(idx: usize, spec: &RouteSpec) -> Result<CompiledRoute, RouterError> {
    let err = |field: &'static str, message: String| RouterError {
        route: idx,
        field,
        message,
    };

    let mut method_mask = 0u16;
    let mut other_methods = Vec::new();
    for m in &spec.methods {
        let up = m.trim().to_ascii_uppercase();
        if up.is_empty() {
            return Err(err("methods", "empty method name".into()));
        }
        match method_bit(&up) {
            0 => other_methods.push(up.into_boxed_str()),
            bit => method_mask |= bit,
        }
    }

    let mut hosts = Vec::with_capacity(spec.hosts.len());
    for h in &spec.hosts {
        let lower = h.trim().to_ascii_lowercase();
        let (wildcard, rest) = match lower.strip_prefix('*') {
            Some(rest) => (true, rest.to_owned()),
            None => (false, lower),
        };
        if rest.is_empty() && !wildcard {
            return Err(err("hosts", "empty host".into()));
        }
        hosts.push(HostPat {
            with_port: rest.contains(':'),
            host: rest.into_boxed_str(),
            wildcard,
        });
    }

    let remote = if spec.remote_addrs.is_empty() {
        None
    } else {
        let set = IpSet::parse(spec.remote_addrs.iter().map(String::as_str))
            .map_err(|m| err("remote_addrs", m))?;
        (!set.is_empty()).then_some(set)
    };

    let vars = match &spec.vars {
        Some(v) => vars::compile_top(v).map_err(|m| err("vars", m))?,
        None => None,
    };

    Ok(CompiledRoute {
        method_mask,
        other_methods,
        hosts,
        remote,
        vars,
    })
}

impl Router {
    /// Compile. Invalid vars (unknown operator, bad regex, wrong arity), invalid
    /// CIDR, invalid uri (not starting with '/') -> Err naming route index + field.
    pub fn build(specs: &[RouteSpec]) -> Result<Router, RouterError> {
        let mut routes = Vec::with_capacity(specs.len());
        let mut exact: HashMap<Box<str>, Vec<Entry>> = HashMap::new();
        let mut tree = tree::Node::root();

        for (idx, spec) in specs.iter().enumerate() {
            let route = u32::try_from(idx).map_err(|_| RouterError {
                route: idx,
                field: "uris",
                message: "too many routes".into(),
            })?;
            routes.push(compile_route(idx, spec)?);

            let star = ["/*".to_owned()];
            let uris: &[String] = if spec.uris.is_empty() {
                &star
            } else {
                &spec.uris
            };
            for uri in uris {
                let kind = path::parse(uri).map_err(|message| RouterError {
                    route: idx,
                    field: "uris",
                    message,
                })?;
                let make = |param| Entry {
                    route,
                    priority: spec.priority,
                    uri_len: uri.len(),
                    param,
                };
                match kind {
                    UriKind::Exact(p) => exact
                        .entry(p.into_boxed_str())
                        .or_default()
                        .push(make(None)),
                    UriKind::Tree { key, pattern } => tree.insert(key.as_bytes(), make(pattern)),
                }
            }
        }

        for list in exact.values_mut() {
            sort_entries(list);
        }
        tree.for_each_mut(&mut |list: &mut Vec<Entry>| sort_entries(list));

        Ok(Router {
            routes,
            exact,
            tree,
        })
    }

    /// Index into `specs` of the matched route, or None (the caller answers 404).
    pub fn find(&self, input: &MatchInput<'_>) -> Option<usize> {
        if let Some(list) = self.exact.get(input.path) {
            for e in list {
                if self.routes[e.route as usize].matches(input) {
                    return Some(e.route as usize);
                }
            }
        }
        self.tree.find_map(input.path.as_bytes(), &mut |e: &Entry| {
            let ok = self.routes[e.route as usize].matches(input)
                && e.param.as_ref().is_none_or(|re| re.is_match(input.path));
            ok.then_some(e.route as usize)
        })
    }

    /// Number of routes (specs) compiled.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}
