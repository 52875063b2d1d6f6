"""Consumer groups and consumers' plugins (APISIX precedence: consumer > consumer group > route), in
the standalone YAML and through the admin API, plus consumer-restriction by group and by service."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Gateway, Upstream, free_port, route, sent, validate

Up = Callable[..., Upstream]
Gw = Callable[..., Gateway]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def tier(value: str) -> dict[str, Any]:
    """response-rewrite (a header_filter plugin) setting `X-Tier` on the response."""
    return {"response-rewrite": {"headers": {"set": {"X-Tier": value}}}}


def key(k: str) -> dict[str, Any]:
    return {"key-auth": {"key": k}}


GROUPS = [
    {"id": "gold", "desc": "paying customers", "labels": {"plan": "gold"},
     "plugins": {**tier("group"), "proxy-rewrite": {"headers": {"set": {"X-Group": "gold"}}}}},
    {"id": "banned", "plugins": {"fault-injection": {"abort": {"http_status": 403, "body": "banned"}}}},
]  # fmt: skip
CONSUMERS = [
    {"username": "jack", "group_id": "gold", "plugins": key("jack-key")},  # the group's plugins
    {"username": "rose", "group_id": "gold", "plugins": {**key("rose-key"), **tier("consumer")}},  # own wins
    {"username": "mike", "plugins": key("mike-key")},  # no group: the route's plugins only
    {"username": "eve", "group_id": "banned", "plugins": key("eve-key")},
]


def test_consumer_and_group_plugins_merge_with_apisix_precedence(
    upstream: Up, gateway: Gw, client: httpx.Client
) -> None:
    up = upstream()
    gw = gateway({"consumer_groups": GROUPS, "consumers": CONSUMERS, "routes": [
        route("r", "/r", up, plugins={"key-auth": {}, **tier("route")}),
        route("plain", "/plain", up, plugins={"key-auth": {}}),
    ]})  # fmt: skip

    def get(path: str, k: str) -> httpx.Response:
        return client.get(f"{gw.url}{path}", headers={"apikey": k})

    r = get("/r", "jack-key")
    assert r.status_code == 200 and r.headers["x-tier"] == "group"
    assert sent(r, "x-group") == ["gold"]  # the group adds proxy-rewrite: its rewrite still runs
    r = get("/r", "rose-key")
    assert r.headers["x-tier"] == "consumer" and sent(r, "x-group") == ["gold"]
    r = get("/r", "mike-key")
    assert r.headers["x-tier"] == "route" and sent(r, "x-group") == []
    # A route without the plugin gets it from the group (a phase the route's chain did not have).
    r = get("/plain", "jack-key")
    assert r.headers["x-tier"] == "group" and sent(r, "x-group") == ["gold"]
    assert "x-tier" not in get("/plain", "mike-key").headers
    r = get("/r", "eve-key")
    assert (r.status_code, r.text) == (403, "banned")
    assert "x-upstream" not in r.headers
    # Unauthenticated requests get none of it; interleaving consumers does not leak plugins.
    r = client.get(f"{gw.url}/r")
    assert r.status_code == 401
    assert [get("/r", k).headers["x-tier"] for k in ("mike-key", "jack-key", "mike-key", "rose-key")] == [
        "route", "group", "route", "consumer"]  # fmt: skip


def test_group_plugins_can_be_async_and_disabled(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    dead = f"http://127.0.0.1:{free_port()}/auth"
    gw = gateway({
        "consumer_groups": [
            {"id": "ext", "plugins": {"forward-auth": {"uri": dead, "status_on_error": 418}}},
            {"id": "off", "plugins": {**tier("group")}},
        ],
        "consumers": [
            {"username": "jack", "group_id": "ext", "plugins": key("jack-key")},
            # The consumer switches off a plugin its group enables.
            {"username": "rose", "group_id": "off",
             "plugins": {**key("rose-key"), "response-rewrite": {"headers": {"set": {"X-Tier": "x"}},
                                                                 "_meta": {"disable": True}}}},
        ],
        "routes": [route("r", "/r", up, plugins={"key-auth": {}})],
    })  # fmt: skip
    assert client.get(f"{gw.url}/r", headers={"apikey": "jack-key"}).status_code == 418  # async access hook
    r = client.get(f"{gw.url}/r", headers={"apikey": "rose-key"})
    assert r.status_code == 200 and "x-tier" not in r.headers


def test_consumer_restriction_by_group_and_service(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    svc_up = {"nodes": {up.addr: 1}}
    gw = gateway({
        "consumer_groups": [{"id": "gold", "plugins": {}}, {"id": "free", "plugins": {}}],
        "consumers": [
            {"username": "jack", "group_id": "gold", "plugins": key("jack-key")},
            {"username": "rose", "group_id": "free", "plugins": key("rose-key")},
            {"username": "mike", "plugins": key("mike-key")},
        ],
        "services": [{"id": "s1", "upstream": svc_up}, {"id": "s2", "upstream": svc_up}],
        "routes": [
            route("g", "/g", up, plugins={"key-auth": {}, "consumer-restriction": {
                "type": "consumer_group_id", "whitelist": ["gold"]}}),
            {"id": "s1r", "uri": "/s1", "service_id": "s1", "plugins": {"consumer-restriction": {
                "type": "service_id", "whitelist": ["s1"]}}},
            {"id": "s2r", "uri": "/s2", "service_id": "s2", "plugins": {"consumer-restriction": {
                "type": "service_id", "blacklist": ["s2"], "rejected_code": 409}}},
            route("nos", "/nos", up, plugins={"consumer-restriction": {"type": "service_id", "whitelist": ["s1"]}}),
        ],
    })  # fmt: skip
    assert client.get(f"{gw.url}/g", headers={"apikey": "jack-key"}).status_code == 200
    r = client.get(f"{gw.url}/g", headers={"apikey": "rose-key"})
    assert (r.status_code, r.json()) == (403, {"message": "The consumer_group_id is forbidden."})
    r = client.get(f"{gw.url}/g", headers={"apikey": "mike-key"})  # no group at all
    assert (r.status_code, r.json()) == (401, {"message": "Missing authentication or identity verification."})
    assert client.get(f"{gw.url}/s1").status_code == 200
    r = client.get(f"{gw.url}/s2")
    assert (r.status_code, r.json()) == (409, {"message": "The service_id is forbidden."})
    assert client.get(f"{gw.url}/nos").status_code == 401  # the route has no service


@pytest.mark.parametrize(("cfg", "needle"), [
    ({"consumers": [{"username": "jack", "group_id": "nope"}]}, 'consumers[jack].group_id: group "nope" not found'),
    ({"consumer_groups": [{"id": "g", "plugins": {"proxy-rewrite": {"method": "FETCH"}}}]},
     "consumer_groups[g].plugins.proxy-rewrite.method"),
    ({"consumer_groups": [{"id": "g", "plugins": {"no-such-plugin": {}}}]},
     'consumer_groups[g].plugins.no-such-plugin: unknown plugin "no-such-plugin"'),
    ({"consumer_groups": [{"id": "g", "nme": "x"}]}, "consumer_groups[g].nme: unknown field"),
    ({"consumer_groups": [{"plugins": {}}]}, "consumer_groups[#0].id: required"),
])  # fmt: skip
def test_consumer_group_config_errors(tmp_path: Path, cfg: dict[str, Any], needle: str) -> None:
    out = validate(tmp_path, {"routes": [{"id": "r", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}}}], **cfg})
    assert out.returncode == 1
    assert needle in out.stdout + out.stderr, out.stdout + out.stderr


def test_consumer_groups_through_the_admin_api(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(None)
    admin = httpx.Client(base_url=gw.admin_url, headers=gw.admin_headers, timeout=10)

    def put(path: str, body: dict[str, Any], status: int = 201) -> httpx.Response:
        r = admin.put(path, json=body)
        assert r.status_code == status, r.text
        return r

    put("/consumer_groups/gold", {"plugins": tier("group-v1"), "desc": "gold"})
    put("/consumers", {"username": "jack", "group_id": "gold", "plugins": key("jack-key")}, status=201)
    put("/routes/1", {"uri": "/r", "upstream": {"nodes": {up.addr: 1}}, "plugins": {"key-auth": {}}})
    r = admin.get("/consumer_groups/gold")
    assert r.json()["value"]["plugins"] == tier("group-v1")

    def tier_seen(expect: str) -> None:
        """Wait (the store is watched, a write reaches the workers within moments) for `expect`."""
        deadline = time.monotonic() + 10
        while True:
            r = client.get(f"{gw.url}/r", headers={"apikey": "jack-key"})
            if r.status_code == 200 and r.headers.get("x-tier") == expect:
                return
            assert time.monotonic() < deadline, (r.status_code, r.headers)
            time.sleep(0.05)

    tier_seen("group-v1")
    put("/consumer_groups/gold", {"plugins": tier("group-v2")}, status=200)
    tier_seen("group-v2")
    # Bad plugin conf in a group: 400 naming the field, nothing stored.
    r = admin.put("/consumer_groups/bad", json={"plugins": {"proxy-rewrite": {"method": "FETCH"}}})
    assert r.status_code == 400 and "consumer_groups[bad].plugins.proxy-rewrite.method" in r.text
    assert admin.get("/consumer_groups/bad").status_code == 404
    # A consumer naming a missing group is refused; a referenced group cannot be deleted.
    r = admin.put("/consumers/rose", json={"group_id": "silver"})
    assert r.status_code == 400 and r.json()["errors"] == ['consumers[rose].group_id: group "silver" not found']
    r = admin.delete("/consumer_groups/gold")
    assert r.status_code == 409 and "consumer [jack] is still using it" in r.text
    admin.close()


# ============================================================ native limiters on consumers and groups
def count(n: int, **extra: Any) -> dict[str, Any]:
    return {"limit-count": {"count": n, "time_window": 60, "key": "consumer_name", **extra}}


def statuses(client: httpx.Client, url: str, apikey: str, n: int) -> list[int]:
    return [client.get(url, headers={"apikey": apikey}).status_code for _ in range(n)]


def test_group_quotas_consumer_override_and_route_fallback(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway({
        "consumer_groups": [
            {"id": "free", "plugins": count(2, rejected_code=429, rejected_msg="free quota used")},
            {"id": "paid", "plugins": count(4)},
        ],
        "consumers": [
            {"username": "jack", "group_id": "free", "plugins": key("jack-key")},
            {"username": "rose", "group_id": "free", "plugins": key("rose-key")},
            {"username": "tom", "group_id": "paid", "plugins": key("tom-key")},
            {"username": "vip", "group_id": "free", "plugins": {**key("vip-key"), **count(3)}},  # own wins
            {"username": "mike", "plugins": key("mike-key")},  # no group: the route's limit
        ],
        "routes": [
            route("r", "/r", up, plugins={"key-auth": {}, "prometheus": {}, **count(5, rejected_code=403)}),
            route("r2", "/r2", up, plugins={"key-auth": {}}),  # no limit of its own
        ],
    })  # fmt: skip
    url = f"{gw.url}/r"
    # Each consumer of a group has its own counter (key consumer_name) with the group's quota.
    assert statuses(client, url, "jack-key", 3) == [200, 200, 429]
    r = client.get(url, headers={"apikey": "jack-key"})
    assert (r.status_code, r.json()) == (429, {"error_msg": "free quota used"})
    assert r.headers["x-ratelimit-limit"] == "2" and r.headers["x-ratelimit-remaining"] == "0"
    assert statuses(client, url, "rose-key", 3) == [200, 200, 429]
    assert statuses(client, url, "tom-key", 5) == [200] * 4 + [503]
    assert statuses(client, url, "vip-key", 4) == [200] * 3 + [503]
    assert statuses(client, url, "mike-key", 6) == [200] * 5 + [403]
    # X-RateLimit-* follow the effective conf.
    r = client.get(f"{gw.url}/r2", headers={"apikey": "tom-key"})
    assert r.status_code == 200
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("4", "3")
    assert 0 < int(r.headers["x-ratelimit-reset"]) <= 60
    # Without `group` the counter is per route: r2 (no limit of its own) gets the group's, fresh.
    assert statuses(client, f"{gw.url}/r2", "jack-key", 3) == [200, 200, 429]
    assert "x-ratelimit-limit" not in client.get(f"{gw.url}/r2", headers={"apikey": "mike-key"}).headers
    # Rejections by a consumer's limit are counted like the route's.
    text = httpx.get(f"{gw.metrics_url}/apisix/prometheus/metrics", timeout=5).text
    for rid, n in (("r", 6), ("r2", 1)):
        line = f'pygateway_limit_rejections_total{{route="{rid}",plugin="limit-count"}} {n}'
        assert line in text.splitlines(), text


def test_group_limit_req_and_shared_group_counter(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway({
        "consumer_groups": [
            {"id": "slow", "plugins": {"limit-req": {"rate": 0.1, "burst": 0, "key": "consumer_name",
                                                     "rejected_code": 429, "rejected_msg": "slow down"}}},
            # `group`: one counter for every route (and every consumer of the group, key constant-like).
            {"id": "pooled", "plugins": count(3, group="pool")},
        ],
        "consumers": [
            {"username": "jack", "group_id": "slow", "plugins": key("jack-key")},
            {"username": "rose", "group_id": "pooled", "plugins": key("rose-key")},
            {"username": "mike", "plugins": key("mike-key")},
        ],
        "routes": [route("a", "/a", up, plugins={"key-auth": {}}), route("b", "/b", up, plugins={"key-auth": {}})],
    })  # fmt: skip
    r1 = client.get(f"{gw.url}/a", headers={"apikey": "jack-key"})
    r2 = client.get(f"{gw.url}/a", headers={"apikey": "jack-key"})
    assert r1.status_code == 200
    assert (r2.status_code, r2.json()) == (429, {"error_msg": "slow down"})
    assert client.get(f"{gw.url}/b", headers={"apikey": "jack-key"}).status_code == 200  # per route
    assert statuses(client, f"{gw.url}/a", "mike-key", 5) == [200] * 5  # no group, no route limit
    # One counter across routes a and b.
    seen = [client.get(f"{gw.url}/{p}", headers={"apikey": "rose-key"}) for p in "abab"]
    assert [r.status_code for r in seen] == [200, 200, 200, 503]
    assert [r.headers["x-ratelimit-remaining"] for r in seen] == ["2", "1", "0", "0"]


def test_limit_count_group_field_on_routes(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    shared = {"limit-count": {"count": 3, "time_window": 60, "group": "g1"}}
    gw = gateway({"routes": [route("a", "/a", up, plugins=shared), route("b", "/b", up, plugins=shared),
                             route("c", "/c", up, plugins={"limit-count": {"count": 1, "time_window": 60}})]})  # fmt: skip
    assert [client.get(f"{gw.url}/{p}").status_code for p in "abab"] == [200, 200, 200, 503]
    assert [client.get(f"{gw.url}/c").status_code for _ in range(2)] == [200, 503]  # its own counter


@pytest.mark.parametrize(("cfg", "needle"), [
    ({"consumers": [{"username": "jack", "plugins": count(0)}]}, "consumers[jack].plugins.limit-count.count"),
    ({"consumer_groups": [{"id": "g", "plugins": {"limit-req": {"rate": 1}}}]},
     "consumer_groups[g].plugins.limit-req.burst: required"),
])  # fmt: skip
def test_consumer_limit_config_errors(tmp_path: Path, cfg: dict[str, Any], needle: str) -> None:
    out = validate(tmp_path, {"routes": [{"id": "r", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}}}], **cfg})
    assert out.returncode == 1
    assert needle in out.stdout + out.stderr, out.stdout + out.stderr


def test_group_quota_update_through_the_admin_api(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(None)
    admin = httpx.Client(base_url=gw.admin_url, headers=gw.admin_headers, timeout=10)
    for path, body in [
        ("/consumer_groups/free", {"plugins": count(2)}),
        ("/consumers/jack", {"username": "jack", "group_id": "free", "plugins": key("jack-key")}),
        ("/routes/1", {"uri": "/r", "upstream": {"nodes": {up.addr: 1}}, "plugins": {"key-auth": {}}}),
    ]:
        assert admin.put(path, json=body).status_code in (200, 201)
    url = f"{gw.url}/r"
    deadline = time.monotonic() + 10
    while client.get(url, headers={"apikey": "jack-key"}).status_code != 503:  # the config reached the worker
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert admin.put("/consumer_groups/free", json={"plugins": count(4)}).status_code == 200
    while True:  # rejected (nothing counted) until the new quota arrives; then 2 more of 4
        r = client.get(url, headers={"apikey": "jack-key"})
        if r.status_code == 200:
            break
        assert r.status_code == 503 and time.monotonic() < deadline + 10
        time.sleep(0.05)
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("4", "1")
    assert statuses(client, url, "jack-key", 2) == [200, 503]
    admin.close()
