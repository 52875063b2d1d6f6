"""Black-box tests of the process model: the master supervises N workers that share one port
(SO_REUSEPORT), respawns crashed workers, hot-reloads config without dropping requests, rejects bad
config while the old one keeps serving, drains on SIGTERM and stops fast on SIGINT; plus the CLI's
exit codes and messages.

Everything runs real processes on loopback. Waits are condition loops with deadlines, never bare
sleeps standing in for "long enough".
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import (
    ROOT,
    Gateway,
    established_to,
    get,
    listen_inodes,
    listening_workers,
    route,
    socket_inodes,
    wait_for,
    write_config,
)

# --------------------------------------------------------------------------- helpers


def status(port: int, path: str, timeout: float = 5.0) -> int:
    return get(port, path, timeout)[0]


def is_dead(pid: int) -> bool:
    """Exited (zombie or reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def count_in_log(gw: Gateway, needle: str) -> int:
    return gw.log().count(needle)


def wait_rejected(gw: Gateway, before: int, timeout: float = 10.0) -> None:
    """Wait for one more 'rejected; still serving version' than `before` (the conftest helper only checks
    presence, which is already true after the first rejection)."""
    wait_for(
        lambda: count_in_log(gw, "rejected; still serving version") > before, timeout, "config rejection"
    )


def pygateway(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pygateway.cli", *args], check=False, capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)  # fmt: skip


WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
WRK_SOCKERR = re.compile(r"Socket errors:\s*connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_REQS = re.compile(r"(\d+) requests in ")


def parse_wrk(out: str) -> tuple[int, int, tuple[int, ...]]:
    """(requests, non-2xx/3xx, socket errors (connect, read, write, timeout)); wrk only prints the last two
    lines when they are non-zero."""
    m = WRK_REQS.search(out)
    assert m, f"unexpected wrk output:\n{out}"
    non2xx = WRK_NON2XX.search(out)
    sock = WRK_SOCKERR.search(out)
    return (int(m.group(1)), int(non2xx.group(1)) if non2xx else 0,
            tuple(int(x) for x in sock.groups()) if sock else (0, 0, 0, 0))  # fmt: skip


def start_wrk(url: str, seconds: int = 4, conns: int = 20) -> subprocess.Popen[str]:
    return subprocess.Popen(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "3s", url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


# --------------------------------------------------------------------------- startup


def test_workers_flag_starts_that_many_workers(upstream, gateway) -> None:
    up = upstream()
    gw = gateway({"routes": [route("a", "/a", up)]}, workers=2)
    assert f"listening on http://127.0.0.1:{gw.port} with 2 workers" in gw.log()
    pids = gw.worker_pids()
    assert len(pids) == 2, pids
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"pygateway.worker" in cmdline, cmdline
    # Both hold their own listener on the shared port.
    assert wait_for(lambda: listening_workers(gw) == set(pids), 5, "both workers listening")
    assert status(gw.port, "/a") == 200


# --------------------------------------------------------------------------- crash -> respawn


def test_killed_worker_is_respawned_and_requests_keep_succeeding(upstream, gateway) -> None:
    """kill -9 one of two workers while clients send requests on fresh connections.

    What is honest to expect: SIGKILL gives the dying worker no chance to hand off. A request it was
    serving is cut, and a connection the kernel had already queued on its listener (SO_REUSEPORT gives
    every worker its own accept queue) is reset when that listener closes. So a few requests *around*
    the kill may fail. Once its listening socket is closed (we watch it vanish from /proc/net/tcp), it
    is out of the reuseport group and every new connection goes to a live worker: every request
    started from then on must succeed. Each client thread has one request in flight at
    a time, so the failures are bounded by what a thread can start between the kill and our noticing
    the death (a few ms of polling)."""
    up = upstream()
    gw = gateway({"routes": [route("a", "/a", up)]}, workers=2)
    pids = set(gw.worker_pids())
    assert len(pids) == 2
    wait_for(lambda: listening_workers(gw) == pids, 5, "both workers listening")

    results: list[tuple[float, bool, str]] = []  # (start time, ok, error)
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                st = status(gw.port, "/a", timeout=3)
                results.append((t0, st == 200, "" if st == 200 else f"status {st}"))
            except (OSError, http.client.HTTPException) as exc:  # reset, cut mid-body (IncompleteRead), ...
                results.append((t0, False, repr(exc)))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) >= 20, 10, "warm-up traffic")
        victim = min(pids)
        victim_listener = socket_inodes(victim) & listen_inodes(gw.port)
        assert victim_listener
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        # "Dead" for the port = its listener is gone (a zombie leader may still have threads holding fds).
        wait_for(lambda: not (victim_listener & listen_inodes(gw.port)), 2, "victim's listener to close",
                 interval=0.002)  # fmt: skip
        t_dead = time.monotonic()
        new = wait_for(lambda: set(gw.worker_pids()) - pids, 1.0, "a replacement worker within 1 s")
        t_new = time.monotonic()
        assert t_new - t_kill <= 1.0
        assert len(new) == 1 and victim not in gw.worker_pids()
        # The replacement joins the shared port (it binds only after its first config is applied).
        survivors = (pids - {victim}) | new
        wait_for(lambda: listening_workers(gw) == survivors, 10, "replacement worker listening")
        t_listen = time.monotonic()
        n_at_listen = len(results)
        wait_for(lambda: len(results) >= n_at_listen + 30 or time.monotonic() - t_listen > 3, 5,
                 "traffic after respawn")  # fmt: skip
    finally:
        stop.set()
        for t in threads:
            t.join(5)

    after = [r for r in results if r[0] >= t_dead]
    failed = [r for r in results if not r[1]]
    assert len(after) >= 20, f"too little traffic after the kill: {len(after)}"
    assert all(ok for _, ok, _ in after), [r for r in after if not r[1]][:5]
    assert all(r[0] < t_dead for r in failed)
    assert len(failed) <= 4, f"{len(failed)} failed around the kill: {failed[:5]}"
    assert "exited with -9; respawning" in gw.log()
    assert status(gw.port, "/a") == 200


# --------------------------------------------------------------------------- reload under load


def test_config_file_rewrites_during_wrk_drop_nothing(upstream, gateway) -> None:
    up1, up2 = upstream("one"), upstream("two")
    cfg: dict[str, Any] = {"routes": [route("a", "/a", up1)]}
    gw = gateway(cfg, workers=2)
    wrk = start_wrk(f"{gw.url}/a", seconds=4)
    try:
        wait_for(lambda: established_to(gw.port) >= 1, 5, "wrk to connect")
        t_end = time.monotonic() + 3.0
        steps = [
            {"routes": [route("a", "/a", up2)]},
            {"routes": [route("a", "/a", up2), route("b", "/b", up1)]},
            {"routes": [route("a", "/a", up1, up2), route("b", "/b", up1), route("c", "/c/*", up2)]},
            {"routes": [route("c", "/c/*", up2), route("a", "/a", up1), route("b", "/b", up2)]},
        ]
        applied = 0
        for cfg in steps:
            if time.monotonic() >= t_end:
                break
            gw.update(cfg)
            applied += 1
        out, _ = wrk.communicate(timeout=15)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    assert applied >= 2, f"only {applied} reloads happened while wrk ran"
    reqs, non2xx, sockerr = parse_wrk(out)
    assert reqs > 0, out
    assert non2xx == 0, out
    assert sockerr == (0, 0, 0, 0), out
    # The last applied config is what serves now.
    last = steps[applied - 1]
    ids = {r["id"] for r in last["routes"]}
    assert status(gw.port, "/b") == (200 if "b" in ids else 404)
    assert status(gw.port, "/c/x") == (200 if "c" in ids else 404)


def test_sighup_reloads_during_wrk_drop_nothing(upstream, gateway) -> None:
    up1, up2 = upstream("one"), upstream("two")
    gw = gateway({"routes": [route("a", "/a", up1)]}, workers=2)
    wrk = start_wrk(f"{gw.url}/a", seconds=4)
    try:
        wait_for(lambda: established_to(gw.port) >= 1, 5, "wrk to connect")
        t_end = time.monotonic() + 3.0
        hups = 0
        while time.monotonic() < t_end and hups < 4:
            os.kill(gw.proc.pid, signal.SIGHUP)
            gw.version += 1
            gw.wait_log(f"config version {gw.version} applied by all workers")
            hups += 1
        out, _ = wrk.communicate(timeout=15)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    assert hups >= 2, f"only {hups} SIGHUP reloads happened while wrk ran"
    assert "(SIGHUP)" in gw.log()
    reqs, non2xx, sockerr = parse_wrk(out)
    assert reqs > 0, out
    assert non2xx == 0, out
    assert sockerr == (0, 0, 0, 0), out
    # Reloads still work after the SIGHUPs, and the new upstream serves.
    gw.update({"routes": [route("a", "/a", up2), route("b", "/b", up2)]})
    _, headers, _ = get(gw.port, "/b")
    assert headers["x-upstream"] == "two"


# --------------------------------------------------------------------------- bad config is rejected


BAD_CONFIGS = [
    pytest.param(
        lambda a, up: {"routes": [a, route("new", "/new", up, vars=[["arg_x", "~~~", "1"]])]},
        "routes[new].vars: invalid operator",
        id="bad-vars-operator",
    ),
    pytest.param(
        lambda a, up: {"routes": [a, route("new", "/new", up, plugins={"no-such-plugin": {}})]},
        'routes[new].plugins.no-such-plugin: unknown plugin "no-such-plugin"',
        id="unknown-plugin",
    ),
    pytest.param(
        lambda a, up: "routes:\n  - id: new\n   uri: /new\n",
        "invalid YAML",
        id="yaml-syntax-error",
    ),
]


@pytest.mark.parametrize(("make_bad", "error"), BAD_CONFIGS)
def test_invalid_config_change_is_rejected_and_old_config_keeps_serving(
    upstream, gateway, make_bad, error
) -> None:
    up = upstream()
    a = route("a", "/a", up)
    gw = gateway({"routes": [a]}, workers=2)
    pids = set(gw.worker_pids())
    assert status(gw.port, "/a") == 200
    assert status(gw.port, "/new") == 404

    before = count_in_log(gw, "rejected; still serving version")
    write_config(gw.config_path, make_bad(a, up))
    wait_rejected(gw, before)
    log = gw.log()
    assert "rejected; still serving version 1" in log
    assert error in log, log
    assert "config version 2" not in log  # nothing was pushed
    for _ in range(6):  # fresh connections: both workers answer with the old table
        assert status(gw.port, "/a") == 200
        assert status(gw.port, "/new") == 404
    assert set(gw.worker_pids()) == pids  # no worker was restarted

    # A fixed file is picked up as the next version.
    gw.update({"routes": [a, route("new", "/new", up)]})
    assert status(gw.port, "/new") == 200
    assert status(gw.port, "/a") == 200


# --------------------------------------------------------------------------- stop signals


def test_sigterm_drains_in_flight_then_exits_0(upstream, gateway) -> None:
    up = upstream()
    gw = gateway({"routes": [route("slow", "/delay/*", up)]}, workers=2)
    pids = gw.worker_pids()
    result: dict[str, Any] = {}

    def slow() -> None:
        try:
            result["resp"] = get(gw.port, "/delay/1500", timeout=10)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc
        result["done"] = time.monotonic()

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    # The request is in flight once the gateway holds a connection to the upstream (fresh gateway: no pool).
    wait_for(lambda: established_to(up.port) >= 1, 5, "the slow request to reach the upstream")
    t_term = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", gw.port), timeout=0.5):
                return False
        except ConnectionRefusedError:
            return True
        except OSError:
            return False

    wait_for(refused, 1.0, "new connections to be refused after SIGTERM")
    assert "done" not in result, "the slow request finished before the listeners closed; test proves nothing"
    t.join(10)
    assert "error" not in result, result.get("error")
    st, _, body = result["resp"]
    assert st == 200
    assert json.loads(body)["path"] == "/delay/1500"
    assert refused()  # still refused while/after draining
    code = gw.proc.wait(10)
    assert code == 0
    assert time.monotonic() - t_term < 5
    assert "stopping (drain)" in gw.log()
    # Workers exit cleanly, not by aborting in interpreter finalization.
    assert "Fatal Python error" not in gw.log(), gw.log()
    assert all(is_dead(p) for p in pids)


def test_sigint_stops_fast(upstream, gateway) -> None:
    up = upstream()
    gw = gateway({"routes": [route("slow", "/delay/*", up)]}, workers=2)
    pids = gw.worker_pids()
    result: dict[str, Any] = {}

    def slow() -> None:
        try:
            result["resp"] = get(gw.port, "/delay/5000", timeout=10)
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    wait_for(lambda: established_to(up.port) >= 1, 5, "the slow request to reach the upstream")
    t0 = time.monotonic()
    gw.proc.send_signal(signal.SIGINT)
    code = gw.proc.wait(10)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.5, f"SIGINT took {elapsed:.2f}s (an in-flight request must not hold a fast stop)"
    assert code == 0
    assert "stopping (fast)" in gw.log()
    assert "Fatal Python error" not in gw.log(), gw.log()
    assert all(is_dead(p) for p in pids)
    t.join(10)
    assert "resp" not in result  # cut, not waited for
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()


# --------------------------------------------------------------------------- CLI


def test_validate_good_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    write_config(good, {"routes": [{"id": "r1", "uri": "/a", "upstream": {"nodes": {"127.0.0.1:1": 1}}},
                                   {"id": "r2", "uri": "/b", "upstream": {"nodes": {"127.0.0.1:2": 1}}}]})  # fmt: skip
    r = pygateway("validate", str(good))
    assert r.returncode == 0, r.stderr
    assert f"{good}: ok (2 routes)" in r.stdout

    bad = tmp_path / "bad.yaml"
    write_config(bad, {"routes": [
        {"id": "r1", "uri": "/a", "upstream": {"nodes": {"127.0.0.1:1": 1}}},
        {"id": "r2", "uri": "/b", "plugins": {"no-such-plugin": {}}, "upstream": {"nodes": {"127.0.0.1:1": 1}}},
        {"id": "r3", "uri": "/c", "upstream": {"type": "bogus", "nodes": {"127.0.0.1:1": 1}}},
    ]})  # fmt: skip
    r = pygateway("validate", str(bad))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert any(line.startswith("routes[r2].plugins.no-such-plugin") for line in lines), r.stderr
    assert any(line.startswith("routes[r3].upstream.type") for line in lines), r.stderr
    assert not any("r1" in line for line in lines), r.stderr

    vars_bad = tmp_path / "vars.yaml"
    write_config(
        vars_bad,
        {
            "routes": [
                {
                    "id": "v1",
                    "uri": "/a",
                    "vars": [["arg_x", "~~~", "1"]],
                    "upstream": {"nodes": {"127.0.0.1:1": 1}},
                }
            ]
        },
    )
    r = pygateway("validate", str(vars_bad))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("routes[v1].vars"), r.stderr

    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("routes:\n  - id: r1\n   uri: /a\n")
    r = pygateway("validate", str(syntax))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"{syntax}:3:" in r.stderr and "invalid YAML" in r.stderr


def test_version() -> None:
    r = pygateway("version")
    assert r.returncode == 0
    assert re.fullmatch(r"pygateway \d+\.\d+\.\d+\S*\n", r.stdout), r.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--bogus"],
        ["run", "--workers", "0"],
        ["run", "--keepalive-timeout", "0"],
        ["run", "--header-timeout", "-1"],
        ["run", "--keepalive-timeout", "nan"],
        ["run", "--drain-timeout", "-1"],
        ["frobnicate"],
    ],
)
def test_wrong_flag_is_one_line_exit_2(argv: list[str]) -> None:
    r = pygateway(*argv)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pygateway: ")


