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
        self.challenge = f'Key realm="{conf.realm}"'

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        conf = self.conf
        key = req.headers.get(self.header)
        from_header = key is not None
        if key is None:
            key = req.args.get(conf.query)
        user = None if key is None else self.consumer_index("key").get(key)
        if user is None:
            if conf.anonymous_consumer is not None:
                attach_consumer(req, conf.anonymous_consumer)
                return None
            # Never echo the key back.
            msg = "Missing API key in request" if key is None else "Invalid API key in request"
            return unauthorized(msg, self.challenge)
        if conf.hide_credentials:
            if from_header:
                req.headers.remove(self.header)
            else:
                req.query = drop_query_arg(req.query, conf.query)
        attach_consumer(req, user)
        return None
