"""A config compiled once by the master and shipped to every worker.

The master validates and flattens the config (`config.validate` + `config.compile_snapshot`); workers
only instantiate the Python plugin chains and hand the snapshot bytes to the Rust core. So a change
costs each worker a JSON parse and a route-table build in Rust, not a Python re-validation.

Wire format on a worker's stdin: one JSON header line
`{"version": N, "plugins": {route_id: [[name, conf], ...]}, "global": [[name, conf], ...],
  "consumers": {plugin: [[username, conf], ...]}, "snapshot": LEN}`
followed by LEN bytes of snapshot JSON (the shape `core_rs/src/config.rs` reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, BinaryIO

import msgspec
import orjson

from pygateway.config import compile_snapshot, validate
from pygateway.host import Chain
from pygateway.registry import Registry

PluginSpecs = list[tuple[str, Any]]


@dataclass
class Compiled:
    version: int
    snapshot: bytes
    plugins: dict[str, PluginSpecs]  # route id -> its Python plugins, highest priority first
    global_plugins: PluginSpecs
    # plugin name -> [[username, conf], ...] from consumers and their credentials, for plugins with a
    # ConsumerConfig (a consumer may hold several credentials for one plugin)
    consumers: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, raw: dict[str, Any], version: int, registry: Registry) -> Compiled:
        """Validate and flatten; raises config.ConfigError listing every problem."""
        # Credentials (`/consumers/{u}/credentials/{id}`, from a store) were validated by the admin API;
        # their confs are checked again when the chains are made (parse_consumer_config).
        credentials = raw.get("credentials") or []
        cfg = validate({k: v for k, v in raw.items() if k != "credentials"}, registry.get)
        snapshot, route_plugins, global_plugins = compile_snapshot(cfg, version)

        def specs(pairs: list[tuple[Any, Any]]) -> PluginSpecs:
            return [(p.name, msgspec.to_builtins(conf)) for p, conf in pairs]

        consumers: dict[str, list[Any]] = {}
        for username, consumer in cfg.consumers.items():
            for name, entry in consumer.plugins.items():
                if entry.cls.ConsumerConfig is not None and not entry.disabled:
                    consumers.setdefault(name, []).append([username, msgspec.to_builtins(entry.conf)])
        for cred in credentials:
            if cred["username"] not in cfg.consumers:
                continue  # its consumer is gone (or invalid): the credential authenticates no one
            for name, conf in (cred.get("plugins") or {}).items():
                plugin = registry.get(name)
                if plugin is not None and plugin.ConsumerConfig is not None:
                    consumers.setdefault(name, []).append([cred["username"], conf])
        return cls(
            version,
            orjson.dumps(snapshot),
            {rid: specs(pairs) for rid, pairs in route_plugins.items() if pairs},
            specs(global_plugins),
            consumers,
        )

    def chains(self, registry: Registry) -> dict[str, Chain]:
        """Instantiate each route's chain: the global rules' plugins first, then the route's own."""

        known: dict[str, list[tuple[str, Any]]] = {}

        def credentials_of(plugin: Any) -> list[tuple[str, Any]]:
            # Validated (username, conf) pairs per plugin and config, shared by its instances.
            if plugin.name not in known:
                pairs = self.consumers.get(plugin.name, [])
                known[plugin.name] = [(u, plugin.parse_consumer_config(c)) for u, c in pairs]
            return known[plugin.name]

        def make(specs: PluginSpecs) -> list[Any]:
            out = []
            for name, conf in specs:
                plugin = registry.get(name)
                if plugin is None:
                    raise ValueError(f"plugin {name!r} is not installed in this worker")
                parsed = plugin.parse_config(conf)
                plugin = plugin.for_config(parsed)
                instance = plugin(parsed)
                if plugin.ConsumerConfig is not None:
                    instance.credentials = credentials_of(plugin)
                    instance.consumers = {}
                    for username, conf in instance.credentials:
                        instance.consumers.setdefault(username, conf)
                out.append(instance)
            return out

        route_ids = set(self.plugins)
        if self.global_plugins:
            route_ids |= {r["id"] for r in orjson.loads(self.snapshot)["routes"]}
        return {rid: Chain(make(self.global_plugins) + make(self.plugins.get(rid, []))) for rid in route_ids}

    def encode(self) -> bytes:
        header = {
            "version": self.version,
            "plugins": self.plugins,
            "global": self.global_plugins,
            "consumers": self.consumers,
            "snapshot": len(self.snapshot),
        }
        return orjson.dumps(header) + b"\n" + self.snapshot

    @classmethod
    def read(cls, stream: BinaryIO) -> Compiled | None:
        """The next message from `stream`, or None at end of stream."""
        line = stream.readline()
        while line and not line.strip():
            line = stream.readline()
        if not line:
            return None
        head = orjson.loads(line)
        snapshot = stream.read(int(head["snapshot"]))
        plugins = {rid: [tuple(p) for p in specs] for rid, specs in head["plugins"].items()}
        global_plugins = [tuple(p) for p in head["global"]]
        return cls(int(head["version"]), snapshot, plugins, global_plugins, head["consumers"])  # type: ignore[arg-type]
