"""Helpers shared by the tests: free ports, the gateway and upstream process handles the fixtures in
`conftest.py` return, config writing, plain HTTP requests, metrics scraping, a log receiver. Test files
import from here, never from each other or from `conftest.py`."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

# ----------------------------------------------------------------------------- processes, ports and configs
HERE = Path(__file__).parent
ROOT = HERE.parent

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: a port the kernel picked for us
    (bind to 0) can be taken by some outgoing connection's local port before the server binds it."""
    lo, _hi = _ephemeral_range()
    for _ in range(1000):
        port = random.randrange(max(1024, lo - 12000), lo)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Upstream:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int) -> None:
        self.name, self.proc, self.port = name, proc, port
        self.addr = f"127.0.0.1:{port}"
        self.url = f"http://{self.addr}"


ADMIN_KEY = "test-admin-key"
VIEWER_KEY = "test-viewer-key"


class Gateway:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, config_path: Path, log_path: Path,
                 admin_port: int, metrics_port: int) -> None:  # fmt: skip
        self.proc, self.port, self.config_path, self.log_path = proc, port, config_path, log_path
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"
        self.url = f"http://127.0.0.1:{port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}/apisix/admin"
        self.admin_headers = {"X-API-KEY": ADMIN_KEY}
        self.version = 1

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in gateway log:\n{self.log()}")

    def update(self, config: dict[str, Any] | str, expect_ok: bool = True) -> None:
        """Rewrite the config file; wait until every worker applied it (or the master rejected it)."""
        write_config(self.config_path, config)
        if expect_ok:
            self.version += 1
            self.wait_log(f"config version {self.version} applied by all workers")
        else:
            self.wait_log("rejected; still serving version")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False).stdout
        return [int(p) for p in out.split()]


def write_config(path: Path, config: dict[str, Any] | str) -> None:
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic, like an editor's save


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def route(rid: str, uri: str, *nodes: Upstream, **extra: Any) -> dict[str, Any]:
    """A route dict in APISIX shape, proxying to the given upstreams."""
    r: dict[str, Any] = {"id": rid, "uri": uri, "upstream": {"nodes": {n.addr: 1 for n in nodes}}}
    r.update(extra)
    return r




# ------------------------------------------------------------------------------------- requests and waiting
def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def get(
    port: int, path: str, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (Connection: close), so SO_REUSEPORT picks a worker each time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close", **(headers or {})})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def tcp_sockets() -> Iterator[list[str]]:
    """The rows of /proc/net/tcp{,6}, split: [1] local, [2] remote address, [3] state, [9] inode."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            yield line.split()


def listen_inodes(port: int) -> set[str]:
    """Socket inodes of TCP listeners on `port` (state 0A)."""
    return {f[9] for f in tcp_sockets() if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port}


def established_to(port: int) -> int:
    """Number of established TCP connections (state 01) whose remote port is `port`."""
    return sum(1 for f in tcp_sockets() if f[3] == "01" and int(f[2].rsplit(":", 1)[1], 16) == port)


def socket_inodes(pid: int) -> set[str]:
    out: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def listening_workers(gw: Gateway) -> set[int]:
    """Workers (children of the master) that hold a listening socket on the gateway's port."""
    inodes = listen_inodes(gw.port)
    return {pid for pid in gw.worker_pids() if socket_inodes(pid) & inodes}




# ----------------------------------------------------------------------------------------- process CPU time
def cpu_ticks(pid: int) -> int:
    """CPU time of the whole process (all threads) in nanoseconds, from schedstat: clock ticks are
    too coarse to see a few hundred requests on a release build."""
    return sum(int((t / "schedstat").read_text().split()[0]) for t in Path(f"/proc/{pid}/task").iterdir())




# ------------------------------------------------------------------------------------ metrics and log files
def scrape(gw: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metrics page, parsed by the official Prometheus client's parser."""
    text = httpx.get(f"{gw.metrics_url}/apisix/prometheus/metrics", timeout=5).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], metric: str, /, **labels: str) -> float:
    """Sum of the samples of `metric` whose labels include `labels` (the parser names counters' samples
    `<metric>_total`, as OpenMetrics does)."""
    names = {metric, metric + "_total"}
    return sum(v for (n, ls), v in samples.items() if n in names and labels.items() <= dict(ls).items())


def read_lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    """The access log is flushed in batches (at most every 100 ms): wait for `n` lines."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{len(lines)} lines in {path}, wanted {n}")




# ------------------------------------------------------------------------------------- an HTTP log receiver
class Receiver:
    """An HTTP log receiver: records every POST (time, headers, body); answers `fail_first` requests 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.posts: list[tuple[float, dict[str, str], bytes]] = []
        self.paths: list[str] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.attempts += 1
                    fail = receiver.attempts <= receiver.fail_first
                    if not fail:
                        receiver.posts.append((time.monotonic(), dict(self.headers), body))
                        receiver.paths.append(self.path)
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{self.port}/logs?src=gw"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def entries(self, concat: str = "json") -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self.lock:
            for _, _, body in self.posts:
                if concat == "json":
                    out.extend(json.loads(body))
                else:
                    out.extend(json.loads(line) for line in body.split(b"\n"))
        return out

    def wait_entries(self, n: int, concat: str = "json", timeout: float = 10.0) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.entries(concat)) >= n, timeout, f"{n} log entries", 0.05)
        return self.entries(concat)




# ------------------------------------------------------------------------- plugins and `pygateway validate`
def sent(resp: httpx.Response, name: str) -> list[str]:
    """Values of a request header as the echo upstream received it."""
    return [v for k, v in resp.json()["headers"] if k.lower() == name.lower()]


def consumer(username: str, **plugins: Any) -> dict[str, Any]:
    return {"username": username, "plugins": plugins}


def validate(tmp_path: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return subprocess.run([sys.executable, "-m", "pygateway.cli", "validate", str(path)],
                          capture_output=True, text=True, cwd=ROOT, check=False)  # fmt: skip
