"""A global rule's `limit-count` / `limit-req` applies to every route, with the rule's own counter: APISIX
keys a global rule's limiter by the rule, so requests to different routes count against one limit."""

from __future__ import annotations

from typing import Any

import httpx
from helpers import route


def _routes(up: Any) -> list[dict[str, Any]]:
    return [route("a", "/a", up), route("b", "/b", up)]


def test_global_limit_count_is_shared_by_all_routes(gateway: Any, upstream: Any) -> None:
    up = upstream()
    rule = {"id": "g", "plugins": {"limit-count": {"count": 3, "time_window": 60, "rejected_code": 429}}}
    gw = gateway({"routes": _routes(up), "global_rules": [rule]})
    with httpx.Client(base_url=gw.url, timeout=5) as c:
        codes = [c.get(p).status_code for p in ("/a", "/b", "/a", "/b", "/a")]
        assert codes == [200, 200, 200, 429, 429]
        r = c.get("/b")
        assert r.status_code == 429
        assert r.json() == {"error_msg": "Too Many Requests"}
        assert r.headers["x-ratelimit-limit"] == "3" and r.headers["x-ratelimit-remaining"] == "0"


def test_global_limit_count_quota_headers_count_across_routes(gateway: Any, upstream: Any) -> None:
    up = upstream()
    rule = {"id": "g", "plugins": {"limit-count": {"count": 10, "time_window": 60}}}
    gw = gateway({"routes": _routes(up), "global_rules": [rule]})
    with httpx.Client(base_url=gw.url, timeout=5) as c:
        remaining = [c.get(p).headers["x-ratelimit-remaining"] for p in ("/a", "/b", "/a")]
        assert remaining == ["9", "8", "7"]


def test_global_limit_req_rejects(gateway: Any, upstream: Any) -> None:
    up = upstream()
    # One request a minute, no burst: the second request (to another route) is over the rate.
    rule = {"id": "g", "plugins": {"limit-req": {"rate": 1 / 60, "burst": 0, "nodelay": True, "rejected_code": 503}}}
    gw = gateway({"routes": _routes(up), "global_rules": [rule]})
    with httpx.Client(base_url=gw.url, timeout=5) as c:
        assert c.get("/a").status_code == 200
        assert c.get("/b").status_code == 503
        assert c.get("/a").status_code == 503


def test_global_and_route_limits_both_apply(gateway: Any, upstream: Any) -> None:
    up = upstream()
    routes = [route("a", "/a", up, plugins={"limit-count": {"count": 1, "time_window": 60, "rejected_code": 403}}),
              route("b", "/b", up)]  # fmt: skip
    rule = {"id": "g", "plugins": {"limit-count": {"count": 3, "time_window": 60, "rejected_code": 429}}}
    gw = gateway({"routes": routes, "global_rules": [rule]})
    with httpx.Client(base_url=gw.url, timeout=5) as c:
        # /a: the route's own limit (1) first hits; /b then takes the global rule's remaining count.
        codes = [c.get(p).status_code for p in ("/a", "/a", "/b", "/b", "/b")]
        assert codes == [200, 403, 200, 429, 429]
