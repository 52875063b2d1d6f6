"""`file-logger` and `http-logger` (APISIX names and schemas): entries made in Rust at the end of each
request, checked through real sockets — a real file, and a real HTTP log receiver on loopback."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from helpers import Receiver, read_lines, route, scrape, value, write_config


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        r = Receiver(**kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.server.shutdown()
        r.server.server_close()


FMT = {"host": "$host", "client": "$remote_addr", "status": "$status", "route": "$route_id",
       "path": "$uri", "tag": "$http_x_tag", "const": "v1"}  # fmt: skip


# ------------------------------------------------------------------------------------------ file-logger
def test_file_logger_writes_a_json_line_per_request_with_the_configured_fields(gateway, upstream, tmp_path):
    up = upstream()
    path = tmp_path / "route.log"
    default = tmp_path / "default.log"
    gw = gateway({"routes": [
        route("r1", "/a/*", up, plugins={"file-logger": {"path": str(path), "log_format": FMT},
                                        "key-auth": {}}),
        route("r2", "/b", up, plugins={"file-logger": {"path": str(default)}}),
    ], "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "k1"}}}]})  # fmt: skip
    with httpx.Client() as c:
        for i in range(20):
            assert c.get(f"{gw.url}/a/{i}", headers={"X-Tag": f"t{i}", "apikey": "k1"}).status_code == 200
        assert c.get(f"{gw.url}/a/denied").status_code == 401  # rejected requests are logged too
        assert c.get(f"{gw.url}/b?x=1", headers={"User-Agent": "ua1"}).status_code == 200
    lines = [json.loads(x) for x in read_lines(path, 21)]
    assert len(lines) == 21
    assert lines[0] == {"host": f"127.0.0.1:{gw.port}", "client": "127.0.0.1", "status": 200, "route": "r1",
                        "path": "/a/0", "tag": "t0", "const": "v1"}  # fmt: skip
    assert [x["tag"] for x in lines[:20]] == [f"t{i}" for i in range(20)]
    assert lines[20]["status"] == 401 and lines[20]["tag"] is None
    (d,) = [json.loads(x) for x in read_lines(default, 1)]
    assert d["uri"] == "/b?x=1" and d["status"] == 200 and d["route_id"] == "r2" and d["user_agent"] == "ua1"
    assert d["upstream_addr"] == up.addr and d["request_time"] >= 0


def test_file_logger_reopens_on_sigusr1(gateway, upstream, tmp_path):
    up = upstream()
    path = tmp_path / "route.log"
    gw = gateway({"routes": [route("r1", "/*", up, plugins={"file-logger": {"path": str(path)}})]})
    httpx.get(f"{gw.url}/before")
    assert json.loads(read_lines(path, 1)[0])["uri"] == "/before"
    rotated = tmp_path / "route.log.1"
    path.rename(rotated)
    gw.proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    httpx.get(f"{gw.url}/after")
    assert json.loads(read_lines(path, 1)[0])["uri"] == "/after"
    assert len(rotated.read_text().splitlines()) == 1


# ------------------------------------------------------------------------------------------ http-logger
def http_logger(rcv: Receiver, **conf: Any) -> dict[str, Any]:
    return {"http-logger": {"uri": rcv.url, **conf}}


def test_http_logger_delivers_every_entry_in_batches_of_batch_max_size(gateway, upstream, receiver):
    up, rcv = upstream(), receiver()
    gw = gateway({"routes": [route("r1", "/*", up, plugins=http_logger(
        rcv, batch_max_size=10, inactive_timeout=1, auth_header="Bearer s3cret", log_format=FMT))]})  # fmt: skip
    with httpx.Client() as c:
        for i in range(25):
            c.get(f"{gw.url}/p{i}", headers={"X-Tag": str(i)})
    entries = rcv.wait_entries(25)
    assert sorted(int(e["tag"]) for e in entries) == list(range(25))
    assert all(e["status"] == 200 and e["route"] == "r1" and e["const"] == "v1" for e in entries)
    sizes = [len(json.loads(body)) for _, _, body in rcv.posts]
    assert sizes == [10, 10, 5]  # two full batches, then the rest after inactive_timeout
    _, headers, _ = rcv.posts[0]
    assert headers["Authorization"] == "Bearer s3cret" and headers["Content-Type"] == "application/json"


def test_http_logger_inactive_timeout_flushes_a_partial_batch(gateway, upstream, receiver):
    up, rcv = upstream(), receiver()
    gw = gateway({"routes": [route("r1", "/*", up, plugins=http_logger(rcv, inactive_timeout=1))]})
    sent = time.monotonic()
    httpx.get(f"{gw.url}/one")
    (entry,) = rcv.wait_entries(1)
    took = rcv.posts[0][0] - sent
    assert 0.9 <= took < 3.0, took  # batch_max_size 1000 never reached: inactive_timeout sends it
    assert entry["uri"] == "/one" and entry["method"] == "GET" and entry["route_id"] == "r1"
    assert "Authorization" not in rcv.posts[0][1]


def test_http_logger_new_line_concat_and_single_entry_batches(gateway, upstream, receiver):
    up, lines, single = upstream(), receiver(), receiver()
    gw = gateway({"routes": [
        route("r1", "/nl", up, plugins=http_logger(lines, concat_method="new_line", batch_max_size=3)),
        route("r2", "/one", up, plugins=http_logger(single, batch_max_size=1)),
    ]})  # fmt: skip
    for _ in range(3):
        httpx.get(f"{gw.url}/nl")
    httpx.get(f"{gw.url}/one")
    assert len(lines.wait_entries(3, concat="new_line")) == 3
    (_, headers, body) = lines.posts[0]
    assert body.count(b"\n") == 2 and not body.startswith(b"[") and headers["Content-Type"] == "text/plain"
    wait_for(lambda: len(single.posts) == 1, what="a single-entry post")
    assert json.loads(single.posts[0][2])["uri"] == "/one"  # batch_max_size 1: an object, not an array


def test_http_logger_retries_a_failed_batch(gateway, upstream, receiver):
    up, rcv, broken = upstream(), receiver(fail_first=2), receiver(fail_first=10**9)
    gw = gateway({"routes": [
        route("r1", "/r*", up, plugins=http_logger(rcv, batch_max_size=4, max_retry_count=2, retry_delay=0)),
        route("r2", "/broken", up, plugins=http_logger(broken, batch_max_size=3, max_retry_count=1, retry_delay=1)),
    ]})  # fmt: skip
    for i in range(4):
        httpx.get(f"{gw.url}/r{i}")
    entries = rcv.wait_entries(4)
    assert sorted(e["uri"] for e in entries) == ["/r0", "/r1", "/r2", "/r3"]
    assert rcv.attempts == 3 and len(rcv.posts) == 1  # two failures, then delivered once
    assert value(scrape(gw), "pygateway_http_logger_failed_total") == 0
    for _ in range(3):
        httpx.get(f"{gw.url}/broken")
    # One attempt, one retry a second later, then the batch is given up and counted.
    wait_for(lambda: value(scrape(gw), "pygateway_http_logger_failed_total") == 3, what="3 failed entries")
    assert broken.attempts == 2
    gw.wait_log("http-logger 'http logger': sending to")


def test_a_dead_receiver_never_slows_requests_and_drops_are_counted(gateway, upstream):
    up = upstream()
    # A receiver that accepts connections (the backlog) and never answers: the first batch hangs in
    # its send for the whole test, so its entries stay pending and the bound is what is left.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(1024)
    url = f"http://127.0.0.1:{dead.getsockname()[1]}/logs"
    try:
        gw = gateway({"routes": [
            route("r1", "/*", up, plugins={"http-logger": {
                "uri": url, "timeout": 60, "batch_max_size": 10, "max_pending_entries": 40}}),
            route("plain", "/plain", up),
        ]})  # fmt: skip
        n, clients = 200, 4

        def burst(path: str) -> list[float]:
            def one(k: int) -> list[float]:
                out = []
                with httpx.Client(timeout=5) as c:
                    for i in range(n // clients):
                        t = time.monotonic()
                        assert c.get(f"{gw.url}{path}{k}-{i}").status_code == 200
                        out.append(time.monotonic() - t)
                return out

            with ThreadPoolExecutor(clients) as ex:
                return sorted(x for part in ex.map(one, range(clients)) for x in part)

        plain = burst("/plain?")
        logged = burst("/x")
        # Requests on the logged route are as fast as on a route without a logger.
        assert logged[-1] < 1.0 and logged[n // 2] < plain[n // 2] * 3 + 0.005, (plain[n // 2], logged[n // 2])
        # At most max_pending_entries (40) wait; everything else was dropped and counted.
        wait_for(lambda: value(scrape(gw), "pygateway_http_logger_dropped_total") >= n - 40, what="drops counted")
        time.sleep(0.3)
        assert value(scrape(gw), "pygateway_http_logger_dropped_total") == n - 40
        assert value(scrape(gw), "pygateway_http_logger_failed_total") == 0  # still hanging, not given up
    finally:
        dead.close()


def test_http_logger_queue_bound_frees_up_once_entries_are_delivered(gateway, upstream, receiver):
    up, rcv = upstream(), receiver()
    gw = gateway({"routes": [route("r1", "/*", up, plugins=http_logger(
        rcv, batch_max_size=5, max_pending_entries=5))]})  # fmt: skip
    for round_ in range(3):  # 15 entries through a bound of 5: each batch frees its places when delivered
        with httpx.Client() as c:
            for i in range(5):
                c.get(f"{gw.url}/q{round_}-{i}")
        rcv.wait_entries(5 * (round_ + 1))
    assert len(rcv.entries()) == 15
    assert value(scrape(gw), "pygateway_http_logger_dropped_total") == 0


# ------------------------------------------------------------------------------- global rules, errors
def test_both_loggers_as_global_rules_log_every_route(gateway, upstream, receiver, tmp_path):
    up, rcv = upstream(), receiver()
    path = tmp_path / "global.log"
    gw = gateway({
        "routes": [route("r1", "/a", up), route("r2", "/b", up, plugins={"prometheus": {}})],
        "global_rules": [{"id": "g1", "plugins": {
            "file-logger": {"path": str(path), "log_format": {"r": "$route_id", "u": "$uri"}},
            "http-logger": {"uri": rcv.url, "batch_max_size": 2, "inactive_timeout": 1, "log_format": {"r": "$route_id"}}}}],
    })  # fmt: skip
    httpx.get(f"{gw.url}/a")
    httpx.get(f"{gw.url}/b")
    assert httpx.get(f"{gw.url}/nowhere").status_code == 404  # no route: still logged, as in APISIX
    assert sorted(read_lines(path, 3)) == ['{"r":"r1","u":"/a"}', '{"r":"r2","u":"/b"}', '{"r":null,"u":"/nowhere"}']
    assert sorted(str(e["r"]) for e in rcv.wait_entries(3)) == ["None", "r1", "r2"]


def test_bad_logger_configs_are_refused_naming_the_field(gateway, upstream, tmp_path):
    up = upstream()
    gw = gateway({"routes": [route("r1", "/*", up)]})
    for plugins, field in [
        ({"http-logger": {"batch_max_size": 5}}, "uri"),
        ({"http-logger": {"uri": "not a url"}}, "uri"),
        ({"http-logger": {"uri": "http://127.0.0.1:1/", "batch_max_size": 0}}, "batch_max_size"),
        ({"http-logger": {"uri": "http://127.0.0.1:1/", "concat_method": "csv"}}, "concat_method"),
        ({"http-logger": {"uri": "http://127.0.0.1:1/", "include_req_body": True}}, "include_req_body"),
        ({"file-logger": {"log_format": {"a": "$status"}}}, "path"),
        ({"file-logger": {"path": str(tmp_path / "x.log"), "log_format": {"a": "$nope"}}}, "$nope"),
        ({"file-logger": {"path": str(tmp_path / "x.log"), "log_format": {"a": 1}}}, "log_format"),
    ]:
        before = gw.log()
        rejected = before.count("rejected; still serving")
        write_config(gw.config_path, {"routes": [route("r1", "/*", up, plugins=plugins)]})
        wait_for(lambda n=rejected: gw.log().count("rejected; still serving") > n, what="the config to be rejected")
        new = gw.log()[len(before):]
        name = next(iter(plugins))
        assert name in new and field in new, (plugins, new)
    assert httpx.get(f"{gw.url}/still").status_code == 200  # the previous config keeps serving
