"""hmac-auth (APISIX 3.x, draft-cavage-http-signatures) through a real gateway and the echo upstream.
Signatures are made here independently of the plugin, following APISIX's documented client code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Gateway, Upstream, consumer, route, sent, validate

Up = Callable[..., Upstream]
Gw = Callable[..., Gateway]

CONSUMERS = [
    consumer("jack", **{"hmac-auth": {"key_id": "jack-key", "secret_key": "jack-secret"}}),
    consumer("rose", **{"hmac-auth": {"key_id": "rose-key", "secret_key": "rose-secret"}}),
]
HASHES = {"hmac-sha1": hashlib.sha1, "hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def sign(method: str, target: str, *, key_id: str = "jack-key", secret: str = "jack-secret",
         algorithm: str = "hmac-sha256", headers: dict[str, str] | None = None,
         signed: tuple[str, ...] = ("@request-target", "date"), date: str | None = None) -> dict[str, str]:  # fmt: skip
    """Request headers carrying a Signature over `signed` (APISIX's documented signing string)."""
    out = {"Date": date if date is not None else formatdate(usegmt=True), **(headers or {})}
    lines = [key_id]
    lower = {k.lower(): v for k, v in out.items()}
    for name in signed:
        if name == "@request-target":
            lines.append(f"{method} {target}")
        elif name in lower:
            lines.append(f"{name}: {lower[name]}")
    mac = hmac.new(secret.encode(), ("\n".join(lines) + "\n").encode(), HASHES[algorithm]).digest()
    out["Authorization"] = (f'Signature keyId="{key_id}",algorithm="{algorithm}",'
                            f'headers="{" ".join(signed)}",signature="{base64.b64encode(mac).decode()}"')  # fmt: skip
    return out


def cfg(up: Upstream, **conf: Any) -> dict[str, Any]:
    return {"consumers": CONSUMERS, "routes": [route("r", "/h/*", up, plugins={"hmac-auth": conf})]}


def test_hmac_auth_good_signatures(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(cfg(up))
    r = client.get(f"{gw.url}/h/x", headers=sign("GET", "/h/x"))
    assert r.status_code == 200, r.text
    assert sent(r, "x-consumer-username") == ["jack"]
    assert len(sent(r, "authorization")) == 1  # hide_credentials defaults to false
    # Every algorithm, the query in the request target, another consumer.
    for alg in HASHES:
        h = sign("POST", "/h/y?b=2&a=1", key_id="rose-key", secret="rose-secret", algorithm=alg)
        r = client.post(f"{gw.url}/h/y?b=2&a=1", headers=h)
        assert r.status_code == 200, (alg, r.text)
        assert sent(r, "x-consumer-username") == ["rose"]
    # Extra signed headers, in the client's order.
    h = sign("GET", "/h/x", headers={"X-Custom": "v1"}, signed=("x-custom", "@request-target", "date"))
    assert client.get(f"{gw.url}/h/x", headers=h).status_code == 200


def test_hmac_auth_rejections(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(cfg(up))
    url = f"{gw.url}/h/x"
    r = client.get(url)
    assert (r.status_code, r.json()) == (401, {"message": "client request can't be validated: missing Authorization header"})
    r = client.get(url, headers={"Authorization": "Basic amFjazpqYWNr"})
    assert r.status_code == 401
    assert r.json() == {"message": "client request can't be validated: Authorization header does not start with 'Signature'"}
    generic = {"message": "client request can't be validated"}
    bad = [
        sign("GET", "/h/x", secret="jack-guess"),  # wrong secret
        sign("GET", "/h/other"),  # signed for another path
        sign("POST", "/h/x"),  # signed for another method
        sign("GET", "/h/x", key_id="nobody"),  # unknown key id
        sign("GET", "/h/x", key_id="rose-key", secret="jack-secret"),  # someone else's key id
        sign("GET", "/h/x", date=formatdate(0, usegmt=True)),  # 1970: clock skew
        sign("GET", "/h/x", date="yesterday"),  # not a GMT date
        {**sign("GET", "/h/x"), "Date": formatdate(usegmt=True) + "x"},  # date changed after signing
    ]
    no_date = sign("GET", "/h/x", signed=("@request-target",))
    del no_date["Date"]
    bad.append(no_date)
    for h in bad:
        r = client.get(url, headers=h)
        assert (r.status_code, r.json()) == (401, generic), h
        assert "jack-secret" not in r.text and "rose-secret" not in r.text
    # Tampering with the signature field or dropping it.
    h = sign("GET", "/h/x")
    h["Authorization"] = h["Authorization"].replace('signature="', 'signature="AAAA')
    assert client.get(url, headers=h).status_code == 401
    h["Authorization"] = h["Authorization"].split(",signature=")[0]
    assert client.get(url, headers=h).json() == generic
    # The request target is the path the upstream receives: a dot-segment path signed verbatim fails...
    trick = "/h/z/../x"
    with httpx.Client(timeout=10) as c:
        req = c.build_request("GET", gw.url, headers=sign("GET", trick), extensions={"target": trick.encode()})
        assert c.send(req).status_code == 401
        # ... and one signed for the normalized path passes, with the upstream seeing that path.
        req = c.build_request("GET", gw.url, headers=sign("GET", "/h/x"), extensions={"target": trick.encode()})
        r = c.send(req)
        assert r.status_code == 200 and r.json()["path"] == "/h/x"


def test_hmac_auth_route_options(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway({"consumers": [*CONSUMERS, {"username": "anon"}], "routes": [
        route("algs", "/algs", up, plugins={"hmac-auth": {"allowed_algorithms": ["hmac-sha512"]}}),
        route("skew", "/skew", up, plugins={"hmac-auth": {"clock_skew": 1000}}),
        route("sh", "/sh", up, plugins={"hmac-auth": {"signed_headers": ["x-tenant"]}}),
        route("hide", "/hide", up, plugins={"hmac-auth": {"hide_credentials": True}}),
        route("anon", "/anon", up, plugins={"hmac-auth": {"anonymous_consumer": "anon"}}),
    ]})  # fmt: skip
    assert client.get(f"{gw.url}/algs", headers=sign("GET", "/algs")).status_code == 401
    assert client.get(f"{gw.url}/algs", headers=sign("GET", "/algs", algorithm="hmac-sha512")).status_code == 200
    old = formatdate(time.time() - 600, usegmt=True)
    assert client.get(f"{gw.url}/skew", headers=sign("GET", "/skew", date=old)).status_code == 200
    assert client.get(f"{gw.url}/sh", headers=sign("GET", "/sh", date=old)).status_code == 401  # default 300 s
    # signed_headers: the signature must cover x-tenant.
    assert client.get(f"{gw.url}/sh", headers=sign("GET", "/sh", headers={"X-Tenant": "t"})).status_code == 401
    h = sign("GET", "/sh", headers={"X-Tenant": "t"}, signed=("@request-target", "date", "x-tenant"))
    assert client.get(f"{gw.url}/sh", headers=h).status_code == 200
    r = client.get(f"{gw.url}/hide", headers=sign("GET", "/hide"))
    assert r.status_code == 200 and sent(r, "authorization") == []
    assert sent(client.get(f"{gw.url}/anon"), "x-consumer-username") == ["anon"]
    r = client.get(f"{gw.url}/anon", headers=sign("GET", "/anon"))
    assert sent(r, "x-consumer-username") == ["jack"]


def test_hmac_auth_validates_the_body(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway({"consumers": CONSUMERS, "routes": [
        route("b", "/b", up, plugins={"hmac-auth": {"validate_request_body": True, "signed_headers": ["digest"]}})
    ]})  # fmt: skip
    body = b'{"amount": 10}'
    digest = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
    signed = ("@request-target", "date", "digest")
    h = sign("POST", "/b", headers={"Digest": digest}, signed=signed)
    r = client.post(f"{gw.url}/b", headers=h, content=body)
    assert r.status_code == 200, r.text
    assert r.json()["body"] == body.decode()
    # The body was changed on the way: the digest no longer matches.
    r = client.post(f"{gw.url}/b", headers=h, content=b'{"amount": 99}')
    assert (r.status_code, r.json()) == (401, {"message": "client request can't be validated"})
    # A digest the client did not sign fails the signed_headers rule; no digest at all fails too.
    h = sign("POST", "/b", headers={"Digest": digest})
    assert client.post(f"{gw.url}/b", headers=h, content=body).status_code == 401
    h = sign("POST", "/b", signed=signed)
    assert client.post(f"{gw.url}/b", headers=h, content=body).status_code == 401
    # An empty body has a digest too.
    empty = "SHA-256=" + base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert client.get(f"{gw.url}/b", headers=sign("GET", "/b", headers={"Digest": empty}, signed=signed)).status_code == 200


@pytest.mark.parametrize(("where", "conf", "needle"), [
    ("route", {"allowed_algorithms": ["md5"]}, "allowed_algorithms"),
    ("route", {"allowed_algorithms": []}, "allowed_algorithms"),
    ("route", {"clock_skew": 0}, "clock_skew"),
    ("route", {"signed_headers": [""]}, "signed_headers"),
    ("route", {"keep_headers": True}, "keep_headers"),
    ("consumer", {"key_id": "k"}, "secret_key"),
    ("consumer", {"key_id": "", "secret_key": "s"}, "key_id"),
    ("consumer", {"access_key": "k", "secret_key": "s"}, "access_key"),
])  # fmt: skip
def test_hmac_auth_config_errors(tmp_path: Path, where: str, conf: dict[str, Any], needle: str) -> None:
    route_conf = conf if where == "route" else {}
    consumers = [consumer("bob", **{"hmac-auth": conf if where == "consumer" else {"key_id": "k", "secret_key": "s"}})]
    out = validate(tmp_path, {"consumers": consumers, "routes": [
        {"id": "r1", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}}, "plugins": {"hmac-auth": route_conf}}]})  # fmt: skip
    assert out.returncode == 1
    text = out.stdout + out.stderr
    label = "routes[r1].plugins.hmac-auth" if where == "route" else "consumers[bob].plugins.hmac-auth"
    assert label in text and needle in text, text
