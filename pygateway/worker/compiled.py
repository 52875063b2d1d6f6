"""A compiled config as a worker receives it: the message on its stdin, and the Python plugin chains the
worker instantiates from it.

The master validates and flattens the config (`pygateway.config.snapshot.compile_config`); workers only
instantiate the Python plugin chains (`Compiled.chains`) and hand the snapshot bytes to the Rust core. So
a change costs each worker a JSON parse and a route-table build in Rust, not a Python re-validation, and
the worker process never imports the validator.

Wire format on a worker's stdin: one JSON header line
`{"version": N, "plugins": {route_id: [[name, conf], ...]}, "global": [[name, conf], ...],
  "consumers": {plugin: [[username, conf], ...]},
  "consumer_plugins": {username: {"group_id": id or null, "plugins": [[name, conf], ...]}},
  "route_vars": {route_id: {"service_id": id}}, "snapshot": LEN}`
followed by LEN bytes of snapshot JSON (the shape `core_rs/src/config.rs` reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from pygateway.plugin.registry import Registry
from pygateway.worker.host import Chain, ConsumerPlugins, ConsumerTable, make_chain

PluginSpecs = list[tuple[str, Any]]


@dataclass
class Compiled:
    """One config version, as the master sends it to every worker."""

    version: int
    snapshot: bytes
    plugins: dict[str, PluginSpecs]  # route id -> its Python plugins, highest priority first
    global_plugins: PluginSpecs
    # plugin name -> [[username, conf], ...] from consumers and their credentials, for plugins with a
    # ConsumerConfig (a consumer may hold several credentials for one plugin)
    consumers: dict[str, list[Any]] = field(default_factory=dict)
    # username -> {"group_id", "plugins": PluginSpecs}: consumers with a group or non-auth plugins
    consumer_plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    # route id -> values plugins find in ctx (`service_id`)
    route_vars: dict[str, dict[str, Any]] = field(default_factory=dict)

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
            # Auth plugins get every consumer's credentials.
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

        table = None
        if self.consumer_plugins:
            table = ConsumerTable({
                username: ConsumerPlugins(c["group_id"], make(c["plugins"]), frozenset(c.get("native", ())))
                for username, c in self.consumer_plugins.items()
            })  # fmt: skip
        route_ids = set(self.plugins)
        if self.global_plugins:
            route_ids |= {r["id"] for r in orjson.loads(self.snapshot)["routes"]}
        return {
            rid: make_chain(make(self.global_plugins), make(self.plugins.get(rid, [])), table, self.route_vars.get(rid))
            for rid in route_ids
        }

    def encode(self) -> bytes:
        header = {
            "version": self.version,
            "plugins": self.plugins,
            "global": self.global_plugins,
            "consumers": self.consumers,
            "consumer_plugins": self.consumer_plugins,
            "route_vars": self.route_vars,
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
        consumer_plugins = {
            u: {"group_id": c["group_id"], "plugins": [tuple(p) for p in c["plugins"]], "native": c.get("native", [])}
            for u, c in head.get("consumer_plugins", {}).items()
        }
        return cls(
            int(head["version"]), snapshot, plugins, global_plugins, head["consumers"],  # type: ignore[arg-type]
            consumer_plugins, head.get("route_vars", {}),
        )  # fmt: skip
