"""`limit-count` with `policy: redis`: one counter per key in a Redis shared by several gateway nodes.

The config schema is `native.LimitCount`'s; `LimitCount.for_config` picks this class for `policy: redis`
(the module name starts with `_` so the registry does not list it as a second `limit-count`).

Token leasing, so the common path does not wait on Redis: a worker takes a *lease* of several tokens
from the window's counter in one atomic script call and admits requests from it locally. Leases start
at 1 token per key and worker and double while they are used up quickly (halve when slow), capped at
`MAX_LEASE` and at 1/`SHARE` of what the window has left (at least 1), so leases shrink to single tokens
as the window runs out. Redis never hands out more than `count` tokens per window, so at most `count`
requests pass across all nodes; with traffic on every worker each lease is used up and exactly `count`
pass. (A lease a worker holds when its traffic for that key stops is lost for that window: at most one
lease per worker and key.) Once Redis reports the window spent, the worker rejects locally until the
window ends: no Redis call per rejected request either.

Windows follow APISIX's redis policy: a window starts with the key's first token and the key expires
with it (`PX time_window`); the next lease after expiry starts a new window under the same key name.
A lease is used only until `send time + PTTL` on the worker's monotonic clock, which is never later
than the key's expiry in Redis, so tokens of one window cannot leak into the next.

Redis down, refusing or slower than `redis_timeout`: `allow_degradation: true` lets requests pass, else
500 `failed to limit count` (APISIX). Tokens already leased are still used. The failure is logged once
per incident (and the recovery once); for `RETRY_AFTER` seconds after a failure Redis is not asked
again, so an outage does not add a timeout to every request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from pygateway.plugin import Plugin, Response
from pygateway.plugin.native import LimitCount

from ._common import request_var, resolve

if TYPE_CHECKING:
    from pygateway import Request, ResponseView

log = logging.getLogger("pygateway.plugins.limit-count")

MAX_LEASE = 1024  # tokens a worker may take in one call
SHARE = 8  # a lease takes at most 1/SHARE of what the window has left (at least 1 token)
FAST, SLOW = 0.05, 0.5  # a lease used up within FAST seconds doubles the next; after SLOW it halves
RETRY_AFTER = 1.0  # seconds without Redis calls after a failure
_SWEEP_EVERY = 4096  # new buckets between sweeps of expired ones

# KEYS[1] counter; ARGV count, window ms, wanted tokens, share.
# Returns {granted, used after the grant, ms left in the window}.
_LEASE_SCRIPT = """
local count, window, want, share = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl = redis.call('PTTL', KEYS[1])
local used = 0
if ttl > 0 then used = tonumber(redis.call('GET', KEYS[1])) or 0 end
local left = count - used
if left <= 0 then return {0, used, ttl} end
local grant = math.min(want, left, math.max(1, math.floor(left / share)))
if ttl > 0 then
  redis.call('INCRBY', KEYS[1], grant)
else
  redis.call('SET', KEYS[1], grant, 'PX', window)
  ttl = window
end
return {grant, used + grant, ttl}
"""


class RedisUnavailable(Exception):
    pass


@dataclass
class _Bucket:
    """One key's state in this worker for the current window."""

    deadline: float = 0.0  # monotonic end of the window the lease belongs to
    tokens: int = 0  # leased, not yet used
    left: int = 0  # tokens Redis had not handed out after our last lease (for X-RateLimit-Remaining)
    want: int = 1  # size of the next lease
    leased_at: float = 0.0
    spent: bool = False  # Redis said the window is used up
    pending: asyncio.Future[None] | None = field(default=None, repr=False)


