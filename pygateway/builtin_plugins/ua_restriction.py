"""APISIX `ua-restriction`: allow (`allowlist`) or reject (`denylist`) requests by their `User-Agent`.

Exactly one of `allowlist` / `denylist` is set: regexes searched (unanchored, like ngx.re.find) in the
whitespace-stripped User-Agent; they are compiled once, into one alternation. With several User-Agent
headers the request passes an allowlist when any of them matches, and fails a denylist when any of them
matches. A request without User-Agent is rejected unless `bypass_missing`. Rejections answer 403
`{"message": message}` (default "Not allowed"). Runs in `access`, like APISIX.

The names used before APISIX 2.13, `whitelist` / `blacklist`, are accepted for `allowlist` / `denylist`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from pygateway import Plugin, Response

from ._common import compile_regex, invalid

if TYPE_CHECKING:
    from pygateway import Request

Regexes = Annotated[list[str], msgspec.Meta(min_length=1)]


def compile_any(rules: list[str], path: str, flags: int = 0) -> Callable[[str], bool]:
    """A test for "any of the regexes `rules` is found in the string"; a bad regex is a config error
    naming `path[i]`. One alternation when the regexes combine (patterns with global inline flags such
    as a leading `(?i)` cannot be grouped), else one search per regex."""
    compiled = [compile_regex(rule, f"{path}[{i}]", flags) for i, rule in enumerate(rules)]
    try:
        combined = re.compile("|".join(f"(?:{r})" for r in rules), flags)
    except re.error:
        return lambda s: any(rx.search(s) is not None for rx in compiled)
    search = combined.search
    return lambda s: search(s) is not None


class UaRestriction(Plugin):
    name = "ua-restriction"
    priority = 2999

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        allowlist: Regexes | None = None
        denylist: Regexes | None = None
        bypass_missing: bool = False
        message: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] = "Not allowed"
        # Before APISIX 2.13.
        whitelist: Regexes | None = None
        blacklist: Regexes | None = None

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        for old, new in (("whitelist", "allowlist"), ("blacklist", "denylist")):
            if getattr(conf, old) is not None:
                if getattr(conf, new) is not None:
                    raise invalid(old, f"{old} is the old name of {new}: set only {new}")
                setattr(conf, new, getattr(conf, old))
                setattr(conf, old, None)
        if conf.allowlist is not None and conf.denylist is not None:
            raise invalid("denylist", "allowlist and denylist cannot be configured at the same time")
        if conf.allowlist is None and conf.denylist is None:
            raise invalid("allowlist", "one of allowlist or denylist is required")
        field = "allowlist" if conf.allowlist is not None else "denylist"
        compile_any(getattr(conf, field), field)
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.allow = conf.allowlist is not None
        field = "allowlist" if self.allow else "denylist"
        self.match = compile_any(getattr(conf, field), field)
        self.body = {"message": conf.message}

    def access(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        agents = req.headers.getall("user-agent")
        if not agents:
            return None if self.conf.bypass_missing else Response(403, self.body)
        hit = any(self.match(ua.strip()) for ua in agents)
        return None if hit == self.allow else Response(403, self.body)
