"""The master's HTTP ports: an ASGI app (the admin API, or the metrics and status port) under uvicorn on a
daemon thread of the master, loopback by default."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from email.utils import formatdate
from typing import Any

import uvicorn


class _QuietServer(uvicorn.Server):
    """uvicorn's main loop wakes every 0.1 s (to refresh its Date header, to look at its exit
    flag): 10 wake-ups a second of an idle master for each port. This one sleeps until `stop`;
    `_dated` adds the Date header per response instead."""

    _stop: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        if not await self.on_tick(0):  # sets uvicorn's default headers; true if already stopped
            await self._stop.wait()

    def stop(self) -> None:
        self.should_exit = True
        loop, ev = self._loop, self._stop
        if loop is not None and ev is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(ev.set)


def _dated(app: Any) -> Any:
    """The ASGI app with a Date header on every HTTP response (RFC 9110 §6.6.1)."""

    async def dated(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_dated(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                date = (b"date", formatdate(usegmt=True).encode())
                msg = {**msg, "headers": [*msg.get("headers", ()), date]}
            await send(msg)

        return await app(scope, receive, send_dated)

    return dated


class AsgiServer:
    """uvicorn on a daemon thread of the master."""

    def __init__(self, app: Any, host: str, port: int, name: str = "pygateway-admin") -> None:
        cfg = uvicorn.Config(
            _dated(app), host=host, port=port, log_level="warning", lifespan="off", access_log=False,
            date_header=False,
        )
        self.server = _QuietServer(cfg)
        self.name = name
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout * 20)):
            if self.server.started or not self.thread.is_alive():
                break
            deadline.wait(0.05)
        if not self.server.started:
            what = "admin API" if self.name == "pygateway-admin" else "metrics/status port"
            raise OSError(f"the {what} did not start on {self.server.config.host}:{self.server.config.port} "
                          "(is the port in use?)")

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(5)
