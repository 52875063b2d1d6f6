"""The public plugin API: subclass `Plugin`, give it a `name`, a `priority`, a msgspec `Config`, and
define any of the phase hooks. Hooks may be plain functions (run inline on the worker's I/O thread: keep
them fast) or `async def` (run on the worker's asyncio loop; other requests keep flowing meanwhile).

    class AddHeader(Plugin):
        name = "add-header"
        priority = 1000

        class Config(msgspec.Struct):
            header: str
            value: str

        def access(self, req: Request, ctx: dict) -> Response | None:
            req.headers[self.conf.header] = self.conf.value
            return None

Phases, in order (APISIX's vocabulary): `rewrite`, `access`, `before_proxy` (each may return a `Response`
to answer without calling the upstream), `header_filter` (change the upstream's status/headers),
`body_filter` (change body chunks), `log` (after the response is sent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from pygateway._core import PHASES

if TYPE_CHECKING:
    from pygateway._core import Request, ResponseView

__all__ = ["PHASES", "Plugin", "Response"]


class Response:
    """A response made by the gateway; return it from `rewrite`/`access`/`before_proxy` to short-circuit."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes | str | dict[str, Any] | list[Any] = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        if not 100 <= status <= 599:
            raise ValueError(f"status must be 100..599, got {status}")
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            import orjson

            body = orjson.dumps(body)
            hdrs.setdefault("content-type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        self.status = status
        self.body = body
        self.headers = hdrs

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        """The gateway's error shape: `{"error_msg": message}`."""
        return cls(status, {"error_msg": message})

    def as_tuple(self) -> tuple[int, list[tuple[str, str]], bytes]:
        return self.status, list(self.headers.items()), self.body  # type: ignore[return-value]


class _NoConfig(msgspec.Struct, forbid_unknown_fields=True):
    pass


class Plugin:
    """Base class of every plugin. `self.conf` holds the validated `Config` instance."""

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    Config: ClassVar[type[msgspec.Struct]] = _NoConfig
    # Set by plugins whose logic lives in the Rust core (the Python class only carries the schema).
    native: ClassVar[bool] = False
    # Set to read the whole request body (at most 1 MiB, else 413) into `req.body` before `rewrite`.
    # Routes without such a plugin stream bodies straight through.
    needs_body: ClassVar[bool] = False
    # Auth plugins: the config a consumer carries for this plugin (APISIX's consumer `plugins`, e.g.
    # `key-auth: {key: ...}`, and its `/consumers/{u}/credentials`), validated with this struct. Before
    # any request is served the host sets `self.credentials` to every (username, ConsumerConfig) pair
    # and `self.consumers` to {username: its first ConsumerConfig}.
    ConsumerConfig: ClassVar[type[msgspec.Struct] | None] = None

    def __init__(self, conf: Any) -> None:
        self.conf = conf
        self.consumers: dict[str, Any] = {}
        self.credentials: list[tuple[str, Any]] = []
        self._indexes: dict[str, dict[Any, tuple[str, Any]]] = {}
        self._name_indexes: dict[str, dict[Any, str]] = {}

    def credential_index(self, field: str) -> dict[Any, tuple[str, Any]]:
        """{credential's `field` value: (username, credential)}, built once per config."""
        index = self._indexes.get(field)
        if index is None:
            index = {getattr(c, field): (name, c) for name, c in self.credentials}
            self._indexes[field] = index
        return index

    def consumer_index(self, field: str) -> dict[Any, str]:
        """{credential's `field` value: username} (e.g. API key -> consumer), built once per config."""
        index = self._name_indexes.get(field)
        if index is None:
            index = {value: name for value, (name, _c) in self.credential_index(field).items()}
            self._name_indexes[field] = index
        return index

    # Hooks are looked up by name; the base class defines none so the host can skip absent phases.
    if TYPE_CHECKING:

        def rewrite(self, req: Request, ctx: dict[str, Any]) -> Response | None: ...
        def access(self, req: Request, ctx: dict[str, Any]) -> Response | None: ...
        def before_proxy(self, req: Request, ctx: dict[str, Any]) -> Response | None: ...
        def header_filter(self, req: Request, resp: ResponseView, ctx: dict[str, Any]) -> None: ...
        def body_filter(
            self, req: Request, resp: ResponseView, chunk: bytes, eof: bool, ctx: dict[str, Any]
        ) -> bytes | None: ...
        def log(self, req: Request, resp: ResponseView, ctx: dict[str, Any]) -> None: ...

    @classmethod
    def phases(cls) -> list[str]:
        return [p for p in PHASES if callable(getattr(cls, p, None))]

    @classmethod
    def parse_consumer_config(cls, raw: Any) -> Any:
        """Validate one consumer's conf for this plugin (raises msgspec.ValidationError)."""
        assert cls.ConsumerConfig is not None
        return msgspec.convert(raw if raw is not None else {}, cls.ConsumerConfig, strict=False)

    @classmethod
    def for_config(cls, conf: Any) -> type[Plugin]:
        """The class that serves this validated config: `cls` itself, unless one plugin name has
        several implementations chosen by config (e.g. `limit-count`: native for `policy: local`,
        Python for `policy: redis`). The returned class must accept the same config."""
        return cls

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        """Validate a raw config dict; raises msgspec.ValidationError naming the field."""
        return msgspec.convert(raw if raw is not None else {}, cls.Config, strict=False)
