"""csrf (APISIX's double-submit cookie) through a real gateway and the echo upstream."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Gateway, Upstream, route, validate

Up = Callable[..., Upstream]
Gw = Callable[..., Gateway]
NAME = "apisix-csrf-token"


def token_of(resp: httpx.Response, name: str = NAME) -> str:
    cookies = [c for c in resp.headers.get_list("set-cookie") if c.startswith(f"{name}=")]
    assert len(cookies) == 1, resp.headers
    return cookies[0].split(";")[0].split("=", 1)[1]


def post(gw: Gateway, path: str, header: str | None, cookie: str | None, name: str = NAME) -> httpx.Response:
    headers = {}
    if header is not None:
        headers[name] = header
    if cookie is not None:
        headers["Cookie"] = f"other=1; {name}={cookie}"
    with httpx.Client(timeout=10) as c:
        return c.post(f"{gw.url}{path}", headers=headers, content=b"x")


def test_csrf_issues_and_checks_tokens(upstream: Up, gateway: Gw) -> None:
    up = upstream()
    gw = gateway({"routes": [route("r", "/c", up, plugins={"csrf": {"key": "server-secret"}}),
                             route("o", "/other", up, plugins={"csrf": {"key": "another-secret"}})]})  # fmt: skip
    with httpx.Client(timeout=10) as c:
        r = c.get(f"{gw.url}/c")
    assert r.status_code == 200
    cookie = next(v for v in r.headers.get_list("set-cookie") if v.startswith(NAME))
    attrs = cookie.split(";")[1:]
    assert "path=/" in attrs and "SameSite=Lax" in attrs
    expires = parsedate_to_datetime(next(a for a in attrs if a.startswith("Expires="))[8:]).timestamp()
    assert abs(expires - (time.time() + 7200)) < 60
    token = token_of(r)
    assert "server-secret" not in base64.b64decode(token).decode()
    # The token sent back in the header and the cookie: the unsafe method goes through.
    r = post(gw, "/c", token, token)
    assert r.status_code == 200 and r.json()["body"] == "x"
    assert token_of(r) != token  # every response carries a fresh token
    for header, cookie, msg in [
        (None, token, "no csrf token in headers"),
        ("", token, "no csrf token in headers"),
        (token, None, "no csrf cookie"),
        (token, token_of(post(gw, "/c", token, token)), "csrf token mismatch"),
        ("garbage", "garbage", "Failed to verify the csrf token signature"),
    ]:
        r = post(gw, "/c", header, cookie)
        assert (r.status_code, r.json()) == (401, {"error_msg": msg}), msg
        assert "x-upstream" not in r.headers
    # A token made for another key does not verify; neither does a tampered one.
    with httpx.Client(timeout=10) as c:
        foreign = token_of(c.get(f"{gw.url}/other"))
    assert post(gw, "/c", foreign, foreign).status_code == 401
    data = json.loads(base64.b64decode(token))
    data["expires"] += 3600
    forged = base64.b64encode(json.dumps(data).encode()).decode()
    assert post(gw, "/c", forged, forged).json() == {"error_msg": "Failed to verify the csrf token signature"}
    # Safe methods need nothing.
    with httpx.Client(timeout=10) as c:
        for method in ("GET", "HEAD", "OPTIONS"):
            assert c.request(method, f"{gw.url}/c").status_code == 200
        assert c.put(f"{gw.url}/c").status_code == 401
        assert c.delete(f"{gw.url}/c").status_code == 401


def test_csrf_token_age_counts_whole_seconds() -> None:
    """A token issued in second T is good through second T + expires, whatever fraction of a second
    it was issued or checked in (APISIX counts with ngx.time())."""
    from pygateway.builtin_plugins.csrf import Csrf

    p = Csrf(Csrf.parse_config({"key": "k", "expires": 1}))
    token = p.make_token(100)  # issued at 100.x
    assert [p.valid(token, t) for t in (100.0, 100.99, 101.0, 101.99, 102.0, 150.0)] == [
        True, True, True, True, False, False,
    ]  # fmt: skip


def test_csrf_custom_name_and_expiry(upstream: Up, gateway: Gw) -> None:
    up = upstream()
    gw = gateway({"routes": [route("r", "/c", up, plugins={"csrf": {"key": "k", "name": "x-csrf", "expires": 1}})]})
    with httpx.Client(timeout=10) as c:
        token = token_of(c.get(f"{gw.url}/c"), "x-csrf")
    assert post(gw, "/c", token, token, name="x-csrf").status_code == 200
    assert post(gw, "/c", token, token).status_code == 401  # the default name is not looked at
    time.sleep(2.1)
    r = post(gw, "/c", token, token, name="x-csrf")
    assert (r.status_code, r.json()) == (401, {"error_msg": "Failed to verify the csrf token signature"})


@pytest.mark.parametrize(("conf", "needle"), [
    ({}, "key: required"),
    ({"key": "k", "expires": "soon"}, "expires"),
    ({"key": "k", "name": "bad name"}, "name"),
    ({"key": "k", "secure": True}, "secure"),
])  # fmt: skip
def test_csrf_config_errors(tmp_path: Path, conf: dict[str, Any], needle: str) -> None:
    out = validate(tmp_path, {"routes": [
        {"id": "r1", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}}, "plugins": {"csrf": conf}}]})  # fmt: skip
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "routes[r1].plugins.csrf" in text and needle in text, text
