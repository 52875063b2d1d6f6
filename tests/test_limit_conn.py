"""limit-conn through real sockets: concurrent slow requests against the echo upstream, counted
node-wide in the shared-memory table (2 worker processes), delays, rejections and releases."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml
from helpers import ROOT, Gateway, Upstream, route

GatewayFactory = Callable[..., Gateway]
UpstreamFactory = Callable[..., Upstream]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, float, httpx.Response]:
    """One request on its own connection: (status, seconds, response)."""
    t0 = time.monotonic()
    with httpx.Client(timeout=20) as c:
        r = c.get(url, headers=headers)
    return r.status_code, time.monotonic() - t0, r


def concurrently(urls: list[str], headers: list[dict[str, str]] | None = None) -> list[tuple[int, float, httpx.Response]]:
    with ThreadPoolExecutor(len(urls)) as pool:
        futs = [pool.submit(get, u, (headers or [{}] * len(urls))[i]) for i, u in enumerate(urls)]
        return [f.result() for f in futs]


def limit_conn(**extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr",
                            "only_use_default_delay": True}  # fmt: skip
    conf.update(extra)
    return {"limit-conn": conf}


def test_node_wide_exactly_conn_plus_burst_admitted_across_two_workers(
    upstream: UpstreamFactory, gateway: GatewayFactory
) -> None:
    up = upstream()
    gw = gateway({"routes": [route("r", "/delay/*", up, plugins=limit_conn(conn=2, burst=1))]}, workers=2)
    for _batch in range(2):  # the second batch proves every place was given back
        results = concurrently([f"{gw.url}/delay/1500"] * 12)
        statuses = sorted(s for s, _, _ in results)
        assert statuses == [200] * 3 + [503] * 9, statuses
        rejected = [r for s, _, r in results if s == 503]
        assert all(r.json() == {"error_msg": "Service Unavailable"} for r in rejected)
        # Rejections are immediate; admitted requests waited for the upstream.
        assert max(t for s, t, _ in results if s == 503) < 1.2
        assert min(t for s, t, _ in results if s == 200) >= 1.4


def test_between_conn_and_burst_is_delayed(upstream: UpstreamFactory, gateway: GatewayFactory) -> None:
    up = upstream()
    gw = gateway({"routes": [route("r", "/delay/*", up, plugins=limit_conn(conn=1, burst=1, default_conn_delay=0.6))]})
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(get, f"{gw.url}/delay/2500")
        time.sleep(0.4)  # the first holds the only `conn` place
        b, c = pool.submit(get, f"{gw.url}/delay/0"), pool.submit(get, f"{gw.url}/delay/0")
        results = sorted([b.result(), c.result()], key=lambda x: x[0])
        assert first.result()[0] == 200
    (ok, ok_time, _), (rejected, rej_time, _) = results
    assert (ok, rejected) == (200, 503)
    assert 0.55 <= ok_time < 1.5, ok_time  # the burst request waited default_conn_delay, not for the first
    assert rej_time < 0.5, rej_time


def test_rejected_code_and_msg_and_release_after_errors(upstream: UpstreamFactory, gateway: GatewayFactory) -> None:
    up = upstream()
    gw = gateway({"routes": [
        route("r", "/*", up, plugins=limit_conn(rejected_code=429, rejected_msg="too many")),
        # A native limiter rejects after limit-conn admitted: the place must still come back.
        route("lc", "/lc/*", up, plugins={**limit_conn(rejected_code=429),
                                           "limit-count": {"count": 1, "time_window": 60}}),
    ]})  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(get, f"{gw.url}/delay/1500")
        time.sleep(0.4)
        status, _, r = get(f"{gw.url}/status/200")
        assert (status, r.json()) == (429, {"error_msg": "too many"})
        assert slow.result()[0] == 200
    # Upstream errors release their place: every one of these is answered by the upstream.
    assert [get(f"{gw.url}/status/500")[0] for _ in range(4)] == [500] * 4
    assert [get(f"{gw.url}/status/502")[0] for _ in range(2)] == [502] * 2
    assert get(f"{gw.url}/status/200")[0] == 200
    assert [get(f"{gw.url}/lc/x")[0] for _ in range(4)] == [200, 503, 503, 503]


def test_client_that_disconnects_gives_its_place_back(upstream: UpstreamFactory, gateway: GatewayFactory) -> None:
    up = upstream()
    gw = gateway({"routes": [route("r", "/*", up, plugins=limit_conn())]})
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"GET /delay/5000 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        assert get(f"{gw.url}/status/200")[0] == 503  # the slow request holds the only place
        s.close()
        # Released when the abandoned request is dropped, long before the upstream would answer.
        deadline = time.monotonic() + 1.5
        while get(f"{gw.url}/status/200")[0] != 200:
            assert time.monotonic() < deadline, "place not given back after the client left"
            time.sleep(0.05)


def test_var_combination_keys_are_separate(upstream: UpstreamFactory, gateway: GatewayFactory) -> None:
    up = upstream()
    plugins = limit_conn(key="$http_x_user", key_type="var_combination")
    gw = gateway({"routes": [route("r", "/*", up, plugins=plugins)]})
    urls = [f"{gw.url}/delay/1200"] * 4
    hdrs = [{"x-user": "ann"}, {"x-user": "bob"}, {"x-user": "ann"}, {"x-user": "bob"}]
    results = concurrently(urls, hdrs)
    by_user: dict[str, list[int]] = {}
    for h, (s, _, _) in zip(hdrs, results):
        by_user.setdefault(h["x-user"], []).append(s)
    assert {u: sorted(v) for u, v in by_user.items()} == {"ann": [200, 503], "bob": [200, 503]}


def validate(tmp_path: Path, conf: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    cfg = {"routes": [{"id": "r1", "uri": "/a", "upstream": {"nodes": {"127.0.0.1:1980": 1}},
                       "plugins": {"limit-conn": conf}}]}  # fmt: skip
    path = tmp_path / "apisix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "pygateway.cli", "validate", str(path)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    good = {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}
    assert validate(tmp_path, good).returncode == 0
    P = "routes[r1].plugins.limit-conn"
    cases = [
        ({k: v for k, v in good.items() if k != "conn"}, f"{P}.conn: required"),
        ({k: v for k, v in good.items() if k != "key"}, f"{P}.key: required"),
        ({**good, "conn": 0}, f"{P}.conn: expected int >= 1"),
        ({**good, "burst": -1}, f"{P}.burst: expected int >= 0"),
        ({**good, "default_conn_delay": 0}, f"{P}.default_conn_delay: expected"),
        ({**good, "key_type": "constant"}, f"{P}.key_type: invalid enum value"),
        ({**good, "policy": "redis"}, f"{P}.policy:"),
        ({**good, "rejected_code": 600}, f"{P}.rejected_code:"),
        ({**good, "rejected_msg": ""}, f"{P}.rejected_msg:"),
    ]
    for conf, expected in cases:
        res = validate(tmp_path, conf)
        assert res.returncode == 1 and expected in res.stderr, (conf, res.stderr)
