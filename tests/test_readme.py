"""The README's plugin example works as written: extract it, run it, call it."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import yaml
from conftest import ROOT


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
