"""APISIX `api-breaker`: stop calling an upstream that keeps failing, for a growing while.

Per request host + path (APISIX's key), the upstream's statuses are counted: every `unhealthy.failures`-th
status in `unhealthy.http_statuses` (default [500]) opens the breaker for 2^n seconds (n = unhealthy count
/ failures, rounded up; so 2 s, 4 s, 8 s... at most `max_breaker_sec`). While open, requests are answered
`break_response_code` (with `break_response_body` and `break_response_headers`, whose values may use
variables such as `$remote_addr`) without calling the upstream. When the break is over, requests go
through again; `healthy.successes` statuses in `healthy.http_statuses` (default [200]) in a row close
the breaker and forget the failures, another unhealthy status re-opens it for longer.

Only statuses of requests that reached the proxy step count (a gateway 502/504 for an unreachable upstream
counts like nginx's `$upstream_status`; responses made by plugins do not). The state is kept per worker
process (APISIX keeps it in a shared dict per node): with N workers each one trips on its own share of
failures. It survives config reloads.
"""

from __future__ import annotations

import http
import math
import time
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from pygateway import Plugin, Response

from ._common import check_header_name, resolve

if TYPE_CHECKING:
    from pygateway import Request, ResponseView

CTX_KEY = "api-breaker"
MAX_KEYS = 10_000  # tracked host+path pairs per worker; the oldest is forgotten beyond that


UnhealthyStatus = Annotated[int, msgspec.Meta(ge=500, le=599)]
HealthyStatus = Annotated[int, msgspec.Meta(ge=200, le=499)]


class Unhealthy(msgspec.Struct, forbid_unknown_fields=True):
    http_statuses: Annotated[list[UnhealthyStatus], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [500]
    )
    failures: Annotated[int, msgspec.Meta(ge=1)] = 3


class Healthy(msgspec.Struct, forbid_unknown_fields=True):
    http_statuses: Annotated[list[HealthyStatus], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [200]
    )
    successes: Annotated[int, msgspec.Meta(ge=1)] = 3


class HeaderItem(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[str, msgspec.Meta(min_length=1)]
    value: Annotated[str, msgspec.Meta(min_length=1)]


class _State:
    __slots__ = ("healthy", "opened", "unhealthy")

    def __init__(self) -> None:
        self.unhealthy = 0
        self.healthy = 0
        self.opened: float | None = None  # when the breaker last opened (monotonic seconds)


def _phrase(code: int, default: str) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:  # e.g. 599
        return default


# host + path -> state, shared by every route's api-breaker in this worker (as APISIX's shared dict).
_STATES: dict[str, _State] = {}


class ApiBreaker(Plugin):
    name = "api-breaker"
    priority = 1005

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        break_response_code: Annotated[int, msgspec.Meta(ge=200, le=599)]
        break_response_body: str | None = None
        break_response_headers: list[HeaderItem] | None = None
        max_breaker_sec: Annotated[int, msgspec.Meta(ge=3)] = 300
        unhealthy: Unhealthy = msgspec.field(default_factory=Unhealthy)
        healthy: Healthy = msgspec.field(default_factory=Healthy)

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        for i, h in enumerate(conf.break_response_headers or []):
            check_header_name(h.key, f"break_response_headers[{i}].key")
        for name, group in (("unhealthy", conf.unhealthy), ("healthy", conf.healthy)):
            if len(set(group.http_statuses)) != len(group.http_statuses):
                raise msgspec.ValidationError(f"duplicate status - at `$.{name}.http_statuses`")
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.unhealthy = frozenset(conf.unhealthy.http_statuses)
        self.healthy = frozenset(conf.healthy.http_statuses)

    def _broken(self, req: Request) -> Response:
        conf = self.conf
        if conf.break_response_body is None:
            # As APISIX: headers only come with a body.
            return Response.error(conf.break_response_code, _phrase(conf.break_response_code, "breaker open"))
        headers = {h.key: resolve(h.value, req) for h in conf.break_response_headers or []}
        return Response(conf.break_response_code, conf.break_response_body, headers)

    def access(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        key = req.host + req.path
        st = _STATES.get(key)
        if st is not None and st.opened is not None:
            times = max(1, math.ceil(st.unhealthy / self.conf.unhealthy.failures))
            seconds = min(2.0**times, self.conf.max_breaker_sec)
            if time.monotonic() < st.opened + seconds:
                return self._broken(req)
        ctx[CTX_KEY] = key
        return None

    def before_proxy(self, req: Request, ctx: dict[str, Any]) -> None:
        # Reached the proxy step: the status that comes back is the upstream's (or its failure's).
        if CTX_KEY in ctx:
            ctx[CTX_KEY + ".proxied"] = True

    def header_filter(self, req: Request, resp: ResponseView, ctx: dict[str, Any]) -> None:
        if not ctx.get(CTX_KEY + ".proxied"):
            return
        key, status = ctx[CTX_KEY], resp.status
        st = _STATES.get(key)
        if status in self.unhealthy:
            if st is None:
                if len(_STATES) >= MAX_KEYS:
                    del _STATES[next(iter(_STATES))]
                st = _STATES[key] = _State()
            st.unhealthy += 1
            st.healthy = 0
            if st.unhealthy % self.conf.unhealthy.failures == 0:
                st.opened = time.monotonic()
        elif status in self.healthy and st is not None:
            st.healthy += 1
            if st.healthy >= self.conf.healthy.successes:
                del _STATES[key]
