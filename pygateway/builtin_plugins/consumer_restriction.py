"""APISIX `consumer-restriction`: allow or reject requests by the authenticated consumer's name
(`type: consumer_name`, the default), its consumer group (`consumer_group_id`), the matched route's id
(`route_id`) or that route's service (`service_id`).

`blacklist` is checked first (a hit is rejected), then `whitelist` (a miss is rejected unless
`allowed_by_methods` lets that consumer use the request method). Rejections answer `rejected_code`
(default 403) with `{"message": rejected_msg or "The <type> is forbidden."}`; a request without a
consumer (no auth plugin authenticated it) gets 401 `{"message": "Missing authentication or identity
verification."}`; so does a request whose consumer has no group (`consumer_group_id`) or whose route
has no service (`service_id`). Runs in `access`, after the auth plugins' `rewrite`. The group and
service ids come from `ctx` (set by `pygateway.worker.host.ContextChain`); the group is known only on routes
whose consumer was identified by a plugin with a `ConsumerConfig` (all the shipped auth plugins).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from pygateway import Plugin, Response

from ._common import invalid

if TYPE_CHECKING:
    from pygateway import Request

Method = Literal[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
]  # fmt: skip
Names = Annotated[list[str], msgspec.Meta(min_length=1)]


class MethodRule(msgspec.Struct, forbid_unknown_fields=True):
    user: str | None = None
    methods: Annotated[list[Method], msgspec.Meta(min_length=1)] | None = None


class ConsumerRestriction(Plugin):
    name = "consumer-restriction"
    priority = 2400

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        type: Literal["consumer_name", "consumer_group_id", "route_id", "service_id"] = "consumer_name"
        blacklist: Names | None = None
        whitelist: Names | None = None
        allowed_by_methods: list[MethodRule] | None = None
        rejected_code: Annotated[int, msgspec.Meta(ge=200, le=599)] = 403
        rejected_msg: str | None = None

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        if conf.blacklist is None and conf.whitelist is None and conf.allowed_by_methods is None:
            raise invalid("whitelist", "one of whitelist, blacklist or allowed_by_methods is required")
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.blacklist = frozenset(conf.blacklist or ())
        self.whitelist = frozenset(conf.whitelist) if conf.whitelist is not None else None
        # user -> allowed methods; the first rule naming a user wins (as in APISIX).
        self.methods: dict[str | None, frozenset[str]] = {}
        for rule in conf.allowed_by_methods or ():
            self.methods.setdefault(rule.user, frozenset(rule.methods or ()))
        self.rejection = Response(
            conf.rejected_code, {"message": conf.rejected_msg or f"The {conf.type} is forbidden."}
        )

    def access(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        kind = self.conf.type
        if kind == "consumer_name":
            value = req.consumer
        elif kind == "route_id":
            value = req.route_id
        else:
            value = ctx.get(kind)
        if not value:
            return Response(401, {"message": "Missing authentication or identity verification."})
        if value in self.blacklist:
            return self.rejection
        whitelisted = self.whitelist is not None and value in self.whitelist
        block = self.whitelist is not None and not whitelisted
        if self.methods and not whitelisted:
            allowed = self.methods.get(value)
            # A consumer no rule names is not restricted by method.
            block = block or (allowed is not None and req.method not in allowed)
        return self.rejection if block else None
