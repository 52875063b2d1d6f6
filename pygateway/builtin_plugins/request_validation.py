"""APISIX `request-validation`: check request headers and/or body against JSON schemas before proxying.

- `header_schema`: validated against the request headers as an object (names match in any case; a
  repeated header is an array of its values).
- `body_schema`: validated against the body, parsed as a form when Content-Type is
  application/x-www-form-urlencoded (a repeated field is an array), else as JSON. A valid JSON body is
  re-encoded before proxying, so the upstream sees exactly what was checked (duplicate keys resolved).
- `rejected_code` (400) and `rejected_msg` (default: the validation error, which names the field, e.g.
  `property "name" is required`) make the answer to an invalid request.

The schemas use this JSON Schema subset (draft 4..7, checked when the config is loaded): type, enum,
const, properties, required, additionalProperties, patternProperties, min/maxProperties, items (schema or
tuple), min/maxItems, uniqueItems, min/maxLength, pattern, minimum, maximum, exclusiveMinimum/Maximum
(number or draft-4 boolean), multipleOf, allOf, anyOf, oneOf, not. Annotations (title, description,
default, examples, format, $schema, $id, $comment, definitions) are accepted and not enforced; other
keywords (e.g. $ref, dependencies) are rejected. Routes with this plugin read the whole request body
(at most 1 MiB, else 413) only when `body_schema` is set.
"""

from __future__ import annotations

import functools
import math
import re
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qsl

import msgspec
import orjson

from pygateway import Plugin, Response

from ._common import invalid, scalar

if TYPE_CHECKING:
    from pygateway import Request

_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_ANNOTATIONS = ("title", "description", "default", "examples", "example", "format", "$schema", "$id", "$comment",
                "definitions", "readOnly", "writeOnly", "deprecated")  # fmt: skip
_NUMBER_KEYS = ("minimum", "maximum", "multipleOf")
_COUNT_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_SUPPORTED = frozenset((
    "type", "enum", "const", "properties", "required", "additionalProperties", "patternProperties",
    "items", "uniqueItems", "pattern", "exclusiveMinimum", "exclusiveMaximum", "allOf", "anyOf", "oneOf", "not",
    *_NUMBER_KEYS, *_COUNT_KEYS, *_ANNOTATIONS,
))  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---------------------------------------------------------------------------- config-time check
def check_schema(schema: Any, path: str) -> None:
    """Raise a validation error at `path` when `schema` is not a schema this module can enforce."""
    if not isinstance(schema, dict):
        raise invalid(path, "expected a schema object")
    for key, val in schema.items():
        p = f"{path}.{key}"
        if key not in _SUPPORTED:
            raise invalid(p, f"unsupported schema keyword {key!r}")
        if key == "type":
            types = val if isinstance(val, list) else [val]
            if not types or any(t not in _TYPES for t in types):
                raise invalid(p, f"expected one of {', '.join(_TYPES)} (or an array of them)")
        elif key in ("enum", "allOf", "anyOf", "oneOf") and (not isinstance(val, list) or not val):
            raise invalid(p, "expected a non-empty array")
        elif key in ("allOf", "anyOf", "oneOf"):
            for i, sub in enumerate(val):
                check_schema(sub, f"{p}[{i}]")
        elif key in ("properties", "patternProperties"):
            if not isinstance(val, dict):
                raise invalid(p, "expected an object of schemas")
            for name, sub in val.items():
                if key == "patternProperties":
                    _check_regex(name, f"{p}.{name}")
                check_schema(sub, f"{p}.{name}")
        elif key == "required" and (not isinstance(val, list) or not all(isinstance(n, str) for n in val)):
            raise invalid(p, "expected an array of property names")
        elif key in ("additionalProperties", "items") and not isinstance(val, bool):
            subs = val if key == "items" and isinstance(val, list) else [val]
            for i, sub in enumerate(subs):
                check_schema(sub, f"{p}[{i}]" if subs is val else p)
        elif key == "not":
            check_schema(val, p)
        elif key == "pattern":
            _check_regex(val, p)
        elif key in _NUMBER_KEYS and (not _is_num(val) or (key == "multipleOf" and val <= 0)):
            raise invalid(p, "expected a number" + (" > 0" if key == "multipleOf" else ""))
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not (_is_num(val) or isinstance(val, bool)):
            raise invalid(p, "expected a number (or a draft-4 boolean)")
        elif key in _COUNT_KEYS and (not isinstance(val, int) or isinstance(val, bool) or val < 0):
            raise invalid(p, "expected a non-negative integer")
        elif key == "uniqueItems" and not isinstance(val, bool):
            raise invalid(p, "expected a boolean")


