"""APISIX `forward-auth`: ask an external authorization service about each request.

In `access` (an `async def` hook: it runs on the worker's asyncio loop, so a slow auth service holds
up only the requests waiting for it) the plugin calls `uri` with `request_method` (GET, or POST with
the client's body), the client's `request_headers`, and `X-Forwarded-Proto/-Method/-Host/-Uri/-For`.

- a 2xx answer lets the request through, with the `upstream_headers` of the auth answer set on the
  upstream request. Unlike APISIX, an `upstream_headers` entry the auth answer lacks is removed from
  the request, so a client cannot supply it (e.g. `X-User-ID`) itself;
- any other answer is returned to the client: its status, its body, and its `client_headers`;
- a timeout (`timeout` ms) or an unreachable service gives `status_on_error` (default 403), or lets
  the request through when `allow_degradation` is true.

One `httpx.AsyncClient` per plugin instance (route and config version) keeps connections to the auth
service alive (`keepalive`, `keepalive_timeout` ms, `keepalive_pool`); `ssl_verify` checks its TLS
certificate.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Annotated, Any, Literal

import httpx
import msgspec

from pygateway import Plugin, Response

from ._common import check_header_name, invalid

if TYPE_CHECKING:
    from pygateway import Request

log = logging.getLogger("pygateway.plugins.forward-auth")
HeaderNames = list[str]
# Client headers describing the body, passed on when the body is (APISIX does the same for POST).
_BODY_HEADERS = ("content-type", "content-encoding")


class ForwardAuth(Plugin):
    name = "forward-auth"
    priority = 2002

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        uri: str
        request_method: Literal["GET", "POST"] = "GET"
        request_headers: HeaderNames = []
        upstream_headers: HeaderNames = []
        client_headers: HeaderNames = []
        timeout: Annotated[int, msgspec.Meta(ge=1, le=60000)] = 3000
        keepalive: bool = True
        keepalive_timeout: Annotated[int, msgspec.Meta(ge=1000)] = 60000
        keepalive_pool: Annotated[int, msgspec.Meta(ge=1)] = 5
        ssl_verify: bool = True
        allow_degradation: bool = False
        status_on_error: Annotated[int, msgspec.Meta(ge=200, le=599)] = 403

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        try:
            url = httpx.URL(conf.uri)
        except (httpx.InvalidURL, TypeError) as e:
            raise invalid("uri", f"invalid URL: {e}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise invalid("uri", "expected an http:// or https:// URL with a host")
        for field in ("request_headers", "upstream_headers", "client_headers"):
            for i, name in enumerate(getattr(conf, field)):
                check_header_name(name, f"{field}[{i}]")
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        # Per instance (a ClassVar on Plugin): only POST forwards the client's body.
        self.__dict__["needs_body"] = conf.request_method == "POST"
        self.client: httpx.AsyncClient | None = None  # made on the worker's loop, at first use
        self.loop: asyncio.AbstractEventLoop | None = None

    def __del__(self) -> None:
        # A config change drops this instance: close its pooled connections on the loop that owns them.
        client, loop = self.client, self.loop
        if client is not None and loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(lambda: loop.create_task(client.aclose()))
            except RuntimeError:  # the loop is shutting down
                pass

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            self.loop = asyncio.get_running_loop()
            conf = self.conf
            pool = conf.keepalive_pool if conf.keepalive else 0
            self.client = httpx.AsyncClient(
                verify=conf.ssl_verify,
                timeout=conf.timeout / 1000,
                limits=httpx.Limits(max_keepalive_connections=pool, keepalive_expiry=conf.keepalive_timeout / 1000),
                follow_redirects=False,
                trust_env=False,
            )
        return self.client

    def _auth_headers(self, req: Request) -> dict[str, str]:
        headers = {
            "X-Forwarded-Proto": req.scheme,
            "X-Forwarded-Method": req.method,
            "X-Forwarded-Host": req.host,
            "X-Forwarded-Uri": req.path + (f"?{req.query}" if req.query else ""),
            "X-Forwarded-For": req.client_addr,
        }
        extra = list(self.conf.request_headers)
        if self.conf.request_method == "POST":
            extra += _BODY_HEADERS
        for name in extra:
            value = req.headers.get(name)
            if value is not None and name.lower() not in {k.lower() for k in headers}:
                headers[name] = value
        return headers

    async def access(self, req: Request, ctx: dict[str, Any]) -> Response | None:  # type: ignore[override]
        conf = self.conf
        body = (req.body or b"") if conf.request_method == "POST" else None
        try:
            res = await self._client().request(conf.request_method, conf.uri, headers=self._auth_headers(req),
                                               content=body)  # fmt: skip
        except httpx.HTTPError as exc:
            if conf.allow_degradation:
                return None
            log.warning("forward-auth: calling %s failed: %s: %s", conf.uri, type(exc).__name__, exc)
            return Response(conf.status_on_error)
        if not 200 <= res.status_code < 300:
            headers = {n: v for n in conf.client_headers if (v := res.headers.get(n)) is not None}
            return Response(res.status_code, res.content, headers)
        for name in conf.upstream_headers:
            value = res.headers.get(name)
            if value is None:
                req.headers.remove(name)
            else:
                req.headers[name] = value
        return None
