"""APISIX `mocking`: answer with a made-up response; the upstream is never called.

- `response_example`: the body, with variables (`$remote_addr`, `$arg_x`...; unset ones become ""), or
  `response_schema`: a JSON schema the body is generated from (`properties`, `items`, `type` in string,
  number, integer, boolean, object, array; an `example` of the right type is used as the value, else a
  random one). JSON for JSON/text content types, XML (root `<data>`) for XML ones. When both are given
  `response_example` wins.
- `response_status` (200), `content_type` ("application/json;charset=utf8": JSON, XML, plain text or HTML),
  `response_headers` ({name: value}, values may use variables), `with_mock_header` (true: adds
  `x-mock-by: APISIX/pygateway-<version>`).
- `delay`: seconds to wait before answering; the wait runs on the worker's asyncio loop, so other
  requests keep flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import math
import random
import string
from typing import TYPE_CHECKING, Annotated, Any
from xml.sax.saxutils import escape

import msgspec
import orjson

from pygateway import Plugin, Response, __version__

from ._common import check_header_name, has_vars, invalid, resolve, scalar

if TYPE_CHECKING:
    from pygateway import Request

_CONTENT_TYPES = ("application/xml", "application/json", "text/plain", "text/html", "text/xml")
MOCK_BY = f"APISIX/pygateway-{__version__}"


def _gen(schema: dict[str, Any]) -> Any:
    typ = str(schema.get("type", "")).lower()
    example = schema.get("example")
    if typ == "object":
        props = schema.get("properties")
        return {k: _gen(v) for k, v in props.items()} if isinstance(props, dict) else {}
    if typ == "array":
        items = schema.get("items")
        if not isinstance(items, dict):
            return None
        return [_gen(items) for _ in range(random.randint(1, 3))]
    if typ == "string":
        if isinstance(example, str):
            return example
        return "".join(random.choices(string.ascii_lowercase, k=random.randint(1, 10)))
    if typ in ("number", "integer"):
        if not isinstance(example, (int, float)) or isinstance(example, bool):
            return random.random() * 10000 if typ == "number" else random.randint(1, 10000)
        return example if typ == "number" else math.floor(example)
    if typ == "boolean":
        return example if isinstance(example, bool) else random.random() < 0.5
    return None


def _xml(value: Any, tag: str) -> str:
    if isinstance(value, dict):
        return f"<{tag}>" + "".join(_xml(v, k) for k, v in value.items()) + f"</{tag}>"
    if isinstance(value, list):
        return "".join(_xml(v, tag) for v in value)
    if value is None:
        return ""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return f"<{tag}>{escape(text)}</{tag}>"


class Mocking(Plugin):
    name = "mocking"
    priority = 10900

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        delay: int = 0
        response_status: Annotated[int, msgspec.Meta(ge=100, le=599)] = 200
        content_type: str = "application/json;charset=utf8"
        response_example: str | None = None
        response_schema: dict[str, Any] | None = None
        with_mock_header: bool = True
        response_headers: dict[str, Any] | None = None

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        cls._headers(conf)
        return conf

    @staticmethod
    def _headers(conf: Any) -> dict[str, str]:
        if conf.response_example is None and conf.response_schema is None:
            raise msgspec.ValidationError("at least one of response_example, response_schema is required")
        if conf.content_type.split(";", 1)[0] not in _CONTENT_TYPES:
            raise invalid(
                "content_type", f"unsupported content type! (supported: {', '.join(_CONTENT_TYPES)})"
            )
        headers = {"content-type": conf.content_type}
        if conf.with_mock_header:
            headers["x-mock-by"] = MOCK_BY
        for k, v in (conf.response_headers or {}).items():
            check_header_name(k, f"response_headers.{k}")
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise invalid(f"response_headers.{k}", "expected a string or number")
            headers[k.lower()] = scalar(v)
        return headers

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.headers = self._headers(conf)
        self.headers_have_vars = any(has_vars(v) for v in self.headers.values())
        self.example_has_vars = conf.response_example is not None and has_vars(conf.response_example)
        self.xml = "xml" in conf.content_type.split(";", 1)[0]
        if conf.delay > 0:
            # Only delayed mocks pay for the hop to the asyncio loop; the host looks hooks up per instance.
            self.access = self._access_after_delay  # type: ignore[method-assign,assignment]

    def _response(self, req: Request) -> Response:
        conf = self.conf
        if conf.response_example is not None:
            body = resolve(conf.response_example, req) if self.example_has_vars else conf.response_example
        else:
            output = _gen({**conf.response_schema, "type": "object"})
            if self.xml:
                body = _xml(output, "data")
            elif conf.content_type.startswith("text/html"):
                body = ""  # as APISIX: generated bodies are JSON or XML only
            else:
                body = orjson.dumps(output).decode()
        headers = self.headers
        if self.headers_have_vars:
            headers = {k: resolve(v, req) for k, v in headers.items()}
        return Response(conf.response_status, body, headers)

    def access(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        return self._response(req)

    async def _access_after_delay(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        await asyncio.sleep(self.conf.delay)
        return self._response(req)