def _check_regex(pattern: Any, path: str) -> None:
    if not isinstance(pattern, str):
        raise invalid(path, "expected a regex string")
    try:
        _rx(pattern)
    except re.error as exc:
        raise invalid(path, f"invalid regex {pattern!r}: {exc}") from None


# ---------------------------------------------------------------------------- validation
def _type_of(v: Any) -> str:
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    if isinstance(v, str):
        return "string"
    if isinstance(v, bool):
        return "boolean"
    if v is None:
        return "null"
    return "number"


def _has_type(v: Any, t: str) -> bool:
    actual = _type_of(v)
    if t == "integer":
        return actual == "number" and (isinstance(v, int) or (math.isfinite(v) and float(v).is_integer()))
    return actual == t


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0 but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Headers(dict):  # type: ignore[type-arg]
    """Request headers: lower-case keys, looked up in any case (like nginx's header table)."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(key.lower())


def validate(schema: dict[str, Any], v: Any) -> str | None:
    """None when `v` matches `schema`, else the error in APISIX's (lua jsonschema) wording."""
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_has_type(v, t) for t in types):
            return f"wrong type: expected {' or '.join(types)}, got {_type_of(v)}"
    if "enum" in schema and not any(_same(v, e) for e in schema["enum"]):
        return "matches none of the enum values"
    if "const" in schema and not _same(v, schema["const"]):
        return "failed to check const value"
    if isinstance(v, str):
        n = len(v)
        if "minLength" in schema and n < schema["minLength"]:
            return f"string too short, expected at least {schema['minLength']}, got {n}"
        if "maxLength" in schema and n > schema["maxLength"]:
            return f"string too long, expected at most {schema['maxLength']}, got {n}"
        if "pattern" in schema and not _rx(schema["pattern"]).search(v):
            return f"failed to match pattern {_quote(schema['pattern'])} with {_quote(v)}"
    elif _type_of(v) == "number":
        if (err := _check_number(schema, v)) is not None:
            return err
    elif isinstance(v, list):
        if "minItems" in schema and len(v) < schema["minItems"]:
            return f"expect array to have at least {schema['minItems']} items"
        if "maxItems" in schema and len(v) > schema["maxItems"]:
            return f"expect array to have at most {schema['maxItems']} items"
        items = schema.get("items")
        for i, item in enumerate(v):
            sub = items[i] if isinstance(items, list) and i < len(items) else items
            if isinstance(sub, dict) and (err := validate(sub, item)) is not None:
                return f"failed to validate item {i + 1}: {err}"
        if schema.get("uniqueItems"):
            for i in range(len(v)):
                for j in range(i + 1, len(v)):
                    if _same(v[i], v[j]):
                        return f"expected unique items but items {i + 1} and {j + 1} are equal"
    elif isinstance(v, dict) and (err := _check_object(schema, v)) is not None:
        return err
    for i, sub in enumerate(schema.get("allOf", ())):
        if (err := validate(sub, v)) is not None:
            return f"allOf {i + 1} failed: {err}"
    if "anyOf" in schema and all(validate(sub, v) is not None for sub in schema["anyOf"]):
        return "object matches none of the alternatives"
    if "oneOf" in schema:
        matched = [i + 1 for i, sub in enumerate(schema["oneOf"]) if validate(sub, v) is None]
        if not matched:
            return "value should match only one schema, but matches none"
        if len(matched) > 1:
            return (
                f"value should match only one schema, but matches both schemas {matched[0]} and {matched[1]}"
            )
    if "not" in schema and validate(schema["not"], v) is None:
        return "value wasn't supposed to match schema"
    return None


