"""`limit-count` with `policy: redis`: two gateway nodes (two `pygateway run` masters, 2 workers each)
share one real `redis-server` and one limit. Workers lease tokens from Redis and admit requests locally;
the totals must still be exact across nodes and workers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from helpers import (
    ROOT,
    Gateway,
    cpu_ticks,
    free_port,
    get,
    listening_workers,
    route,
    wait_for,
    wait_port,
    write_config,
)

REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A throwaway redis-server on a free loopback port, no persistence."""

    def __init__(self, log_path: Path) -> None:
        self.port, self.log_path = free_port(), log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        wait_for(lambda: self.client().ping(), 5, "redis to answer PING")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def lease_calls(self) -> int:
        """How many times the gateways ran their lease script (EVAL or EVALSHA)."""
        stats = self.client().info("commandstats")
        return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha"))

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    # A missing redis-server is a broken test machine, not a reason to skip: .ci/run installs it.
    assert os.access(REDIS_BIN, os.X_OK), "redis-server is not installed (apt-get install -y redis-server)"
    server = RedisServer(tmp_path / "redis.log")
    server.start()
    yield server
    server.kill()


def limit(rs: RedisServer | int, **conf: Any) -> dict[str, Any]:
    port = rs if isinstance(rs, int) else rs.port
    return {"limit-count": {"policy": "redis", "redis_host": "127.0.0.1", "redis_port": port, **conf}}


def start_node(gateway: Any, routes: list[dict[str, Any]]) -> Gateway:
    gw = gateway({"routes": routes}, workers=2)
    pids = set(gw.worker_pids())
    assert len(pids) == 2
    wait_for(lambda: listening_workers(gw) == pids, 10, "both workers listening")
    return gw


def burst(nodes: list[Gateway], path: str, n: int, threads: int, headers: dict[str, str] | None = None
          ) -> list[tuple[int, int, dict[str, str]]]:  # fmt: skip
    """n requests spread round robin over the nodes, each on a fresh connection (so SO_REUSEPORT spreads
    them over each node's workers), from `threads` threads released together. (node index, status, headers)."""
    gate = threading.Barrier(threads)

    def one(i: int) -> tuple[int, int, dict[str, str]]:
        if i < threads:
            gate.wait(10)
        st, h, _ = get(nodes[i % len(nodes)].port, path, timeout=10, headers=headers)
        return i % len(nodes), st, h

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def test_two_nodes_admit_exactly_count(upstream, gateway, redis_server) -> None:
    up = upstream()
    count = 60
    routes = [route("r1", "/lim", up, plugins=limit(redis_server, count=count, time_window=60))]
    a, b = start_node(gateway, routes), start_node(gateway, routes)

    # One keep-alive connection stays on one worker: Remaining counts down one by one there.
    with httpx.Client(base_url=a.url, trust_env=False) as c:
        seq = [c.get("/lim") for _ in range(5)]
    assert [r.status_code for r in seq] == [200] * 5
    assert [int(r.headers["x-ratelimit-remaining"]) for r in seq] == [59, 58, 57, 56, 55]
    for r in seq:
        assert r.headers["x-ratelimit-limit"] == "60"
        assert 0 < int(r.headers["x-ratelimit-reset"]) <= 60

    pids = a.worker_pids() + b.worker_pids()
    before = {pid: cpu_ticks(pid) for pid in pids}
    results = burst([a, b], "/lim", 400, threads=16)
    after = {pid: cpu_ticks(pid) for pid in pids}
    # All four workers served part of the burst (else "exact across workers" proved nothing).
    assert all(after[p] > before[p] for p in pids), (before, after)
    codes = Counter(st for _, st, _ in results)
    assert codes == {200: count - 5, 503: 400 - count + 5}, codes
    per_node = Counter(node for node, st, _ in results if st == 200)
    assert per_node[0] > 0 and per_node[1] > 0, per_node  # both nodes drew from the one limit
    for _, st, h in results:
        assert h["x-ratelimit-limit"] == "60"
        assert 0 < int(h["x-ratelimit-reset"]) <= 60
        if st == 503:
            assert h["x-ratelimit-remaining"] == "0"
    assert int(redis_server.client().get("plugin-limit-count:route:r1:127.0.0.1") or 0) == count

    # The window is spent and every worker knows it: more rejections cost no Redis call.
    calls = redis_server.lease_calls()
    assert Counter(st for _, st, _ in burst([a, b], "/lim", 100, threads=8)) == {503: 100}
    assert redis_server.lease_calls() == calls


