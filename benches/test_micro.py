"""Micro benchmarks (pytest-benchmark). Each one also asserts its result, so it doubles as a test.

    pip install pytest-benchmark          # if missing
    python -m pytest benches/test_micro.py -q                    # run + timing table
    python -m pytest benches/test_micro.py --benchmark-disable   # just check they pass

The figures include one Python -> Rust call (argument conversion, result back to Python): they are an
upper bound of what the data plane spends natively on the same work. Numbers only mean something with a
release build of `pygateway._core`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

HERE = Path(__file__).resolve().parent
try:
    import pygateway  # noqa: F401
except ImportError:  # run from a checkout without an installed package
    sys.path.insert(0, str(HERE.parent))

from pygateway import _core
from pygateway.worker.host import ACCESS, Chain

sys.path.insert(0, str(HERE / "bench_plugins"))
import pytest_benchmark  # noqa: F401 - a test dependency: fail loudly if it is missing
from bench_plugins import BenchKeyCheck, BenchNoop

UPSTREAM = {"nodes": [{"host": "127.0.0.1", "port": 80, "weight": 1}]}


# ----------------------------------------------------------------------------- route lookup
def snapshot(n: int) -> bytes:
    """n routes, a third each: exact `/svc{i}/items`, prefix `/p{i}/*`, parameter `/u{i}/:id/orders`
    (the parameter ones also restricted to GET, as APIs often are)."""
    routes: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            r = {"id": f"exact-{i}", "uris": [f"/svc{i}/items"]}
        elif kind == 1:
            r = {"id": f"prefix-{i}", "uris": [f"/p{i}/*"]}
        else:
            r = {"id": f"param-{i}", "uris": [f"/u{i}/:id/orders"], "methods": ["GET"]}
        r["upstream"] = UPSTREAM
        routes.append(r)
    return orjson.dumps({"version": 1, "routes": routes})


def _last(n: int, kind: int) -> int:
    """Highest route index < n of the given kind (the deepest/last-inserted one)."""
    i = n - 1
    while i % 3 != kind:
        i -= 1
    return i


_MATCHERS: dict[int, Any] = {}


def matcher(n: int) -> Any:
    if n not in _MATCHERS:
        m = _core.RouteMatcher(snapshot(n))
        assert len(m) == n
        _MATCHERS[n] = m
    return _MATCHERS[n]


def lookup_cases(n: int) -> dict[str, tuple[str, str, str | None]]:
    e, p, q = _last(n, 0), _last(n, 1), _last(n, 2)
    return {
        "exact": ("GET", f"/svc{e}/items", f"exact-{e}"),
        "prefix": ("GET", f"/p{p}/a/b/c", f"prefix-{p}"),
        "param": ("GET", f"/u{q}/42/orders", f"param-{q}"),
        "param-wrong-method": ("POST", f"/u{q}/42/orders", None),
        "miss": ("GET", "/nothing/here", None),
    }


@pytest.mark.parametrize("n", [10, 10_000])
@pytest.mark.parametrize("case", ["exact", "prefix", "param", "param-wrong-method", "miss"])
def test_route_lookup(benchmark: Any, n: int, case: str) -> None:
    m = matcher(n)
    method, path, want = lookup_cases(n)[case]
    benchmark.group = f"route lookup ({n} routes)"
    got = benchmark(m.find, method, "example.com", path)
    assert got == want


def test_route_lookup_all_cases_correct() -> None:
    """Every route of the 10 000 is reachable (no benchmark: correctness of the generated table)."""
    n = 10_000
    m = matcher(n)
    for i in range(0, n, 97):
        kind = i % 3
        if kind == 0:
            assert m.find("GET", "h", f"/svc{i}/items") == f"exact-{i}"
        elif kind == 1:
            assert m.find("GET", "h", f"/p{i}/x") == f"prefix-{i}"
        else:
            assert m.find("GET", "h", f"/u{i}/7/orders") == f"param-{i}"
            assert m.find("GET", "h", f"/u{i}//orders") is None  # `:id` needs a non-empty segment


# ----------------------------------------------------------------------------- limiter
def test_limiter_gcra_allow(benchmark: Any) -> None:
    lim = _core.Limiter()
    benchmark.group = "limiter"
    # huge rate: every call is admitted without delay
    assert benchmark(lim.gcra, "client-1", 1e9, 1e9) == 0.0


def test_limiter_gcra_reject(benchmark: Any) -> None:
    lim = _core.Limiter()
    benchmark.group = "limiter"
    assert lim.gcra("client-2", 0.001, 0) == 0.0  # first one passes, the bucket is now full for 1000 s
    assert benchmark(lim.gcra, "client-2", 0.001, 0) is None


def test_limiter_fixed_window(benchmark: Any) -> None:
    lim = _core.Limiter()
    benchmark.group = "limiter"
    # the count is capped at 2**24 - 1 by the core; far more than the calls a benchmark makes
    allowed, remaining, reset = benchmark(lim.fixed_window, "client-3", 10**7, 60.0)
    assert allowed is True
    assert remaining < 10**7
    assert 0 < reset <= 60.001  # the window end is kept in whole milliseconds, rounded up


def test_limiter_fixed_window_exhausted() -> None:
    lim = _core.Limiter()
    assert [lim.fixed_window("k", 3, 60.0)[:2] for _ in range(4)] == [
        (True, 2),
        (True, 1),
        (True, 0),
        (False, 0),
    ]


# ----------------------------------------------------------------------------- Python plugin chain
# This measures only the Python side of a plugin call: Chain.run looping over the access hooks and
# calling them. The Rust -> Python crossing (GIL, building the Request view, converting the result) is
# not in here; it is part of the macro benchmark (gw-noop vs gw-plain in benches/macro.py).
class FakeHeaders(dict):  # type: ignore[type-arg]
    pass


class FakeRequest:
    """Stand-in for `pygateway._core.Request`, which has no Python constructor."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = FakeHeaders(headers)
        self.method = "GET"
        self.path = "/noop"


def test_chain_noop(benchmark: Any) -> None:
    chain = Chain([BenchNoop(BenchNoop.parse_config({}))])
    req, ctx = FakeRequest({}), {}
    benchmark.group = "python plugin chain"
    assert benchmark(chain.run, ACCESS, req, ctx) is None


def test_chain_keycheck_ok(benchmark: Any) -> None:
    chain = Chain([BenchKeyCheck(BenchKeyCheck.parse_config({}))])
    req, ctx = FakeRequest({"apikey": "key-1"}), {}
    benchmark.group = "python plugin chain"
    assert benchmark(chain.run, ACCESS, req, ctx) is None
    assert ctx["consumer"] == "user-1"


def test_chain_keycheck_rejects(benchmark: Any) -> None:
    chain = Chain([BenchKeyCheck(BenchKeyCheck.parse_config({}))])
    req, ctx = FakeRequest({"apikey": "wrong"}), {}
    benchmark.group = "python plugin chain"
    status, headers, body = benchmark(chain.run, ACCESS, req, ctx)
    assert status == 401
    assert ("content-type", "application/json") in headers
    assert orjson.loads(body) == {"error_msg": "Missing or invalid API key"}


def test_chain_empty_phase(benchmark: Any) -> None:
    """A phase no plugin hooks (the Rust side skips the call entirely via `Chain.phases`)."""
    chain = Chain([BenchNoop(BenchNoop.parse_config({}))])
    assert not chain.phases & (1 << 0)  # no rewrite hook
    benchmark.group = "python plugin chain"
    assert benchmark(chain.run, 0, FakeRequest({}), {}) is None
