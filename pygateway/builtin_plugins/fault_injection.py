"""APISIX `fault-injection`: delay requests and/or answer them with an error instead of the upstream.

- `delay: {duration, percentage, vars}`: wait `duration` seconds (decimals allowed) before the other
  plugins run; the wait runs on the worker's asyncio loop, so other requests keep flowing meanwhile.
- `abort: {http_status, body, headers, percentage, vars}`: answer with `http_status`, `body` and
  `headers` (body and header values may use variables such as `$remote_addr`).

`percentage` (0..100, default: always) samples requests; `vars` is a list of lua-resty-expr expressions —
the fault applies when any of them matches, e.g. `[[["arg_name", "==", "jack"], ["arg_age", "==", 18]],
[["http_x_test", "~~", "^a"]]]` is (name is jack AND age is 18) OR x-test starts with a. Both must hold
when both are set. Delay comes before abort, as in APISIX.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from pygateway import Plugin, Response

from ._common import Expr, check_header_name, compile_expr, invalid, request_var, resolve, scalar

if TYPE_CHECKING:
    from pygateway import Request

Percentage = Annotated[int, msgspec.Meta(ge=0, le=100)]
Vars = Annotated[list[Any], msgspec.Meta(max_length=20)]


class Abort(msgspec.Struct, forbid_unknown_fields=True):
    http_status: Annotated[int, msgspec.Meta(ge=200, le=599)]
    body: str | None = None
    headers: dict[str, Any] | None = None
    percentage: Percentage | None = None
    vars: Vars | None = None


class Delay(msgspec.Struct, forbid_unknown_fields=True):
    duration: Annotated[float, msgspec.Meta(ge=0)]
    percentage: Percentage | None = None
    vars: Vars | None = None


def _compile_vars(raw: list[Any] | None, path: str) -> list[Expr] | None:
    if raw is None:
        return None
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, list):
            raise invalid(
                f"{path}[{i}]", 'expected an expression (an array of rules, e.g. [["arg_a", "==", "1"]])'
            )
        out.append(compile_expr(item, f"{path}[{i}]"))
    return out


def _hit(percentage: int | None, exprs: list[Expr] | None, req: Request) -> bool:
    if exprs is not None and not any(e(lambda name: request_var(req, name)) for e in exprs):
        return False
    return percentage is None or random.randint(1, 100) <= percentage


class FaultInjection(Plugin):
    name = "fault-injection"
    priority = 11000

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        abort: Abort | None = None
        delay: Delay | None = None

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        cls._compile(conf)
        return conf

    @staticmethod
    def _compile(conf: Any) -> tuple[list[Expr] | None, list[Expr] | None, list[tuple[str, str]]]:
        if conf.abort is None and conf.delay is None:
            raise msgspec.ValidationError("at least one of abort, delay is required")
        headers = []
        if conf.abort is not None:
            for k, v in (conf.abort.headers or {}).items():
                check_header_name(k, f"abort.headers.{k}")
                if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                    raise invalid(f"abort.headers.{k}", "expected a string or number")
                headers.append((k, scalar(v)))
        return (
            _compile_vars(conf.abort.vars, "abort.vars") if conf.abort is not None else None,
            _compile_vars(conf.delay.vars, "delay.vars") if conf.delay is not None else None,
            headers,
        )

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.abort_vars, self.delay_vars, self.headers = self._compile(conf)
        if conf.delay is not None and conf.delay.duration > 0:
            # Only delaying configs pay for the hop to the asyncio loop; the host looks hooks up per instance.
            self.rewrite = self._rewrite_with_delay  # type: ignore[method-assign,assignment]

    def _abort(self, req: Request) -> Response | None:
        abort = self.conf.abort
        if abort is None or not _hit(abort.percentage, self.abort_vars, req):
            return None
        headers = {k: resolve(v, req) for k, v in self.headers}
        return Response(abort.http_status, resolve(abort.body or "", req), headers)

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        return self._abort(req)

    async def _rewrite_with_delay(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        delay = self.conf.delay
        if _hit(delay.percentage, self.delay_vars, req):
            await asyncio.sleep(delay.duration)
        return self._abort(req)
