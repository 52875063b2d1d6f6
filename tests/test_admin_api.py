"""The admin API over real sockets: uvicorn in a thread, a SQLite store in tmp_path, httpx."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from helpers import free_port

from pygateway.admin import create_app
from pygateway.plugin import Plugin
from pygateway.plugin.registry import Found, Registry
from pygateway.store.base import Item, OnChange, ReadOnlyStore, Store, StoreUnavailable
from pygateway.store.sqlite import SqliteStore

KEY = "admin-key-0123456789"
VIEWER = "viewer-key-0123456789"
CERT = "-----BEGIN CERTIFICATE-----\n" + "MIIB" * 40 + "\n-----END CERTIFICATE-----\n"
PKEY = "-----BEGIN PRIVATE KEY-----\n" + "MIIE" * 40 + "\n-----END PRIVATE KEY-----\n"


class KeyAuth(Plugin):
    """A stand-in auth plugin with a consumer schema and a metadata schema."""

    name = "key-auth"
    priority = 2500

    class Config(msgspec.Struct, forbid_unknown_fields=True):
        header: str = "apikey"

    class ConsumerConfig(msgspec.Struct, forbid_unknown_fields=True):
        key: str

    class MetadataConfig(msgspec.Struct, forbid_unknown_fields=True):
        log_format: dict[str, str] = {}


def make_registry() -> Registry:
    reg = Registry()
    reg._add(Found(KeyAuth, "test"))
    return reg


@contextmanager
def serve(app: Any) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


class Admin:
    """A running admin API: `c` is an authenticated client rooted at /apisix/admin."""

    def __init__(self, url: str, store: Store, writes: list[int]) -> None:
        self.url = url
        self.store = store
        self.writes = writes
        self.c = httpx.Client(base_url=url + "/apisix/admin", headers={"X-API-KEY": KEY}, timeout=10)

    def ok(self, method: str, path: str, body: Any = None, status: int | None = None, **kw: Any) -> Any:
        r = self.c.request(method, path, json=body, **kw)
        want = status or (201 if method == "POST" else 200)
        assert r.status_code == want, (method, path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json"
        return r.json()

    def err(self, method: str, path: str, body: Any = None, status: int = 400, **kw: Any) -> str:
        r = self.c.request(method, path, json=body, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        msg = r.json()["error_msg"]
        assert isinstance(msg, str) and msg
        return msg


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    store = SqliteStore(tmp_path / "db")
    writes: list[int] = []
    app = create_app(store, make_registry(), KEY, viewer_key=VIEWER, on_write=lambda: writes.append(1))
    with serve(app) as url:
        a = Admin(url, store, writes)
        yield a
        a.c.close()
    store.close()


UPSTREAM = {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}
SAMPLES: dict[str, dict[str, Any]] = {
    "routes": {"uri": "/hello", "upstream": UPSTREAM, "name": "r", "plugins": {"limit-count": {"count": 2, "time_window": 60}}},
    "services": {"upstream": UPSTREAM, "name": "s"},
    "upstreams": {**UPSTREAM, "name": "u"},
    "consumer_groups": {"plugins": {"limit-count": {"count": 5, "time_window": 60}}},
    "ssls": {"cert": CERT, "key": PKEY, "snis": ["example.com"]},
    "global_rules": {"plugins": {"request-id": {}}},
    "plugin_configs": {"plugins": {"request-id": {}}, "desc": "d"},
}  # fmt: skip


# ---------------------------------------------------------------------------------------------- CRUD
@pytest.mark.parametrize("res", list(SAMPLES))
def test_crud(admin: Admin, res: str) -> None:
    body = SAMPLES[res]
    created = admin.ok("PUT", f"/{res}/1", body, status=201)
    assert created["key"] == f"/apisix/{res}/1"
    assert created["value"]["id"] == "1"
    assert isinstance(created["value"]["create_time"], int) and isinstance(
        created["value"]["update_time"], int
    )
    assert created["createdIndex"] == created["modifiedIndex"]
    got = admin.ok("GET", f"/{res}/1")
    assert got == created
    second = {**body, "desc": "second"} if res != "global_rules" else {"plugins": {"proxy-rewrite": {}}}
    replaced = admin.ok("PUT", f"/{res}/1", second)
    assert replaced["createdIndex"] == created["createdIndex"] < replaced["modifiedIndex"]
    assert replaced["value"]["create_time"] == created["value"]["create_time"]
    shown = {k: v for k, v in second.items() if k != "key"}  # an SSL's private key is not shown
    assert {
        k: v for k, v in replaced["value"].items() if k not in ("id", "create_time", "update_time")
    } == shown
    listed = admin.ok("GET", f"/{res}")
    assert listed["total"] == 1 and listed["list"] == [replaced]
    posted = admin.ok("POST", f"/{res}", body)
    new_id = posted["value"]["id"]
    assert posted["key"] == f"/apisix/{res}/{new_id}"
    assert admin.ok("GET", f"/{res}")["total"] == 2
    assert admin.ok("DELETE", f"/{res}/1") == {"deleted": "1", "key": f"/apisix/{res}/1"}
    admin.err("GET", f"/{res}/1", status=404)
    admin.err("DELETE", f"/{res}/1", status=404)
    assert len(admin.writes) == 4  # PUT, PUT, POST, DELETE


def test_ssl_private_key_is_not_returned(admin: Admin) -> None:
    v = admin.ok("PUT", "/ssls/1", SAMPLES["ssls"], status=201)["value"]
    assert "key" not in v and v["cert"] == CERT
    assert "key" not in admin.ok("GET", "/ssls/1")["value"]
    assert admin.store.get("ssls/1").value["key"] == PKEY  # type: ignore[union-attr]
    # a PATCH keeps the stored key
    admin.ok("PATCH", "/ssls/1", {"snis": ["a.example.com"]})
    assert admin.store.get("ssls/1").value["key"] == PKEY  # type: ignore[union-attr]


def test_consumers_and_credentials(admin: Admin) -> None:
    c = admin.ok(
        "PUT", "/consumers", {"username": "jack", "plugins": {"key-auth": {"key": "k1"}}}, status=201
    )
    assert c["key"] == "/apisix/consumers/jack" and c["value"]["username"] == "jack"
    admin.ok("PUT", "/consumers/jack", {"desc": "again"})
    admin.err("PUT", "/consumers/jack", {"username": "jill"})
    admin.err("POST", "/consumers", {"username": "x"}, status=405)
    admin.err("PUT", "/consumers", {"desc": "no username"})
    # consumer plugin confs use the plugin's consumer schema
    msg = admin.err("PUT", "/consumers/bob", {"plugins": {"key-auth": {"nope": 1}}})
    assert "consumers[bob].plugins.key-auth" in msg

    cred = admin.ok(
        "PUT", "/consumers/jack/credentials/c1", {"plugins": {"key-auth": {"key": "s3"}}}, status=201
    )
    assert cred["key"] == "/apisix/consumers/jack/credentials/c1"
    posted = admin.ok("POST", "/consumers/jack/credentials", {"plugins": {"key-auth": {"key": "s4"}}})
    assert admin.ok("GET", "/consumers/jack/credentials")["total"] == 2
    assert admin.ok("GET", "/consumers/jack/credentials/c1")["value"]["plugins"] == {
        "key-auth": {"key": "s3"}
    }
    admin.ok("PATCH", "/consumers/jack/credentials/c1", {"desc": "patched"})
    msg = admin.err("PUT", "/consumers/jack/credentials/c2", {"plugins": {"key-auth": {}}})
    assert "credentials[c2].plugins.key-auth.key: required" in msg
    admin.err("PUT", "/consumers/nobody/credentials/c1", {"plugins": {}}, status=404)
    # the consumer list does not show credentials
    listed = admin.ok("GET", "/consumers")
    assert [i["key"] for i in listed["list"]] == ["/apisix/consumers/jack"]
    admin.ok("DELETE", f"/consumers/jack/credentials/{posted['value']['id']}")
    # deleting the consumer deletes its credentials
    admin.ok("DELETE", "/consumers/jack")
    assert admin.store.list("consumers/") == []


def test_plugin_metadata(admin: Admin) -> None:
    v = admin.ok("PUT", "/plugin_metadata/key-auth", {"log_format": {"host": "$host"}}, status=201)
    assert v["key"] == "/apisix/plugin_metadata/key-auth" and v["value"]["id"] == "key-auth"
    assert admin.ok("GET", "/plugin_metadata")["total"] == 1
    assert "log_format" in admin.err("PUT", "/plugin_metadata/key-auth", {"log_format": 3})
    assert "unknown plugin" in admin.err("PUT", "/plugin_metadata/nope", {})
    admin.err("GET", "/plugin_metadata/nope", status=404)
    admin.err("POST", "/plugin_metadata", {}, status=405)
    admin.ok("DELETE", "/plugin_metadata/key-auth")


def test_put_id_in_body_and_post_ids(admin: Admin) -> None:
    assert (
        admin.ok("PUT", "/upstreams", {**UPSTREAM, "id": "u1"}, status=201)["key"] == "/apisix/upstreams/u1"
    )
    assert admin.ok("PUT", "/upstreams", {**UPSTREAM, "id": 7}, status=201)["value"]["id"] == "7"
    assert "required" in admin.err("PUT", "/upstreams", UPSTREAM)
    msg = admin.err("PUT", "/upstreams/u2", {**UPSTREAM, "id": "u3"})
    assert "upstreams[u2].id" in msg
    admin.ok("PUT", "/upstreams/8", {**UPSTREAM, "id": 8}, status=201)  # same id, int in the body
    ids = [admin.ok("POST", "/routes", {"uri": "/x", "upstream_id": "u1"})["value"]["id"] for _ in range(3)]
    assert all(i.isdigit() and len(i) == 20 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert "id" in admin.err("POST", "/routes", {"id": "5", "uri": "/x", "upstream_id": "u1"})
    admin.err("PUT", "/routes/bad id!", {"uri": "/x", "upstream_id": "u1"})
    assert "ttl" in admin.err("PUT", "/routes/1", {"uri": "/x", "upstream_id": "u1"}, params={"ttl": "5"})


# --------------------------------------------------------------------------------------------- PATCH
def test_patch_merge(admin: Admin) -> None:
    admin.ok("PUT", "/upstreams/1", UPSTREAM, status=201)
    route = {
        "uri": "/a",
        "methods": ["GET", "POST"],
        "upstream_id": "1",
        "desc": "d",
        "labels": {"env": "prod"},
    }
    before = admin.ok("PUT", "/routes/1", route, status=201)
    after = admin.ok("PATCH", "/routes/1", {"desc": None, "methods": ["PUT"], "labels": {"team": "a"}})
    v = after["value"]
    assert "desc" not in v  # null deletes
    assert v["methods"] == ["PUT"]  # arrays are replaced
    assert v["labels"] == {"env": "prod", "team": "a"}  # objects are merged
    assert v["uri"] == "/a" and v["create_time"] == before["value"]["create_time"]
    assert after["modifiedIndex"] > before["modifiedIndex"]
    # the merged object is validated: dropping the only upstream is refused, nothing is written
    msg = admin.err("PATCH", "/routes/1", {"upstream_id": None})
    assert "routes[1].upstream: required" in msg
    assert admin.ok("GET", "/routes/1")["value"]["upstream_id"] == "1"
    admin.err("PATCH", "/routes/404", {"desc": "x"}, status=404)
    admin.err("PATCH", "/routes/1", [1, 2])


def test_patch_sub_path(admin: Admin) -> None:
    admin.ok(
        "PUT",
        "/routes/1",
        {"uri": "/a", "upstream": {"nodes": {"127.0.0.1:80": 1}, "timeout": {"connect": 1}}},
        status=201,
    )
    v = admin.ok("PATCH", "/routes/1/upstream/nodes", {"10.0.0.1:81": 2, "10.0.0.2:82": 3})["value"]
    assert v["upstream"]["nodes"] == {"10.0.0.1:81": 2, "10.0.0.2:82": 3}  # replaced, not merged
    assert v["upstream"]["timeout"] == {"connect": 1}
    v = admin.ok("PATCH", "/routes/1/plugins", {"request-id": {}})["value"]
    assert v["plugins"] == {"request-id": {}}
    v = admin.ok("PATCH", "/routes/1/plugins", {"limit-count": {"count": 1, "time_window": 1}})["value"]
    assert v["plugins"] == {"limit-count": {"count": 1, "time_window": 1}}
    v = admin.ok("PATCH", "/routes/1/uri", "/b")["value"]
    assert v["uri"] == "/b"
    msg = admin.err("PATCH", "/routes/1/upstream/nodes", [{"host": "h", "port": 0}])
    assert "routes[1].upstream.nodes[0].port" in msg
    admin.err("PATCH", "/routes/1/uri/x", "y")  # a string has no sub path
    admin.err("GET", "/routes/1/uri", status=405)
    admin.err("PATCH", "/routes/9/uri", "/c", status=404)


# ---------------------------------------------------------------------------------------------- list
def test_list_paging_and_filters(admin: Admin) -> None:
    admin.ok("PUT", "/upstreams/1", UPSTREAM, status=201)
    for i in range(25):
        body = {
            "uri": f"/p/{i}",
            "upstream_id": "1",
            "name": f"route-{i}",
            "labels": {"env": "prod" if i % 2 else "dev"},
        }
        if i == 3:
            body = {"uris": ["/other", "/special/x"], "upstream_id": "1", "name": "odd-one"}
        admin.ok("PUT", f"/routes/{i:03d}", body, status=201)
    full = admin.ok("GET", "/routes")
    assert full["total"] == 25 and len(full["list"]) == 25
    p1 = admin.ok("GET", "/routes", params={"page": 1, "page_size": 10})
    p3 = admin.ok("GET", "/routes", params={"page": 3, "page_size": 10})
    assert p1["total"] == p3["total"] == 25
    assert [i["value"]["id"] for i in p1["list"]] == [f"{i:03d}" for i in range(10)]
    assert [i["value"]["id"] for i in p3["list"]] == [f"{i:03d}" for i in range(20, 25)]
    assert admin.ok("GET", "/routes", params={"page": 4, "page_size": 10})["list"] == []
    assert len(admin.ok("GET", "/routes", params={"page": 2})["list"]) == 10
    # (a page past SQLite's 64-bit offsets was a 500, found by the schemathesis fuzz test)
    huge = {"page": 1115030878258787712, "page_size": 272}
    for bad in ({"page_size": 5}, {"page_size": 501}, {"page": 0}, {"page": "x"}, huge):
        assert next(iter(bad)) in admin.err("GET", "/routes", params=bad)
    assert admin.ok("GET", "/routes", params={"name": "route-1"})["total"] == 11  # 1, 10..19
    assert admin.ok("GET", "/routes", params={"name": "odd"})["list"][0]["value"]["id"] == "003"
    assert admin.ok("GET", "/routes", params={"label": "env:prod"})["total"] == 11  # odd, not 3
    assert admin.ok("GET", "/routes", params={"label": "env:dev"})["total"] == 13
    assert admin.ok("GET", "/routes", params={"label": "env"})["total"] == 24
    assert admin.ok("GET", "/routes", params={"label": "team"})["total"] == 0
    assert admin.ok("GET", "/routes", params={"uri": "/special"})["list"][0]["value"]["id"] == "003"
    assert admin.ok("GET", "/routes", params={"uri": "/p/1"})["total"] == 11
    both = admin.ok("GET", "/routes", params={"uri": "/p/1", "label": "env:prod", "page": 1, "page_size": 10})
    assert both["total"] == 6 and len(both["list"]) == 6  # 1, 11, 13, 15, 17, 19


# -------------------------------------------------------------------------------- references, errors
def test_references_checked_on_write(admin: Admin) -> None:
    msg = admin.err("PUT", "/routes/1", {"uri": "/a", "upstream_id": "nope"})
    assert msg == 'routes[1].upstream_id: upstream "nope" not found'
    assert "routes[1].service_id" in admin.err("PUT", "/routes/1", {"uri": "/a", "service_id": "s"})
    msg = admin.err("PUT", "/routes/1", {"uri": "/a", "upstream": UPSTREAM, "plugin_config_id": 4})
    assert 'routes[1].plugin_config_id: plugin_config "4" not found' == msg
    assert "routes[1].upstream: required" in admin.err("PUT", "/routes/1", {"uri": "/a"})
    assert "services[s].upstream_id" in admin.err("PUT", "/services/s", {"upstream_id": "u"})
    assert "consumers[jack].group_id" in admin.err("PUT", "/consumers/jack", {"group_id": "g"})
    # a service without an upstream does not give the route one
    admin.ok("PUT", "/services/bare", {"name": "bare"}, status=201)
    assert "routes[1].upstream: required" in admin.err(
        "PUT", "/routes/1", {"uri": "/a", "service_id": "bare"}
    )
    admin.ok("PUT", "/upstreams/u", UPSTREAM, status=201)
    admin.ok("PUT", "/services/s", {"upstream_id": "u"}, status=201)
    admin.ok("PUT", "/routes/1", {"uri": "/a", "service_id": "s"}, status=201)
    assert admin.store.get("routes/2") is None


def test_delete_referenced(admin: Admin) -> None:
    admin.ok("PUT", "/upstreams/1", UPSTREAM, status=201)
    admin.ok("PUT", "/services/1", {"upstream_id": "1"}, status=201)
    admin.ok("PUT", "/plugin_configs/1", {"plugins": {"request-id": {}}}, status=201)
    admin.ok("PUT", "/routes/1", {"uri": "/a", "service_id": "1", "plugin_config_id": "1"}, status=201)
    admin.ok("PUT", "/routes/2", {"uri": "/b", "upstream_id": "1"}, status=201)
    admin.ok("PUT", "/consumer_groups/g", {"plugins": {}}, status=201)
    admin.ok("PUT", "/consumers/jack", {"group_id": "g"}, status=201)
    msg = admin.err("DELETE", "/upstreams/1", status=409)
    assert msg == "can not delete this upstream, route [2] is still using it now"
    assert admin.err("DELETE", "/services/1", status=409) == (
        "can not delete this service directly, route [1] is still using it now"
    )
    assert admin.err("DELETE", "/plugin_configs/1", status=409) == (
        "can not delete this plugin config, route [1] is still using it now"
    )
    assert admin.err("DELETE", "/consumer_groups/g", status=409) == (
        "can not delete this consumer group, consumer [jack] is still using it now"
    )
    admin.ok("DELETE", "/routes/2")
    assert admin.err("DELETE", "/upstreams/1", status=409) == (
        "can not delete this upstream, service [1] is still using it now"
    )
    writes = len(admin.writes)
    admin.ok("DELETE", "/upstreams/1", params={"force": "true"})
    admin.ok("DELETE", "/consumer_groups/g", params={"force": "true"})
    assert len(admin.writes) == writes + 2
    admin.err("GET", "/upstreams/1", status=404)


def test_validation_errors_name_the_field(admin: Admin) -> None:
    bad = {"uri": "/a", "upstream": {"nodes": [{"host": "127.0.0.1", "port": 0}]}}
    assert "routes[1].upstream.nodes[0].port" in admin.err("PUT", "/routes/1", bad)
    assert "routes[1].bogus: unknown field" in admin.err(
        "PUT", "/routes/1", {**SAMPLES["routes"], "bogus": 1}
    )
    msg = admin.err("PUT", "/routes/1", {**SAMPLES["routes"], "plugins": {"no-such": {}}})
    assert 'routes[1].plugins.no-such: unknown plugin "no-such"' in msg
    msg = admin.err(
        "PUT", "/routes/1", {**SAMPLES["routes"], "plugins": {"limit-count": {"count": 0, "time_window": 1}}}
    )
    assert "routes[1].plugins.limit-count.count" in msg
    r = admin.c.put("/upstreams/1", json={"nodes": {"a:1": 1}, "type": "chash", "retries": -1})
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert any("upstreams[1].retries" in e for e in errors)
    assert "upstreams[1].ssls" not in r.text
    assert "ssls[1].snis" in admin.err("PUT", "/ssls/1", {"cert": CERT, "key": PKEY})
    assert "ssls[1].key: not a PEM" in admin.err(
        "PUT", "/ssls/1", {"cert": CERT, "key": CERT, "snis": ["a.com"]}
    )
    assert admin.store.list("") == []
    assert admin.writes == []


def test_error_shapes(admin: Admin) -> None:
    assert admin.c.get(admin.url + "/").status_code == 404
    assert admin.c.get(admin.url + "/apisix/adminx").status_code == 404
    r = admin.c.get(admin.url + "/other", headers={"X-API-KEY": "wrong"})
    assert r.status_code == 404 and "error_msg" in r.json()
    admin.err("GET", "/nope", status=404)
    admin.err("GET", "", status=404)
    r = admin.c.post("/routes/1", json={})
    assert r.status_code == 405 and r.json()["error_msg"] and "PUT" in r.headers["allow"]
    admin.err("DELETE", "/routes", status=405)
    admin.err("PUT", "/plugins/list", status=405)
    r = admin.c.put("/upstreams/1", content=b"{nope")
    assert r.status_code == 400 and "invalid request body" in r.json()["error_msg"]
    assert "expected a JSON object" in admin.err("PUT", "/upstreams/1", [1])
    assert "empty" in admin.err("PUT", "/upstreams/1", content=b"")
    big = b'{"desc": "' + b"x" * (1 << 20) + b'"}'
    r = admin.c.put("/upstreams/1", content=big)
    assert r.status_code == 413 and "too large" in r.json()["error_msg"]
    chunks = iter([b'{"desc": "', b"x" * (1 << 20), b'"}'])
    r = admin.c.put("/upstreams/1", content=chunks)  # chunked: no content-length
    assert r.status_code == 413


class FlakyStore(SqliteStore):
    mode: str = ""

    def _fail(self) -> None:
        if self.mode == "down":
            raise StoreUnavailable("etcd at 127.0.0.1:2379: connection refused")
        if self.mode == "ro":
            raise ReadOnlyStore("the config is read from apisix.yaml (standalone mode): edit the file")

    def get(self, key: str) -> Item | None:
        self._fail()
        return super().get(key)

    def put(self, key: str, value: dict[str, Any]) -> Item:
        if self.mode:
            self._fail()
        return super().put(key, value)

    def watch(self, since: int, on_change: OnChange) -> None:
        pass


def test_store_errors(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "db")
    with serve(create_app(store, make_registry(), KEY)) as url:
        c = httpx.Client(base_url=url + "/apisix/admin", headers={"X-API-KEY": KEY})
        store.mode = "down"
        r = c.get("/routes/1")
        assert r.status_code == 503
        assert r.json() == {
            "error_msg": "config store unavailable: etcd at 127.0.0.1:2379: connection refused"
        }
        store.mode = "ro"
        r = c.put("/upstreams/1", json=UPSTREAM)
        assert r.status_code == 405 and "standalone" in r.json()["error_msg"]
        store.mode = ""
        assert c.put("/upstreams/1", json=UPSTREAM).status_code == 201
    store.close()


# ---------------------------------------------------------------------------------------------- auth
def test_auth(admin: Admin) -> None:
    raw = httpx.Client(base_url=admin.url + "/apisix/admin")
    for headers in ({}, {"X-API-KEY": "wrong"}, {"X-API-KEY": ""}, {"X-API-KEY": KEY + "x"}):
        r = raw.get("/routes", headers=headers)
        assert r.status_code == 401 and r.json() == {"error_msg": "failed to check token"}
        assert raw.put("/routes/1", json={}, headers=headers).status_code == 401
    # unauthenticated requests are refused before their body is read or checked
    assert raw.put("/routes/1", content=b"x" * (2 << 20)).status_code == 401
    assert raw.get("/routes", params={"api_key": KEY}).status_code == 200
    viewer = {"X-API-KEY": VIEWER}
    admin.ok("PUT", "/upstreams/1", UPSTREAM, status=201)
    assert raw.get("/upstreams/1", headers=viewer).status_code == 200
    assert raw.get("/upstreams", headers=viewer).status_code == 200
    assert raw.get("/plugins/list", headers=viewer).status_code == 200
    for method in ("PUT", "POST", "PATCH", "DELETE"):
        r = raw.request(method, "/upstreams/1", json=UPSTREAM, headers=viewer)
        assert r.status_code == 403 and r.json()["error_msg"], method
    assert raw.post("/schema/validate/upstreams", json=UPSTREAM, headers=viewer).status_code == 200
    assert admin.store.get("upstreams/1").modified_index == 1  # type: ignore[union-attr]
    raw.close()


@pytest.mark.parametrize(("allow", "status"), [(["10.0.0.0/8"], 403), (["10.0.0.0/8", "127.0.0.0/24"], 200)])
def test_allow_admin(tmp_path: Path, allow: list[str], status: int) -> None:
    store = SqliteStore(tmp_path / "db")
    with serve(create_app(store, make_registry(), KEY, allow_admin=allow)) as url:
        r = httpx.get(url + "/apisix/admin/routes", headers={"X-API-KEY": KEY})
        assert r.status_code == status
        if status == 403:
            assert "127.0.0.1" in r.json()["error_msg"]
    store.close()


# ------------------------------------------------------------------------------- plugins, schema, doc
def test_plugins(admin: Admin) -> None:
    names = admin.ok("GET", "/plugins/list")
    assert names == sorted(names) and {"limit-count", "limit-req", "proxy-rewrite", "key-auth"} <= set(names)
    schema = admin.ok("GET", "/plugins/limit-count")
    assert "count" in schema["$defs"]["Config"]["properties"] or "count" in str(schema)
    consumer = admin.ok("GET", "/plugins/key-auth", params={"schema_type": "consumer"})
    assert "key" in str(consumer) and "header" not in str(consumer)
    assert "not found" in admin.err("GET", "/plugins/nope", status=404)


def test_schema_validate(admin: Admin) -> None:
    valid = {"valid": True}
    assert (
        admin.ok("POST", "/schema/validate/routes", {"uri": "/a", "upstream": UPSTREAM}, status=200) == valid
    )
    assert admin.ok("POST", "/schema/validate/upstreams", UPSTREAM, status=200) == valid
    r = admin.c.post("/schema/validate/routes", json={"uri": "/a", "upstream": {"nodes": [{"host": "h"}]}})
    assert r.status_code == 400
    assert any("upstream.nodes[0].port: required" in e for e in r.json()["errors"])
    assert "username" in admin.err("POST", "/schema/validate/consumers", {})
    assert admin.ok("POST", "/schema/validate/consumers", {"username": "jack"}, status=200) == valid
    admin.err("POST", "/schema/validate/nope", {}, status=404)
    admin.err("GET", "/schema/validate/routes", status=405)
    assert admin.store.list("") == [] and admin.writes == []


def test_openapi(admin: Admin) -> None:
    doc = admin.ok("GET", "/openapi.json")
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-KEY",
    }
    paths = doc["paths"]
    p = "/apisix/admin"
    for res in (
        "routes",
        "services",
        "upstreams",
        "consumer_groups",
        "ssls",
        "global_rules",
        "plugin_configs",
    ):
        assert set(paths[f"{p}/{res}"]) == {"get", "put", "post"}
        assert set(paths[f"{p}/{res}/{{id}}"]) == {"get", "put", "patch", "delete"}
        assert set(paths[f"{p}/{res}/{{id}}/{{sub_path}}"]) == {"patch"}
    assert set(paths[f"{p}/consumers"]) == {"get", "put"}
    assert set(paths[f"{p}/consumers/{{username}}"]) == {"get", "put", "patch", "delete"}
    assert set(paths[f"{p}/consumers/{{username}}/credentials/{{id}}"]) == {"get", "put", "patch", "delete"}
    assert set(paths[f"{p}/plugin_metadata/{{plugin_name}}"]) == {"get", "put", "patch", "delete"}
    for extra in ("/plugins/list", "/plugins/{plugin_name}", "/schema/validate/{resource}", "/openapi.json"):
        assert p + extra in paths
    route = doc["components"]["schemas"]["Route"]
    assert "uri" in route["properties"] and "upstream" in route["properties"]
    assert doc["components"]["schemas"]["Upstream"]["properties"]["type"]["enum"]


# ------------------------------------------------------------------------------------- schemathesis
@pytest.fixture
def seeded(admin: Admin) -> Admin:
    """Objects for the fuzzer to find (ids it is likely to try) besides those it creates itself."""
    admin.ok("PUT", "/upstreams/1", UPSTREAM, status=201)
    admin.ok("PUT", "/routes/1", {"uri": "/a", "upstream_id": "1"}, status=201)
    admin.ok("PUT", "/consumers/jack", {"plugins": {"key-auth": {"key": "k"}}}, status=201)
    admin.ok("PUT", "/consumers/jack/credentials/c1", {"plugins": {"key-auth": {"key": "k2"}}}, status=201)
    return admin


def _schemathesis_schema(url: str) -> Any:
    import schemathesis  # a test dependency (pyproject's `test` extra): never skipped

    return schemathesis.openapi.from_url(url + "/apisix/admin/openapi.json", headers={"X-API-KEY": KEY})


def test_schemathesis_fuzz(seeded: Admin) -> None:
    from hypothesis import HealthCheck, settings
    from hypothesis import given as hgiven
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = _schemathesis_schema(seeded.url)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) > 40
    for op in ops:

        @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @hgiven(case=op.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(headers={"X-API-KEY": KEY}, checks=checks)

        run()


def test_schemathesis_unauthenticated(seeded: Admin) -> None:
    schema = _schemathesis_schema(seeded.url)
    seen = 0
    for result in schema.get_all_operations():
        op = result.ok()
        params = {p.name: "1" for p in op.path_parameters}
        if "plugin_name" in params:
            params["plugin_name"] = "key-auth"
        if "resource" in params:
            params["resource"] = "routes"
        body = {"body": {}} if op.get_request_payload_content_types() else {}
        case = op.Case(path_parameters=params, headers={}, **body)
        r = case.call(headers={"X-API-KEY": "wrong"})
        assert r.status_code == 401, (op.method, op.path, r.status_code, r.text)
        r = case.call()
        assert r.status_code == 401, (op.method, op.path, r.status_code, r.text)
        seen += 1
    assert seen > 40
