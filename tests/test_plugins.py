"""The shipped plugins (request-id, proxy-rewrite, response-rewrite) through real sockets: a gateway
process in front of the echo upstream, which answers with what it received."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import ROOT, Gateway, Upstream, route

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def sent(resp: httpx.Response, name: str) -> list[str]:
    """Values of a request header as the echo upstream received it."""
    return [v for k, v in resp.json()["headers"] if k.lower() == name.lower()]


def start(gateway: Callable[..., Gateway], *routes: dict[str, Any]) -> Gateway:
    return gateway({"routes": list(routes)})


# ============================================================================ request-id
def test_request_id_generated_and_passed_upstream(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    gw = start(gateway, route("r", "/rid", up, plugins={"request-id": {}}))
    r1 = client.get(f"{gw.url}/rid")
    assert r1.status_code == 200
    rid = r1.headers["x-request-id"]
    assert UUID.fullmatch(rid)
    assert sent(r1, "x-request-id") == [rid]
    r2 = client.get(f"{gw.url}/rid")
    assert r2.headers["x-request-id"] != rid  # unique per request


def test_request_id_keeps_client_id_but_not_an_empty_one(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    gw = start(gateway, route("r", "/rid", up, plugins={"request-id": {}}))
    r = client.get(f"{gw.url}/rid", headers={"X-Request-Id": "client-123"})
    assert r.headers["x-request-id"] == "client-123"
    assert sent(r, "x-request-id") == ["client-123"]
    r = client.get(f"{gw.url}/rid", headers={"X-Request-Id": ""})
    assert UUID.fullmatch(r.headers["x-request-id"])
    assert sent(r, "x-request-id") == [r.headers["x-request-id"]]


def test_request_id_header_name_and_include_in_response(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    gw = start(
        gateway,
        route("named", "/named", up, plugins={"request-id": {"header_name": "X-Trace-Id"}}),
        route("hidden", "/hidden", up, plugins={"request-id": {"include_in_response": False}}),
    )
    r = client.get(f"{gw.url}/named")
    assert UUID.fullmatch(r.headers["x-trace-id"])
    assert "x-request-id" not in r.headers
    assert sent(r, "x-trace-id") == [r.headers["x-trace-id"]]
    r = client.get(f"{gw.url}/hidden")
    assert "x-request-id" not in r.headers
    assert UUID.fullmatch(sent(r, "x-request-id")[0])  # still sent upstream


def test_request_id_algorithms(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    gw = start(
        gateway,
        route("nano", "/nano", up, plugins={"request-id": {"algorithm": "nanoid"}}),
        route("range", "/range", up, plugins={
            "request-id": {"algorithm": "range_id", "range_id": {"length": 10, "char_set": "abcdef"}}}),
        route("range-default", "/range-default", up, plugins={"request-id": {"algorithm": "range_id"}}),
        route("ksuid", "/ksuid", up, plugins={"request-id": {"algorithm": "ksuid"}}),
    )  # fmt: skip
    assert re.fullmatch(r"[A-Za-z0-9_-]{21}", client.get(f"{gw.url}/nano").headers["x-request-id"])
    assert re.fullmatch(r"[a-f]{10}", client.get(f"{gw.url}/range").headers["x-request-id"])
    assert re.fullmatch(r"[A-Za-z0-9]{16}", client.get(f"{gw.url}/range-default").headers["x-request-id"])
    assert re.fullmatch(r"[A-Za-z0-9]{27}", client.get(f"{gw.url}/ksuid").headers["x-request-id"])


# ============================================================================ proxy-rewrite
def test_proxy_rewrite_uri_keeps_query_and_resolves_variables(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    gw = start(
        gateway,
        route("plain", "/plain", up, plugins={"proxy-rewrite": {"uri": "/new/path"}}),
        route(
            "vars", "/vars", up, plugins={"proxy-rewrite": {"uri": "/u/$arg_name/${http_x_user}/$missing"}}
        ),
        route("q", "/q", up, plugins={"proxy-rewrite": {"uri": "/with?x=1"}}),
    )
    b = client.get(f"{gw.url}/plain", params={"a": "1"}).json()
    assert (b["path"], b["query"]) == ("/new/path", "a=1")
    b = client.get(f"{gw.url}/vars", params={"name": "jo"}, headers={"X-User": "ann"}).json()
    assert b["path"] == "/u/jo/ann/"  # unset variables become ""
    b = client.get(f"{gw.url}/q", params={"a": "2"}).json()
    assert (b["path"], b["query"]) == ("/with", "x=1&a=2")
    b = client.get(f"{gw.url}/q").json()
    assert (b["path"], b["query"]) == ("/with", "x=1")


def test_proxy_rewrite_regex_uri_first_match_wins(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    conf = {
        "regex_uri": [r"^/re/(\w+)/(\w+)$", "/$2-${1}", "^/re/other/(.*)", "/o/$1", "^/re/(.*)", "/any/$1"]
    }
    gw = start(gateway, route("re", "/re/*", up, plugins={"proxy-rewrite": conf}),
               route("nomatch", "/keep/*", up, plugins={"proxy-rewrite": {"regex_uri": ["^/zzz", "/x"]}}))  # fmt: skip
    assert client.get(f"{gw.url}/re/hello/world").json()["path"] == "/world-hello"
    assert client.get(f"{gw.url}/re/other/a/b").json()["path"] == "/o/a/b"
    b = client.get(f"{gw.url}/re/x/y/z", params={"k": "v"}).json()
    assert (b["path"], b["query"]) == ("/any/x/y/z", "k=v")
    assert client.get(f"{gw.url}/keep/me").json()["path"] == "/keep/me"  # no match: unchanged


def test_proxy_rewrite_method(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    gw = start(gateway, route("m", "/m", up, plugins={"proxy-rewrite": {"method": "POST"}}))
    b = client.get(f"{gw.url}/m").json()
    assert b["method"] == "POST"


def test_proxy_rewrite_headers_add_set_remove(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    conf = {
        "regex_uri": [r"^/h/(\w+)", "/h/$1"],
        "headers": {
            "add": {"X-Multi": "added", "X-Client": "$remote_addr"},
            "set": {"X-Api-Version": "v2", "X-Captured": "id-$1", "X-Arg": "$arg_a", "X-Num": 7},
            "remove": ["X-Secret"],
        },
    }
    gw = start(
        gateway,
        route("h", "/h/*", up, plugins={"proxy-rewrite": conf}),
        route(
            "flat", "/flat", up, plugins={"proxy-rewrite": {"headers": {"X-Api-Version": "v3", "X-Gone": ""}}}
        ),
    )
    r = client.get(f"{gw.url}/h/abc", params={"a": "q"},
                   headers={"X-Multi": "orig", "X-Api-Version": "v1", "X-Secret": "s"})  # fmt: skip
    assert sent(r, "x-multi") == ["orig", "added"]
    assert sent(r, "x-client") == ["127.0.0.1"]
    assert sent(r, "x-api-version") == ["v2"]
    assert sent(r, "x-captured") == ["id-abc"]
    assert sent(r, "x-arg") == ["q"]
    assert sent(r, "x-num") == ["7"]
    assert sent(r, "x-secret") == []
    r = client.get(f"{gw.url}/flat", headers={"X-Api-Version": "v1", "X-Gone": "bye"})
    assert sent(r, "x-api-version") == ["v3"]
    assert sent(r, "x-gone") == []  # "" removes (legacy form)


def test_proxy_rewrite_host(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    gw = start(gateway, route("host", "/host", up, plugins={"proxy-rewrite": {"host": "backend.example"}}))
    r = client.get(f"{gw.url}/host")
    assert sent(r, "host") == ["backend.example"]


# ============================================================================ response-rewrite
def test_response_rewrite_status_headers_and_body(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    conf = {
        "status_code": 201,
        "body": '{"code":"ok"}\n',
        "headers": {
            "add": ["X-Added: one", "X-Client: $remote_addr"],
            "set": {
                "X-Server-Id": 3,
                "Content-Type": "application/json; charset=utf-8",
                "X-Status": "$status",
            },
            "remove": ["x-upstream"],
        },
    }
    gw = start(
        gateway,
        route("rr", "/rr", up, plugins={"response-rewrite": conf}),
        route(
            "flat", "/flat", up, plugins={"response-rewrite": {"headers": {"X-Upstream": "", "X-New": "n"}}}
        ),
    )
    r = client.get(f"{gw.url}/rr")
    assert r.status_code == 201
    assert r.content == b'{"code":"ok"}\n'
    assert r.headers.get("content-length") in (None, str(len(r.content)))
    assert r.headers["x-added"] == "one"
    assert r.headers["x-client"] == "127.0.0.1"
    assert r.headers["x-server-id"] == "3"
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.headers["x-status"] == "201"
    assert "x-upstream" not in r.headers
    r = client.get(f"{gw.url}/flat")
    assert r.status_code == 200
    assert r.json()["path"] == "/flat"  # body untouched
    assert "x-upstream" not in r.headers and r.headers["x-new"] == "n"


def test_response_rewrite_replaces_a_large_streamed_body(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    body = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00binary").decode()
    gw = start(
        gateway,
        route("big", "/big/*", up, plugins={"response-rewrite": {"body": "small"}}),
        route("b64", "/b64", up, plugins={"response-rewrite": {"body": body, "body_base64": True}}),
    )
    r = client.get(f"{gw.url}/big/1000000")  # many upstream chunks, all dropped
    assert (r.status_code, r.content) == (200, b"small")
    r = client.get(f"{gw.url}/b64")
    assert r.content == b"\x89PNG\r\n\x1a\n\x00binary"


def test_response_rewrite_filters(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    conf = {"filters": [
        {"regex": "GET", "replace": "got", "scope": "global"},
        {"regex": r"\"upstream\":\"(\w+)\"", "replace": '"backend":"$1!"'},
        {"regex": '"RAW_PATH"', "replace": '"raw"', "options": "ijo"},
    ]}  # fmt: skip
    gw = start(gateway, route("f", "/f", up, plugins={"response-rewrite": conf}))
    r = client.get(f"{gw.url}/f")
    b = r.json()
    assert b["method"] == "got"
    assert b["backend"] == "up!" and "upstream" not in b
    assert b["raw"] == "/f" and "raw_path" not in b
    assert r.headers.get("content-length") in (None, str(len(r.content)))


def test_response_rewrite_vars_condition(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    on_error = {"vars": [["status", "==", 500]], "status_code": 200, "body": "masked"}
    by_header = {"vars": [["upstream_http_x_upstream", "~~", "^u"], ["arg_v", "in", ["1", "2"]]],
                 "headers": {"set": {"X-Matched": "yes"}}}  # fmt: skip
    logic = {"vars": ["OR", ["http_x_a", "==", "1"], ["status", "!", "<", 400]],
             "headers": {"set": {"X-Matched": "yes"}}}  # fmt: skip
    gw = start(
        gateway,
        route("err", "/status/*", up, plugins={"response-rewrite": on_error}),
        route("hdr", "/hdr", up, plugins={"response-rewrite": by_header}),
        route(
            "logic",
            "/logic/*",
            up,
            plugins={
                "proxy-rewrite": {"regex_uri": ["^/logic/(.*)", "/status/$1"]},
                "response-rewrite": logic,
            },
        ),
    )
    r = client.get(f"{gw.url}/status/500")
    assert (r.status_code, r.content) == (200, b"masked")
    r = client.get(f"{gw.url}/status/404")  # condition false: untouched
    assert r.status_code == 404 and r.json()["path"] == "/status/404"
    assert client.get(f"{gw.url}/hdr", params={"v": "2"}).headers.get("x-matched") == "yes"
    assert "x-matched" not in client.get(f"{gw.url}/hdr", params={"v": "3"}).headers
    assert client.get(f"{gw.url}/logic/404").headers.get("x-matched") == "yes"  # not < 400
    assert "x-matched" not in client.get(f"{gw.url}/logic/200").headers
    assert client.get(f"{gw.url}/logic/200", headers={"X-A": "1"}).headers.get("x-matched") == "yes"


def test_response_rewrite_vars_negative_on_success(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    conf = {"vars": [["status", "~=", 200]], "headers": {"set": {"X-Not-Ok": "1"}}}
    gw = start(gateway, route("ne", "/status/*", up, plugins={"response-rewrite": conf}))
    assert "x-not-ok" not in client.get(f"{gw.url}/status/200").headers
    assert client.get(f"{gw.url}/status/503").headers.get("x-not-ok") == "1"


# ============================================================================ plugins together
def test_plugins_compose_on_one_route(
    upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    up = upstream()
    plugins = {
        "request-id": {},
        "proxy-rewrite": {"uri": "/status/502"},
        "response-rewrite": {"vars": [["status", ">=", 500]], "status_code": 503, "body": "down"},
    }
    gw = start(gateway, route("all", "/all", up, plugins=plugins))
    r = client.get(f"{gw.url}/all")
    assert (r.status_code, r.content) == (503, b"down")
    assert UUID.fullmatch(r.headers["x-request-id"])


# ============================================================================ config errors
def validate(tmp_path: Path, plugins: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    cfg = {
        "routes": [
            {"id": "r1", "uri": "/a", "upstream": {"nodes": {"127.0.0.1:1980": 1}}, "plugins": plugins}
        ]
    }
    path = tmp_path / "apisix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "pygateway.cli", "validate", str(path)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    ("plugins", "expected"),
    [
        ({"proxy-rewrite": {"regex_uri": ["^/a/(.*", "/$1"]}}, "routes[r1].plugins.proxy-rewrite.regex_uri[0]"),
        ({"proxy-rewrite": {"regex_uri": ["^/a/(.*)", "/$2"]}}, "routes[r1].plugins.proxy-rewrite.regex_uri[1]"),
        ({"proxy-rewrite": {"regex_uri": ["^/a", "/b", "^/c"]}}, "routes[r1].plugins.proxy-rewrite.regex_uri"),
        ({"proxy-rewrite": {"uri": "no-slash"}}, "routes[r1].plugins.proxy-rewrite.uri"),
        ({"proxy-rewrite": {"method": "FETCH"}}, "routes[r1].plugins.proxy-rewrite.method"),
        ({"proxy-rewrite": {"headers": {"set": {"Bad Name": "x"}}}},
         "routes[r1].plugins.proxy-rewrite.headers.set.Bad Name"),
        ({"proxy-rewrite": {"use_real_request_uri_unsafe": True}},
         "routes[r1].plugins.proxy-rewrite.use_real_request_uri_unsafe"),
        ({"proxy-rewrite": {"urii": "/x"}}, "routes[r1].plugins.proxy-rewrite.urii"),
        ({"request-id": {"algorithm": "snowflake"}}, "routes[r1].plugins.request-id.algorithm"),
        ({"request-id": {"range_id": {"length": 2}}}, "routes[r1].plugins.request-id.range_id.length"),
        ({"response-rewrite": {"status_code": 700}}, "routes[r1].plugins.response-rewrite.status_code"),
        ({"response-rewrite": {"vars": [["status", "=~", 200]]}}, "routes[r1].plugins.response-rewrite.vars[0]"),
        ({"response-rewrite": {"vars": [["status", "~~", "("]]}}, "routes[r1].plugins.response-rewrite.vars[0]"),
        ({"response-rewrite": {"body": "%%%", "body_base64": True}}, "routes[r1].plugins.response-rewrite.body"),
        ({"response-rewrite": {"body": "x", "filters": [{"regex": "a", "replace": "b"}]}},
         "routes[r1].plugins.response-rewrite.filters"),
        ({"response-rewrite": {"headers": {"add": ["no-colon"]}}},
         "routes[r1].plugins.response-rewrite.headers.add[0]"),
    ],
)  # fmt: skip
def test_invalid_plugin_config_is_reported_by_validate(
    tmp_path: Path, plugins: dict[str, Any], expected: str
) -> None:
    res = validate(tmp_path, plugins)
    assert res.returncode == 1, res.stdout + res.stderr
    assert expected + ":" in res.stderr, res.stderr


def test_valid_plugin_config_passes_validate(tmp_path: Path) -> None:
    res = validate(tmp_path, {
        "request-id": {"header_name": "X-Trace", "include_in_response": False, "algorithm": "range_id",
                       "range_id": {"length": 8}},
        "proxy-rewrite": {"uri": "/x/$arg_id", "regex_uri": ["^/a/(.*)", "/b/$1"], "method": "PUT",
                          "host": "example.com:8080", "headers": {"X-A": "1"}},
        "response-rewrite": {"status_code": 200, "body": "aGk=", "body_base64": True,
                             "vars": ["!OR", ["status", "==", 500], ["http_x", "in", ["a"]]],
                             "headers": {"add": ["Set-Cookie: a=b; Max-Age=1"], "remove": ["server"]}},
    })  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "ok (1 routes)" in res.stdout


# ============================================================================ a failing plugin
BOOM = """
from pygateway import Plugin


class Boom(Plugin):
    name = "boom"
    priority = 100

    def access(self, req, ctx):
        if req.args.get("fail") == "1":
            raise RuntimeError("boom")
        return None
"""


def test_raising_plugin_gives_500_and_gateway_keeps_serving(
    tmp_path: Path, upstream: Callable[..., Upstream], gateway: Callable[..., Gateway], client: httpx.Client
) -> None:
    pdir = tmp_path / "myplugins"
    pdir.mkdir()
    (pdir / "boom.py").write_text(BOOM)
    up = upstream()
    gw = gateway({"routes": [route("b", "/b", up, plugins={"boom": {}, "request-id": {}})]},
                 args=["--plugin-dir", str(pdir)])  # fmt: skip
    for _ in range(3):
        r = client.get(f"{gw.url}/b", params={"fail": "1"})
        assert r.status_code == 500
        assert r.json() == {"error_msg": "plugin error"}
        r = client.get(f"{gw.url}/b")
        assert r.status_code == 200 and r.json()["path"] == "/b"
    assert gw.proc.poll() is None
    gw.wait_log("boom")
