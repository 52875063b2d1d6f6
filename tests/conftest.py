"""Fixtures (the helpers they use are in `helpers.py`): real processes on free loopback ports. `upstream()` starts an echo server, `gateway()`
starts `pygateway run` on a config, both torn down after the test."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    ADMIN_KEY,
    HERE,
    ROOT,
    VIEWER_KEY,
    Gateway,
    Upstream,
    free_port,
    stop_process,
    wait_port,
    write_config,
)

# The real etcd server fixture (`etcd`) lives in etcd_server.py.
pytest_plugins = ["etcd_server"]


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
        stop_process(up.proc, signal.SIGTERM)


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
        stop_process(gw.proc)


