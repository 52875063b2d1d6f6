"""APISIX `cors`: Cross-Origin Resource Sharing headers.

Every `OPTIONS` request is answered by the gateway (200, empty body, no upstream call) — APISIX does the
same — with the CORS headers when its `Origin` is allowed. Other responses get the headers in
`header_filter` when the request's `Origin` is allowed: by `allow_origins` (`*`, `**` = echo any origin
even with credentials, or a comma-separated list of `scheme://host[:port]`) or, when set, by
`allow_origins_by_regex` instead (unanchored searches, like ngx.re.find). `timing_allow_origins[_by_regex]`
likewise control `Timing-Allow-Origin`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from pygateway import Plugin, Response

from ._common import compile_regex, invalid

if TYPE_CHECKING:
    from pygateway import Request, ResponseView

_ALL_METHODS = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"
Origins = Annotated[str, msgspec.Meta(pattern=r"^(\*|\*\*|null|\w+://[^,]+(,\w+://[^,]+)*)$")]
Regexes = Annotated[
    list[Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]], msgspec.Meta(min_length=1)
]


def _compile_any(rules: list[str] | None, path: str) -> re.Pattern[str] | None:
    if rules is None:
        return None
    if len(set(rules)) != len(rules):
        raise invalid(path, "items must be unique")
    for i, rule in enumerate(rules):
        compile_regex(rule, f"{path}[{i}]")
    return re.compile("|".join(f"(?:{r})" for r in rules))


def _pick(origin: str | None, allowed: str, regex: re.Pattern[str] | None) -> str | None:
    """The Access-Control-Allow-Origin (or Timing-Allow-Origin) value for `origin`, or None."""
    if regex is not None:
        value = origin if origin and regex.search(origin) else None
    elif allowed == "**":
        value = origin or "*"
    elif "," in allowed:
        value = origin if origin in allowed.split(",") else None
    else:
        value = allowed
    return value if value is not None and (value == "*" or value == origin) else None


class Cors(Plugin):
    name = "cors"
    priority = 4000

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        allow_origins: Origins = "*"
        allow_methods: str = "*"
        allow_headers: str = "*"
        expose_headers: str | None = None
        max_age: int = 5
        allow_credential: bool = False
        allow_origins_by_regex: Regexes | None = None
        timing_allow_origins: Origins | None = None
        timing_allow_origins_by_regex: Regexes | None = None

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        if conf.allow_credential and "*" in (
            conf.allow_origins, conf.allow_methods, conf.allow_headers, conf.expose_headers,
            conf.timing_allow_origins,
        ):  # fmt: skip
            raise invalid(
                "allow_credential", "you can not set '*' for other option when 'allow_credential' is true"
            )
        _compile_any(conf.allow_origins_by_regex, "allow_origins_by_regex")
        _compile_any(conf.timing_allow_origins_by_regex, "timing_allow_origins_by_regex")
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.origin_regex = _compile_any(conf.allow_origins_by_regex, "allow_origins_by_regex")
        self.timing_regex = _compile_any(conf.timing_allow_origins_by_regex, "timing_allow_origins_by_regex")
        self.methods = _ALL_METHODS if conf.allow_methods == "**" else conf.allow_methods
        self.ctx_key = f"cors-origin-{id(self)}"

    def _headers(self, req: Request, origin: str | None) -> list[tuple[str, str]]:
        conf = self.conf
        out: list[tuple[str, str]] = []
        allow = _pick(origin, conf.allow_origins, self.origin_regex)
        if allow is not None:
            out.append(("access-control-allow-origin", allow))
            if allow != "*":
                out.append(("vary", "Origin"))
            out.append(("access-control-allow-methods", self.methods))
            out.append(("access-control-max-age", str(conf.max_age)))
            if conf.expose_headers:
                out.append(("access-control-expose-headers", conf.expose_headers))
            allow_headers = conf.allow_headers
            if allow_headers == "**":
                allow_headers = req.headers.get("access-control-request-headers") or ""
            if allow_headers:
                out.append(("access-control-allow-headers", allow_headers))
            if conf.allow_credential:
                out.append(("access-control-allow-credentials", "true"))
        if conf.timing_allow_origins is not None or self.timing_regex is not None:
            timing = _pick(origin, conf.timing_allow_origins or "", self.timing_regex)
            if timing is not None:
                out.append(("timing-allow-origin", timing))
        return out

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        origin = req.headers.get("origin")
        ctx[self.ctx_key] = origin  # the client's Origin, even if a later plugin rewrites the header
        if req.method == "OPTIONS":
            return Response(200, b"", dict(self._headers(req, origin)))
        return None

    def header_filter(self, req: Request, resp: ResponseView, ctx: dict[str, Any]) -> None:
        origin = ctx.get(self.ctx_key, req.headers.get("origin"))
        h = resp.headers
        for k, v in self._headers(req, origin):
            if k == "vary":
                if not any("origin" in x.lower() for x in h.getall("vary")):
                    h.add("vary", v)
            else:
                h[k] = v
