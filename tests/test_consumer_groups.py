"""Consumer groups and consumers' plugins (APISIX precedence: consumer > consumer group > route), in
the standalone YAML and through the admin API, plus consumer-restriction by group and by service."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, Upstream, free_port, route
from tests.test_auth_plugins import sent, validate

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
