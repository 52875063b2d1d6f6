"""The Python plugin host: phases and their order, ctx, mutations, short-circuits, async hooks,
errors, priorities, global rules and `_meta.disable` — with plugins loaded from a plugin dir."""

from __future__ import annotations

import textwrap
import threading
import time

import httpx
import orjson
import pytest
from helpers import route

PLUGINS = textwrap.dedent('''
    import asyncio
    import msgspec
    from pygateway import Plugin, Response

    class Trace(Plugin):
        """Records every phase it sees in ctx and reports the list in a response header."""
        name = "trace"
        priority = 100

        class Config(msgspec.Struct):
            tag: str = "t"

        def rewrite(self, req, ctx):
            ctx.setdefault("seen", []).append(f"{self.conf.tag}:rewrite")
        def access(self, req, ctx):
            ctx["seen"].append(f"{self.conf.tag}:access")
        def before_proxy(self, req, ctx):
            ctx["seen"].append(f"{self.conf.tag}:before_proxy")
        def header_filter(self, req, resp, ctx):
            ctx["seen"].append(f"{self.conf.tag}:header_filter")
            resp.headers["x-seen"] = ",".join(ctx["seen"])
        def log(self, req, resp, ctx):
            with open(LOG_PATH, "a") as f:
                f.write(f"{req.route_id} {req.method} {req.path} {resp.status} {ctx['seen'][0]}\\n")

    class High(Plugin):
        name = "high"
        priority = 5000
        def access(self, req, ctx):
            ctx.setdefault("seen", []).append("high:access")

    class Mutate(Plugin):
        name = "mutate"
        priority = 50
        def access(self, req, ctx):
            req.headers["x-added"] = "1"
            req.headers.remove("x-secret")
            req.path = "/rewritten" + req.path
            req.query = "q=2"
            req.method = "PUT"
        def header_filter(self, req, resp, ctx):
            resp.status = 201
            resp.headers["x-resp"] = "set"
            del resp.headers["x-upstream"]

    class KeyCheck(Plugin):
        name = "key-check"
        priority = 2500
        class Config(msgspec.Struct):
            keys: dict[str, str]
        def rewrite(self, req, ctx):
            consumer = self.conf.keys.get(req.headers.get("apikey") or "")
            if consumer is None:
                return Response.error(401, "Missing or invalid API key")
            req.consumer = consumer
        def before_proxy(self, req, ctx):
            req.headers["x-consumer"] = req.consumer

    class SlowAuth(Plugin):
        name = "slow-auth"
        priority = 10
        async def access(self, req, ctx):
            await asyncio.sleep(float(req.args.get("sleep", "0")))
            if req.args.get("deny"):
                return Response(403, {"error_msg": "denied"}, {"x-why": "async"})
            req.headers["x-async"] = "yes"

    class Boom(Plugin):
        name = "boom"
        priority = 10
        def access(self, req, ctx):
            if req.args.get("boom"):
                raise RuntimeError("kaboom")

    class Upper(Plugin):
        name = "upper"
        def body_filter(self, req, resp, chunk, eof, ctx):
            return chunk.upper()

    class BodyCheck(Plugin):
        name = "body-check"
        needs_body = True
        def access(self, req, ctx):
            if b"forbidden" in req.body:
                return Response.error(400, "body has a forbidden word")
            req.body = req.body.replace(b"cat", b"dog")

    class TokenAuth(Plugin):
        """An auth plugin: consumers carry their token; the route's conf names the header."""
        name = "token-auth"
        priority = 2600
        class Config(msgspec.Struct):
            header: str = "x-token"
        class ConsumerConfig(msgspec.Struct):
            token: str
        def rewrite(self, req, ctx):
            user = self.consumer_index("token").get(req.headers.get(self.conf.header) or "")
            if user is None:
                return Response.error(401, "invalid token")
            req.consumer = user
            req.headers["x-consumer-username"] = user

    class Steer(Plugin):
        name = "steer"
        class Config(msgspec.Struct):
            port: int
        def access(self, req, ctx):
            req.set_upstream("127.0.0.1", self.conf.port)
''')


