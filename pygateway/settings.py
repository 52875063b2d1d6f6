"""Every node and worker setting, declared once: name, type, default, help text and how it is given.

Each field of `Settings` is one setting. Its name is the `run` flag (`max_connections` is
`--max-connections`) and the node config key (`max-connections` or `max_connections` in the
`--node-config` YAML); its metadata holds the help text, the parser of a flag's value and whether the
Rust worker reads it. Everything reads this class:

- `pygateway run` builds its flags from it (`pygateway.cli`), in declaration order;
- a `--node-config` file is checked against it, value by value, with the flags' parsers;
- the master (`pygateway.master.supervisor`) runs on a `Settings`;
- each worker gets the worker settings as one JSON object (`worker_json`), which the Rust core
  (`core_rs/src/py/settings.rs`) parses into a struct with no defaults of its own: a field missing
  there is an error naming it, so a default cannot drift between the two languages.

A field declared with `flag=False` is fixed (no flag, no node config key): it is here so that its value
has one home and the Rust worker reads it like the others.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

import orjson


# ------------------------------------------------------------------------------------- value parsers
def listen_addr(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


def whole(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}")
    return int(value)


def _float_seconds(value: str, least: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    low_ok = seconds >= 0 if least == ">= 0" else seconds > 0
    if not (low_ok and seconds < 1e9):
        raise argparse.ArgumentTypeError(f"expected seconds {least}, got {value!r}")
    return seconds


def seconds(value: str) -> float:
    return _float_seconds(value, "> 0")


def seconds_or_zero(value: str) -> float:
    return _float_seconds(value, ">= 0")


# ------------------------------------------------------------------------------------- the declaration
def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    parse: Callable[[str], Any] | None = None,
    flag: bool = True,
    short: str | None = None,
    worker: bool = False,
    repeat: bool = False,
    switch: bool = False,
    choices: tuple[str, ...] | None = None,
    env: str | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """One setting. `help` may say `{default}`: the default as a user would type it.

    `parse` checks a flag's (or node config value's) text; `repeat`: the flag may be given several
    times (a list); `switch`: a flag without a value (True when given); `env`: an environment variable
    read when neither the flag nor the node config sets it; `worker`: sent to the Rust worker;
    `flag=False`: fixed, not settable."""
    meta = {"help": help, "parse": parse, "flag": flag, "short": short, "worker": worker, "repeat": repeat,
            "switch": switch, "choices": choices, "env": env}  # fmt: skip
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _cores() -> int:
    return os.cpu_count() or 1


@dataclass
class Settings:
    config: str | None = setting(None, "standalone APISIX-style YAML (watched for changes)", short="-c")
    listen: tuple[str, int] = setting(("0.0.0.0", 9080), "HOST:PORT (default {default})", parse=listen_addr)
    workers: int = setting(help="worker processes (default: cores)", parse=positive, default_factory=_cores)
    # (`setting` makes a list default a `field(default_factory=...)`: no instance shares it.)
    plugin_dir: list[str] = setting([], "extra directory of plugin .py files", repeat=True)  # noqa: RUF009
    drain_timeout: float = setting(
        30.0, "seconds SIGTERM waits for requests (default {default})", parse=seconds_or_zero, worker=True
    )
    header_timeout: float = setting(
        10.0, "seconds to receive a request head, 408 (default {default})", parse=seconds, worker=True
    )
    keepalive_timeout: float = setting(
        60.0, "seconds an idle keep-alive connection stays open (default {default})", parse=seconds, worker=True
    )
    keepalive_requests: int = setting(1000, "requests per connection (default {default})", parse=positive, worker=True)
    max_connections: int = setting(
        10_000, "open connections per worker (default {default})", parse=positive, worker=True
    )
    max_connections_per_ip: int = setting(
        1000, "per client address, per worker (default {default})", parse=positive, worker=True
    )
    upstream_keepalive_pool: int = setting(
        1024, "idle upstream connections kept per upstream address, per worker; 0 = none (default {default})",
        parse=whole, worker=True,
    )  # fmt: skip
    upstream_keepalive_timeout: float = setting(
        60.0, "seconds an idle upstream connection is kept for reuse (default {default})", parse=seconds,
        worker=True,
    )  # fmt: skip
    store: str | None = setting(
        None, "config store (default: sqlite; yaml with -c)", choices=("sqlite", "yaml", "etcd")
    )
    data_dir: str = setting("pygateway-data", "SQLite store, admin keys, config cache (default ./{default})")
    etcd_endpoints: str = setting("http://127.0.0.1:2379", "comma-separated etcd URLs (default {default})")
    etcd_prefix: str = setting("/apisix", "key prefix in etcd, APISIX's layout (default {default})")
    admin_listen: tuple[str, int] = setting(
        ("127.0.0.1", 9180), "admin API HOST:PORT (default {default})", parse=listen_addr
    )
    no_admin: bool = setting(False, "do not serve the admin API", switch=True)
    admin_key: str | None = setting(None, "admin X-API-KEY (or PYGATEWAY_ADMIN_KEY)", env="PYGATEWAY_ADMIN_KEY")
    viewer_key: str | None = setting(
        None, "read-only X-API-KEY (or PYGATEWAY_VIEWER_KEY)", env="PYGATEWAY_VIEWER_KEY"
    )
    allow_admin: list[str] = setting(  # noqa: RUF009
        ["127.0.0.0/8", "::1/128"], "CIDR allowed to use the admin API (repeatable)", repeat=True
    )
    metrics_listen: tuple[str, int] = setting(
        ("127.0.0.1", 9091), "Prometheus metrics and /status HOST:PORT (default {default})", parse=listen_addr
    )
    no_metrics: bool = setting(False, "no metrics/status port", switch=True)
    access_log: str | None = setting(None, "access log: a file path, or stdout (default: none)", worker=True)
    access_log_format: str = setting(
        "json", "{default} (default), combined, a JSON object of field: $variable, or a $variable template",
        worker=True,
    )  # fmt: skip
    otlp_endpoint: str | None = setting(
        "http://127.0.0.1:4318", "OTLP/HTTP collector for opentelemetry spans (default {default})"
    )
    otlp_service_name: str = setting("pygateway", "service.name of exported spans (default {default})")
    # Fixed edge limits (docs/architecture.md, "Safe defaults"): a longer request head gets 431, a longer
    # request line 414, more header fields 431.
    max_head_bytes: int = setting(32 * 1024, "longest request head", flag=False, worker=True)
    max_line_bytes: int = setting(8 * 1024, "longest request line or header field line", flag=False, worker=True)
    max_headers: int = setting(100, "most header fields in a request", flag=False, worker=True)
    max_uri_bytes: int = setting(8192, "longest request target (414)", flag=False, worker=True)

    # ---------------------------------------------------------------------------- derived values
    @property
    def host(self) -> str:
        return self.listen[0]

    @property
    def port(self) -> int:
        return self.listen[1]

    @property
    def admin_addr(self) -> tuple[str, int] | None:
        """Where the admin API listens; None: no admin API."""
        return None if self.no_admin else self.admin_listen

    @property
    def metrics_addr(self) -> tuple[str, int] | None:
        """Where the metrics and status port listens; None: none."""
        return None if self.no_metrics else self.metrics_listen

    @property
    def access_log_to(self) -> str | None:
        """A file path, "stdout", or None (no access log)."""
        return None if self.access_log in (None, "off") else self.access_log

    @property
    def otlp_to(self) -> str | None:
        """Where `opentelemetry` spans go; None: not exported."""
        return None if self.otlp_endpoint in (None, "", "off") else self.otlp_endpoint

    @property
    def etcd_urls(self) -> list[str]:
        return [e.strip() for e in self.etcd_endpoints.split(",") if e.strip()]

    @property
    def store_kind(self) -> str:
        """sqlite | yaml | etcd: yaml when a config file is given."""
        return self.store or ("yaml" if self.config else "sqlite")

    def worker_json(self, **overrides: Any) -> str:
        """The settings a worker's Rust core reads (`core_rs/src/py/settings.rs`), as JSON; `overrides`
        replace values by name (the master passes the access log as an inherited descriptor)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["worker"]}
        values["access_log"] = self.access_log_to
        values.update(overrides)
        return orjson.dumps(values).decode()


def declared() -> tuple[Field[Any], ...]:
    """Every setting, in declaration order (the order of `pygateway run --help`)."""
    return fields(Settings)


def show(value: Any) -> str:
    """A default as a user would type it: `0.0.0.0:9080`, `30` (not `30.0`)."""
    if isinstance(value, tuple):
        return f"{value[0]}:{value[1]}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def default_of(f: Field[Any]) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default
