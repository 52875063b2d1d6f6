"""jwt-auth through a real gateway: tokens are made here with `hmac` and the `openssl` CLI (no JWT
library), and every refusal is a 401 that echoes neither the token nor the secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Gateway, Upstream, consumer, route, sent, validate

from pygateway._core import check_jws_key, verify_jws_signature

Up = Callable[..., Upstream]
Gw = Callable[..., Gateway]

SECRET = "my-very-secret-hmac-key"
HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(payload: dict[str, Any], header: dict[str, Any]) -> str:
    return f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(payload).encode())}"


def hs_token(payload: dict[str, Any], secret: bytes = SECRET.encode(), alg: str = "HS256", **hdr: Any) -> str:
    signing_input = segments(payload, {"alg": alg, "typ": "JWT", **hdr})
    sig = hmac.new(secret, signing_input.encode(), HASHES[alg[2:]]).digest()
    return f"{signing_input}.{b64u(sig)}"


def der_to_raw(der: bytes, size: int) -> bytes:
    """ECDSA-Sig-Value (SEQUENCE {INTEGER r, INTEGER s}) -> r || s, each `size` bytes."""
    assert der[0] == 0x30
    pos = 3 if der[1] == 0x81 else 2
    out = b""
    for _ in range(2):
        assert der[pos] == 0x02
        n = der[pos + 1]
        out += int.from_bytes(der[pos + 2 : pos + 2 + n], "big").to_bytes(size, "big")
        pos += 2 + n
    return out


class Keys:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.private: dict[str, Path] = {}
        self.public: dict[str, str] = {}
        specs = {
            "RS256": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            "ES256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            "ES384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            "EdDSA": ["-algorithm", "ED25519"],
        }
        for alg, args in specs.items():
            path = root / f"{alg}.pem"
            subprocess.run(["openssl", "genpkey", *args, "-out", str(path)], check=True, capture_output=True)
            pub = subprocess.run(
                ["openssl", "pkey", "-in", str(path), "-pubout"], check=True, capture_output=True
            )
            self.private[alg], self.public[alg] = path, pub.stdout.decode()

    def sign(self, alg: str, payload: dict[str, Any], **hdr: Any) -> str:
        signing_input = segments(payload, {"alg": alg, **hdr})
        data = self.root / "input"
        data.write_bytes(signing_input.encode())
        if alg == "EdDSA":
            cmd = [
                "openssl",
                "pkeyutl",
                "-sign",
                "-inkey",
                str(self.private[alg]),
                "-rawin",
                "-in",
                str(data),
            ]
        else:
            key = self.private["RS256" if alg.startswith("RS") else alg]
            cmd = ["openssl", "dgst", f"-sha{alg[2:]}", "-sign", str(key), str(data)]
        sig = subprocess.run(cmd, check=True, capture_output=True).stdout
        if alg.startswith("ES"):
            sig = der_to_raw(sig, 32 if alg == "ES256" else 48)
        return f"{signing_input}.{b64u(sig)}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("jwt-keys"))


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def jwt_consumer(username: str, **conf: Any) -> dict[str, Any]:
    return consumer(username, **{"jwt-auth": conf})


def hs_consumers() -> list[dict[str, Any]]:
    return [
        jwt_consumer("hs256", key="k256", secret=SECRET),
        jwt_consumer("hs384", key="k384", secret=SECRET, algorithm="HS384"),
        jwt_consumer(
            "hs512",
            key="k512",
            secret=base64.b64encode(SECRET.encode()).decode(),
            algorithm="HS512",
            base64_secret=True,
        ),
    ]


def assert_401(r: httpx.Response, message: str, *secrets: str) -> None:
    assert r.status_code == 401, r.text
    assert r.json() == {"message": message}
    assert r.headers["www-authenticate"] == 'Bearer realm="jwt"'
    for s in secrets:
        assert s not in r.text and all(s not in v for v in r.headers.values())


# ============================================================================ Rust side
def test_rust_rfc7515_a1_hs256() -> None:
    key = base64.urlsafe_b64decode(
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow=="
    )
    signing_input = (
        b"eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
        b"eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    )
    sig = base64.urlsafe_b64decode("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk=")
    assert verify_jws_signature("HS256", key, signing_input, sig)
    assert not verify_jws_signature("HS256", key, signing_input + b"x", sig)
    assert not verify_jws_signature("HS512", key, signing_input, sig)


def test_rust_rejects_bad_algorithms_and_keys(keys: Keys) -> None:
    for alg in ("none", "PS256", "hs256", ""):
        with pytest.raises(ValueError, match="unsupported algorithm"):
            check_jws_key(alg, b"secret")
    with pytest.raises(ValueError, match="malformed"):
        check_jws_key("RS256", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="not a PEM"):
        check_jws_key("EdDSA", b"garbage")
    # A key of the wrong type for the algorithm.
    with pytest.raises(ValueError, match="does not fit"):
        check_jws_key("RS256", keys.public["ES256"].encode())
    with pytest.raises(ValueError, match="does not fit"):
        check_jws_key("ES256", keys.public["ES384"].encode())
    for alg in ("RS256", "RS384", "RS512"):
        check_jws_key(alg, keys.public["RS256"].encode())
    for alg in ("ES256", "ES384", "EdDSA"):
        check_jws_key(alg, keys.public[alg].encode())


# ============================================================================ gateway
def test_hs_tokens_from_header_query_and_cookie(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway({"consumers": hs_consumers(), "routes": [route("r", "/j", up, plugins={"jwt-auth": {}})]})
    for alg, user in (("HS256", "hs256"), ("HS384", "hs384"), ("HS512", "hs512")):
        token = hs_token({"key": f"k{alg[2:]}", "exp": time.time() + 60}, alg=alg)
        r = client.get(f"{gw.url}/j", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, (alg, r.text)
        assert sent(r, "x-consumer-username") == [user]
        assert sent(r, "authorization") == [f"Bearer {token}"]  # hide_credentials defaults to false
    token = hs_token({"key": "k256"})  # no exp: accepted, like APISIX
    r = client.get(f"{gw.url}/j", headers={"Authorization": token})  # no Bearer prefix
    assert sent(r, "x-consumer-username") == ["hs256"]
    r = client.get(f"{gw.url}/j", params={"jwt": token, "a": "1"})
    assert sent(r, "x-consumer-username") == ["hs256"]
    r = client.get(f"{gw.url}/j", headers={"Cookie": f"a=1; jwt={token}"})
    assert sent(r, "x-consumer-username") == ["hs256"]
    # A client cannot claim an identity.
    r = client.get(f"{gw.url}/j", headers={"Authorization": token, "X-Consumer-Username": "hs512"})
    assert sent(r, "x-consumer-username") == ["hs256"]


def test_hide_credentials(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    plugins = {"jwt-auth": {"hide_credentials": True, "header": "x-jwt", "query": "t", "cookie": "c"}}
    gw = gateway({"consumers": hs_consumers(), "routes": [route("r", "/j", up, plugins=plugins)]})
    token = hs_token({"key": "k256"})
    r = client.get(f"{gw.url}/j", headers={"x-jwt": token})
    assert r.status_code == 200 and sent(r, "x-jwt") == []
    r = client.get(f"{gw.url}/j", params={"a": "1", "t": token})
    assert r.status_code == 200 and r.json()["query"] == "a=1"
    r = client.get(f"{gw.url}/j", headers={"Cookie": f"a=1; c={token}; b=2"})
    assert r.status_code == 200 and sent(r, "cookie") == ["a=1; b=2"]
    r = client.get(f"{gw.url}/j", headers={"Cookie": f"c={token}"})
    assert r.status_code == 200 and sent(r, "cookie") == []
    # The default names are not read when renamed.
    r = client.get(f"{gw.url}/j", headers={"Authorization": token})
    assert_401(r, "Missing JWT token in request", token)


def test_public_key_algorithms(upstream: Up, gateway: Gw, client: httpx.Client, keys: Keys) -> None:
    up = upstream()
    algs = ("RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA")
    consumers = [
        jwt_consumer(f"u_{alg}", key=f"k-{alg}", algorithm=alg, public_key=keys.public["RS256" if alg[:2] == "RS" else alg])
        for alg in algs
    ]  # fmt: skip
    gw = gateway({"consumers": consumers, "routes": [route("r", "/j", up, plugins={"jwt-auth": {}})]})
    for alg in algs:
        token = keys.sign(alg, {"key": f"k-{alg}", "exp": int(time.time()) + 60})
        r = client.get(f"{gw.url}/j", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, (alg, r.text)
        assert sent(r, "x-consumer-username") == [f"u_{alg}"]
        # Tampered payload, same signature.
        head, _payload, sig = token.split(".")
        forged = f"{head}.{b64u(json.dumps({'key': f'k-{alg}', 'admin': True}).encode())}.{sig}"
        assert_401(
            client.get(f"{gw.url}/j", headers={"Authorization": forged}), "failed to verify jwt", forged
        )


def test_refusals(upstream: Up, gateway: Gw, client: httpx.Client, keys: Keys) -> None:
    up = upstream()
    rsa_pem = keys.public["RS256"]
    consumers = [*hs_consumers(), jwt_consumer("rsa", key="rsa", algorithm="RS256", public_key=rsa_pem)]
    conf = {"consumers": consumers, "routes": [route("r", "/j", up, plugins={"jwt-auth": {}})]}
    gw = gateway(conf)

    def get(token: str) -> httpx.Response:
        return client.get(f"{gw.url}/j", headers={"Authorization": f"Bearer {token}"})

    assert_401(client.get(f"{gw.url}/j"), "Missing JWT token in request")
    assert_401(client.get(f"{gw.url}/j", params={"jwt": ""}), "Missing JWT token in request")
    now = time.time()
    good = hs_token({"key": "k256", "exp": now + 60})
    head, payload, sig = good.split(".")
    malformed = [
        "abc",
        f"{head}.{payload}",
        f"{head}.{payload}.{sig}.x",
        f"{head}.{payload}!.{sig}",  # not base64url
        f"{head}=.{payload}.{sig}",  # padding
        f"{head}.{payload}.{sig}xx",  # a base64url length that cannot be
        f"{b64u(b'not json')}.{payload}.{sig}",
        f"{b64u(b'[1]')}.{payload}.{sig}",
        f"{b64u(b'{}')}.{payload}.{sig}",  # no alg
        hs_token({"key": "k256"}, jwk={"kty": "oct", "k": b64u(b"x")}),
        hs_token({"key": "k256"}, jku="https://evil.example/keys"),
        hs_token({"key": "k256"}, x5u="https://evil.example/cert"),
        hs_token({"key": "k256"}, x5c=["AAAA"]),
        hs_token({"key": "k256"}, crit=["exp"]),
    ]
    for token in malformed:
        assert_401(get(token), "JWT token invalid", token, SECRET)
    failed = [
        f"{segments({'key': 'k256'}, {'alg': 'none'})}.",  # alg none, empty signature
        f"{segments({'key': 'k256'}, {'alg': 'none'})}.{sig}",
        hs_token({"key": "k256"}, alg="HS512"),  # token alg != consumer alg, even with the right secret
        hs_token({"key": "rsa"}, secret=rsa_pem.encode()),  # HS256 signed with the RSA public key
        keys.sign("RS256", {"key": "k256"}),  # RS token for an HS consumer
        hs_token({"key": "k256"}, secret=b"wrong"),
        hs_token({"key": "k256", "exp": now - 10}),
        hs_token({"key": "k256", "nbf": now + 60}),
        hs_token({"key": "k256", "exp": "tomorrow"}),
        f"{head}.{b64u(json.dumps({'key': 'k384', 'exp': now + 60}).encode())}.{sig}",  # tampered payload
    ]
    for token in failed:
        assert_401(get(token), "failed to verify jwt", token, SECRET)
    assert_401(get(hs_token({"key": "nobody"})), "Invalid user key in JWT token", SECRET)
    assert_401(get(hs_token({"key": 1})), "Invalid user key in JWT token", SECRET)
    assert_401(get(hs_token({"user": "k256"})), "missing user key in JWT token", SECRET)
    # `kid` plays no part in choosing the key.
    assert get(hs_token({"key": "k256"}, kid="rsa")).status_code == 200


def test_grace_period_and_key_claim_name(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    consumers = [jwt_consumer("g", key="g", secret=SECRET, lifetime_grace_period=30)]
    plugins = {"jwt-auth": {"key_claim_name": "iss"}}
    gw = gateway({"consumers": consumers, "routes": [route("r", "/j", up, plugins=plugins)]})
    now = time.time()
    for claims, status in (({"exp": now - 10}, 200), ({"nbf": now + 10}, 200),
                           ({"exp": now - 60}, 401), ({"nbf": now + 60}, 401)):  # fmt: skip
        r = client.get(f"{gw.url}/j", headers={"Authorization": hs_token({"iss": "g", **claims})})
        assert r.status_code == status, claims
    r = client.get(f"{gw.url}/j", headers={"Authorization": hs_token({"key": "g"})})
    assert_401(r, "missing user key in JWT token")


def test_anonymous_consumer(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    consumers = [*hs_consumers(), consumer("guest")]
    plugins = {"jwt-auth": {"anonymous_consumer": "guest"}}
    gw = gateway({"consumers": consumers, "routes": [route("r", "/j", up, plugins=plugins)]})
    r = client.get(f"{gw.url}/j", headers={"Authorization": hs_token({"key": "k256"}, secret=b"bad")})
    assert r.status_code == 200 and sent(r, "x-consumer-username") == ["guest"]
    r = client.get(f"{gw.url}/j", headers={"Authorization": hs_token({"key": "k256"})})
    assert sent(r, "x-consumer-username") == ["hs256"]


@pytest.mark.parametrize(
    ("conf", "needle"),
    [
        ({"key": "a", "algorithm": "RS256", "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
         "malformed"),
        ({"key": "a", "algorithm": "RS256"}, "public_key is required"),
        ({"key": "a", "algorithm": "none", "secret": "s"}, "algorithm"),
        ({"key": "a", "algorithm": "PS256", "secret": "s"}, "algorithm"),
        ({"key": "a"}, "secret is required"),
        ({"key": "a", "secret": "not base64!", "base64_secret": True}, "base64"),
        ({"secret": "s"}, "key"),
        ({"key": "a", "secret": "s", "lifetime_grace_period": -1}, "lifetime_grace_period"),
    ],
)  # fmt: skip
def test_config_errors(tmp_path: Path, conf: dict[str, Any], needle: str) -> None:
    cfg = {
        "consumers": [jwt_consumer("bob", **conf)],
        "routes": [
            {"id": "r1", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}}, "plugins": {"jwt-auth": {}}}
        ],
    }
    out = validate(tmp_path, cfg)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "consumers[bob].plugins.jwt-auth" in text and needle in text, text
    if "secret" in conf:
        assert conf["secret"] not in text or conf["secret"] == "s"


def test_config_error_wrong_key_type(tmp_path: Path, keys: Keys) -> None:
    cfg = {
        "consumers": [jwt_consumer("bob", key="a", algorithm="ES256", public_key=keys.public["RS256"])],
        "routes": [
            {"id": "r1", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}}, "plugins": {"jwt-auth": {}}}
        ],
    }
    out = validate(tmp_path, cfg)
    assert out.returncode == 1 and "consumers[bob].plugins.jwt-auth" in out.stdout + out.stderr