@pytest.fixture
def plugin_dir(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    log_path = tmp_path / "log.txt"
    (d / "test_host_plugins.py").write_text(f"LOG_PATH = {str(log_path)!r}\n" + PLUGINS)
    return d, log_path


def start(gateway, plugin_dir, routes, **cfg):
    return gateway({"routes": routes, **cfg}, args=["--plugin-dir", str(plugin_dir[0])])


def test_phases_run_in_order_with_shared_ctx_and_log_after_response(upstream, gateway, plugin_dir):
    up = upstream()
    gw = start(gateway, plugin_dir, [route("r", "/p", up, plugins={"trace": {"tag": "t"}, "high": {}})])
    r = httpx.get(gw.url + "/p")
    assert r.status_code == 200
    assert r.headers["x-seen"] == "t:rewrite,high:access,t:access,t:before_proxy,t:header_filter"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not plugin_dir[1].exists():
        time.sleep(0.05)
    assert plugin_dir[1].read_text() == "r GET /p 200 t:rewrite\n"


def test_request_and_response_mutations(upstream, gateway, plugin_dir):
    up = upstream()
    gw = start(gateway, plugin_dir, [route("r", "/*", up, plugins={"mutate": {}})])
    r = httpx.get(gw.url + "/x?q=1", headers={"x-secret": "s"})
    assert r.status_code == 201
    assert r.headers["x-resp"] == "set" and "x-upstream" not in r.headers
    body = orjson.loads(r.content)
    hdrs = dict(body["headers"])
    assert body["method"] == "PUT" and body["path"] == "/rewritten/x" and body["query"] == "q=2"
    assert hdrs["x-added"] == "1" and "x-secret" not in hdrs


def test_short_circuit_and_consumer(upstream, gateway, plugin_dir):
    up = upstream()
    gw = start(gateway, plugin_dir, [route("r", "/*", up, plugins={"key-check": {"keys": {"k1": "jack"}}})])
    r = httpx.get(gw.url + "/")
    assert r.status_code == 401 and r.json() == {"error_msg": "Missing or invalid API key"}
    r = httpx.get(gw.url + "/", headers={"apikey": "k1"})
    assert dict(orjson.loads(r.content)["headers"])["x-consumer"] == "jack"


def test_async_hook_does_not_block_other_requests(upstream, gateway, plugin_dir):
    up = upstream()
    gw = start(gateway, plugin_dir, [route("slow", "/slow", up, plugins={"slow-auth": {}}), route("fast", "/fast", up)])
    results: dict[str, float] = {}

    def slow():
        t = time.monotonic()
        r = httpx.get(gw.url + "/slow?sleep=1.0", timeout=10)
        assert dict(orjson.loads(r.content)["headers"])["x-async"] == "yes"
        results["slow"] = time.monotonic() - t

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.2)
    t = time.monotonic()
    assert httpx.get(gw.url + "/fast").status_code == 200
    results["fast"] = time.monotonic() - t
    th.join()
    assert results["slow"] >= 1.0
    assert results["fast"] < 0.5, results  # served while the async hook was sleeping (1 worker)
    r = httpx.get(gw.url + "/slow?deny=1")
    assert r.status_code == 403 and r.headers["x-why"] == "async" and r.json() == {"error_msg": "denied"}


def test_raising_hook_gives_500_and_worker_keeps_serving(upstream, gateway, plugin_dir):
    up = upstream()
    gw = start(gateway, plugin_dir, [route("r", "/*", up, plugins={"boom": {}})])
    r = httpx.get(gw.url + "/?boom=1")
    assert r.status_code == 500 and r.json() == {"error_msg": "plugin error"}
    assert httpx.get(gw.url + "/").status_code == 200
    httpx.get(gw.url + "/?boom=1")
    log = gw.log()
    assert "plugin 'boom' failed in access" in log and "RuntimeError: kaboom" in log
    assert log.count("Traceback") == 2  # once per failing request


def test_body_filter_and_set_upstream(upstream, gateway, plugin_dir):
    a, b = upstream("a"), upstream("b")
    gw = start(gateway, plugin_dir, [route("u", "/u", a, plugins={"upper": {}}),
                                     route("s", "/s", a, plugins={"steer": {"port": b.port}})])  # fmt: skip
    r = httpx.get(gw.url + "/u")
    assert b'"UPSTREAM":"A"' in r.content
    assert httpx.get(gw.url + "/s").headers["x-upstream"] == "b"


def test_global_rules_run_first_and_meta_disable(upstream, gateway, plugin_dir):
    up = upstream()
    gw = start(gateway, plugin_dir, [
        route("r", "/r", up, plugins={"trace": {"tag": "route"}}),
        route("off", "/off", up, plugins={"trace": {"tag": "route"}, "high": {"_meta": {"disable": True}}}),
    ], global_rules=[{"id": "g", "plugins": {"high": {}, "trace": {"tag": "g"}}}])  # fmt: skip
    # Within each phase the global rule's plugins run before the route's, whatever their priority.
    seen = httpx.get(gw.url + "/r").headers["x-seen"].split(",")
    assert seen[:5] == ["g:rewrite", "route:rewrite", "high:access", "g:access", "route:access"], seen
    # A disabled plugin on the route does not disable the global rule's copy.
    assert "high:access" in httpx.get(gw.url + "/off").headers["x-seen"]


