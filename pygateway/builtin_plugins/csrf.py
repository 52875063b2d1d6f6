"""APISIX `csrf`: the double-submit cookie pattern.

Every response gets a fresh signed token in a cookie named `name` (default `apisix-csrf-token`;
`path=/;SameSite=Lax;Expires=<now + expires>`). Safe methods (GET, HEAD, OPTIONS) pass; any other
method must send the token back in a header of the same name, equal to the cookie, with a valid
signature and not older than `expires` seconds (`expires: 0` never expires). Else 401 with APISIX's
`{"error_msg": ...}`: "no csrf token in headers", "no csrf cookie", "csrf token mismatch",
"Failed to verify the csrf token signature".

The token has APISIX's shape (base64 of `{"random", "expires", "sign"}`, `expires` being the issue
time) but `sign` is an HMAC-SHA256 keyed with `key` rather than APISIX's plain SHA-256 over a JSON
object, so tokens issued by an APISIX node do not verify here (and vice versa).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from pygateway import Plugin, Response

from ._common import check_header_name, request_var

if TYPE_CHECKING:
    from pygateway import Request
    from pygateway._core import ResponseView

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Csrf(Plugin):
    name = "csrf"
    priority = 2980

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        key: str
        expires: int = 7200
        name: str = "apisix-csrf-token"

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        check_header_name(conf.name, "name")
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.header = conf.name.lower()
        self.key = conf.key.encode()

    def _sign(self, random: str, issued: int) -> str:
        return hmac.new(self.key, f"{random}:{issued}".encode(), hashlib.sha256).hexdigest()

    def make_token(self, now: int) -> str:
        random = secrets.token_hex(16)
        token = {"random": random, "expires": now, "sign": self._sign(random, now)}
        return base64.b64encode(orjson.dumps(token)).decode()

    def valid(self, token: str, now: float) -> bool:
        try:
            data = orjson.loads(base64.b64decode(token, validate=True))
        except (binascii.Error, ValueError):
            return False
        if not isinstance(data, dict):
            return False
        random, issued, sign = data.get("random"), data.get("expires"), data.get("sign")
        if not isinstance(random, str) or not isinstance(issued, int) or not isinstance(sign, str):
            return False
        # Whole seconds, as APISIX's ngx.time(): `issued` was truncated, so a fractional `now` would
        # expire a token up to a second early (with `expires: 1`, right after it was issued).
        if self.conf.expires > 0 and int(now) - issued > self.conf.expires:
            return False
        return hmac.compare_digest(sign.encode(), self._sign(random, issued).encode())

    def access(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        if req.method in SAFE_METHODS:
            return None
        header = req.headers.get(self.header)
        if not header:
            return Response.error(401, "no csrf token in headers")
        cookie = request_var(req, f"cookie_{self.conf.name}")
        if cookie is None:
            return Response.error(401, "no csrf cookie")
        if not hmac.compare_digest(header.encode(), cookie.encode()):
            return Response.error(401, "csrf token mismatch")
        if not self.valid(cookie, time.time()):
            return Response.error(401, "Failed to verify the csrf token signature")
        return None

    def header_filter(self, req: Request, resp: ResponseView, ctx: dict[str, Any]) -> None:
        now = int(time.time())
        expires = formatdate(now + self.conf.expires, usegmt=True)
        cookie = f"{self.conf.name}={self.make_token(now)};path=/;SameSite=Lax;Expires={expires}"
        resp.headers.add("set-cookie", cookie)
