"""Load, validate and compile the APISIX-shaped standalone config (`apisix.yaml`).

Three steps, each usable alone:

    raw = load_yaml("conf/apisix.yaml")           # YAML -> dict (syntax errors -> ConfigError)
    cfg = validate(raw, registry.get)             # dict -> Config (every error collected -> ConfigError)
    snapshot, route_py, global_py = compile_snapshot(cfg, version=7)

`validate` checks object shapes (following APISIX's `schema_def.lua`: unknown fields are rejected, as
APISIX does with `additionalProperties = false`), cross references and plugin configs. Errors read
`<collection>[<id>].<field path>: <message>`, e.g. `routes[r1].upstream.nodes[0].port: required`; objects
without a usable id are named by their 0-based list position: `routes[#2].id: required`.

`compile_snapshot` flattens services, plugin_configs and `upstream_id` references into each route (the
JSON shape `core_rs/src/config.rs` deserializes). Native plugins go into the snapshot; Python plugins are
returned separately as `(plugin_class, validated_conf)` pairs sorted by priority, highest first.

Choices where APISIX is silent or where we are deliberately more lenient (documented, not accidental):
- `upstream.type` defaults to `roundrobin` and a list node's `weight` to 1 (APISIX requires both).
- `timeout` fields default to connect 5s, send/read 15s when partially given (APISIX requires all three).
- a route may set both `uri` and `uris` (and `host`/`hosts`, `remote_addr`/`remote_addrs`): merged.
- a route whose merged result has no upstream is an error (APISIX allows plugin-only routes).
- global rules' native plugins act on every route: `prometheus`, `opentelemetry`, `real-ip`,
  `file-logger`, `http-logger` and `gzip` are merged into each route's (a route's own conf wins), while
  `limit-count` and `limit-req` run as the rule's own limiters (`global_limits`: before the route's,
  with one counter per key across all routes, as APISIX keys a global rule's counter by the rule).
- consumer plugin confs are validated with the plugin class's `ConsumerConfig` struct when it defines
  one (APISIX's `consumer_schema`), else with `parse_config`.
- `_meta` keys other than `disable` (priority, filter, error_response) are refused as not supported.
- `consumer_groups` (id, name, desc, labels, plugins) are supported; a consumer's `group_id` must name
  one. Their plugin confs are route-style confs (validated with `parse_config`), merged into a route's
  plugins when a consumer of the group is identified (see `pygateway.worker.host.ConsumerTable`).
- fields APISIX has and the data plane does not implement are refused, naming the field: upstream
  `checks`, `keepalive_pool`, `retry_timeout`, and `enable_websocket: true` on routes and services
  (`false`, APISIX's default, is what the data plane does: an upgrade is proxied as a plain request);
  service discovery, route `filter_func`/`script` and `grpc(s)` schemes are rejected too (unknown
  field / invalid value).
- `#END` (which APISIX waits for before reloading) is optional: it is just a YAML comment here.
- errors come per collection in the order routes, services, upstreams, consumers, global_rules,
  plugin_configs, consumer_groups, then cross-reference errors; references to objects that failed validation
  themselves are not reported a second time.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import orjson
import yaml

from pygateway.config.models import (
    MODELS,
    OBJECT_MODELS,
    SSL,
    Config,
    Consumer,
    ConsumerGroup,
    Credential,
    GlobalRule,
    Id,
    Node,
    PluginConf,
    PluginConfig,
    Route,
    Service,
    Strict,
    Timeout,
    Upstream,
)
from pygateway.plugin import Plugin

__all__ = [
    "SSL",
    "Config",
    "ConfigError",
    "Consumer",
    "ConsumerGroup",
    "Credential",
    "GlobalRule",
    "Node",
    "PluginConf",
    "PluginConfig",
    "Route",
    "Service",
    "Timeout",
    "Upstream",
    "compile_snapshot",
    "load_yaml",
    "validate",
]

GetPlugin = Callable[[str], "type[Plugin] | None"]
PluginPairs = list[tuple[type[Plugin], Any]]

COLLECTIONS: tuple[str, ...] = (
    "routes", "services", "upstreams", "consumers", "global_rules", "plugin_configs", "consumer_groups",
)  # fmt: skip
# Valid in APISIX's apisix.yaml but not implemented here: say so rather than "unknown".
UNSUPPORTED: tuple[str, ...] = (
    "ssls", "stream_routes", "protos", "plugin_metadata", "secrets", "plugins",
    "stream_plugins",
)  # fmt: skip


class ConfigError(Exception):
    """One or more config problems; `errors` holds one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