@pytest.mark.parametrize("which", ["missing", "directory"])
def test_unreadable_config_is_one_line_exit_1(tmp_path: Path, which: str) -> None:
    from helpers import free_port

    path = tmp_path / "nope.yaml" if which == "missing" else tmp_path
    r = pygateway("run", "-c", str(path), "--listen", f"127.0.0.1:{free_port()}", "--workers", "1")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0] and "cannot read" in lines[0], r.stderr


# --------------------------------------------------------------------------- no config


def test_without_config_serves_404_and_prints_how_to_add_routes(gateway) -> None:
    """Without -c the gateway runs on the embedded SQLite store and says how to add a route."""
    gw = gateway(None, workers=1)
    log = gw.log()
    assert f"listening on http://127.0.0.1:{gw.port} with 1 workers (sqlite store)" in log
    assert "no routes yet" in log
    assert f"curl {gw.admin_url}/routes/1 -H 'X-API-KEY: <admin key>' -X PUT" in log
    assert "pygateway run -c" in log
    for path in ("/", "/anything", "/a/b?c=d", "/hello"):
        st, headers, body = get(gw.port, path)
        assert st == 404, path
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body) == {"error_msg": "404 Route Not Found"}


def test_keepalive_timeout_closes_idle_connections_only(upstream, gateway) -> None:
    """`--keepalive-timeout`: an idle keep-alive connection is closed after it (within 1.25x); one with
    a request in flight longer than the timeout, or one in use, is not."""
    up = upstream()
    gw = gateway({"routes": [route("r", "/*", up)]}, args=["--keepalive-timeout", "1"])

    def get(c: http.client.HTTPConnection, path: str) -> int:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status

    def closed_after(c: http.client.HTTPConnection) -> float:
        """Seconds until the gateway closes the connection (its socket reads EOF)."""
        assert c.sock is not None, "the connection was kept alive"
        start = time.monotonic()
        c.sock.settimeout(5)
        try:
            assert c.sock.recv(1) == b""
        except ConnectionResetError:
            pass
        return time.monotonic() - start

    idle, busy, slow = (http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10) for _ in range(3))
    try:
        assert get(idle, "/a") == 200
        took = closed_after(idle)
        assert 0.9 <= took <= 1.25 + 0.4, took
        # A request in flight for 2.5 s (2.5x the timeout) is answered on its connection.
        assert get(slow, "/delay/2500") == 200
        # A connection used every 0.4 s for 2.8 s stays open, then idles out.
        for _ in range(7):
            assert get(busy, "/b") == 200
            time.sleep(0.4)
        assert get(busy, "/b") == 200
        took = closed_after(busy)
        assert 0.9 <= took <= 1.25 + 0.4, took
    finally:
        for c in (idle, busy, slow):
            c.close()


