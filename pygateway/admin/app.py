"""APISIX's Admin API (v3 shapes) over a `Store`, as a plain ASGI callable.

Routes, all under `/apisix/admin` and all needing the `X-API-KEY` header (or `?api_key=`):

    GET    /{res}                      list: {"list": [item...], "total": N}; ?page=&page_size= (10..500),
                                       ?name= (substring), ?label=k:v or ?label=k, ?uri= (routes, substring)
    PUT    /{res}                      create/replace, id (consumers: username) taken from the body
    POST   /{res}                      create with a generated id (not consumers, not plugin_metadata)
    GET    /{res}/{id}                 item: {"key": "/apisix/routes/1", "value": {...},
                                       "createdIndex": n, "modifiedIndex": n}
    PUT    /{res}/{id}                 create (201) or replace (200); a body `id` must match the path's
    PATCH  /{res}/{id}                 JSON merge patch (RFC 7386: null deletes a field, arrays replaced)
    PATCH  /{res}/{id}/{sub/path}      replace the value at that path (null deletes it)
    DELETE /{res}/{id}[?force=true]    409 while referenced (unless forced); {"deleted": id, "key": ...}
    .../consumers/{username}/credentials[/{id}]   the same verbs for a consumer's credentials
    GET    /plugins/list               plugin names
    GET    /plugins/{name}             the plugin's JSON schema (?schema_type=consumer|metadata)
    POST   /schema/validate/{res}      dry run: {"valid": true} or 400 with the errors
    GET    /openapi.json               OpenAPI 3.1 description of all of the above
    GET    /dashboard[/data]           the web dashboard and its JSON feed (`pygateway.admin.dashboard`)

`{res}` is one of routes, services, upstreams, consumers, consumer_groups, ssls, global_rules,
plugin_configs, plugin_metadata (whose id is the plugin name).

Every write is validated first: the object alone (schema, plugin confs, a route needs an upstream) and
its references (`upstream_id`, `service_id`, `plugin_config_id`, `group_id` must exist). Errors are
`{"error_msg": "...", "errors": [...]}`; each message names the field (`routes[1].upstream.nodes: ...`).

Deliberate differences from APISIX:
- `?ttl=` is refused (400) rather than silently ignored: no store here expires keys.
- POST ids are 20-digit numeric strings derived from the clock (APISIX pads the etcd revision): unique
  and increasing, so they sort in creation order.
- a 404 body is `{"error_msg": "Key not found: /apisix/routes/1"}` (APISIX: `{"message": "Key not found"}`).
- deleting a consumer deletes its credentials with it.
- the viewer key may also use the `schema/validate` dry run (it writes nothing).
- plugins are not restricted to auth plugins in credentials (none of ours is marked as such).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import orjson

from pygateway.admin.dashboard import Dashboard
from pygateway.config import validate as config
from pygateway.plugin.registry import Registry
from pygateway.store.base import Item, ReadOnlyStore, Store, StoreError, StoreUnavailable

log = logging.getLogger("pygateway.admin")

PREFIX = "/apisix/admin"
MAX_BODY = 1 << 20  # 1 MiB, as the gateway's own request-body cap
PAGE_SIZE_MIN, PAGE_SIZE_MAX = 10, 500
# Far beyond any collection, and small enough that the row offset fits SQLite's 64-bit integers.
PAGE_MAX = 1_000_000_000

COLLECTIONS: tuple[str, ...] = (
    "routes", "services", "upstreams", "consumers", "consumer_groups", "ssls", "global_rules",
    "plugin_configs", "plugin_metadata",
)  # fmt: skip
# APISIX's words for each kind, as used in its messages ("can not delete this plugin config, ...").
KIND: dict[str, str] = {
    "routes": "route", "services": "service", "upstreams": "upstream", "consumers": "consumer",
    "consumer_groups": "consumer group", "ssls": "ssl", "global_rules": "global rule",
    "plugin_configs": "plugin config", "plugin_metadata": "plugin metadata", "credentials": "credential",
}  # fmt: skip
SECRET_FIELDS: dict[str, tuple[str, ...]] = {"ssls": ("key", "keys")}  # never echoed back (as APISIX)

Json = Any
Reply = tuple[int, Json, list[tuple[bytes, bytes]]]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, errors: list[str] | None = None, allow: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.allow = allow


def _not_found(key: str) -> HTTPError:
    return HTTPError(404, f"Key not found: /apisix/{key}")


def _method_not_allowed(allow: str) -> HTTPError:
    return HTTPError(405, f"method not allowed (allowed: {allow})", allow=allow)


class Target:
    """One object location: `kind` for validation, the store `key`, and its `id`."""

    __slots__ = ("id", "kind", "prefix")

    def __init__(self, kind: str, prefix: str, obj_id: str | None) -> None:
        self.kind = kind  # routes ... or "credentials"
        self.prefix = prefix  # "routes/" or "consumers/jack/credentials/"
        self.id = obj_id

    @property
    def key(self) -> str:
        assert self.id is not None
        return self.prefix + self.id

    @property
    def key_field(self) -> str:
        return "username" if self.kind == "consumers" else "id"


class AdminApp:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        admin_key: str,
        viewer_key: str | None = None,
        allow_admin: list[str] | None = None,
        on_write: Callable[[], None] | None = None,
        metrics: Callable[[], str] | None = None,
    ) -> None:
        if not admin_key:
            raise ValueError("admin_key must not be empty")
        self.store = store
        self.registry = registry
        self.admin_key = admin_key.encode()
        self.viewer_key = viewer_key.encode() if viewer_key else None
        self.allow_admin = (
            [ipaddress.ip_network(c, strict=False) for c in allow_admin] if allow_admin else None
        )
        self.on_write = on_write
        # One thread runs every request's store work, in arrival order: store calls block, and
        # serialising them makes check-then-write (references, create vs replace) race-free.
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pygateway-admin")
        self._last_id = 0
        self._id_lock = threading.Lock()
        self._openapi: bytes | None = None
        self.dashboard = Dashboard(store, metrics, lambda fn: self._pool.submit(fn))

    def close(self) -> None:
        """Stop the worker thread (after the server has stopped; the store is the caller's)."""
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------------------------------ ASGI
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        if Dashboard.handles(scope["path"]):
            await self._dashboard(scope, send)
            return
        try:
            status, payload, headers = await self._http(scope, receive)
        except HTTPError as e:
            status, payload, headers = self._error(e)
        except Exception:  # never leak a traceback; log it
            log.exception("admin API: %s %s failed", scope.get("method"), scope.get("path"))
            status, payload, headers = 500, {"error_msg": "internal error (see the gateway log)"}, []
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _dashboard(self, scope: dict[str, Any], send: Any) -> None:
        try:
            self._check_client(scope.get("client"))
            key = dict(scope.get("headers", [])).get(b"x-api-key")
            if key is None:
                key = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("api_key", "").encode()
            self._role(key)
        except HTTPError as e:
            await self.dashboard.denied(scope, send, e.status, e.message)
            return
        await self.dashboard.serve(scope, send)

    @staticmethod
    def _error(e: HTTPError) -> Reply:
        payload: dict[str, Any] = {"error_msg": e.message}
        if e.errors:
            payload["errors"] = e.errors
        headers = [(b"allow", e.allow.encode())] if e.allow else []
        return e.status, payload, headers

    async def _http(self, scope: dict[str, Any], receive: Any) -> Reply:
        path: str = scope["path"]
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            raise HTTPError(404, "not found")
        self._check_client(scope.get("client"))
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        args = dict(query)
        method: str = scope["method"].upper()
        role = self._role(headers.get("x-api-key") or args.get("api_key", "").encode())
        segs = [s for s in path[len(PREFIX) :].split("/") if s]
        if role == "viewer" and method != "GET" and segs[:2] != ["schema", "validate"]:
            raise HTTPError(403, "the viewer key may only read (GET)")
        if self.store.read_only and method != "GET" and segs[:2] != ["schema", "validate"]:
            # Refuse before looking at the body: no write can succeed, whatever it says.
            where = getattr(self.store, "path", "a file")
            raise HTTPError(405, f"the config comes from {where} (standalone YAML mode): edit the file instead")
        body = await self._read_body(headers, receive)
        return await asyncio.wrap_future(self._pool.submit(self._dispatch, method, segs, args, body))

    def _check_client(self, client: Any) -> None:
        if self.allow_admin is None:
            return
        addr = None
        try:
            addr = ipaddress.ip_address(client[0]) if client else None
        except ValueError:
            pass
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr is None or not any(addr in net for net in self.allow_admin):
            raise HTTPError(
                403, f"client address {client[0] if client else '?'} is not allowed (allow_admin)"
            )

    def _role(self, given: bytes) -> str:
        # Compare with every key regardless of the outcome, so timing says nothing about which matched.
        is_admin = hmac.compare_digest(given, self.admin_key)
        is_viewer = self.viewer_key is not None and hmac.compare_digest(given, self.viewer_key)
        if given and is_admin:
            return "admin"
        if given and is_viewer:
            return "viewer"
        raise HTTPError(401, "failed to check token")

    @staticmethod
    async def _read_body(headers: dict[str, bytes], receive: Any) -> bytes:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise HTTPError(413, f"request body too large (limit {MAX_BODY} bytes)")
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                break
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise HTTPError(413, f"request body too large (limit {MAX_BODY} bytes)")
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        return b"".join(chunks)

    # -------------------------------------------------------------------------------------- dispatch
    def _dispatch(self, method: str, segs: list[str], args: dict[str, str], body: bytes) -> Reply:
        try:
            return self._route(method, segs, args, body)
        except StoreUnavailable as e:
            raise HTTPError(503, f"config store unavailable: {e}") from e
        except ReadOnlyStore as e:
            raise HTTPError(405, str(e) or "the config store is read-only") from e
        except StoreError as e:
            raise HTTPError(500, f"config store error: {e}") from e

    def _route(self, method: str, segs: list[str], args: dict[str, str], body: bytes) -> Reply:
        if not segs:
            raise HTTPError(404, "not found")
        head, n = segs[0], len(segs)
        if head == "openapi.json" and n == 1:
            self._only(method, "GET")
            return 200, self.openapi(), []
        if head == "plugins" and n == 2:
            self._only(method, "GET")
            return (
                (200, self._plugin_names(), [])
                if segs[1] == "list"
                else (200, self._plugin_schema(segs[1], args), [])
            )
        if head == "schema" and n == 3 and segs[1] == "validate":
            self._only(method, "POST")
            return self._dry_run(segs[2], body)
        if head not in COLLECTIONS:
            raise HTTPError(404, "not found")
        if "ttl" in args and method in ("PUT", "POST", "PATCH"):
            raise HTTPError(400, "ttl: not supported (objects do not expire)")
        if head == "consumers" and n >= 3 and segs[2] == "credentials":
            user = segs[1]
            if not config.valid_object_id("consumers", user) or self.store.get(f"consumers/{user}") is None:
                raise _not_found(f"consumers/{user}")
            prefix = f"consumers/{user}/credentials/"
            return self._resource(
                method, Target("credentials", prefix, None), segs[3:], args, body, post=True
            )
        post = head not in ("consumers", "plugin_metadata")
        return self._resource(method, Target(head, head + "/", None), segs[1:], args, body, post=post)

    @staticmethod
    def _only(method: str, allowed: str) -> None:
        if method != allowed:
            raise _method_not_allowed(allowed)

    def _resource(
        self, method: str, t: Target, rest: list[str], args: dict[str, str], body: bytes, *, post: bool
    ) -> Reply:
        if not rest:
            if method == "GET":
                return 200, self._list(t, args), []
            if method == "PUT" and t.kind != "plugin_metadata":
                raw = self._json_object(body)
                t.id = self._id_from_body(t, raw)
                return self._put(t, raw)
            if method == "POST" and post:
                raw = self._json_object(body)
                if raw.get("id") is not None:
                    raise HTTPError(400, f"{t.kind}.id: not allowed in POST (the id is generated)")
                t.id = self._new_id(t)
                return self._put(t, raw)
            allowed = ["GET"] + (["PUT"] if t.kind != "plugin_metadata" else []) + (["POST"] if post else [])
            raise _method_not_allowed(", ".join(allowed))
        t.id = rest[0]
        if len(rest) > 1:
            if method != "PATCH":
                raise _method_not_allowed("PATCH")
            return self._patch(t, self._json(body), rest[1:])
        if method == "GET":
            item = self._get(t)
            return 200, self._item(t, item), []
        if method == "PUT":
            return self._put(t, self._json_object(body))
        if method == "PATCH":
            return self._patch(t, self._json_object(body), [])
        if method == "DELETE":
            return self._delete(t, args.get("force") == "true")
        raise _method_not_allowed("GET, PUT, PATCH, DELETE")

    # ------------------------------------------------------------------------------------------ reads
    def _exists_id(self, t: Target) -> bool:
        assert t.id is not None
        if t.kind == "plugin_metadata":
            return self.registry.get(t.id) is not None
        return config.valid_object_id(t.kind, t.id)

    def _get(self, t: Target) -> Item:
        item = self.store.get(t.key) if self._exists_id(t) else None
        if item is None:
            raise _not_found(t.key)
        return item

    def _item(self, t: Target, item: Item) -> dict[str, Any]:
        value = item.value
        hidden = SECRET_FIELDS.get(t.kind, ())
        if hidden and any(f in value for f in hidden):
            value = {k: v for k, v in value.items() if k not in hidden}
        return {"key": "/apisix/" + item.key, "value": value, "createdIndex": item.created_index,
                "modifiedIndex": item.modified_index}  # fmt: skip

    def _items(self, t: Target) -> list[Item]:
        """The collection's own items (for consumers: without their credentials)."""
        return [i for i in self.store.list(t.prefix) if "/" not in i.key[len(t.prefix) :]]

    def _list(self, t: Target, args: dict[str, str]) -> dict[str, Any]:
        paged = "page" in args or "page_size" in args
        if paged and not {"name", "label", "uri"} & args.keys():
            # No filter: let the store page (SQLite does it in SQL; 10 000 routes stay fast).
            page = _int_arg(args, "page", 1, 1, PAGE_MAX)
            size = _int_arg(args, "page_size", PAGE_SIZE_MIN, PAGE_SIZE_MIN, PAGE_SIZE_MAX)
            items, total = self.store.page(t.prefix, (page - 1) * size, size)
            return {"list": [self._item(t, i) for i in items], "total": total}
        items = self._items(t)
        if "name" in args:
            items = [
                i for i in items if isinstance(i.value.get("name"), str) and args["name"] in i.value["name"]
            ]
        if "label" in args:
            k, sep, v = args["label"].partition(":")
            items = [i for i in items if _has_label(i.value, k, v if sep else None)]
        if "uri" in args:
            items = [i for i in items if _matches_uri(i.value, args["uri"])]
        total = len(items)
        if "page" in args or "page_size" in args:
            page = _int_arg(args, "page", 1, 1, PAGE_MAX)
            size = _int_arg(args, "page_size", PAGE_SIZE_MIN, PAGE_SIZE_MIN, PAGE_SIZE_MAX)
            items = items[(page - 1) * size : page * size]
        return {"list": [self._item(t, i) for i in items], "total": total}

    def _plugin_names(self) -> list[str]:
        return sorted(self.registry.plugins)

    def _plugin_schema(self, name: str, args: dict[str, str]) -> Json:
        cls = self.registry.get(name)
        if cls is None:
            raise HTTPError(404, f"plugin not found: {name}")
        kind = args.get("schema_type", "")
        model = {
            "consumer": getattr(cls, "ConsumerConfig", None),
            "metadata": getattr(cls, "MetadataConfig", None),
        }
        schema_cls = model.get(kind) or cls.Config
        return msgspec.json.schema(schema_cls)

    def openapi(self) -> bytes:
        if self._openapi is None:
            from pygateway.admin.openapi import build_openapi

            self._openapi = orjson.dumps(build_openapi(self._plugin_names()))
        return self._openapi

    # ----------------------------------------------------------------------------------------- writes
    def _validate(self, t: Target, raw: Json, *, references: bool = True) -> None:
        assert t.id is not None
        lookup = self._lookup if references else None
        errors = config.validate_object(t.kind, t.id, raw, self.registry.get, lookup)
        if errors:
            raise HTTPError(400, "; ".join(errors), errors)

    def _lookup(self, collection: str, obj_id: str) -> dict[str, Any] | None:
        if not config.valid_object_id(collection, obj_id):
            return None
        item = self.store.get(f"{collection}/{obj_id}")
        return item.value if item else None

    def _id_from_body(self, t: Target, raw: dict[str, Any]) -> str:
        value = raw.get(t.key_field)
        if value is None:
            raise HTTPError(400, f"{t.kind}.{t.key_field}: required (in the body or the path)")
        if (
            isinstance(value, bool)
            or not isinstance(value, (str, int))
            or not config.valid_object_id(t.kind, str(value))
        ):
            raise HTTPError(400, f"{t.kind}.{t.key_field}: invalid {t.key_field} {value!r}")
        return str(value)

    def _new_id(self, t: Target) -> str:
        with self._id_lock:
            n = max(self._last_id + 1, time.time_ns() // 1000)
            while self.store.get(t.prefix + f"{n:020d}") is not None:
                n += 1
            self._last_id = n
        return f"{n:020d}"

    def _put(self, t: Target, raw: dict[str, Any], prev: Item | None = None, *, patch: bool = False) -> Reply:
        if not self._exists_id(t):
            if t.kind == "plugin_metadata":
                raise HTTPError(400, f'plugin_metadata[{t.id}]: unknown plugin "{t.id}"')
            raise HTTPError(400, f"{t.kind}[{t.id}].{t.key_field}: invalid {t.key_field} {t.id!r}")
        if prev is None and not patch:
            prev = self.store.get(t.key)
        value = dict(raw)
        value.setdefault(t.key_field, t.id)
        self._validate(t, value)
        value[t.key_field] = t.id  # normalised: ids are strings
        now = int(time.time())
        if prev is not None and "create_time" not in raw:
            value["create_time"] = prev.value.get("create_time", now)
        value.setdefault("create_time", now)
        if patch or "update_time" not in raw:
            value["update_time"] = now
        item = self.store.put(t.key, value)
        self._written()
        return (200 if prev is not None else 201), self._item(t, item), []

    def _patch(self, t: Target, patch: Json, sub_path: list[str]) -> Reply:
        prev = self._get(t)
        if sub_path:
            value = _set_path(prev.value, sub_path, patch, t.kind)
        else:
            value = _merge_patch(prev.value, patch)
        return self._put(t, value, prev, patch=True)

    def _delete(self, t: Target, force: bool) -> Reply:
        item = self._get(t)
        if not force:
            self._check_unreferenced(t)
        if t.kind == "consumers":
            for cred in self.store.list(f"{t.key}/credentials/"):
                self.store.delete(cred.key)
        self.store.delete(t.key)
        self._written()
        return 200, {"deleted": t.id, "key": "/apisix/" + item.key}, []

    def _check_unreferenced(self, t: Target) -> None:
        for coll, refs in config.REFERENCES.items():
            for field, target in refs:
                if target != t.kind:
                    continue
                for other in self._items(Target(coll, coll + "/", None)):
                    ref = other.value.get(field)
                    if ref is not None and str(ref) == t.id:
                        other_id = other.key[len(coll) + 1 :]
                        what = "this service directly" if t.kind == "services" else f"this {KIND[t.kind]}"
                        raise HTTPError(
                            409, f"can not delete {what}, {KIND[coll]} [{other_id}] is still using it now"
                        )

    def _written(self) -> None:
        if self.on_write is None:
            return
        try:
            self.on_write()
        except Exception:
            log.exception("admin API: on_write callback failed")

    # ---------------------------------------------------------------------------------------- dry run
    def _dry_run(self, resource: str, body: bytes) -> Reply:
        kind = resource
        if kind not in COLLECTIONS and kind != "credentials":
            raise HTTPError(404, f"unknown resource {resource!r}")
        raw = self._json_object(body)
        key_field = "username" if kind == "consumers" else "id"
        value = raw.get(key_field)
        if kind == "plugin_metadata":
            obj_id = str(value) if isinstance(value, str) else ""
        elif value is None:
            if kind == "consumers":
                raise HTTPError(400, f"{kind}.username: required", [f"{kind}.username: required"])
            obj_id = "1"
            raw = {**raw, "id": obj_id}
        else:
            obj_id = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else "?"
        errors = config.validate_object(kind, obj_id, raw, self.registry.get)
        if errors:
            raise HTTPError(400, "; ".join(errors), errors)
        return 200, {"valid": True}, []

    # ------------------------------------------------------------------------------------------- json
    @staticmethod
    def _json(body: bytes) -> Json:
        if not body.strip():
            raise HTTPError(400, "invalid request body: empty (expected JSON)")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise HTTPError(400, f"invalid request body: {e}") from e

    def _json_object(self, body: bytes) -> dict[str, Any]:
        raw = self._json(body)
        if not isinstance(raw, dict):
            raise HTTPError(
                400, f"invalid request body: expected a JSON object, got {config._type_name(raw)}"
            )
        return raw


def _int_arg(args: dict[str, str], name: str, default: int, lo: int, hi: int | None) -> int:
    text = args.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise HTTPError(400, f"{name}: expected an integer {bound}, got {text!r}")
    return value


def _has_label(value: dict[str, Any], key: str, want: str | None) -> bool:
    labels = value.get("labels")
    if not isinstance(labels, dict) or key not in labels:
        return False
    return want is None or labels[key] == want


def _matches_uri(value: dict[str, Any], uri: str) -> bool:
    uris = [value.get("uri")] + list(value.get("uris") or [])
    return any(isinstance(u, str) and uri in u for u in uris)


def _merge_patch(target: Json, patch: Json) -> Json:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


def _set_path(value: dict[str, Any], path: list[str], new: Json, kind: str) -> dict[str, Any]:
    """A copy of `value` with the value at `path` replaced by `new` (removed when `new` is null).
    Missing objects on the way are created; array elements are addressed by index."""
    root: Any = orjson.loads(orjson.dumps(value))
    node = root
    where = kind
    for i, seg in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not seg.isdigit() or int(seg) >= len(node):
                raise HTTPError(400, f"{where}: no element {seg!r} (the array has {len(node)})")
            idx = int(seg)
            if last:
                if new is None:
                    node.pop(idx)
                else:
                    node[idx] = new
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                if new is None:
                    node.pop(seg, None)
                else:
                    node[seg] = new
            else:
                if node.get(seg) is None:
                    node[seg] = {}
                node = node[seg]
        else:
            raise HTTPError(400, f"{where}: is not an object or array, can not patch {'/'.join(path)}")
        where = f"{where}.{seg}"
    return root


def create_app(
    store: Store,
    registry: Registry,
    admin_key: str,
    viewer_key: str | None = None,
    allow_admin: list[str] | None = None,
    on_write: Callable[[], None] | None = None,
    metrics: Callable[[], str] | None = None,
) -> AdminApp:
    """The admin API as an ASGI app (serve it with uvicorn). `on_write()` runs after every
    successful write, on the admin API's worker thread; `metrics()` returns the Prometheus text the
    dashboard (`/apisix/admin/dashboard`) charts."""
    return AdminApp(store, registry, admin_key, viewer_key, allow_admin, on_write, metrics)