class _Limiter:
    """A Redis connection pool and the buckets of every key limited through it, in this worker."""

    def __init__(self, conf: Any) -> None:
        timeout = conf.redis_timeout / 1000
        self.timeout = timeout
        self.redis = Redis(
            host=conf.redis_host,
            port=conf.redis_port,
            username=conf.redis_username,
            password=conf.redis_password or None,
            db=conf.redis_database,
            ssl=conf.redis_ssl,
            ssl_cert_reqs="required" if conf.redis_ssl_verify else "none",
            ssl_check_hostname=conf.redis_ssl_verify,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # a failure decides this request; no hidden retries
        )
        self.script = self.redis.register_script(_LEASE_SCRIPT)
        self.where = f"{conf.redis_host}:{conf.redis_port}/{conf.redis_database}"
        self.buckets: dict[str, _Bucket] = {}
        self.new_buckets = 0
        self.down_until = 0.0  # monotonic; Redis is not asked before this after a failure
        self.down = False

    async def take(self, key: str, count: int, window: int) -> tuple[bool, int, float]:
        """(allowed, remaining, seconds to reset); raises RedisUnavailable."""
        while True:
            b = self.buckets.get(key)
            if b is None:
                b = self.buckets[key] = _Bucket()
                self._sweep()
            now = time.monotonic()
            if now < b.deadline:
                if b.tokens > 0:
                    b.tokens -= 1
                    return True, b.left + b.tokens, b.deadline - now
                if b.spent:
                    return False, 0, b.deadline - now
            if b.pending is not None:  # another request of this worker is already asking
                await asyncio.shield(b.pending)
                continue
            b.pending = asyncio.get_running_loop().create_future()
            try:
                await self._lease(key, b, count, window)
            finally:
                b.pending.set_result(None)
                b.pending = None

    async def _lease(self, key: str, b: _Bucket, count: int, window: int) -> None:
        sent = time.monotonic()
        if sent < self.down_until:
            raise RedisUnavailable(f"redis {self.where} unavailable")
        if sent < b.deadline:  # the previous lease of this window is used up: adapt its size
            age = sent - b.leased_at
            b.want = min(b.want * 2, MAX_LEASE) if age < FAST else max(b.want // 2, 1) if age > SLOW else b.want
        else:
            b.want = 1
        try:
            granted, used, ttl_ms = await asyncio.wait_for(
                self.script(keys=[key], args=[count, window * 1000, b.want, SHARE]), self.timeout
            )
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.down_until = time.monotonic() + RETRY_AFTER
            if not self.down:
                self.down = True
                log.error("limit-count: redis %s failed (%s: %s); until it answers again requests are %s",
                          self.where, type(exc).__name__, exc, "decided by allow_degradation")  # fmt: skip
            raise RedisUnavailable(str(exc)) from exc
        if self.down:
            self.down = False
            log.warning("limit-count: redis %s answers again", self.where)
        b.deadline = sent + int(ttl_ms) / 1000
        b.tokens, b.left, b.leased_at = int(granted), max(count - int(used), 0), sent
        b.spent = int(granted) == 0

    def _sweep(self) -> None:
        self.new_buckets += 1
        if self.new_buckets % _SWEEP_EVERY == 0:
            now = time.monotonic()
            for k in [k for k, b in self.buckets.items() if b.deadline <= now and b.pending is None]:
                del self.buckets[k]


# One limiter per Redis (connection settings) in this worker process, kept across config reloads so
# leases and pooled connections survive them. Used only from the worker's asyncio loop thread.
_LIMITERS: dict[tuple[Any, ...], _Limiter] = {}


def _limiter(conf: Any) -> _Limiter:
    ident = (conf.redis_host, conf.redis_port, conf.redis_username, conf.redis_password, conf.redis_database,
             conf.redis_timeout, conf.redis_ssl, conf.redis_ssl_verify)  # fmt: skip
    lim = _LIMITERS.get(ident)
    if lim is None:
        lim = _LIMITERS[ident] = _Limiter(conf)
    return lim


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "rejected"


class LimitCountRedis(Plugin):
    name = LimitCount.name
    priority = LimitCount.priority
    Config = LimitCount.Config

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.rejected_msg = conf.rejected_msg or _reason(conf.rejected_code)

    def _key(self, req: Request) -> str:
        conf = self.conf
        if conf.key_type == "constant":
            value: str | None = conf.key
        elif conf.key_type == "var_combination":
            value = resolve(conf.key, req) or None
        else:
            value = request_var(req, conf.key)
        if not value:  # APISIX: an empty key falls back to the client address
            value = req.client_addr
        # Routes sharing a `group` share the counter (APISIX); otherwise it is the route's own.
        scope = f"group:{conf.group}" if conf.group else f"route:{req.route_id}"
        return f"plugin-limit-count:{scope}:{value}"

    async def access(self, req: Request, ctx: dict[str, Any]) -> Response | None:  # type: ignore[override]
        conf = self.conf
        try:
            allowed, remaining, reset = await _limiter(conf).take(self._key(req), conf.count, conf.time_window)
        except RedisUnavailable:
            return None if conf.allow_degradation else Response.error(500, "failed to limit count")
        headers = {}
        if conf.show_limit_quota_header:
            headers = {
                "x-ratelimit-limit": str(conf.count),
                "x-ratelimit-remaining": str(remaining if allowed else 0),
                "x-ratelimit-reset": str(max(int(-(-reset // 1)), 0)),  # whole seconds, rounded up
            }
        if not allowed:
            return Response(conf.rejected_code, {"error_msg": self.rejected_msg}, headers)
        if headers:
            ctx["limit-count"] = headers
        return None

    def header_filter(self, req: Request, resp: ResponseView, ctx: dict[str, Any]) -> None:
        headers = ctx.get("limit-count")
        if headers:
            for k, v in headers.items():
                resp.headers[k] = v