# ------------------------------------------------------------------------------------------- load_yaml
def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an `apisix.yaml`; a trailing `#END` is a YAML comment so needs no special handling."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{name}: cannot read: {getattr(e, 'strerror', None) or e}"]) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_error(name, e)]) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{name}: top level must be a mapping, got {_type_name(data)}"])
    errors = _top_level_errors(data)
    if errors:
        raise ConfigError([f"{name}: {e}" for e in errors])
    return data


def _yaml_error(name: str, e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if mark is None:
        return f"{name}: invalid YAML: {problem}"
    # PyYAML marks are 0-based; editors count from 1.
    return f"{name}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"


def _top_level_errors(raw: dict[Any, Any]) -> list[str]:
    errors = []
    for key, value in raw.items():
        if key in COLLECTIONS:
            continue
        if key == "plugin_dirs":
            if not (isinstance(value, list) and all(isinstance(d, str) for d in value)):
                errors.append("plugin_dirs: expected array of directory paths")
            continue
        if key in UNSUPPORTED:
            errors.append(f"{key}: not supported by pygateway")
        else:
            errors.append(f"{key}: unknown top-level key (expected one of {', '.join(COLLECTIONS)})")
    return errors


# -------------------------------------------------------------------------------------------- validate
def validate(raw: dict[str, Any], get_plugin: GetPlugin) -> Config:
    """Validate a raw config dict; raises ConfigError listing every problem found."""
    if not isinstance(raw, dict):
        raise ConfigError([f"config: expected object, got {_type_name(raw)}"])
    errors = _top_level_errors(raw)
    # Ids of objects that had errors: references to them are not reported again.
    invalid: dict[str, set[str]] = {}
    valid: dict[str, dict[str, Any]] = {}
    for name in COLLECTIONS:
        valid[name], invalid[name] = _validate_collection(name, raw.get(name), get_plugin, errors)
    cfg = Config(**valid)
    errors += _reference_errors(cfg, invalid)
    errors += _plugin_upstream_ref_errors(cfg, invalid["upstreams"])
    if errors:
        raise ConfigError(errors)
    return cfg


def _validate_collection(
    name: str, items: Any, get_plugin: GetPlugin, errors: list[str]
) -> tuple[dict[str, Any], set[str]]:
    """Return (valid objects by id, ids of objects that had errors)."""
    valid: dict[str, Any] = {}
    invalid: set[str] = set()
    if items is None:  # `routes:` with nothing under it
        return valid, invalid
    if not isinstance(items, list):
        errors.append(f"{name}: expected array, got {_type_name(items)}")
        return valid, invalid
    key_field = "username" if name == "consumers" else "id"
    first_pos: dict[str, int] = {}
    for pos, item in enumerate(items):
        key = _object_key(item, key_field)
        label = f"{name}[{key if key is not None else f'#{pos}'}]"
        if not isinstance(item, dict):
            errors.append(f"{label}: expected object, got {_type_name(item)}")
            continue
        n_errors = len(errors)
        usable = key is not None and key not in first_pos
        if key is None:
            errors.append(f"{label}.{key_field}: {_bad_key_message(item.get(key_field), key_field)}")
        elif key in first_pos:
            errors.append(f"{label}.{key_field}: duplicate {key_field} {key!r} (first at #{first_pos[key]})")
        else:
            first_pos[key] = pos
        memo_key = _memo_key(name, item) if usable else None
        cached = _VALIDATED.get(memo_key) if memo_key is not None else None
        if key is not None and cached is not None and cached[1] is _plugin_source(get_plugin):
            valid[key] = cached[0]  # unchanged since the last validation: reuse it
            continue
        # Validate even objects without a usable id, so their other errors are reported too.
        # The key is checked above; leave it out so msgspec doesn't report it a second time.
        body = {k: v for k, v in item.items() if k != key_field}
        obj = _validate_object(label, MODELS[name], body, get_plugin, errors, consumer=name == "consumers")
        if not usable or key is None:
            continue
        if len(errors) > n_errors:
            invalid.add(key)
        else:
            setattr(obj, key_field, key)  # normalized: ids are strings
            valid[key] = obj
            if memo_key is not None:
                _remember(memo_key, (obj, _plugin_source(get_plugin)))
    return valid, invalid


# Validated objects by (collection, exact JSON of the object): with 10 000 routes, a change to one
# re-validates that one. Validated objects are not mutated afterwards, so sharing them is safe.
_VALIDATED: dict[tuple[str, bytes], tuple[Any, object]] = {}
_MEMO_LIMIT = 200_000


def _plugin_source(get_plugin: GetPlugin) -> object:
    """What decides which plugin classes exist (a registry, or a test's dict)."""
    return getattr(get_plugin, "__self__", get_plugin)


def _memo_key(collection: str, item: dict[str, Any]) -> tuple[str, bytes] | None:
    try:
        return collection, orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # YAML values JSON can't hold (dates...): just don't cache
        return None


def _remember(key: tuple[str, bytes], value: tuple[Any, object]) -> None:
    if len(_VALIDATED) >= _MEMO_LIMIT:
        _VALIDATED.clear()
    _VALIDATED[key] = value


def _object_key(item: Any, key_field: str) -> str | None:
    """The object's id as a string (YAML ids may be ints), or None when missing/unusable."""
    if not isinstance(item, dict):
        return None
    value = item.get(key_field)
    if key_field == "username":  # APISIX: ^[a-zA-Z0-9_]+$, up to 100 chars
        return value if isinstance(value, str) and re.fullmatch(r"[a-zA-Z0-9_]{1,100}", value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if value >= 1 else None
    if isinstance(value, str) and re.fullmatch(r"[a-zA-Z0-9-_.]{1,64}", value):
        return value
    return None


def _bad_key_message(value: Any, key_field: str) -> str:
    if value is None:
        return "required"
    if key_field == "username":
        return f"invalid username {value!r} (expected letters, digits and '_')"
    return f"invalid id {value!r} (expected an int >= 1 or a string of letters, digits, '-', '_', '.')"


def _validate_object(
    label: str, model: type[Strict], item: dict[str, Any], get_plugin: GetPlugin, errors: list[str], *, consumer: bool
) -> Any:
    """Decode one object; `plugins` and `upstream` are checked separately so all their errors surface."""
    if model is Upstream:
        return _validate_upstream(label, item, errors)
    separate = {"plugins", "upstream"} & set(model.__struct_fields__)
    obj = _convert(label, {k: v for k, v in item.items() if k not in separate}, model, errors)
    plugins = _validate_plugins(f"{label}.plugins", item.get("plugins"), get_plugin, errors, consumer=consumer)
    upstream = None
    if "upstream" in separate and item.get("upstream") is not None:
        upstream = _validate_upstream(f"{label}.upstream", item["upstream"], errors)
    if obj is None:
        return None
    if isinstance(obj, Route):
        errors += _route_errors(label, obj)
    errors += [f"{label}.{name}: not supported" for name in unsupported_fields(obj)]
    obj.plugins = plugins
    if upstream is not None:
        obj.upstream = upstream
    return obj


def _convert(label: str, raw: Any, model: type[Any], errors: list[str]) -> Any:
    try:
        return msgspec.convert(raw, model, strict=True)
    except msgspec.ValidationError as e:
        errors.append(_format_validation(label, e))
        return None


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def _format_validation(label: str, exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `int` >= 1, got `0` - at `$.count`" -> "<label>.count: expected int >= 1, got 0"."""
    m = _AT.match(str(exc))
    assert m is not None  # the pattern matches any string
    msg, path = m["msg"], m["path"] or ""
    if field := re.fullmatch(r"Object missing required field `(.+)`", msg):
        path, msg = f"{path}.{field[1]}", "required"
    elif field := re.fullmatch(r"Object contains unknown field `(.+)`", msg):
        path, msg = f"{path}.{field[1]}", "unknown field"
    else:
        # msgspec quotes regexes with repr(); show them as written.
        msg = msg.replace("`", "").replace(" | ", " or ").replace("\\\\", "\\")
        msg = msg[:1].lower() + msg[1:]
    return f"{label}{path}: {msg}"


def _validate_upstream(label: str, raw: Any, errors: list[str]) -> Upstream | None:
    up = _convert(label, raw, Upstream, errors)
    if up is None:
        return None
    problems = list(_upstream_problems(up))
    errors += [f"{label}.{field}: {msg}" for field, msg in problems]
    return None if problems else up


def _upstream_problems(up: Upstream) -> Iterator[tuple[str, str]]:
    """Cross-field rules msgspec can't express; also normalizes the nodes dict form in place."""
    if isinstance(up.nodes, dict):
        nodes = []
        for addr, weight in up.nodes.items():
            node = _parse_node_addr(addr, weight, up.scheme)
            if node is None:
                yield f"nodes[{addr}]", 'expected "host:port" or "host"'
            else:
                nodes.append(node)
        up.nodes = nodes
    if up.pass_host == "rewrite" and not up.upstream_host:
        yield "upstream_host", 'required when pass_host is "rewrite"'
    if up.type == "chash" and not up.key:
        yield "key", 'required when type is "chash"'
    for name in unsupported_fields(up):
        yield name, "not supported"
    if up.id is not None:
        up.id = str(up.id)


# Fields of APISIX's schema that the models declare but the data plane does not implement, with the
# value that means "off" (what the data plane does). Any other value is refused.
_UNSUPPORTED: dict[str, object] = {
    "enable_websocket": False,
    "checks": None,
    "keepalive_pool": None,
    "retry_timeout": None,
}


def unsupported_fields(obj: Any) -> list[str]:
    """The names of `obj`'s fields set to something the data plane would ignore."""
    return [
        name
        for name, off in _UNSUPPORTED.items()
        if name in obj.__struct_fields__ and getattr(obj, name) not in (None, off)
    ]


def _parse_node_addr(addr: str, weight: int, scheme: str) -> Node | None:
    """`"10.0.0.1:80"`, `"[::1]:80"`, or a bare host (port from the scheme, as APISIX does)."""
    m = re.fullmatch(r"\[(?P<v6>[0-9a-fA-F:.]+)\](?::(?P<p6>\d+))?|(?P<host>[^:\[\]]+)(?::(?P<port>\d+))?", addr)
    if m is None:
        return None
    host = m["v6"] or m["host"]
    port = m["p6"] or m["port"]
    port_num = int(port) if port else (443 if scheme == "https" else 80)
    if not 1 <= port_num <= 65535 or not re.fullmatch(r"[0-9a-zA-Z-._:]+", host):
        return None
    return Node(host=host, port=port_num, weight=weight)


def _route_errors(label: str, r: Route) -> list[str]:
    errors = []
    if r.uri is None and r.uris is None:
        errors.append(f"{label}.uri: required (set uri or uris)")
    addrs = [("remote_addr", r.remote_addr)] if r.remote_addr else []
    addrs += [(f"remote_addrs[{i}]", a) for i, a in enumerate(r.remote_addrs or [])]
    for where, addr in addrs:
        try:
            ipaddress.ip_network(addr, strict=False)
        except ValueError:
            errors.append(f"{label}.{where}: invalid IP address or CIDR {addr!r}")
    return errors


def _validate_plugins(
    label: str, raw: Any, get_plugin: GetPlugin, errors: list[str], *, consumer: bool = False
) -> dict[str, PluginConf]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(f"{label}: expected object, got {_type_name(raw)}")
        return {}
    out: dict[str, PluginConf] = {}
    for name, conf in raw.items():
        entry = _validate_plugin(f"{label}.{name}", str(name), conf, get_plugin, errors, consumer)
        if entry is not None:
            out[str(name)] = entry
    return out


def _validate_plugin(
    label: str, name: str, conf: Any, get_plugin: GetPlugin, errors: list[str], consumer: bool
) -> PluginConf | None:
    cls = get_plugin(name)
    if cls is None:
        errors.append(f'{label}: unknown plugin "{name}"')
        return None
    if conf is None:
        conf = {}
    if not isinstance(conf, dict):
        errors.append(f"{label}: expected object, got {_type_name(conf)}")
        return None
    conf = dict(conf)
    meta = conf.pop("_meta", None) or {}
    disabled = meta.get("disable", False) if isinstance(meta, dict) else None
    if not isinstance(disabled, bool):
        errors.append(f"{label}._meta: expected object with boolean disable")
        return None
    # APISIX's other `_meta` keys (priority, filter, error_response, ...) are not implemented.
    unsupported = sorted(k for k in meta if k != "disable")
    if unsupported:
        errors += [f"{label}._meta.{k}: not supported" for k in unsupported]
        return None
    schema = getattr(cls, "ConsumerConfig", None) if consumer else None
    try:
        parsed = msgspec.convert(conf, schema, strict=False) if schema is not None else cls.parse_config(conf)
    except msgspec.ValidationError as e:
        errors.append(_format_validation(label, e))
        return None
    except (ValueError, TypeError) as e:  # a plugin's own parse_config may check beyond msgspec
        errors.append(f"{label}: {e}")
        return None
    # One name may have several implementations picked by config (limit-count's `policy`).
    impl = cls if schema is not None else cls.for_config(parsed)
    return PluginConf(cls=impl, conf=parsed, disabled=disabled)


def _reference_errors(cfg: Config, invalid: dict[str, set[str]]) -> list[str]:
    """Cross-object checks: every *_id must exist and every route must end up with an upstream.

    References to objects that failed validation are not reported again (their own errors are).
    """
    errors = []
    for sid, svc in cfg.services.items():
        errors += _ref_errors(f"services[{sid}]", "upstream_id", svc.upstream_id, cfg.upstreams, invalid["upstreams"])
    for username, consumer in cfg.consumers.items():
        errors += _ref_errors(
            f"consumers[{username}]", "group_id", consumer.group_id, cfg.consumer_groups, invalid["consumer_groups"]
        )
    for rid, route in cfg.routes.items():
        label = f"routes[{rid}]"
        refs = (
            ("upstream_id", route.upstream_id, cfg.upstreams, invalid["upstreams"]),
            ("service_id", route.service_id, cfg.services, invalid["services"]),
            ("plugin_config_id", route.plugin_config_id, cfg.plugin_configs, invalid["plugin_configs"]),
        )
        for field, ref, pool, bad in refs:
            errors += _ref_errors(label, field, ref, pool, bad)
        # Only when nothing is even declared: a broken reference is reported above already.
        service_known = route.service_id is None or str(route.service_id) in cfg.services
        if service_known and not _declares_upstream(route, _service_of(cfg, route)):
            errors.append(f"{label}.upstream: required (no upstream, upstream_id, or service with an upstream)")
    return errors


def _declares_upstream(route: Route, service: Service | None) -> bool:
    sources = (route.upstream, route.upstream_id, *((service.upstream, service.upstream_id) if service else ()))
    return any(s is not None for s in sources)


def _ref_errors(label: str, field: str, ref: Id | None, pool: dict[str, Any], invalid: set[str]) -> list[str]:
    if ref is None or str(ref) in pool or str(ref) in invalid:
        return []
    return [f'{label}.{field}: {field.removesuffix("_id")} "{ref}" not found']


# ------------------------------------------------------------------------------------ compile_snapshot
def compile_snapshot(cfg: Config, version: int) -> tuple[dict[str, Any], dict[str, PluginPairs], PluginPairs]:
    """Flatten `cfg` into (snapshot for the Rust worker, Python plugins per route id, global Python plugins).

    Disabled routes (`status: 0`) are left out entirely.
    """
    routes: list[dict[str, Any]] = []
    python_plugins: dict[str, PluginPairs] = {}
    for rid, route in cfg.routes.items():
        if route.status == 0:
            continue
        # A route's output depends only on these objects; unchanged ones are reused (see _VALIDATED).
        service = _service_of(cfg, route)
        pc = cfg.plugin_configs.get(str(route.plugin_config_id)) if route.plugin_config_id is not None else None
        deps = (route, service, _route_upstream(cfg, route), pc)
        cached = _COMPILED.get(rid)
        if cached is None or any(a is not b for a, b in zip(cached[0], deps)):
            plugins = _merged_plugins(cfg, route)
            native = {n: msgspec.to_builtins(p.conf) for n, p in plugins.items() if p.cls.native}
            pairs = _sorted_pairs(p for p in plugins.values() if not p.cls.native)
            cached = (deps, _route_snapshot(cfg, rid, route, native), pairs)
            if len(_COMPILED) >= _MEMO_LIMIT:
                _COMPILED.clear()
            _COMPILED[rid] = cached
        routes.append(cached[1])
        python_plugins[rid] = _with_plugin_upstreams(cfg, cached[2])
    global_entries = [p for rule in cfg.global_rules.values() for p in rule.plugins.values() if not p.disabled]
    global_plugins = _with_plugin_upstreams(cfg, _sorted_pairs(p for p in global_entries if not p.cls.native))
    snapshot: dict[str, Any] = {"version": version, "routes": routes}
    # Global `prometheus` / `opentelemetry` / `real-ip` / `file-logger` / `http-logger` act on every
    # route (a route's own conf wins); a global `prometheus` also counts requests that match no route.
    per_route = {p.cls.name: msgspec.to_builtins(p.conf) for p in global_entries if p.cls.name in _GLOBAL_NATIVE}
    if per_route:
        snapshot["routes"] = [{**r, "plugins": {**per_route, **r["plugins"]}} for r in routes]
        snapshot["metrics_unmatched"] = "prometheus" in per_route
        snapshot["unmatched_loggers"] = {k: v for k, v in per_route.items() if k.endswith("-logger")}
    # Global `limit-count` / `limit-req`: the rule's own limiters, on every routed request.
    global_limits = [
        {"id": gid, "plugins": limits}
        for gid, rule in cfg.global_rules.items()
        if (limits := {n: msgspec.to_builtins(p.conf) for n, p in rule.plugins.items()
                       if n in _GLOBAL_LIMITS and p.cls.native and not p.disabled})
    ]  # fmt: skip
    if global_limits:
        snapshot["global_limits"] = global_limits
    return snapshot, python_plugins, global_plugins


_GLOBAL_NATIVE = ("prometheus", "opentelemetry", "real-ip", "file-logger", "http-logger", "gzip")
_GLOBAL_LIMITS = ("limit-count", "limit-req")


# Per route id: (the objects it was compiled from, its snapshot, its Python plugins).
_COMPILED: dict[str, tuple[tuple[Any, ...], dict[str, Any], PluginPairs]] = {}


def _route_snapshot(cfg: Config, rid: str, route: Route, native: dict[str, Any]) -> dict[str, Any]:
    service = _service_of(cfg, route)
    hosts = _merge_one_many(route.host, route.hosts) or (list(service.hosts or []) if service else [])
    upstream = _route_upstream(cfg, route)
    return {
        "id": rid,
        "name": route.name,
        "service_id": str(route.service_id) if route.service_id is not None else None,
        "uris": _merge_one_many(route.uri, route.uris),
        "hosts": hosts,
        "methods": list(route.methods or []),
        "remote_addrs": _merge_one_many(route.remote_addr, route.remote_addrs),
        "vars": route.vars,
        "priority": route.priority,
        "upstream": _upstream_snapshot(upstream) if upstream is not None else None,
        "timeout": msgspec.to_builtins(route.timeout) if route.timeout else None,
        "plugins": native,
    }


# ---------------------------------------------------------------------- upstreams referenced by plugins
# A plugin class may reference upstreams by id (traffic-split's `upstream_id`): it defines
# `upstream_refs(conf) -> [(field path, id), ...]`, checked like any other reference, and
# `resolve_upstreams(conf, upstreams) -> conf`, called on every compile so that an edited upstream
# reaches the plugin (its result must survive `msgspec.to_builtins` + `parse_config` in the workers).
def parse_upstream(raw: Any) -> tuple[Upstream | None, list[str]]:
    """Validate one upstream object as `routes[].upstream` is; errors read `.<field>: <message>`."""
    errors: list[str] = []
    return _validate_upstream("", raw, errors), errors


def _plugin_upstream_ref_errors(cfg: Config, invalid: set[str]) -> list[str]:
    errors = []
    holders: dict[str, dict[str, Any]] = {"routes": cfg.routes, "services": cfg.services,
                                          "plugin_configs": cfg.plugin_configs, "global_rules": cfg.global_rules}  # fmt: skip
    for collection, objects in holders.items():
        for oid, obj in objects.items():
            for name, entry in obj.plugins.items():
                refs = getattr(entry.cls, "upstream_refs", None)
                for path, uid in refs(entry.conf) if refs is not None else ():
                    if str(uid) not in cfg.upstreams and str(uid) not in invalid:
                        errors.append(f'{collection}[{oid}].plugins.{name}.{path}: upstream "{uid}" not found')
    return errors


def _plugin_upstream_lookup_errors(label: str, plugins: dict[str, PluginConf], lookup: Lookup) -> list[str]:
    """The admin API's check of one object: its plugins' upstream references must exist in the store."""
    errors = []
    for name, entry in plugins.items():
        refs = getattr(entry.cls, "upstream_refs", None)
        for path, uid in refs(entry.conf) if refs is not None else ():
            if lookup("upstreams", str(uid)) is None:
                errors.append(f'{label}.plugins.{name}.{path}: upstream "{uid}" not found')
    return errors


def _with_plugin_upstreams(cfg: Config, pairs: PluginPairs) -> PluginPairs:
    out = []
    for cls, conf in pairs:
        resolve = getattr(cls, "resolve_upstreams", None)
        out.append((cls, resolve(conf, cfg.upstreams) if resolve is not None else conf))
    return out


def _upstream_snapshot(up: Upstream) -> dict[str, Any]:
    assert isinstance(up.nodes, list)  # dict form normalized during validation
    return {
        "id": str(up.id) if up.id is not None else None,
        "type": up.type,
        "nodes": [{"host": n.host, "port": n.port, "weight": n.weight, "priority": n.priority} for n in up.nodes],
        "scheme": up.scheme,
        "pass_host": up.pass_host,
        "upstream_host": up.upstream_host,
        "timeout": msgspec.to_builtins(up.timeout) if up.timeout else None,
        "retries": up.retries,
        "hash_on": up.hash_on,
        "key": up.key,
        "tls_verify": up.tls.verify if up.tls else True,
    }


def _merged_plugins(cfg: Config, route: Route) -> dict[str, PluginConf]:
    """APISIX precedence: route > plugin_config > service; the winner's conf is taken whole."""
    merged: dict[str, PluginConf] = {}
    service = _service_of(cfg, route)
    if service is not None:
        merged.update(service.plugins)
    if route.plugin_config_id is not None:
        merged.update(cfg.plugin_configs[str(route.plugin_config_id)].plugins)
    merged.update(route.plugins)
    # Disabling happens after the merge so a route can switch off a plugin its service enables.
    return {name: p for name, p in merged.items() if not p.disabled}


def _route_upstream(cfg: Config, route: Route) -> Upstream | None:
    """APISIX precedence: route `upstream` > route `upstream_id` > service `upstream` > service `upstream_id`."""
    service = _service_of(cfg, route)
    candidates = (
        route.upstream,
        _upstream_by_id(cfg, route.upstream_id),
        service.upstream if service else None,
        _upstream_by_id(cfg, service.upstream_id) if service else None,
    )
    return next((u for u in candidates if u is not None), None)


def _upstream_by_id(cfg: Config, uid: Id | None) -> Upstream | None:
    if uid is None:
        return None
    return cfg.upstreams.get(str(uid))


def _service_of(cfg: Config, route: Route) -> Service | None:
    return cfg.services.get(str(route.service_id)) if route.service_id is not None else None


def _sorted_pairs(entries: Any) -> PluginPairs:
    """Highest priority first; ties by name so the order is deterministic."""
    ordered = sorted(entries, key=lambda p: (-p.cls.priority, p.cls.name))
    return [(p.cls, p.conf) for p in ordered]


def _merge_one_many(one: str | None, many: list[str] | None) -> list[str]:
    out = [one] if one else []
    out += [x for x in (many or []) if x not in out]
    return out


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "array", str: "str", int: "int", float: "float", bool: "bool"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------ admin API: one object
# The admin API validates one object at a time (`validate_object`), with the same models and messages as
# `validate`, plus the collections the standalone config does not support yet (SSLs, credentials,
# plugin metadata): they can be stored and served; the data plane uses credentials only.
# (field, collection it names) per collection: what `validate_object` checks with `lookup`, and what
# keeps an object from being deleted while referenced.
REFERENCES: dict[str, tuple[tuple[str, str], ...]] = {
    "routes": (("upstream_id", "upstreams"), ("service_id", "services"), ("plugin_config_id", "plugin_configs")),
    "services": (("upstream_id", "upstreams"),),
    "consumers": (("group_id", "consumer_groups"),),
}

# (collection, id) -> the stored raw object, or None when there is none.
Lookup = Callable[[str, str], "dict[str, Any] | None"]


def valid_object_id(collection: str, obj_id: str) -> bool:
    """Whether `obj_id` is usable as an id (a username for consumers), with APISIX's rules."""
    key_field = "username" if collection == "consumers" else "id"
    return _object_key({key_field: obj_id}, key_field) == obj_id


def validate_object(
    collection: str, obj_id: str, raw: Any, get_plugin: GetPlugin, lookup: Lookup | None = None
) -> list[str]:
    """Validate one object of `collection` (a key of OBJECT_MODELS, or "plugin_metadata") stored
    under `obj_id`; returns the problems, [] when valid. Messages read like `validate`'s:
    `routes[1].upstream.nodes[0].port: required`.

    Alone, the object must be well formed (fields, plugin confs; a route must declare an upstream,
    upstream_id or service_id). With `lookup`, its references must exist (`routes[1].upstream_id:
    upstream "u9" not found`) and a route relying on a service needs a service with an upstream.
    An `id` (`username` for consumers) in `raw` must equal `obj_id`."""
    label = f"{collection}[{obj_id}]"
    if not isinstance(raw, dict):
        return [f"{label}: expected object, got {_type_name(raw)}"]
    if collection == "plugin_metadata":
        return _plugin_metadata_errors(label, obj_id, raw, get_plugin)
    model = OBJECT_MODELS.get(collection)
    if model is None:
        return [f"{collection}: unknown collection"]
    errors: list[str] = []
    key_field = "username" if collection == "consumers" else "id"
    if not valid_object_id(collection, obj_id):
        errors.append(f"{label}.{key_field}: {_bad_key_message(obj_id, key_field)}")
    if key_field in raw and _object_key(raw, key_field) != obj_id:
        errors.append(f"{label}.{key_field}: {raw[key_field]!r} does not match {obj_id!r} (the id in the path)")
    body = {k: v for k, v in raw.items() if k != key_field}
    consumer = collection in ("consumers", "credentials")
    if "plugins" in model.__struct_fields__:
        obj = _validate_object(label, model, body, get_plugin, errors, consumer=consumer)  # type: ignore[arg-type]
        if lookup is not None and obj is not None:
            errors += _plugin_upstream_lookup_errors(label, obj.plugins, lookup)
    else:
        _convert(label, body, model, errors)
    if collection == "ssls":
        errors += _ssl_errors(label, raw)
    if collection == "routes":
        errors += _route_upstream_errors(label, raw, lookup)
    if lookup is not None:
        for field, target in REFERENCES.get(collection, ()):
            ref = raw.get(field)
            if isinstance(ref, (str, int)) and not isinstance(ref, bool) and lookup(target, str(ref)) is None:
                errors.append(f'{label}.{field}: {field.removesuffix("_id")} "{ref}" not found')
    return errors


def _route_upstream_errors(label: str, raw: dict[str, Any], lookup: Lookup | None) -> list[str]:
    missing = [f"{label}.upstream: required (no upstream, upstream_id, or service with an upstream)"]
    if raw.get("upstream") is not None or raw.get("upstream_id") is not None:
        return []
    sid = raw.get("service_id")
    if sid is None:
        return missing
    if lookup is None or not isinstance(sid, (str, int)) or isinstance(sid, bool):
        return []
    service = lookup("services", str(sid))
    if service is None:  # reported as a broken reference
        return []
    return [] if service.get("upstream") is not None or service.get("upstream_id") is not None else missing


def _ssl_errors(label: str, raw: dict[str, Any]) -> list[str]:
    errors = []
    for field in ("cert", "key"):
        if raw.get(field) is None:
            errors.append(f"{label}.{field}: required")
    if raw.get("type", "server") == "server" and raw.get("sni") is None and raw.get("snis") is None:
        errors.append(f"{label}.snis: required (set sni or snis)")
    certs, keys = raw.get("certs"), raw.get("keys")
    if isinstance(certs, list) and isinstance(keys, list) and len(certs) != len(keys):
        errors.append(f"{label}.keys: must have as many entries as certs")
    pems = [("cert", raw.get("cert"), "CERTIFICATE"), ("key", raw.get("key"), "PRIVATE KEY")]
    pems += [(f"certs[{i}]", c, "CERTIFICATE") for i, c in enumerate(certs if isinstance(certs, list) else [])]
    pems += [(f"keys[{i}]", k, "PRIVATE KEY") for i, k in enumerate(keys if isinstance(keys, list) else [])]
    for where, pem, kind in pems:
        if isinstance(pem, str) and not re.search(rf"-----BEGIN [A-Z ]*{kind}-----", pem):
            errors.append(f"{label}.{where}: not a PEM {kind.lower()}")
    return errors


def _plugin_metadata_errors(label: str, name: str, raw: dict[str, Any], get_plugin: GetPlugin) -> list[str]:
    cls = get_plugin(name)
    if cls is None:
        return [f'{label}: unknown plugin "{name}"']
    errors = []
    if "id" in raw and raw["id"] != name:
        errors.append(f"{label}.id: {raw['id']!r} does not match {name!r} (the plugin name in the path)")
    body = {k: v for k, v in raw.items() if k not in ("id", "create_time", "update_time")}
    schema = getattr(cls, "MetadataConfig", None)  # APISIX's metadata_schema; any object when absent
    if schema is not None:
        _convert(label, body, schema, errors)
    return errors
