"""APISIX `uri-blocker`: reject requests whose URI matches any of the `block_rules` regexes.

The rules are searched (unanchored, like ngx.re.find) in the request URI with its query string
(`$request_uri`: `/path?a=b`; the path as routing saw it, normalized), ignoring case when
`case_insensitive`. They are checked and compiled once, into one alternation; an invalid regex is a config
error naming `block_rules[i]`. A blocked request gets `rejected_code` (default 403) with
`{"error_msg": rejected_msg}`, or an empty body when `rejected_msg` is unset. Runs in `rewrite`, like
APISIX.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from pygateway import Plugin, Response

from ._common import invalid
from .ua_restriction import compile_any

if TYPE_CHECKING:
    from pygateway import Request

Rules = Annotated[
    list[Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]], msgspec.Meta(min_length=1)
]


class UriBlocker(Plugin):
    name = "uri-blocker"
    priority = 2900

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        block_rules: Rules
        rejected_code: Annotated[int, msgspec.Meta(ge=200, le=599)] = 403
        rejected_msg: Annotated[str, msgspec.Meta(min_length=1)] | None = None
        case_insensitive: bool = False

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        if len(set(conf.block_rules)) != len(conf.block_rules):
            raise invalid("block_rules", "items must be unique")
        cls._matcher(conf)
        return conf

    @staticmethod
    def _matcher(conf: Any) -> Any:
        return compile_any(conf.block_rules, "block_rules", re.IGNORECASE if conf.case_insensitive else 0)

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        self.match = self._matcher(conf)
        self.body = {"error_msg": conf.rejected_msg} if conf.rejected_msg else b""

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        query = req.query
        if self.match(f"{req.path}?{query}" if query else req.path):
            return Response(self.conf.rejected_code, self.body)
        return None
