"""The shipped security plugins (ip-restriction, ua-restriction, referer-restriction, uri-blocker) through
real sockets: a gateway process in front of the echo upstream. The test client is 127.0.0.1."""

from __future__ import annotations

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

from pygateway._core import CidrSet

Up = Callable[..., Upstream]
Gw = Callable[..., Gateway]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def validate(tmp_path: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return subprocess.run([sys.executable, "-m", "pygateway.cli", "validate", str(path)],
                          capture_output=True, text=True, cwd=ROOT, check=False)  # fmt: skip


def routes(up: Upstream, plugin: str, **confs: dict[str, Any]) -> dict[str, Any]:
    """Routes /<name>/* each with `plugin` configured as given."""
    return {"routes": [route(name, f"/{name}/*", up, plugins={plugin: conf}) for name, conf in confs.items()]}


def check_config_error(tmp_path: Path, plugin: str, conf: dict[str, Any], needle: str) -> None:
    cfg = {"routes": [{"id": "r1", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}},
                       "plugins": {plugin: conf}}]}  # fmt: skip
    out = validate(tmp_path, cfg)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert f"routes[r1].plugins.{plugin}" in text and needle in text, text


def get_without(client: httpx.Client, url: str, header: str) -> httpx.Response:
    """GET without a header httpx would send by default."""
    req = client.build_request("GET", url)
    del req.headers[header]
    return client.send(req)


def passed(r: httpx.Response) -> bool:
    """The request reached the echo upstream."""
    return r.status_code == 200 and "x-upstream" in r.headers


# ============================================================================ _core.CidrSet
def test_cidr_set_ipv4_ipv6_and_mapped() -> None:
    s = CidrSet(["10.0.0.0/8", "192.168.1.5", "172.16.0.1/12", "::1", "fe80::/10", " 2001:db8::/32 "])
    assert len(s) == 6
    assert s.contains("10.1.2.3") and s.contains("10.255.255.255")
    assert not s.contains("11.0.0.0") and not s.contains("9.255.255.255")
    assert s.contains("192.168.1.5") and not s.contains("192.168.1.6")
    assert s.contains("172.31.0.1") and not s.contains("172.32.0.1")  # host bits ignored
    assert s.contains("::1") and not s.contains("::2")
    assert s.contains("fe80::abcd") and not s.contains("fec0::1")
    assert s.contains("2001:db8:ffff::1") and not s.contains("2001:db9::1")
    # IPv4-mapped IPv6 clients match IPv4 networks; other IPv6 forms of the same bits do not.
    assert s.contains("::ffff:10.0.0.1") and not s.contains("::ffff:11.0.0.1")
    assert not s.contains("::10.0.0.1")
    # IPv4 clients match IPv6 networks that cover their mapped form.
    mapped = CidrSet(["::ffff:127.0.0.0/104"])
    assert mapped.contains("127.0.0.1") and not mapped.contains("128.0.0.1")
    assert not CidrSet(["127.0.0.0/8"]).contains("::1")
    assert CidrSet(["0.0.0.0/0"]).contains("8.8.8.8") and not CidrSet(["0.0.0.0/0"]).contains("::1")
    assert CidrSet(["::/0"]).contains("8.8.8.8") and CidrSet(["::/0"]).contains("2001::1")
    assert len(CidrSet([])) == 0 and not CidrSet([]).contains("1.1.1.1")


def test_cidr_set_bad_entries_and_addresses() -> None:
    for bad in ["10.0.0.0/33", "::/129", "10.0.0", "example.com", "", "1.2.3.4/x", "/8", "1.2.3.4/-1"]:
        with pytest.raises(ValueError, match=re.escape(f'"{bad}"')):
            CidrSet(["127.0.0.1", bad])
    with pytest.raises(TypeError):
        CidrSet("10.0.0.0/8")  # type: ignore[arg-type]
    s = CidrSet(["10.0.0.0/8"])
    for bad in ["", "10.0.0", "10.0.0.1:80", "fe80::1%eth0", "nope", "10.0.0.1/32"]:
        assert not s.contains(bad), bad


def test_cidr_set_many_entries() -> None:
    entries = [f"10.{i // 256}.{i % 256}.0/24" for i in range(0, 4000, 2)] + [
        f"2001:db8:{i:x}::/48" for i in range(1000)
    ]
    s = CidrSet(entries)
    assert len(s) == 3000
    assert s.contains("10.0.0.1") and not s.contains("10.0.1.1") and s.contains("10.15.158.200")
    assert not s.contains("10.15.159.1") and not s.contains("10.16.0.1")
    assert s.contains("2001:db8:3e7::1") and not s.contains("2001:db8:3e8::1")


