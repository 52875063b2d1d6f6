"""The README's plugin example works as written: extract it, run it, call it."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import yaml
from helpers import ROOT


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def test_readme_plugin_example(upstream, gateway, tmp_path: Path):
    code = next(b for b in blocks("python") if "class ApiKey" in b)
    cfg_text = next(b for b in blocks("yaml") if "api-key" in b)
    (tmp_path / "myplugins").mkdir()
    (tmp_path / "myplugins" / "api_key.py").write_text(code)
    up = upstream()
    cfg = yaml.safe_load(cfg_text.replace("127.0.0.1:8000", up.addr))
    cfg["plugin_dirs"] = [str(tmp_path / "myplugins")]
    gw = gateway(cfg)
    r = httpx.get(gw.url + "/private/x")
    assert r.status_code == 401 and r.json() == {"error_msg": "Missing or invalid API key"}
    r = httpx.get(gw.url + "/private/x", headers={"apikey": "s3cret"})
    assert r.status_code == 200 and r.headers["x-consumer"] == "jack"
    assert "apikey" not in dict(r.json()["headers"])


def test_readme_tour_config_validates_and_serves(upstream, gateway):
    cfg_text = next(b for b in blocks("yaml") if "id: hello" in b)
    up = upstream()
    gw = gateway(cfg_text.replace("127.0.0.1:8000", up.addr))
    r = httpx.get(gw.url + "/hello/world")
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit"] == "100" and "x-request-id" in r.headers


def test_readme_admin_curl_examples_work_verbatim(upstream, gateway):
    """The admin API curl block, run line by line as written: default ports, $ADMIN_KEY, a service
    on 127.0.0.1:1980."""
    upstream("svc", port=1980)
    gw = gateway(None, port=9080, admin_port=9180)
    script = next(b for b in blocks("bash") if "/apisix/admin/upstreams/1" in b)
    lines = [ln for ln in script.replace("\\\n", " ").splitlines() if ln.strip()]
    env = dict(os.environ, ADMIN_KEY=gw.admin_headers["X-API-KEY"])
    outputs = []
    for line in lines:
        if "9080/get" in line:  # a person types slower than the config propagates; a script doesn't
            deadline = time.monotonic() + 5
            while httpx.get(gw.url + "/get").status_code != 200:
                assert time.monotonic() < deadline
        out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env, timeout=10, check=True)
        outputs.append(orjson.loads(out.stdout))
    created_upstream, created_route, created_consumer, listing, proxied, deleted = outputs
    assert created_upstream["key"] == "/apisix/upstreams/1"
    assert created_route["value"]["upstream_id"] == "1"
    assert created_consumer["key"] == "/apisix/consumers/jack"
    assert listing["total"] == 1 and listing["list"][0]["value"]["uri"] == "/get"
    assert proxied["path"] == "/get"
    assert deleted["key"] == "/apisix/routes/1"
