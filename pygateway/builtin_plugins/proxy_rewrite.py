"""APISIX `proxy-rewrite`: change what is sent upstream — path (`uri` with variables, or `regex_uri`
pattern/template pairs, first match wins), `method`, `host` and request `headers`.

`headers` takes APISIX's two forms: `{add: {k: v}, set: {k: v}, remove: [k]}` (applied in the order add,
set, remove) or a flat `{k: v}` meaning set. A value of "" removes the header. Values, and `uri`, may use
variables (`$uri`, `$arg_x`, `$http_x_y`, `$cookie_x`, `$remote_addr`, `$host`, `${name}`...); header
values may also use `$1`... of the `regex_uri` match. Unset variables become "".
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote

import msgspec

from pygateway import Plugin

from ._common import (
    check_header_name,
    compile_regex,
    compile_template,
    has_vars,
    header_pairs,
    invalid,
    resolve,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from pygateway import Request

Method = Literal[
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND", "LOCK", "UNLOCK",
    "PATCH", "TRACE",
]  # fmt: skip
HostName = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-zA-Z-.]+(:\d{1,5})?$")]
Uri = Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=r"^/")]

# Characters APISIX's uri_safe_encode leaves alone in a rewritten path (existing %XX escapes are kept).
_PATH_SAFE = "/%!$&'()*+,;=:@~"
_QUERY_SAFE = "/%!$&'()*+,;=:@~?"

_ACTIONS = ("add", "set", "remove")


def _header_ops(raw: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    """(add, set, remove) from either header form; "" in add/set means remove."""

    if not raw:
        raise invalid("headers", "expected a non-empty object")
    if set(raw) <= set(_ACTIONS) and any(isinstance(v, (dict, list)) for v in raw.values()):
        add = header_pairs(raw["add"], "headers.add") if "add" in raw else []
        set_ = header_pairs(raw["set"], "headers.set") if "set" in raw else []
        remove = raw.get("remove", [])
        if not isinstance(remove, list) or not all(isinstance(h, str) for h in remove):
            raise invalid("headers.remove", "expected an array of header names")
        for i, h in enumerate(remove):
            check_header_name(h, f"headers.remove[{i}]")
        return add, set_, [h.lower() for h in remove]
    return [], header_pairs(raw, "headers"), []


class ProxyRewrite(Plugin):
    name = "proxy-rewrite"
    priority = 1008

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        uri: Uri | None = None
        regex_uri: Annotated[list[str], msgspec.Meta(min_length=2)] | None = None
        method: Method | None = None
        host: HostName | None = None
        headers: dict[str, Any] | None = None
        use_real_request_uri_unsafe: bool = False

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        cls._compile(conf)  # regexes, templates and headers are checked now, not on the first request
        return conf

    @staticmethod
    def _compile(conf: Any) -> tuple[list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]], Any]:
        if conf.use_real_request_uri_unsafe:
            raise invalid(
                "use_real_request_uri_unsafe", "true is not supported (paths are always normalized)"
            )
        rules = []
        if conf.regex_uri is not None:
            if len(conf.regex_uri) % 2:
                raise invalid("regex_uri", "expected [regex, template] pairs (an even number of items)")
            for i in range(0, len(conf.regex_uri), 2):
                rx = compile_regex(conf.regex_uri[i], f"regex_uri[{i}]")
                rules.append((rx, compile_template(conf.regex_uri[i + 1], rx.groups, f"regex_uri[{i + 1}]")))
        ops = _header_ops(conf.headers) if conf.headers is not None else ([], [], [])
        return rules, ops

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.regex_uri, (self.add, self.set, self.remove) = self._compile(conf)
        self.uri_has_vars = conf.uri is not None and has_vars(conf.uri)

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> None:
        conf = self.conf
        captures: re.Match[str] | None = None
        new_uri: str | None = None
        if conf.uri is not None:
            new_uri = resolve(conf.uri, req) if self.uri_has_vars else conf.uri
        elif self.regex_uri:
            path = req.path
            for rx, template in self.regex_uri:
                m = rx.search(path)
                if m is not None:
                    captures = m
                    new_uri = path[: m.start()] + template(m) + path[m.end() :]
                    break
        if new_uri is not None:
            self._set_uri(req, new_uri)
        if conf.method is not None:
            req.method = conf.method
        if conf.host is not None:
            req.headers["host"] = conf.host
        h = req.headers
        for k, v in self.add:
            v = resolve(v, req, captures=captures)
            if v:
                h.add(k, v)
        for k, v in self.set:
            v = resolve(v, req, captures=captures)
            if v:
                h[k] = v
            else:
                h.remove(k)
        for k in self.remove:
            h.remove(k)

    @staticmethod
    def _set_uri(req: Request, uri: str) -> None:
        """Like APISIX: a `?` in the new uri starts its query; the client's args are appended to it."""
        path, sep, query = uri.partition("?")
        if sep:
            orig = req.query
            req.query = quote(query, safe=_QUERY_SAFE) + (f"&{orig}" if orig else "")
        req.path = quote(path or "/", safe=_PATH_SAFE)