def test_plugin_config_error_names_route_plugin_field(upstream, gateway, plugin_dir, tmp_path):
    up = upstream()
    import subprocess
    import sys

    import yaml

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"routes": [route("r9", "/", up, plugins={"key-check": {"keys": "nope"}})]}))
    out = subprocess.run([sys.executable, "-m", "pygateway.cli", "validate", str(cfg), "--plugin-dir",
                          str(plugin_dir[0])], capture_output=True, text=True, check=False)  # fmt: skip
    assert out.returncode == 1
    assert "routes[r9].plugins.key-check.keys" in out.stderr, out.stderr


def test_plugin_reads_and_replaces_the_body(upstream, gateway, plugin_dir):
    up = upstream()
    gw = start(gateway, plugin_dir, [route("b", "/*", up, plugins={"body-check": {}})])
    r = httpx.post(gw.url + "/", content=b"a cat sat")
    assert orjson.loads(r.content)["body"] == "a dog sat"
    assert dict(orjson.loads(r.content)["headers"])["content-length"] == "9"
    assert httpx.post(gw.url + "/", content=b"forbidden").status_code == 400
    # chunked upload, read whole before the phases
    r = httpx.post(gw.url + "/", content=iter([b"cat ", b"cat"]))
    assert orjson.loads(r.content)["body"] == "dog dog"
    r = httpx.post(gw.url + "/", content=b"x" * (1024 * 1024 + 1))
    assert r.status_code == 413 and r.json() == {"error_msg": "request body larger than 1 MiB"}
    assert httpx.get(gw.url + "/").status_code == 200


def test_entry_point_plugins_are_found(tmp_path):
    """A package that declares a plugin under the `pygateway.plugins` entry-point group is found
    (here: an installed-looking distribution on PYTHONPATH), and `plugins list` says where from."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "acme_plugins-1.0.dist-info").mkdir(parents=True)
    (site / "acme_plugins-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugins\nVersion: 1.0\n")
    (site / "acme_plugins-1.0.dist-info" / "entry_points.txt").write_text(
        "[pygateway.plugins]\nacme-tag = acme_plugins:AcmeTag\n"
    )
    (site / "acme_plugins.py").write_text(
        "from pygateway import Plugin\n\n"
        "class AcmeTag(Plugin):\n    name = 'acme-tag'\n    priority = 77\n"
        "    def access(self, req, ctx):\n        req.headers['x-acme'] = '1'\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "pygateway.cli", "plugins", "list"], capture_output=True, text=True,
                         env=env, check=True)  # fmt: skip
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("acme-tag"))
    assert "77" in line and "access" in line and "entry point acme_plugins:AcmeTag" in line
    assert any(ln.startswith("limit-req") and "native" in ln for ln in out.stdout.splitlines())
    assert any(ln.startswith("proxy-rewrite") and "built-in" in ln for ln in out.stdout.splitlines())


def test_consumers_reach_auth_plugins_and_limiters(upstream, gateway, plugin_dir):
    up = upstream()
    cfg = {
        "consumers": [
            {"username": "jack", "plugins": {"token-auth": {"token": "t-jack"}}},
            {"username": "rose", "plugins": {"token-auth": {"token": "t-rose"}}},
        ],
        "routes": [route("a", "/*", up, plugins={
            "token-auth": {}, "limit-count": {"count": 2, "time_window": 60, "key": "consumer_name"}})],
    }  # fmt: skip
    gw = gateway(cfg, args=["--plugin-dir", str(plugin_dir[0])])
    assert httpx.get(gw.url + "/").status_code == 401
    jack = [httpx.get(gw.url + "/", headers={"x-token": "t-jack"}) for _ in range(3)]
    assert [r.status_code for r in jack] == [200, 200, 503]  # jack's own quota
    assert dict(orjson.loads(jack[0].content)["headers"])["x-consumer-username"] == "jack"
    assert httpx.get(gw.url + "/", headers={"x-token": "t-rose"}).status_code == 200  # rose's quota is separate
    # A consumer's conf is validated with the plugin's ConsumerConfig.
    bad = dict(cfg, consumers=[{"username": "bob", "plugins": {"token-auth": {"tokn": "x"}}}])
    gw.update(bad, expect_ok=False)
    assert "consumers[bob].plugins.token-auth" in gw.log()


def test_the_phase_list_comes_from_the_rust_core():
    """One numbering: the Python host's phase numbers are the positions in `_core.PHASES`, the Rust order."""
    from pygateway import _core, plugin
    from pygateway.worker import host

    assert _core.PHASES == ("rewrite", "access", "before_proxy", "header_filter", "body_filter", "log")
    assert plugin.PHASES is _core.PHASES
    numbers = (host.REWRITE, host.ACCESS, host.BEFORE_PROXY, host.HEADER_FILTER, host.BODY_FILTER, host.LOG)
    assert [_core.PHASES[n] for n in numbers] == list(_core.PHASES)
