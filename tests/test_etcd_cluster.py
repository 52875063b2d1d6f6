"""The etcd store end to end, on a real etcd and real gateway processes: two nodes sharing one etcd
converge, keys use APISIX's layout (so an existing APISIX etcd can be served), traffic survives etcd
stalling / dying / coming back, and a node restarted while etcd is down serves its cached config."""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import subprocess
import time
import uuid
from typing import Any

import httpx
import pytest
from etcd_server import Etcd, wait_for

WRK = shutil.which("wrk")


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode("ascii")


@pytest.fixture
def live_etcd(etcd: Etcd) -> Etcd:
    """The module's etcd, running: a test that failed half-way may have left it stopped or dead."""
    assert etcd.proc is not None
    if etcd.proc.poll() is None:
        etcd.proc.send_signal(signal.SIGCONT)
    else:
        etcd.start()
    return etcd


@pytest.fixture
def prefix() -> str:
    return f"/gw-{uuid.uuid4().hex[:10]}"


def etcd_args(etcd: Etcd, prefix: str) -> list[str]:
    return ["--store", "etcd", "--etcd-endpoints", etcd.url, "--etcd-prefix", prefix]


def admin(gw: Any) -> httpx.Client:
    return httpx.Client(base_url=gw.admin_url, headers=gw.admin_headers, timeout=10, trust_env=False)


def get(url: str) -> httpx.Response:
    """One request on a fresh connection (so, with several workers, any worker may answer)."""
    return httpx.get(url, timeout=3, trust_env=False)


def converge(url: str, name: str | None, timeout: float = 5.0, streak: int = 20) -> float:
    """Wait until `streak` fresh-connection requests in a row see the route (proxied to upstream
    `name`) or, with name None, see it gone (404). Returns the seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    ok = 0
    last: httpx.Response | None = None
    while ok < streak:
        assert time.monotonic() < deadline, (
            f"{url} did not converge on {name or '404'} in {timeout}s; last answer: "
            f"{last and (last.status_code, last.headers.get('x-upstream'))}"
        )
        last = get(url)
        if name is None:
            good = last.status_code == 404
        else:
            good = last.status_code == 200 and last.headers.get("x-upstream") == name
        ok = ok + 1 if good else 0
    return time.monotonic() - t0


def test_two_nodes_share_one_etcd(live_etcd, prefix, upstream, gateway):
    a, b = upstream("a"), upstream("b")
    n1 = gateway(None, workers=2, args=etcd_args(live_etcd, prefix))
    n2 = gateway(None, workers=2, args=etcd_args(live_etcd, prefix))
    adm1, adm2 = admin(n1), admin(n2)

    # Create through node 1: node 2 (which never saw the admin request) serves it, and so does node 1.
    r = adm1.put("/routes/r1", json={"uri": "/shared/*", "upstream": {"nodes": {a.addr: 1}}})
    assert r.status_code == 201, r.text
    converge(n2.url + "/shared/x", "a")
    converge(n1.url + "/shared/x", "a")
    r = adm2.get("/routes/r1")
    assert r.status_code == 200 and r.json()["value"]["uri"] == "/shared/*", r.text

    # Update through node 2: both nodes follow.
    r = adm2.patch("/routes/r1", json={"upstream": {"nodes": {a.addr: None, b.addr: 1}}})
    assert r.status_code == 200, r.text
    converge(n1.url + "/shared/x", "b")
    converge(n2.url + "/shared/x", "b")

    # Delete through node 1: gone on both.
    assert adm1.delete("/routes/r1").status_code == 200
    converge(n1.url + "/shared/x", None)
    converge(n2.url + "/shared/x", None)
    assert adm2.get("/routes/r1").status_code == 404


def test_apisix_key_layout_and_routes_written_straight_into_etcd(live_etcd, prefix, upstream, gateway):
    up = upstream("direct")
    gw = gateway(None, workers=2, args=etcd_args(live_etcd, prefix))
    adm = admin(gw)

    # An admin write lands at <prefix>/routes/<id>, as a plain JSON object.
    r = adm.put("/routes/viaadmin", json={"uri": "/via-admin", "upstream": {"nodes": {up.addr: 1}}})
    assert r.status_code == 201, r.text
    data = live_etcd.call("/v3/kv/range", {"key": b64(f"{prefix}/routes/viaadmin")})
    assert len(data.get("kvs") or []) == 1, data
    stored = json.loads(base64.b64decode(data["kvs"][0]["value"]))
    assert stored["uri"] == "/via-admin" and stored["upstream"]["nodes"] == {up.addr: 1}
    listed = live_etcd.call("/v3/kv/range", {"key": b64(f"{prefix}/"), "range_end": b64(f"{prefix}0"),
                                             "keys_only": True})  # fmt: skip
    keys = {base64.b64decode(kv["key"]).decode() for kv in listed.get("kvs") or []}
    assert f"{prefix}/routes/viaadmin" in keys, keys

    # What APISIX itself leaves in etcd: an "init_dir" marker, and routes as its admin API stores them.
    now = int(time.time())
    live_etcd.call("/v3/kv/put", {"key": b64(f"{prefix}/routes"), "value": b64("init_dir")})
    apisix_route = {
        "id": "direct", "uri": "/direct/*", "methods": ["GET"], "status": 1, "priority": 0,
        "create_time": now, "update_time": now,
        "upstream": {"type": "roundrobin", "scheme": "http", "pass_host": "pass", "hash_on": "vars",
                     "nodes": {up.addr: 1}},
    }  # fmt: skip
    live_etcd.call(
        "/v3/kv/put", {"key": b64(f"{prefix}/routes/direct"), "value": b64(json.dumps(apisix_route))}
    )
    host, port = up.addr.split(":")
    dashboard_route = {
        "id": "arr",
        "uri": "/arr",
        "create_time": now,
        "update_time": now,
        "upstream": {"type": "roundrobin", "nodes": [{"host": host, "port": int(port), "weight": 1}]},
    }
    live_etcd.call(
        "/v3/kv/put", {"key": b64(f"{prefix}/routes/arr"), "value": b64(json.dumps(dashboard_route))}
    )
    converge(gw.url + "/direct/x", "direct")
    converge(gw.url + "/arr", "direct")
    r = adm.get("/routes/direct")
    assert r.status_code == 200 and r.json()["value"]["uri"] == "/direct/*", r.text

    # A raw delete is seen too.
    live_etcd.call("/v3/kv/deleterange", {"key": b64(f"{prefix}/routes/direct")})
    converge(gw.url + "/direct/x", None)
    converge(gw.url + "/via-admin", "direct")  # the other route was not disturbed


def _wrk_errors(out: str) -> tuple[int, int, int]:
    """(requests, non-2xx/3xx responses, socket errors) from wrk's report."""
    m = re.search(r"(\d+) requests in", out)
    assert m, out
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return int(m.group(1)), int(non2xx.group(1)) if non2xx else 0, sum(map(int, sock.groups())) if sock else 0


