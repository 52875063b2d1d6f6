"""APISIX `key-auth`: authenticate with a consumer's API key, read from the `header` (default `apikey`)
or else the `query` argument (default `apikey`). Consumers carry `key-auth: {key: ...}`.

Missing key -> 401 `{"message": "Missing API key in request"}`; unknown key -> 401
`{"message": "Invalid API key in request"}`; both with `WWW-Authenticate: Key realm="<realm>"`.
`hide_credentials` strips the header (or query argument) the key came from before proxying.
`anonymous_consumer` names a consumer to use instead of failing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from pygateway import Plugin

from ._auth import AnonymousConsumer, attach_consumer, drop_query_arg, unauthorized
from ._common import check_header_name

if TYPE_CHECKING:
    from pygateway import Request, Response


class KeyAuth(Plugin):
    name = "key-auth"
    priority = 2500

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        header: str = "apikey"
        query: str = "apikey"
        hide_credentials: bool = False
        anonymous_consumer: AnonymousConsumer | None = None
        realm: str = "key"

    class ConsumerConfig(msgspec.Struct, forbid_unknown_fields=True):
        key: str

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        check_header_name(conf.header, "header")
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.header = conf.header.lower()
        self.hide_credentials = conf.hide_credentials
        self.challenge = f'Key realm="{conf.realm}"'
        # {key: username}; built on the first request, as the host sets the credentials after __init__
        self._users: dict[str, str] | None = None

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        headers = req.headers
        key = headers.get(self.header)
        from_header = key is not None
        if key is None:
            key = req.args.get(self.conf.query)
        users = self._users
        if users is None:
            users = self._users = self.consumer_index("key")
        user = None if key is None else users.get(key)
        if user is None:
            return self._reject(req, key)
        if self.hide_credentials:
            if from_header:
                headers.remove(self.header)
            else:
                req.query = drop_query_arg(req.query, self.conf.query)
        # attach_consumer(req, user), inlined on this hot path
        req.consumer = user
        headers["x-consumer-username"] = user
        return None

    def _reject(self, req: Request, key: str | None) -> Response | None:
        if self.conf.anonymous_consumer is not None:
            attach_consumer(req, self.conf.anonymous_consumer)
            return None
        # Never echo the key back.
        msg = "Missing API key in request" if key is None else "Invalid API key in request"
        return unauthorized(msg, self.challenge)
