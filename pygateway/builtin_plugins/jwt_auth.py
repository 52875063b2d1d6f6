"""APISIX `jwt-auth`: authenticate with a JWS compact token (RFC 7515) signed for a consumer.

The token is read from the `header` (default `authorization`, a `Bearer ` prefix is optional), else the
`query` argument (default `jwt`), else the `cookie` (default `jwt`). The payload claim `key_claim_name`
(default `key`) names the consumer credential (`jwt-auth: {key: ...}`); its signature is checked (in
the Rust core: constant-time HMAC, ring for the public-key algorithms) with that credential's
`algorithm` (default HS256) and `secret` (HS256/384/512, `base64_secret` to decode it) or PEM
`public_key` (RS256/384/512, ES256/384, EdDSA).

Security rules:
- the algorithm comes from the consumer, never from the token: a token whose `alg` differs (`none`,
  HS256 signed with an RSA public key...) is refused;
- tokens whose header carries `jwk`, `jku`, `x5u`, `x5c` or `crit` are refused; `kid` is ignored;
- `exp` and `nbf` are checked when present (numbers, `lifetime_grace_period` seconds of leeway);
- error bodies never carry the token, a claim or the secret.

Unlike APISIX, `secret` is required for HS* credentials (APISIX generates one), and the key is checked
when the config is loaded. 401 bodies: "Missing JWT token in request", "JWT token invalid",
"missing user key in JWT token", "Invalid user key in JWT token", "failed to verify jwt"; all with
`WWW-Authenticate: Bearer realm="<realm>"`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from pygateway import Plugin
from pygateway._core import check_jws_key, verify_jws_signature

from ._auth import AnonymousConsumer, attach_consumer, drop_query_arg, unauthorized
from ._common import check_header_name

if TYPE_CHECKING:
    from pygateway import Request, Response

Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"]

# Header parameters that would let the token choose its own key or demand unknown processing.
_FORBIDDEN_HEADER = frozenset({"jwk", "jku", "x5u", "x5c", "crit"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_MISSING = "Missing JWT token in request"
_INVALID = "JWT token invalid"
_FAILED = "failed to verify jwt"


def _b64url_decode(part: str) -> bytes:
    """Strict unpadded base64url (raises ValueError)."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise ValueError("bad base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class JwtCredential(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[str, msgspec.Meta(min_length=1)]
    secret: str | None = None
    public_key: str | None = None
    algorithm: Algorithm = "HS256"
    exp: Annotated[int, msgspec.Meta(ge=1)] = 86400  # token lifetime when signing (unused here)
    base64_secret: bool = False
    lifetime_grace_period: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        # Raised errors become msgspec.ValidationError: the config is refused at load time.
        check_jws_key(self.algorithm, self.verify_key())

    def verify_key(self) -> bytes:
        if self.algorithm.startswith("HS"):
            if not self.secret:
                raise ValueError(f"secret is required for {self.algorithm}")
            if not self.base64_secret:
                return self.secret.encode()
            try:
                return base64.b64decode(self.secret, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("secret: invalid base64 (base64_secret is true)") from None
        if not self.public_key:
            raise ValueError(f"public_key is required for {self.algorithm}")
        return self.public_key.encode()


class JwtAuth(Plugin):
    name = "jwt-auth"
    priority = 2510

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        header: str = "authorization"
        query: str = "jwt"
        cookie: str = "jwt"
        hide_credentials: bool = False
        key_claim_name: Annotated[str, msgspec.Meta(min_length=1)] = "key"
        anonymous_consumer: AnonymousConsumer | None = None
        realm: str = "jwt"

    ConsumerConfig = JwtCredential

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        check_header_name(conf.header, "header")
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.header = conf.header.lower()
        self.challenge = f'Bearer realm="{conf.realm}"'
        self._keys: dict[str, bytes] = {}

    def _fetch(self, req: Request) -> tuple[str | None, str]:
        """(token, where it came from: header/query/cookie)."""
        token = req.headers.get(self.header)
        if token is not None:
            if token[:7] in ("Bearer ", "bearer "):
                token = token[7:]
            return token.strip(), "header"
        token = req.args.get(self.conf.query)
        if token is not None:
            return token, "query"
        for line in req.headers.getall("cookie"):
            for part in line.split(";"):
                k, sep, v = part.strip().partition("=")
                if sep and k == self.conf.cookie:
                    return v, "cookie"
        return None, ""

    def _fail(self, req: Request, message: str) -> Response | None:
        if self.conf.anonymous_consumer is not None:
            attach_consumer(req, self.conf.anonymous_consumer)
            return None
        return unauthorized(message, self.challenge)

    def _authenticate(self, token: str) -> tuple[str | None, str]:
        """(username, "") on success, else (None, the 401 message)."""
        parts = token.split(".")
        if len(parts) != 3:
            return None, _INVALID
        try:
            header = json.loads(_b64url_decode(parts[0]))
            payload = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except (ValueError, RecursionError):  # bad base64, bad JSON, bad UTF-8, absurd nesting
            return None, _INVALID
        if not isinstance(header, dict) or not isinstance(payload, dict):
            return None, _INVALID
        alg = header.get("alg")
        if not isinstance(alg, str) or _FORBIDDEN_HEADER.intersection(header):
            return None, _INVALID
        user_key = payload.get(self.conf.key_claim_name)
        if user_key is None:
            return None, "missing user key in JWT token"
        found = self.credential_index("key").get(user_key) if isinstance(user_key, str) else None
        if found is None:
            return None, "Invalid user key in JWT token"
        username, cred = found
        # The consumer decides the algorithm: `none`, HS/RS confusion and downgrades stop here.
        if alg != cred.algorithm:
            return None, _FAILED
        key = self._keys.get(cred.key)
        if key is None:
            key = self._keys[cred.key] = cred.verify_key()
        signing_input = token[: len(parts[0]) + 1 + len(parts[1])].encode()
        if not verify_jws_signature(cred.algorithm, key, signing_input, signature):
            return None, _FAILED
        now = time.time()
        grace = cred.lifetime_grace_period
        for claim in ("exp", "nbf"):
            value = payload.get(claim)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None, _FAILED
            if (claim == "exp" and now >= value + grace) or (claim == "nbf" and now < value - grace):
                return None, _FAILED
        return username, ""

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        token, source = self._fetch(req)
        if not token:
            return self._fail(req, _MISSING)
        username, message = self._authenticate(token)
        if username is None:
            return self._fail(req, message)
        if self.conf.hide_credentials:
            self._hide(req, source)
        attach_consumer(req, username)
        return None

    def _hide(self, req: Request, source: str) -> None:
        if source == "header":
            req.headers.remove(self.header)
        elif source == "query":
            req.query = drop_query_arg(req.query, self.conf.query)
        elif source == "cookie":
            lines = req.headers.getall("cookie")
            req.headers.remove("cookie")
            for line in lines:
                kept = [p.strip() for p in line.split(";") if p.strip().partition("=")[0] != self.conf.cookie]
                if any(kept):
                    req.headers.add("cookie", "; ".join(p for p in kept if p))