# ============================================================================ ip-restriction
def test_ip_restriction_whitelist_and_blacklist(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(routes(up, "ip-restriction",
        w4={"whitelist": ["127.0.0.0/8"]},
        wone={"whitelist": ["10.0.0.1", "127.0.0.1"]},
        wout={"whitelist": ["192.168.0.0/16", "10.0.0.0/8", "::1"]},
        w6={"whitelist": ["::ffff:127.0.0.0/104"]},
        b4={"blacklist": ["127.0.0.1/32"]},
        bout={"blacklist": ["128.0.0.0/1", "2001:db8::/32", "126.0.0.0/8", "::1"]},
        b6={"blacklist": ["::ffff:0:0/96"]},
        # As in route `remote_addrs`: an IPv4 client is also in IPv6 networks covering ::ffff:a.b.c.d.
        b6all={"blacklist": ["::/0"]},
    ))  # fmt: skip
    for name in ("w4", "wone", "w6", "bout"):
        assert passed(client.get(f"{gw.url}/{name}/x")), name
    for name in ("wout", "b4", "b6", "b6all"):
        r = client.get(f"{gw.url}/{name}/x")
        assert (r.status_code, r.json()) == (403, {"message": "Your IP address is not allowed"}), name
        assert "x-upstream" not in r.headers


def test_ip_restriction_message_and_code(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(routes(up, "ip-restriction",
        m={"whitelist": ["192.168.0.1/24"], "message": "Access denied"},
        c={"blacklist": ["127.0.0.1"], "message": "gone", "response_code": 404},
    ))  # fmt: skip
    r = client.get(f"{gw.url}/m/x")
    assert (r.status_code, r.json()) == (403, {"message": "Access denied"})
    r = client.post(f"{gw.url}/c/x", content=b"body")
    assert (r.status_code, r.json()) == (404, {"message": "gone"})


@pytest.mark.parametrize(("conf", "needle"), [
    ({}, "one of whitelist or blacklist is required"),
    ({"whitelist": ["127.0.0.1"], "blacklist": ["10.0.0.1"]}, "at the same time"),
    ({"whitelist": []}, "whitelist"),
    ({"whitelist": ["127.0.0.1", "10.0.0.0/33"]}, "whitelist[1]: invalid ip address: 10.0.0.0/33"),
    ({"blacklist": ["example.com"]}, "blacklist[0]: invalid ip address: example.com"),
    ({"blacklist": ["::1"], "response_code": 401}, "response_code"),
    ({"blacklist": ["::1"], "response_code": 405}, "response_code"),
    ({"blacklist": ["::1"], "message": ""}, "message"),
    ({"blacklist": ["::1"], "allowlist": ["::1"]}, "allowlist: unknown field"),
])  # fmt: skip
def test_ip_restriction_config_errors(tmp_path: Path, conf: dict[str, Any], needle: str) -> None:
    check_config_error(tmp_path, "ip-restriction", conf, needle)


# ============================================================================ ua-restriction
BOTS = ["(Baiduspider)/(\\d+)\\.(\\d+)", "bad-bot-1"]


def test_ua_restriction_denylist(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(routes(up, "ua-restriction",
        d={"denylist": BOTS, "message": "Access denied"},
        old={"blacklist": ["^curl/"]},
        bypass={"denylist": BOTS, "bypass_missing": True},
    ))  # fmt: skip
    assert passed(client.get(f"{gw.url}/d/x", headers={"User-Agent": "Mozilla/5.0"}))
    assert passed(client.get(f"{gw.url}/d/x", headers={"User-Agent": "Baiduspider/5"}))  # no ".minor"
    for ua in ("Baiduspider/5.0", "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://x)", "a bad-bot-1 b"):
        r = client.get(f"{gw.url}/d/x", headers={"User-Agent": ua})
        assert (r.status_code, r.json()) == (403, {"message": "Access denied"}), ua
    # Regexes are case-sensitive, as ngx.re.find without the "i" option.
    assert passed(client.get(f"{gw.url}/d/x", headers={"User-Agent": "BAD-BOT-1"}))
    # Any denied User-Agent among several rejects the request.
    r = client.get(f"{gw.url}/d/x", headers=[("User-Agent", "Mozilla/5.0"), ("User-Agent", "bad-bot-1")])
    assert r.status_code == 403
    # Without User-Agent: rejected (default message) unless bypass_missing.
    r = client.get(f"{gw.url}/d/x", headers={"User-Agent": ""})  # empty is present, and not denied
    assert passed(r)
    r = get_without(client, f"{gw.url}/old/x", "user-agent")
    assert (r.status_code, r.json()) == (403, {"message": "Not allowed"})
    assert passed(get_without(client, f"{gw.url}/bypass/x", "user-agent"))
    # The pre-2.13 name `blacklist` works as `denylist`.
    assert client.get(f"{gw.url}/old/x", headers={"User-Agent": "curl/8.0"}).status_code == 403
    assert passed(client.get(f"{gw.url}/old/x", headers={"User-Agent": "xcurl/8.0"}))


def test_ua_restriction_allowlist(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(routes(up, "ua-restriction",
        a={"allowlist": ["^my-app/\\d+", "(?i)^friendly"]},
        old={"whitelist": ["good"], "bypass_missing": True},
    ))  # fmt: skip
    assert passed(client.get(f"{gw.url}/a/x", headers={"User-Agent": "my-app/2"}))
    assert passed(client.get(f"{gw.url}/a/x", headers={"User-Agent": "FRIENDLY bot"}))  # (?i) rule
    for ua in ("my-app/x", "curl/8.0", "x my-app/2", "MY-APP/2"):
        r = client.get(f"{gw.url}/a/x", headers={"User-Agent": ua})
        assert (r.status_code, r.json()) == (403, {"message": "Not allowed"}), ua
    # One allowed User-Agent among several is enough.
    r = client.get(f"{gw.url}/a/x", headers=[("User-Agent", "curl/8.0"), ("User-Agent", "my-app/3")])
    assert passed(r)
    assert get_without(client, f"{gw.url}/a/x", "user-agent").status_code == 403
    assert passed(client.get(f"{gw.url}/old/x", headers={"User-Agent": "a good one"}))
    assert client.get(f"{gw.url}/old/x", headers={"User-Agent": "bad"}).status_code == 403
    assert passed(get_without(client, f"{gw.url}/old/x", "user-agent"))


@pytest.mark.parametrize(("conf", "needle"), [
    ({}, "one of allowlist or denylist is required"),
    ({"bypass_missing": True}, "one of allowlist or denylist is required"),
    ({"allowlist": ["a"], "denylist": ["b"]}, "at the same time"),
    ({"whitelist": ["a"], "blacklist": ["b"]}, "at the same time"),
    ({"whitelist": ["a"], "allowlist": ["b"]}, "whitelist: whitelist is the old name of allowlist"),
    ({"denylist": []}, "denylist"),
    ({"denylist": ["ok", "(unclosed"]}, "denylist[1]: invalid regex '(unclosed'"),
    ({"allowlist": ["[z-a]"]}, "allowlist[0]: invalid regex"),
    ({"denylist": ["a"], "message": "x" * 1025}, "message"),
    ({"denylist": ["a"], "rejected_code": 404}, "rejected_code: unknown field"),
])  # fmt: skip
def test_ua_restriction_config_errors(tmp_path: Path, conf: dict[str, Any], needle: str) -> None:
    check_config_error(tmp_path, "ua-restriction", conf, needle)


# ============================================================================ referer-restriction
def referer(client: httpx.Client, url: str, value: str) -> httpx.Response:
    return client.get(url, headers={"Referer": value})


def test_referer_restriction_whitelist(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(routes(up, "referer-restriction",
        w={"whitelist": ["xx.com", "*.xx.com"], "bypass_missing": True},
        strict={"whitelist": ["*.xx.com"], "message": "bad referer"},
    ))  # fmt: skip
    w, strict = f"{gw.url}/w/x", f"{gw.url}/strict/x"
    for ok in ("http://xx.com/x", "https://a.xx.com", "http://a.b.xx.com:8080/p?q=1", "//xx.com/x",
               "HTTP://XX.COM/x"):  # fmt: skip
        assert passed(referer(client, w, ok)), ok
    for bad in (
        "http://yy.com/x",
        "http://xx.com.evil.net/",
        "http://axx.com/",
        "https://evil.net/?r=xx.com",
    ):
        r = referer(client, w, bad)
        assert (r.status_code, r.json()) == (403, {"message": "Your referer host is not allowed"}), bad
    # Missing or malformed Referer: bypassed when bypass_missing, else rejected.
    assert passed(client.get(w))
    assert passed(referer(client, w, "not a url"))
    assert passed(referer(client, w, "ftp://xx.com/"))
    r = client.get(strict)
    assert (r.status_code, r.json()) == (403, {"message": "bad referer"})
    assert referer(client, strict, "xx.com").status_code == 403  # no scheme nor //: malformed
    # `*.xx.com` does not match the apex.
    assert referer(client, strict, "http://xx.com/").status_code == 403
    assert passed(referer(client, strict, "http://www.xx.com/"))


def test_referer_restriction_blacklist(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(routes(up, "referer-restriction",
        b={"blacklist": ["evil.com", "*.spam.net", "127.0.0.1"]},
        bb={"blacklist": ["evil.com"], "bypass_missing": True},
    ))  # fmt: skip
    b, bb = f"{gw.url}/b/x", f"{gw.url}/bb/x"
    for bad in ("http://evil.com/", "https://EVIL.com:443/a", "http://x.spam.net/", "http://127.0.0.1:9080/"):
        r = referer(client, b, bad)
        assert (r.status_code, r.json()) == (403, {"message": "Your referer host is not allowed"}), bad
    for ok in ("http://good.com/", "http://notevil.com/", "http://spam.net/", "http://evil.com.org/"):
        assert passed(referer(client, b, ok)), ok
    # A blacklist rejects a missing Referer too, unless bypass_missing.
    assert client.get(b).status_code == 403
    assert passed(client.get(bb))
    assert referer(client, bb, "http://evil.com/").status_code == 403


@pytest.mark.parametrize(("conf", "needle"), [
    ({}, "one of whitelist or blacklist is required"),
    ({"whitelist": ["a.com"], "blacklist": ["b.com"]}, "at the same time"),
    ({"whitelist": []}, "whitelist"),
    ({"whitelist": ["a.com", "http://b.com/"]}, "whitelist[1]"),
    ({"blacklist": ["a b"]}, "blacklist[0]"),
    ({"blacklist": ["a.com"], "bypass_missing": "yes"}, "bypass_missing"),
    ({"blacklist": ["a.com"], "message": ""}, "message"),
])  # fmt: skip
def test_referer_restriction_config_errors(tmp_path: Path, conf: dict[str, Any], needle: str) -> None:
    check_config_error(tmp_path, "referer-restriction", conf, needle)


# ============================================================================ uri-blocker
def test_uri_blocker_rules_and_query(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(routes(up, "uri-blocker",
        d={"block_rules": ["root.exe", "root.m+"]},
        m={"block_rules": ["^/m/admin", "token=\\w+$"], "rejected_msg": "access is not allowed"},
        c={"block_rules": ["/etc/passwd"], "rejected_code": 418, "rejected_msg": "nope"},
    ))  # fmt: skip
    for blocked in ("/d/root.exe", "/d/x/rootmmm", "/d/x?a=root.exe", "/d/x?f=root-mm&b=1", "/d/rootXexe"):
        r = client.get(f"{gw.url}{blocked}")
        assert (r.status_code, r.content) == (403, b""), blocked
        assert "x-upstream" not in r.headers
    for ok in ("/d/root", "/d/x?a=ROOT.EXE", "/d/Root.exe", "/d/rooted"):
        assert passed(client.get(f"{gw.url}{ok}")), ok
    # Rules see path and query together, as $request_uri: anchors apply to the whole of it.
    r = client.get(f"{gw.url}/m/admin/users")
    assert (r.status_code, r.json()) == (403, {"error_msg": "access is not allowed"})
    assert client.get(f"{gw.url}/m/x?token=abc").status_code == 403
    assert passed(client.get(f"{gw.url}/m/x?token=abc&y=1"))
    assert passed(client.get(f"{gw.url}/m/x/m/admin"))
    r = client.post(f"{gw.url}/c/x?file=/etc/passwd", content=b"{}")
    assert (r.status_code, r.json()) == (418, {"error_msg": "nope"})


def test_uri_blocker_case_insensitive(upstream: Up, gateway: Gw, client: httpx.Client) -> None:
    up = upstream()
    gw = gateway(routes(up, "uri-blocker",
        i={"block_rules": ["root\\.exe", "select.+from"], "case_insensitive": True},
        s={"block_rules": ["root\\.exe"], "case_insensitive": False},
    ))  # fmt: skip
    for blocked in ("/i/ROOT.EXE", "/i/Root.Exe?x=1", "/i/x?q=SELECT%20*%20FROM%20t"):
        assert client.get(f"{gw.url}{blocked}").status_code == 403, blocked
    assert passed(client.get(f"{gw.url}/i/rootxexe"))
    assert client.get(f"{gw.url}/s/root.exe").status_code == 403
    assert passed(client.get(f"{gw.url}/s/ROOT.EXE"))


@pytest.mark.parametrize(("conf", "needle"), [
    ({}, "block_rules: required"),
    ({"block_rules": []}, "block_rules"),
    ({"block_rules": ["ok", "root.m+("]}, "block_rules[1]: invalid regex 'root.m+('"),
    ({"block_rules": ["*abc"]}, "block_rules[0]: invalid regex"),
    ({"block_rules": ["a", "a"]}, "block_rules: items must be unique"),
    ({"block_rules": [""]}, "block_rules[0]"),
    ({"block_rules": ["a"], "rejected_code": 199}, "rejected_code"),
    ({"block_rules": ["a"], "rejected_msg": ""}, "rejected_msg"),
    ({"block_rules": ["a"], "case_insensitive": "maybe"}, "case_insensitive"),
])  # fmt: skip
def test_uri_blocker_config_errors(tmp_path: Path, conf: dict[str, Any], needle: str) -> None:
    check_config_error(tmp_path, "uri-blocker", conf, needle)
