"""The admin API's OpenAPI 3.1 document, with object schemas derived from the msgspec models in
`pygateway.config.validate` (the same ones that validate writes)."""

from __future__ import annotations

from typing import Any

import msgspec

from pygateway.admin.app import PAGE_MAX, PAGE_SIZE_MAX, PAGE_SIZE_MIN
from pygateway.config import validate as config

PREFIX = "/apisix/admin"
REF = "#/components/schemas/{name}"

# collection -> (model, schema name, id parameter name, id schema, verbs)
_ID = {"type": "string", "pattern": "^[a-zA-Z0-9_.-]{1,64}$"}
_USERNAME = {"type": "string", "pattern": "^[a-zA-Z0-9_]{1,100}$"}
_MODELS: dict[str, type[msgspec.Struct]] = {
    "routes": config.Route,
    "services": config.Service,
    "upstreams": config.Upstream,
    "consumers": config.Consumer,
    "consumer_groups": config.ConsumerGroup,
    "ssls": config.SSL,
    "global_rules": config.GlobalRule,
    "plugin_configs": config.PluginConfig,
    "credentials": config.Credential,
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(name=name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _fix_patterns(node: Any) -> Any:
    """msgspec copies Python regexes; ECMA (`u` mode) wants a literal `-` after a range escaped."""
    if isinstance(node, dict):
        out = {k: _fix_patterns(v) for k, v in node.items()}
        if isinstance(out.get("pattern"), str):
            out["pattern"] = out["pattern"].replace("a-zA-Z-._", "a-zA-Z._-")
        return out
    if isinstance(node, list):
        return [_fix_patterns(v) for v in node]
    return node


def _components(plugin_names: list[str]) -> dict[str, Any]:
    _, schemas = msgspec.json.schema_components(list(_MODELS.values()), ref_template=REF)
    schemas = _fix_patterns(schemas)
    schemas["PluginConf"] = {
        "type": "object",
        "description": "A plugin's config; its schema is served by GET /apisix/admin/plugins/{name}. "
        "`_meta: {disable: bool}` is accepted by every plugin.",
    }
    schemas["PluginMetadata"] = {"type": "object", "description": "A plugin's global settings."}
    schemas["Error"] = {
        "type": "object",
        "required": ["error_msg"],
        "properties": {
            "error_msg": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    }
    schemas["Deleted"] = {
        "type": "object",
        "required": ["deleted", "key"],
        "properties": {"deleted": {"type": "string"}, "key": {"type": "string"}},
    }
    schemas["Valid"] = {"type": "object", "required": ["valid"], "properties": {"valid": {"const": True}}}
    for name in [*(m.__name__ for m in _MODELS.values()), "PluginMetadata"]:
        schemas[f"{name}Item"] = {
            "type": "object",
            "required": ["key", "value", "createdIndex", "modifiedIndex"],
            "properties": {
                "key": {"type": "string"},
                "value": _ref(name),
                "createdIndex": {"type": "integer"},
                "modifiedIndex": {"type": "integer"},
            },
        }
        schemas[f"{name}List"] = {
            "type": "object",
            "required": ["list", "total"],
            "properties": {
                "list": {"type": "array", "items": _ref(f"{name}Item")},
                "total": {"type": "integer"},
            },
        }
    return schemas


_ERR = {"default": {"description": "error", **_json(_ref("Error"))}}


def _op(
    op_id: str,
    summary: str,
    ok: dict[str, Any],
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": {**ok, **_ERR}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    return op


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_LIST_PARAMS = [
    _query("page", {"type": "integer", "minimum": 1, "maximum": PAGE_MAX}, "page number, from 1"),
    _query("page_size", {"type": "integer", "minimum": PAGE_SIZE_MIN, "maximum": PAGE_SIZE_MAX}, "items per page"),
    _query("name", {"type": "string"}, "only objects whose name contains this"),
    _query("label", {"type": "string"}, "only objects with this label (`key:value` or `key`)"),
    _query("uri", {"type": "string"}, "routes: only those whose uri or uris contain this"),
]


def _collection_paths(
    paths: dict[str, Any],
    base: str,
    tag: str,
    model: str,
    id_name: str,
    id_schema: dict[str, Any],
    *,
    put_collection: bool,
    post: bool,
    outer: list[dict[str, Any]] | None = None,
) -> None:
    outer = outer or []
    item_ok = {"200": {"description": "the object", **_json(_ref(f"{model}Item"))}}
    written = {
        "200": {"description": "replaced", **_json(_ref(f"{model}Item"))},
        "201": {"description": "created", **_json(_ref(f"{model}Item"))},
    }
    coll: dict[str, Any] = {
        "get": _op(
            f"list_{tag}",
            f"List {tag}",
            {"200": {"description": "the objects", **_json(_ref(f"{model}List"))}},
            outer + _LIST_PARAMS,
        ),
    }
    if put_collection:
        coll["put"] = _op(
            f"put_{tag}",
            f"Create or replace one of {tag} (id in the body)",
            written,
            outer or None,
            _ref(model),
        )
    if post:
        coll["post"] = _op(
            f"post_{tag}",
            f"Create one of {tag} with a generated id",
            {"201": written["201"]},
            outer or None,
            _ref(model),
        )
    paths[base] = coll
    idp = [*outer, _path_param(id_name, id_schema)]
    paths[f"{base}/{{{id_name}}}"] = {
        "get": _op(f"get_{tag}", f"Get one of {tag}", item_ok, idp),
        "put": _op(f"put_{tag}_id", f"Create or replace one of {tag}", written, idp, _ref(model)),
        "patch": _op(
            f"patch_{tag}", f"JSON merge patch (RFC 7386) one of {tag}", item_ok, idp, {"type": "object"}
        ),
        "delete": _op(
            f"delete_{tag}",
            f"Delete one of {tag} (409 while referenced unless force=true)",
            {"200": {"description": "deleted", **_json(_ref("Deleted"))}},
            [
                *idp,
                _query("force", {"type": "string", "enum": ["true", "false"]}, "delete even if referenced"),
            ],
        ),
    }
    sub = [*idp, _path_param("sub_path", {"type": "string", "pattern": "^[a-zA-Z0-9_]{1,64}$"})]
    paths[f"{base}/{{{id_name}}}/{{sub_path}}"] = {
        "patch": _op(
            f"patch_{tag}_sub_path", f"Replace the value at a sub path of one of {tag}", item_ok, sub, {}
        ),
    }


def build_openapi(plugin_names: list[str]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for coll, model in _MODELS.items():
        if coll == "credentials":
            continue
        id_name, id_schema = ("username", _USERNAME) if coll == "consumers" else ("id", _ID)
        _collection_paths(
            paths,
            f"{PREFIX}/{coll}",
            coll,
            model.__name__,
            id_name,
            id_schema,
            put_collection=True,
            post=coll != "consumers",
        )
    _collection_paths(
        paths,
        f"{PREFIX}/consumers/{{username}}/credentials",
        "credentials",
        "Credential",
        "id",
        _ID,
        put_collection=True,
        post=True,
        outer=[_path_param("username", _USERNAME)],
    )
    plugin_name = {"type": "string", "enum": plugin_names} if plugin_names else {"type": "string"}
    _collection_paths(
        paths,
        f"{PREFIX}/plugin_metadata",
        "plugin_metadata",
        "PluginMetadata",
        "plugin_name",
        plugin_name,
        put_collection=False,
        post=False,
    )
    paths[f"{PREFIX}/plugins/list"] = {
        "get": _op(
            "list_plugins",
            "Names of the available plugins",
            {"200": {"description": "names", **_json({"type": "array", "items": {"type": "string"}})}},
        ),
    }
    paths[f"{PREFIX}/plugins/{{plugin_name}}"] = {
        "get": _op(
            "get_plugin_schema",
            "A plugin's config JSON schema",
            {"200": {"description": "JSON schema", **_json({"type": "object"})}},
            [
                _path_param("plugin_name", plugin_name),
                _query(
                    "schema_type",
                    {"type": "string", "enum": ["consumer", "metadata"]},
                    "the consumer or metadata schema instead, where the plugin has one",
                ),
            ],
        ),
    }
    resources = [*_MODELS, "plugin_metadata"]
    paths[f"{PREFIX}/schema/validate/{{resource}}"] = {
        "post": _op(
            "validate_object",
            "Dry run: validate an object without storing it",
            {"200": {"description": "valid", **_json(_ref("Valid"))}},
            [_path_param("resource", {"type": "string", "enum": resources})],
            {"type": "object"},
        ),
    }
    paths[f"{PREFIX}/openapi.json"] = {
        "get": _op(
            "openapi", "This document", {"200": {"description": "OpenAPI 3.1", **_json({"type": "object"})}}
        ),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pygateway admin API",
            "version": "3",
            "description": "APISIX-compatible Admin API (v3 response shapes).",
        },
        "servers": [{"url": "/"}],
        "security": [{"ApiKey": []}],
        "paths": paths,
        "components": {
            "schemas": _components(plugin_names),
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY"}},
        },
    }