def _check_number(schema: dict[str, Any], v: float) -> str | None:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if xlo is True and lo is not None and v <= lo:
        return f"expected {scalar(v)} to be greater than {scalar(lo)}"
    if lo is not None and v < lo:
        return f"expected {scalar(v)} to be at least {scalar(lo)}"
    if xhi is True and hi is not None and v >= hi:
        return f"expected {scalar(v)} to be smaller than {scalar(hi)}"
    if hi is not None and v > hi:
        return f"expected {scalar(v)} to be at most {scalar(hi)}"
    if xlo is not None and _is_num(xlo) and v <= xlo:
        return f"expected {scalar(v)} to be greater than {scalar(xlo)}"
    if xhi is not None and _is_num(xhi) and v >= xhi:
        return f"expected {scalar(v)} to be smaller than {scalar(xhi)}"
    if "multipleOf" in schema:
        q = v / schema["multipleOf"]
        if abs(q - round(q)) > 1e-9:
            return f"expected {scalar(v)} to be a multiple of {scalar(schema['multipleOf'])}"
    return None


def _check_object(schema: dict[str, Any], v: dict[str, Any]) -> str | None:
    if "minProperties" in schema and len(v) < schema["minProperties"]:
        return f"expect object to have at least {schema['minProperties']} properties"
    if "maxProperties" in schema and len(v) > schema["maxProperties"]:
        return f"expect object to have at most {schema['maxProperties']} properties"
    for name in schema.get("required", ()):
        if name not in v:
            return f"property {_quote(name)} is required"
    props: dict[str, Any] = schema.get("properties", {})
    for name, sub in props.items():
        if name in v and (err := validate(sub, v[name])) is not None:
            return f"property {_quote(name)} validation failed: {err}"
    patterns: dict[str, Any] = schema.get("patternProperties", {})
    extra = schema.get("additionalProperties", True)
    known = {p.lower() for p in props} if isinstance(v, _Headers) else props
    for name in v:
        matched = False
        for pattern, sub in patterns.items():
            if _rx(pattern).search(name):
                matched = True
                if (err := validate(sub, dict.__getitem__(v, name))) is not None:
                    return f"property {_quote(name)} validation failed: {err}"
        if matched or name in known or extra is True:
            continue
        if extra is False:
            return f"additional properties forbidden, found {name}"
        if (err := validate(extra, dict.__getitem__(v, name))) is not None:
            return f"property {_quote(name)} validation failed: {err}"
    return None


# ---------------------------------------------------------------------------- the plugin
def _form(body: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, val in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        if k in out:
            prev = out[k]
            out[k] = [*prev, val] if isinstance(prev, list) else [prev, val]
        else:
            out[k] = val
    return out


class RequestValidation(Plugin):
    name = "request-validation"
    priority = 2800
    # The host asks each instance; instances without a body_schema turn this off (see __init__).
    needs_body = True

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        header_schema: dict[str, Any] | None = None
        body_schema: dict[str, Any] | None = None
        rejected_code: Annotated[int, msgspec.Meta(ge=200, le=599)] = 400
        rejected_msg: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None

    @classmethod
    def parse_config(cls, raw: Any) -> Any:
        conf = super().parse_config(raw)
        if conf.header_schema is None and conf.body_schema is None:
            raise msgspec.ValidationError("at least one of header_schema, body_schema is required")
        for field in ("header_schema", "body_schema"):
            if getattr(conf, field) is not None:
                check_schema(getattr(conf, field), field)
        return conf

    def __init__(self, conf: Any) -> None:
        super().__init__(conf)
        # Per instance: a header-only config keeps streaming request bodies.
        self.__dict__["needs_body"] = conf.body_schema is not None

    def _reject(self, err: str) -> Response:
        return Response(
            self.conf.rejected_code, self.conf.rejected_msg or err, {"content-type": "text/plain"}
        )

    def rewrite(self, req: Request, ctx: dict[str, Any]) -> Response | None:
        conf = self.conf
        if conf.header_schema is not None:
            headers = _Headers()
            for k, val in req.headers.items():
                k = k.lower()
                prev = headers.get(k)
                headers[k] = val if prev is None else [*prev, val] if isinstance(prev, list) else [prev, val]
            if (err := validate(conf.header_schema, headers)) is not None:
                return self._reject(err)
        if conf.body_schema is None:
            return None
        body = req.body
        if not body:
            return self._reject("request body is empty")
        is_form = (
            (req.headers.get("content-type") or "").lower().startswith("application/x-www-form-urlencoded")
        )
        if is_form:
            data: Any = _form(body)
        else:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return self._reject(f"invalid JSON body: {exc}")
        if (err := validate(conf.body_schema, data)) is not None:
            return self._reject(err)
        if not is_form:
            req.body = orjson.dumps(data)  # what the upstream parses is what was validated
        return None
