"""forward-auth against a real authorization service on loopback (a threaded HTTP server in the test
process), with the echo upstream behind the gateway."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Gateway, Upstream, free_port, route, sent, validate

Up = Callable[..., Upstream]
Gw = Callable[..., Gateway]


class AuthService:
    """`Authorization: good` -> 200 with X-User-ID; `slow:<ms>` -> waits, then 200; else 403."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.open_connections = 0
        lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle(self) -> None:  # one call per connection: count the open ones
                with lock:
                    service.open_connections += 1
                try:
                    super().handle()
                finally:
                    with lock:
                        service.open_connections -= 1

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                service.seen.append({"method": self.command, "path": self.path, "body": body,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}})  # fmt: skip
                auth = self.headers.get("authorization", "")
                if auth.startswith("slow:"):
                    time.sleep(int(auth[5:]) / 1000)
                if auth == "good" or auth.startswith("slow:") or (self.command == "POST" and body == b"let me in"):
                    self._send(200, b"", {"X-User-ID": "42", "X-Other": "not-forwarded"})
                elif auth == "redirect":
                    self._send(302, b"", {"Location": "http://login.example/"})
                else:
                    self._send(403, b"denied by policy", {"X-Reason": "no-token", "X-Secret": "internal",
                                                          "Content-Type": "text/plain"})  # fmt: skip

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}/auth"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def auth() -> Iterator[AuthService]:
    svc = AuthService()
    yield svc
    svc.close()


def fa(auth: AuthService, **conf: Any) -> dict[str, Any]:
    return {"forward-auth": {"uri": auth.url, **conf}}


def test_forward_auth_allows_and_denies(upstream: Up, gateway: Gw, auth: AuthService) -> None:
    up = upstream()
    conf = fa(auth, request_headers=["Authorization"], upstream_headers=["X-User-ID"], client_headers=["X-Reason"])
    gw = gateway({"routes": [route("r", "/api/*", up, plugins=conf)]})
    with httpx.Client(timeout=10) as c:
        r = c.get(f"{gw.url}/api/items?page=2", headers={"Authorization": "good", "X-User-ID": "1"})
        assert r.status_code == 200, r.text
        assert sent(r, "x-user-id") == ["42"]  # from the auth answer, replacing the client's
        assert sent(r, "x-other") == []  # not listed in upstream_headers
        call = auth.seen[-1]
        assert call["method"] == "GET" and call["path"] == "/auth"
        h = call["headers"]
        assert h["x-forwarded-method"] == "GET" and h["x-forwarded-uri"] == "/api/items?page=2"
        assert h["x-forwarded-proto"] == "http" and h["x-forwarded-for"] == "127.0.0.1"
        assert h["x-forwarded-host"].startswith("127.0.0.1") and h["authorization"] == "good"
        # Denied: the auth service's status and body, with only the client_headers it listed.
        r = c.get(f"{gw.url}/api/items", headers={"Authorization": "bad"})
        assert (r.status_code, r.content) == (403, b"denied by policy")
        assert r.headers["x-reason"] == "no-token" and "x-secret" not in r.headers
        assert "x-upstream" not in r.headers
        # A client without credentials cannot smuggle an X-User-ID either way.
        assert c.get(f"{gw.url}/api/items", headers={"X-User-ID": "1"}).status_code == 403
        # Headers not in request_headers are not sent to the auth service.
        c.get(f"{gw.url}/api/items", headers={"Authorization": "good", "Cookie": "s=1"})
        assert "cookie" not in auth.seen[-1]["headers"]
        # The auth service is asked about the path the upstream receives, not the raw one.
        for trick in ("/x/../api/items?q=1", "//api/./items?q=1", "/x/%2e%2e/api/items?q=1"):
            req = c.build_request("GET", gw.url, headers={"Authorization": "good"}, extensions={"target": trick.encode()})
            r = c.send(req)
            assert r.status_code == 200 and r.json()["path"] == "/api/items", trick
            assert auth.seen[-1]["headers"]["x-forwarded-uri"] == "/api/items?q=1", trick


def test_forward_auth_missing_upstream_header_is_not_spoofable(upstream: Up, gateway: Gw, auth: AuthService) -> None:
    up = upstream()
    conf = fa(auth, request_headers=["Authorization"], upstream_headers=["X-User-ID", "X-Role"])
    gw = gateway({"routes": [route("r", "/a", up, plugins=conf)]})
    with httpx.Client(timeout=10) as c:
        r = c.get(f"{gw.url}/a", headers={"Authorization": "good", "X-Role": "admin"})
    assert r.status_code == 200
    assert sent(r, "x-role") == []  # the auth answer has no X-Role: the client's is dropped
    assert sent(r, "x-user-id") == ["42"]


def test_forward_auth_redirect_and_post(upstream: Up, gateway: Gw, auth: AuthService) -> None:
    up = upstream()
    gw = gateway({"routes": [
        route("get", "/g", up, plugins=fa(auth, request_headers=["Authorization"], client_headers=["Location"])),
        route("post", "/p", up, plugins=fa(auth, request_method="POST")),
    ]})  # fmt: skip
    with httpx.Client(timeout=10) as c:
        r = c.get(f"{gw.url}/g", headers={"Authorization": "redirect"})
        assert (r.status_code, r.headers["location"]) == (302, "http://login.example/")
        r = c.post(f"{gw.url}/p", content=b"let me in", headers={"Content-Type": "text/plain"})
        assert r.status_code == 200 and r.json()["body"] == "let me in"  # the upstream still gets the body
        call = auth.seen[-1]
        assert call["method"] == "POST" and call["body"] == b"let me in"
        assert call["headers"]["content-type"] == "text/plain"
        assert c.post(f"{gw.url}/p", content=b"no").status_code == 403


