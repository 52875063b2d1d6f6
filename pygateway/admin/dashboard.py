"""The admin dashboard: one static page and the JSON feed it polls every second.

    GET /apisix/admin/dashboard?api_key=KEY   dashboard.html (inline CSS/JS, no external assets)
    GET /apisix/admin/dashboard/data          routes, upstreams, node health and per-route counters

Both need the admin or viewer key (a browser cannot set X-API-KEY on a navigation, hence `?api_key=` on
the page; the page's JS sends the header on its fetches). The feed carries cumulative counters summed
from the master's Prometheus text; the page computes rates and percentiles from their deltas, so any
number of open pages agree and a page opened late still sees the totals.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson

from pygateway.store.base import Store, StoreUnavailable

log = logging.getLogger("pygateway.admin")

PATH = "/apisix/admin/dashboard"
PAGE_FILE = Path(__file__).with_name("dashboard.html")
CACHE_SECONDS = 0.5  # several open pages share one parse of the metrics text

# One sample line of the text exposition format: name{labels} value [timestamp]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Send = Callable[[dict[str, Any]], Any]


def parse_prometheus(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) for each sample of a Prometheus text page; comments and junk skipped."""
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, raw_labels, raw_value = m.groups()
        try:
            value = float(raw_value)
        except ValueError:
            continue
        labels = {}
        if raw_labels:
            for k, v in _LABEL.findall(raw_labels):
                labels[k] = re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e.group(0)], v)
        yield name, labels, value


def _le_key(le: str) -> float:
    return float("inf") if le == "+Inf" else float(le)


def summarize(text: str) -> dict[str, Any]:
    """Per-route counters (summed over consumers, services, matched uri/host and node), upstream node
    health and gateway-wide gauges from the metrics text."""
    routes: dict[str, dict[str, Any]] = {}
    buckets: dict[str, dict[str, float]] = {}
    health: list[dict[str, Any]] = []
    conns: dict[str, float] = {}
    workers: dict[str, float] = {}
    total = version = 0.0

    def route(labels: dict[str, str]) -> dict[str, Any]:
        r = labels.get("route", "")
        if r not in routes:
            routes[r] = {
                "status": {},
                "latency_sum": 0.0,
                "latency_count": 0.0,
                "bytes_in": 0.0,
                "bytes_out": 0.0,
            }
        return routes[r]

    for name, labels, value in parse_prometheus(text):
        if name == "apisix_http_status":
            st = route(labels)["status"]
            code = labels.get("code", "")
            st[code] = st.get(code, 0.0) + value
        elif name.startswith("apisix_http_latency_") and labels.get("type") == "request":
            r = route(labels)
            if name == "apisix_http_latency_bucket":
                b = buckets.setdefault(labels.get("route", ""), {})
                le = labels.get("le", "+Inf")
                b[le] = b.get(le, 0.0) + value
            elif name == "apisix_http_latency_sum":
                r["latency_sum"] += value
            elif name == "apisix_http_latency_count":
                r["latency_count"] += value
        elif name == "apisix_bandwidth":
            key = "bytes_in" if labels.get("type") == "ingress" else "bytes_out"
            route(labels)[key] += value
        elif name == "apisix_upstream_status":
            health.append({"upstream": labels.get("name", ""), "ip": labels.get("ip", ""),
                           "port": labels.get("port", ""), "healthy": value > 0})  # fmt: skip
        elif name == "apisix_nginx_http_current_connections":
            conns[labels.get("state", "")] = value
        elif name == "apisix_http_requests_total":
            total = value
        elif name == "pygateway_workers":
            workers[labels.get("state", "")] = value
        elif name == "pygateway_config_version":
            version = value
    for rid, b in buckets.items():
        les = sorted(b, key=_le_key)
        routes[rid]["latency_buckets"] = {"le": [_le_key(le) if le != "+Inf" else None for le in les],
                                        "count": [b[le] for le in les]}  # fmt: skip
    return {"route_metrics": routes, "upstream_health": health, "connections": conns, "requests_total": total,
            "workers": workers, "config_version": version}  # fmt: skip


