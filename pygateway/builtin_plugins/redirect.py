"""APISIX `redirect`: answer with a redirect (`Location` header) instead of calling the upstream.

Exactly one of:
- `http_to_https: true`: a plain-HTTP request (by `X-Forwarded-Proto` when sent, else the connection's
  scheme) goes to `https://$host$request_uri` with 301 (GET/HEAD) or 308 (other methods). The port is
  always the default 443 (APISIX's `plugin_attr.redirect.https_port` is not supported).
- `uri`: the new location, with variables (`$uri`, `${arg_x}`, `$http_x_y`, `$host`...; unset ones become
  ""; `\\$name` stays literal).
- `regex_uri: [regex, template]`: the first match in the path is replaced by the template (`$1`, `${1}`,
  `$0`); no match means no redirect (the request goes upstream).

`ret_code` (302) is the status for `uri`/`regex_uri`; `encode_uri` percent-encodes the path part of the
location (RFC 3986); `append_query_string` appends the client's query (with `&` when the location already
has one). `http_to_https` keeps the query by itself, so it cannot be combined with `append_query_string`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import msgspec

from pygateway import Plugin, Response

from ._common import compile_regex, compile_template, has_vars, resolve

if TYPE_CHECKING:
    from collections.abc import Callable

    from pygateway import Request

# Characters kept as they are by APISIX's uri_safe_encode (reserved RFC 3986 characters); existing %XX
# escapes are kept too so that an already-encoded location is not encoded twice.
_SAFE = "!#$&'()*+,/:;=?@[]~%"


class Redirect(Plugin):
    name = "redirect"
    priority = 900

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        http_to_https: bool | None = None
        uri: Annotated[str, msgspec.Meta(min_length=2)] | None = None
        regex_uri: Annotated[list[str], msgspec.Meta(min_length=2, max_length=2)] | None = None
        ret_code: Annotated[int, msgspec.Meta(ge=200, le=599)] = 302
        encode_uri: bool = False
        append_query_string: bool = False

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        cls._compile(conf)
        return conf

    @staticmethod
    def _compile(conf: Any) -> tuple[re.Pattern[str], Callable[[re.Match[str]], str]] | None:
        given = [k for k in ("uri", "regex_uri", "http_to_https") if getattr(conf, k) is not None]
        if len(given) != 1:
            found = f"got {' and '.join(given)}" if given else "got none"
            raise msgspec.ValidationError(
                f"exactly one of uri, regex_uri, http_to_https is required, {found}"
            )
        if conf.http_to_https and conf.append_query_string:
            raise msgspec.ValidationError(
                "only one of `http_to_https` and `append_query_string` can be configured."
            )
        if conf.regex_uri is None:
            return None
        rx = compile_regex(conf.regex_uri[0], "regex_uri[0]")
        return rx, compile_template(conf.regex_uri[1], rx.groups, "regex_uri[1]")

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.regex_uri = self._compile(conf)
        self.uri_has_vars = conf.uri is not None and has_vars(conf.uri)

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        conf = self.conf
        status = conf.ret_code
        if conf.http_to_https:
            scheme = req.headers.get("x-forwarded-proto") or req.scheme
            if scheme.strip().lower() != "http":
                return None
            query = req.query
            location = f"https://{req.host}{req.path}" + (f"?{query}" if query else "")
            status = 301 if req.method in ("GET", "HEAD") else 308
            return Response(status, b"", {"location": location})
        if conf.uri is not None:
            location = resolve(conf.uri, req) if self.uri_has_vars else conf.uri
        elif self.regex_uri is not None:
            rx, template = self.regex_uri
            path = req.path
            m = rx.search(path)
            if m is None:
                return None  # no match: proxy as usual
            location = path[: m.start()] + template(m) + path[m.end() :]
        else:
            return None  # http_to_https: false
        if conf.encode_uri:
            base, sep, rest = location.partition("?")
            location = quote(base, safe=_SAFE) + sep + rest
        if conf.append_query_string and req.query:
            location += ("&" if "?" in location else "?") + req.query
        return Response(status, b"", {"location": location})
