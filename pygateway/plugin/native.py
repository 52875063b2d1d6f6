"""Schemas of the plugins implemented in the Rust core. Their Python classes only validate config
(with APISIX's field names and defaults); the work happens in `core_rs` on the request path."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from pygateway._core import CidrSet
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


class RealIp(Plugin):
    """The client address from a trusted proxy's header or a variable (nginx `realip`). Applied in
    Rust right after routing, so route `remote_addrs` see the TCP peer and everything after (plugins,
    limiters, X-Forwarded-For, access log) sees the real client."""

    name = "real-ip"
    priority = 23000
    native = True

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        source: Annotated[str, msgspec.Meta(min_length=1)]
        trusted_addresses: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
        recursive: bool = False

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        for i, entry in enumerate(conf.trusted_addresses or []):
            try:
                CidrSet([entry])
            except ValueError:
                raise msgspec.ValidationError(
                    f"invalid ip address: {entry} - at `$.trusted_addresses[{i}]`"
                ) from None
        return conf



LogFormat = dict[str, str]  # field -> "$variable" (or a text with `$variables`): APISIX's `log_format`


def _no_bodies(conf: Any) -> Any:
    """Request/response bodies are not logged (entries are made in Rust from the request head)."""
    for field in ("include_req_body", "include_resp_body"):
        if getattr(conf, field):
            raise msgspec.ValidationError(f"bodies are not logged; only `false` is supported - at `$.{field}`")
    return conf


class FileLogger(Plugin):
    """One JSON line per request appended to `path` (a writer thread per file; reopened on SIGUSR1)."""

    name = "file-logger"
    priority = 399
    native = True

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        path: Annotated[str, msgspec.Meta(min_length=1, pattern=r"[^/]$")]
        log_format: LogFormat | None = None
        include_req_body: bool = False
        include_resp_body: bool = False

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        return _no_bodies(super().parse_config(raw))


class HttpLogger(Plugin):
    """Log entries POSTed in batches to `uri` by a sender thread of the worker (APISIX's batch processor:
    `batch_max_size`, `inactive_timeout`, `buffer_duration`, `max_retry_count`, `retry_delay`). At most
    `max_pending_entries` entries per worker wait to be sent; beyond that new ones are dropped and counted
    (`pygateway_http_logger_dropped_total`)."""

    name = "http-logger"
    priority = 410
    native = True

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        uri: Annotated[str, msgspec.Meta(pattern=r"^[^/]+://([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?")]
        auth_header: str | None = None
        timeout: Annotated[int, msgspec.Meta(ge=1)] = 3
        log_format: LogFormat | None = None
        include_req_body: bool = False
        include_resp_body: bool = False
        concat_method: Literal["json", "new_line"] = "json"
        ssl_verify: bool = False
        # APISIX's batch processor
        name: str = "http logger"
        batch_max_size: Annotated[int, msgspec.Meta(ge=1)] = 1000
        inactive_timeout: Annotated[int, msgspec.Meta(ge=1)] = 5
        buffer_duration: Annotated[int, msgspec.Meta(ge=1)] = 60
        max_retry_count: Annotated[int, msgspec.Meta(ge=0)] = 0
        retry_delay: Annotated[int, msgspec.Meta(ge=0)] = 1
        # APISIX keeps this in the plugin metadata; here it is per conf (the bound is per worker).
        max_pending_entries: Annotated[int, msgspec.Meta(ge=1)] = 8192

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        return _no_bodies(super().parse_config(raw))


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


NATIVE_PLUGINS: tuple[type[Plugin], ...] = (
    LimitReq, LimitCount, Prometheus, OpenTelemetry, RealIp, FileLogger, HttpLogger, Gzip,
)  # fmt: skip