def test_forward_auth_timeouts_and_unreachable(upstream: Up, gateway: Gw, auth: AuthService) -> None:
    up = upstream()
    dead = f"http://127.0.0.1:{free_port()}/auth"  # nothing listens there
    gw = gateway({"routes": [
        route("slow", "/slow", up, plugins=fa(auth, request_headers=["Authorization"], timeout=300)),
        route("degrade", "/degrade", up, plugins=fa(auth, request_headers=["Authorization"], timeout=300,
                                                    allow_degradation=True)),
        route("dead", "/dead", up, plugins={"forward-auth": {"uri": dead, "status_on_error": 503}}),
        route("deadok", "/deadok", up, plugins={"forward-auth": {"uri": dead, "allow_degradation": True}}),
    ]})  # fmt: skip
    with httpx.Client(timeout=10) as c:
        t0 = time.monotonic()
        r = c.get(f"{gw.url}/slow", headers={"Authorization": "slow:1500"})
        assert r.status_code == 403  # status_on_error's default
        assert time.monotonic() - t0 < 1.2  # gave up at the 300 ms timeout
        assert c.get(f"{gw.url}/slow", headers={"Authorization": "slow:50"}).status_code == 200
        assert c.get(f"{gw.url}/degrade", headers={"Authorization": "slow:1500"}).status_code == 200
        assert c.get(f"{gw.url}/dead").status_code == 503
        r = c.get(f"{gw.url}/deadok")
        assert r.status_code == 200 and r.headers["x-upstream"] == "up"
        # The gateway keeps serving after all that.
        assert c.get(f"{gw.url}/slow", headers={"Authorization": "good"}).status_code == 200


def test_a_slow_auth_call_does_not_block_the_worker(upstream: Up, gateway: Gw, auth: AuthService) -> None:
    up = upstream()
    gw = gateway({"routes": [
        route("slow", "/slow", up, plugins=fa(auth, request_headers=["Authorization"], timeout=10000)),
        route("auth", "/fast", up, plugins=fa(auth, request_headers=["Authorization"])),
        route("open", "/open", up),
    ]}, workers=1)  # fmt: skip

    def slow() -> tuple[int, float]:
        t0 = time.monotonic()
        with httpx.Client(timeout=10) as c:
            code = c.get(f"{gw.url}/slow", headers={"Authorization": "slow:2000"}).status_code
        return code, time.monotonic() - t0

    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(slow) for _ in range(2)]
        time.sleep(0.3)  # both slow calls are now waiting on the auth service
        with httpx.Client(timeout=10) as c:
            t0 = time.monotonic()
            for _ in range(10):
                assert c.get(f"{gw.url}/open").status_code == 200
                assert c.get(f"{gw.url}/fast", headers={"Authorization": "good"}).status_code == 200
            elapsed = time.monotonic() - t0
        assert all(not f.done() for f in pending)  # still waiting while 20 other requests were served
        results = [f.result() for f in pending]
    assert elapsed < 1.5, elapsed
    assert [code for code, _ in results] == [200, 200]
    # The two slow calls overlapped rather than queueing one behind the other.
    assert all(1.9 < took < 3.5 for _, took in results), results


def test_a_config_change_closes_the_old_auth_connections(upstream: Up, gateway: Gw, auth: AuthService) -> None:
    up = upstream()
    cfg = {"routes": [route("r", "/r", up, plugins=fa(auth, request_headers=["Authorization"]))]}
    gw = gateway(cfg)
    with httpx.Client(timeout=10) as c:
        assert c.get(f"{gw.url}/r", headers={"Authorization": "good"}).status_code == 200
        assert auth.open_connections == 1  # kept alive for the next request
        cfg["routes"][0]["plugins"]["forward-auth"]["timeout"] = 2000
        gw.update(cfg)
        deadline = time.monotonic() + 5
        while auth.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert auth.open_connections == 0  # the replaced instance closed its pool
        assert c.get(f"{gw.url}/r", headers={"Authorization": "good"}).status_code == 200


@pytest.mark.parametrize(("conf", "needle"), [
    ({}, "uri: required"),
    ({"uri": "ftp://x/"}, "uri"),
    ({"uri": "not a url"}, "uri"),
    ({"uri": "http://a/", "request_method": "PUT"}, "request_method"),
    ({"uri": "http://a/", "timeout": 0}, "timeout"),
    ({"uri": "http://a/", "status_on_error": 99}, "status_on_error"),
    ({"uri": "http://a/", "upstream_headers": ["bad header"]}, "upstream_headers[0]"),
])  # fmt: skip
def test_forward_auth_config_errors(tmp_path: Path, conf: dict[str, Any], needle: str) -> None:
    out = validate(tmp_path, {"routes": [
        {"id": "r1", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}}, "plugins": {"forward-auth": conf}}]})  # fmt: skip
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "routes[r1].plugins.forward-auth" in text and needle in text, text
