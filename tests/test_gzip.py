"""The native `gzip` plugin through real sockets: a gateway process in front of an HTTP/1.1 upstream
served from this test (a thread with a real listening socket) whose responses the test controls:
type, length, encoding, ETag, status, and a stream held open until the test lets it finish."""

from __future__ import annotations

import functools
import gzip
import random
import shutil
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from helpers import ROOT, Gateway

GatewayFactory = Callable[..., Gateway]


@functools.lru_cache(maxsize=16)
def text(n: int, seed: int = 1) -> bytes:
    """n bytes of varied, compressible text (words drawn at random, so not one repeated block)."""
    rng = random.Random(seed)
    words = [b"gateway", b"route", b"upstream", b"plugin", b"stream", b"chunk", b"header", b"apisix", b"rust"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + (b"\n" if rng.random() < 0.1 else b" ") + str(rng.randrange(1000)).encode()
    return bytes(out[:n])


class Origin:
    """The upstream. GET /<route>/text/<n>?type=..&chunked=1&enc=..&etag=..&vary=..&status=.. answers
    `text(n)` with those headers (Content-Length unless chunked); GET /status/<code> answers that
    status with no body; GET /slow sends a first chunk and the rest only once `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.finished = threading.Event()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(head=True)

            def do_GET(self) -> None:
                self.answer(head=False)

            def answer(self, head: bool) -> None:
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                parts = url.path.strip("/").split("/")[1:]  # the first segment picks the route
                if parts[0] == "status":
                    self.send_response(int(parts[1]))
                    self.send_header("Content-Type", "text/html")
                    if int(parts[1]) not in (204, 304):
                        self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if parts[0] == "slow":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.chunk(SLOW_FIRST)
                    origin.release.wait(15)
                    self.chunk(SLOW_REST)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    origin.finished.set()
                    return
                body = text(int(parts[1]))
                self.send_response(int(q.get("status", "200")))
                if "type" in q:
                    self.send_header("Content-Type", q["type"])
                for h in ("etag", "vary"):
                    if h in q:
                        self.send_header(h, q[h])
                if "enc" in q:
                    self.send_header("Content-Encoding", q["enc"])
                chunked = q.get("chunked") == "1"
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                if chunked:
                    for i in range(0, len(body), 100_000):
                        self.chunk(body[i : i + 100_000])
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(body)

            def chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


SLOW_FIRST = text(3000, seed=2)
SLOW_REST = text(5000, seed=3)


@pytest.fixture
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15) as c:
        yield c


def gz_route(rid: str, uri: str, origin: Origin, conf: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "uri": uri, "upstream": {"nodes": {origin.addr: 1}}, "plugins": {"gzip": conf}}


def raw_get(
    client: httpx.Client, url: str, accept: str | None = "gzip", **params: str
) -> tuple[httpx.Response, bytes]:
    """GET without letting httpx decode: the response and the bytes as they came over the wire."""
    req = client.build_request("GET", url, params=params)
    if accept is None:
        del req.headers["accept-encoding"]  # httpx sends its own by default
    else:
        req.headers["accept-encoding"] = accept
    r = client.send(req, stream=True)
    try:
        return r, b"".join(r.iter_raw())
    finally:
        r.close()


def start(gateway: GatewayFactory, origin: Origin, **confs: dict[str, Any]) -> Gateway:
    """One route per conf: /<name>/* with that gzip conf; plus /off/* without the plugin."""
    routes = [gz_route(name, f"/{name}/*", origin, conf) for name, conf in confs.items()]
    routes.append({"id": "off", "uri": "/off/*", "upstream": {"nodes": {origin.addr: 1}}})
    return gateway({"routes": routes})


# ============================================================================ compression
def test_compressed_when_allowed_and_identical_after_decompression(
    origin: Origin, gateway: GatewayFactory, client: httpx.Client
) -> None:
    gw = start(gateway, origin, t={"types": ["text/plain"]})
    for n in (20, 5_000, 3_000_000):
        for chunked in ("0", "1"):
            r, wire = raw_get(
                client, f"{gw.url}/t/text/{n}", type="text/plain; charset=utf-8", chunked=chunked
            )
            assert r.status_code == 200
            assert r.headers["content-encoding"] == "gzip", (n, chunked)
            assert "content-length" not in r.headers
            assert r.headers["transfer-encoding"] == "chunked"
            assert gzip.decompress(wire) == text(n)
            if n > 1000:
                assert len(wire) < n / 2
    # Without the plugin the same response passes through untouched.
    r, wire = raw_get(client, f"{gw.url}/off/text/5000", type="text/plain")
    assert "content-encoding" not in r.headers and wire == text(5000)
    assert r.headers["content-length"] == "5000"


def test_gzip_in_a_global_rule_applies_to_every_route(
    origin: Origin, gateway: GatewayFactory, client: httpx.Client
) -> None:
    route = {"id": "r", "uri": "/r/*", "upstream": {"nodes": {origin.addr: 1}}}
    gw = gateway({"routes": [route], "global_rules": [{"id": "g", "plugins": {"gzip": {"types": "*"}}}]})
    r, wire = raw_get(client, f"{gw.url}/r/text/5000", type="application/json")
    assert r.headers["content-encoding"] == "gzip" and gzip.decompress(wire) == text(5000)


def test_curl_compressed(origin: Origin, gateway: GatewayFactory) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is required for this test"
    gw = start(gateway, origin, h={})
    url = f"{gw.url}/h/text/200000?type=text/html"
    out = subprocess.run(
        [curl, "-sS", "--compressed", "-D", "-", url], capture_output=True, check=True, timeout=30
    )
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    assert body == text(200000)
    # HTTP/2 (h2c prior knowledge) too.
    out = subprocess.run([curl, "-sS", "--http2-prior-knowledge", "--compressed", "-D", "-", url],
                         capture_output=True, check=True, timeout=30)  # fmt: skip
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200") and b"content-encoding: gzip" in head.lower()
    assert body == text(200000)
    # curl without --compressed sends no Accept-Encoding: plain, with its length.
    out = subprocess.run([curl, "-sS", "-D", "-", url], capture_output=True, check=True, timeout=30)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert b"content-encoding" not in head.lower() and b"content-length: 200000" in head.lower()
    assert body == text(200000)


def test_min_length(origin: Origin, gateway: GatewayFactory, client: httpx.Client) -> None:
    gw = start(gateway, origin, d={}, m={"min_length": 1000})
    for path, n, chunked, compressed in [
        ("d", 19, "0", False),  # default min_length 20
        ("d", 20, "0", True),
        ("m", 999, "0", False),
        ("m", 1000, "0", True),
        ("m", 10, "1", True),  # length unknown (chunked): compressed, as nginx does
    ]:
        r, wire = raw_get(client, f"{gw.url}/{path}/text/{n}", type="text/html", chunked=chunked)
        assert (r.headers.get("content-encoding") == "gzip") is compressed, (path, n, chunked)
        assert (gzip.decompress(wire) if compressed else wire) == text(n)


def test_types(origin: Origin, gateway: GatewayFactory, client: httpx.Client) -> None:
    gw = start(gateway, origin, d={}, j={"types": ["application/json", "text/css"]}, any={"types": "*"})
    cases = [
        ("d", "text/html", True),  # default types: text/html only
        ("d", "text/html; charset=utf-8", True),
        ("d", "text/plain", False),
        ("j", "application/json", True),
        ("j", "TEXT/CSS;charset=utf-8", True),
        ("j", "text/html", False),
        ("any", "application/octet-stream", True),
        ("any", "image/x-anything", True),
        ("any", None, False),  # no Content-Type: never compressed, even with "*"
    ]
    for path, ctype, compressed in cases:
        params = {"type": ctype} if ctype else {}
        r, wire = raw_get(client, f"{gw.url}/{path}/text/5000", **params)
        assert (r.headers.get("content-encoding") == "gzip") is compressed, (path, ctype)
        assert (gzip.decompress(wire) if compressed else wire) == text(5000)


def test_no_double_compression(origin: Origin, gateway: GatewayFactory, client: httpx.Client) -> None:
    gw = start(gateway, origin, a={"types": "*"})
    for enc in ("gzip", "br", "identity"):
        r, wire = raw_get(client, f"{gw.url}/a/text/5000", type="text/html", enc=enc)
        assert r.headers.get_list("content-encoding") == [enc]
        assert wire == text(5000) and r.headers["content-length"] == "5000"


def test_accept_encoding(origin: Origin, gateway: GatewayFactory, client: httpx.Client) -> None:
    gw = start(gateway, origin, h={})
    url = f"{gw.url}/h/text/5000"
    for accept, compressed in [
        (None, False),
        ("gzip", True),
        ("br, deflate", False),
        ("gzip;q=0", False),
        ("br;q=1, gzip;q=0.5", True),
        ("GZIP", True),
        ("identity, *;q=0.1", True),
        ("*;q=0", False),
    ]:
        r, wire = raw_get(client, url, accept=accept, type="text/html")
        assert (r.headers.get("content-encoding") == "gzip") is compressed, accept
        assert (gzip.decompress(wire) if compressed else wire) == text(5000)


def raw_request(port: int, request: bytes) -> bytes:
    """Send one request on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_head_204_304_and_errors_not_compressed(
    origin: Origin, gateway: GatewayFactory, client: httpx.Client
) -> None:
    gw = start(gateway, origin, a={"types": "*", "min_length": 1})
    head = client.head(
        f"{gw.url}/a/text/5000", params={"type": "text/html"}, headers={"accept-encoding": "gzip"}
    )
    assert head.status_code == 200 and "content-encoding" not in head.headers
    assert head.headers["content-length"] == "5000"
    for status in (204, 304):
        r, wire = raw_get(client, f"{gw.url}/a/status/{status}")
        assert r.status_code == status and "content-encoding" not in r.headers and wire == b""
    # nginx compresses 200, 403 and 404 only.
    for status, compressed in ((404, True), (403, True), (201, False), (500, False)):
        r, wire = raw_get(client, f"{gw.url}/a/text/5000", type="text/html", status=str(status))
        assert r.status_code == status
        assert (r.headers.get("content-encoding") == "gzip") is compressed, status
        assert (gzip.decompress(wire) if compressed else wire) == text(5000)


def test_http_version(origin: Origin, gateway: GatewayFactory) -> None:
    gw = start(gateway, origin, v11={}, v10={"http_version": 1.0})
    for path, compressed in (("v11", False), ("v10", True)):
        req = f"GET /{path}/text/5000?type=text/html HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"
        resp = raw_request(gw.port, req.encode())
        head, _, body = resp.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.")
        assert (b"content-encoding: gzip" in head.lower()) is compressed, path
        assert (gzip.decompress(body) if compressed else body) == text(5000)


def test_comp_level_changes_size(origin: Origin, gateway: GatewayFactory, client: httpx.Client) -> None:
    gw = start(gateway, origin, fast={"comp_level": 1}, best={"comp_level": 9})
    sizes = {}
    for path in ("fast", "best"):
        r, wire = raw_get(client, f"{gw.url}/{path}/text/1000000", type="text/html")
        assert r.headers["content-encoding"] == "gzip" and gzip.decompress(wire) == text(1_000_000)
        sizes[path] = len(wire)
    assert sizes["best"] < sizes["fast"] * 0.95, sizes


def test_vary_and_etag(origin: Origin, gateway: GatewayFactory, client: httpx.Client) -> None:
    gw = start(gateway, origin, v={"vary": True}, n={})
    r, _ = raw_get(client, f"{gw.url}/v/text/5000", type="text/html", etag='"abc"')
    assert r.headers.get_list("vary") == ["Accept-Encoding"]
    assert r.headers["etag"] == 'W/"abc"'  # the compressed bytes differ: no longer a strong validator
    # The representation varies even for a client that does not take gzip.
    r, wire = raw_get(client, f"{gw.url}/v/text/5000", accept=None, type="text/html", etag='"abc"')
    assert "content-encoding" not in r.headers and wire == text(5000)
    assert r.headers.get_list("vary") == ["Accept-Encoding"] and r.headers["etag"] == '"abc"'
    # Not added twice; other Vary values kept.
    r, _ = raw_get(client, f"{gw.url}/v/text/5000", type="text/html", vary="accept-encoding")
    assert r.headers.get_list("vary") == ["accept-encoding"]
    r, _ = raw_get(client, f"{gw.url}/v/text/5000", type="text/html", vary="Origin", etag='W/"w"')
    assert r.headers.get_list("vary") == ["Origin", "Accept-Encoding"] and r.headers["etag"] == 'W/"w"'
    # Without `vary`, no Vary header.
    r, _ = raw_get(client, f"{gw.url}/n/text/5000", type="text/html")
    assert r.headers["content-encoding"] == "gzip" and "vary" not in r.headers


def test_streaming_first_bytes_before_upstream_finishes(
    origin: Origin, gateway: GatewayFactory, client: httpx.Client
) -> None:
    gw = start(gateway, origin, s={})
    with client.stream("GET", f"{gw.url}/s/slow", headers={"accept-encoding": "gzip"}) as r:
        assert r.headers["content-encoding"] == "gzip"
        inflate = zlib.decompressobj(wbits=31)
        got = b""
        raw = r.iter_raw()
        # The upstream holds the rest until released: everything so far must decode already.
        while len(got) < len(SLOW_FIRST):
            got += inflate.decompress(next(raw))
        assert got == SLOW_FIRST
        assert not origin.finished.is_set()
        origin.release.set()
        for piece in raw:
            got += inflate.decompress(piece)
        got += inflate.flush()
        assert inflate.eof and got == SLOW_FIRST + SLOW_REST


def validate(tmp_path: Path, conf: Any) -> subprocess.CompletedProcess[str]:
    cfg = {
        "routes": [
            {"id": "r1", "uri": "/a", "upstream": {"nodes": {"127.0.0.1:1980": 1}}, "plugins": {"gzip": conf}}
        ]
    }
    path = tmp_path / "apisix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "pygateway.cli", "validate", str(path)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    good = {"types": ["text/html"], "min_length": 1, "comp_level": 9, "http_version": 1.0, "vary": True,
            "buffers": {"number": 16, "size": 8192}}  # fmt: skip
    assert validate(tmp_path, good).returncode == 0
    assert validate(tmp_path, {"types": "*"}).returncode == 0
    P = "routes[r1].plugins.gzip"
    cases = [
        ({"comp_level": 0}, f"{P}.comp_level: expected int >= 1"),
        ({"comp_level": 10}, f"{P}.comp_level: expected int <= 9"),
        ({"min_length": 0}, f"{P}.min_length: expected int >= 1"),
        ({"types": "text/html"}, f"{P}.types:"),
        ({"types": []}, f"{P}.types:"),
        ({"types": [""]}, f"{P}.types[0]:"),
        ({"http_version": 2}, f"{P}.http_version:"),
        ({"buffers": {"number": 0}}, f"{P}.buffers.number: expected int >= 1"),
        ({"vary": "yes"}, f"{P}.vary:"),
        ({"level": 3}, f"{P}.level: unknown field"),
    ]
    for conf, expected in cases:
        res = validate(tmp_path, conf)
        assert res.returncode == 1 and expected in res.stderr, (conf, res.stderr)


def test_python_body_filter_sees_plain_body_then_gzip(
    origin: Origin, gateway: GatewayFactory, client: httpx.Client
) -> None:
    """Python response phases run first (as Lua filters do before nginx's gzip): response-rewrite's
    regex filter works on the plain upstream body, and the result is what gets compressed."""
    rewrite = {"filters": [{"regex": "gateway", "replace": "GW", "scope": "global"}]}
    route = gz_route("p", "/p/*", origin, {"types": ["text/html"]})
    route["plugins"]["response-rewrite"] = rewrite
    gw = gateway({"routes": [route]})
    r, wire = raw_get(client, f"{gw.url}/p/text/100000", type="text/html")
    assert r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(wire) == text(100000).replace(b"gateway", b"GW") != text(100000)
