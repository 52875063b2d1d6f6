"""traffic-split through real sockets: several named echo upstreams; each response says which one
answered (`x-upstream`), so splits can be counted exactly (smooth weighted round robin, one worker)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import ROOT, Gateway, Upstream, free_port, route

GatewayFactory = Callable[..., Gateway]
UpstreamFactory = Callable[..., Upstream]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def split(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"traffic-split": {"rules": list(rules)}}


def inline(*ups: Upstream, **extra: Any) -> dict[str, Any]:
    return {"type": "roundrobin", "nodes": {u.addr: 1 for u in ups}, **extra}


def served_by(client: httpx.Client, url: str, n: int, **kw: Any) -> list[str]:
    out = []
    for _ in range(n):
        r = client.get(url, **kw)
        assert r.status_code == 200, r.text
        out.append(r.headers["x-upstream"])
    return out


def test_weights_split_exactly_and_route_upstream_takes_the_rest(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    a, b = upstream("A"), upstream("B")
    rule = {"weighted_upstreams": [{"upstream": inline(b), "weight": 1}, {"weight": 3}]}
    gw = gateway({"routes": [route("r", "/*", a, plugins=split(rule))]})
    seen = served_by(client, f"{gw.url}/x", 40)
    assert Counter(seen) == {"A": 30, "B": 10}
    # Smooth: never more than three of A in a row.
    assert "AAAA" not in "".join(seen)


def test_nodes_of_the_chosen_upstream_are_weighted_too(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    a, b, c = upstream("A"), upstream("B"), upstream("C")
    canary = {"type": "roundrobin", "nodes": {b.addr: 2, c.addr: 1}}
    rule = {"weighted_upstreams": [{"upstream": canary, "weight": 1}]}
    gw = gateway({"routes": [route("r", "/*", a, plugins=split(rule))]})
    assert Counter(served_by(client, f"{gw.url}/x", 30)) == {"B": 20, "C": 10}


def test_match_vars_choose_the_rule(upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client) -> None:
    a, b, c = upstream("A"), upstream("B"), upstream("C")
    rules = [
        # Either match entry may hold: header release=new, or (arg beta in [1, yes] and not from 10/8).
        {"match": [{"vars": [["http_release", "==", "new"]]},
                   {"vars": [["arg_beta", "in", ["1", "yes"]], ["remote_addr", "!", "~~", "^10\\."]]}],
         "weighted_upstreams": [{"upstream": inline(b), "weight": 1}]},
        {"match": [{"vars": [["OR", ["cookie_tier", "==", "gold"], ["http_x_tier", "~*", "^GOLD$"]]]}],
         "weighted_upstreams": [{"upstream": inline(c), "weight": 1}]},
    ]  # fmt: skip
    gw = gateway({"routes": [route("r", "/*", a, plugins=split(*rules))]})
    url = f"{gw.url}/p"
    cases = [
        ({}, "A"),
        ({"headers": {"release": "new"}}, "B"),
        ({"headers": {"release": "old"}}, "A"),
        ({"params": {"beta": "yes"}}, "B"),
        ({"params": {"beta": "no"}}, "A"),
        ({"headers": {"cookie": "tier=gold"}}, "C"),
        ({"headers": {"x-tier": "gold"}}, "C"),
        ({"headers": {"release": "new", "x-tier": "gold"}}, "B"),  # the first matching rule wins
    ]
    for kw, expected in cases:
        r = client.get(url, **kw)
        assert (r.status_code, r.headers["x-upstream"]) == (200, expected), kw
        assert r.json()["path"] == "/p"


def test_upstream_id_is_resolved_and_follows_edits(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    a, b, c = upstream("A"), upstream("B"), upstream("C")

    def config(canary: Upstream) -> dict[str, Any]:
        rule = {"weighted_upstreams": [{"upstream_id": "canary", "weight": 1}, {"weight": 1}]}
        return {"upstreams": [{"id": "canary", "nodes": {canary.addr: 1}}],
                "routes": [route("r", "/*", a, plugins=split(rule))]}  # fmt: skip

    gw = gateway(config(b))
    assert Counter(served_by(client, f"{gw.url}/x", 10)) == {"A": 5, "B": 5}
    gw.update(config(c))
    assert Counter(served_by(client, f"{gw.url}/x", 10)) == {"A": 5, "C": 5}


def test_pass_host_of_the_plugin_upstream(upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client) -> None:
    a, b = upstream("A"), upstream("B")
    rewrite = {"weighted_upstreams": [{"upstream": inline(b, pass_host="rewrite", upstream_host="canary.test")}]}
    node = {"weighted_upstreams": [{"upstream": inline(b, pass_host="node")}]}
    gw = gateway({"routes": [route("rw", "/rw", a, plugins=split(rewrite)),
                             route("nd", "/nd", a, plugins=split(node))]})  # fmt: skip

    def host_seen(path: str) -> str:
        r = client.get(f"{gw.url}{path}", headers={"host": "client.test"})
        assert r.headers["x-upstream"] == "B"
        return dict(r.json()["headers"])["host"]

    assert host_seen("/rw") == "canary.test"
    assert host_seen("/nd") == b.addr


def test_a_dead_split_upstream_fails_only_its_share(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    a = upstream("A")
    dead = {"type": "roundrobin", "nodes": {f"127.0.0.1:{free_port()}": 1}}
    rule = {"weighted_upstreams": [{"upstream": dead, "weight": 1}, {"weight": 1}]}
    gw = gateway({"routes": [route("r", "/*", a, plugins=split(rule))]})
    statuses = Counter(client.get(f"{gw.url}/x").status_code for _ in range(10))
    assert statuses == {200: 5, 502: 5}


def validate(tmp_path: Path, conf: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    cfg = {"upstreams": [{"id": "u1", "nodes": {"127.0.0.1:1980": 1}}],
           "routes": [{"id": "r1", "uri": "/a", "upstream_id": "u1", "plugins": {"traffic-split": conf}}]}  # fmt: skip
    path = tmp_path / "apisix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "pygateway.cli", "validate", str(path)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    good = {"rules": [{"match": [{"vars": [["arg_a", "==", "1"]]}],
                       "weighted_upstreams": [{"upstream_id": "u1", "weight": 2}, {"weight": 1},
                                              {"upstream": {"nodes": {"127.0.0.1:1981": 1}}}]}]}  # fmt: skip
    res = validate(tmp_path, good)
    assert res.returncode == 0, res.stderr
    P = "routes[r1].plugins.traffic-split"
    W = f"{P}.rules[0].weighted_upstreams[0]"

    def one(wu: dict[str, Any]) -> dict[str, Any]:
        return {"rules": [{"weighted_upstreams": [wu]}]}

    cases = [
        (one({"upstream_id": "nope"}), f'{W}.upstream_id: upstream "nope" not found'),
        (one({"upstream": {"nodes": {"x:y": 1}}}), f"{W}.upstream.nodes[x:y]:"),
        (one({"upstream": {"nodes": [{"host": "127.0.0.1"}]}}), f"{W}.upstream.nodes[0].port: required"),
        (one({"upstream": {"nodes": {"127.0.0.1:1": 1}, "type": "chash", "key": "uri"}}), f"{W}.upstream.type:"),
        (one({"upstream": {"nodes": {"127.0.0.1:1": 1}, "scheme": "https"}}), f"{W}.upstream.scheme:"),
        (one({"upstream": {"nodes": {"127.0.0.1:1": 0}}}), f"{W}.upstream.nodes: at least one node"),
        (one({"weight": -1}), f"{W}.weight: expected int >= 0"),
        (one({"upstream_id": "u1", "colour": "red"}), f"{W}.colour: unknown field"),
        ({"rules": [{"weighted_upstreams": []}]}, f"{P}.rules[0].weighted_upstreams: expected array of length >= 1"),
        ({"rules": [{"match": [{"vars": [["arg_a", "=~", "1"]]}]}]}, f"{P}.rules[0].match[0].vars[0]: unsupported"),
        ({"rule": []}, f"{P}.rule: unknown field"),
    ]
    for conf, expected in cases:
        res = validate(tmp_path, conf)
        assert res.returncode == 1 and expected in res.stderr, (conf, res.stderr)


def test_admin_api_checks_upstream_id_and_serves_the_split(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    a, b = upstream("A"), upstream("B")
    gw = gateway(None)
    h = gw.admin_headers
    r = client.put(f"{gw.admin_url}/upstreams/canary", headers=h, json={"nodes": {b.addr: 1}})
    assert r.status_code == 201, r.text
    rule = {"weighted_upstreams": [{"upstream_id": "nope", "weight": 1}, {"weight": 1}]}
    body = {"uri": "/s", "upstream": {"nodes": {a.addr: 1}}, "plugins": split(rule)}
    r = client.put(f"{gw.admin_url}/routes/1", headers=h, json=body)
    assert r.status_code == 400
    assert r.json()["error_msg"] == (
        'routes[1].plugins.traffic-split.rules[0].weighted_upstreams[0].upstream_id: upstream "nope" not found'
    )
    rule["weighted_upstreams"][0]["upstream_id"] = "canary"
    r = client.put(f"{gw.admin_url}/routes/1", headers=h, json=body)
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 10
    while client.get(f"{gw.url}/s").status_code == 404:  # until the workers have the route
        assert time.monotonic() < deadline
        time.sleep(0.05)
    seen = Counter(served_by(client, f"{gw.url}/s", 20))
    assert seen == {"A": 10, "B": 10}
