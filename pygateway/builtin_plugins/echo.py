"""APISIX `echo`: change the upstream's response body — `body` replaces it, `before_body` is put in front
of it and `after_body` after it (at least one of the three) — and set response `headers` ({name: value},
replacing existing values). The request still goes to the upstream. A changed body drops
Content-Length, Content-Encoding, ETag and Last-Modified, as APISIX does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from pygateway import Plugin

from ._common import check_header_name, invalid, scalar

if TYPE_CHECKING:
    from pygateway import Request, ResponseView

_BODY_HEADERS = ("content-length", "content-encoding", "etag", "last-modified")


class Echo(Plugin):
    name = "echo"
    priority = 412

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        before_body: str | None = None
        body: str | None = None
        after_body: str | None = None
        headers: dict[str, Any] | None = None

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        cls._headers(conf)
        return conf

    @staticmethod
    def _headers(conf: Any) -> list[tuple[str, str]]:
        if conf.before_body is None and conf.body is None and conf.after_body is None:
            raise msgspec.ValidationError("at least one of before_body, body, after_body is required")
        if conf.headers is None:
            return []
        if not conf.headers:
            raise invalid("headers", "expected a non-empty object")
        out = []
        for k, v in conf.headers.items():
            check_header_name(k, f"headers.{k}")
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise invalid(f"headers.{k}", "invalid type as header value (expected a string or number)")
            out.append((k, scalar(v)))
        return out

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.headers = self._headers(conf)
        self.before = conf.before_body.encode() if conf.before_body is not None else b""
        self.body = conf.body.encode() if conf.body is not None else None
        self.after = conf.after_body.encode() if conf.after_body is not None else b""
        self.ctx_key = f"echo:{id(self)}"  # set once the before_body went out

    def header_filter(self, req: Request, resp: ResponseView, ctx: dict[str, Any]) -> None:
        h = resp.headers
        for name in _BODY_HEADERS:
            h.remove(name)
        for k, v in self.headers:
            h[k] = v

    def body_filter(
        self, req: Request, resp: ResponseView, chunk: bytes, eof: bool, ctx: dict[str, Any]
    ) -> bytes | None:
        if self.body is not None:
            chunk = self.body if eof else b""  # the upstream body is dropped; ours goes out at the end
            if not eof:
                return chunk
        if self.before and self.ctx_key not in ctx:
            ctx[self.ctx_key] = True
            chunk = self.before + chunk
        if eof and self.after:
            chunk += self.after
        return chunk
