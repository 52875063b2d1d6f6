"""Runs a route's Python plugins for the Rust core: one call per phase runs the whole chain.

The Rust side calls `Chain.run(phase, req, ctx)` (or awaits `run_async` on the worker's asyncio loop
when any hook of that phase is `async def`). A hook that raises is logged once with its plugin name and
the request gets a 500; the worker keeps serving.

Consumers' plugins (APISIX's consumer and consumer group `plugins`) are merged in by `ContextChain`:
when `rewrite` (or else `access`) ends with `req.consumer` set, the request switches to the route's
chain merged with that consumer's plugins (consumer > consumer group > route, by plugin name; the
global rules' plugins stay first), cached per consumer. The consumer's plugins that the route lacks
then run the phase that identified the consumer (APISIX's `rewrite_in_consumer`), and every later
phase runs the merged chain. The chain advertises to Rust the union of the phases (and async phases,
and `needs_body`) of the route's and all consumers' plugins, so a consumer's hook is never skipped.
`ContextChain` also puts `service_id`, `consumer_name` and `consumer_group_id` in `ctx`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from pygateway.plugin import PHASES, Plugin, Response

log = logging.getLogger("pygateway.plugins")

# Phase numbers as the Rust core numbers them (`_core.PHASES` lists the names in that order).
REWRITE, ACCESS, BEFORE_PROXY, HEADER_FILTER, BODY_FILTER, LOG = (
    PHASES.index(name) for name in ("rewrite", "access", "before_proxy", "header_filter", "body_filter", "log")
)
_ERROR = (500, [("content-type", "application/json")], b'{"error_msg":"plugin error"}')

ShortResponse = tuple[int, list[tuple[str, str]], bytes]


def _as_response(value: Any, plugin: Plugin) -> ShortResponse:
    if isinstance(value, Response):
        return value.as_tuple()
    raise TypeError(f"plugin {plugin.name!r} returned {type(value).__name__}; expected Response or None")


# Per-plugin time, sampled: one run in SAMPLE_EVERY of a chain's request phase times each hook, so
# the metric costs a counter decrement on the other runs. The worker's data plane pulls the totals
# once a second (`drain_plugin_times`) into `pygateway_plugin_sampled_*`.
SAMPLE_EVERY = 64
_times: dict[str, list[int]] = {}


def drain_plugin_times() -> list[tuple[str, int, int]]:
    """(plugin, hook calls timed, nanoseconds) since the last call."""
    global _times
    taken, _times = _times, {}
    return [(name, calls, ns) for name, (calls, ns) in taken.items()]


def _timed(plugin: Plugin, hook: Callable[..., Any], *args: Any) -> Any:
    t = time.perf_counter_ns()
    try:
        return hook(*args)
    finally:
        spent = _times.setdefault(plugin.name, [0, 0])
        spent[0] += 1
        spent[1] += time.perf_counter_ns() - t


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
        self._countdown = SAMPLE_EVERY
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
        self._countdown -= 1
        if not self._countdown:
            return self._run_timed(phase, req, ctx)
        for plugin, hook in self.hooks[phase]:
            try:
                out = hook(req, ctx)
                if out is not None:
                    return _as_response(out, plugin)
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; contain it here
                return _report(plugin, phase, exc)
        return None

    def _run_timed(self, phase: int, req: Any, ctx: dict[str, Any]) -> ShortResponse | None:
        """`run`, timing each hook (the sampled run)."""
        self._countdown = SAMPLE_EVERY
        for plugin, hook in self.hooks[phase]:
            try:
                out = _timed(plugin, hook, req, ctx)
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


@dataclass
class ConsumerPlugins:
    """One consumer's extra plugins (its group's merged with its own, auth plugins left out)."""

    group_id: str | None
    plugins: list[Plugin]  # highest priority first
    # Limiters the Rust core runs for this consumer: they replace the route's Python ones of that name
    native: frozenset[str] = frozenset()


class ConsumerTable:
    """Every consumer with a group or extra plugins, shared by the chains of one config."""

    def __init__(self, consumers: dict[str, ConsumerPlugins]) -> None:
        self.consumers = consumers
        # Precomputed for the per-request path: each listed consumer's group, and who adds plugins
        # (most consumers add none: their requests then skip the merge entirely).
        self.group_of = {name: c.group_id for name, c in consumers.items()}
        self.with_plugins = frozenset(name for name, c in consumers.items() if c.plugins or c.native)
        everyone = [p for c in consumers.values() for p in c.plugins]
        probe = Chain(everyone)  # raises TypeError for async response-phase hooks, at config time
        self.phases, self.async_phases, self.needs_body = probe.phases, probe.async_phases, probe.needs_body


# ctx key of the chain merged with the consumer's plugins
_MERGED = "_pygateway_merged_chain"


def _by_priority(plugins: list[Plugin]) -> list[Plugin]:
    return sorted(plugins, key=lambda p: (-p.priority, p.name))


class ContextChain(Chain):
    """A chain that also sets route/consumer values in `ctx` and merges in consumers' plugins."""

    def __init__(
        self,
        plugins: list[Plugin],
        n_global: int = 0,
        consumers: ConsumerTable | None = None,
        route_vars: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(plugins)
        self.n_global = n_global
        self.table = consumers
        self.route_vars = route_vars or {}
        # username -> (the merged chain, the chain of the plugins the consumer adds)
        self._merged: dict[str, tuple[Chain, Chain]] = {}
        # the table's per-consumer lookups, one attribute away on the per-request path
        self._group_of = consumers.group_of if consumers is not None else {}
        self._with_plugins = consumers.with_plugins if consumers is not None else frozenset()
        if consumers is not None:
            self.phases |= consumers.phases
            self.async_phases |= consumers.async_phases
            self.needs_body = self.needs_body or consumers.needs_body

    def _chains_for(self, username: str) -> tuple[Chain, Chain]:
        """The merged chain and the chain of the plugins `username` adds (who has some), built once."""
        assert self.table is not None
        found = self._merged.get(username)
        if found is None:
            entry = self.table.consumers[username]
            # The consumer's native limiters replace the route's Python ones of that name (redis policy).
            route_part = {p.name: p for p in self.plugins[self.n_global :] if p.name not in entry.native}
            added = [p for p in entry.plugins if p.name not in route_part]
            route_part.update({p.name: p for p in entry.plugins})
            merged = Chain(self.plugins[: self.n_global] + _by_priority(list(route_part.values())))
            found = self._merged[username] = (merged, Chain(added))
        return found

    def _identify(self, req: Any, ctx: dict[str, Any]) -> Chain | None:
        """After `rewrite`/`access`: the chain of the plugins the consumer adds, once it is known."""
        table = self.table
        if table is None:
            return None
        username = req.consumer
        if not username:
            return None
        if username in table.with_plugins:
            return self._merge(username, ctx)
        ctx["consumer_name"] = username
        ctx["consumer_group_id"] = table.group_of.get(username)
        ctx[_MERGED] = self  # nothing to merge: the common case
        return None

    def _merge(self, username: str, ctx: dict[str, Any]) -> Chain:
        """Switch the request to the chain merged with `username`'s plugins; returns the plugins it adds."""
        assert self.table is not None
        ctx["consumer_name"] = username
        ctx["consumer_group_id"] = self.table.group_of.get(username)
        merged, added = self._chains_for(username)
        ctx[_MERGED] = merged
        return added

    def run(self, phase: int, req: Any, ctx: dict[str, Any]) -> ShortResponse | None:
        merged = ctx.get(_MERGED)
        if merged is not None and merged is not self:
            return Chain.run(merged, phase, req, ctx)
        if self.route_vars:
            ctx.update(self.route_vars)
        self._countdown -= 1
        if self._countdown:
            for plugin, hook in self.hooks[phase]:  # Chain.run, inlined: one Python call less per phase
                try:
                    out = hook(req, ctx)
                    if out is not None:
                        return _as_response(out, plugin)
                except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; contain it here
                    return _report(plugin, phase, exc)
        elif (out := self._run_timed(phase, req, ctx)) is not None:
            return out
        if merged is None and phase <= ACCESS and self.table is not None:
            # _identify, inlined for the common case (a consumer who adds no plugins)
            username = req.consumer
            if username:
                if username in self._with_plugins:
                    return Chain.run(self._merge(username, ctx), phase, req, ctx)
                ctx["consumer_name"] = username
                ctx["consumer_group_id"] = self._group_of.get(username)
                ctx[_MERGED] = self
        return None

    async def run_async(self, phase: int, req: Any, ctx: dict[str, Any]) -> ShortResponse | None:
        merged = ctx.get(_MERGED)
        if merged is not None and merged is not self:
            return await Chain.run_async(merged, phase, req, ctx)
        if self.route_vars:
            ctx.update(self.route_vars)
        out = await Chain.run_async(self, phase, req, ctx)
        if out is None and merged is None and phase <= ACCESS:
            added = self._identify(req, ctx)
            if added is not None:
                return await Chain.run_async(added, phase, req, ctx)
        return out

    def header_filter(self, req: Any, resp: Any, ctx: dict[str, Any]) -> ShortResponse | None:
        return Chain.header_filter(ctx.get(_MERGED) or self, req, resp, ctx)

    def body_filter(self, req: Any, resp: Any, chunk: bytes, eof: bool, ctx: dict[str, Any]) -> bytes:
        return Chain.body_filter(ctx.get(_MERGED) or self, req, resp, chunk, eof, ctx)

    def log(self, req: Any, resp: Any, ctx: dict[str, Any]) -> None:
        Chain.log(ctx.get(_MERGED) or self, req, resp, ctx)


def make_chain(
    global_plugins: list[Plugin],
    route_plugins: list[Plugin],
    consumers: ConsumerTable | None = None,
    route_vars: dict[str, Any] | None = None,
) -> Chain:
    """The plain `Chain` unless consumers' plugins may merge in (the route authenticates: it has a
    plugin with a `ConsumerConfig`) or `ctx` needs route values."""
    plugins = global_plugins + route_plugins
    authenticates = any(type(p).ConsumerConfig is not None for p in plugins)
    table = consumers if consumers is not None and authenticates else None
    if table is None and not route_vars:
        return Chain(plugins)
    return ContextChain(plugins, len(global_plugins), table, route_vars)


class AsyncLoop:
    """The worker's asyncio loop, on its own thread; `submit` is handed to the Rust core."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pygateway-asyncio", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any], waker: Callable[[Any], None]) -> None:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        fut.add_done_callback(waker)
