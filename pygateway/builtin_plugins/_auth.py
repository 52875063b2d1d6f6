"""Helpers shared by the shipped auth plugins (not a plugin module: the registry skips `_` modules)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated
from urllib.parse import unquote_plus

import msgspec

from pygateway import Response

if TYPE_CHECKING:
    from pygateway import Request

# APISIX's `anonymous_consumer`: a consumer username, used when authentication fails.
AnonymousConsumer = Annotated[str, msgspec.Meta(min_length=1)]


def attach_consumer(req: Request, username: str) -> None:
    """Mark the request authenticated (native limiters then key on `consumer_name`) and tell the upstream
    who it is, like APISIX's `consumer.attach_consumer` (a client-sent value is replaced)."""
    req.consumer = username
    req.headers["x-consumer-username"] = username


def unauthorized(message: str, www_authenticate: str | None = None) -> Response:
    """APISIX's auth failure: 401 `{"message": ...}`."""
    headers = {"www-authenticate": www_authenticate} if www_authenticate else None
    return Response(401, {"message": message}, headers)


def drop_query_arg(query: str, name: str) -> str:
    """`query` without every `name=...` pair (names compared decoded); other pairs are kept verbatim."""
    kept = [p for p in query.split("&") if p and unquote_plus(p.partition("=")[0]) != name]
    return "&".join(kept)
