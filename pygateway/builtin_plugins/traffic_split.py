"""APISIX `traffic-split`: send a share of a route's traffic to other upstreams (canary, blue-green, A/B).

    traffic-split:
      rules:
        - match: [{vars: [["http_release", "==", "new"]]}]     # optional; any match entry may hold
          weighted_upstreams:
            - upstream_id: canary                                # or upstream: {nodes: {...}, ...}
              weight: 3
            - weight: 1                                          # no upstream: the route's own

The first rule whose `match` holds (or that has none) applies; a request that matches no rule goes to the
route's upstream. Within a rule the upstream is picked by smooth weighted round robin, and within the
picked upstream its node likewise (both deterministic per worker: weights 3:1 over 40 requests on one
worker give exactly 30/10). `vars` are lua-resty-expr expressions over request variables.

`upstream_id` must name an upstream of the config (checked when the config loads; an edited upstream
takes effect on reload). Differences from APISIX, all checked at config load: a plugin upstream is
`roundrobin` over `http` nodes; it is reached with the route upstream's timeouts and retries; its
`pass_host` `node` / `rewrite` set the Host header (`pass` keeps the route's behaviour).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

import msgspec

from pygateway import Plugin

from ._common import Expr, compile_expr, invalid, request_var

if TYPE_CHECKING:
    from pygateway import Request
    from pygateway.config.models import Upstream

T = TypeVar("T")


class Match(msgspec.Struct, forbid_unknown_fields=True):
    vars: list[Any] | None = None


class WeightedUpstream(msgspec.Struct, forbid_unknown_fields=True):
    upstream_id: str | int | None = None
    upstream: dict[str, Any] | None = None
    weight: Annotated[int, msgspec.Meta(ge=0)] = 1


def _route_only() -> list[WeightedUpstream]:
    return [WeightedUpstream()]


class Rule(msgspec.Struct, forbid_unknown_fields=True):
    match: list[Match] | None = None
    weighted_upstreams: Annotated[list[WeightedUpstream], msgspec.Meta(min_length=1, max_length=20)] = (
        msgspec.field(default_factory=_route_only)
    )


class SmoothWeighted(Generic[T]):
    """nginx's smooth weighted round robin: exact shares, evenly spread. Thread-safe (hooks may run on
    the I/O thread or the asyncio thread)."""

    def __init__(self, items: Sequence[tuple[T, int]]) -> None:
        live = [(item, w) for item, w in items if w > 0]
        self.items = [item for item, _ in live]
        self.weights = [w for _, w in live]
        self.current = [0] * len(live)
        self.total = sum(self.weights)
        self.lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.items)

    def next(self) -> T:
        with self.lock:
            best = 0
            for i, w in enumerate(self.weights):
                self.current[i] += w
                if self.current[i] > self.current[best]:
                    best = i
            self.current[best] -= self.total
            return self.items[best]


class _Target:
    """A plugin upstream: its nodes in rotation and the Host header its pass_host asks for."""

    def __init__(self, up: Upstream) -> None:
        assert isinstance(up.nodes, list)  # normalized by validation
        self.nodes = SmoothWeighted([((n.host, n.port), n.weight) for n in up.nodes])
        self.host_header: dict[tuple[str, int], str] = {}
        for n in up.nodes:
            if up.pass_host == "node":
                self.host_header[(n.host, n.port)] = n.host if n.port == 80 else f"{n.host}:{n.port}"
            elif up.pass_host == "rewrite" and up.upstream_host:
                self.host_header[(n.host, n.port)] = up.upstream_host


def _check_upstream(raw: Any, path: str) -> Upstream:
    # Imported here: a worker loads every shipped plugin, and only one running traffic-split needs
    # the validator.
    from pygateway.config.validate import parse_upstream

    up, errors = parse_upstream(raw)
    if errors:
        where, _, msg = errors[0].partition(": ")
        raise invalid(f"{path}{where}", msg)
    assert up is not None and isinstance(up.nodes, list)
    if up.type != "roundrobin":
        raise invalid(f"{path}.type", 'only "roundrobin" is supported for traffic-split upstreams')
    if up.scheme != "http":
        raise invalid(f"{path}.scheme", 'only "http" is supported for traffic-split upstreams')
    if not any(n.weight > 0 for n in up.nodes):
        raise invalid(f"{path}.nodes", "at least one node with a weight above 0 is required")
    return up


class TrafficSplit(Plugin):
    name = "traffic-split"
    priority = 966

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        rules: list[Rule] | None = None

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        cls._compile(conf)
        return conf

    @staticmethod
    def _compile(conf: Any) -> list[tuple[list[Expr] | None, SmoothWeighted[_Target | None]]]:
        """Per rule: its match expressions (None = always) and its upstreams in rotation (None = the
        route's own upstream). An `upstream_id` not resolved yet (config validation) stands for the
        route's upstream here; `resolve_upstreams` fills it in before workers build the plugin."""
        rules: list[tuple[list[Expr] | None, SmoothWeighted[_Target | None]]] = []
        for i, rule in enumerate(conf.rules or []):
            exprs: list[Expr] | None = None
            if rule.match:  # absent or empty: the rule always applies
                exprs = []
                for j, m in enumerate(rule.match):
                    if m.vars is not None:
                        exprs.append(compile_expr(m.vars, f"rules[{i}].match[{j}].vars"))
                    else:
                        exprs.append(lambda _get: True)
            targets: list[tuple[_Target | None, int]] = []
            for j, wu in enumerate(rule.weighted_upstreams):
                target = None
                if wu.upstream is not None:
                    target = _Target(_check_upstream(wu.upstream, f"rules[{i}].weighted_upstreams[{j}].upstream"))
                targets.append((target, wu.weight))
            rules.append((exprs, SmoothWeighted(targets)))
        return rules

    @classmethod
    def upstream_refs(cls, conf: Any) -> list[tuple[str, str | int]]:
        return [
            (f"rules[{i}].weighted_upstreams[{j}].upstream_id", wu.upstream_id)
            for i, rule in enumerate(conf.rules or [])
            for j, wu in enumerate(rule.weighted_upstreams)
            if wu.upstream_id is not None
        ]

    @classmethod
    def resolve_upstreams(cls, conf: Any, upstreams: dict[str, Upstream]) -> Any:
        """A copy of `conf` whose `upstream_id` entries carry the upstream they name (which wins over
        an inline `upstream`, as in APISIX)."""
        if not cls.upstream_refs(conf):
            return conf
        rules = []
        for rule in conf.rules:
            wus = [
                msgspec.structs.replace(wu, upstream=msgspec.to_builtins(upstreams[str(wu.upstream_id)]))
                if wu.upstream_id is not None
                else wu
                for wu in rule.weighted_upstreams
            ]
            rules.append(msgspec.structs.replace(rule, weighted_upstreams=wus))
        return msgspec.structs.replace(conf, rules=rules)

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        for i, rule in enumerate(conf.rules or []):
            for j, wu in enumerate(rule.weighted_upstreams):
                if wu.upstream_id is not None and wu.upstream is None:
                    raise ValueError(f"traffic-split: rules[{i}].weighted_upstreams[{j}]: upstream_id not resolved")
        self.rules = self._compile(conf)

    def access(self, req: Request, ctx: dict[str, Any]) -> None:
        def get(name: str) -> str | None:
            return request_var(req, name)

        for exprs, rotation in self.rules:
            if exprs is None or any(e(get) for e in exprs):
                if not rotation:
                    return  # every weight is 0: the route's upstream
                target = rotation.next()
                if target is not None:
                    node = target.nodes.next()
                    req.set_upstream(*node)
                    host = target.host_header.get(node)
                    if host is not None:
                        req.headers["host"] = host
                return
