"""APISIX `ip-restriction`: allow (`whitelist`) or reject (`blacklist`) clients by IP address.

Exactly one of `whitelist` / `blacklist` is set: a list of IPv4/IPv6 addresses or CIDRs (`10.0.0.0/8`,
`::1`, `fe80::/10`). The client address (`$remote_addr`) is matched with `_core.CidrSet`, built once per
config (a binary search however long the list); an IPv4-mapped IPv6 client (`::ffff:a.b.c.d`) matches
IPv4 networks. A rejected request gets `response_code` (403, or 404) with `{"message": message}`
(default "Your IP address is not allowed"). Runs in `access`, like APISIX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from pygateway import Plugin, Response
from pygateway._core import CidrSet

from ._common import invalid

if TYPE_CHECKING:
    from pygateway import Request

Cidrs = Annotated[list[str], msgspec.Meta(min_length=1)]


def _cidr_set(entries: list[str], path: str) -> CidrSet:
    try:
        return CidrSet(entries)
    except ValueError:
        for i, entry in enumerate(entries):
            try:
                CidrSet([entry])
            except ValueError:
                raise invalid(f"{path}[{i}]", f"invalid ip address: {entry}") from None
        raise  # not reached: some entry is bad


class IpRestriction(Plugin):
    name = "ip-restriction"
    priority = 3000

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        whitelist: Cidrs | None = None
        blacklist: Cidrs | None = None
        message: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] = (
            "Your IP address is not allowed"
        )
        response_code: Annotated[int, msgspec.Meta(ge=403, le=404)] = 403

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        if conf.whitelist is not None and conf.blacklist is not None:
            raise invalid("blacklist", "whitelist and blacklist cannot be configured at the same time")
        if conf.whitelist is None and conf.blacklist is None:
            raise invalid("whitelist", "one of whitelist or blacklist is required")
        field = "whitelist" if conf.whitelist is not None else "blacklist"
        _cidr_set(getattr(conf, field), field)
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.allow = conf.whitelist is not None
        field = "whitelist" if self.allow else "blacklist"
        self.cidrs = _cidr_set(getattr(conf, field), field)
        self.body = {"message": conf.message}

    def access(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        if self.cidrs.contains(req.client_addr) == self.allow:
            return None
        return Response(self.conf.response_code, self.body)
