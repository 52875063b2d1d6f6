"""APISIX `response-rewrite`: change the response's `status_code`, `headers` and body (`body`, optionally
`body_base64`, or regex `filters` over the upstream body), optionally only when `vars` match.

- `headers`: `{add: ["name: value"], set: {name: value}, remove: [name]}` (applied add, set, remove) or a
  flat `{name: value}` meaning set ("" removes). Values may use variables (`$remote_addr`, `$status`,
  `$http_x` for request headers, `$sent_http_x`/`$upstream_http_x` for response headers...).
- `vars`: lua-resty-expr rules over the same variables, e.g. `[["status", "==", 500]]`; operators `==`,
  `~=`, `>`, `>=`, `<`, `<=`, `~~` (regex), `~*` (regex, any case), `in`, `!` negation, AND/OR nesting.
- A new body drops Content-Length, Content-Encoding, ETag and Last-Modified (as APISIX does). Bodies the
  gateway itself answers with (plugin short-circuits) keep their body: only status and headers change.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from pygateway import Plugin

from ._common import (
    check_header_name,
    compile_expr,
    compile_regex,
    compile_template,
    header_pairs,
    invalid,
    request_var,
    resolve,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from pygateway import Request, ResponseView

_ACTIONS = ("add", "set", "remove")
_BODY_HEADERS = ("content-length", "content-encoding", "etag", "last-modified")
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_IGNORED_FLAGS = "joJDuU"  # PCRE JIT/compile-once/dupnames/... : no meaning for Python's re


class Filter(msgspec.Struct, forbid_unknown_fields=True):
    regex: Annotated[str, msgspec.Meta(min_length=1)]
    replace: str
    scope: Literal["once", "global"] = "once"
    options: str = "jo"


def _header_ops(raw: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    if not raw:
        raise invalid("headers", "expected a non-empty object")
    if set(raw) <= set(_ACTIONS) and any(isinstance(v, (dict, list)) for v in raw.values()):
        add = []
        if "add" in raw:
            if not isinstance(raw["add"], list) or not raw["add"]:
                raise invalid("headers.add", 'expected a non-empty array of "name: value"')
            for i, item in enumerate(raw["add"]):
                k, sep, v = item.partition(":") if isinstance(item, str) else ("", "", "")
                if not sep or not v.strip():
                    raise invalid(f"headers.add[{i}]", f'expected "name: value", got {item!r}')
                add.append((check_header_name(k.strip(), f"headers.add[{i}]").lower(), v.strip()))
        set_ = header_pairs(raw["set"], "headers.set") if "set" in raw else []
        remove = raw.get("remove", [])
        if not isinstance(remove, list) or not all(isinstance(h, str) for h in remove):
            raise invalid("headers.remove", "expected an array of header names")
        for i, h in enumerate(remove):
            check_header_name(h, f"headers.remove[{i}]")
        return add, set_, [h.lower() for h in remove]
    return [], header_pairs(raw, "headers"), []


def _compile_filter(f: Filter, i: int) -> tuple[re.Pattern[str], Callable[[re.Match[str]], str], int]:
    flags, pattern = 0, f.regex
    for ch in f.options:
        if ch in _FLAGS:
            flags |= _FLAGS[ch]
        elif ch == "a":  # anchored
            pattern = rf"\A(?:{pattern})"
        elif ch not in _IGNORED_FLAGS:
            raise invalid(f"filters[{i}].options", f"unsupported regex option {ch!r}")
    rx = compile_regex(pattern, f"filters[{i}].regex", flags)
    template = compile_template(f.replace, rx.groups, f"filters[{i}].replace")
    return rx, template, 1 if f.scope == "once" else 0


class ResponseRewrite(Plugin):
    name = "response-rewrite"
    priority = 899

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        status_code: Annotated[int, msgspec.Meta(ge=200, le=598)] | None = None
        body: str | None = None
        body_base64: bool = False
        headers: dict[str, Any] | None = None
        vars: list[Any] | None = None
        filters: Annotated[list[Filter], msgspec.Meta(min_length=1)] | None = None

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        cls._compile(conf)
        return conf

    @staticmethod
    def _compile(conf: Any) -> dict[str, Any]:
        if conf.body is not None and conf.filters is not None:
            raise invalid("filters", "body and filters cannot both be set")
        body: bytes | None = None
        if conf.body is not None:
            body = conf.body.encode()
            if conf.body_base64:
                try:
                    body = base64.b64decode(conf.body, validate=True)
                except (binascii.Error, ValueError):
                    raise invalid("body", "invalid base64 content") from None
        elif conf.body_base64:
            raise invalid("body", "body_base64 needs a body")
        return {
            "body": body,
            "headers": _header_ops(conf.headers) if conf.headers is not None else ([], [], []),
            "vars": compile_expr(conf.vars, "vars") if conf.vars else None,
            "filters": [_compile_filter(f, i) for i, f in enumerate(conf.filters or [])],
        }

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        c = self._compile(conf)
        self.body: bytes | None = c["body"]
        self.add, self.set, self.remove = c["headers"]
        self.vars = c["vars"]
        self.filters = c["filters"]
        self.ctx_key = f"response-rewrite:{id(self)}"  # per instance: a global rule may hold another

    def header_filter(self, req: Request, resp: ResponseView, ctx: dict[str, Any]) -> None:
        if self.vars is not None and not self.vars(lambda name: request_var(req, name, resp)):
            return
        ctx[self.ctx_key] = []  # matched; for filters it also collects the upstream body
        if self.conf.status_code is not None:
            resp.status = self.conf.status_code
        h = resp.headers
        if self.body is not None or self.filters:
            for name in _BODY_HEADERS:
                h.remove(name)
        for k, v in self.add:
            h.add(k, resolve(v, req, resp))
        for k, v in self.set:
            v = resolve(v, req, resp)
            if v:
                h[k] = v
            else:
                h.remove(k)
        for k in self.remove:
            h.remove(k)

    def body_filter(
        self, req: Request, resp: ResponseView, chunk: bytes, eof: bool, ctx: dict[str, Any]
    ) -> bytes | None:
        held: list[bytes] | None = ctx.get(self.ctx_key)
        if held is None or (self.body is None and not self.filters):
            return None  # not matched, or nothing to do with the body
        if self.body is not None:  # drop the upstream body; send ours at the end
            return self.body if eof else b""
        held.append(chunk)
        if not eof:
            return b""
        text = b"".join(held).decode("utf-8", "surrogateescape")
        for rx, template, count in self.filters:
            text = rx.sub(template, text, count=count)
        return text.encode("utf-8", "surrogateescape")
