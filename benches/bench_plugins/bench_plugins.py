"""Plugins used only by the benchmarks (benches/macro.py, benches/test_micro.py).

`bench-noop` measures the fixed cost of calling into a Python plugin chain; `bench-keycheck` a typical
small access check (one header read, one dict lookup). Load them with `--plugin-dir benches/bench_plugins`
or `plugin_dirs: [...]` in the config.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pygateway.plugin import Plugin, Response


class BenchNoop(Plugin):
    name = "bench-noop"
    priority = 0

    def access(self, req: Any, ctx: dict[str, Any]) -> Response | None:
        return None


class BenchKeyCheck(Plugin):
    name = "bench-keycheck"
    priority = 2500

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        keys: dict[str, str] = msgspec.field(default_factory=lambda: {"key-1": "user-1", "key-2": "user-2"})
        header: str = "apikey"

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.keys = conf.keys
        self.header = conf.header

    def access(self, req: Any, ctx: dict[str, Any]) -> Response | None:
        consumer = self.keys.get(req.headers.get(self.header))
        if consumer is None:
            return Response.error(401, "Missing or invalid API key")
        ctx["consumer"] = consumer
        return None