def test_leases_batch_redis_calls(upstream, gateway, redis_server) -> None:
    up = upstream()
    routes = [route("r1", "/big", up, plugins=limit(redis_server, count=100000, time_window=60))]
    a, b = start_node(gateway, routes), start_node(gateway, routes)
    results = burst([a, b], "/big", 600, threads=16)
    assert Counter(st for _, st, _ in results) == {200: 600}
    calls = redis_server.lease_calls()
    assert 4 <= calls < 600 // 3, calls  # at least one lease per worker; far fewer than requests
    # Tokens handed out = tokens used + those still leased; never more than one lease per worker left.
    handed = int(redis_server.client().get("plugin-limit-count:route:r1:127.0.0.1") or 0)
    assert handed >= 600, handed
    remaining = min(int(h["x-ratelimit-remaining"]) for _, _, h in results)
    assert 100000 - handed <= remaining < 100000 - 600 + 1024 * 4, (handed, remaining)


def test_window_reset_and_group_shared_by_routes(upstream, gateway, redis_server) -> None:
    up = upstream()
    conf = limit(redis_server, count=3, time_window=2, group="g1", key_type="constant", key="all",
                 rejected_code=429, rejected_msg="slow down")  # fmt: skip
    routes = [route("r1", "/one", up, plugins=conf), route("r2", "/two", up, plugins=conf)]
    a, b = start_node(gateway, routes), start_node(gateway, routes)

    def window() -> list[tuple[int, dict[str, str], bytes]]:
        return [get(gw.port, path) for gw, path in ((a, "/one"), (b, "/two"), (a, "/two"), (b, "/one"))]

    first = window()
    assert [st for st, _, _ in first] == [200, 200, 200, 429], first
    _, h, body = first[3]
    assert json.loads(body) == {"error_msg": "slow down"}
    assert h["x-ratelimit-remaining"] == "0" and h["x-ratelimit-limit"] == "3"
    reset = int(h["x-ratelimit-reset"])
    assert 0 < reset <= 2
    assert redis_server.client().exists("plugin-limit-count:group:g1:all")

    time.sleep(reset + 0.1)
    second = window()
    assert [st for st, _, _ in second] == [200, 200, 200, 429], second


def test_redis_down_degrades_or_fails(upstream, gateway, redis_server) -> None:
    up = upstream()
    per_user = {"count": 1000, "time_window": 60, "key": "http_x_user"}
    routes = [
        route("open", "/open", up, plugins=limit(redis_server, allow_degradation=True, **per_user)),
        route("closed", "/closed", up, plugins=limit(redis_server, **per_user)),
    ]
    gw = start_node(gateway, routes)
    for path in ("/open", "/closed"):
        assert get(gw.port, path, headers={"X-User": "u1"})[0] == 200

    redis_server.kill()
    for i in range(20):  # new keys: no lease to draw from, Redis is needed and gone
        user = {"X-User": f"new{i}"}
        assert get(gw.port, "/open", headers=user)[0] == 200
        st, _, body = get(gw.port, "/closed", headers=user)
        assert (st, json.loads(body)) == (500, {"error_msg": "failed to limit count"})
    failures = gw.log().count("limit-count: redis 127.0.0.1")
    assert 1 <= failures <= 2, gw.log()  # once per worker for the incident, not once per request

    redis_server.start()  # same port
    wait_for(lambda: get(gw.port, "/closed", headers={"X-User": "back"})[0] == 200, 10, "recovery")
    gw.wait_log("answers again")