def test_traffic_survives_etcd_stall_and_death(live_etcd, prefix, upstream, gateway):
    # A missing wrk is a broken test machine, not a reason to skip: .ci/run installs it.
    assert WRK is not None, "wrk is not installed (apt-get install -y wrk)"
    a, b = upstream("a"), upstream("b")
    gw = gateway(None, workers=2, args=etcd_args(live_etcd, prefix))
    adm = admin(gw)
    assert (
        adm.put("/routes/load", json={"uri": "/load", "upstream": {"nodes": {a.addr: 1}}}).status_code == 201
    )
    converge(gw.url + "/load", "a")

    assert WRK is not None
    wrk = subprocess.Popen([WRK, "-t2", "-c10", "-d6s", gw.url + "/load"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    wrk_started = time.monotonic()
    try:
        time.sleep(0.5)  # let the load get going first
        # etcd stalls (SIGSTOP): a write waits for etcd's answer, then gives up with a clear 503.
        live_etcd.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        r = adm.put("/routes/stalled", json={"uri": "/stalled", "upstream": {"nodes": {b.addr: 1}}})
        took = time.monotonic() - t0
        live_etcd.signal(signal.SIGCONT)
        assert r.status_code == 503, r.text
        assert "config store unavailable" in r.json()["error_msg"], r.text
        assert took < 6, f"a write to a stalled etcd took {took:.1f}s"

        # etcd dies: writes are refused at once with the same 503; traffic goes on.
        live_etcd.kill()
        t0 = time.monotonic()
        r = adm.put("/routes/dead", json={"uri": "/dead", "upstream": {"nodes": {b.addr: 1}}})
        assert r.status_code == 503 and "config store unavailable" in r.json()["error_msg"], r.text
        assert time.monotonic() - t0 < 3
        assert adm.get("/routes/load").status_code == 503  # reads need the store as well

        live_etcd.start()  # same data dir and port
        outage_end = time.monotonic() - wrk_started
        out, _ = wrk.communicate(timeout=15)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    requests, non2xx, sock_errors = _wrk_errors(out)
    assert requests > 100 and non2xx == 0 and sock_errors == 0, out
    assert outage_end < 6, (
        f"the outage ({outage_end:.1f}s after wrk started) must fall inside the 6 s wrk run"
    )

    # etcd is back: a write succeeds, and the watch (reconnected) brings it to every worker.
    r = adm.put("/routes/after", json={"uri": "/after", "upstream": {"nodes": {b.addr: 1}}})
    assert r.status_code == 201, r.text
    converge(gw.url + "/after", "b", timeout=10)
    # Neither refused write was half-applied.
    assert get(gw.url + "/stalled").status_code == 404
    assert get(gw.url + "/dead").status_code == 404
    assert adm.get("/routes/stalled").status_code == 404


def test_restart_while_etcd_is_down_serves_the_cache(live_etcd, prefix, upstream, gateway, tmp_path):
    a, b = upstream("a"), upstream("b")
    data = tmp_path / "node-data"
    gw = gateway(None, workers=2, args=etcd_args(live_etcd, prefix), data_dir=data)
    adm = admin(gw)
    assert (
        adm.put("/routes/cached", json={"uri": "/cached", "upstream": {"nodes": {a.addr: 1}}}).status_code
        == 201
    )
    converge(gw.url + "/cached", "a")
    wait_for(
        lambda: "/cached" in (data / "config-cache.json").read_text(errors="replace"), 5, "the config cache"
    )

    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(15) == 0
    live_etcd.kill()

    gw2 = gateway(None, workers=2, args=etcd_args(live_etcd, prefix), data_dir=data)
    assert "serving the cached config" in gw2.log(), gw2.log()
    converge(gw2.url + "/cached", "a")
    r = admin(gw2).put("/routes/new", json={"uri": "/new", "upstream": {"nodes": {b.addr: 1}}})
    assert r.status_code == 503 and "config store unavailable" in r.json()["error_msg"], r.text

    live_etcd.start()
    adm2 = admin(gw2)
    r = adm2.put("/routes/new", json={"uri": "/new", "upstream": {"nodes": {b.addr: 1}}})
    assert r.status_code == 201, r.text
    converge(gw2.url + "/new", "b", timeout=10)
    converge(gw2.url + "/cached", "a")
    # and a change to the cached route reaches the workers too
    r = adm2.patch("/routes/cached", json={"upstream": {"nodes": {a.addr: None, b.addr: 1}}})
    assert r.status_code == 200, r.text
    converge(gw2.url + "/cached", "b", timeout=10)
