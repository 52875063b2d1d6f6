"""The shipped auth plugins (key-auth, basic-auth, consumer-restriction) and cors through real sockets:
a gateway process in front of the echo upstream, which answers with what it received."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Gateway, Upstream, consumer, free_port, route, sent, validate

Up = Callable[..., Upstream]
Gw = Callable[..., Gateway]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


# ============================================================================ key-auth
KEY_CONSUMERS = [
    consumer("jack", **{"key-auth": {"key": "jack-key"}}),
    consumer("rose", **{"key-auth": {"key": "rose-key"}}),
]


def test_key_auth_header_and_query(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway({"consumers": KEY_CONSUMERS, "routes": [route("r", "/k", up, plugins={"key-auth": {}})]})
    r = client.get(f"{gw.url}/k", headers={"apikey": "jack-key"})
    assert r.status_code == 200
    assert sent(r, "apikey") == ["jack-key"]  # hide_credentials defaults to false
    assert sent(r, "x-consumer-username") == ["jack"]
    r = client.get(f"{gw.url}/k", params={"apikey": "rose-key", "a": "1"})
    assert r.status_code == 200
    assert sent(r, "x-consumer-username") == ["rose"]
    assert r.json()["query"] == "apikey=rose-key&a=1"
    # The header wins over the query argument.
    r = client.get(f"{gw.url}/k", headers={"apikey": "jack-key"}, params={"apikey": "nope"})
    assert sent(r, "x-consumer-username") == ["jack"]
    # A client cannot claim an identity: the header is replaced by the authenticated one.
    r = client.get(f"{gw.url}/k", headers={"apikey": "rose-key", "X-Consumer-Username": "jack"})
    assert sent(r, "x-consumer-username") == ["rose"]


def test_key_auth_missing_and_invalid_keys(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway({"consumers": KEY_CONSUMERS, "routes": [route("r", "/k", up, plugins={"key-auth": {}})]})
    r = client.get(f"{gw.url}/k")
    assert r.status_code == 401
    assert r.json() == {"message": "Missing API key in request"}
    assert r.headers["www-authenticate"] == 'Key realm="key"'
    assert "x-upstream" not in r.headers
    for kw in ({"headers": {"apikey": "secret-guess"}}, {"params": {"apikey": "secret-guess"}}):
        r = client.get(f"{gw.url}/k", **kw)  # type: ignore[arg-type]
        assert r.status_code == 401
        assert r.json() == {"message": "Invalid API key in request"}
        assert "secret-guess" not in r.text and "secret-guess" not in str(r.headers)
    # Another header name does not count.
    assert client.get(f"{gw.url}/k", headers={"x-apikey": "jack-key"}).status_code == 401


def test_key_auth_custom_names_and_hide_credentials(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    conf = {"header": "X-Key", "query": "token", "hide_credentials": True}
    gw = gateway({"consumers": KEY_CONSUMERS, "routes": [
        route("hide", "/hide", up, plugins={"key-auth": conf}),
        route("realm", "/realm", up, plugins={"key-auth": {"realm": "api"}}),
    ]})  # fmt: skip
    r = client.get(f"{gw.url}/hide", headers={"X-Key": "jack-key", "X-Other": "1"})
    assert r.status_code == 200
    assert sent(r, "x-key") == [] and sent(r, "x-other") == ["1"]
    assert sent(r, "x-consumer-username") == ["jack"]
    r = client.get(f"{gw.url}/hide?a=1&token=rose-key&b=x%20y")
    assert r.status_code == 200
    assert r.json()["query"] == "a=1&b=x%20y"
    assert sent(r, "x-consumer-username") == ["rose"]
    assert client.get(f"{gw.url}/hide", headers={"apikey": "jack-key"}).status_code == 401
    assert client.get(f"{gw.url}/realm").headers["www-authenticate"] == 'Key realm="api"'


def test_key_auth_anonymous_consumer(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    cfg = {"consumers": [*KEY_CONSUMERS, {"username": "anon"}], "routes": [
        route("r", "/k", up, plugins={"key-auth": {"anonymous_consumer": "anon"}})]}  # fmt: skip
    gw = gateway(cfg)
    assert sent(client.get(f"{gw.url}/k"), "x-consumer-username") == ["anon"]
    assert sent(client.get(f"{gw.url}/k", headers={"apikey": "bad"}), "x-consumer-username") == ["anon"]
    assert sent(client.get(f"{gw.url}/k", headers={"apikey": "jack-key"}), "x-consumer-username") == ["jack"]


def test_key_auth_with_per_consumer_limit_count(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway({"consumers": KEY_CONSUMERS, "routes": [route("r", "/k", up, plugins={
        "key-auth": {}, "limit-count": {"count": 2, "time_window": 60, "key": "consumer_name"}})]})  # fmt: skip
    jack = [client.get(f"{gw.url}/k", headers={"apikey": "jack-key"}).status_code for _ in range(3)]
    assert jack == [200, 200, 503]
    assert client.get(f"{gw.url}/k", headers={"apikey": "rose-key"}).status_code == 200  # rose's own quota
    assert client.get(f"{gw.url}/k").status_code == 401  # auth runs before the limiter


@pytest.mark.parametrize("path", ["/public/../private/x", "/public/%2e%2e/private/x", "//private/x",
                                  "/public/%2E%2E/private/x", "/public/./../private/x"])  # fmt: skip
def test_key_auth_path_tricks_still_need_the_key(upstream: Up, gateway: Gw, path: str) -> None:
    up = upstream()
    gw = gateway({"consumers": KEY_CONSUMERS, "routes": [
        route("private", "/private/*", up, plugins={"key-auth": {}}),
        route("public", "/public/*", up),
    ]})  # fmt: skip
    with httpx.Client(timeout=10) as c:
        assert c.get(f"{gw.url}/public/x").status_code == 200
        # Send the path verbatim (httpx would otherwise normalize it).
        r = c.send(c.build_request("GET", gw.url, extensions={"target": path.encode()}))
        assert r.status_code == 401, r.text
        r = c.send(
            c.build_request(
                "GET", gw.url, headers={"apikey": "jack-key"}, extensions={"target": path.encode()}
            )
        )
        assert r.status_code == 200
        assert r.json()["path"] == "/private/x"


def test_key_auth_config_errors(tmp_path: Path) -> None:
    up = {"nodes": {"127.0.0.1:1": 1}}
    cfg = {
        "consumers": [consumer("bob", **{"key-auth": {"kee": "x"}})],
        "routes": [
            {"id": "r1", "uri": "/", "upstream": up, "plugins": {"key-auth": {"header": "bad header"}}}
        ],
    }
    out = validate(tmp_path, cfg)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "routes[r1].plugins.key-auth" in text and "consumers[bob].plugins.key-auth" in text


# ============================================================================ basic-auth
BASIC_CONSUMERS = [
    consumer("jack", **{"basic-auth": {"username": "jack-u", "password": "jack-p:with:colons"}}),
    consumer("rose", **{"basic-auth": {"username": "rose-u", "password": "rose-p"}}),
]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_good_credentials(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway({"consumers": BASIC_CONSUMERS, "routes": [
        route("keep", "/keep", up, plugins={"basic-auth": {}}),
        route("hide", "/hide", up, plugins={"basic-auth": {"hide_credentials": True}}),
    ]})  # fmt: skip
    r = client.get(f"{gw.url}/keep", headers=basic("jack-u", "jack-p:with:colons"))
    assert r.status_code == 200
    assert sent(r, "x-consumer-username") == ["jack"]
    assert sent(r, "authorization") == [basic("jack-u", "jack-p:with:colons")["Authorization"]]
    r = client.get(f"{gw.url}/hide", headers=basic("rose-u", "rose-p"))
    assert r.status_code == 200
    assert sent(r, "x-consumer-username") == ["rose"]
    assert sent(r, "authorization") == []
    assert client.get(f"{gw.url}/keep", auth=("rose-u", "rose-p")).status_code == 200  # httpx's own encoding


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "Missing authorization in request"),
    ({"Authorization": "Basic !!!not-base64"}, "Invalid authorization in request"),
    ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, "Invalid authorization in request"),
    ({"Authorization": "Bearer abc"}, "Invalid authorization in request"),
    ({"Authorization": "Basic"}, "Invalid authorization in request"),
    (basic("jack-u", "wrong"), "Invalid user authorization"),
    (basic("jack-u", "jack-p"), "Invalid user authorization"),  # a prefix of the password
    (basic("rose-u", "jack-p:with:colons"), "Invalid user authorization"),  # another consumer's password
    (basic("nobody", "rose-p"), "Invalid user authorization"),
    (basic("jack", "jack-p:with:colons"), "Invalid user authorization"),  # consumer name is not the username
])  # fmt: skip
def test_basic_auth_rejections(
    upstream: Up, gateway: Gw, client: httpx.Client, headers: dict[str, str], message: str
) -> None:
    up = upstream()
    gw = gateway({"consumers": BASIC_CONSUMERS, "routes": [route("r", "/b", up, plugins={"basic-auth": {}})]})
    r = client.get(f"{gw.url}/b", headers=headers)
    assert r.status_code == 401
    assert r.json() == {"message": message}
    assert r.headers["www-authenticate"] == 'Basic realm="basic"'
    assert "x-upstream" not in r.headers


def test_basic_auth_realm_anonymous_and_config_errors(
    upstream: Up, gateway: Gw, client: httpx.Client, tmp_path: Path
) -> None:
    up = upstream()
    gw = gateway({"consumers": [*BASIC_CONSUMERS, {"username": "guest"}], "routes": [
        route("realm", "/realm", up, plugins={"basic-auth": {"realm": "internal"}}),
        route("anon", "/anon", up, plugins={"basic-auth": {"anonymous_consumer": "guest"}}),
    ]})  # fmt: skip
    assert client.get(f"{gw.url}/realm").headers["www-authenticate"] == 'Basic realm="internal"'
    assert sent(client.get(f"{gw.url}/anon"), "x-consumer-username") == ["guest"]
    r = client.get(f"{gw.url}/anon", headers=basic("rose-u", "rose-p"))
    assert sent(r, "x-consumer-username") == ["rose"]
    cfg = {"consumers": [consumer("bob", **{"basic-auth": {"username": "bob"}})],
           "routes": [{"id": "r1", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}},
                       "plugins": {"basic-auth": {"hide_credentials": "yes"}}}]}  # fmt: skip
    out = validate(tmp_path, cfg)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "routes[r1].plugins.basic-auth" in text and "consumers[bob].plugins.basic-auth" in text


# ============================================================================ consumer-restriction
# (path sent verbatim, status without / with credentials, path the upstream receives when let through)
PATH_TRICKS = [
    ("/public/../private/x", 401, 200, "/private/x"),
    ("/public/%2e%2e/private/x", 401, 200, "/private/x"),
    ("/public/.%2e/private/x", 401, 200, "/private/x"),
    ("/public/x/../../private/x", 401, 200, "/private/x"),
    ("/../private/x", 401, 200, "/private/x"),
    ("//private/x", 401, 200, "/private/x"),
    ("/private//x", 401, 200, "/private/x"),
    ("/private/./x", 401, 200, "/private/x"),
    ("/%70rivate/x", 401, 200, "/private/x"),  # percent-encoded letter
    ("/private/X", 401, 200, "/private/X"),
    # Routing is case-sensitive (as APISIX): a case variant matches no route, so nothing is proxied.
    ("/PRIVATE/x", 404, 404, None),
    ("/Private/x", 404, 404, None),
    # Encoded '/' and '\\' (and a raw '\\') are refused before routing.
    ("/public/..%2Fprivate/x", 400, 400, None),
    ("/public/%2e%2e%2fprivate/x", 400, 400, None),
    ("/private%2Fx", 400, 400, None),
    ("/public/..%5Cprivate/x", 400, 400, None),
    ("/public/..\\private/x", 400, 400, None),
]


@pytest.mark.parametrize(("plugin", "creds"), [
    ("key-auth", {"apikey": "jack-key"}),
    ("basic-auth", basic("jack-u", "jack-p:with:colons")),
])  # fmt: skip
def test_auth_plugins_authorize_the_path_the_upstream_receives(
    upstream: Up, gateway: Gw, plugin: str, creds: dict[str, str]
) -> None:
    """Dot segments, doubled slashes, encodings and case variants aimed at a protected route are
    authorized (or refused) for exactly the path the upstream then receives."""
    up = upstream()
    jack = {**KEY_CONSUMERS[0]["plugins"], **BASIC_CONSUMERS[0]["plugins"]}  # both credentials
    gw = gateway({"consumers": [consumer("jack", **jack)], "routes": [
        route("private", "/private/*", up, plugins={plugin: {}}),
        route("public", "/public/*", up),
    ]})  # fmt: skip
    with httpx.Client(timeout=10) as c:
        for path, without, with_creds, seen in PATH_TRICKS:
            r = c.send(c.build_request("GET", gw.url, extensions={"target": path.encode()}))
            assert r.status_code == without, (path, r.text)
            assert "x-upstream" not in r.headers, path
            r = c.send(c.build_request("GET", gw.url, headers=creds, extensions={"target": path.encode()}))
            assert r.status_code == with_creds, (path, r.text)
            if seen is not None:
                assert r.json()["path"] == seen, path
                assert sent(r, "x-consumer-username") == ["jack"]


def restricted(up: Upstream, **routes: dict[str, Any]) -> dict[str, Any]:
    """Routes /<name> with key-auth (jack, rose) and the given consumer-restriction conf."""
    return {"consumers": KEY_CONSUMERS, "routes": [
        route(name, f"/{name}", up, plugins={"key-auth": {}, "consumer-restriction": conf})
        for name, conf in routes.items()]}  # fmt: skip


def test_consumer_restriction_whitelist_and_blacklist(
    upstream: Up, gateway: Gw, client: httpx.Client
) -> None:
    up = upstream()
    gw = gateway(restricted(up, white={"whitelist": ["jack"]}, black={"blacklist": ["jack"]},
                            custom={"blacklist": ["rose"], "rejected_code": 451, "rejected_msg": "go away"}))  # fmt: skip
    jack, rose = {"apikey": "jack-key"}, {"apikey": "rose-key"}
    assert client.get(f"{gw.url}/white", headers=jack).status_code == 200
    r = client.get(f"{gw.url}/white", headers=rose)
    assert (r.status_code, r.json()) == (403, {"message": "The consumer_name is forbidden."})
    assert "x-upstream" not in r.headers
    r = client.get(f"{gw.url}/black", headers=jack)
    assert (r.status_code, r.json()) == (403, {"message": "The consumer_name is forbidden."})
    assert client.get(f"{gw.url}/black", headers=rose).status_code == 200
    r = client.get(f"{gw.url}/custom", headers=rose)
    assert (r.status_code, r.json()) == (451, {"message": "go away"})
    assert client.get(f"{gw.url}/custom", headers=jack).status_code == 200
    # Auth failures come first (rewrite), with key-auth's own message.
    r = client.get(f"{gw.url}/white", headers={"apikey": "nope"})
    assert (r.status_code, r.json()) == (401, {"message": "Invalid API key in request"})


def test_consumer_restriction_missing_consumer(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(
        {"routes": [route("r", "/r", up, plugins={"consumer-restriction": {"blacklist": ["jack"]}})]}
    )
    r = client.get(f"{gw.url}/r")
    assert (r.status_code, r.json()) == (401, {"message": "Missing authentication or identity verification."})


def test_consumer_restriction_allowed_by_methods(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(restricted(up, m={"allowed_by_methods": [{"user": "jack", "methods": ["GET"]}]},
                            wm={"whitelist": ["rose"], "allowed_by_methods": [{"user": "jack", "methods": ["POST"]}]}))  # fmt: skip
    jack, rose = {"apikey": "jack-key"}, {"apikey": "rose-key"}
    assert client.get(f"{gw.url}/m", headers=jack).status_code == 200
    assert client.post(f"{gw.url}/m", headers=jack).status_code == 403
    assert client.post(f"{gw.url}/m", headers=rose).status_code == 200  # no rule names rose
    # As in APISIX, allowed_by_methods cannot let in a consumer the whitelist leaves out.
    assert client.post(f"{gw.url}/wm", headers=jack).status_code == 403
    assert client.delete(f"{gw.url}/wm", headers=rose).status_code == 200  # whitelisted


def test_consumer_restriction_by_route_id(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway({"routes": [
        route("open", "/open", up, plugins={"consumer-restriction": {"type": "route_id", "whitelist": ["open"]}}),
        route("shut", "/shut", up, plugins={"consumer-restriction": {"type": "route_id", "blacklist": ["shut"]}}),
    ]})  # fmt: skip
    assert client.get(f"{gw.url}/open").status_code == 200
    r = client.get(f"{gw.url}/shut")
    assert (r.status_code, r.json()) == (403, {"message": "The route_id is forbidden."})


@pytest.mark.parametrize(("conf", "needle"), [
    ({"type": "service_id"}, "one of whitelist, blacklist"),
    ({"type": "consumer_group_id", "blacklist": "g"}, "blacklist"),
    ({"rejected_code": 403}, "one of whitelist, blacklist"),
    ({"whitelist": []}, "whitelist"),
    ({"whitelist": ["a"], "rejected_code": 100}, "rejected_code"),
    ({"whitelist": ["a"], "type": "ip"}, "type"),
])  # fmt: skip
def test_consumer_restriction_config_errors(tmp_path: Path, conf: dict[str, Any], needle: str) -> None:
    cfg = {"routes": [{"id": "r1", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}},
                       "plugins": {"consumer-restriction": conf}}]}  # fmt: skip
    out = validate(tmp_path, cfg)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "routes[r1].plugins.consumer-restriction" in text and needle in text, text


# ============================================================================ cors
PREFLIGHT = {"Origin": "http://a.example", "Access-Control-Request-Method": "PUT",
             "Access-Control-Request-Headers": "x-one, x-two"}  # fmt: skip


def test_cors_preflight_is_answered_at_the_gateway(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    dead = free_port()  # nothing listens there: a proxied request would fail
    gw = gateway({"routes": [
        {"id": "dead", "uri": "/dead", "upstream": {"nodes": {f"127.0.0.1:{dead}": 1}}, "plugins": {"cors": {}}},
        route("live", "/live", up, plugins={"cors": {}}),
    ]})  # fmt: skip
    r = client.options(f"{gw.url}/dead", headers=PREFLIGHT)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-allow-methods"] == "*"
    assert r.headers["access-control-allow-headers"] == "*"
    assert r.headers["access-control-max-age"] == "5"
    assert "access-control-allow-credentials" not in r.headers
    assert "access-control-expose-headers" not in r.headers  # unset by default
    assert "vary" not in r.headers
    r = client.options(f"{gw.url}/live", headers=PREFLIGHT)
    assert r.status_code == 200 and "x-upstream" not in r.headers  # the echo upstream was not called
    assert client.get(f"{gw.url}/dead").status_code >= 500  # the upstream really is unreachable


def test_cors_simple_requests(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    conf = {"allow_origins": "http://a.example,https://b.example:8443", "allow_methods": "GET,POST",
            "allow_headers": "x-one", "expose_headers": "x-upstream", "max_age": 60}  # fmt: skip
    gw = gateway({"routes": [route("list", "/list", up, plugins={"cors": conf}),
                             route("star", "/star", up, plugins={"cors": {}}),
                             route("plain", "/plain", up)]})  # fmt: skip
    r = client.get(f"{gw.url}/list", headers={"Origin": "https://b.example:8443"})
    assert r.status_code == 200 and r.headers["x-upstream"] == "up"
    assert r.headers["access-control-allow-origin"] == "https://b.example:8443"
    assert r.headers["vary"] == "Origin"
    assert r.headers["access-control-allow-methods"] == "GET,POST"
    assert r.headers["access-control-allow-headers"] == "x-one"
    assert r.headers["access-control-expose-headers"] == "x-upstream"
    assert r.headers["access-control-max-age"] == "60"
    # A disallowed origin (or none) gets no CORS headers, but the request still goes through.
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "http://a.example.evil"}, {}):
        r = client.get(f"{gw.url}/list", headers=headers)
        assert r.status_code == 200
        assert not [k for k in r.headers if k.startswith("access-control-")]
    r = client.options(f"{gw.url}/list", headers={**PREFLIGHT, "Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = client.get(f"{gw.url}/star", headers={"Origin": "http://any.example"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert (
        "access-control-allow-origin"
        not in client.get(f"{gw.url}/plain", headers={"Origin": "http://x"}).headers
    )


def test_cors_credentials_and_forced_wildcards(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    cred = {"allow_origins": "http://a.example", "allow_methods": "GET", "allow_headers": "x-one",
            "allow_credential": True}  # fmt: skip
    forced = {"allow_origins": "**", "allow_methods": "**", "allow_headers": "**", "allow_credential": True}
    gw = gateway({"routes": [route("cred", "/cred", up, plugins={"cors": cred}),
                             route("forced", "/forced", up, plugins={"cors": forced})]})  # fmt: skip
    r = client.get(f"{gw.url}/cred", headers={"Origin": "http://a.example"})
    assert r.headers["access-control-allow-origin"] == "http://a.example"
    assert r.headers["access-control-allow-credentials"] == "true"
    r = client.options(f"{gw.url}/forced", headers={**PREFLIGHT, "Origin": "http://z.example"})
    assert r.headers["access-control-allow-origin"] == "http://z.example"
    assert r.headers["access-control-allow-methods"] == "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"
    assert r.headers["access-control-allow-headers"] == "x-one, x-two"  # what the preflight asked for
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["vary"] == "Origin"


def test_cors_regex_origins(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    conf = {"allow_origins_by_regex": [r"^https://.*\.test\.com$", r"^http://localhost:\d+$"],
            "timing_allow_origins_by_regex": [r"^https://.*\.test\.com$"]}  # fmt: skip
    gw = gateway({"routes": [route("rx", "/rx", up, plugins={"cors": conf})]})
    for origin in ("https://a.test.com", "https://b.c.test.com", "http://localhost:3000"):
        r = client.get(f"{gw.url}/rx", headers={"Origin": origin})
        assert r.headers["access-control-allow-origin"] == origin
    assert client.get(f"{gw.url}/rx", headers={"Origin": "https://a.test.com"}).headers["timing-allow-origin"] == (
        "https://a.test.com")  # fmt: skip
    # With regexes, allow_origins (default "*") is ignored: other origins get nothing.
    for origin in ("https://test.com.evil", "http://a.test.com", "https://evil.com"):
        r = client.get(f"{gw.url}/rx", headers={"Origin": origin})
        assert "access-control-allow-origin" not in r.headers and "timing-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in client.get(f"{gw.url}/rx").headers


@pytest.mark.parametrize(("conf", "needle"), [
    ({"allow_credential": True}, "you can not set '*' for other option when 'allow_credential' is true"),
    ({"allow_credential": True, "allow_origins": "http://a", "allow_methods": "GET", "allow_headers": "x",
      "expose_headers": "*"}, "allow_credential"),
    ({"allow_origins": "a.example"}, "allow_origins"),
    ({"allow_origins_by_regex": ["("]}, "allow_origins_by_regex[0]"),
    ({"allow_origins_by_regex": []}, "allow_origins_by_regex"),
    ({"max_age": "soon"}, "max_age"),
    ({"allow_origins_by_metadata": ["x"]}, "allow_origins_by_metadata"),
])  # fmt: skip
def test_cors_config_errors(tmp_path: Path, conf: dict[str, Any], needle: str) -> None:
    cfg = {
        "routes": [
            {"id": "r1", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}}, "plugins": {"cors": conf}}
        ]
    }
    out = validate(tmp_path, cfg)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "routes[r1].plugins.cors" in text and needle in text, text
