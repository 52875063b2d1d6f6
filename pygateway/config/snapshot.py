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

from pygateway.config.validate import Config, PluginConf, compile_snapshot, validate
from pygateway.plugin.registry import Registry
from pygateway.worker.host import Chain, ConsumerPlugins, ConsumerTable, make_chain

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
        limits = _consumer_limits(cfg)
        if limits:
            snapshot = {**snapshot, "consumer_limits": limits}

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
            _consumer_plugins(cfg, limits),
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


def _merged_consumer_plugins(cfg: Config, username: str) -> dict[str, PluginConf]:
    """A consumer's plugins: its group's merged with its own (APISIX: consumer > consumer group)."""
    consumer = cfg.consumers[username]
    merged: dict[str, PluginConf] = {}
    if consumer.group_id is not None:
        merged.update(cfg.consumer_groups[str(consumer.group_id)].plugins)
    merged.update(consumer.plugins)
    return merged


# Native plugins a consumer or consumer group may hold; applied by the Rust core once the consumer is known.
_CONSUMER_NATIVE = ("limit-count", "limit-req")


def _consumer_limits(cfg: Config) -> dict[str, dict[str, Any]]:
    """`snapshot.consumer_limits` (see `core_rs/src/config.rs`): per consumer, its limiter confs and where
    each comes from (`consumer`, or `group:<id>`: the counter identity). A conf the core does not run (a
    Python `policy: redis` one, or a disabled one) is `null`: it still overrides the route's."""
    out: dict[str, dict[str, Any]] = {}
    for username, consumer in cfg.consumers.items():
        merged = _merged_consumer_plugins(cfg, username)
        plugins: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name in _CONSUMER_NATIVE:
            entry = merged.get(name)
            if entry is None:
                continue
            runs_native = entry.cls.native and not entry.disabled
            plugins[name] = msgspec.to_builtins(entry.conf) if runs_native else None
            sources[name] = "consumer" if name in consumer.plugins else f"group:{consumer.group_id}"
        if plugins:
            out[username] = {"plugins": plugins, "sources": sources}
    return out


def _consumer_plugins(cfg: Config, limits: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per consumer with a group or extra plugins: its group id, its non-auth Python plugins (the group's
    merged with its own), highest priority first, and the names of the limiters the core runs for it
    (`native`: they replace a route's Python implementation, e.g. limit-count `policy: redis`)."""
    out: dict[str, dict[str, Any]] = {}
    for username, consumer in cfg.consumers.items():
        group_id = str(consumer.group_id) if consumer.group_id is not None else None
        merged = _merged_consumer_plugins(cfg, username)
        entries = [p for p in merged.values() if not p.disabled and p.cls.ConsumerConfig is None]
        other_native = sorted(p.cls.name for p in entries if p.cls.native and p.cls.name not in _CONSUMER_NATIVE)
        if other_native:
            log.warning("consumer %r: %s from a consumer or consumer group not applied (only %s are)",
                        username, ", ".join(other_native), " and ".join(_CONSUMER_NATIVE))  # fmt: skip
        python = sorted((p for p in entries if not p.cls.native), key=lambda p: (-p.cls.priority, p.cls.name))
        native = sorted(n for n, conf in limits.get(username, {}).get("plugins", {}).items() if conf is not None)
        if group_id is None and not python and not native:
            continue
        out[username] = {"group_id": group_id, "native": native,
                         "plugins": [(p.cls.name, msgspec.to_builtins(p.conf)) for p in python]}  # fmt: skip
    return out
