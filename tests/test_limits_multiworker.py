"""limit-count and limit-req with two worker processes: the counters live in shared memory, so the
limits hold for the node, not per worker. Requests use fresh connections so SO_REUSEPORT spreads them
over both workers; that both served traffic is checked from their CPU time in /proc."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from helpers import Gateway, cpu_ticks, get, listening_workers, route, wait_for


def start2(gateway: Any, routes: list[dict[str, Any]]) -> Gateway:
    gw = gateway({"routes": routes}, workers=2)
    pids = set(gw.worker_pids())
    assert len(pids) == 2
    wait_for(lambda: listening_workers(gw) == pids, 5, "both workers listening")
    return gw


def burst(gw: Gateway, path: str, n: int, threads: int, headers: dict[str, str] | None = None) -> list[Any]:
    """n requests, each on its own connection, from `threads` threads released together."""
    gate = threading.Barrier(threads)

    def one(i: int) -> tuple[float, float, int, dict[str, str], bytes]:
        if i < threads:
            gate.wait(5)
        t0 = time.monotonic()
        st, h, body = get(gw.port, path, timeout=10, headers=headers)
        return t0, time.monotonic(), st, h, body

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def test_limit_count_is_exact_across_two_workers(upstream, gateway) -> None:
    up = upstream()
    gw = start2(gateway, [route("lc", "/lc", up, plugins={"limit-count": {"count": 100, "time_window": 60}})])
    pids = gw.worker_pids()

    # A few in sequence: Remaining counts down one by one.
    seq = [get(gw.port, "/lc") for _ in range(5)]
    assert [s for s, _, _ in seq] == [200] * 5
    assert [int(h["x-ratelimit-remaining"]) for _, h, _ in seq] == [99, 98, 97, 96, 95]

    before = {pid: cpu_ticks(pid) for pid in pids}
    results = burst(gw, "/lc", 295, threads=16)
    after = {pid: cpu_ticks(pid) for pid in pids}

    codes = Counter(st for _, _, st, _, _ in results)
    assert codes == {200: 95, 503: 200}, codes  # 100 in total with the 5 above, whichever worker served
    remaining = sorted(int(h["x-ratelimit-remaining"]) for _, _, st, h, _ in results if st == 200)
    assert remaining == list(range(95)), remaining  # each quota unit handed out exactly once
    for _, _, st, h, _ in results:
        assert h["x-ratelimit-limit"] == "100"
        assert 0 < int(h["x-ratelimit-reset"]) <= 60
        if st == 503:
            assert h["x-ratelimit-remaining"] == "0"
    # Both workers served part of the burst (otherwise "exact across workers" proved nothing).
    assert all(after[p] > before[p] for p in pids), (before, after)


def test_limit_req_nodelay_rejects_over_rate(upstream, gateway) -> None:
    rate = 5
    gw = start2(gateway, [route("lr", "/lr", upstream(),
                                plugins={"limit-req": {"rate": rate, "burst": 0, "nodelay": True}})])  # fmt: skip
    results = burst(gw, "/lr", 20, threads=20)
    elapsed = max(t1 for _, t1, _, _, _ in results) - min(t0 for t0, _, _, _, _ in results)
    codes = Counter(st for _, _, st, _, _ in results)
    assert set(codes) <= {200, 503}, codes
    allowed = codes[200]
    # GCRA with burst 0: one request, then one per 1/rate seconds. Over the whole burst window:
    assert 1 <= allowed <= rate * elapsed + 0 + 1, (allowed, elapsed)
    assert codes[503] >= 20 - (rate * elapsed + 1)
    # nodelay: nothing was held back, the 200s came at once.
    lat = [t1 - t0 for t0, t1, st, _, _ in results if st == 200]
    assert max(lat) < 1 / rate + 1.0  # generous for a loaded machine; a delay would add >= 1/rate each


def test_limit_req_burst_delays_instead_of_rejecting(upstream, gateway) -> None:
    rate, b = 2.0, 2  # T = 0.5 s: requests 2 and 3 wait 0.5 s and 1.0 s after the first
    gw = start2(gateway, [route("lr", "/lr", upstream(), plugins={"limit-req": {"rate": rate, "burst": b}})])
    t_start = time.monotonic()
    results = burst(gw, "/lr", 3, threads=3)
    assert [st for _, _, st, _, _ in results] == [200, 200, 200]  # delayed, not rejected
    done = sorted(t1 - t_start for _, t1, _, _, _ in results)
    # Whatever the arrival spread, the k-th admission is not before first arrival + k*T.
    assert done[1] >= 1 / rate - 0.02, done
    assert done[2] >= 2 / rate - 0.02, done
    assert done[2] < 2 / rate + 2.0, done


def test_limit_keyed_by_header_has_separate_buckets(upstream, gateway) -> None:
    up = upstream()
    gw = start2(gateway, [
        route("lc", "/lc", up, plugins={"limit-count": {"count": 2, "time_window": 60, "key": "http_x_user"}}),
        route("lr", "/lr", up, plugins={"limit-req": {"rate": 0.5, "burst": 0, "nodelay": True, "key": "http_x_user"}}),
    ])  # fmt: skip

    def codes(path: str, user: str, n: int) -> list[int]:
        return [get(gw.port, path, headers={"X-User": user})[0] for _ in range(n)]

    assert codes("/lc", "alice", 3) == [200, 200, 503]
    assert codes("/lc", "bob", 3) == [200, 200, 503]  # alice's use did not count against bob
    assert codes("/lc", "alice", 1) == [503]
    _, h, _ = get(gw.port, "/lc", headers={"X-User": "carol"})
    assert h["x-ratelimit-remaining"] == "1"

    assert codes("/lr", "alice", 2) == [200, 503]  # rate 0.5/s: the next one is 2 s away
    assert codes("/lr", "bob", 2) == [200, 503]


def test_rejected_code_and_msg_are_honoured(upstream, gateway) -> None:
    up = upstream()
    gw = start2(gateway, [
        route("lc", "/lc", up, plugins={"limit-count": {
            "count": 1, "time_window": 60, "rejected_code": 429, "rejected_msg": "slow down"}}),
        route("lr", "/lr", up, plugins={"limit-req": {
            "rate": 0.5, "burst": 0, "nodelay": True, "rejected_code": 418, "rejected_msg": "teapot says no"}}),
        route("plain", "/plain", up, plugins={"limit-count": {"count": 1, "time_window": 60, "rejected_code": 429}}),
    ])  # fmt: skip

    assert get(gw.port, "/lc")[0] == 200
    st, h, body = get(gw.port, "/lc")
    assert st == 429
    assert h["content-type"].startswith("application/json")
    assert json.loads(body) == {"error_msg": "slow down"}
    assert h["x-ratelimit-remaining"] == "0"

    assert get(gw.port, "/lr")[0] == 200
    st, h, body = get(gw.port, "/lr")
    assert st == 418
    assert json.loads(body) == {"error_msg": "teapot says no"}

    assert get(gw.port, "/plain")[0] == 200
    st, _, _ = get(gw.port, "/plain")
    assert st == 429
