"""The master's metrics and status port (`--metrics-listen`), for Prometheus and Kubernetes probes.

- `GET /apisix/prometheus/metrics`: every worker's counters summed (rendered in Rust from the shared
  metrics file) plus the master's own gauges (config version, last reload).
- `GET /status`: 200 while the master runs, with a short JSON summary.
- `GET /status/ready`: 200 once every worker has loaded the current config, else 503.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

METRICS_PATH = "/apisix/prometheus/metrics"


class StatusSource(Protocol):
    def metrics_text(self) -> str: ...

    def status(self) -> tuple[bool, dict[str, Any]]:
        """(ready, summary)"""
        ...


Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _reply(send: Send, status: int, body: bytes, ctype: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def master_metrics(version: int, reloaded_at: float, workers: int, ready: int) -> str:
    host = socket.gethostname().replace("\\", "\\\\").replace('"', '\\"')
    return (
        "# HELP apisix_node_info Info of APISIX node\n# TYPE apisix_node_info gauge\n"
        f'apisix_node_info{{hostname="{host}"}} 1\n'
        "# HELP pygateway_config_version Config version the master last accepted\n"
        "# TYPE pygateway_config_version gauge\n"
        f"pygateway_config_version {version}\n"
        "# HELP pygateway_config_last_reload_timestamp_seconds When that config was accepted (Unix time)\n"
        "# TYPE pygateway_config_last_reload_timestamp_seconds gauge\n"
        f"pygateway_config_last_reload_timestamp_seconds {reloaded_at:.3f}\n"
        "# HELP pygateway_workers Worker processes running, and those serving the current config\n"
        "# TYPE pygateway_workers gauge\n"
        f'pygateway_workers{{state="running"}} {workers}\npygateway_workers{{state="ready"}} {ready}\n'
    )


def create_app(source: StatusSource, metrics_path: str = METRICS_PATH) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method not in ("GET", "HEAD"):
            await _reply(send, 405, b'{"error_msg":"method not allowed"}', b"application/json")
        elif path == metrics_path:
            await _reply(send, 200, source.metrics_text().encode(), b"text/plain; version=0.0.4; charset=utf-8")
        elif path in ("/status", "/status/ready"):
            ready, summary = source.status()
            code = 200 if path == "/status" or ready else 503
            body = dict(summary, status="ok" if code == 200 else "not ready")
            await _reply(send, code, orjson.dumps(body), b"application/json")
        else:
            await _reply(send, 404, b'{"error_msg":"not found"}', b"application/json")

    return app
