"""A real etcd server for the tests (Debian's etcd-server; .ci/run installs it)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"


def wait_for(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


# --------------------------------------------------------------------------------------------------
# a real etcd


class Etcd:
    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir, self.log_path = data_dir, log_path
        self.port, self.peer_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            ETCD_BIN, "--name", "test", "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}", "--log-level", "warn",
        ]  # fmt: skip
        env = dict(os.environ)
        arch = {"aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}.get(os.uname().machine)
        if arch:  # etcd 3.4 refuses to start on these unless told
            env.setdefault("ETCD_UNSUPPORTED_ARCH", arch)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"etcd exited: {self.log_path.read_text()[-2000:]}"
            try:
                r = httpx.post(f"{self.url}/v3/kv/range", json={"key": "AA=="}, timeout=0.5, trust_env=False)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"etcd did not start: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGSTOP:  # delivery is asynchronous: wait until every thread is stopped
            wait_for(self._all_stopped, timeout=5, what="etcd to stop")

    def _all_stopped(self) -> bool:
        assert self.proc is not None
        task = Path(f"/proc/{self.proc.pid}/task")
        try:
            states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in task.iterdir()]
        except OSError:
            return False
        return bool(states) and all(st in ("T", "t") for st in states)

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(self.url + path, json=body, timeout=5, trust_env=False)
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    # A missing etcd is a broken test machine, not a reason to skip: .ci/run installs it.
    assert os.access(ETCD_BIN, os.X_OK), "etcd is not installed (apt-get install -y etcd-server)"
    d = tmp_path_factory.mktemp("etcd")
    server = Etcd(d / "data", d / "etcd.log")
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.signal(signal.SIGCONT)
    server.kill()


