"""The upstream connection pool's settings reach the data plane: `--upstream-keepalive-timeout` (how long an
idle upstream connection is kept for reuse) and `--upstream-keepalive-pool` (how many are kept per upstream
address). Counted at a plain HTTP/1.1 upstream that records every connection it accepts and sees closed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from helpers import free_port, wait_for


class CountingUpstream:
    """Answers every request 200 on a keep-alive connection; counts connections opened and closed."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.lock = threading.Lock()
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def setup(self) -> None:
                super().setup()
                with up.lock:
                    up.opened += 1

            def finish(self) -> None:
                super().finish()
                with up.lock:
                    up.closed += 1

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.addr = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.opened, self.closed


@pytest.fixture
def counting() -> Iterator[CountingUpstream]:
    up = CountingUpstream()
    yield up
    up.server.shutdown()
    up.server.server_close()


def config(up: CountingUpstream) -> dict[str, Any]:
    return {"routes": [{"id": "r", "uri": "/*", "upstream": {"nodes": {up.addr: 1}}}]}


def test_an_idle_upstream_connection_is_not_reused_after_the_idle_timeout(gateway, counting):
    gw = gateway(config(counting), args=["--upstream-keepalive-timeout", "1"])
    assert httpx.get(gw.url + "/a", timeout=5).status_code == 200
    assert httpx.get(gw.url + "/b", timeout=5).status_code == 200
    assert counting.counts() == (1, 0)  # reused while fresh
    time.sleep(1.5)
    assert httpx.get(gw.url + "/c", timeout=5).status_code == 200
    # The expired connection was closed by the gateway and a new one opened.
    wait_for(lambda: counting.counts() == (2, 1), 5, "the expired connection closed, a new one opened")


def test_by_default_an_idle_upstream_connection_is_reused_after_a_pause(gateway, counting):
    gw = gateway(config(counting))
    assert httpx.get(gw.url + "/a", timeout=5).status_code == 200
    time.sleep(1.5)
    assert httpx.get(gw.url + "/b", timeout=5).status_code == 200
    assert counting.counts() == (1, 0)


def test_a_zero_keepalive_pool_keeps_no_idle_upstream_connection(gateway, counting):
    gw = gateway(config(counting), args=["--upstream-keepalive-pool", "0"])
    for i in range(3):
        assert httpx.get(f"{gw.url}/{i}", timeout=5).status_code == 200
    wait_for(lambda: counting.counts() == (3, 3), 5, "one upstream connection per request, each closed")
