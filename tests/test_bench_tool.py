"""`pygateway bench`: its throughput against wrk on the same target, its open-loop percentiles against
a server with a known delay and a one-second stall, its reports, --compare, and its errors. Every run
goes through the real CLI in a subprocess against real servers on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, free_port

from pygateway.bench.report import fmt_us


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pygateway.cli", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def bench_json(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / f"bench-{time.monotonic_ns()}.json"
    r = bench(*args, "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text()), r.stdout


class DelayServer:
    """HTTP/1.1 keep-alive server on its own asyncio thread: answers every request `delay` s after it
    arrived; responses due within [first request + stall_at, + stall_for) are all held to its end."""

    def __init__(self, delay: float, stall_at: float | None = None, stall_for: float = 0.0) -> None:
        self.delay, self.stall_at, self.stall_for = delay, stall_at, stall_for
        self.port = free_port()
        self.t0: float | None = None
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        assert started.wait(5)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", self.port, backlog=512))
        started.set()
        self.loop.run_forever()
        server.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # GET without a body
                now = self.loop.time()
                self.t0 = self.t0 if self.t0 is not None else now
                due = now + self.delay
                if self.stall_at is not None:
                    start = self.t0 + self.stall_at
                    if start <= due < start + self.stall_for:
                        due = start + self.stall_for
                await asyncio.sleep(due - self.loop.time())
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def delay_server() -> Iterator[Callable[..., DelayServer]]:
    servers: list[DelayServer] = []

    def start(delay: float, stall_at: float | None = None, stall_for: float = 0.0) -> DelayServer:
        servers.append(DelayServer(delay, stall_at, stall_for))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def count_above(target: dict[str, Any], us: int) -> int:
    return sum(n for value, n in target["histogram"] if value > us)


def pct(target: dict[str, Any], label: str) -> int:
    return int(target["percentiles_us"][label])


def test_throughput_matches_wrk_on_the_same_target(delay_server: Any, tmp_path: Path) -> None:
    # A target whose capacity does not depend on the CPU left over by other processes on the machine:
    # each response takes 20 ms, so 50 connections can get at most ~2,500 req/s, and any client that
    # keeps all 50 busy and counts right reports that. Rounds alternate so drift hits both tools.
    srv = delay_server(0.020)
    url = f"http://127.0.0.1:{srv.port}/"
    wrk_rates, our_rates = [], []
    for _ in range(3):
        w = subprocess.run(["wrk", "-t1", "-c50", "-d2s", url], capture_output=True, text=True, timeout=30,
                           check=False)  # fmt: skip
        assert w.returncode == 0, w.stderr
        m = re.search(r"Requests/sec:\s+([\d.]+)", w.stdout)
        assert m, w.stdout
        wrk_rates.append(float(m.group(1)))
        data, _ = bench_json(tmp_path, url, "--connections", "50", "--duration", "2s", "--warmup", "0.3s")
        t = data["targets"][0]
        assert t["errors"] == 0 and t["requests"] > 1000, t
        our_rates.append(t["rate"])
    ours, theirs = statistics.median(our_rates), statistics.median(wrk_rates)
    assert abs(ours - theirs) / theirs < 0.15, f"pygateway bench {our_rates} vs wrk {wrk_rates} req/s"
    assert theirs > 1_500, wrk_rates  # the target really was kept busy


def queued_latencies(rate: float, conns: int, service: float, stall_at: float, stall_for: float,
                     warmup: float, duration: float) -> list[float]:  # fmt: skip
    """What an open-loop client with per-connection schedules must measure against DelayServer: each
    connection sends every conns/rate s, a request waits for the one before it on its connection, and
    latency runs from the intended send time."""
    out = []
    for c in range(conns):
        free, k = 0.0, 0
        while (intended := c / rate + k * conns / rate) < warmup + duration:
            k += 1
            due = max(intended, free) + service
            if stall_at <= due < stall_at + stall_for:
                due = stall_at + stall_for
            free = due
            if intended >= warmup:
                out.append(due - intended)
    return out


def test_open_loop_percentiles_and_no_coordinated_omission(delay_server: Any, tmp_path: Path) -> None:
    # 200 req/s on 50 connections (one request per connection every 250 ms) against a 20 ms server,
    # and once all responses held for 1 s. During the stall each connection's requests queue behind
    # the held one; timed from their intended send, ~115 requests wait more than 500 ms (the model
    # above: about rate x 0.5 s, plus the queue). A closed-loop client, which stops sending while it
    # waits, records at most one such request per connection: <= 50.
    srv = delay_server(0.020, stall_at=2.0, stall_for=1.0)
    data, out = bench_json(tmp_path, f"http://127.0.0.1:{srv.port}/", "--rate", "200", "--connections", "50",
                           "--duration", "4s", "--warmup", "0.5s")  # fmt: skip
    t = data["targets"][0]
    assert data["mode"] == "open" and t["errors"] == 0, t
    assert 760 <= t["requests"] <= 805, t["requests"]
    assert 19_500 <= pct(t, "p50") <= 28_000, t["percentiles_us"]
    assert pct(t, "p99") >= 800_000, t["percentiles_us"]
    assert 950_000 <= pct(t, "max") <= 1_150_000, t["percentiles_us"]
    # The server's clock starts at the first (warm-up) request, ~the client's start.
    model = queued_latencies(200, 50, pct(t, "p50") / 1e6, 2.0, 1.0, 0.5, 4.0)
    expected = sum(1 for x in model if x > 0.5)
    slow = count_above(t, 500_000)
    assert 100 <= expected <= 130 and abs(slow - expected) <= 0.15 * expected, (slow, expected)
    assert slow > 1.5 * 50, slow
    assert "achieved of 200 asked" in out


def test_compare_upstream_and_gateway_with_reports(upstream: Any, gateway: Any, tmp_path: Path) -> None:
    up = upstream("cmp")
    gw = gateway({"routes": [{"id": "r", "uri": "/*", "upstream": {"nodes": {up.addr: 1}}}]})
    json_path, png, page = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "r.html"
    r = bench(up.url + "/x", "--compare", gw.url + "/x", "--rate", "100", "--connections", "5",
              "--duration", "2s", "--warmup", "0.5s", "--json", str(json_path), "--png", str(png), "--html", str(page))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\r" not in r.stdout  # no progress line when stdout is not a terminal
    data = json.loads(json_path.read_text())
    a, b = data["targets"]
    assert (a["url"], b["url"]) == (up.url + "/x", gw.url + "/x")
    for t in (a, b):
        assert t["errors"] == 0 and 190 <= t["requests"] <= 202, t
        p = t["percentiles_us"]
        assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["p99.9"] <= p["max"]
    # Through the gateway is one more hop than straight to the upstream.
    assert data["added_us"]["p50"] == pct(b, "p50") - pct(a, "p50") > 0
    assert re.search(r"^\s+\[1\] " + re.escape(up.url + "/x") + r"\s+" + re.escape(fmt_us(pct(a, "p50"))), r.stdout,
                     re.MULTILINE), r.stdout  # fmt: skip
    assert re.search(r"^\s+\[2\] " + re.escape(gw.url + "/x") + r"\s+" + re.escape(fmt_us(pct(b, "p50"))), r.stdout,
                     re.MULTILINE), r.stdout  # fmt: skip
    added = re.search(r"^\s+added \(\[2\] - \[1\]\)\s+\+(\S+)", r.stdout, re.MULTILINE)
    assert added and added.group(1) == fmt_us(data["added_us"]["p50"]), r.stdout

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    html = page.read_text()
    svg = ET.fromstring(html[html.index("<svg"): html.index("</svg>") + 6])
    assert len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    for t in (a, b):
        assert f"<td>{fmt_us(pct(t, 'p99'))}</td>" in html
    embedded = re.search(r'<script type="application/json" id="bench-data">(.*?)</script>', html, re.DOTALL)
    assert embedded and json.loads(embedded.group(1))["added_us"] == data["added_us"]
    # Self-contained: nothing to fetch.
    assert not re.search(r"<script[^>]+src=|<link|@import|https?://(?!www\.w3\.org/2000/svg)(?!127\.0\.0\.1)", html)


def test_png_without_matplotlib_is_one_clear_line(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None; from pygateway.cli import main; "
            f"sys.exit(main(['bench', 'http://127.0.0.1:1/', '--png', {str(tmp_path / 'x.png')!r}]))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 1
    assert r.stderr == "pygateway bench: --png needs matplotlib: pip install 'pygateway[plot]'\n"
    assert not (tmp_path / "x.png").exists()


def test_unreachable_target_exits_1_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    r = bench(url, "--duration", "1s")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pygateway bench: {url}: cannot connect") and "refused" in lines[0]
    # Unreachable --compare target too, named.
    srv_url = f"http://127.0.0.1:{free_port()}/"
    r = bench("http://127.0.0.1:1/", "--compare", srv_url)
    assert r.returncode == 1 and "http://127.0.0.1:1/" in r.stderr


def test_target_not_speaking_h2c_exits_1(delay_server: Any) -> None:
    srv = delay_server(0.0)  # HTTP/1.1 only
    url = f"http://127.0.0.1:{srv.port}/"
    r = bench(url, "--http2", "--duration", "1s")
    assert r.returncode == 1
    assert r.stderr.startswith(f"pygateway bench: {url}: first h2c request failed") and r.stderr.count("\n") == 1


def test_bad_arguments_are_one_line() -> None:
    r = bench("http://127.0.0.1:1/", "--rate", "fast")
    assert r.returncode == 2 and "--rate" in r.stderr and "expected requests per second" in r.stderr
    r = bench("https://127.0.0.1:1/")
    assert r.returncode == 1 and "only http://" in r.stderr


def test_impossible_rate_prints_achieved_beside_asked_and_progress_on_a_tty(delay_server: Any) -> None:
    srv = delay_server(0.001)
    # On a pseudo-terminal, the live progress line (rewritten with \r) appears once a second.
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pygateway.cli", "bench", f"http://127.0.0.1:{srv.port}/",
                             "--rate", "10M", "--connections", "1", "--duration", "2.5s", "--warmup", "0"],
                            cwd=ROOT, stdout=slave, stderr=subprocess.PIPE)  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    out = b"".join(chunks).decode()
    assert re.search(r"\r\s+[12]s\s+[\d,.]+ req/s, 0 errors, p50 \S+, p99 \S+", out), out
    m = re.search(r"([\d,.]+) req/s achieved of 10,000,000 asked", out)
    assert m, out
    achieved = float(m.group(1).replace(",", ""))
    assert 100 < achieved < 1_000, achieved  # one connection to a 1 ms server
    assert "warning: the asked rate was not reached" in out


def test_ctrl_c_stops_the_run_at_once(delay_server: Any) -> None:
    srv = delay_server(0.001)
    # Python keeps SIGINT ignored if its parent ignored it (as a shell does for background jobs).
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from pygateway.cli import main; "
            f"sys.exit(main(['bench', 'http://127.0.0.1:{srv.port}/', '--duration', '30s', '--connections', '5']))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and err == "pygateway bench: interrupted\n"
    assert time.monotonic() - sent < 1.0
