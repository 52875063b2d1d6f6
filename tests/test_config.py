"""Tests for pygateway.config: YAML loading, validation errors, merging and the compiled snapshot."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from pygateway.config.validate import ConfigError, compile_snapshot, load_yaml, validate
from pygateway.plugin import Plugin


# --------------------------------------------------------------------------- stand-in plugins
class LimitCount(Plugin):
    name = "limit-count"
    priority = 1002
    native = True

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        count: Annotated[int, msgspec.Meta(ge=1)]
        time_window: Annotated[int, msgspec.Meta(ge=1)] = 60


class AddHeader(Plugin):
    name = "add-header"
    priority = 1000

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        header: str
        value: str = "x"

    def access(self, req: Any, ctx: dict[str, Any]) -> None:
        return None


class Echo(Plugin):
    name = "echo"
    priority = 2000

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        body: str = ""


class KeyAuth(Plugin):
    name = "key-auth"
    priority = 2500

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        header: str = "apikey"

    class ConsumerConfig(msgspec.Struct, forbid_unknown_fields=True):
        key: str


class Picky(Plugin):
    name = "picky"

    class Config(msgspec.Struct):
        low: int = 0
        high: int = 10

        def __post_init__(self) -> None:
            if self.low > self.high:
                raise ValueError("low must be <= high")

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        if raw.get("low") == "max":
            raise ValueError("low: 'max' is not allowed here")
        return super().parse_config(raw)


PLUGINS: dict[str, type[Plugin]] = {p.name: p for p in (LimitCount, AddHeader, Echo, KeyAuth, Picky)}
get_plugin = PLUGINS.get

UP = {"type": "roundrobin", "nodes": [{"host": "127.0.0.1", "port": 8080, "weight": 1}]}


KNOWN = "(expected one of routes, services, upstreams, consumers, global_rules, plugin_configs, consumer_groups)"


def errors_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(raw, get_plugin)
    return info.value.errors


def one_error(raw: dict[str, Any]) -> str:
    errors = errors_of(raw)
    assert len(errors) == 1, errors
    return errors[0]


def compile_raw(raw: dict[str, Any], version: int = 1) -> tuple[dict[str, Any], Any, Any]:
    return compile_snapshot(validate(raw, get_plugin), version)


def route(**kw: Any) -> dict[str, Any]:
    return {"id": "r1", "uri": "/a", "upstream": copy.deepcopy(UP), **kw}


# --------------------------------------------------------------------------- full round trip
FULL = {
    "upstreams": [
        {
            "id": "u1",
            "type": "chash",
            "hash_on": "header",
            "key": "x-user",
            "nodes": [
                {"host": "10.0.0.1", "port": 80, "weight": 3, "priority": 1},
                {"host": "10.0.0.2", "port": 81, "weight": 1},
            ],
            "scheme": "https",
            "pass_host": "rewrite",
            "upstream_host": "backend.internal",
            "timeout": {"connect": 1, "send": 2, "read": 3.5},
            "retries": 2,
            "name": "backend",
            "labels": {"env": "prod"},
        }
    ],
    "services": [{"id": "s1", "hosts": ["svc.example.com"], "upstream_id": "u1", "plugins": {"echo": {}}}],
    "plugin_configs": [{"id": "pc1", "plugins": {"add-header": {"header": "x-pc"}}}],
    "routes": [
        {
            "id": "r1",
            "name": "main",
            "uris": ["/api/*", "/v2/:id"],
            "host": "a.example.com",
            "hosts": ["*.b.example.com"],
            "methods": ["GET", "POST"],
            "remote_addrs": ["10.0.0.0/8", "::1"],
            "vars": [["arg_name", "==", "json"]],
            "priority": 5,
            "service_id": "s1",
            "plugin_config_id": "pc1",
            "timeout": {"connect": 2, "send": 3, "read": 4},
            "enable_websocket": False,
            "plugins": {"limit-count": {"count": 10}},
        }
    ],
    "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "secret"}}}],
    "global_rules": [{"id": 1, "plugins": {"echo": {"body": "g"}, "limit-count": {"count": 5}}}],
}


def test_full_config_round_trip() -> None:
    snapshot, py, glob = compile_raw(FULL, version=7)
    assert snapshot == {
        "version": 7,
        "routes": [
            {
                "id": "r1",
                "name": "main",
                "service_id": "s1",
                "uris": ["/api/*", "/v2/:id"],
                "hosts": ["a.example.com", "*.b.example.com"],
                "methods": ["GET", "POST"],
                "remote_addrs": ["10.0.0.0/8", "::1"],
                "vars": [["arg_name", "==", "json"]],
                "priority": 5,
                "upstream": {
                    "id": "u1",
                    "type": "chash",
                    "nodes": [
                        {"host": "10.0.0.1", "port": 80, "weight": 3, "priority": 1},
                        {"host": "10.0.0.2", "port": 81, "weight": 1, "priority": 0},
                    ],
                    "scheme": "https",
                    "pass_host": "rewrite",
                    "upstream_host": "backend.internal",
                    "timeout": {"connect": 1.0, "send": 2.0, "read": 3.5},
                    "retries": 2,
                    "hash_on": "header",
                    "key": "x-user",
                    "tls_verify": True,
                },
                "timeout": {"connect": 2.0, "send": 3.0, "read": 4.0},
                "plugins": {"limit-count": {"count": 10, "time_window": 60}},
            }
        ],
        # The global rule's native limiter runs as the rule's own (one counter across routes).
        "global_limits": [{"id": "1", "plugins": {"limit-count": {"count": 5, "time_window": 60}}}],
    }
    # Python plugins: service's echo (2000) + plugin_config's add-header (1000), highest priority first.
    assert [(cls, conf) for cls, conf in py["r1"]] == [(Echo, Echo.Config()), (AddHeader, AddHeader.Config("x-pc"))]
    # Global rules' Python plugins (their native limit-count is in `global_limits` above).
    assert glob == [(Echo, Echo.Config(body="g"))]


def test_snapshot_is_json_and_matches_rust_shape() -> None:
    import orjson

    snapshot, _, _ = compile_raw(FULL)
    assert orjson.loads(orjson.dumps(snapshot)) == snapshot


def test_validated_config_holds_objects_by_id() -> None:
    cfg = validate(FULL, get_plugin)
    assert set(cfg.routes) == {"r1"} and set(cfg.services) == {"s1"} and set(cfg.upstreams) == {"u1"}
    assert set(cfg.global_rules) == {"1"} and set(cfg.plugin_configs) == {"pc1"}
    assert cfg.consumers["jack"].plugins["key-auth"].conf == KeyAuth.ConsumerConfig(key="secret")


def test_minimal_route_defaults() -> None:
    snapshot, py, glob = compile_raw({"routes": [{"id": "r", "uri": "/", "upstream": {"nodes": {"h:1": 1}}}]})
    r = snapshot["routes"][0]
    assert r["hosts"] == [] and r["methods"] == [] and r["remote_addrs"] == [] and r["vars"] is None
    assert r["priority"] == 0 and r["timeout"] is None and r["plugins"] == {}
    up = r["upstream"]
    assert up["id"] is None and up["type"] == "roundrobin" and up["scheme"] == "http"
    assert up["pass_host"] == "pass" and up["hash_on"] == "vars" and up["retries"] is None
    assert py == {"r": []} and glob == []


# --------------------------------------------------------------------------- nodes dict form
def test_nodes_dict_form() -> None:
    up = {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 2, "[::1]:8080": 1, "example.com": 0}}
    snapshot, _, _ = compile_raw({"routes": [route(upstream=up)]})
    assert snapshot["routes"][0]["upstream"]["nodes"] == [
        {"host": "127.0.0.1", "port": 1980, "weight": 2, "priority": 0},
        {"host": "::1", "port": 8080, "weight": 1, "priority": 0},
        {"host": "example.com", "port": 80, "weight": 0, "priority": 0},
    ]


def test_nodes_dict_form_default_port_follows_scheme() -> None:
    up = {"nodes": {"example.com": 1}, "scheme": "https"}
    snapshot, _, _ = compile_raw({"routes": [route(upstream=up)]})
    assert snapshot["routes"][0]["upstream"]["nodes"][0]["port"] == 443


def test_nodes_dict_form_bad_address() -> None:
    err = one_error({"routes": [route(upstream={"nodes": {"h:99999": 1}})]})
    assert err == 'routes[r1].upstream.nodes[h:99999]: expected "host:port" or "host"'


# --------------------------------------------------------------------------- error classes
@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ({"nodes": "x"}, "routes[r1].upstream.nodes: expected object or array, got str"),
        ({}, "routes[r1].upstream.nodes: required"),
        ({"nodes": [{"host": "h"}]}, "routes[r1].upstream.nodes[0].port: required"),
        ({"nodes": [{"host": "h", "port": 0}]}, "routes[r1].upstream.nodes[0].port: expected int >= 1"),
        ({"nodes": [{"host": "h", "port": "80"}]}, "routes[r1].upstream.nodes[0].port: expected int, got str"),
        ({"nodes": {"h:1": -1}}, "routes[r1].upstream.nodes[...]: expected int >= 0"),
        ({"nodes": [], "type": "random"}, "routes[r1].upstream.type: invalid enum value 'random'"),
        ({"nodes": [], "scheme": "grpc"}, "routes[r1].upstream.scheme: invalid enum value 'grpc'"),
        ({"nodes": [], "pass_host": "x"}, "routes[r1].upstream.pass_host: invalid enum value 'x'"),
        ({"nodes": [], "pass_host": "rewrite"}, 'routes[r1].upstream.upstream_host: required when pass_host is "rewrite"'),
        ({"nodes": [], "type": "chash"}, 'routes[r1].upstream.key: required when type is "chash"'),
        ({"nodes": [], "type": "chash", "key": "k", "hash_on": "ip"}, "routes[r1].upstream.hash_on: invalid enum value 'ip'"),
        ({"nodes": [], "timeout": {"connect": 0}}, "routes[r1].upstream.timeout.connect: expected float > 0.0"),
        ({"nodes": [], "retries": -1}, "routes[r1].upstream.retries: expected int >= 0"),
        ({"nodes": [], "nodez": []}, "routes[r1].upstream.nodez: unknown field"),
    ],
)
def test_upstream_errors(upstream: dict[str, Any], expected: str) -> None:
    assert one_error({"routes": [route(upstream=upstream)]}) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"uri": None}, "routes[r1].uri: required (set uri or uris)"),
        ({"uri": ""}, "routes[r1].uri: expected str of length >= 1"),
        ({"methods": ["GET", "FETCH"]}, "routes[r1].methods[1]: invalid enum value 'FETCH'"),
        ({"priority": "high"}, "routes[r1].priority: expected int, got str"),
        ({"status": 2}, "routes[r1].status: invalid enum value 2"),
        ({"vars": "x"}, "routes[r1].vars: expected array or null, got str"),
        ({"hosts": ["a b"]}, r"routes[r1].hosts[0]: expected str matching regex '^\*?[0-9a-zA-Z-._]+$'"),
        ({"remote_addr": "300.1.1.1"}, "routes[r1].remote_addr: invalid IP address or CIDR '300.1.1.1'"),
        ({"remote_addrs": ["10.0.0.0/8", "nope"]}, "routes[r1].remote_addrs[1]: invalid IP address or CIDR 'nope'"),
        ({"urii": "/x"}, "routes[r1].urii: unknown field"),
        ({"plugins": []}, "routes[r1].plugins: expected object, got array"),
        ({"timeout": {"read": -1}}, "routes[r1].timeout.read: expected float > 0.0"),
    ],
)
def test_route_field_errors(fields: dict[str, Any], expected: str) -> None:
    assert one_error({"routes": [route(**fields)]}) == expected


def test_route_needs_uri_or_uris() -> None:
    r = route()
    del r["uri"]
    assert one_error({"routes": [r]}) == "routes[r1].uri: required (set uri or uris)"


def test_missing_references() -> None:
    errors = errors_of(
        {
            "routes": [
                {"id": "r2", "uri": "/", "upstream_id": "u9"},
                {"id": "r3", "uri": "/", "service_id": "s9", "upstream": UP},
                {"id": "r4", "uri": "/", "plugin_config_id": 7, "upstream": UP},
            ],
            "services": [{"id": "s1", "upstream_id": "nope"}],
        }
    )
    assert errors == [
        'services[s1].upstream_id: upstream "nope" not found',
        'routes[r2].upstream_id: upstream "u9" not found',
        'routes[r3].service_id: service "s9" not found',
        'routes[r4].plugin_config_id: plugin_config "7" not found',
    ]


def test_references_to_invalid_objects_are_not_reported_twice() -> None:
    errors = errors_of(
        {
            "upstreams": [{"id": "u1", "nodes": "bad"}],
            "services": [{"id": "s1", "upstream_id": "u1"}, {"id": "s2", "upstream": {"nodes": [], "type": "x"}}],
            "routes": [
                {"id": "a", "uri": "/", "upstream_id": "u1"},
                {"id": "b", "uri": "/", "service_id": "s1"},
                {"id": "c", "uri": "/", "service_id": "s2"},
            ],
        }
    )
    assert errors == [
        "services[s2].upstream.type: invalid enum value 'x'",
        "upstreams[u1].nodes: expected object or array, got str",
    ]


def test_weight_must_fit_the_data_plane() -> None:
    up = {"nodes": [{"host": "h", "port": 1, "weight": 2**32}]}
    assert one_error({"routes": [route(upstream=up)]}) == "routes[r1].upstream.nodes[0].weight: expected int <= 4294967295"


def test_route_without_any_upstream() -> None:
    raw = {"routes": [{"id": "r1", "uri": "/", "service_id": "s1"}], "services": [{"id": "s1"}]}
    assert one_error(raw) == "routes[r1].upstream: required (no upstream, upstream_id, or service with an upstream)"


def test_plugin_errors() -> None:
    errors = errors_of(
        {
            "routes": [
                route(id="r3", plugins={"limit-count": {"count": 0}}),
                route(id="r4", plugins={"no-such": {}}),
                route(id="r5", plugins={"add-header": {}}),
                route(id="r6", plugins={"add-header": {"header": "h", "extra": 1}}),
                route(id="r7", plugins={"echo": "yes"}),
                route(id="r8", plugins={"echo": {"_meta": {"disable": "yes"}}}),
            ]
        }
    )
    assert errors == [
        "routes[r3].plugins.limit-count.count: expected int >= 1",
        'routes[r4].plugins.no-such: unknown plugin "no-such"',
        "routes[r5].plugins.add-header.header: required",
        "routes[r6].plugins.add-header.extra: unknown field",
        "routes[r7].plugins.echo: expected object, got str",
        "routes[r8].plugins.echo._meta: expected object with boolean disable",
    ]


def test_plugin_cross_field_errors() -> None:
    errors = errors_of(
        {"routes": [route(id="a", plugins={"picky": {"low": 20}}), route(id="b", plugins={"picky": {"low": "max"}})]}
    )
    assert errors == ["routes[a].plugins.picky: low must be <= high", "routes[b].plugins.picky: low: 'max' is not allowed here"]


def test_plugin_errors_in_every_collection() -> None:
    bad = {"limit-count": {"count": 0}}
    errors = errors_of(
        {
            "services": [{"id": "s1", "upstream": UP, "plugins": bad}],
            "plugin_configs": [{"id": "p1", "plugins": bad}],
            "global_rules": [{"id": "g1", "plugins": bad}],
            "consumers": [{"username": "bob", "plugins": {"key-auth": {}}}],
        }
    )
    assert errors == [
        "services[s1].plugins.limit-count.count: expected int >= 1",
        "consumers[bob].plugins.key-auth.key: required",
        "global_rules[g1].plugins.limit-count.count: expected int >= 1",
        "plugin_configs[p1].plugins.limit-count.count: expected int >= 1",
    ]


def test_ids_required_and_duplicates() -> None:
    r = route()
    del r["id"]
    errors = errors_of(
        {
            "routes": [route(), r, route(), route(id="bad id")],
            "consumers": [{"plugins": {}}, {"username": "a"}, {"username": "a"}],
        }
    )
    assert errors == [
        "routes[#1].id: required",
        "routes[r1].id: duplicate id 'r1' (first at #0)",
        "routes[#3].id: invalid id 'bad id' (expected an int >= 1 or a string of letters, digits, '-', '_', '.')",
        "consumers[#0].username: required",
        "consumers[a].username: duplicate username 'a' (first at #1)",
    ]


def test_collection_and_item_shapes() -> None:
    errors = errors_of({"routes": {"id": 1}, "services": ["x"], "upstreams": None})
    assert errors == ["routes: expected array, got object", "services[#0]: expected object, got str"]


def test_unknown_fields_on_other_objects() -> None:
    errors = errors_of(
        {
            "services": [{"id": "s", "upstream": UP, "uri": "/"}],
            "consumers": [{"username": "u", "upstream": UP}],
            "global_rules": [{"id": "g", "plugins": {}, "desc": "x"}],
            "upstreams": [{"id": "u", "nodes": [], "plugins": {}}],
        }
    )
    assert errors == [
        "services[s].uri: unknown field",
        "upstreams[u].plugins: unknown field",
        "consumers[u].upstream: unknown field",
        "global_rules[g].desc: unknown field",
    ]


def test_fields_the_data_plane_does_not_implement_are_refused_by_name() -> None:
    errors = errors_of(
        {
            "routes": [
                route(id="ws", enable_websocket=True),
                route(id="off", enable_websocket=False),
                route(id="meta", plugins={"echo": {"_meta": {"disable": False, "priority": 5}}}),
            ],
            "services": [{"id": "s", "upstream": UP, "enable_websocket": True}],
            "upstreams": [
                {"id": "hc", "nodes": {"127.0.0.1:80": 1}, "checks": {"active": {"type": "http"}}},
                {"id": "kp", "nodes": {"127.0.0.1:80": 1}, "keepalive_pool": {"size": 10}},
                {"id": "rt", "nodes": {"127.0.0.1:80": 1}, "retry_timeout": 3},
            ],
        }
    )
    assert errors == [
        "routes[ws].enable_websocket: not supported",
        "routes[meta].plugins.echo._meta.priority: not supported",
        "services[s].enable_websocket: not supported",
        "upstreams[hc].checks: not supported",
        "upstreams[kp].keepalive_pool: not supported",
        "upstreams[rt].retry_timeout: not supported",
    ]


def test_unknown_top_level_keys() -> None:
    assert errors_of({"routez": [], "ssls": []}) == [
        f"routez: unknown top-level key {KNOWN}",
        "ssls: not supported by pygateway",
    ]


def test_collects_several_errors_at_once() -> None:
    errors = errors_of(
        {
            "routes": [
                {
                    "id": "r1",
                    "uri": "/",
                    "methods": ["BREW"],
                    "upstream": {"nodes": "x"},
                    "plugins": {"limit-count": {"count": 0}, "nope": {}},
                },
                {"id": "r2", "uri": "/", "upstream_id": "u9"},
            ],
            "upstreams": [{"id": "u1", "nodes": [], "pass_host": "rewrite"}],
        }
    )
    assert errors == [
        "routes[r1].methods[0]: invalid enum value 'BREW'",
        "routes[r1].plugins.limit-count.count: expected int >= 1",
        'routes[r1].plugins.nope: unknown plugin "nope"',
        "routes[r1].upstream.nodes: expected object or array, got str",
        'upstreams[u1].upstream_host: required when pass_host is "rewrite"',
        'routes[r2].upstream_id: upstream "u9" not found',
    ]
    with pytest.raises(ConfigError) as info:
        validate({"routes": [{"id": "r2", "uri": "/", "upstream_id": "u9"}], "x": 1}, get_plugin)
    assert str(info.value) == f'x: unknown top-level key {KNOWN}\nroutes[r2].upstream_id: upstream "u9" not found'


# --------------------------------------------------------------------------- merging
def test_plugin_precedence_route_over_plugin_config_over_service() -> None:
    raw = {
        "services": [
            {
                "id": "s1",
                "upstream": UP,
                "plugins": {
                    "add-header": {"header": "svc"},
                    "echo": {"body": "svc"},
                    "limit-count": {"count": 1, "time_window": 5},
                },
            }
        ],
        "plugin_configs": [{"id": "pc", "plugins": {"add-header": {"header": "pc"}, "echo": {"body": "pc"}}}],
        "routes": [
            {
                "id": "r1",
                "uri": "/",
                "service_id": "s1",
                "plugin_config_id": "pc",
                "plugins": {"echo": {"body": "route"}, "limit-count": {"count": 9}},
            }
        ],
    }
    snapshot, py, _ = compile_raw(raw)
    # Whole-conf replacement: the route's limit-count does not inherit the service's time_window.
    assert snapshot["routes"][0]["plugins"] == {"limit-count": {"count": 9, "time_window": 60}}
    assert py["r1"] == [(Echo, Echo.Config("route")), (AddHeader, AddHeader.Config("pc"))]


def _upstream_ids(raw: dict[str, Any]) -> list[Any]:
    snapshot, _, _ = compile_raw(raw)
    return [(r["upstream"]["id"], r["upstream"]["nodes"][0]["host"]) for r in snapshot["routes"]]


def test_upstream_precedence() -> None:
    def up(host: str) -> dict[str, Any]:
        return {"nodes": [{"host": host, "port": 1, "weight": 1}]}

    raw = {
        "upstreams": [{"id": "ru", **up("route-id")}, {"id": "su", **up("service-id")}],
        "services": [
            {"id": "full", "upstream": up("service-inline"), "upstream_id": "su"},
            {"id": "byid", "upstream_id": "su"},
        ],
        "routes": [
            {"id": "1", "uri": "/", "service_id": "full", "upstream_id": "ru", "upstream": up("route-inline")},
            {"id": "2", "uri": "/", "service_id": "full", "upstream_id": "ru"},
            {"id": "3", "uri": "/", "service_id": "full"},
            {"id": "4", "uri": "/", "service_id": "byid"},
        ],
    }
    assert _upstream_ids(raw) == [
        (None, "route-inline"),
        ("ru", "route-id"),
        (None, "service-inline"),
        ("su", "service-id"),
    ]


def test_service_hosts_used_when_route_has_none() -> None:
    raw = {
        "services": [{"id": "s", "hosts": ["svc.example.com"], "upstream": UP}],
        "routes": [
            {"id": "a", "uri": "/", "service_id": "s"},
            {"id": "b", "uri": "/", "service_id": "s", "host": "own.example.com"},
        ],
    }
    snapshot, _, _ = compile_raw(raw)
    assert [r["hosts"] for r in snapshot["routes"]] == [["svc.example.com"], ["own.example.com"]]


def test_meta_disable() -> None:
    raw = {
        "services": [{"id": "s", "upstream": UP, "plugins": {"echo": {}, "limit-count": {"count": 3}}}],
        "routes": [
            {
                "id": "r1",
                "uri": "/",
                "service_id": "s",
                # The route switches off the service's echo; its own add-header is disabled too.
                "plugins": {
                    "echo": {"_meta": {"disable": True}},
                    "add-header": {"header": "h", "_meta": {"disable": True}},
                    "limit-count": {"count": 4, "_meta": {"disable": False}},
                },
            }
        ],
        "global_rules": [{"id": "g", "plugins": {"echo": {"_meta": {"disable": True}}}}],
    }
    snapshot, py, glob = compile_raw(raw)
    assert snapshot["routes"][0]["plugins"] == {"limit-count": {"count": 4, "time_window": 60}}
    assert py == {"r1": []} and glob == []


def test_disabled_route_is_dropped() -> None:
    snapshot, py, _ = compile_raw({"routes": [route(id="on"), route(id="off", status=0), route(id="x", status=1)]})
    assert [r["id"] for r in snapshot["routes"]] == ["on", "x"]
    assert set(py) == {"on", "x"}


def test_disabled_route_is_still_validated() -> None:
    assert one_error({"routes": [route(status=0, methods=["NOPE"])]}) == "routes[r1].methods[0]: invalid enum value 'NOPE'"


def test_global_rules_merge_and_sort() -> None:
    raw = {
        "global_rules": [
            {"id": "1", "plugins": {"add-header": {"header": "a"}}},
            {"id": "2", "plugins": {"echo": {"body": "b"}}},
        ]
    }
    _, _, glob = compile_raw(raw)
    assert glob == [(Echo, Echo.Config("b")), (AddHeader, AddHeader.Config("a"))]


def test_int_ids_are_normalized() -> None:
    raw = {
        "upstreams": [{"id": 1, "nodes": {"127.0.0.1:80": 1}}],
        "services": [{"id": 2, "upstream_id": 1}],
        "plugin_configs": [{"id": 3, "plugins": {"echo": {}}}],
        "routes": [{"id": 4, "uri": "/", "service_id": 2, "plugin_config_id": "3"}, {"id": 5, "uri": "/", "upstream_id": "1"}],
    }
    cfg = validate(raw, get_plugin)
    assert set(cfg.routes) == {"4", "5"} and set(cfg.upstreams) == {"1"}
    snapshot, py, _ = compile_snapshot(cfg, 1)
    assert [(r["id"], r["upstream"]["id"]) for r in snapshot["routes"]] == [("4", "1"), ("5", "1")]
    assert py["4"] == [(Echo, Echo.Config())]


# --------------------------------------------------------------------------- load_yaml
def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "apisix.yaml"
    p.write_text(text)
    return p


def test_load_yaml_with_end_marker(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """\
routes:
  -
    id: 1
    uri: /hello
    upstream:
      nodes:
        "127.0.0.1:1980": 1
      type: roundrobin
