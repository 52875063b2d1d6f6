"""APISIX `referer-restriction`: allow (`whitelist`) or reject (`blacklist`) requests by the host of
their `Referer` header.

Exactly one of `whitelist` / `blacklist` is set: host names, where a leading `*` makes a suffix match
(`*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`). The host is taken
from `[http[s]:]//host[:port]...` as lua-resty-http's `parse_uri` does; a Referer that is missing or
does not parse is rejected unless `bypass_missing` (whatever the list). Rejections answer 403
`{"message": message}` (default "Your referer host is not allowed"). Runs in `access`, like APISIX.
Host names are compared case-insensitively.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from pygateway import Plugin, Response

from ._common import invalid

if TYPE_CHECKING:
    from pygateway import Request

# APISIX core.schema.host_def.
Host = Annotated[str, msgspec.Meta(pattern=r"^\*?[0-9a-zA-Z-._\[\]:]+$")]
Hosts = Annotated[list[Host], msgspec.Meta(min_length=1)]
# lua-resty-http parse_uri: optional http/https scheme, `//`, then the host (or a bracketed IPv6 literal).
_REFERER = re.compile(r"(?:https?:)?//([^\[\]:/?]+|\[.+\])(?::\d+)?", re.IGNORECASE)


def referer_host(referer: str) -> str | None:
    """The (lowercased) host of a Referer value, or None when malformed."""
    m = _REFERER.match(referer)
    return m[1].lower() if m else None


class RefererRestriction(Plugin):
    name = "referer-restriction"
    priority = 2990

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        whitelist: Hosts | None = None
        blacklist: Hosts | None = None
        bypass_missing: bool = False
        message: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] = (
            "Your referer host is not allowed"
        )

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        if conf.whitelist is not None and conf.blacklist is not None:
            raise invalid("blacklist", "whitelist and blacklist cannot be configured at the same time")
        if conf.whitelist is None and conf.blacklist is None:
            raise invalid("whitelist", "one of whitelist or blacklist is required")
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.allow = conf.whitelist is not None
        hosts = [h.lower() for h in (conf.whitelist if self.allow else conf.blacklist)]
        self.exact = frozenset(h for h in hosts if not h.startswith("*"))
        self.suffixes = tuple(h[1:] for h in hosts if h.startswith("*"))
        self.body = {"message": conf.message}

    def access(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        referer = req.headers.get("referer")
        host = None if referer is None else referer_host(referer)
        if host is None:
            return None if self.conf.bypass_missing else Response(403, self.body)
        hit = host in self.exact or host.endswith(self.suffixes)
        return None if hit == self.allow else Response(403, self.body)
