"""APISIX `basic-auth`: authenticate with HTTP Basic credentials (RFC 7617) against the consumers'
`basic-auth: {username, password}`.

401 `{"message": ...}` with `WWW-Authenticate: Basic realm="<realm>"`: "Missing authorization in request"
(no header), "Invalid authorization in request" (not `Basic <base64 user:pass>`), "Invalid user
authorization" (unknown user or wrong password; passwords are compared in constant time).
`hide_credentials` strips `Authorization` before proxying; `anonymous_consumer` names a consumer to use
instead of failing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import TYPE_CHECKING, Any

import msgspec

from pygateway import Plugin

from ._auth import AnonymousConsumer, attach_consumer, unauthorized

if TYPE_CHECKING:
    from pygateway import Request, Response


def parse_basic(header: str) -> tuple[str, str] | None:
    """(user, password) from `Basic <base64>`, or None when malformed."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class BasicAuth(Plugin):
    name = "basic-auth"
    priority = 2520

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        hide_credentials: bool = False
        anonymous_consumer: AnonymousConsumer | None = None
        realm: str = "basic"

    class ConsumerConfig(msgspec.Struct, forbid_unknown_fields=True):
        username: str
        password: str

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.challenge = f'Basic realm="{conf.realm}"'

    def _authenticate(self, req: Request) -> tuple[str | None, str]:
        """(consumer username, or None with the failure message)."""
        header = req.headers.get("authorization")
        if header is None:
            return None, "Missing authorization in request"
        creds = parse_basic(header)
        if creds is None:
            return None, "Invalid authorization in request"
        user, password = creds
        name, cred = self.credential_index("username").get(user, (None, None))
        expected = cred.password if cred is not None else ""
        # Compare even for unknown users so timing does not reveal which usernames exist.
        ok = hmac.compare_digest(password.encode(), expected.encode())
        return (name, "") if ok and name is not None else (None, "Invalid user authorization")

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        name, message = self._authenticate(req)
        if name is None:
            if self.conf.anonymous_consumer is None:
                return unauthorized(message, self.challenge)
            name = self.conf.anonymous_consumer
        elif self.conf.hide_credentials:
            req.headers.remove("authorization")
        attach_consumer(req, name)
        return None
