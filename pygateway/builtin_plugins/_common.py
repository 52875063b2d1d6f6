"""Helpers shared by the shipped plugins (not a plugin module: the registry skips `_` modules).

- `resolve`: APISIX/nginx variables in config strings (`$uri`, `$arg_x`, `${http_x_y}`, `$remote_addr`...).
- `compile_template`: ngx.re.sub replacement templates (`$1`, `${1}`, `$0`, `$$`).
- `compile_expr`: lua-resty-expr conditions (`[["status", "==", 200], ["http_x", "~~", "^a"]]`).
- `invalid`: a config error naming a field, in the shape the config loader reports as `<label>.<field>: msg`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

Getter = Callable[[str], "str | None"]

# Header names are RFC 9110 tokens.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# `$name` or `${name}`, not preceded by a backslash (APISIX core.utils.resolve_var).
_VAR_REF = re.compile(r"(?<!\\)\$(?:\{(\w+)\}|(\w+))")


def invalid(path: str, msg: str) -> msgspec.ValidationError:
    """A validation error at `$.path` (msgspec's own format, which the config loader understands)."""
    return msgspec.ValidationError(f"{msg} - at `$.{path}`")


def check_header_name(name: str, path: str) -> str:
    if not TOKEN.fullmatch(name):
        raise invalid(path, f"invalid header name {name!r}")
    return name


def header_pairs(obj: Any, path: str) -> list[tuple[str, str]]:
    """`{header: value}` from a plugin config as (lowercased name, value) pairs, checked."""
    if not isinstance(obj, dict) or not obj:
        raise invalid(path, "expected a non-empty object of header: value")
    out = []
    for k, v in obj.items():
        check_header_name(str(k), f"{path}.{k}")
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise invalid(f"{path}.{k}", "expected a string or number")
        out.append((str(k).lower(), scalar(v)))
    return out


def scalar(value: Any) -> str:
    """A header value from config (string or number) as text; 1.0 -> "1" like Lua's tostring."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _header_var(headers: Any, suffix: str) -> str | None:
    return headers.get(suffix.replace("_", "-").lower())


def _cookie(headers: Any, name: str) -> str | None:
    for line in headers.getall("cookie"):
        for part in line.split(";"):
            k, sep, v = part.strip().partition("=")
            if sep and k == name:
                return v
    return None


def request_var(req: Any, name: str, resp: Any = None) -> str | None:
    """The value of an nginx/APISIX variable, or None when unset. `resp` adds `status`,
    `upstream_status` and response headers (`sent_http_*`, `upstream_http_*`)."""
    if name.startswith("arg_"):
        return req.args.get(name[4:])
    if name.startswith("http_"):
        return _header_var(req.headers, name[5:])
    if name.startswith("cookie_"):
        return _cookie(req.headers, name[7:])
    if resp is not None:
        for prefix in ("sent_http_", "upstream_http_"):
            if name.startswith(prefix):
                return _header_var(resp.headers, name[len(prefix) :])
        if name in ("status", "upstream_status"):
            return str(resp.status)
    if name == "uri":
        return req.path
    if name in ("args", "query_string"):
        return req.query or None
    if name == "request_uri":
        return f"{req.path}?{req.query}" if req.query else req.path
    if name == "is_args":
        return "?" if req.query else ""
    if name == "host":
        return req.host
    if name == "remote_addr":
        return req.client_addr
    if name == "remote_port":
        return str(req.client_port)
    if name == "scheme":
        return req.scheme
    if name == "request_method":
        return req.method
    if name == "route_id":
        return req.route_id
    if name == "consumer_name":
        return req.consumer
    return None


def has_vars(template: str) -> bool:
    return _VAR_REF.search(template) is not None


def resolve(template: str, req: Any, resp: Any = None, captures: re.Match[str] | None = None) -> str:
    """Substitute variables; unknown or unset ones become "" (as in APISIX). With `captures`
    (a regex_uri match), `$1`... are its groups."""
    if "$" not in template:
        return template

    def sub(m: re.Match[str]) -> str:
        name = m[1] or m[2]
        if name.isdigit():
            if captures is None or int(name) > (captures.re.groups or 0):
                return ""
            return captures.group(int(name)) or ""
        value = request_var(req, name, resp)
        return "" if value is None else value

    return _VAR_REF.sub(sub, template)


# ---------------------------------------------------------------------------- ngx.re.sub templates
_TPL_PART = re.compile(r"\$(?:(\d+)|\{(\d+)\}|(\$))|\$")


def compile_template(template: str, groups: int, path: str) -> Callable[[re.Match[str]], str]:
    """An ngx.re.sub replacement (`$0`..`$N`, `${N}`, `$$` for a literal `$`) as a function for re.sub."""
    parts: list[str | int] = []
    pos = 0
    for m in _TPL_PART.finditer(template):
        parts.append(template[pos : m.start()])
        pos = m.end()
        if m[3]:
            parts.append("$")
            continue
        num = m[1] or m[2]
        if num is None:
            raise invalid(path, f"invalid capturing variable in {template!r} (use $N, ${{N}} or $$)")
        if int(num) > groups:
            raise invalid(path, f"{template!r} refers to group ${num} but the regex has {groups} groups")
        parts.append(int(num))
    parts.append(template[pos:])
    parts = [p for p in parts if p != ""]
    if all(isinstance(p, str) for p in parts):
        literal = "".join(parts)  # type: ignore[arg-type]
        return lambda _m: literal
    return lambda m: "".join(p if isinstance(p, str) else (m.group(p) or "") for p in parts)


def compile_regex(pattern: str, path: str, flags: int = 0) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise invalid(path, f"invalid regex {pattern!r}: {exc}") from None


# ---------------------------------------------------------------------------- lua-resty-expr
_LOGIC = ("AND", "OR", "!AND", "!OR")
Expr = Callable[[Getter], bool]


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _eq(left: str | None, right: Any) -> bool:
    if left is None:
        return right is None
    if isinstance(right, (int, float)) and not isinstance(right, bool):
        return _number(left) == right
    return left == right


def _cmp(op: str) -> Callable[[str | None, Any], bool]:
    def f(left: str | None, right: Any) -> bool:
        lv, rv = _number(left), _number(right)
        if lv is None or rv is None:
            return False
        return {">": lv > rv, ">=": lv >= rv, "<": lv < rv, "<=": lv <= rv}[op]

    return f


def _leaf(rule: list[Any], path: str) -> Expr:
    if len(rule) == 4 and rule[1] == "!":
        var, _, op, value = rule
        negate = True
    elif len(rule) == 3:
        var, op, value = rule
        negate = False
    else:
        raise invalid(path, 'expected [var, operator, value] or [var, "!", operator, value]')
    if not isinstance(var, str) or not var:
        raise invalid(path, "the variable name must be a non-empty string")
    test: Callable[[str | None, Any], bool]
    if op == "==":
        test = _eq
    elif op == "~=":
        test = lambda left, right: not _eq(left, right)
    elif op in (">", ">=", "<", "<="):
        test = _cmp(op)
    elif op in ("~~", "~*"):
        if not isinstance(value, str):
            raise invalid(path, f"operator {op} needs a regex string")
        rx = compile_regex(value, path, re.IGNORECASE if op == "~*" else 0)
        test = lambda left, _right: left is not None and rx.search(left) is not None
    elif op == "in":
        if not isinstance(value, list):
            raise invalid(path, "operator in needs an array value")
        test = lambda left, right: any(_eq(left, v) for v in right)
    else:
        raise invalid(path, f"unsupported operator {op!r} (supported: ==, ~=, >, >=, <, <=, ~~, ~*, in)")

    def ev(get: Getter) -> bool:
        return test(get(var), value) != negate

    return ev


def compile_expr(rules: Any, path: str) -> Expr:
    """A lua-resty-expr rule list: `[rule, ...]` (all must hold), or `["OR"|"AND"|"!OR"|"!AND", rule, ...]`;
    each rule is `[var, op, value]`, `[var, "!", op, value]` or a nested logic list."""
    if not isinstance(rules, list):
        raise invalid(path, "expected an array of rules")
    logic, start = "AND", 0
    if rules and isinstance(rules[0], str):
        if rules[0] not in _LOGIC:
            raise invalid(path, 'expected an array of rules, e.g. [["status", "==", 200]]')
        logic, start = rules[0], 1
    children: list[Expr] = []
    for i in range(start, len(rules)):
        item, p = rules[i], f"{path}[{i}]"
        if not isinstance(item, list) or not item:
            raise invalid(p, "expected a rule [var, operator, value]")
        children.append(compile_expr(item, p) if item[0] in _LOGIC else _leaf(item, p))
    any_of, negate = logic.endswith("OR"), logic.startswith("!")

    def ev(get: Getter) -> bool:
        ok = any(c(get) for c in children) if any_of else all(c(get) for c in children)
        return ok != negate

    return ev
