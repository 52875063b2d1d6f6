"""APISIX `limit-conn`: at most `conn` + `burst` requests of one key in flight at a time, node-wide.

The count lives in the node's shared-memory table (`_core.Limiter.counter_acquire`), so it is exact
across all worker processes of a gateway. A request that finds `conn` + `burst` others in flight is
answered `rejected_code` (503); one that finds between `conn` and `conn` + `burst` is admitted after a
delay of `default_conn_delay * floor((n - 1) / conn)` seconds (n = holders including itself), as
lua-resty-limit-conn does. Unless `only_use_default_delay`, that unit delay then follows the measured
request latency (the average of the previous unit and each finished request's time, per worker).

The place is given back in the `log` phase, when the response is done. Requests that end another way
(client gone, a later plugin's error) give it back when their per-request `ctx` is freed, so a place is
never leaked by a request. Routes whose config has `burst: 0` never delay and so stay on the fast,
synchronous path; with a burst the `access` hook runs on the worker's asyncio loop to sleep there.

Only `policy: local` (this node) is supported; `key_type` is `var` (e.g. `remote_addr`,
`http_x_user`) or `var_combination` (e.g. `$remote_addr $http_x_user`); an empty key falls back to
`remote_addr`, as in APISIX. A worker process that dies mid-request keeps its places counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import http
import logging
import os
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from pygateway import Plugin, Response, _core

from ._common import _VAR_REF, request_var, resolve

if TYPE_CHECKING:
    from pygateway import Request

log = logging.getLogger("pygateway.plugins.limit-conn")

# The worker sets this to the node's shared table (see pygateway.worker.main); without it (a lone
# process) the counts are this process's own.
SHM_ENV = "PYGATEWAY_SHM"
CTX_KEY = "limit-conn"

_tables: dict[str | None, _core.Limiter] = {}


def node_table() -> _core.Limiter:
    path = os.environ.get(SHM_ENV) or None
    table = _tables.get(path)
    if table is None:
        table = _core.Limiter(path) if path else _core.Limiter()
        _tables[path] = table
    return table


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:  # e.g. 599
        return "rejected"


class _Hold:
    """One admitted request's place; given back once, by `log` or when the request's ctx is freed."""

    __slots__ = ("key", "started", "table", "ticket")
    ticket: int | None

    def __init__(self, table: _core.Limiter, key: str, ticket: int) -> None:
        self.table, self.key, self.ticket = table, key, ticket
        self.started = 0.0

    def release(self) -> None:
        if self.ticket is not None:
            ticket, self.ticket = self.ticket, None
            self.table.counter_release(self.key, ticket)

    __del__ = release


class LimitConn(Plugin):
    name = "limit-conn"
    priority = 1003

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        conn: Annotated[int, msgspec.Meta(gt=0)]
        burst: Annotated[int, msgspec.Meta(ge=0)]
        default_conn_delay: Annotated[float, msgspec.Meta(gt=0)]
        key: Annotated[str, msgspec.Meta(min_length=1)]
        only_use_default_delay: bool = False
        key_type: Literal["var", "var_combination"] = "var"
        policy: Literal["local"] = "local"
        rejected_code: Annotated[int, msgspec.Meta(ge=200, le=599)] = 503
        rejected_msg: Annotated[str, msgspec.Meta(min_length=1)] | None = None
        allow_degradation: bool = False

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        # Identifies this config node-wide (all workers compute the same): a changed config starts
        # counting afresh, as APISIX keys on the config version; requests in flight release the old key.
        digest = hashlib.blake2b(msgspec.json.encode(conf), digest_size=8).hexdigest()
        self.prefix = f"limit-conn\0{digest}\0"
        self.limit = conf.conn + conf.burst
        self.unit_delay = conf.default_conn_delay
        self.combo_vars = [m[1] or m[2] for m in _VAR_REF.finditer(conf.key)]
        msg = conf.rejected_msg or _phrase(conf.rejected_code)
        self.rejected = Response.error(conf.rejected_code, msg)
        self.table: _core.Limiter | None = None
        try:
            self.table = node_table()
        except OSError as exc:
            log.error("limit-conn: cannot open the shared table: %s", exc)
        if conf.burst > 0:
            # Only configs that may delay pay for the hop to the asyncio loop.
            self.access = self._access_with_delay  # type: ignore[method-assign,assignment]

    def _key(self, req: Request) -> str:
        conf = self.conf
        if conf.key_type == "var_combination":
            resolved = any(request_var(req, v) is not None for v in self.combo_vars)
            value = resolve(conf.key, req) if resolved else None
        else:
            value = request_var(req, conf.key)
        if value is None:
            value = req.client_addr
        return f"{self.prefix}{req.route_id}\0{value}"

    def _enter(self, req: Request, ctx: dict[str, Any]) -> Response | float:
        """Take a place: the response when rejected, else the seconds to wait first."""
        if self.table is None:
            return 0.0 if self.conf.allow_degradation else Response.error(500, "limit-conn unavailable")
        key = self._key(req)
        got = self.table.counter_acquire(key, self.limit)
        if got is None:
            return self.rejected
        count, ticket = got
        hold = _Hold(self.table, key, ticket)
        ctx[CTX_KEY] = hold
        delay = self.unit_delay * ((count - 1) // self.conf.conn) if count > self.conf.conn else 0.0
        hold.started = time.monotonic() + delay
        return delay

    def access(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        out = self._enter(req, ctx)
        return out if isinstance(out, Response) else None

    async def _access_with_delay(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        out = self._enter(req, ctx)
        if isinstance(out, Response):
            return out
        if out >= 0.001:
            await asyncio.sleep(out)
        return None

    def log(self, req: Request, resp: Any, ctx: dict[str, Any]) -> None:
        hold = ctx.pop(CTX_KEY, None)
        if hold is None:
            return
        hold.release()
        if not self.conf.only_use_default_delay:
            latency = max(0.0, time.monotonic() - hold.started)
            self.unit_delay = (latency + self.unit_delay) / 2
