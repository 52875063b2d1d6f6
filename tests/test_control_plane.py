"""The control plane end to end: admin API writes reach every worker, survive kill -9, are
authenticated, and the standalone YAML mode is read-only."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import httpx
from helpers import ROOT, free_port, wait_port


def wait_status(url: str, status: int, timeout: float = 5.0, **kw) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(url, **kw)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.01)


def converge(url: str, upstream_name: str, timeout: float = 5.0, streak: int = 20) -> None:
    """Wait until `streak` requests in a row on fresh connections (so over every worker) reach
    `upstream_name`: workers apply a change independently, within milliseconds of each other."""
    deadline = time.monotonic() + timeout
    ok = 0
    while ok < streak:
        assert time.monotonic() < deadline, f"workers did not converge on {upstream_name}"
        r = httpx.get(url)
        ok = ok + 1 if r.status_code == 200 and r.headers.get("x-upstream") == upstream_name else 0


def test_admin_writes_reach_every_worker(upstream, gateway):
    a, b = upstream("a"), upstream("b")
    gw = gateway(None, workers=2)
    adm = httpx.Client(base_url=gw.admin_url, headers=gw.admin_headers)
    r = adm.put("/upstreams/u1", json={"nodes": {a.addr: 1}})
    assert r.status_code == 201, r.text
    r = adm.put("/routes/1", json={"uri": "/hello/*", "upstream_id": "u1"})
    assert r.status_code == 201 and r.json()["key"] == "/apisix/routes/1"
    converge(gw.url + "/hello/x", "a")
    # Change the upstream (a merge patch: null removes a node): the route follows, on every worker.
    assert adm.patch("/upstreams/u1", json={"nodes": {a.addr: None, b.addr: 1}}).status_code == 200
    converge(gw.url + "/hello/x", "b")
    # Referential integrity: the upstream is in use.
    r = adm.delete("/upstreams/u1")
    assert r.status_code == 409 and "route [1]" in r.json()["error_msg"]
    assert adm.delete("/routes/1").status_code == 200
    assert wait_status(gw.url + "/hello/x", 404).status_code == 404


def test_invalid_admin_write_is_refused_and_names_the_field(gateway):
    gw = gateway(None)
    adm = httpx.Client(base_url=gw.admin_url, headers=gw.admin_headers)
    r = adm.put("/routes/r1", json={"uri": "/x", "upstream": {"nodes": {"127.0.0.1:1": "heavy"}}})
    assert r.status_code == 400
    assert "routes[r1].upstream.nodes" in r.json()["error_msg"]
    r = adm.put("/routes/r2", json={"uri": "/x", "upstream_id": "nope"})
    assert r.status_code == 400 and "upstream_id" in r.json()["error_msg"]
    assert adm.get("/routes/r1").status_code == 404


def test_admin_auth_and_isolation(gateway):
    gw = gateway(None)
    assert httpx.get(gw.admin_url + "/routes").status_code == 401
    assert httpx.get(gw.admin_url + "/routes", headers={"X-API-KEY": "wrong"}).status_code == 401
    viewer = {"X-API-KEY": "test-viewer-key"}
    assert httpx.get(gw.admin_url + "/routes", headers=viewer).status_code == 200
    r = httpx.put(gw.admin_url + "/routes/1", headers=viewer, json={"uri": "/a", "upstream": {"nodes": {"1.1.1.1:80": 1}}})
    assert r.status_code == 403
    # The proxy port never serves the admin API.
    assert httpx.get(gw.url + "/apisix/admin/routes", headers=gw.admin_headers).status_code == 404


def test_sqlite_write_survives_kill_9_of_the_master(upstream, gateway, tmp_path):
    up = upstream()
    data = tmp_path / "data"
    gw = gateway(None, data_dir=data)
    adm = httpx.Client(base_url=gw.admin_url, headers=gw.admin_headers)
    assert adm.put("/routes/k9", json={"uri": "/k9", "upstream": {"nodes": {up.addr: 1}}}).status_code == 201
    workers = gw.worker_pids()
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait()
    for pid in workers:  # workers see their stdin close and drain away by themselves
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
    gw2 = gateway(None, data_dir=data)
    assert httpx.get(gw2.url + "/k9").status_code == 200


def test_admin_key_is_generated_once_and_private(tmp_path):
    data = tmp_path / "data"
    port, admin_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "pygateway.cli", "run", "--listen", f"127.0.0.1:{port}", "--workers", "1",
           "--admin-listen", f"127.0.0.1:{admin_port}", "--data-dir", str(data)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYGATEWAY_")}
    outputs = []
    for _ in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        wait_port(admin_port)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
        outputs.append(out.decode())
    keyfile = data / "admin_keys.json"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    import orjson

    key = orjson.loads(keyfile.read_bytes())["admin"]
    assert len(key) >= 24
    assert f"X-API-KEY (admin): {key}" in outputs[0]
    assert key not in outputs[1] and "keys in" in outputs[1]


def test_standalone_yaml_mode_admin_is_read_only(upstream, gateway):
    up = upstream()
    gw = gateway({"routes": [{"id": "y1", "uri": "/y", "upstream": {"nodes": {up.addr: 1}}}]})
    r = httpx.get(gw.admin_url + "/routes/y1", headers=gw.admin_headers)
    assert r.status_code == 200 and r.json()["value"]["uri"] == "/y"
    r = httpx.put(gw.admin_url + "/routes/y2", headers=gw.admin_headers, json={"uri": "/z", "upstream_id": "x"})
    assert r.status_code == 405 and "standalone" in r.json()["error_msg"]


def test_node_config_file_and_flags_override_it(upstream, tmp_path):
    up = upstream()
    port, admin_port = free_port(), free_port()
    node = tmp_path / "node.yaml"
    node.write_text(
        f"listen: 127.0.0.1:{port}\nworkers: 1\nadmin-listen: 127.0.0.1:{admin_port}\n"
        f"data_dir: {tmp_path / 'data'}\nadmin_key: node-key\nallow_admin: [127.0.0.0/8]\n"
    )
    cmd = [sys.executable, "-m", "pygateway.cli", "run", "--node-config", str(node), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_port(admin_port)
        adm = httpx.Client(base_url=f"http://127.0.0.1:{admin_port}/apisix/admin", headers={"X-API-KEY": "node-key"})
        assert adm.put("/routes/n1", json={"uri": "/n", "upstream": {"nodes": {up.addr: 1}}}).status_code == 201
        assert wait_status(f"http://127.0.0.1:{port}/n", 200).status_code == 200
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False)
        assert len(workers.stdout.split()) == 2, "the --workers flag wins over the file's workers: 1"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    assert f"listening on http://127.0.0.1:{port} with 2 workers" in out.decode()
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.0.1:1\nworkerz: 3\n")
    r = subprocess.run([sys.executable, "-m", "pygateway.cli", "run", "--node-config", str(bad)],
                       capture_output=True, text=True, cwd=ROOT, check=False, timeout=20)  # fmt: skip
    assert r.returncode != 0 and r.stderr.strip() == f"pygateway: node config {bad}: unknown setting 'workerz'"


def test_consumer_credentials_authenticate(upstream, gateway):
    """APISIX 3 credentials: several keys per consumer, added and removed through the admin API."""
    up = upstream()
    gw = gateway(None)
    adm = httpx.Client(base_url=gw.admin_url, headers=gw.admin_headers)
    assert adm.put("/consumers", json={"username": "jack"}).status_code == 201
    for cid, key in (("c1", "key-one"), ("c2", "key-two")):
        r = adm.put(f"/consumers/jack/credentials/{cid}", json={"plugins": {"key-auth": {"key": key}}})
        assert r.status_code == 201, r.text
    route_body = {"uri": "/secure", "plugins": {"key-auth": {}}, "upstream": {"nodes": {up.addr: 1}}}
    assert adm.put("/routes/s1", json=route_body).status_code == 201
    assert wait_status(gw.url + "/secure", 401).status_code == 401
    for key in ("key-one", "key-two"):
        r = wait_status(gw.url + "/secure", 200, headers={"apikey": key})
        assert dict(r.json()["headers"])["x-consumer-username"] == "jack"
    assert adm.delete("/consumers/jack/credentials/c1").status_code == 200
    assert wait_status(gw.url + "/secure", 401, headers={"apikey": "key-one"}).status_code == 401
    assert httpx.get(gw.url + "/secure", headers={"apikey": "key-two"}).status_code == 200