def test_redis_timeout(upstream, gateway) -> None:
    # Accepts connections (the kernel completes the handshake) but never answers a command.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        up = upstream()
        conf = {"count": 10, "time_window": 60, "redis_timeout": 300}
        routes = [
            route("open", "/open", up, plugins=limit(silent.getsockname()[1], allow_degradation=True, **conf)),
            route("closed", "/closed", up, plugins=limit(silent.getsockname()[1], **conf)),
        ]
        gw = gateway({"routes": routes}, workers=1)
        t0 = time.monotonic()
        assert get(gw.port, "/closed")[0] == 500
        assert 0.25 < time.monotonic() - t0 < 3
        t0 = time.monotonic()
        assert get(gw.port, "/open")[0] == 200
        assert time.monotonic() - t0 < 0.25  # right after a failure Redis is not waited for again
    finally:
        silent.close()


def validate(tmp_path: Path, plugin: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "apisix.yaml"
    r = {"id": "r1", "uri": "/x", "upstream": {"nodes": {"127.0.0.1:1980": 1}}, "plugins": {"limit-count": plugin}}
    write_config(cfg, {"routes": [r]})
    cmd = [sys.executable, "-m", "pygateway.cli", "validate", str(cfg)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)


def test_bad_redis_config_names_the_field(tmp_path: Path) -> None:
    out = validate(tmp_path, {"count": 1, "time_window": 1, "policy": "redis"})
    assert out.returncode == 1
    assert "routes[r1].plugins.limit-count.redis_host: required" in out.stderr, out.stderr
    out = validate(tmp_path, {"count": 1, "time_window": 1, "policy": "redis", "redis_host": "localhost", "redis_port": 0})
    assert out.returncode == 1 and "limit-count.redis_port" in out.stderr, out.stderr
    out = validate(tmp_path, {"count": 1, "time_window": 1, "policy": "redis", "redis_host": "localhost"})
    assert out.returncode == 0, out.stderr


def test_redis_policy_on_consumer_groups(upstream, gateway, redis_server) -> None:
    """A group's `policy: redis` conf replaces the route's native one for its consumers, and a group's
    native conf replaces the route's redis one (APISIX precedence: consumer group > route)."""
    up = upstream()
    by_consumer = {"time_window": 60, "key": "consumer_name"}
    gw = gateway({
        "consumer_groups": [
            {"id": "cluster", "plugins": limit(redis_server, count=2, rejected_code=429, **by_consumer)},
            {"id": "local", "plugins": {"limit-count": {"count": 1, **by_consumer}}},
        ],
        "consumers": [
            {"username": "jack", "group_id": "cluster", "plugins": {"key-auth": {"key": "jack-key"}}},
            {"username": "rose", "group_id": "local", "plugins": {"key-auth": {"key": "rose-key"}}},
            {"username": "mike", "plugins": {"key-auth": {"key": "mike-key"}}},
        ],
        "routes": [
            route("n", "/n", up, plugins={"key-auth": {}, "limit-count": {"count": 100, **by_consumer}}),
            route("d", "/d", up, plugins={"key-auth": {}, **limit(redis_server, count=5, **by_consumer)}),
        ],
    })  # fmt: skip
    store = redis_server.client()

    def seq(path: str, apikey: str, n: int) -> list[tuple[int, str]]:
        out = []
        for _ in range(n):
            st, h, _ = get(gw.port, path, headers={"apikey": apikey})
            out.append((st, h.get("x-ratelimit-limit", "")))
        return out

    assert seq("/n", "jack-key", 3) == [(200, "2"), (200, "2"), (429, "2")]
    assert int(store.get("plugin-limit-count:route:n:jack") or 0) == 2
    assert seq("/n", "mike-key", 1) == [(200, "100")]  # no group: the route's native conf
    assert seq("/d", "rose-key", 2) == [(200, "1"), (503, "1")]  # the group's native conf, no Redis
    assert not store.exists("plugin-limit-count:route:d:rose")
    assert seq("/d", "mike-key", 1) == [(200, "5")]
    assert int(store.get("plugin-limit-count:route:d:mike") or 0) >= 1
    assert seq("/d", "jack-key", 3) == [(200, "2"), (200, "2"), (429, "2")]
