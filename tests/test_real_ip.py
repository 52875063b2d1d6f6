"""The native `real-ip` plugin through real sockets. The test client (the TCP peer) is 127.0.0.1; the
address it claims comes in X-Forwarded-For / X-Real-IP / a query argument. A probe plugin copies the
client address Python plugins see into a request header, which the echo upstream sends back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import ROOT, Gateway, Upstream, route

Gw = Callable[..., Gateway]
Up = Callable[..., Upstream]

PROBE = '''
from pygateway import Plugin


class ShowClient(Plugin):
    """Tell the upstream which client address Python plugins see."""

    name = "show-client"
    priority = 10

    def access(self, req, ctx):
        req.headers["x-seen-client"] = f"{req.client_addr} {req.client_port}"
'''

XFF = "http_x_forwarded_for"


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def start(gateway: Gw, tmp_path: Path, routes: list[dict[str, Any]], args: list[str] | None = None,
          **extra: Any) -> Gateway:  # fmt: skip
    """A gateway with the probe plugin loadable; `extra` goes into the config (e.g. global_rules)."""
    (tmp_path / "probe").mkdir(exist_ok=True)
    (tmp_path / "probe" / "show_client.py").write_text(PROBE)
    return gateway({"routes": routes, "plugin_dirs": [str(tmp_path / "probe")], **extra}, args=args)


def r(rid: str, up: Upstream, plugins: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return route(rid, f"/{rid}/*", up, plugins={"show-client": {}, **plugins}, **extra)


def upstream_headers(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["headers"])


def seen(c: httpx.Client, url: str, headers: Any = None) -> str:
    """The client address (and port) Python plugins saw for this request."""
    return upstream_headers(c.get(url, headers=headers))["x-seen-client"].split()[0]


def read_log(path: Path, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return [json.loads(x) for x in lines]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} lines in {path}")


def test_trusted_peer_sets_the_client_for_plugins_limiters_upstream_and_log(
    upstream: Up, gateway: Gw, client: httpx.Client, tmp_path: Path
) -> None:
    up = upstream()
    log = tmp_path / "access.log"
    # As APISIX users usually do: real-ip in a global rule.
    gw = start(gateway, tmp_path, [
        r("allow", up, {"ip-restriction": {"whitelist": ["1.1.1.0/24"]}}),
        r("deny", up, {"ip-restriction": {"blacklist": ["2.2.2.2"]}}),
        r("count", up, {"limit-count": {"count": 2, "time_window": 60, "rejected_code": 429}}),
        r("req", up, {"limit-req": {"rate": 1, "burst": 0, "nodelay": True, "rejected_code": 429}}),
        r("echo", up, {}),
    ], global_rules=[{"id": "g", "plugins": {"real-ip": {"source": XFF, "trusted_addresses": ["127.0.0.1"]}}}],
       args=["--access-log", str(log)])  # fmt: skip
    url = gw.url
    # ip-restriction decides on the real client.
    assert client.get(f"{url}/allow/x", headers={"X-Forwarded-For": "1.1.1.5"}).status_code == 200
    assert client.get(f"{url}/allow/x", headers={"X-Forwarded-For": "2.2.2.2"}).status_code == 403
    assert client.get(f"{url}/allow/x").status_code == 403  # no header: the peer, 127.0.0.1
    assert client.get(f"{url}/deny/x", headers={"X-Forwarded-For": "2.2.2.2"}).status_code == 403
    assert client.get(f"{url}/deny/x", headers={"X-Forwarded-For": "2.2.2.3"}).status_code == 200
    # limit-count / limit-req keyed on remote_addr: one quota per real client.
    a, b = {"X-Forwarded-For": "3.3.3.1"}, {"X-Forwarded-For": "9.9.9.9, 3.3.3.2"}
    assert [client.get(f"{url}/count/x", headers=a).status_code for _ in range(3)] == [200, 200, 429]
    assert [client.get(f"{url}/count/x", headers=b).status_code for _ in range(3)] == [200, 200, 429]
    assert client.get(f"{url}/req/x", headers=a).status_code == 200
    assert client.get(f"{url}/req/x", headers=a).status_code == 429
    assert client.get(f"{url}/req/x", headers=b).status_code == 200
    # The upstream's X-Forwarded-For ends with the real client ($proxy_add_x_forwarded_for).
    h = upstream_headers(client.get(f"{url}/echo/x", headers={"X-Forwarded-For": "8.8.8.8, 4.4.4.4"}))
    assert h["x-forwarded-for"] == "8.8.8.8, 4.4.4.4, 4.4.4.4"
    assert h["x-seen-client"].split()[0] == "4.4.4.4"
    # Without a port in the source, the port stays the peer's.
    assert h["x-seen-client"].split()[1].isdigit() and h["x-seen-client"].split()[1] != "0"
    lines = read_log(log, 15)  # every request above: 3 + 2 + 6 + 3 + 1
    by_uri: dict[str, list[str]] = {}
    for line in lines:
        by_uri.setdefault(line["uri"], []).append(line["client_ip"])
    assert by_uri["/echo/x"] == ["4.4.4.4"]
    assert sorted(by_uri["/allow/x"]) == ["1.1.1.5", "127.0.0.1", "2.2.2.2"]
    assert sorted(set(by_uri["/count/x"])) == ["3.3.3.1", "3.3.3.2"]


def test_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(
    upstream: Up, gateway: Gw, client: httpx.Client, tmp_path: Path
) -> None:
    up = upstream()
    log = tmp_path / "access.log"
    ri = {"real-ip": {"source": XFF, "trusted_addresses": ["10.0.0.0/8", "::1"]}}
    gw = start(gateway, tmp_path, [
        r("allow", up, {**ri, "ip-restriction": {"whitelist": ["1.1.1.0/24"]}}),
        r("deny", up, {**ri, "ip-restriction": {"blacklist": ["127.0.0.1"]}}),
        r("count", up, {**ri, "limit-count": {"count": 2, "time_window": 60, "rejected_code": 429}}),
        r("req", up, {**ri, "limit-req": {"rate": 1, "burst": 0, "nodelay": True, "rejected_code": 429}}),
        r("echo", up, ri),
    ], args=["--access-log", str(log)])  # fmt: skip
    url = gw.url
    spoof = {"X-Forwarded-For": "1.1.1.5"}
    assert client.get(f"{url}/allow/x", headers=spoof).status_code == 403
    assert client.get(f"{url}/deny/x", headers=spoof).status_code == 403
    codes = [client.get(f"{url}/count/x", headers={"X-Forwarded-For": f"5.5.5.{i}"}).status_code
             for i in range(3)]  # fmt: skip
    assert codes == [200, 200, 429]
    assert client.get(f"{url}/req/x", headers={"X-Forwarded-For": "6.6.6.1"}).status_code == 200
    assert client.get(f"{url}/req/x", headers={"X-Forwarded-For": "6.6.6.2"}).status_code == 429
    h = upstream_headers(client.get(f"{url}/echo/x", headers=spoof))
    assert h["x-forwarded-for"] == "1.1.1.5, 127.0.0.1"
    assert h["x-seen-client"].split()[0] == "127.0.0.1"
    assert {line["client_ip"] for line in read_log(log, 8)} == {"127.0.0.1"}


def test_recursive_walks_past_trusted_proxies(
    upstream: Up, gateway: Gw, client: httpx.Client, tmp_path: Path
) -> None:
    up = upstream()
    trusted = ["127.0.0.1", "10.0.0.0/8", "2001:db8:ffff::/48"]
    gw = start(gateway, tmp_path, [
        r("rec", up, {"real-ip": {"source": XFF, "trusted_addresses": trusted, "recursive": True}}),
        r("last", up, {"real-ip": {"source": XFF, "trusted_addresses": trusted}}),
    ])  # fmt: skip
    chain = {"X-Forwarded-For": "6.6.6.6, 5.5.5.5, 10.1.1.1, 2001:db8:ffff::9"}
    assert seen(client, f"{gw.url}/rec/x", chain) == "5.5.5.5"  # right-most untrusted
    assert seen(client, f"{gw.url}/last/x", chain) == "2001:db8:ffff::9"  # the last entry
    all_trusted = {"X-Forwarded-For": "10.0.0.3, 10.0.0.2"}
    assert seen(client, f"{gw.url}/rec/x", all_trusted) == "10.0.0.3"  # left-most
    # Several header lines form one list; a non-address stops the walk at the last good one.
    lines = [("X-Forwarded-For", "7.7.7.7"), ("X-Forwarded-For", "10.0.0.9")]
    assert seen(client, f"{gw.url}/rec/x", lines) == "7.7.7.7"
    assert seen(client, f"{gw.url}/rec/x", {"X-Forwarded-For": "1.1.1.1, junk, 10.0.0.4"}) == "10.0.0.4"


def test_x_real_ip_query_argument_ports_and_ipv6(
    upstream: Up, gateway: Gw, client: httpx.Client, tmp_path: Path
) -> None:
    up = upstream()
    gw = start(gateway, tmp_path, [
        r("real", up, {"real-ip": {"source": "http_x_real_ip", "trusted_addresses": ["127.0.0.0/8"]},
                       "ip-restriction": {"whitelist": ["2001:db8::/32"]}}),
        r("arg", up, {"real-ip": {"source": "arg_realip"}}),
    ])  # fmt: skip
    resp = client.get(f"{gw.url}/real/x", headers={"X-Real-IP": "[2001:db8::7]:4321"})
    assert upstream_headers(resp)["x-seen-client"] == "2001:db8::7 4321"
    assert upstream_headers(resp)["x-forwarded-for"] == "2001:db8::7"
    assert client.get(f"{gw.url}/real/x", headers={"X-Real-IP": "2001:db9::1"}).status_code == 403
    assert client.get(f"{gw.url}/real/x").status_code == 403  # no header: the peer
    resp = client.get(f"{gw.url}/arg/x", params={"realip": "3.3.3.3:81"})
    assert upstream_headers(resp)["x-seen-client"] == "3.3.3.3 81"


def test_garbage_or_ambiguous_sources_keep_the_peer(
    upstream: Up, gateway: Gw, client: httpx.Client, tmp_path: Path
) -> None:
    up = upstream()
    gw = start(gateway, tmp_path, [
        r("xff", up, {"real-ip": {"source": XFF, "trusted_addresses": ["127.0.0.1"]}}),
        r("real", up, {"real-ip": {"source": "http_x_real_ip", "trusted_addresses": ["127.0.0.1"]}}),
    ])  # fmt: skip
    for value in ("1.1.1.1, <script>", "example.com", "1.1.1.1:99999", "fe80::1%eth0", "1.2.3"):
        assert seen(client, f"{gw.url}/xff/x", {"X-Forwarded-For": value}) == "127.0.0.1", value
    for headers in ([("X-Real-IP", "1.1.1.1"), ("X-Real-IP", "2.2.2.2")], {"X-Real-IP": "1.1.1.1, 2.2.2.2"},
                    {"X-Real-IP": ""}):  # fmt: skip
        assert seen(client, f"{gw.url}/real/x", headers) == "127.0.0.1", headers
    assert seen(client, f"{gw.url}/real/x", {"X-Real-IP": "1.1.1.1"}) == "1.1.1.1"


def test_route_matching_keeps_the_peer(
    upstream: Up, gateway: Gw, client: httpx.Client, tmp_path: Path
) -> None:
    """As in APISIX, real-ip runs after routing: `remote_addrs` match the TCP peer."""
    up = upstream()
    ri = {"real-ip": {"source": XFF}}
    gw = start(gateway, tmp_path, [
        r("peer", up, ri, remote_addrs=["127.0.0.1"]),
        r("other", up, ri, remote_addrs=["1.1.1.1"]),
    ])  # fmt: skip
    assert seen(client, f"{gw.url}/peer/x", {"X-Forwarded-For": "1.1.1.1"}) == "1.1.1.1"
    assert client.get(f"{gw.url}/other/x", headers={"X-Forwarded-For": "1.1.1.1"}).status_code == 404


def validate(tmp_path: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "apisix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "pygateway.cli", "validate", str(path)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip


@pytest.mark.parametrize(("conf", "needle"), [
    ({}, "routes[r1].plugins.real-ip.source: required"),
    ({"source": ""}, "routes[r1].plugins.real-ip.source"),
    ({"source": XFF, "trusted_addresses": []}, "routes[r1].plugins.real-ip.trusted_addresses"),
    ({"source": XFF, "trusted_addresses": ["10.0.0.1", "10.0.0.0/33"]},
     "routes[r1].plugins.real-ip.trusted_addresses[1]: invalid ip address: 10.0.0.0/33"),
    ({"source": XFF, "recursive": "yes"}, "routes[r1].plugins.real-ip.recursive"),
    ({"source": XFF, "trusted": ["::1"]}, "routes[r1].plugins.real-ip.trusted: unknown field"),
])  # fmt: skip
def test_config_errors_name_the_field(tmp_path: Path, conf: dict[str, Any], needle: str) -> None:
    cfg = {"routes": [{"id": "r1", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}},
                       "plugins": {"real-ip": conf}}]}  # fmt: skip
    out = validate(tmp_path, cfg)
    assert out.returncode == 1, out.stdout + out.stderr
    assert needle in out.stdout + out.stderr, out.stdout + out.stderr


def test_global_rule_config_error_names_the_rule(tmp_path: Path) -> None:
    cfg = {"routes": [{"id": "r1", "uri": "/", "upstream": {"nodes": {"127.0.0.1:1": 1}}}],
           "global_rules": [{"id": "g1", "plugins": {"real-ip": {"source": XFF, "trusted_addresses": ["x"]}}}]}  # fmt: skip
    out = validate(tmp_path, cfg)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "real-ip.trusted_addresses[0]: invalid ip address: x" in out.stderr, out.stderr
