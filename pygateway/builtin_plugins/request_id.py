"""APISIX `request-id`: give every request a unique id in a header (kept if the client sent one), pass it
upstream and, unless `include_in_response: false`, return it in the response."""

from __future__ import annotations

import os
import random
import secrets
import struct
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from pygateway import Plugin

from ._common import check_header_name

if TYPE_CHECKING:
    from pygateway import Request, ResponseView

_NANOID_ALPHABET = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KSUID_EPOCH = 1_400_000_000
# APISIX's default (its "IGK" typo included, so ids look the same).
_RANGE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIGKLMNOPQRSTUVWXYZ0123456789"


class RangeId(msgspec.Struct, forbid_unknown_fields=True):
    length: Annotated[int, msgspec.Meta(ge=6)] = 16
    char_set: Annotated[str, msgspec.Meta(min_length=6)] = _RANGE_CHARS


def _nanoid() -> str:
    return "".join(secrets.choice(_NANOID_ALPHABET) for _ in range(21))


def _ksuid() -> str:
    """27 base62 chars: 4 bytes of seconds since 2014-05-13 and 16 random bytes (segmentio/ksuid)."""
    raw = struct.pack(">I", int(time.time()) - _KSUID_EPOCH) + os.urandom(16)
    n = int.from_bytes(raw, "big")
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(_BASE62[r])
    return "".join(reversed(out)).rjust(27, "0")


class RequestId(Plugin):
    name = "request-id"
    priority = 12015

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        header_name: Annotated[str, msgspec.Meta(min_length=1)] = "X-Request-Id"
        include_in_response: bool = True
        algorithm: Literal["uuid", "nanoid", "range_id", "ksuid"] = "uuid"
        range_id: RangeId = msgspec.field(default_factory=RangeId)

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        check_header_name(conf.header_name, "header_name")
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.header = conf.header_name.lower()
        self.ctx_key = f"request-id-{self.header}"
        algo = conf.algorithm
        if algo == "nanoid":
            self.generate = _nanoid
        elif algo == "range_id":
            chars, length = conf.range_id.char_set, conf.range_id.length
            self.generate = lambda: "".join(random.choices(chars, k=length))
        elif algo == "ksuid":
            self.generate = _ksuid
        else:
            self.generate = lambda: str(uuid.uuid4())

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> None:
        rid = req.headers.get(self.header)
        if not rid:  # absent or empty: generate
            rid = self.generate()
            req.headers[self.header] = rid
        ctx[self.ctx_key] = rid

    def header_filter(self, req: Request, resp: ResponseView, ctx: dict[str, Any]) -> None:
        if not self.conf.include_in_response:
            return
        rid = ctx.get(self.ctx_key)
        # Like APISIX: an id the upstream already put in the response is kept.
        if rid and not resp.headers.get(self.header):
            resp.headers[self.header] = rid
