"""Runs a route's Python plugins for the Rust core: one call per phase runs the whole chain.

The Rust side calls `Chain.run(phase, req, ctx)` (or awaits `run_async` on the worker's asyncio loop
when any hook of that phase is `async def`). A hook that raises is logged once with its plugin name and
the request gets a 500; the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from pygateway.plugin import PHASES, Plugin, Response

log = logging.getLogger("pygateway.plugins")

REWRITE, ACCESS, BEFORE_PROXY, HEADER_FILTER, BODY_FILTER, LOG = range(6)
_REQUEST_PHASES = (REWRITE, ACCESS, BEFORE_PROXY)
_ERROR = (500, [("content-type", "application/json")], b'{"error_msg":"plugin error"}')

ShortResponse = tuple[int, list[tuple[str, str]], bytes]


def _as_response(value: Any, plugin: Plugin) -> ShortResponse:
    if isinstance(value, Response):
        return value.as_tuple()
    raise TypeError(f"plugin {plugin.name!r} returned {type(value).__name__}; expected Response or None")


def _report(plugin: Plugin, phase: int, exc: BaseException) -> ShortResponse:
    log.error("plugin %r failed in %s", plugin.name, PHASES[phase], exc_info=exc)
    return _ERROR


class Chain:
    """The ordered plugins of one route (global rules' plugins first, then by priority)."""

    def __init__(self, plugins: list[Plugin]) -> None:
        self.plugins = plugins
        self.hooks: list[list[tuple[Plugin, Callable[..., Any]]]] = [
            [(p, getattr(p, name)) for p in plugins if callable(getattr(p, name, None))] for name in PHASES
        ]
        self.needs_body = any(p.needs_body for p in plugins)
        self.phases = sum(1 << i for i, hooks in enumerate(self.hooks) if hooks)
        self.async_phases = sum(
            1 << i
            for i, hooks in enumerate(self.hooks)
            if any(inspect.iscoroutinefunction(h) for _, h in hooks)
        )
        for i in (HEADER_FILTER, BODY_FILTER, LOG):
            if self.async_phases & (1 << i):
                bad = [p.name for p, h in self.hooks[i] if inspect.iscoroutinefunction(h)]
                raise TypeError(f"plugins {bad}: {PHASES[i]} hooks must be plain functions, not async")

    def run(self, phase: int, req: Any, ctx: dict[str, Any]) -> ShortResponse | None:
        for plugin, hook in self.hooks[phase]:
            try:
                out = hook(req, ctx)
                if out is not None:
                    return _as_response(out, plugin)
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; contain it here
                return _report(plugin, phase, exc)
        return None

    async def run_async(self, phase: int, req: Any, ctx: dict[str, Any]) -> ShortResponse | None:
        for plugin, hook in self.hooks[phase]:
            try:
                out = hook(req, ctx)
                if inspect.isawaitable(out):
                    out = await out
                if out is not None:
                    return _as_response(out, plugin)
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; contain it here
                return _report(plugin, phase, exc)
        return None

    def header_filter(self, req: Any, resp: Any, ctx: dict[str, Any]) -> ShortResponse | None:
        for plugin, hook in self.hooks[HEADER_FILTER]:
            try:
                hook(req, resp, ctx)
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; contain it here
                return _report(plugin, HEADER_FILTER, exc)
        return None

    def body_filter(self, req: Any, resp: Any, chunk: bytes, eof: bool, ctx: dict[str, Any]) -> bytes:
        for plugin, hook in self.hooks[BODY_FILTER]:
            try:
                out = hook(req, resp, chunk, eof, ctx)
            except Exception as exc:
                _report(plugin, BODY_FILTER, exc)
                raise
            if out is not None:
                chunk = out
        return chunk

    def log(self, req: Any, resp: Any, ctx: dict[str, Any]) -> None:
        for plugin, hook in self.hooks[LOG]:
            try:
                hook(req, resp, ctx)
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; contain it here
                _report(plugin, LOG, exc)


class AsyncLoop:
    """The worker's asyncio loop, on its own thread; `submit` is handed to the Rust core."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pygateway-asyncio", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any], waker: Callable[[Any], None]) -> None:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        fut.add_done_callback(waker)
