"""Fixtures: real processes on free loopback ports. `upstream()` starts an echo server, `gateway()`
starts `pygateway run` on a config, both torn down after the test."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# The real etcd server fixture (`etcd`) lives in etcd_server.py.
pytest_plugins = ["etcd_server"]

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


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def upstream() -> Iterator[Callable[..., Upstream]]:
    started: list[Upstream] = []

    def start(name: str = "up", port: int | None = None) -> Upstream:
        port = port or free_port()
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "echo_upstream.py"), str(port), name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        up = Upstream(name, proc, port)
        started.append(up)
        wait_port(port)
        return up

    yield start
    for up in started:
        _stop(up.proc, signal.SIGTERM)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(config: dict[str, Any] | str | None, workers: int = 1, args: list[str] | None = None,
              data_dir: Path | None = None, port: int | None = None, admin_port: int | None = None) -> Gateway:  # fmt: skip
        """Start `pygateway run`: on a standalone file when `config` is given, else on the SQLite
        store in `data_dir` (fresh by default), with its admin API on a free port (or the given ones)."""
        port, admin_port, metrics_port = port or free_port(), admin_port or free_port(), free_port()
        cfg = tmp_path / f"apisix-{port}.yaml"
        log = tmp_path / f"gateway-{port}.log"
        data = data_dir or tmp_path / f"data-{port}"
        cmd = [sys.executable, "-m", "pygateway.cli", "run", "--listen", f"127.0.0.1:{port}",
               "--workers", str(workers), "--admin-listen", f"127.0.0.1:{admin_port}", "--data-dir", str(data),
               "--admin-key", ADMIN_KEY, "--viewer-key", VIEWER_KEY,
               "--metrics-listen", f"127.0.0.1:{metrics_port}", *(args or [])]  # fmt: skip
        if config is not None:
            write_config(cfg, config)
            cmd += ["-c", str(cfg)]
        with open(log, "wb") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
        gw = Gateway(proc, port, cfg, log, admin_port, metrics_port)
        started.append(gw)
        gw.wait_log("listening on", timeout=30)
        return gw

    yield start
    for gw in started:
        _stop(gw.proc)


def route(rid: str, uri: str, *nodes: Upstream, **extra: Any) -> dict[str, Any]:
    """A route dict in APISIX shape, proxying to the given upstreams."""
    r: dict[str, Any] = {"id": rid, "uri": uri, "upstream": {"nodes": {n.addr: 1 for n in nodes}}}
    r.update(extra)
    return r
