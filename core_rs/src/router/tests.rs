use super::*;
use serde_json::{json, Value};

struct Vars(Vec<(&'static str, &'static str)>);

impl VarSource for Vars {
    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| Cow::Borrowed(*v))
    }
}

fn r(uris: &[&str]) -> RouteSpec {
    RouteSpec {
        uris: uris.iter().map(|s| s.to_string()).collect(),
        hosts: vec![],
        methods: vec![],
        remote_addrs: vec![],
        vars: None,
        priority: 0,
    }
}

trait SpecExt {
    fn hosts(self, h: &[&str]) -> Self;
    fn methods(self, m: &[&str]) -> Self;
    fn remote(self, a: &[&str]) -> Self;
    fn vars(self, v: Value) -> Self;
    fn prio(self, p: i64) -> Self;
}

impl SpecExt for RouteSpec {
    fn hosts(mut self, h: &[&str]) -> Self {
        self.hosts = h.iter().map(|s| s.to_string()).collect();
        self
    }
    fn methods(mut self, m: &[&str]) -> Self {
        self.methods = m.iter().map(|s| s.to_string()).collect();
        self
    }
    fn remote(mut self, a: &[&str]) -> Self {
        self.remote_addrs = a.iter().map(|s| s.to_string()).collect();
        self
    }
    fn vars(mut self, v: Value) -> Self {
        self.vars = Some(v);
        self
    }
    fn prio(mut self, p: i64) -> Self {
        self.priority = p;
        self
    }
}

#[derive(Clone)]
struct Req {
    path: &'static str,
    host: &'static str,
    method: &'static str,
    ip: &'static str,
    vars: Vec<(&'static str, &'static str)>,
}

fn get(path: &'static str) -> Req {
    Req {
        path,
        host: "example.com",
        method: "GET",
        ip: "127.0.0.1",
        vars: vec![],
    }
}

