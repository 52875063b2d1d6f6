"""A config compiled once by the master and shipped to every worker.

The master validates and flattens the config (`config.validate` + `config.compile_snapshot`); workers
only instantiate the Python plugin chains and hand the snapshot bytes to the Rust core. So a change
costs each worker a JSON parse and a route-table build in Rust, not a Python re-validation.

Wire format on a worker's stdin: one JSON header line
`{"version": N, "plugins": {route_id: [[name, conf], ...]}, "global": [[name, conf], ...],
  "consumers": {plugin: [[username, conf], ...]},
  "consumer_plugins": {username: {"group_id": id or null, "plugins": [[name, conf], ...]}},
  "route_vars": {route_id: {"service_id": id}}, "snapshot": LEN}`
followed by LEN bytes of snapshot JSON (the shape `core_rs/src/config.rs` reads).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import msgspec
import orjson

from pygateway.config import Config, PluginConf, compile_snapshot, validate
from pygateway.host import Chain, ConsumerPlugins, ConsumerTable, make_chain
from pygateway.registry import Registry

log = logging.getLogger("pygateway.compiled")
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
    # username -> {"group_id", "plugins": PluginSpecs}: consumers with a group or non-auth plugins
    consumer_plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    # route id -> values plugins find in ctx (`service_id`)
    route_vars: dict[str, dict[str, Any]] = field(default_factory=dict)

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
        route_vars = {rid: {"service_id": str(r.service_id)} for rid, r in cfg.routes.items() if r.service_id is not None}
        return cls(
            version,
            orjson.dumps(snapshot),
            {rid: specs(pairs) for rid, pairs in route_plugins.items() if pairs},
            specs(global_plugins),
            consumers,
            _consumer_plugins(cfg),
            {rid: v for rid, v in route_vars.items() if rid in route_plugins},
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
                username: ConsumerPlugins(c["group_id"], make(c["plugins"]))
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
            u: {"group_id": c["group_id"], "plugins": [tuple(p) for p in c["plugins"]]}
            for u, c in head.get("consumer_plugins", {}).items()
        }
        return cls(
            int(head["version"]), snapshot, plugins, global_plugins, head["consumers"],  # type: ignore[arg-type]
            consumer_plugins, head.get("route_vars", {}),
        )  # fmt: skip


def _consumer_plugins(cfg: Config) -> dict[str, dict[str, Any]]:
    """Per consumer with a group or extra plugins: its group id and its non-auth Python plugins, the
    group's merged with its own (APISIX: consumer > consumer group), highest priority first."""
    out: dict[str, dict[str, Any]] = {}
    for username, consumer in cfg.consumers.items():
        group_id = str(consumer.group_id) if consumer.group_id is not None else None
        merged: dict[str, PluginConf] = {}
        if group_id is not None:
            merged.update(cfg.consumer_groups[group_id].plugins)
        merged.update(consumer.plugins)
        entries = [p for p in merged.values() if not p.disabled and p.cls.ConsumerConfig is None]
        native = sorted(p.cls.name for p in entries if p.cls.native)
        if native:
            log.warning("consumer %r: %s from a consumer or consumer group not applied (put them on the route "
                        "with key consumer_name)", username, ", ".join(native))  # fmt: skip
        python = sorted((p for p in entries if not p.cls.native), key=lambda p: (-p.cls.priority, p.cls.name))
        if group_id is None and not python:
            continue
        out[username] = {"group_id": group_id, "plugins": [(p.cls.name, msgspec.to_builtins(p.conf)) for p in python]}
    return out
