"""Schemas of the plugins implemented in the Rust core. Their Python classes only validate config
(with APISIX's field names and defaults); the work happens in `core_rs` on the request path."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from pygateway.plugin import Plugin

Positive = Annotated[float, msgspec.Meta(gt=0)]
Status = Annotated[int, msgspec.Meta(ge=200, le=599)]


class LimitReq(Plugin):
    """Leaky bucket per key (nginx `limit_req`): over `rate` but within `burst` is delayed."""

    name = "limit-req"
    priority = 1001
    native = True

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        rate: Positive
        burst: Annotated[float, msgspec.Meta(ge=0)]
        key: str = "remote_addr"
        key_type: Literal["var", "var_combination"] = "var"
        rejected_code: Status = 503
        rejected_msg: str | None = None
        nodelay: bool = False
        allow_degradation: bool = False


class LimitCount(Plugin):
    """At most `count` requests per `time_window` seconds per key. `policy: local` is native and exact
    across the node's workers; `policy: redis` counts in a Redis shared by several nodes and is served by
    the Python plugin in `builtin_plugins/_limit_count_redis.py` (see `for_config`)."""

    name = "limit-count"
    priority = 1002
    native = True

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        count: Annotated[int, msgspec.Meta(ge=1)]
        time_window: Annotated[int, msgspec.Meta(ge=1)]
        key: str = "remote_addr"
        key_type: Literal["var", "var_combination", "constant"] = "var"
        rejected_code: Status = 503
        rejected_msg: str | None = None
        policy: Literal["local", "redis"] = "local"
        show_limit_quota_header: bool = True
        allow_degradation: bool = False
        group: str | None = None
        # policy "redis" (APISIX's utils/redis-schema.lua); redis_host is then required.
        redis_host: Annotated[str, msgspec.Meta(min_length=2)] | None = None
        redis_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 6379
        redis_username: Annotated[str, msgspec.Meta(min_length=1)] | None = None
        redis_password: str | None = None
        redis_database: Annotated[int, msgspec.Meta(ge=0)] = 0
        redis_timeout: Annotated[int, msgspec.Meta(ge=1)] = 1000  # milliseconds
        redis_ssl: bool = False
        redis_ssl_verify: bool = False
        sync_interval: int = -1  # APISIX's delayed sync; accepted, unused (leases are exact)

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        if conf.policy == "redis" and conf.redis_host is None:
            raise msgspec.ValidationError("Object missing required field `redis_host` - at `$`")
        return conf

    @classmethod
    def for_config(cls, conf: Any) -> type[Plugin]:
        if conf.policy == "redis":
            from pygateway.builtin_plugins._limit_count_redis import LimitCountRedis

            return LimitCountRedis
        return cls


class Prometheus(Plugin):
    """Count this route's requests in the Prometheus metrics (on a global rule: every request)."""

    name = "prometheus"
    priority = 500
    native = True

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        prefer_name: bool = False


class SamplerRoot(msgspec.Struct, forbid_unknown_fields=True):
    name: Literal["always_on", "always_off", "trace_id_ratio"] = "always_off"
    options: SamplerRootOptions | None = None


class SamplerRootOptions(msgspec.Struct, forbid_unknown_fields=True):
    fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class SamplerOptions(msgspec.Struct, forbid_unknown_fields=True):
    fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    root: SamplerRoot | None = None


class Sampler(msgspec.Struct, forbid_unknown_fields=True):
    name: Literal["always_on", "always_off", "trace_id_ratio", "parent_base"] = "always_off"
    options: SamplerOptions | None = None


class OpenTelemetry(Plugin):
    """W3C trace context (continued or started, passed to the upstream) and OTLP spans per request."""

    name = "opentelemetry"
    priority = 12009
    native = True

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        sampler: Sampler = msgspec.field(default_factory=Sampler)


MimeTypes = Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]


class GzipBuffers(msgspec.Struct, forbid_unknown_fields=True):
    """nginx `gzip_buffers`: accepted for APISIX compatibility, not needed (the Rust encoder sizes
    its own output)."""

    number: Annotated[int, msgspec.Meta(ge=1)] = 32
    size: Annotated[int, msgspec.Meta(ge=1)] = 4096


class Gzip(Plugin):
    """Compress responses on the fly (nginx `gzip` semantics), streamed in Rust: see
    `core_rs/src/proxy/gzip.rs`."""

    name = "gzip"
    priority = 995
    native = True

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        types: MimeTypes | Literal["*"] = msgspec.field(default_factory=lambda: ["text/html"])
        min_length: Annotated[int, msgspec.Meta(ge=1)] = 20
        comp_level: Annotated[int, msgspec.Meta(ge=1, le=9)] = 1
        http_version: float = 1.1
        buffers: GzipBuffers = msgspec.field(default_factory=GzipBuffers)
        vary: bool | None = None

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        if conf.http_version not in (1.0, 1.1):
            raise msgspec.ValidationError(f"Invalid enum value {conf.http_version!r} - at `$.http_version`")
        return conf


NATIVE_PLUGINS: tuple[type[Plugin], ...] = (LimitReq, LimitCount, Prometheus, OpenTelemetry, Gzip)