impl Req {
    fn host(mut self, h: &'static str) -> Self {
        self.host = h;
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn ip(mut self, ip: &'static str) -> Self {
        self.ip = ip;
        self
    }
    fn var(mut self, k: &'static str, v: &'static str) -> Self {
        self.vars.push((k, v));
        self
    }
}

fn find(router: &Router, req: &Req) -> Option<usize> {
    let vars = Vars(req.vars.clone());
    router.find(&MatchInput {
        path: req.path,
        host: req.host,
        method: req.method,
        remote_addr: req.ip.parse().unwrap(),
        vars: &vars,
    })
}

/// (name, routes, [(request, expected route index)])
type Case = (&'static str, Vec<RouteSpec>, Vec<(Req, Option<usize>)>);

fn run(cases: Vec<Case>) -> usize {
    let mut n = 0;
    for (name, specs, checks) in cases {
        let router = Router::build(&specs).unwrap_or_else(|e| panic!("{name}: build: {e}"));
        assert_eq!(router.len(), specs.len());
        for (req, want) in checks {
            let got = find(&router, &req);
            assert_eq!(
                got, want,
                "case {name:?}: path={} host={} method={} ip={} vars={:?}",
                req.path, req.host, req.method, req.ip, req.vars
            );
            n += 1;
        }
    }
    n
}

#[test]
fn router_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Router>();
}

#[test]
fn path_precedence() {
    run(vec![
        (
            // The table from APISIX docs/router-radixtree.md "Match priority".
            "apisix doc table",
            vec![
                r(&["/blog/foo/*"]),
                r(&["/blog/foo/a/*"]),
                r(&["/blog/foo/c/*"]),
                r(&["/blog/foo/bar"]),
            ],
            vec![
                (get("/blog/foo/bar"), Some(3)),
                (get("/blog/foo/a/b/c"), Some(1)),
                (get("/blog/foo/c/d"), Some(2)),
                (get("/blog/foo/gloo"), Some(0)),
                (get("/blog/bar"), None),
                // "/blog/foo/*" is keyed "/blog/foo/": no match without the slash.
                (get("/blog/foo"), None),
                (get("/blog/foo/"), Some(0)),
                (get("/blog/foo/a/"), Some(1)),
                (get("/blog/foo/a"), Some(0)),
            ],
        ),
        (
            "byte prefix without slash",
            vec![r(&["/blog/bar*"])],
            vec![
                (get("/blog/bar"), Some(0)),
                (get("/blog/bar/a"), Some(0)),
                (get("/blog/bar/c/d/e"), Some(0)),
                (get("/blog/barn"), Some(0)),
                (get("/blog/ba"), None),
                (get("/blog"), None),
            ],
        ),
        (
            "exact beats prefix regardless of priority",
            vec![r(&["/a/*"]).prio(100), r(&["/a/b"])],
            vec![
                (get("/a/b"), Some(1)),
                (get("/a/b/c"), Some(0)),
                (get("/a/c"), Some(0)),
            ],
        ),
        (
            "longer prefix beats shorter, regardless of priority",
            vec![
                r(&["/*"]).prio(100),
                r(&["/api/*"]),
                r(&["/api/v1/*"]).prio(-5),
            ],
            vec![
                (get("/api/v1/x"), Some(2)),
                (get("/api/v2/x"), Some(1)),
                (get("/other"), Some(0)),
                (get("/"), Some(0)),
            ],
        ),
        (
            "exact only matches the whole path",
            vec![r(&["/hello"])],
            vec![
                (get("/hello"), Some(0)),
                (get("/hello/"), None),
                (get("/hell"), None),
                (get("/hello2"), None),
            ],
        ),
        (
            "empty uris means any path",
            vec![r(&[])],
            vec![(get("/"), Some(0)), (get("/anything/at/all"), Some(0))],
        ),
        (
            "several uris in one route",
            vec![r(&["/x", "/y/*"]), r(&["/y/z"])],
            vec![
                (get("/x"), Some(0)),
                (get("/y/a"), Some(0)),
                (get("/y/z"), Some(1)),
                (get("/z"), None),
            ],
        ),
        ("no routes", vec![], vec![(get("/"), None)]),
    ]);
}

#[test]
fn priority_and_ties() {
    run(vec![
        (
            "same exact uri: higher priority first",
            vec![
                r(&["/hello"]).prio(1),
                r(&["/hello"]).prio(3),
                r(&["/hello"]).prio(2),
            ],
            vec![(get("/hello"), Some(1))],
        ),
        (
            "same exact uri, equal priority: earlier index first",
            vec![r(&["/hello"]), r(&["/hello"])],
            vec![(get("/hello"), Some(0))],
        ),
        (
            "same prefix: higher priority first, then index",
            vec![r(&["/p/*"]), r(&["/p/*"]).prio(5), r(&["/p/*"]).prio(5)],
            vec![(get("/p/x"), Some(1))],
        ),
        (
            "negative priority ranks below default",
            vec![r(&["/n"]).prio(-1), r(&["/n"])],
            vec![(get("/n"), Some(1))],
        ),
        (
            "priority falls through to lower one when predicates fail",
            vec![
                r(&["/hello"]).prio(10).hosts(&["foo.com"]),
                r(&["/hello"]).prio(5).methods(&["POST"]),
                r(&["/hello"]),
            ],
            vec![
                (get("/hello").host("foo.com"), Some(0)),
                (get("/hello").method("POST"), Some(1)),
                (get("/hello"), Some(2)),
            ],
        ),
    ]);
}

#[test]
fn fall_through() {
    run(vec![
        (
            "host",
            vec![
                r(&["/a"]).hosts(&["foo.com"]),
                r(&["/a"]).hosts(&["bar.com"]),
                r(&["/a/*"]).hosts(&["baz.com"]),
            ],
            vec![
                (get("/a").host("foo.com"), Some(0)),
                (get("/a").host("bar.com"), Some(1)),
                (get("/a").host("baz.com"), None),
                (get("/a/x").host("baz.com"), Some(2)),
            ],
        ),
        (
            "host falls to shorter prefix",
            vec![r(&["/a/b/*"]).hosts(&["foo.com"]), r(&["/a/*"])],
            vec![
                (get("/a/b/c").host("foo.com"), Some(0)),
                (get("/a/b/c").host("other.com"), Some(1)),
            ],
        ),
        (
            "exact falls through to prefix",
            vec![
                r(&["/a/b"]).methods(&["POST"]),
                r(&["/a/*"]).methods(&["GET"]),
            ],
            vec![
                (get("/a/b").method("POST"), Some(0)),
                (get("/a/b"), Some(1)),
                (get("/a/b").method("PUT"), None),
            ],
        ),
        (
            "method",
            vec![
                r(&["/m"]).methods(&["POST"]).prio(10),
                r(&["/m"]).methods(&["get", "HEAD"]),
                r(&["/m"]).methods(&["PURGE"]),
                r(&["/m"]).methods(&["CUSTOM"]),
            ],
            vec![
                (get("/m"), Some(1)),
                (get("/m").method("HEAD"), Some(1)),
                (get("/m").method("POST"), Some(0)),
                (get("/m").method("PURGE"), Some(2)),
                (get("/m").method("CUSTOM"), Some(3)),
                (get("/m").method("PUT"), None),
            ],
        ),
        (
            "remote_addr",
            vec![
                r(&["/r"]).remote(&["10.0.0.0/8"]).prio(3),
                r(&["/r"]).remote(&["192.168.1.5", "::1"]).prio(2),
                r(&["/r"]).remote(&["2001:db8::/32"]).prio(1),
                r(&["/*"]),
            ],
            vec![
                (get("/r").ip("10.1.2.3"), Some(0)),
                (get("/r").ip("::ffff:10.1.2.3"), Some(0)),
                (get("/r").ip("192.168.1.5"), Some(1)),
                (get("/r").ip("192.168.1.6"), Some(3)),
                (get("/r").ip("::1"), Some(1)),
                (get("/r").ip("2001:db8:1::7"), Some(2)),
                (get("/r").ip("2001:db9::1"), Some(3)),
                (get("/r").ip("11.0.0.1"), Some(3)),
            ],
        ),
        (
            "v4 client against mapped v6 network",
            vec![r(&["/r"]).remote(&["::ffff:10.0.0.0/104"])],
            vec![
                (get("/r").ip("10.9.9.9"), Some(0)),
                (get("/r").ip("11.0.0.1"), None),
            ],
        ),
        (
            "vars",
            vec![
                r(&["/v/*"]).vars(json!([["arg_name", "==", "json"]])),
                r(&["/v/*"]).vars(json!([["http_x_k", "~~", "^a"]])),
                r(&["/*"]).vars(json!([["arg_name", "==", "root"]])),
            ],
            vec![
                (get("/v/1").var("arg_name", "json"), Some(0)),
                (get("/v/1").var("http_x_k", "abc"), Some(1)),
                (get("/v/1").var("arg_name", "root"), Some(2)),
                (get("/v/1"), None),
            ],
        ),
    ]);
}

#[test]
fn hosts() {
    run(vec![(
        "wildcard and exact hosts",
        vec![
            r(&["/h"]).hosts(&["*.example.com"]),
            r(&["/h"]).hosts(&["Example.COM", "other.org"]),
            r(&["/h"]).hosts(&["*.org"]),
            r(&["/h"]).hosts(&["api.test:8080"]),
        ],
        vec![
            (get("/h").host("a.example.com"), Some(0)),
            (get("/h").host("a.b.example.com"), Some(0)),
            (get("/h").host("A.Example.Com"), Some(0)),
            (get("/h").host("example.com"), Some(1)),
            (get("/h").host("badexample.com"), None),
            (get("/h").host("other.org"), Some(1)),
            (get("/h").host("x.other.org"), Some(2)),
            (get("/h").host("nope.net"), None),
            (
                get("/h").host("api.test").var("http_host", "api.test:8080"),
                Some(3),
            ),
            (
                get("/h").host("api.test").var("http_host", "api.test:9090"),
                None,
            ),
        ],
    )]);
}

#[test]
fn params() {
    run(vec![
        (
            "single param",
            vec![r(&["/user/:id"])],
            vec![
                (get("/user/42"), Some(0)),
                (get("/user/"), None),
                (get("/user"), None),
                (get("/user/42/x"), None),
            ],
        ),
        (
            "param ranks with prefix of same key (longer uri first), below longer keys",
            vec![
                r(&["/*"]),
                r(&["/user/*"]),
                r(&["/user/:id"]),
                r(&["/user/profile/*"]),
                r(&["/user/me"]),
            ],
            vec![
                (get("/user/42"), Some(2)),
                (get("/user/42/books"), Some(1)),
                (get("/user/profile/x"), Some(3)),
                (get("/user/me"), Some(4)),
                (get("/user/"), Some(1)),
                (get("/users"), Some(0)),
            ],
        ),
        (
            "priority beats uri length within the same key",
            vec![r(&["/user/:id"]), r(&["/user/*"]).prio(1)],
            vec![(get("/user/42"), Some(1))],
        ),
        (
            "multiple params and catch-all",
            vec![
                r(&["/user/:id/books/:book"]),
                r(&["/files/*path"]),
                r(&["/a/*/z"]),
                r(&["/v1/things:batchGet"]),
            ],
            vec![
                (get("/user/1/books/2"), Some(0)),
                (get("/user/1/books/"), None),
                (get("/user/1/books/2/3"), None),
                (get("/files/a/b/c.txt"), Some(1)),
                (get("/files/"), Some(1)),
                (get("/a/b/c/z"), Some(2)),
                (get("/a/b/c/y"), None),
                (get("/v1/things:batchGet"), Some(3)),
                (get("/v1/things:batchDelete"), None),
            ],
        ),
        (
            "param plus trailing catch-all, and several catch-alls (regex fallback)",
            vec![
                r(&["/user/:id/*rest"]),
                r(&["/a/*x/b/*y/c"]),
                r(&["/m/*x/:id/n"]),
            ],
            vec![
                (get("/user/1/"), Some(0)),
                (get("/user/1/x/y"), Some(0)),
                (get("/user/1"), None),
                (get("/user//x"), None),
                (get("/a/1/b/2/c"), Some(1)),
                (get("/a/1/2/b/3/4/c"), Some(1)),
                (get("/a//b//c"), Some(1)),
                (get("/a/b/c"), None),
                (get("/a/1/b/2/d"), None),
                (get("/m/1/2/3/n"), Some(2)),
                (get("/m//3/n"), Some(2)),
                (get("/m/3/n"), None),
                (get("/m/1//n"), None),
            ],
        ),
        (
            "param literal parts are not regex",
            vec![r(&["/a.b/:x"])],
            vec![(get("/a.b/1"), Some(0)), (get("/aXb/1"), None)],
        ),
        (
            "param failure falls through to shorter key",
            vec![r(&["/"]), r(&["/api/:ver/status"]), r(&["/api*"])],
            vec![
                (get("/api/v1/status"), Some(1)),
                (get("/api/v1/other"), Some(2)),
                (get("/"), Some(0)),
            ],
        ),
    ]);
}

/// (expression, vars, expected)
type VarList = Vec<(&'static str, &'static str)>;

fn eval_cases() -> Vec<(Value, VarList, bool)> {
    vec![
        (json!([]), vec![], true),
        // ==
        (
            json!([["arg_name", "==", "json"]]),
            vec![("arg_name", "json")],
            true,
        ),
        (
            json!([["arg_name", "==", "json"]]),
            vec![("arg_name", "xml")],
            false,
        ),
        (json!([["arg_name", "==", "json"]]), vec![], false),
        (json!([["arg_n", "==", 10]]), vec![("arg_n", "10")], true),
        (json!([["arg_n", "==", 10]]), vec![("arg_n", "10.0")], true),
        (json!([["arg_n", "==", 10]]), vec![("arg_n", "abc")], false),
        (
            json!([["arg_n", "==", "10"]]),
            vec![("arg_n", "10.0")],
            false,
        ),
        (json!([["arg_n", "==", null]]), vec![], true),
        (json!([["arg_n", "==", null]]), vec![("arg_n", "1")], false),
        (
            json!([["arg_n", "==", true]]),
            vec![("arg_n", "true")],
            false,
        ),
        // ~=
        (
            json!([["arg_name", "~=", "json"]]),
            vec![("arg_name", "xml")],
            true,
        ),
        (
            json!([["arg_name", "~=", "json"]]),
            vec![("arg_name", "json")],
            false,
        ),
        (json!([["arg_name", "~=", "json"]]), vec![], true),
        (json!([["arg_n", "~=", 10]]), vec![("arg_n", "10")], false),
        (json!([["arg_n", "~=", 10]]), vec![("arg_n", "abc")], true),
        (json!([["arg_n", "~=", 10]]), vec![], true),
        (json!([["arg_n", "~=", null]]), vec![("arg_n", "x")], true),
        // numeric
        (json!([["arg_n", ">", 10]]), vec![("arg_n", "11")], true),
        (json!([["arg_n", ">", 10]]), vec![("arg_n", "10")], false),
        (json!([["arg_n", ">", 10]]), vec![("arg_n", "abc")], false),
        (json!([["arg_n", ">", 10]]), vec![], false),
        (json!([["arg_n", ">", 10]]), vec![("arg_n", "9")], false),
        (json!([["arg_n", ">", 15]]), vec![("arg_n", "0x10")], true),
        (json!([["arg_n", ">", 1]]), vec![("arg_n", " 2 ")], true),
        (json!([["arg_n", ">", 1]]), vec![("arg_n", "inf")], false),
        (json!([["arg_n", ">=", 10]]), vec![("arg_n", "10")], true),
        (json!([["arg_n", ">=", 10]]), vec![("arg_n", "9.5")], false),
        (json!([["arg_n", "<", "5"]]), vec![("arg_n", "4")], true),
        (json!([["arg_n", "<", "abc"]]), vec![("arg_n", "4")], false),
        (json!([["arg_n", "<=", 5]]), vec![("arg_n", "5")], true),
        (json!([["arg_n", "<=", 5]]), vec![("arg_n", "5e1")], false),
        // regex
        (
            json!([["http_x", "~~", "^a.*"]]),
            vec![("http_x", "abc")],
            true,
        ),
        (
            json!([["http_x", "~~", "^a.*"]]),
            vec![("http_x", "bac")],
            false,
        ),
        (
            json!([["http_x", "~~", "[Dd]ev"]]),
            vec![("http_x", "mydev1")],
            true,
        ),
        (json!([["http_x", "~~", "^a"]]), vec![], false),
        (
            json!([["http_x", "~~", "^ABC"]]),
            vec![("http_x", "abc")],
            false,
        ),
        (
            json!([["http_x", "~*", "^ABC"]]),
            vec![("http_x", "abcd")],
            true,
        ),
        // in
        (
            json!([["arg_v", "in", ["v1", "v2"]]]),
            vec![("arg_v", "v2")],
            true,
        ),
        (
            json!([["arg_v", "in", ["v1", "v2"]]]),
            vec![("arg_v", "v3")],
            false,
        ),
        (json!([["arg_v", "in", ["v1", "v2"]]]), vec![], false),
        (
            json!([["arg_v", "in", [1, 2]]]),
            vec![("arg_v", "1")],
            false,
        ),
        (json!([["arg_v", "in", "v1"]]), vec![("arg_v", "v1")], false),
        // has: request vars are strings, never tables
        (json!([["arg_v", "has", "a"]]), vec![("arg_v", "a")], false),
        (
            json!([["arg_v", "!", "has", "a"]]),
            vec![("arg_v", "a")],
            true,
        ),
        // ! negation
        (
            json!([["arg_x", "!", "==", "a"]]),
            vec![("arg_x", "a")],
            false,
        ),
        (
            json!([["arg_x", "!", "==", "a"]]),
            vec![("arg_x", "b")],
            true,
        ),
        (json!([["arg_x", "!", "==", "a"]]), vec![], true),
        (
            json!([["arg_w", "!", ">", 15]]),
            vec![("arg_w", "20")],
            false,
        ),
        (
            json!([["arg_x", "!", "~~", "^a"]]),
            vec![("arg_x", "b")],
            true,
        ),
        // ipmatch
        (
            json!([["remote_addr", "ipmatch", ["192.168.0.0/16", "::1"]]]),
            vec![("remote_addr", "192.168.3.4")],
            true,
        ),
        (
            json!([["remote_addr", "ipmatch", ["192.168.0.0/16", "::1"]]]),
            vec![("remote_addr", "10.0.0.1")],
            false,
        ),
        (
            json!([["remote_addr", "ipmatch", ["192.168.0.0/16", "::1"]]]),
            vec![("remote_addr", "::1")],
            true,
        ),
        (
            json!([["remote_addr", "ipmatch", "10.0.0.1"]]),
            vec![("remote_addr", "garbage")],
            false,
        ),
        (
            json!([["remote_addr", "ipmatch", "10.0.0.1"]]),
            vec![],
            false,
        ),
        // legacy two-element form: == with the lowercased value
        (json!([["arg_x", "JSON"]]), vec![("arg_x", "json")], true),
        (json!([["arg_x", "JSON"]]), vec![("arg_x", "JSON")], false),
        // operator case-insensitive
        (json!([["arg_v", "IN", ["a"]]]), vec![("arg_v", "a")], true),
        // implicit AND list
        (
            json!([["a", "==", "1"], ["b", "==", "2"]]),
            vec![("a", "1"), ("b", "2")],
            true,
        ),
        (
            json!([["a", "==", "1"], ["b", "==", "2"]]),
            vec![("a", "1")],
            false,
        ),
        // logical operators
        (
            json!(["AND", ["a", "==", "1"], ["b", "==", "2"]]),
            vec![("a", "1"), ("b", "2")],
            true,
        ),
        (
            json!(["AND", ["a", "==", "1"], ["b", "==", "2"]]),
            vec![("a", "1")],
            false,
        ),
        (
            json!(["OR", ["a", "==", "1"], ["b", "==", "2"]]),
            vec![("b", "2")],
            true,
        ),
        (
            json!(["or", ["a", "==", "1"], ["b", "==", "2"]]),
            vec![("b", "2")],
            true,
        ),
        (
            json!(["OR", ["a", "==", "1"], ["b", "==", "2"]]),
            vec![("b", "3")],
            false,
        ),
        (
            json!(["!AND", ["a", "==", "1"], ["b", "==", "2"]]),
            vec![("a", "1")],
            true,
        ),
        (
            json!(["!AND", ["a", "==", "1"], ["b", "==", "2"]]),
            vec![("a", "1"), ("b", "2")],
            false,
        ),
        (
            json!(["!OR", ["a", "==", "1"], ["b", "==", "2"]]),
            vec![],
            true,
        ),
        (
            json!(["!OR", ["a", "==", "1"], ["b", "==", "2"]]),
            vec![("a", "1")],
            false,
        ),
        // nested: not (name == json and (weight > 10 or not height > 15))
        (
            json!([
                "!AND",
                ["arg_name", "==", "json"],
                ["OR", ["arg_weight", ">", 10], ["arg_height", "!", ">", 15]]
            ]),
            vec![("arg_name", "json"), ("arg_weight", "11")],
            false,
        ),
        (
            json!([
                "!AND",
                ["arg_name", "==", "json"],
                ["OR", ["arg_weight", ">", 10], ["arg_height", "!", ">", 15]]
            ]),
            vec![
                ("arg_name", "json"),
                ("arg_weight", "5"),
                ("arg_height", "20"),
            ],
            true,
        ),
        (
            json!([
                "AND",
                ["arg_version", "==", "v2"],
                [
                    "OR",
                    ["arg_action", "==", "signup"],
                    ["arg_action", "==", "subscribe"]
                ]
            ]),
            vec![("arg_version", "v2"), ("arg_action", "subscribe")],
            true,
        ),
        (
            json!([
                "AND",
                ["arg_version", "==", "v2"],
                [
                    "OR",
                    ["arg_action", "==", "signup"],
                    ["arg_action", "==", "subscribe"]
                ]
            ]),
            vec![("arg_version", "v2"), ("arg_action", "login")],
            false,
        ),
        // AND list of nested groups
        (
            json!([["OR", ["a", "==", "1"], ["a", "==", "2"]], ["b", "==", "x"]]),
            vec![("a", "2"), ("b", "x")],
            true,
        ),
    ]
}

#[test]
fn vars_operators() {
    let cases = eval_cases();
    let n = cases.len();
    for (expr, vars, want) in cases {
        let router = Router::build(&[r(&["/"]).vars(expr.clone())])
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        let mut req = get("/");
        req.vars = vars.clone();
        assert_eq!(
            find(&router, &req).is_some(),
            want,
            "expr {expr} vars {vars:?}"
        );
    }
    assert!(n > 60);
}

#[test]
fn vars_null_means_none() {
    let router = Router::build(&[r(&["/"]).vars(Value::Null)]).unwrap();
    assert_eq!(find(&router, &get("/")), Some(0));
}

#[test]
fn build_errors() {
    let bad: Vec<(RouteSpec, &str)> = vec![
        (r(&["/"]).vars(json!([["a", "=~", "x"]])), "vars"),
        (r(&["/"]).vars(json!([["a", "~~", "("]])), "vars"),
        (r(&["/"]).vars(json!([["a", "~*", ["x"]]])), "vars"),
        (r(&["/"]).vars(json!([["a"]])), "vars"),
        (r(&["/"]).vars(json!([["a", "=="]])), "vars"),
        (r(&["/"]).vars(json!([["a", "==", "b", "c", "d"]])), "vars"),
        (r(&["/"]).vars(json!([["a", "x", "==", "b"]])), "vars"),
        (r(&["/"]).vars(json!([[1, "==", "b"]])), "vars"),
        (r(&["/"]).vars(json!(["OR", ["a", "==", "1"]])), "vars"),
        (r(&["/"]).vars(json!(["a", "==", "1"])), "vars"),
        (r(&["/"]).vars(json!({"a": 1})), "vars"),
        (r(&["/"]).vars(json!([[]])), "vars"),
        (
            r(&["/"]).vars(json!(["AND", ["a", "==", "1"], "b"])),
            "vars",
        ),
        (
            r(&["/"]).vars(json!([["ip", "ipmatch", ["1.2.3.4/40"]]])),
            "vars",
        ),
        (r(&["/"]).vars(json!([["ip", "ipmatch", 5]])), "vars"),
        (r(&["/"]).remote(&["10.0.0.0/33"]), "remote_addrs"),
        (r(&["/"]).remote(&["not-an-ip"]), "remote_addrs"),
        (r(&["/"]).remote(&["::1/129"]), "remote_addrs"),
        (r(&["abc"]), "uris"),
        (r(&[""]), "uris"),
        (r(&["*"]), "uris"),
        (r(&["/"]).hosts(&[""]), "hosts"),
        (r(&["/"]).methods(&[""]), "methods"),
    ];
    for (spec, field) in bad {
        // Put the bad route at index 2 behind two valid ones.
        let desc = format!("{:?} {:?} {:?}", spec.uris, spec.vars, spec.remote_addrs);
        let specs = vec![r(&["/ok"]), r(&["/ok/*"]), spec];
        let err = match Router::build(&specs) {
            Ok(_) => panic!("expected error for {desc}"),
            Err(e) => e,
        };
        assert_eq!(err.route, 2, "{desc}: {err}");
        assert_eq!(err.field, field, "{desc}: {err}");
        assert!(!err.message.is_empty());
        let shown = err.to_string();
        assert!(
            shown.contains("route 2") && shown.contains(field),
            "{shown}"
        );
    }
}

#[test]
fn lua_tonumber_rules() {
    use super::vars::lua_tonumber;
    assert_eq!(lua_tonumber("10"), Some(10.0));
    assert_eq!(lua_tonumber(" -1.5e2 "), Some(-150.0));
    assert_eq!(lua_tonumber("0x1F"), Some(31.0));
    assert_eq!(lua_tonumber(".5"), Some(0.5));
    assert_eq!(lua_tonumber(""), None);
    assert_eq!(lua_tonumber("nan"), None);
    assert_eq!(lua_tonumber("infinity"), None);
    assert_eq!(lua_tonumber("1a"), None);
    assert_eq!(lua_tonumber("0x"), None);
}

#[test]
fn ten_thousand_routes() {
    const N: usize = 10_000;
    let mut specs = Vec::with_capacity(3 * N + 1);
    for i in 0..N {
        specs.push(r(&[&format!("/svc{i}/items")]));
        specs.push(r(&[&format!("/svc{i}/*")]).hosts(&[&format!("h{}.example.com", i % 7)]));
        specs.push(r(&[&format!("/svc{i}/user/:id")]).methods(&["GET"]));
    }
    specs.push(r(&["/*"]));
    let router = Router::build(&specs).unwrap();
    assert_eq!(router.len(), 3 * N + 1);
    assert!(!router.is_empty());
    let fallback = 3 * N;
    for i in [0usize, 1, 9, 10, 99, 100, 1234, 5000, 9998, 9999] {
        let items: &'static str = Box::leak(format!("/svc{i}/items").into_boxed_str());
        let user: &'static str = Box::leak(format!("/svc{i}/user/77").into_boxed_str());
        let other: &'static str = Box::leak(format!("/svc{i}/other/x").into_boxed_str());
        let host: &'static str = Box::leak(format!("h{}.example.com", i % 7).into_boxed_str());
        assert_eq!(find(&router, &get(items)), Some(3 * i));
        assert_eq!(find(&router, &get(user)), Some(3 * i + 2));
        assert_eq!(
            find(&router, &get(user).method("POST").host(host)),
            Some(3 * i + 1)
        );
        assert_eq!(find(&router, &get(user).method("POST")), Some(fallback));
        assert_eq!(find(&router, &get(other).host(host)), Some(3 * i + 1));
        assert_eq!(find(&router, &get(other)), Some(fallback));
    }
    // `/svc1/*` must not capture `/svc10/...` (different key bytes).
    assert_eq!(
        find(&router, &get("/svc10/x").host("h1.example.com")),
        Some(fallback)
    );
    assert_eq!(
        find(&router, &get("/svc10/x").host("h3.example.com")),
        Some(31)
    );
    assert_eq!(find(&router, &get("/nope")), Some(fallback));
}

#[test]
fn empty_router() {
    let router = Router::build(&[]).unwrap();
    assert!(router.is_empty());
    assert_eq!(router.len(), 0);
    assert_eq!(find(&router, &get("/")), None);
}

/// Differential check: the segment matcher agrees with the radixtree regex on
/// generated patterns and paths.
#[test]
fn param_matcher_agrees_with_regex() {
    use super::path::{full_regex, parse, UriKind};
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n) as usize
    };
    let pat_parts = [":p", "*s", "a", "b", ""];
    let path_parts = ["a", "b", "", "x", "a/b", "/"];
    let mut checked = 0;
    for _ in 0..3000 {
        let n = 1 + rnd(4);
        let mut uri = String::new();
        for _ in 0..n {
            uri.push('/');
            uri.push_str(pat_parts[rnd(pat_parts.len() as u64)]);
        }
        let Ok(UriKind::Tree { key, pattern }) = parse(&uri) else {
            continue;
        };
        let re = full_regex(&uri).unwrap();
        for _ in 0..20 {
            let m = 1 + rnd(5);
            let mut path = String::new();
            for _ in 0..m {
                path.push('/');
                path.push_str(path_parts[rnd(path_parts.len() as u64)]);
            }
            let want = path.starts_with(&key) && re.is_match(&path);
            let got = path.starts_with(&key) && pattern.as_ref().is_none_or(|p| p.is_match(&path));
            assert_eq!(got, want, "uri {uri:?} path {path:?}");
            checked += 1;
        }
    }
    assert!(checked > 10_000);
}
