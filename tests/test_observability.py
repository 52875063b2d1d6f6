"""Metrics (Prometheus, APISIX names), status probes and the access log, through real sockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from helpers import ROOT, free_port, read_lines, route, scrape, value


def hammer(url: str, n: int, clients: int = 8) -> list[int]:
    def one(i: int) -> list[int]:
        with httpx.Client(timeout=10) as c:
            return [c.get(url).status_code for _ in range(n // clients)]

    with ThreadPoolExecutor(clients) as ex:
        return [s for part in ex.map(one, range(clients)) for s in part]


def test_status_counts_are_exact_across_workers_and_survive_a_worker_crash(gateway, upstream):
    up = upstream()
    cfg = {"routes": [route("r1", "/a/*", up, plugins={"prometheus": {}}), route("r2", "/b", up)]}
    gw = gateway(cfg, workers=2)
    codes = hammer(f"{gw.url}/a/x", 400)
    assert codes == [200] * 400
    hammer(f"{gw.url}/b", 40)  # no prometheus plugin: not counted per route
    s = scrape(gw)
    labels = {"code": "200", "route": "r1", "matched_uri": "/a/*", "matched_host": "", "service": "",
              "consumer": "", "node": "127.0.0.1"}  # fmt: skip
    assert value(s, "apisix_http_status", **labels) == 400
    assert value(s, "apisix_http_status", route="r2") == 0
    assert value(s, "apisix_http_latency_count", type="request", route="r1") == 400
    assert value(s, "apisix_http_latency_count", type="upstream", route="r1") == 400
    assert value(s, "apisix_http_latency_bucket", type="request", route="r1", le="+Inf") == 400
    assert value(s, "apisix_http_latency_sum", type="request", route="r1") > 0
    assert value(s, "apisix_bandwidth", type="ingress", route="r1") > 400 * 20
    assert value(s, "apisix_bandwidth", type="egress", route="r1") > 400 * 100
    # Requests of both routes, over both workers (SO_REUSEPORT spreads 8 connections).
    assert value(s, "apisix_http_requests_total") == 440
    assert value(s, "pygateway_worker_requests_total") == 440
    assert value(s, "apisix_nginx_http_current_connections", state="accepted") >= 16
    assert value(s, "pygateway_config_version") == 1
    assert value(s, "pygateway_workers", state="ready") == 2

    # A worker killed with -9 is respawned on the same slab: nothing counted so far is lost.
    os.kill(gw.worker_pids()[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while len(gw.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    hammer(f"{gw.url}/a/x", 80)
    assert value(scrape(gw), "apisix_http_status", **labels) == 480


def test_global_prometheus_counts_unmatched_and_consumers_and_rejections(gateway, upstream):
    up = upstream()
    cfg = {
        "routes": [
            route("r1", "/k", up, plugins={"key-auth": {}}),
            route("lim", "/lim", up, name="limited", plugins={
                "limit-count": {"count": 2, "time_window": 60, "key": "remote_addr"},
                "prometheus": {"prefer_name": True},
            }),
        ],
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}],
        "global_rules": [{"id": "g", "plugins": {"prometheus": {}}}],
    }
    gw = gateway(cfg)
    with httpx.Client(base_url=gw.url, timeout=5) as c:
        assert c.get("/nowhere").status_code == 404
        assert c.get("/k", headers={"apikey": "jack-key"}).status_code == 200
        assert c.get("/k").status_code == 401
        assert [c.get("/lim").status_code for _ in range(4)] == [200, 200, 503, 503]
    s = scrape(gw)
    assert value(s, "apisix_http_status", code="404", route="") == 1
    assert value(s, "apisix_http_status", code="200", route="r1", consumer="jack") == 1
    assert value(s, "apisix_http_status", code="401", route="r1", consumer="") == 1
    # prefer_name: the route label is the route's name.
    assert value(s, "apisix_http_status", code="503", route="limited") == 2
    assert value(s, "pygateway_limit_rejections_total", route="lim", plugin="limit-count") == 2


def test_upstream_health_gauge_follows_passive_results(gateway, upstream):
    up = upstream()
    dead = free_port()
    cfg = {"routes": [{"id": "r", "uri": "/", "plugins": {"prometheus": {}},
                       "upstream": {"id": "pool", "nodes": {up.addr: 1, f"127.0.0.1:{dead}": 1}}}]}  # fmt: skip
    gw = gateway(cfg)
    with httpx.Client(timeout=5) as c:
        for _ in range(4):
            assert c.get(gw.url + "/").status_code == 200  # the dead node is retried on the live one
    s = scrape(gw)
    assert value(s, "apisix_upstream_status", name="pool", ip="127.0.0.1", port=str(up.port)) == 1
    assert value(s, "apisix_upstream_status", name="pool", ip="127.0.0.1", port=str(dead)) == 0


def test_ready_probe_waits_for_every_worker_to_load_the_config(gateway, upstream):
    up = upstream()
    gw = gateway({"routes": [route("r1", "/", up)]}, workers=2)
    assert httpx.get(gw.metrics_url + "/status/ready").status_code == 200
    stopped = gw.worker_pids()[0]
    os.kill(stopped, signal.SIGSTOP)  # it cannot read the next config
    try:
        from helpers import write_config

        write_config(gw.config_path, {"routes": [route("r1", "/", up), route("r2", "/x", up)]})
        gw.wait_log("config version 2 pushed")
        r = httpx.get(gw.metrics_url + "/status/ready")
        assert r.status_code == 503 and r.json()["workers_ready"] == 1
        alive = httpx.get(gw.metrics_url + "/status")
        assert alive.status_code == 200 and alive.json()["config_version"] == 2
    finally:
        os.kill(stopped, signal.SIGCONT)
    gw.wait_log("config version 2 applied by all workers")
    assert httpx.get(gw.metrics_url + "/status/ready").status_code == 200
    assert httpx.get(gw.metrics_url + "/nope").status_code == 404


def test_json_access_log_has_a_line_per_request_with_apisix_fields(gateway, upstream, tmp_path):
    up = upstream()
    log = tmp_path / "access.log"
    cfg = {"routes": [route("r1", "/a", up, plugins={"key-auth": {}})],
           "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "k1"}}}]}  # fmt: skip
    gw = gateway(cfg, workers=2, args=["--access-log", str(log)])
    hammer(f"{gw.url}/a?x=1", 96)
    httpx.get(f"{gw.url}/a", headers={"apikey": "k1", "User-Agent": 'ua "quoted"',
                                      "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})  # fmt: skip
    httpx.get(f"{gw.url}/missing")
    lines = [json.loads(x) for x in read_lines(log, 98)]
    assert len(lines) == 98
    statuses = sorted(x["status"] for x in lines)
    assert statuses.count(401) == 96 and statuses.count(200) == 1 and statuses.count(404) == 1
    ok = next(x for x in lines if x["status"] == 200)
    assert ok["uri"] == "/a" and ok["method"] == "GET" and ok["route_id"] == "r1"
    assert ok["consumer"] == "jack" and ok["user_agent"] == 'ua "quoted"'
    assert ok["upstream_addr"] == up.addr and ok["upstream_status"] == 200
    assert ok["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ok["client_ip"] == "127.0.0.1" and ok["request_time"] >= 0 and ok["bytes_sent"] > 0
    missing = next(x for x in lines if x["status"] == 404)
    assert missing["route_id"] is None and missing["upstream_addr"] is None  # unknown values are null


def test_combined_format_and_logrotate_reopen(gateway, upstream, tmp_path):
    up = upstream()
    log = tmp_path / "access.log"
    gw = gateway({"routes": [route("r1", "/", up)]}, args=["--access-log", str(log), "--access-log-format", "combined"])
    httpx.get(f"{gw.url}/?q=1", headers={"Referer": "http://ref/"})
    (line,) = read_lines(log, 1)
    assert line.startswith('127.0.0.1 - - [') and '"GET /?q=1 HTTP/1.1" 200 ' in line and '"http://ref/"' in line
    rotated = tmp_path / "access.log.1"
    log.rename(rotated)
    gw.proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    httpx.get(f"{gw.url}/after")
    assert read_lines(log, 1)[0].find('"GET /after HTTP/1.1"') > 0
    assert len(rotated.read_text().splitlines()) == 1


def test_custom_format_to_stdout_and_a_bad_format_is_refused(gateway, upstream, tmp_path):
    up = upstream()
    fmt = '{"who": "$remote_addr", "what": "$request_method $uri", "code": "$status", "h": "$http_x_tag"}'
    gw = gateway({"routes": [route("r1", "/*", up)]}, args=["--access-log", "stdout", "--access-log-format", fmt])
    httpx.get(f"{gw.url}/p", headers={"X-Tag": "t1"})
    deadline = time.monotonic() + 5
    while '"h":"t1"' not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '{"who":"127.0.0.1","what":"GET /p","code":200,"h":"t1"}' in gw.log()

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("routes: []\n")
    bad = subprocess.run(
        [sys.executable, "-m", "pygateway.cli", "run", "-c", str(cfg), "--listen", f"127.0.0.1:{free_port()}",
         "--no-admin", "--no-metrics", "--access-log", str(tmp_path / "x.log"), "--access-log-format", "$nope"],
        check=False, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "unknown variable $nope" in bad.stderr


def test_python_plugin_time_is_sampled_per_plugin(gateway, upstream, tmp_path):
    """One run in 64 of a chain's request phase times each hook; the metric gives calls and seconds."""
    up = upstream()
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    (plugdir / "slow.py").write_text(
        "import time\n"
        "from pygateway import Plugin\n\n"
        "class Slow(Plugin):\n"
        "    name = 'slow-2ms'\n"
        "    priority = 10\n"
        "    def access(self, req, ctx):\n"
        "        time.sleep(0.002)\n"
    )
    cfg = {"routes": [route("r1", "/*", up, plugins={"slow-2ms": {}, "request-id": {}})],
           "plugin_dirs": [str(plugdir)]}  # fmt: skip
    # 256 requests run the chain's rewrite and access phases: 512 runs, one in 64 timed = 8 timed runs,
    # each timing the hooks of its phase.
    gw = gateway(cfg)
    with httpx.Client(timeout=5) as c:
        for _ in range(64 * 4):
            assert c.get(gw.url + "/x").status_code == 200
    deadline = time.monotonic() + 5
    total = 0.0
    while (total := value(s := scrape(gw), "pygateway_plugin_sampled_calls_total")) < 8:
        assert time.monotonic() < deadline, f"{total} timed calls in the metrics, wanted 8"
        time.sleep(0.2)
    slow = value(s, "pygateway_plugin_sampled_calls_total", plugin="slow-2ms")
    rid = value(s, "pygateway_plugin_sampled_calls_total", plugin="request-id")
    assert slow + rid == 8 and slow >= 1
    assert 0.002 <= value(s, "pygateway_plugin_sampled_seconds_total", plugin="slow-2ms") / slow < 0.05
    if rid:
        assert value(s, "pygateway_plugin_sampled_seconds_total", plugin="request-id") / rid < 0.001
