"""A worker process: the Rust data plane on the main thread, a config reader thread, an asyncio loop.

Started by the master (see `pygateway.master.supervisor`). stdin brings compiled configs (see
`pygateway.worker.compiled`); stdout answers one JSON object per line: `{"applied": N}`,
`{"rejected": N, "error": "..."}`, or `{"fatal": "..."}` before exiting.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

import orjson

from pygateway import _core
from pygateway.plugin.registry import PluginLoadError, Registry
from pygateway.worker.compiled import Compiled
from pygateway.worker.host import AsyncLoop, drain_plugin_times
from pygateway.worker.http_logger import Sender

log = logging.getLogger("pygateway.worker")


def _say(msg: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(msg) + b"\n")
    sys.stdout.buffer.flush()


def _apply(worker: _core.Worker, registry: Registry, compiled: Compiled) -> bool:
    try:
        worker.apply(compiled.snapshot, compiled.chains(registry))
    except (_core.ConfigError, TypeError, ValueError) as exc:
        _say({"rejected": compiled.version, "error": str(exc)})
        return False
    _say({"applied": compiled.version})
    return True


def _reader(worker: _core.Worker, registry: Registry) -> None:
    while (compiled := Compiled.read(sys.stdin.buffer)) is not None:
        _apply(worker, registry, compiled)
    # The master went away: drain and exit.
    worker.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pygateway-worker")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--shm")
    p.add_argument("--id", type=int, default=0)
    p.add_argument("--plugin-dir", action="append", default=[])
    p.add_argument("--metrics")
    # The worker settings as JSON (`pygateway.settings.Settings.worker_json`), for the Rust core.
    p.add_argument("--settings", required=True)
    p.add_argument("--otlp-endpoint")
    p.add_argument("--otlp-service-name")
    args = p.parse_args(argv)
    if args.shm:
        # Plugins that keep node-wide state (limit-conn) open the same shared table.
        os.environ["PYGATEWAY_SHM"] = args.shm
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker[{args.id}] %(levelname)s %(message)s")
    try:
        registry = Registry(args.plugin_dir)
        worker = _core.Worker(args.settings, shm_path=args.shm, metrics_path=args.metrics, worker_id=args.id)
        # Serve nothing until the first config is in: a respawned worker must not answer 404s.
        first = Compiled.read(sys.stdin.buffer)
        if first is None or not _apply(worker, registry, first):
            _say({"fatal": "no valid initial config"})
            return 1
        worker.bind(args.host, args.port)
    except (OSError, ValueError, PluginLoadError) as exc:
        _say({"fatal": str(exc)})
        return 1
    if args.otlp_endpoint:
        from pygateway.worker.otel import Exporter

        Exporter(worker, args.otlp_endpoint, args.otlp_service_name).start()
    Sender(worker).start()  # idle unless a route has http-logger
    loop = AsyncLoop()
    worker.set_async_submit(loop.submit)
    worker.set_plugin_times(drain_plugin_times)
    threading.Thread(target=_reader, args=(worker, registry), name="pygateway-config", daemon=True).start()
    # Signals are the Rust core's from here (SIGTERM drains, SIGINT/SIGQUIT stop fast); without this,
    # Python's own SIGINT handler would also raise KeyboardInterrupt once run() returns.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker.run()
    # Skip interpreter finalization: the stdin reader (a daemon thread) holds stdin's lock and would
    # make it abort. Everything the worker owns is already drained and closed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
