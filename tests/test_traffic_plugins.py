"""Traffic plugins (redirect, echo, mocking, fault-injection, request-validation) through real sockets:
a gateway process in front of the echo upstream, which answers with what it received."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import ROOT, Gateway, Upstream, free_port, route

GatewayFactory = Callable[..., Gateway]
UpstreamFactory = Callable[..., Upstream]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, follow_redirects=False) as c:
        yield c


def start(gateway: GatewayFactory, *routes: dict[str, Any]) -> Gateway:
    return gateway({"routes": list(routes)})


def dead_route(rid: str, uri: str, plugins: dict[str, Any]) -> dict[str, Any]:
    """A route whose only node has nothing listening: it answers only if a plugin short-circuits."""
    return {"id": rid, "uri": uri, "upstream": {"nodes": {f"127.0.0.1:{free_port()}": 1}}, "plugins": plugins}


# ============================================================================ redirect
def test_redirect_uri_with_variables_and_ret_code(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    gw = start(
        gateway,
        dead_route("plain", "/plain", {"redirect": {"uri": "/new"}}),
        dead_route("vars", "/vars/*", {"redirect": {"uri": "${uri}/index.html?u=$arg_user$missing",
                                                             "ret_code": 301}}),
        dead_route("abs", "/abs", {"redirect": {"uri": "https://example.com/x/\\$keep"}}),
    )  # fmt: skip
    r = client.get(f"{gw.url}/plain", params={"a": "1"})
    assert (r.status_code, r.headers["location"]) == (302, "/new")  # query not kept by default
    assert r.content == b""
    r = client.get(f"{gw.url}/vars/dir", params={"user": "ann"})
    assert (r.status_code, r.headers["location"]) == (301, "/vars/dir/index.html?u=ann")
    r = client.post(f"{gw.url}/abs")
    assert (r.status_code, r.headers["location"]) == (302, "https://example.com/x/\\$keep")


def test_redirect_regex_uri_and_no_match_goes_upstream(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    up = upstream()
    conf = {"regex_uri": [r"^/old/(\w+)/(\w+)$", "/new/$2-${1}"], "ret_code": 307}
    gw = start(gateway, route("re", "/old/*", up, plugins={"redirect": conf}))
    r = client.get(f"{gw.url}/old/a/b")
    assert (r.status_code, r.headers["location"]) == (307, "/new/b-a")
    r = client.get(f"{gw.url}/old/a/b/c")  # no match: proxied
    assert r.status_code == 200 and r.json()["path"] == "/old/a/b/c"


def test_redirect_append_query_string_and_encode_uri(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    gw = start(
        gateway,
        dead_route("aq", "/aq", {"redirect": {"uri": "/to", "append_query_string": True}}),
        dead_route("aq2", "/aq2", {"redirect": {"uri": "/to?x=1", "append_query_string": True}}),
        dead_route("enc", "/enc", {"redirect": {"uri": "/a b/é?q=1 2", "encode_uri": True}}),
        dead_route("raw", "/raw", {"redirect": {"uri": "/a b"}}),
    )  # fmt: skip
    assert client.get(f"{gw.url}/aq", params={"a": "1", "b": "2"}).headers["location"] == "/to?a=1&b=2"
    assert client.get(f"{gw.url}/aq").headers["location"] == "/to"
    assert client.get(f"{gw.url}/aq2", params={"a": "1"}).headers["location"] == "/to?x=1&a=1"
    r = client.get(f"{gw.url}/enc")
    assert r.headers["location"] == "/a%20b/%C3%A9?q=1 2"  # only the path part is encoded
    assert r.headers["location"] != client.get(f"{gw.url}/raw").headers["location"]


def test_redirect_http_to_https(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    up = upstream()
    gw = start(gateway, route("tls", "/tls/*", up, plugins={"redirect": {"http_to_https": True}}),
               route("off", "/off", up, plugins={"redirect": {"http_to_https": False}}))  # fmt: skip
    r = client.get(f"{gw.url}/tls/p", params={"q": "1"}, headers={"Host": "Example.COM:8080"})
    assert (r.status_code, r.headers["location"]) == (301, "https://example.com/tls/p?q=1")
    r = client.post(f"{gw.url}/tls/p", headers={"Host": "example.com"})
    assert (r.status_code, r.headers["location"]) == (308, "https://example.com/tls/p")
    r = client.get(f"{gw.url}/tls/p", headers={"X-Forwarded-Proto": "HTTPS"})  # already https
    assert r.status_code == 200 and r.json()["path"] == "/tls/p"
    assert client.get(f"{gw.url}/off").status_code == 200


# ============================================================================ echo
def test_echo_wraps_or_replaces_the_upstream_body_and_sets_headers(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    up = upstream()
    gw = start(
        gateway,
        route("wrap", "/wrap", up, plugins={"echo": {"before_body": "<<", "after_body": ">>\n"}}),
        route("replace", "/replace", up, plugins={"echo": {"body": "hello", "headers": {"X-Echo": "1", "X-Upstream": 7}}}),
        route("all", "/all", up, plugins={"echo": {"before_body": "[", "body": "mid", "after_body": "]"}}),
        route("big", "/big/*", up, plugins={"echo": {"before_body": "A", "after_body": "Z"}}),
    )  # fmt: skip
    r = client.get(f"{gw.url}/wrap")
    assert r.status_code == 200
    assert r.content.startswith(b"<<{") and r.content.endswith(b"}>>\n")
    assert r.content[2:-3].decode().count('"path":"/wrap"') == 1
    assert r.headers.get("content-length") in (None, str(len(r.content)))
    r = client.get(f"{gw.url}/replace")
    assert (r.status_code, r.content) == (200, b"hello")
    assert r.headers["x-echo"] == "1" and r.headers["x-upstream"] == "7"  # replaces the upstream's value
    assert client.get(f"{gw.url}/all").content == b"[mid]"
    r = client.get(f"{gw.url}/big/300000")  # many chunks: before once, after once
    assert r.content == b"A" + b"x" * 300000 + b"Z"


# ============================================================================ mocking
def test_mocking_answers_without_the_upstream(gateway: GatewayFactory, client: httpx.Client) -> None:
    gw = start(
        gateway,
        dead_route("ex", "/ex", {"mocking": {"response_example": '{"a":1,"ip":"$remote_addr"}'}}),
        dead_route("custom", "/custom", {"mocking": {
            "response_status": 201, "content_type": "text/plain", "response_example": "hi $arg_name",
            "with_mock_header": False, "response_headers": {"X-Foo": "bar", "X-Num": 2}}}),
    )  # fmt: skip
    r = client.get(f"{gw.url}/ex")
    assert r.status_code == 200
    assert r.json() == {"a": 1, "ip": "127.0.0.1"}
    assert r.headers["content-type"] == "application/json;charset=utf8"
    assert r.headers["x-mock-by"].startswith("APISIX/")
    r = client.post(f"{gw.url}/custom", params={"name": "jo"})
    assert (r.status_code, r.text) == (201, "hi jo")
    assert r.headers["content-type"] == "text/plain"
    assert "x-mock-by" not in r.headers
    assert (r.headers["x-foo"], r.headers["x-num"]) == ("bar", "2")


def test_mocking_generates_a_body_from_a_schema(gateway: GatewayFactory, client: httpx.Client) -> None:
    schema = {"properties": {
        "name": {"type": "string", "example": "abcd"},
        "score": {"type": "number", "example": 1.5},
        "count": {"type": "integer"},
        "flag": {"type": "boolean", "example": True},
        "tags": {"type": "array", "items": {"type": "string"}},
        "nested": {"type": "object", "properties": {"n": {"type": "integer", "example": 7.9}}},
    }}  # fmt: skip
    gw = start(
        gateway,
        dead_route("json", "/json", {"mocking": {"response_schema": schema}}),
        dead_route(
            "xml", "/xml", {"mocking": {"response_schema": schema, "content_type": "application/xml"}}
        ),
    )
    b = client.get(f"{gw.url}/json").json()
    assert (b["name"], b["score"], b["flag"], b["nested"]) == ("abcd", 1.5, True, {"n": 7})
    assert isinstance(b["count"], int) and 1 <= b["count"] <= 10000
    assert 1 <= len(b["tags"]) <= 3 and all(isinstance(t, str) and t for t in b["tags"])
    r = client.get(f"{gw.url}/xml")
    assert r.text.startswith("<data>") and "<name>abcd</name>" in r.text and "<n>7</n>" in r.text


def test_mocking_delay_does_not_block_the_worker(gateway: GatewayFactory) -> None:
    gw = start(
        gateway,
        dead_route("slow", "/slow", {"mocking": {"response_example": "slow", "delay": 1}}),
        dead_route("fast", "/fast", {"mocking": {"response_example": "fast"}}),
    )
    results: dict[str, tuple[float, str]] = {}

    def get(key: str, path: str) -> None:
        t0 = time.monotonic()
        with httpx.Client(timeout=10) as c:
            text = c.get(f"{gw.url}{path}").text
        results[key] = (time.monotonic() - t0, text)

    threads = [threading.Thread(target=get, args=(k, "/slow")) for k in ("s1", "s2")]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.2)
    get("fast", "/fast")  # answered while both slow requests are waiting
    for t in threads:
        t.join()
    total = time.monotonic() - t0
    assert results["fast"][1] == "fast" and results["fast"][0] < 0.5
    assert results["s1"][1] == results["s2"][1] == "slow"
    assert all(results[k][0] >= 0.95 for k in ("s1", "s2"))
    assert total < 1.8  # the two delays overlapped on the single worker


# ============================================================================ fault-injection
def test_fault_injection_abort(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    up = upstream()
    abort = {"http_status": 503, "body": "fault from $remote_addr\n",
             "headers": {"X-Fault": "yes", "X-Arg": "$arg_a", "X-N": 1}}  # fmt: skip
    cond = {
        "abort": {
            "http_status": 403,
            "body": "vars matched",
            "vars": [[["arg_name", "==", "jack"], ["arg_age", "==", 18]], [["http_x_test", "~~", "^a"]]],
        }
    }
    gw = start(
        gateway,
        route("all", "/all", up, plugins={"fault-injection": {"abort": abort}}),
        route("never", "/never", up, plugins={"fault-injection": {"abort": {"http_status": 500, "percentage": 0}}}),
        route("half", "/half", up, plugins={"fault-injection": {"abort": {"http_status": 500, "percentage": 50}}}),
        route("cond", "/cond", up, plugins={"fault-injection": cond}),
    )  # fmt: skip
    r = client.get(f"{gw.url}/all", params={"a": "z"})
    assert (r.status_code, r.text) == (503, "fault from 127.0.0.1\n")
    assert (r.headers["x-fault"], r.headers["x-arg"], r.headers["x-n"]) == ("yes", "z", "1")
    assert "x-upstream" not in r.headers  # the upstream was not called
    for _ in range(5):
        assert client.get(f"{gw.url}/never").status_code == 200
    statuses = {client.get(f"{gw.url}/half").status_code for _ in range(40)}
    assert statuses == {200, 500}
    r = client.get(f"{gw.url}/cond", params={"name": "jack", "age": "18"})
    assert (r.status_code, r.text) == (403, "vars matched")
    assert client.get(f"{gw.url}/cond", params={"name": "jack", "age": "19"}).status_code == 200  # AND fails
    assert client.get(f"{gw.url}/cond", headers={"X-Test": "abc"}).status_code == 403  # second expr (OR)
    assert client.get(f"{gw.url}/cond", headers={"X-Test": "cba"}).status_code == 200


def test_fault_injection_delay(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    up = upstream()
    both = {"delay": {"duration": 0.5}, "abort": {"http_status": 502, "body": "late"}}
    gw = start(
        gateway,
        route("d", "/d", up, plugins={"fault-injection": {"delay": {"duration": 0.5}}}),
        route("dv", "/dv", up, plugins={"fault-injection": {"delay": {"duration": 0.5, "vars": [[["arg_slow", "==", "1"]]]}}}),
        route("both", "/both", up, plugins={"fault-injection": both}),
    )  # fmt: skip

    def timed(path: str, **kw: Any) -> tuple[float, httpx.Response]:
        t0 = time.monotonic()
        r = client.get(f"{gw.url}{path}", **kw)
        return time.monotonic() - t0, r

    took, r = timed("/d")
    assert took >= 0.45 and r.status_code == 200 and r.json()["path"] == "/d"  # delayed, then proxied
    took, r = timed("/dv")
    assert took < 0.4 and r.status_code == 200
    took, r = timed("/dv", params={"slow": "1"})
    assert took >= 0.45 and r.status_code == 200
    took, r = timed("/both")
    assert took >= 0.45 and (r.status_code, r.text) == (502, "late")


# ============================================================================ request-validation
BODY_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 10, "pattern": "^[a-z]+$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"type": "string", "enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
    },
    "additionalProperties": False,
}


def test_request_validation_body(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    up = upstream()
    gw = start(
        gateway,
        route("b", "/b", up, plugins={"request-validation": {"body_schema": BODY_SCHEMA}}),
        route("msg", "/msg", up, plugins={"request-validation": {
            "body_schema": BODY_SCHEMA, "rejected_code": 422, "rejected_msg": "customize reject message"}}),
    )  # fmt: skip
    r = client.post(f"{gw.url}/b", content=b'{"name": "ann",  "age": 30, "name": "bob"}',
                    headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 200
    sent = r.json()["body"]
    assert sent == '{"name":"bob","age":30}'  # re-encoded: the upstream gets what was validated
    cases = [
        ({"age": 3}, 'property "name" is required'),
        ({"name": 5}, 'property "name" validation failed: wrong type: expected string, got number'),
        ({"name": "a"}, 'property "name" validation failed: string too short, expected at least 2, got 1'),
        ({"name": "Ann"}, 'property "name" validation failed: failed to match pattern "^[a-z]+$" with "Ann"'),
        ({"name": "ann", "age": 200}, 'property "age" validation failed: expected 200 to be at most 150'),
        ({"name": "ann", "age": 1.5}, 'property "age" validation failed: wrong type: expected integer, got number'),
        ({"name": "ann", "role": "root"}, 'property "role" validation failed: matches none of the enum values'),
        ({"name": "ann", "tags": ["a", 1]},
         'property "tags" validation failed: failed to validate item 2: wrong type: expected string, got number'),
        ({"name": "ann", "extra": 1}, "additional properties forbidden, found extra"),
        ([1, 2], "wrong type: expected object, got array"),
    ]  # fmt: skip
    for payload, message in cases:
        r = client.post(f"{gw.url}/b", json=payload)
        assert (r.status_code, r.text) == (400, message), payload
    r = client.post(f"{gw.url}/b", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.text.startswith("invalid JSON body")
    assert client.post(f"{gw.url}/b").status_code == 400  # no body
    r = client.post(f"{gw.url}/b", data={"name": "ann", "age": "x"})  # a form: fields are strings
    assert r.status_code == 400 and 'property "age"' in r.text
    r = client.post(f"{gw.url}/msg", json={"name": 1})
    assert (r.status_code, r.text) == (422, "customize reject message")
    assert client.post(f"{gw.url}/msg", json={"name": "ok"}).status_code == 200


def test_request_validation_headers(
    upstream: UpstreamFactory, gateway: GatewayFactory, client: httpx.Client
) -> None:
    up = upstream()
    schema = {"type": "object", "required": ["X-Api-Version", "User-Agent"],
              "properties": {"X-Api-Version": {"type": "string", "enum": ["v1", "v2"]},
                             "User-Agent": {"type": "string", "pattern": "^curl/"}}}  # fmt: skip
    gw = start(gateway, route("h", "/h", up, plugins={"request-validation": {"header_schema": schema}}))
    ok = {"x-api-version": "v2", "User-Agent": "curl/8.0"}
    r = client.post(f"{gw.url}/h", headers=ok, content=b"streamed body")
    assert r.status_code == 200 and r.json()["body"] == "streamed body"
    r = client.get(f"{gw.url}/h", headers={"User-Agent": "curl/8.0"})
    assert (r.status_code, r.text) == (400, 'property "X-Api-Version" is required')
    r = client.get(f"{gw.url}/h", headers={**ok, "x-api-version": "v3"})
    assert (r.status_code, r.text) == (
        400,
        'property "X-Api-Version" validation failed: matches none of the enum values',
    )
    r = client.get(f"{gw.url}/h", headers={**ok, "User-Agent": "Mozilla"})
    assert (
        r.status_code == 400 and 'property "User-Agent" validation failed: failed to match pattern' in r.text
    )


# ============================================================================ config errors
def validate(tmp_path: Path, plugins: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    cfg = {
        "routes": [
            {"id": "r1", "uri": "/a", "upstream": {"nodes": {"127.0.0.1:1980": 1}}, "plugins": plugins}
        ]
    }
    path = tmp_path / "apisix.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return subprocess.run([sys.executable, "-m", "pygateway.cli", "validate", str(path)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip


P = "routes[r1].plugins."
INVALID: list[tuple[dict[str, Any], str]] = [
    ({"redirect": {}}, P + "redirect: exactly one of uri, regex_uri, http_to_https"),
    ({"redirect": {"uri": "/a", "http_to_https": True}}, P + "redirect: exactly one of"),
    ({"redirect": {"http_to_https": True, "append_query_string": True}}, P + "redirect: only one of"),
    ({"redirect": {"uri": "/"}}, P + "redirect.uri:"),
    ({"redirect": {"uri": "/a", "ret_code": 100}}, P + "redirect.ret_code:"),
    ({"redirect": {"regex_uri": ["^/a"]}}, P + "redirect.regex_uri:"),
    ({"redirect": {"regex_uri": ["^/(a", "/b"]}}, P + "redirect.regex_uri[0]:"),
    ({"redirect": {"regex_uri": ["^/(a)", "/$2"]}}, P + "redirect.regex_uri[1]:"),
    ({"echo": {"headers": {"X-A": "1"}}}, P + "echo: at least one of before_body, body, after_body"),
    ({"echo": {"body": "x", "headers": {"X-A": [1]}}}, P + "echo.headers.X-A:"),
    ({"echo": {"body": 1}}, P + "echo.body:"),
    ({"mocking": {}}, P + "mocking: at least one of response_example, response_schema"),
    ({"mocking": {"response_example": "x", "content_type": "image/png"}}, P + "mocking.content_type:"),
    ({"mocking": {"response_example": "x", "response_status": 0}}, P + "mocking.response_status:"),
    ({"mocking": {"response_example": "x", "delay": "soon"}}, P + "mocking.delay:"),
    ({"fault-injection": {}}, P + "fault-injection: at least one of abort, delay"),
    ({"fault-injection": {"abort": {"body": "x"}}}, P + "fault-injection.abort.http_status:"),
    (
        {"fault-injection": {"abort": {"http_status": 500, "percentage": 101}}},
        P + "fault-injection.abort.percentage:",
    ),
    ({"fault-injection": {"delay": {"duration": -1}}}, P + "fault-injection.delay.duration:"),
    (
        {"fault-injection": {"delay": {"duration": 1, "vars": [[["arg_a", "=~", "1"]]]}}},
        P + "fault-injection.delay.vars[0][0]:",
    ),
    (
        {"fault-injection": {"abort": {"http_status": 500, "vars": [["arg_a", "==", "1"]]}}},
        P + "fault-injection.abort.vars[0]:",
    ),
    ({"request-validation": {}}, P + "request-validation: at least one of header_schema, body_schema"),
    ({"request-validation": {"body_schema": {"type": "strng"}}}, P + "request-validation.body_schema.type:"),
    (
        {"request-validation": {"header_schema": {"properties": {"a": {"pattern": "("}}}}},
        P + "request-validation.header_schema.properties.a.pattern:",
    ),
    ({"request-validation": {"body_schema": {"$ref": "#/x"}}}, P + "request-validation.body_schema.$ref:"),
    (
        {"request-validation": {"body_schema": {}, "rejected_code": 600}},
        P + "request-validation.rejected_code:",
    ),
]


@pytest.mark.parametrize(
    ("plugins", "expected"), INVALID, ids=[f"{next(iter(p))}-{i}" for i, (p, _) in enumerate(INVALID)]
)
def test_invalid_config_is_reported_by_validate(
    tmp_path: Path, plugins: dict[str, Any], expected: str
) -> None:
    res = validate(tmp_path, plugins)
    assert res.returncode == 1, res.stdout + res.stderr
    assert expected in res.stderr, res.stderr


def test_valid_configs_pass_validate(tmp_path: Path) -> None:
    res = validate(tmp_path, {
        "redirect": {"regex_uri": ["^/a/(.*)", "/b/$1"], "ret_code": 301, "encode_uri": True,
                     "append_query_string": True},
        "echo": {"before_body": "a", "headers": {"X-A": 1}},
        "mocking": {"response_example": "x", "response_schema": {"properties": {}}, "delay": 1,
                    "content_type": "text/xml; charset=utf-8", "response_headers": {"X-A": "$remote_addr"}},
        "fault-injection": {"abort": {"http_status": 200, "vars": [["OR", ["arg_a", "==", 1], ["arg_b", "~=", 2]]]},
                            "delay": {"duration": 0.5, "percentage": 10}},
        "request-validation": {"body_schema": BODY_SCHEMA, "header_schema": {
            "type": "object", "title": "h", "properties": {"X": {"oneOf": [{"type": "string"}, {"not": {}}]}}}},
    })  # fmt: skip
    assert res.returncode == 0, res.stderr
