"""The master's half of a config change: validate the raw config and compile it into the message every
worker receives (`pygateway.worker.compiled.Compiled`).

`config.validate` checks and flattens the config (`validate` + `compile_snapshot`); this adds what the
workers' Python side needs (each route's Python plugins, consumers' credentials and plugins, the
per-consumer limiters the Rust core runs) so that the workers never validate again.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import orjson

from pygateway.config.validate import Config, PluginConf, compile_snapshot, validate
from pygateway.plugin.registry import Registry
from pygateway.worker.compiled import Compiled, PluginSpecs

log = logging.getLogger("pygateway.config")


def compile_config(raw: dict[str, Any], version: int, registry: Registry) -> Compiled:
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
    return Compiled(
        version,
        orjson.dumps(snapshot),
        {rid: specs(pairs) for rid, pairs in route_plugins.items() if pairs},
        specs(global_plugins),
        consumers,
        _consumer_plugins(cfg, limits),
        {rid: v for rid, v in route_vars.items() if rid in route_plugins},
    )


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
