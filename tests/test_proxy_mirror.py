"""proxy-mirror through real sockets: the gateway proxies to the echo upstream and sends copies to a
recording HTTP server (a real server on loopback, in a thread of the test), which may answer slowly."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import ROOT, Gateway, Upstream, free_port, route

GatewayFactory = Callable[..., Gateway]
UpstreamFactory = Callable[..., Upstream]


class Recorder:
    """An HTTP/1.1 server that records every request it gets, answering after `delay` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def handle_one_request(self) -> None:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    return
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                with rec.lock:
                    rec.requests.append({"method": self.command, "path": self.path,
                                         "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})  # fmt: skip
                time.sleep(delay)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"mirror got {len(self.requests)} requests, expected {n}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(delay: float = 0.0) -> Recorder:
        made.append(Recorder(delay))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def test_copies_method_path_headers_and_body(
    upstream: UpstreamFactory, gateway: GatewayFactory, recorder: Callable[..., Recorder], client: httpx.Client
) -> None:
    up, mirror = upstream("A"), recorder()
    gw = gateway({"routes": [
        route("plain", "/a/*", up, plugins={"proxy-mirror": {"host": mirror.url}}),
        # The copy goes where the upstream request goes: after proxy-rewrite.
        route("rw", "/old", up, plugins={"proxy-mirror": {"host": mirror.url},
                                         "proxy-rewrite": {"uri": "/new"}}),
    ]})  # fmt: skip
    r = client.get(f"{gw.url}/a/b", params={"x": "1"}, headers={"x-test": "t1"})
    assert r.status_code == 200 and r.json()["path"] == "/a/b"
    (got,) = mirror.wait_for(1)
    assert (got["method"], got["path"], got["headers"]["x-test"], got["body"]) == ("GET", "/a/b?x=1", "t1", b"")
    r = client.post(f"{gw.url}/a/post", content=b'{"k": 1}', headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["body"] == '{"k": 1}'  # the upstream still gets the body
    got = mirror.wait_for(2)[1]
    assert (got["method"], got["path"], got["body"]) == ("POST", "/a/post", b'{"k": 1}')
    assert got["headers"]["content-type"] == "application/json"
    assert client.get(f"{gw.url}/old").json()["path"] == "/new"
    assert mirror.wait_for(3)[2]["path"] == "/new"


def test_path_replace_and_prefix(
    upstream: UpstreamFactory, gateway: GatewayFactory, recorder: Callable[..., Recorder], client: httpx.Client
) -> None:
    up, mirror = upstream("A"), recorder()
    gw = gateway({"routes": [
        route("rep", "/rep/*", up, plugins={"proxy-mirror": {"host": mirror.url, "path": "/shadow"}}),
        route("pre", "/pre/*", up, plugins={"proxy-mirror": {"host": mirror.url, "path": "/shadow",
                                                              "path_concat_mode": "prefix"}}),
    ]})  # fmt: skip
    assert client.get(f"{gw.url}/rep/x", params={"q": "1"}).status_code == 200
    assert mirror.wait_for(1)[0]["path"] == "/shadow?q=1"
    assert client.get(f"{gw.url}/pre/x", params={"q": "2"}).status_code == 200
    assert mirror.wait_for(2)[1]["path"] == "/shadow/pre/x?q=2"


def test_sample_ratio(
    upstream: UpstreamFactory, gateway: GatewayFactory, recorder: Callable[..., Recorder], client: httpx.Client
) -> None:
    up, mirror = upstream("A"), recorder()
    gw = gateway({"routes": [route("r", "/*", up, plugins={"proxy-mirror": {"host": mirror.url, "sample_ratio": 0.5}})]})
    for _ in range(200):
        assert client.get(f"{gw.url}/s").status_code == 200
    time.sleep(1.0)
    n = len(mirror.requests)
    assert 60 <= n <= 140, n  # Binomial(200, 0.5): outside this range has odds below 1e-8


def timed(client: httpx.Client, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        r = client.get(url)
        out.append(time.monotonic() - t0)
        assert r.status_code == 200 and r.headers["x-upstream"] == "A"
    return out


def test_slow_or_dead_mirror_never_slows_or_fails_the_main_request(
    upstream: UpstreamFactory, gateway: GatewayFactory, recorder: Callable[..., Recorder], client: httpx.Client
) -> None:
    up, slow = upstream("A"), recorder(delay=2.0)
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway({"routes": [
        route("none", "/none", up),
        route("slow", "/slow", up, plugins={"proxy-mirror": {"host": slow.url}}),
        route("dead", "/dead", up, plugins={"proxy-mirror": {"host": dead}}),
    ]})  # fmt: skip
    base = sorted(timed(client, f"{gw.url}/none", 10))[5]
    for path in ("/slow", "/dead"):
        times = timed(client, f"{gw.url}{path}", 10)
        # Each copy to /slow takes 2 s to be answered; the main requests never wait for it.
        assert max(times) < 0.5, (path, times)
        assert sorted(times)[5] < base + 0.1, (path, times, base)
    assert len(slow.wait_for(10)) == 10  # and the copies did arrive
    gw.wait_log("mirror 127.0.0.1:")  # the dead mirror is reported in the log


def validate(tmp_path: Path, conf: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    cfg = {"routes": [{"id": "r1", "uri": "/a", "upstream": {"nodes": {"127.0.0.1:1980": 1}},
                       "plugins": {"proxy-mirror": conf}}]}  # fmt: skip
    path = tmp_path / "apisix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "pygateway.cli", "validate", str(path)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    good = {"host": "http://127.0.0.1:9797", "path": "/m", "path_concat_mode": "prefix", "sample_ratio": 0.1}
    assert validate(tmp_path, good).returncode == 0
    assert validate(tmp_path, {"host": "https://[::1]"}).returncode == 0
    P = "routes[r1].plugins.proxy-mirror"
    cases = [
        ({}, f"{P}.host: required"),
        ({"host": "127.0.0.1:9797"}, f"{P}.host: expected"),
        ({"host": "http://127.0.0.1:9797/x"}, f"{P}.host: expected"),
        ({"host": "grpc://127.0.0.1:9797"}, f"{P}.host: grpc mirrors are not supported"),
        ({"host": "http://a:70000"}, f"{P}.host: port out of range"),
        ({"host": "http://a", "path": "m"}, f"{P}.path:"),
        ({"host": "http://a", "path": "/m?x=1"}, f"{P}.path:"),
        ({"host": "http://a", "path_concat_mode": "append"}, f"{P}.path_concat_mode:"),
        ({"host": "http://a", "sample_ratio": 0}, f"{P}.sample_ratio: expected float >= 1e-05"),
        ({"host": "http://a", "sample_ratio": 1.5}, f"{P}.sample_ratio:"),
    ]
    for conf, expected in cases:
        res = validate(tmp_path, conf)
        assert res.returncode == 1 and expected in res.stderr, (conf, res.stderr)