def _route_row(value: dict[str, Any]) -> dict[str, Any]:
    up = value.get("upstream") if isinstance(value.get("upstream"), dict) else None
    return {
        "id": str(value.get("id", "")),
        "name": value.get("name") or "",
        "uris": [value["uri"]] if isinstance(value.get("uri"), str) else list(value.get("uris") or []),
        "hosts": [value["host"]] if isinstance(value.get("host"), str) else list(value.get("hosts") or []),
        "methods": list(value.get("methods") or []),
        "status": value.get("status", 1),
        "upstream_id": str(value["upstream_id"]) if value.get("upstream_id") is not None else None,
        "service_id": str(value["service_id"]) if value.get("service_id") is not None else None,
        "nodes": _nodes(up.get("nodes")) if up else [],
        # Only plugin names: plugin confs may carry secrets and the page has no use for them.
        "plugins": sorted((value.get("plugins") or {}).keys()),
    }


def _nodes(nodes: Any) -> list[dict[str, Any]]:
    if isinstance(nodes, dict):
        return [{"addr": str(k), "weight": w} for k, w in nodes.items()]
    if isinstance(nodes, list):
        return [{"addr": f"{n.get('host')}:{n.get('port', 80)}", "weight": n.get("weight", 1)}
                for n in nodes if isinstance(n, dict)]  # fmt: skip
    return []


class Dashboard:
    """Serves the page and the feed; `submit` runs blocking store reads on the admin API's thread."""

    def __init__(self, store: Store, metrics: Callable[[], str] | None,
                 submit: Callable[[Callable[[], Any]], Future[Any]]) -> None:  # fmt: skip
        self.store = store
        self.metrics = metrics
        self.submit = submit
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] = (0.0, {})

    @staticmethod
    def handles(path: str) -> bool:
        return path in (PATH, PATH + "/", PATH + "/data")

    def metrics_summary(self) -> dict[str, Any]:
        if self.metrics is None:
            return {}
        with self._lock:
            at, summary = self._cached
            now = time.monotonic()
            if now - at >= CACHE_SECONDS:
                # Stamped with the scrape time, so the page's rates divide by the right interval.
                summary = {**summarize(self.metrics()), "time": time.time()}
                self._cached = (now, summary)
            return summary

    def data(self) -> dict[str, Any]:
        routes = [_route_row(i.value) for i in self.store.list("routes/")]
        upstreams = [
            {"id": str(i.value.get("id", "")), "name": i.value.get("name") or "",
             "type": i.value.get("type", "roundrobin"), "nodes": _nodes(i.value.get("nodes"))}
            for i in self.store.list("upstreams/")
        ]  # fmt: skip
        return {"time": time.time(), "routes": routes, "upstreams": upstreams,
                "metrics_enabled": self.metrics is not None, **self.metrics_summary()}  # fmt: skip

    async def serve(self, scope: dict[str, Any], send: Send) -> None:
        """Answer an already authorised request."""
        if scope["method"] not in ("GET", "HEAD"):
            await _reply(send, 405, b'{"error_msg":"method not allowed (allowed: GET)"}', "application/json",
                         [(b"allow", b"GET")])  # fmt: skip
        elif scope["path"].endswith("/data"):
            try:
                payload = await asyncio.wrap_future(self.submit(self.data))
            except StoreUnavailable as e:
                await _reply(send, 503, orjson.dumps({"error_msg": f"config store unavailable: {e}"}),
                             "application/json")  # fmt: skip
                return
            except Exception:
                log.exception("dashboard: building the data feed failed")
                await _reply(
                    send, 500, b'{"error_msg":"internal error (see the gateway log)"}', "application/json"
                )
                return
            await _reply(send, 200, orjson.dumps(payload), "application/json")
        else:
            await _reply(send, 200, PAGE_FILE.read_bytes(), "text/html; charset=utf-8", PAGE_HEADERS)

    @staticmethod
    async def denied(scope: dict[str, Any], send: Send, status: int, message: str) -> None:
        if scope["path"].endswith("/data"):
            await _reply(send, status, orjson.dumps({"error_msg": message}), "application/json")
            return
        text = (
            message
            if status != 401
            else (f"401 Unauthorized: open this page with the admin or viewer key, {PATH}?api_key=YOUR_KEY")
        )
        body = (
            "<!doctype html><meta charset=utf-8><title>pygateway dashboard</title>"
            f"<body style='font-family:sans-serif'><h1>{status}</h1><p>{_html_escape(text)}</p>"
        ).encode()
        await _reply(send, status, body, "text/html; charset=utf-8", PAGE_HEADERS)


# The page loads nothing from anywhere but this origin's feed; it must not leak its URL (with the key).
PAGE_HEADERS = [
    (b"content-security-policy", (b"default-src 'none'; script-src 'unsafe-inline'; "
     b"style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'")),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]  # fmt: skip


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


async def _reply(send: Send, status: int, body: bytes, ctype: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:  # fmt: skip
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *(extra or [])]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
