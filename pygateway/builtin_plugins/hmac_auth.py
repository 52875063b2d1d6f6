"""APISIX `hmac-auth` (3.x): authenticate a request signed with a consumer's shared secret, following
draft-cavage-http-signatures:

    Authorization: Signature keyId="jack-key",algorithm="hmac-sha256",headers="@request-target date",
                   signature="<base64 HMAC of the signing string>"

Consumers carry `hmac-auth: {key_id, secret_key}`. The signing string is the keyId, then one line per
name in `headers` (in that order): `@request-target` gives `<METHOD> <path>[?<query>]`, a header gives
`<name>: <value>` (a header the request lacks is left out), each line ending with a newline.

Route conf: `allowed_algorithms` (hmac-sha1/256/512), `clock_skew` (seconds the `Date` header may be
off; always checked), `signed_headers` (headers every signature must cover), `validate_request_body`
(a `Digest: SHA-256=<base64 sha256 of the body>` header must match the body; the plugin then reads
the body), `hide_credentials` (drop `Authorization` before proxying), `anonymous_consumer`.

`@request-target` is the path the upstream receives (after dot-segment removal and slash merging), so
a signature made for `/public/../private` does not authorize `/private`.
Failures: 401 `{"message": "client request can't be validated: <why>"}` when the Authorization header
is missing or not a `Signature`, else `{"message": "client request can't be validated"}` (as APISIX:
the reason is only logged, at debug level). Signatures are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from pygateway import Plugin

from ._auth import AnonymousConsumer, attach_consumer, unauthorized

if TYPE_CHECKING:
    from pygateway import Request, Response

log = logging.getLogger("pygateway.plugins.hmac-auth")

Algorithm = Literal["hmac-sha1", "hmac-sha256", "hmac-sha512"]
_DIGESTS = {"hmac-sha1": hashlib.sha1, "hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512}
_FIELD = re.compile(r'\s*(\w+)="([^"]*)"')
_FAILED = "client request can't be validated"


class HmacCredential(msgspec.Struct, forbid_unknown_fields=True):
    key_id: Annotated[str, msgspec.Meta(min_length=1)]
    secret_key: Annotated[str, msgspec.Meta(min_length=1)]


def parse_signature(header: str) -> dict[str, str] | None:
    """The `keyId`, `algorithm`, `headers`, `signature` fields of `Signature k="v",...`, or None."""
    if not header.startswith("Signature"):
        return None
    fields: dict[str, str] = {}
    for part in header[len("Signature") :].split(","):
        m = _FIELD.match(part)
        if m and m[1] in ("keyId", "algorithm", "headers", "signature"):
            fields[m[1]] = m[2]
    return fields


def signing_string(req: Request, key_id: str, names: list[str]) -> bytes:
    lines = [key_id]
    for name in names:
        value = req.headers.get(name)
        if value is not None:
            lines.append(f"{name}: {value}")
        elif name == "@request-target":
            target = req.path + (f"?{req.query}" if req.query else "")
            lines.append(f"{req.method} {target}")
    return ("\n".join(lines) + "\n").encode()


class HmacAuth(Plugin):
    name = "hmac-auth"
    priority = 2530

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        allowed_algorithms: Annotated[list[Algorithm], msgspec.Meta(min_length=1)] = msgspec.field(
            default_factory=lambda: ["hmac-sha1", "hmac-sha256", "hmac-sha512"]
        )
        clock_skew: Annotated[int, msgspec.Meta(ge=1)] = 300
        signed_headers: list[Annotated[str, msgspec.Meta(min_length=1, max_length=50)]] | None = None
        validate_request_body: bool = False
        hide_credentials: bool = False
        anonymous_consumer: AnonymousConsumer | None = None

    ConsumerConfig = HmacCredential

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.allowed = frozenset(conf.allowed_algorithms)
        self.required = [h.lower() for h in conf.signed_headers or ()]
        # Per instance (a ClassVar on Plugin): only routes validating the body make the gateway read it.
        self.__dict__["needs_body"] = conf.validate_request_body

    def _verify(self, req: Request, params: dict[str, str]) -> tuple[str | None, str]:
        """(consumer username, or None with the reason, which is logged but not sent)."""
        key_id, signature, algorithm = params.get("keyId"), params.get("signature"), params.get("algorithm")
        if not key_id or not signature:
            return None, "keyId or signature missing"
        if not algorithm:
            return None, "algorithm missing"
        name, cred = self.credential_index("key_id").get(key_id, (None, None))
        if algorithm not in self.allowed:
            return None, "Invalid algorithm"
        date = req.headers.get("date")
        if date is None:
            return None, "Date header missing. failed to validate clock skew"
        try:
            signed_at = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            return None, "Invalid GMT format time"
        if abs(time.time() - signed_at) > self.conf.clock_skew:
            return None, "Clock skew exceeded"
        names = params.get("headers", "").split()
        covered = {n.lower() for n in names}
        for header in self.required:
            if header not in covered:
                return None, f'expected header "{header}" missing in signing'
        try:
            given = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            given = b""
        # An unknown keyId still costs one HMAC, so timing does not tell which key ids exist.
        secret = cred.secret_key.encode() if cred is not None else b"\0" * 32
        expected = hmac.new(secret, signing_string(req, key_id, names), _DIGESTS[algorithm]).digest()
        if not hmac.compare_digest(given, expected) or name is None:
            return None, "Invalid signature" if name is not None else "Invalid key_id"
        if self.conf.validate_request_body:
            digest = req.headers.get("digest")
            body = req.body or b""
            want = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
            if digest is None or not hmac.compare_digest(digest.encode(), want.encode()):
                return None, "Invalid digest"
        return name, ""

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        header = req.headers.get("authorization")
        params = None if header is None else parse_signature(header)
        if params is None:
            why = "missing Authorization header" if header is None else (
                "Authorization header does not start with 'Signature'")  # fmt: skip
            user, message = None, f"{_FAILED}: {why}"
        else:
            user, why = self._verify(req, params)
            message = _FAILED
        if user is None:
            log.debug("hmac-auth: %s: %s", _FAILED, why)
            if self.conf.anonymous_consumer is None:
                return unauthorized(message)
            user = self.conf.anonymous_consumer
        elif self.conf.hide_credentials:
            req.headers.remove("authorization")
        attach_consumer(req, user)
        return None
