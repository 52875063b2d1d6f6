"""The admin dashboard, in a real headless Chromium driven over the Chrome DevTools Protocol: the page
loads with the viewer key, its tables list the routes and nodes, its charts fill while load runs, and
a screenshot is saved (tmp dir and benches/results/dashboard.png). Keys are checked over plain HTTP."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket
from helpers import ADMIN_KEY, ROOT, VIEWER_KEY, free_port

WIDTH, HEIGHT = 1280, 960
ROWS = "[...document.querySelectorAll('#routes tbody tr')]"  # the routes table's rows, in page JS


class Browser:
    """One headless Chromium page, driven with CDP commands over its websocket."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=15, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"CDP {method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                self.events.append(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException:
                break
            finally:
                self.ws.settimeout(15)
        raise AssertionError(f"no {method} within {timeout}s")

    def navigate(self, url: str) -> None:
        self.events.clear()
        res = self.call("Page.navigate", url=url)
        assert "errorText" not in res, res
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"JS error in {expression!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_js(self, expression: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{expression!r} still falsy after {timeout}s")
            time.sleep(0.2)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """`chromium --headless=new` on a free debugging port; a missing chromium fails the test."""
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed (Debian package `chromium`)"
    port = free_port()
    with open(tmp_path / "chromium.log", "wb") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--no-first-run", "--disable-extensions",
             f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        ws_url = None
        while ws_url is None:
            assert proc.poll() is None, (tmp_path / "chromium.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "chromium's DevTools endpoint did not come up"
            try:
                pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                ws_url = next((p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"), None)
            except httpx.HTTPError:
                pass
            if ws_url is None:
                time.sleep(0.2)
        b = Browser(ws_url)
        b.call("Page.enable")
        b.call("Runtime.enable")
        b.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield b
        b.ws.close()
    finally:
        # The launcher script execs chromium, which starts its helpers in our new session: end them all.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def dashboard_config(up: Any) -> dict[str, Any]:
    return {
        "routes": [
            {"id": "r1", "uri": "/delay/*", "plugins": {"prometheus": {}},
             "upstream": {"nodes": {up.addr: 1}}},
            {"id": "r2", "name": "statuses", "uri": "/status/*", "plugins": {"prometheus": {}},
             "upstream_id": "u1"},
        ],
        "upstreams": [{"id": "u1", "nodes": {up.addr: 1}}],
    }  # fmt: skip


def load(url: str, paths: list[str], stop: threading.Event, counts: dict[str, int], clients: int = 4) -> None:
    """Cycle through `paths` from `clients` threads until `stop`; count the answers by path and status."""
    lock = threading.Lock()

    def one(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            for i in itertools.count(offset):
                if stop.is_set():
                    return
                path = paths[i % len(paths)]
                key = f"{path} {c.get(path).status_code}"
                with lock:
                    counts[key] = counts.get(key, 0) + 1

    threads = [threading.Thread(target=one, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def test_dashboard_charts_live_load_in_headless_chromium(gateway, upstream, browser, tmp_path):
    up = upstream()
    gw = gateway(dashboard_config(up))
    # The viewer key is enough: the page takes it from its URL and sends it as X-API-KEY on each poll.
    browser.navigate(f"{gw.admin_url}/dashboard?api_key={VIEWER_KEY}")
    assert browser.js("document.title") == "pygateway dashboard"
    browser.wait_js("window.dashboard.ticks >= 2")
    assert browser.js("window.dashboard.errors") == 0
    # The routes table lists both routes (from the config, before any traffic) and the node table the
    # upstream's node and the inline one.
    assert browser.js(ROWS + ".map(r => r.dataset.route)") == ["r1", "r2"]
    rows = browser.js(ROWS + ".map(r => r.innerText)")
    assert "/delay/*" in rows[0] and "statuses" in rows[1] and "upstream u1" in rows[1]
    nodes = browser.js("[...document.querySelectorAll('#nodes tbody tr')].map(r => r.innerText)")
    assert any("u1" in n and up.addr in n for n in nodes) and any("r1" in n and up.addr in n for n in nodes)

    # Load both routes for a few seconds: r1 answers after a 5 ms upstream delay, r2 1 in 4 with 503.
    stop, counts = threading.Event(), {}
    paths = ["/delay/5", "/status/200", "/status/200", "/status/200", "/status/503"]
    loader = threading.Thread(target=load, args=(gw.url, paths, stop, counts))
    ticks_before = browser.js("window.dashboard.ticks")
    loader.start()
    try:
        time.sleep(4)
        during = browser.js("""(() => {
            const s = window.dashboard.series;
            const max = (a) => Math.max(0, ...a.filter((v) => v !== null));
            return {r1: {n: s.r1.rps.length, rps: max(s.r1.rps), p50: max(s.r1.p50), p99: max(s.r1.p99)},
                    r2: {n: s.r2.rps.length, rps: max(s.r2.rps), c200: max(s.r2.codes["200"] || []),
                         c503: max(s.r2.codes["503"] || [])},
                    ticks: window.dashboard.ticks};
        })()""")
        points = browser.js("[...document.querySelectorAll('#charts canvas')].map(c => +c.dataset.points)")
        # Captured while the load runs, so the picture shows live charts.
        shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    finally:
        stop.set()
        loader.join()
    assert during["ticks"] >= ticks_before + 3, during
    assert during["r1"]["n"] >= 3 and during["r2"]["n"] >= 3, during
    assert during["r1"]["rps"] > 0 and during["r2"]["rps"] > 0, during
    assert during["r2"]["c200"] > 0 and during["r2"]["c503"] > 0, during
    # Every r1 request waited 5 ms upstream: the median can not fall in the (0, 5 ms] bucket.
    assert 5 <= during["r1"]["p50"] <= during["r1"]["p99"] < 2000, during

    # Once the counters settle, the totals on the page are exactly what the load got back.
    sent_r1, sent_200 = counts.get("/delay/5 200", 0), counts.get("/status/200 200", 0)
    sent_503 = counts.get("/status/503 503", 0)
    assert sum(counts.values()) == sent_r1 + sent_200 + sent_503 > 50, counts
    browser.wait_js(
        f"(() => {{ const m = window.dashboard.data.route_metrics;"
        f" return m.r1 && m.r1.status['200'] === {sent_r1} && m.r2.status['200'] === {sent_200}"
        f" && m.r2.status['503'] === {sent_503}; }})()",
        timeout=5,
    )
    codes = browser.js(ROWS + ".map(r => r.querySelector('.codes').innerText)")
    assert "200:" in codes[0] and "200:" in codes[1] and "503:" in codes[1], codes
    # The charts drew: points on every canvas, and the r1 req/s line in its own colour.
    assert len(points) == 6 and all(p >= 3 for p in points), points
    line_pixels = browser.js("""(() => {
        const c = document.getElementById('card-r1-rps');
        const hex = window.dashboard.palette[0];
        const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < px.length; i += 4) if (px[i] === r && px[i+1] === g && px[i+2] === b) n++;
        return n;
    })()""")
    assert line_pixels > 50, line_pixels
    # The page's quantile is Prometheus' histogram_quantile: rank 18 of 20 lies 8/10 into (2, 5].
    assert browser.js("quantile(0.9, [1, 2, 5, null], [0, 10, 20, 20])") == pytest.approx(4.4)

    assert png_size(shot) == (WIDTH, HEIGHT) and len(shot) > 20_000, len(shot)
    (tmp_path / "dashboard.png").write_bytes(shot)
    results = ROOT / "benches" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "dashboard.png").write_bytes(shot)

    # A wrong key gets the 401 page, in the browser too.
    browser.navigate(f"{gw.admin_url}/dashboard?api_key=wrong")
    assert "401" in browser.js("document.body.innerText")
    assert browser.js("typeof window.dashboard") == "undefined"


def test_dashboard_needs_the_admin_or_viewer_key(gateway, upstream):
    up = upstream()
    gw = gateway(dashboard_config(up))
    page, feed = f"{gw.admin_url}/dashboard", f"{gw.admin_url}/dashboard/data"
    with httpx.Client(timeout=5) as c:
        for r in (
            c.get(page),
            c.get(page, params={"api_key": "wrong"}),
            c.get(page, headers={"X-API-KEY": ""}),
        ):
            assert r.status_code == 401 and r.headers["content-type"].startswith("text/html"), r
            assert "api_key=" in r.text
        assert c.get(feed).status_code == 401
        assert c.get(feed, headers={"X-API-KEY": "wrong"}).json()["error_msg"] == "failed to check token"
        for key in (ADMIN_KEY, VIEWER_KEY):
            r = c.get(page, params={"api_key": key})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "default-src 'none'" in r.headers["content-security-policy"]
            assert r.headers["referrer-policy"] == "no-referrer"
            # Self-contained: no external script, style or image.
            assert "http://" not in r.text and "https://" not in r.text and " src=" not in r.text
            data = c.get(feed, headers={"X-API-KEY": key}).json()
            assert [x["id"] for x in data["routes"]] == ["r1", "r2"]
            assert data["upstreams"][0]["nodes"] == [{"addr": up.addr, "weight": 1}]
        assert c.post(feed, headers={"X-API-KEY": ADMIN_KEY}).status_code == 405
        # Counters appear once a route with the prometheus plugin served a request (the feed reparses
        # the metrics at most twice a second).
        assert c.get(gw.url + "/status/404").status_code == 404
        deadline = time.monotonic() + 5
        while "r2" not in (data := c.get(feed, headers={"X-API-KEY": VIEWER_KEY}).json())["route_metrics"]:
            assert time.monotonic() < deadline, data
            time.sleep(0.1)
        assert data["route_metrics"]["r2"]["status"] == {"404": 1.0}
        assert data["route_metrics"]["r2"]["latency_buckets"]["count"][-1] == 1.0
        node = {"upstream": "u1", "ip": "127.0.0.1", "port": str(up.port), "healthy": True}
        assert node in data["upstream_health"]
