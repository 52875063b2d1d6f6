"""api-breaker through real sockets: the gateway in front of an HTTP server (on loopback, in a thread of
the test) whose status the test switches, so one path can fail and then recover."""

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
from helpers import ROOT, Gateway, Upstream, free_port

GatewayFactory = Callable[..., Gateway]
UpstreamFactory = Callable[..., Upstream]


class Switchable:
    """Answers every request with `self.status`; counts the requests it got."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0
        me = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                me.hits += 1
                body = f'{{"status": {me.status}}}'.encode()
                self.send_response(me.status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def switchable() -> Iterator[Switchable]:
    s = Switchable()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def breaker_route(up: Switchable, conf: dict[str, Any], rid: str = "r", uri: str = "/*") -> dict[str, Any]:
    return {"id": rid, "uri": uri, "upstream": {"nodes": {f"127.0.0.1:{up.port}": 1}},
            "plugins": {"api-breaker": conf}}  # fmt: skip


def until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def test_trips_grows_caps_and_recovers(switchable: Switchable, gateway: GatewayFactory, client: httpx.Client) -> None:
    conf = {
        "break_response_code": 502, "break_response_body": "breaker open",
        "break_response_headers": [{"key": "x-breaker", "value": "$remote_addr"}],
        "max_breaker_sec": 3,
        "unhealthy": {"http_statuses": [500, 503], "failures": 1},
        "healthy": {"http_statuses": [200], "successes": 2},
    }  # fmt: skip
    gw = gateway({"routes": [breaker_route(switchable, conf)]})
    url = f"{gw.url}/svc"
    switchable.status = 500
    assert client.get(url).status_code == 500  # 1st failure: open for 2^1 = 2 s
    opened = time.monotonic()
    hits = switchable.hits
    r = client.get(url)
    assert (r.status_code, r.text, r.headers["x-breaker"]) == (502, "breaker open", "127.0.0.1")
    assert switchable.hits == hits  # the upstream was not called
    assert client.get(f"{gw.url}/other").status_code == 500  # another path has its own breaker
    until(opened + 1.6)
    assert client.get(url).status_code == 502
    until(opened + 2.3)
    assert client.get(url).status_code == 500  # break over: the request goes through, fails again
    reopened = time.monotonic()  # 2nd failure: 2^2 = 4 s, capped at max_breaker_sec = 3
    until(reopened + 2.4)
    assert client.get(url).status_code == 502  # longer than the first break
    switchable.status = 200
    until(reopened + 3.3)
    assert client.get(url).status_code == 200  # shorter than 4 s: capped
    assert client.get(url).status_code == 200  # 2 successes: closed, failures forgotten
    switchable.status = 503
    assert client.get(url).status_code == 503
    opened = time.monotonic()
    assert client.get(url).status_code == 502
    until(opened + 2.3)  # back to a 2 s break: the count was reset
    assert client.get(url).status_code == 503


def test_failures_threshold_statuses_and_body_less_break(
    switchable: Switchable, gateway: GatewayFactory, client: httpx.Client
) -> None:
    conf = {"break_response_code": 599, "unhealthy": {"failures": 3}}  # defaults: [500], healthy [200] x3
    gw = gateway({"routes": [breaker_route(switchable, conf)]})
    url = f"{gw.url}/svc"
    switchable.status = 502  # not in unhealthy.http_statuses: never trips
    assert [client.get(url).status_code for _ in range(5)] == [502] * 5
    switchable.status = 500
    assert [client.get(url).status_code for _ in range(3)] == [500] * 3
    r = client.get(url)
    assert (r.status_code, r.json()) == (599, {"error_msg": "breaker open"})


def test_unreachable_upstream_counts_as_502(gateway: GatewayFactory, client: httpx.Client) -> None:
    conf = {"break_response_code": 503, "break_response_body": "open", "unhealthy": {"http_statuses": [502],
                                                                                      "failures": 2}}  # fmt: skip
    route = {"id": "r", "uri": "/*", "upstream": {"nodes": {f"127.0.0.1:{free_port()}": 1}},
             "plugins": {"api-breaker": conf}}  # fmt: skip
    gw = gateway({"routes": [route]})
    assert [client.get(f"{gw.url}/x").status_code for _ in range(3)] == [502, 502, 503]


def validate(tmp_path: Path, conf: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    cfg = {"routes": [{"id": "r1", "uri": "/a", "upstream": {"nodes": {"127.0.0.1:1980": 1}},
                       "plugins": {"api-breaker": conf}}]}  # fmt: skip
    path = tmp_path / "apisix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "pygateway.cli", "validate", str(path)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    assert validate(tmp_path, {"break_response_code": 502}).returncode == 0
    P = "routes[r1].plugins.api-breaker"
    cases = [
        ({}, f"{P}.break_response_code: required"),
        ({"break_response_code": 600}, f"{P}.break_response_code: expected int <= 599"),
        ({"break_response_code": 502, "max_breaker_sec": 2}, f"{P}.max_breaker_sec: expected int >= 3"),
        ({"break_response_code": 502, "unhealthy": {"http_statuses": [404]}}, f"{P}.unhealthy.http_statuses[0]:"),
        ({"break_response_code": 502, "unhealthy": {"http_statuses": []}}, f"{P}.unhealthy.http_statuses:"),
        ({"break_response_code": 502, "unhealthy": {"failures": 0}}, f"{P}.unhealthy.failures:"),
        ({"break_response_code": 502, "healthy": {"http_statuses": [500]}}, f"{P}.healthy.http_statuses[0]:"),
        ({"break_response_code": 502, "healthy": {"http_statuses": [200, 200]}},
         f"{P}.healthy.http_statuses: duplicate status"),
        ({"break_response_code": 502, "healthy": {"successes": 0}}, f"{P}.healthy.successes:"),
        ({"break_response_code": 502, "break_response_headers": [{"key": "a b", "value": "1"}]},
         f"{P}.break_response_headers[0].key: invalid header name"),
        ({"break_response_code": 502, "break_response_headers": [{"key": "a"}]},
         f"{P}.break_response_headers[0].value: required"),
        ({"break_response_code": 502, "colour": 1}, f"{P}.colour: unknown field"),
    ]  # fmt: skip
    for conf, expected in cases:
        res = validate(tmp_path, conf)
        assert res.returncode == 1 and expected in res.stderr, (conf, res.stderr)