#END
""",
    )
    raw = load_yaml(p)
    snapshot, _, _ = compile_raw(raw)
    assert snapshot["routes"][0]["id"] == "1"
    assert snapshot["routes"][0]["upstream"]["nodes"] == [{"host": "127.0.0.1", "port": 1980, "weight": 1, "priority": 0}]


def test_load_yaml_empty_file(tmp_path: Path) -> None:
    assert load_yaml(write(tmp_path, "")) == {}
    assert load_yaml(write(tmp_path, "#END\n")) == {}
    assert validate({}, get_plugin).routes == {}


def test_load_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "routes:\n  - id: 1\n    uri: [/a\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(p)
    (msg,) = info.value.errors
    assert msg.startswith(f"{p}:4:1: invalid YAML: ")


def test_load_yaml_bad_indentation_line(tmp_path: Path) -> None:
    p = write(tmp_path, "routes:\n  - id: 1\n   uri: /a\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(p)
    assert str(info.value).startswith(f"{p}:3:")


def test_load_yaml_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_yaml(missing)
    assert info.value.errors == [f"{missing}: cannot read: No such file or directory"]


def test_load_yaml_top_level_must_be_mapping(tmp_path: Path) -> None:
    p = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(p)
    assert info.value.errors == [f"{p}: top level must be a mapping, got array"]


def test_load_yaml_unknown_top_level_key(tmp_path: Path) -> None:
    p = write(tmp_path, "routes: []\nroute: []\n#END\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(p)
    assert info.value.errors == [
        f"{p}: route: unknown top-level key {KNOWN}"
    ]


def test_config_error_str() -> None:
    e = ConfigError(["a: x", "b: y"])
    assert str(e) == "a: x\nb: y" and e.errors == ["a: x", "b: y"]