def _voluntary_switches(pid: int) -> int:
    """Voluntary context switches (= wake-ups after sleeping) summed over a process's threads."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        total += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    return total


@pytest.mark.parametrize("source", ["file", "store"])
def test_idle_gateway_does_not_tick(upstream, gateway, source: str) -> None:
    """An idle gateway sleeps until there is work: the master (admin and metrics ports, config file
    or SQLite store watcher included) and every thread of the worker (I/O thread, http-logger
    sender, OTLP exporter, asyncio loop, config reader). On a busy core every timer wake-up costs the
    data plane; they used to wake ~40 times a second in all."""
    up = upstream()
    if source == "file":
        gw = gateway({"routes": [route("r1", "/*", up)]})
    else:
        gw = gateway(None)
        r = httpx.put(f"{gw.admin_url}/routes/r1", json=route("r1", "/*", up), headers=gw.admin_headers)
        assert r.status_code in (200, 201), r.text
        gw.wait_log("config version 2 applied by all workers")
    (worker,) = wait_for(gw.worker_pids, 10, "one worker")
    assert status(gw.port, "/x") == 200
    time.sleep(1.0)  # start-up work (first config, first request) settles
    before = _voluntary_switches(gw.proc.pid) + _voluntary_switches(worker)
    time.sleep(4.0)
    woke = _voluntary_switches(gw.proc.pid) + _voluntary_switches(worker) - before
    assert woke <= 8, f"{woke} wake-ups in 4 s of idling"
    # Still awake to what matters: a config change is applied at once (inotify or the store's
    # notification, not a poll).
    t0 = time.monotonic()
    if source == "file":
        gw.update({"routes": [route("r2", "/y/*", up)]})
    else:
        r = httpx.put(f"{gw.admin_url}/routes/r2", json=route("r2", "/y/*", up), headers=gw.admin_headers)
        assert r.status_code in (200, 201), r.text
        gw.wait_log("config version 3 applied by all workers", timeout=2.0)
    assert time.monotonic() - t0 < 2.0
    assert status(gw.port, "/y/1") == 200


def test_config_file_written_in_place_is_applied(upstream, gateway) -> None:
    """Not every tool saves by rename: an in-place rewrite is seen when the writer closes the file."""
    up = upstream()
    gw = gateway({"routes": [route("r1", "/a/*", up)]})
    gw.config_path.write_text(json.dumps({"routes": [route("r1", "/b/*", up)]}))
    gw.version += 1
    gw.wait_log(f"config version {gw.version} applied by all workers", timeout=2.0)
    assert status(gw.port, "/b/1") == 200
    assert status(gw.port, "/a/1") == 404


def test_admin_and_status_ports_send_a_date_header(gateway) -> None:
    """uvicorn's own (timer-refreshed) Date header is replaced by one made per response."""
    gw = gateway(None)
    admin_port = int(gw.admin_url.split(":")[2].split("/")[0])
    metrics_port = int(gw.metrics_url.rsplit(":", 1)[1])
    for port, path, headers in (
        (admin_port, "/apisix/admin/routes", {"X-API-KEY": gw.admin_headers["X-API-KEY"]}),
        (metrics_port, "/status", {}),
    ):
        code, h, _ = get(port, path, headers=headers)
        assert code == 200, (port, path)
        sent = email.utils.parsedate_to_datetime(h["date"])
        assert abs(sent.timestamp() - time.time()) < 5, h["date"]
