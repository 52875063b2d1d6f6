"""The master process: validates config, supervises the workers (the nginx model) and reloads.

- N worker processes each bind the same port with SO_REUSEPORT; a worker that dies is respawned at
  once (with a growing back-off if it keeps crashing at start) while the others keep serving.
- Config changes (file watched, or SIGHUP) are validated here first; a bad config is logged and the
  last good one keeps serving. A good one is pushed to every worker, which swaps its route table
  without dropping a request.
- SIGTERM drains (workers stop accepting, finish in-flight requests, `--drain-timeout` cap); SIGINT/SIGQUIT
  stop fast.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pygateway import _core
from pygateway.config.snapshot import compile_config
from pygateway.config.validate import ConfigError
from pygateway.fswatch import DirWatch
from pygateway.master.admin_keys import admin_keys
from pygateway.master.asgi import AsgiServer
from pygateway.master.sources import FileSource, StoreSource
from pygateway.plugin.registry import Registry
from pygateway.settings import Settings
from pygateway.store.base import Store, StoreError
from pygateway.worker.compiled import Compiled

log = logging.getLogger("pygateway.master")

START_TIMEOUT = 20.0

# Workers import pygateway from where the master did. (`python -m pygateway.worker` would put the
# current directory first on sys.path: run from a source checkout after `pip install .`, it would pick
# up the checkout's pygateway, which has no compiled extension.)
_PKG_ROOT = str(Path(__file__).resolve().parent.parent.parent)
WORKER_BOOT = [
    sys.executable,
    "-c",
    f"import sys; sys.path[0] = {_PKG_ROOT!r}; import pygateway.worker.main as w; sys.exit(w.main(sys.argv[2:]))",
    "pygateway.worker",  # names the process in `ps`; main() parses the flags after it
]
POLL_INTERVAL = 0.5  # a config file without inotify is polled this often
MAX_IDLE = 5.0  # the main loop's longest sleep when nothing is due (wake-ups make it react at once)
SETTLE = 0.05  # after a file event, wait this long for the rest of a multi-step save


class StartError(Exception):
    pass


@dataclass
class WorkerProc:
    wid: int
    proc: subprocess.Popen[bytes]
    started: float
    buf: bytes = b""
    applied: int = -1
    fatal: str | None = None


def check_config(raw: dict[str, Any], registry: Registry, version: int) -> Compiled:
    """Validate and compile once, then do what a worker will do with it as a dry run (instantiate the
    plugin chains, compile the route table in Rust), so a bad config never reaches the workers."""
    compiled = compile_config(raw, version, registry)
    compiled.chains(registry)
    _core.check_snapshot(compiled.snapshot)
    return compiled


class Master:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.version = 0
        self.raw: dict[str, Any] = {}
        self.compiled: Compiled | None = None
        self.workers: dict[int, WorkerProc] = {}
        self.respawn_at: dict[int, float] = {}
        self.crashes: dict[int, int] = {}
        self.sel = selectors.DefaultSelector()
        self.stopping: str | None = None
        self.reload_requested = False
        self.admin: AsgiServer | None = None
        self.admin_info = ""
        # Woken by signals (set_wakeup_fd) and by store watchers: the main loop reacts at once.
        self._wake = socket.socketpair()
        for sock in self._wake:
            sock.setblocking(False)
        self.sel.register(self._wake[0], selectors.EVENT_READ, None)
        self.data_dir = Path(settings.data_dir)
        self.store: Store | None = None
        self.source: FileSource | StoreSource = self._make_source()
        self._watch = DirWatch.open(self.source.path) if isinstance(self.source, FileSource) else None
        self._file_touched = False
        if self._watch is not None:
            self.sel.register(self._watch.fd, selectors.EVENT_READ, self._watch)
        shm_dir = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        self.shm_path = os.path.join(shm_dir, f"pygateway-{os.getpid()}.limits")
        self._limits = _core.Limiter(self.shm_path, slots=1 << 16, create=True)
        self.metrics_path = os.path.join(shm_dir, f"pygateway-{os.getpid()}.metrics")
        self.metrics = _core.Metrics(self.metrics_path, workers=settings.workers, create=True)
        self.status_server: AsgiServer | None = None
        self.reloaded_at = time.time()
        # Workers write "stdout" access logs to the master's stdout through an inherited descriptor.
        self._log_fd: int | None = None
        if settings.access_log_to == "stdout":
            self._log_fd = os.dup(1)
            os.set_inheritable(self._log_fd, True)
        plugin_dirs = list(settings.plugin_dir)
        self.registry = Registry(plugin_dirs)

    # ------------------------------------------------------------------ config
    def _make_source(self) -> FileSource | StoreSource:
        if self.s.config is not None:
            return FileSource(self.s.config)
        cache = self.data_dir / "config-cache.json"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.s.store_kind == "etcd":
            from pygateway.store.etcd import EtcdStore

            self.store = EtcdStore(self.s.etcd_urls, self.s.etcd_prefix)
        else:
            from pygateway.store.sqlite import SqliteStore

            self.store = SqliteStore(self.data_dir / "config.db")
        return StoreSource(self.store, cache, self.wakeup)

    def wakeup(self) -> None:
        try:
            self._wake[1].send(b"w")
        except OSError:
            pass  # already pending

    def _read_config(self) -> dict[str, Any]:
        raw = self.source.read()
        dirs = raw.pop("plugin_dirs", None) or []
        if dirs and sorted(dirs) != sorted(self.s.plugin_dir):
            if self.version:
                log.warning("plugin_dirs changed: restart the gateway to load new plugin code")
            else:
                base = Path(self.s.config or ".").parent
                self.s.plugin_dir = [str((base / d).resolve()) for d in dirs]
                self.registry = Registry(self.s.plugin_dir)
        return raw

    def load_initial(self) -> None:
        raw = self._read_config()
        self.compiled = check_config(raw, self.registry, 1)
        self.raw, self.version = raw, 1
        self.source.good(raw)

    def start_admin(self) -> None:
        if self.s.admin_addr is None:
            return
        from pygateway.admin import create_app

        host, port = self.s.admin_addr
        admin, viewer, created = admin_keys(self.data_dir, self.s.admin_key, self.s.viewer_key)
        if self.store is None:
            from pygateway.store.yaml_store import YamlStore

            assert self.s.config is not None
            self.store = YamlStore(self.s.config)
        app = create_app(
            self.store, self.registry, admin, viewer, self.s.allow_admin, on_write=self.wakeup,
            metrics=self.metrics_text,
        )
        self.admin = AsgiServer(app, host, port)
        self.admin.start()
        url = f"http://{host}:{port}/apisix/admin"
        if created and not self.s.admin_key:
            self.admin_info = (
                f"admin API on {url}; X-API-KEY (admin): {admin}  (viewer: {viewer})\n"
                f"  the keys are saved in {self.data_dir / 'admin_keys.json'} and not printed again"
            )
        else:
            self.admin_info = f"admin API on {url}; keys in {self.data_dir / 'admin_keys.json'}"
        if self.store.read_only:
            self.admin_info += f"\n  read-only: the config comes from {self.s.config}"

    def start_status(self) -> None:
        """The metrics and status port (Prometheus, Kubernetes probes)."""
        if self.s.metrics_addr is None:
            return
        from pygateway.master.status import create_app

        host, port = self.s.metrics_addr
        self.status_server = AsgiServer(create_app(self), host, port, name="pygateway-status")
        self.status_server.start()

    def metrics_text(self) -> str:
        from pygateway.master.status import master_metrics

        ready = sum(1 for w in list(self.workers.values()) if w.applied >= self.version)
        return self.metrics.render() + master_metrics(self.version, self.reloaded_at, len(self.workers), ready)

    def status(self) -> tuple[bool, dict[str, Any]]:
        workers = list(self.workers.values())
        ready = sum(1 for w in workers if w.applied >= self.version and w.proc.poll() is None)
        summary = {"config_version": self.version, "workers": self.s.workers, "workers_ready": ready}
        return ready == self.s.workers and not self.stopping, summary

    def reload(self, why: str) -> bool:
        try:
            raw = self._read_config()
            compiled = check_config(raw, self.registry, self.version + 1)
        except (ConfigError, _core.ConfigError, StoreError, TypeError, ValueError) as exc:
            log.error("config reload (%s) rejected; still serving version %d:\n%s", why, self.version, exc)
            return False
        self.raw, self.version, self.compiled = raw, self.version + 1, compiled
        self.reloaded_at = time.time()
        self.source.good(raw)
        msg = self._config_msg()
        for w in self.workers.values():
            self._send(w, msg)
        log.info("config version %d pushed to %d workers (%s)", self.version, len(self.workers), why)
        return True

    def _config_msg(self) -> bytes:
        assert self.compiled is not None
        return self.compiled.encode()

    # ------------------------------------------------------------------ workers
    def _spawn(self, wid: int) -> WorkerProc:
        log_to = f"fd:{self._log_fd}" if self._log_fd is not None else self.s.access_log_to
        cmd = [
            *WORKER_BOOT,
            "--host", self.s.host, "--port", str(self.s.port), "--shm", self.shm_path, "--id", str(wid),
            "--metrics", self.metrics_path, "--settings", self.s.worker_json(access_log=log_to),
        ]  # fmt: skip
        for d in self.s.plugin_dir:
            cmd += ["--plugin-dir", d]
        if self.s.otlp_to:
            cmd += ["--otlp-endpoint", self.s.otlp_to, "--otlp-service-name", self.s.otlp_service_name]
        fds = (self._log_fd,) if self._log_fd is not None else ()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=fds)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        w = WorkerProc(wid, proc, time.monotonic())
        self.workers[wid] = w
        self.sel.register(proc.stdout, selectors.EVENT_READ, w)
        self._send(w, self._config_msg())
        return w

    def _send(self, w: WorkerProc, msg: bytes) -> None:
        try:
            assert w.proc.stdin is not None
            w.proc.stdin.write(msg)
            w.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died; the reaper respawns it with the current config

    def _read_worker(self, w: WorkerProc) -> None:
        assert w.proc.stdout is not None
        try:
            chunk = os.read(w.proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._unregister(w)
            return
        w.buf += chunk
        *lines, w.buf = w.buf.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if "applied" in msg:
                w.applied = int(msg["applied"])
                if self.version > 1 and all(x.applied >= self.version for x in self.workers.values()):
                    log.info("config version %d applied by all workers", self.version)
            elif "rejected" in msg:
                log.error("worker %d rejected config %s: %s", w.wid, msg["rejected"], msg.get("error"))
            elif "fatal" in msg:
                w.fatal = str(msg["fatal"])

    def _unregister(self, w: WorkerProc) -> None:
        try:
            assert w.proc.stdout is not None
            self.sel.unregister(w.proc.stdout)
        except (KeyError, ValueError):
            pass

    def _reap(self) -> None:
        now = time.monotonic()
        for wid, w in list(self.workers.items()):
            code = w.proc.poll()
            if code is None:
                continue
            self._unregister(w)
            del self.workers[wid]
            if self.stopping:
                continue
            # Crash loop back-off: a worker that dies right after starting waits longer each time.
            quick = now - w.started < 2.0
            self.crashes[wid] = self.crashes.get(wid, 0) + 1 if quick else 0
            delay = min(0.1 * 2 ** self.crashes[wid], 10.0) if quick else 0.0
            log.warning("worker %d (pid %d) exited with %s; respawning in %.1fs", wid, w.proc.pid, code, delay)
            if w.fatal:
                log.error("worker %d: %s", wid, w.fatal)
            self.respawn_at[wid] = now + delay
        for wid, at in list(self.respawn_at.items()):
            if at <= now:
                del self.respawn_at[wid]
                self._spawn(wid)

    def start(self) -> None:
        for wid in range(self.s.workers):
            self._spawn(wid)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._pump(0.1)
            failed = [w for w in self.workers.values() if w.fatal or w.proc.poll() is not None]
            if failed:
                w = failed[0]
                self._pump(0.2)
                raise StartError(w.fatal or f"worker {w.wid} exited with {w.proc.poll()} during start")
            if all(w.applied >= self.version for w in self.workers.values()):
                return
        raise StartError(f"workers not ready after {START_TIMEOUT:.0f}s")

    def _pump(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            if isinstance(key.data, WorkerProc):
                self._read_worker(key.data)
            elif isinstance(key.data, DirWatch):
                key.data.drain()
                self._file_touched = True
            else:
                try:
                    key.fileobj.recv(4096)  # type: ignore[union-attr]
                except OSError:
                    pass

    # ------------------------------------------------------------------ main loop
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        elif signum == signal.SIGUSR1:
            # logrotate: every worker reopens its access log file.
            for w in list(self.workers.values()):
                try:
                    w.proc.send_signal(signal.SIGUSR1)
                except ProcessLookupError:
                    pass
        elif signum == signal.SIGTERM:
            self.stopping = self.stopping or "drain"
        else:
            self.stopping = "fast"

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake[1].fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        # A worker's exit wakes the loop (through the wakeup fd) to respawn it at once.
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)

    def serve_forever(self) -> int:
        # A file is looked at when inotify reports its directory changed (and every MAX_IDLE in
        # case the file system reports nothing), or polled where inotify is missing.
        poll = POLL_INTERVAL if self._watch is None else MAX_IDLE
        next_poll = time.monotonic() + poll
        while not self.stopping:
            # Sleep until something is due: signals (SIGCHLD included), worker output, file events
            # and store changes wake the selector; an idle master does not tick.
            self._pump(self._idle_wait(next_poll))
            self._reap()
            if self.reload_requested:
                self.reload_requested = False
                self.reload("SIGHUP")
            now = time.monotonic()
            if self._file_touched:
                self._file_touched = False
                next_poll = min(next_poll, now + SETTLE)
            # A store tells us about changes (and wakes the loop).
            if isinstance(self.source, StoreSource) or now >= next_poll:
                next_poll = now + poll
                if self.source.changed():
                    self.reload(f"{self.source.description} changed")
        return self.shutdown(self.stopping)

    def _idle_wait(self, next_poll: float) -> float:
        due = list(self.respawn_at.values())
        if isinstance(self.source, FileSource):
            due.append(next_poll)
        return max(0.0, min(due, default=time.monotonic() + MAX_IDLE) - time.monotonic())

    def shutdown(self, how: str) -> int:
        sig = signal.SIGTERM if how == "drain" else signal.SIGINT
        log.info("stopping (%s): %d workers", how, len(self.workers))
        for w in self.workers.values():
            try:
                w.proc.send_signal(sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (self.s.drain_timeout + 5 if how == "drain" else 5)
        for w in self.workers.values():
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        self.cleanup()
        return 0

    def cleanup(self) -> None:
        if self.admin is not None:
            self.admin.stop()
        if self.status_server is not None:
            self.status_server.stop()
        self.source.close()
        if self._watch is not None:
            self._watch.close()
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        for path in (self.shm_path, self.metrics_path):
            try:
                os.unlink(path)
            except OSError:
                pass
