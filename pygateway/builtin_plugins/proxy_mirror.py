"""APISIX `proxy-mirror`: send a copy of requests to another service (shadow traffic), ignore its answer.

    proxy-mirror: {host: "http://127.0.0.1:9797", path: "/shadow", path_concat_mode: prefix, sample_ratio: 0.1}

The copy has the request's method, headers and body as they go to the upstream (after rewrites), and its
path: the upstream path and query, or with `path` that path plus the query (`replace`, the default) or
`path` + the upstream path and query (`prefix`). `sample_ratio` (0.00001..1) mirrors that share.

Fire and forget: the copy is handed to a background thread's asyncio loop and sent from there, so a
mirror that is slow, down or broken never delays nor fails the main request (unlike nginx's `mirror`,
which holds the main request until the copy is done). Each worker sends at most 256 copies at once and
drops the rest; a copy gets 15 s in all. Failures are logged (at most one line per 10 s).

Bodies: a route with this plugin reads request bodies whole before proxying (`needs_body`, at most 1 MiB,
else 413) so the copy can carry them; this is the price of mirroring POST/PUT faithfully. Only `http` and
`https` mirrors are supported (`grpc(s)` is refused at config load).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from pygateway import Plugin

from ._common import invalid

if TYPE_CHECKING:
    from pygateway import Request

log = logging.getLogger("pygateway.plugins.proxy-mirror")

_HOST = re.compile(r"(?P<scheme>https?|grpcs?)://(?P<host>[\da-zA-Z.-]+|\[[\da-fA-F:]+\])(?::(?P<port>\d+))?")
_HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length")
)
MAX_IN_FLIGHT = 256
TIMEOUT = 15.0


class _Sender:
    """A daemon thread running an asyncio loop that sends mirror copies; started on first use."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.in_flight = 0
        self.last_warning = 0.0
        self.tls = ssl.create_default_context()
        threading.Thread(target=self.loop.run_forever, name="pygateway-mirror", daemon=True).start()

    def submit(self, host: str, port: int, tls: bool, head: bytes, body: bytes) -> None:
        self.loop.call_soon_threadsafe(self._start, host, port, tls, head, body)

    def _start(self, host: str, port: int, tls: bool, head: bytes, body: bytes) -> None:
        if self.in_flight >= MAX_IN_FLIGHT:
            self._warn(f"mirror {host}:{port}: {MAX_IN_FLIGHT} copies in flight, dropping one")
            return
        self.in_flight += 1
        self.loop.create_task(self._send(host, port, tls, head, body))

    async def _send(self, host: str, port: int, tls: bool, head: bytes, body: bytes) -> None:
        writer = None
        try:
            async with asyncio.timeout(TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    host.strip("[]"), port, ssl=self.tls if tls else None, server_hostname=host if tls else None
                )
                writer.write(head + body)
                await writer.drain()
                status = await reader.readline()
                if not status.startswith(b"HTTP/"):
                    raise ConnectionError(f"bad response {status[:40]!r}")
                while await reader.read(65536):  # drain: the mirror closes (we sent Connection: close)
                    pass
        except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
            self._warn(f"mirror {host}:{port}: {type(exc).__name__}: {exc}")
        finally:
            self.in_flight -= 1
            if writer is not None:
                writer.close()

    def _warn(self, msg: str) -> None:
        now = time.monotonic()
        if now - self.last_warning >= 10:
            self.last_warning = now
            log.warning("%s", msg)


_sender: _Sender | None = None
_sender_lock = threading.Lock()


def sender() -> _Sender:
    global _sender
    with _sender_lock:
        if _sender is None:
            _sender = _Sender()
        return _sender


class ProxyMirror(Plugin):
    name = "proxy-mirror"
    priority = 1010
    needs_body = True

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        host: str
        path: Annotated[str, msgspec.Meta(pattern=r"^/[^?&]+$")] | None = None
        path_concat_mode: Literal["replace", "prefix"] = "replace"
        sample_ratio: Annotated[float, msgspec.Meta(ge=0.00001, le=1)] = 1.0

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        cls._target(conf.host)
        return conf

    @staticmethod
    def _target(host: str) -> tuple[str, int, bool]:
        m = _HOST.fullmatch(host)
        if m is None:
            raise invalid("host", f'expected "http://host[:port]" or "https://host[:port]" with no path, got {host!r}')
        if m["scheme"].startswith("grpc"):
            raise invalid("host", "grpc mirrors are not supported (use http or https)")
        tls = m["scheme"] == "https"
        port = int(m["port"]) if m["port"] else (443 if tls else 80)
        if not 1 <= port <= 65535:
            raise invalid("host", f"port out of range: {port}")
        return m["host"], port, tls

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.host, self.port, self.tls = self._target(conf.host)
        default_port = 443 if self.tls else 80
        self.authority = self.host if self.port == default_port else f"{self.host}:{self.port}"

    def before_proxy(self, req: Request, ctx: dict[str, Any]) -> None:
        conf = self.conf
        if conf.sample_ratio < 1 and random.random() >= conf.sample_ratio:
            return
        query = f"?{req.query}" if req.query else ""
        if conf.path is None:
            target = req.path + query
        elif conf.path_concat_mode == "prefix":
            target = conf.path + req.path + query
        else:
            target = conf.path + query
        body = req.body or b""
        lines = [f"{req.method} {target} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP]
        if "host" not in req.headers:
            lines.append(f"host: {self.authority}")
        if body or req.method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body)}")
        lines.append("connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        sender().submit(self.host, self.port, self.tls, head, body)
