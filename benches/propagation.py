"""Config propagation latency: from an admin API write returning to the proxy serving the change.

    python benches/propagation.py [--samples 200] [--store sqlite|etcd|both] [--routes 0] [--workers 2]

Starts a tiny upstream, then for each store a gateway (`python -m pygateway.cli run`, SQLite in a
fresh data dir, or a real etcd started here), optionally preloads N routes, then `--samples` times
moves one route to a new path (`PUT /apisix/admin/routes/prop` with `uri: /prop/<n>`) and measures,
from the moment the PUT response has been read:

* `keepalive`: the first request on one kept-alive connection (so: one worker) that gets a 200;
* `first`: the first request on a fresh connection (any worker) that gets a 200;
* `all`: the first run of 20 consecutive fresh-connection requests that all get a 200 (with
  SO_REUSEPORT spreading connections, that is "every worker has it"), timed at the end of the
  run's first request (from there on every request saw the change); `all_run_end` is the end of
  the whole run (that adds the 19 other requests' own round trips: an upper bound).

Polling is a tight loop alternating one keep-alive and one fresh-connection request, so the
resolution is about two request round trips. Prints p50/p90/p99/max per store and metric; targets:
p99 of `all` <= 50 ms (SQLite) and <= 100 ms (etcd). Writes benches/results/propagation.json.

Measure a release build: run with an interpreter whose *installed* pygateway is a release wheel,
from outside the checkout (the checkout's _core is usually a debug build; the report says which).
`scale.py` imports the process helpers from here.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ADMIN_KEY = "bench-admin-key"
STREAK = 20

UPSTREAM_CODE = r"""
import asyncio, sys
port, name = int(sys.argv[1]), sys.argv[2].encode()
RESP = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-upstream: " + name + b"\r\n\r\nok"
async def handle(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    n = int(line[15:])
            if n:
                await r.readexactly(n)
            w.write(RESP)
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary_ms(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(pct(values, 50) * 1000, 2),
        "p90": round(pct(values, 90) * 1000, 2),
        "p99": round(pct(values, 99) * 1000, 2),
        "max": round(max(values) * 1000, 2),
    }


def core_build_kind(path: str) -> str:
    """'debug' when the extension carries DWARF debug info, else 'release'."""
    try:
        r = subprocess.run(
            ["readelf", "-S", "-W", path], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if r.returncode != 0:
        return "unknown"
    return "debug" if ".debug_info" in r.stdout else "release"


class Procs:
    """Everything started here, stopped by PID on exit (SIGINT, then SIGKILL after a grace)."""

    def __init__(self, work: Path, python: str) -> None:
        self.work = work
        self.python = python
        self.started: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ)
        self.env.pop("PYTHONSTARTUP", None)
        self.env["PYTHONUNBUFFERED"] = "1"

    def locate_gateway(self) -> dict[str, Any]:
        """The interpreter's installed pygateway, else this checkout (on PYTHONPATH)."""
        probe = (
            "import json, os, pygateway, pygateway._core as c; "
            "print(json.dumps({'pkg': os.path.dirname(pygateway.__file__), 'core': c.__file__}))"
        )

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run([self.python, "-c", probe], capture_output=True, text=True, cwd=self.work,
                                  env=self.env, timeout=60, check=False)  # fmt: skip

        r = run()
        if r.returncode != 0:
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), self.env.get("PYTHONPATH")]))
            r = run()
        if r.returncode != 0:
            raise RuntimeError(f"cannot import pygateway with {self.python}:\n{r.stderr}")
        info: dict[str, Any] = json.loads(r.stdout)
        info["python"] = self.python
        info["build"] = core_build_kind(info["core"])
        return info

    def launch(self, name: str, cmd: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        logp = self.work / f"{name}.log"
        with open(logp, "ab") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.work, env=self.env, start_new_session=True)  # fmt: skip
        self.started.append(proc)
        return proc, logp

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGCONT)  # in case it was stopped
                proc.send_signal(sig)
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.started)):
            self.stop(proc)

    # -- the pieces
    def upstream(self, name: str = "up") -> int:
        port = free_port()
        self.launch(f"upstream-{name}", [sys.executable, "-c", UPSTREAM_CODE, str(port), name])
        wait_port(port)
        return port

    def etcd(self, name: str = "etcd") -> str:
        exe = shutil.which("etcd") or "/usr/bin/etcd"
        port, peer_port = free_port(), free_port()
        url, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
        cmd = [exe, "--name", name, "--data-dir", str(self.work / f"{name}-data"),
               "--listen-client-urls", url, "--advertise-client-urls", url,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"{name}={peer}", "--log-level", "warn"]  # fmt: skip
        proc, logp = self.launch(name, cmd)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {logp.read_text()[-2000:]}")
            try:
                if etcd_call(url, "/v3/kv/range", {"key": "AA=="}) is not None:
                    return url
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"etcd did not start: {logp.read_text()[-2000:]}")

    def gateway(self, name: str, workers: int, store_args: list[str], data_dir: Path,
                timeout: float = 120.0) -> Gateway:  # fmt: skip
        port, admin_port = free_port(), free_port()
        cmd = [self.python, "-m", "pygateway.cli", "run", "--listen", f"127.0.0.1:{port}",
               "--workers", str(workers), "--admin-listen", f"127.0.0.1:{admin_port}",
               "--data-dir", str(data_dir), "--admin-key", ADMIN_KEY, *store_args]  # fmt: skip
        t0 = time.monotonic()
        proc, logp = self.launch(name, cmd)
        gw = Gateway(proc, logp, port, admin_port)
        deadline = t0 + timeout
        while "listening on" not in gw.log():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{gw.log()[-3000:]}")
            time.sleep(0.02)
        gw.start_seconds = time.monotonic() - t0
        return gw


def etcd_call(url: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    host, port = url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        r = c.getresponse()
        data = r.read()
        return json.loads(data) if r.status == 200 else None
    finally:
        c.close()


class Gateway:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, port: int, admin_port: int) -> None:
        self.proc, self.log_path, self.port, self.admin_port = proc, log_path, port, admin_port
        self.start_seconds = 0.0
        self._admin: http.client.HTTPConnection | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """An admin API call on a kept-alive connection (reconnecting when needed)."""
        payload = json.dumps(body) if body is not None else None
        headers = {"X-API-KEY": ADMIN_KEY, "content-type": "application/json"}
        for attempt in range(2):
            if self._admin is None:
                self._admin = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=60)
            try:
                self._admin.request(method, "/apisix/admin" + path, payload, headers)
                r = self._admin.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self._admin.close()
                self._admin = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


class Poller:
    """GETs on the proxy: one kept-alive connection, or a fresh connection per request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ka: http.client.HTTPConnection | None = None

    def fresh(self, path: str) -> tuple[int, str | None]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", path, headers={"connection": "close"})
            r = c.getresponse()
            r.read()
            return r.status, r.getheader("x-upstream")
        finally:
            c.close()

    def keepalive(self, path: str) -> tuple[int, str | None]:
        for attempt in range(2):
            if self.ka is None:
                self.ka = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                self.ka.request("GET", path)
                r = self.ka.getresponse()
                r.read()
                if r.will_close:
                    self.ka.close()
                    self.ka = None
                return r.status, r.getheader("x-upstream")
            except (OSError, http.client.HTTPException):
                self.ka.close()
                self.ka = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def wait_served(poller: Poller, path: str, timeout: float, streak: int = STREAK) -> float:
    t0 = time.monotonic()
    ok = 0
    while ok < streak:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{path} not served after {timeout}s")
        ok = ok + 1 if poller.fresh(path)[0] == 200 else 0
    return time.monotonic() - t0


def measure_once(gw: Gateway, poller: Poller, n: int, up_addr: str, timeout: float) -> dict[str, Any]:
    """Move route `prop` to /prop/<n>; time until it is served (keepalive / first / all workers)."""
    path = f"/prop/{n}"
    body = {"uri": path, "upstream": {"nodes": {up_addr: 1}}}
    t_put = time.monotonic()
    status, text = gw.admin("PUT", "/routes/prop", body)
    t0 = time.monotonic()
    if status not in (200, 201):
        raise RuntimeError(f"PUT /routes/prop: {status} {text[:300]!r}")
    out: dict[str, Any] = {
        "put": t0 - t_put,
        "keepalive": None,
        "first": None,
        "all": None,
        "all_run_end": None,
    }
    streak = 0
    run_first = 0.0
    deadline = t0 + timeout
    while out["all"] is None:
        now = time.monotonic()
        if now > deadline:
            out["timeout"] = True
            break
        if out["keepalive"] is None and poller.keepalive(path)[0] == 200:
            out["keepalive"] = time.monotonic() - t0
        if poller.fresh(path)[0] == 200:
            now = time.monotonic() - t0
            if out["first"] is None:
                out["first"] = now
            if streak == 0:
                run_first = now
            streak += 1
            if streak >= STREAK:
                out["all"], out["all_run_end"] = run_first, now
        else:
            streak = 0
    # keep polling on keep-alive only if it has not seen it yet (its worker may lag the others)
    while out["keepalive"] is None and time.monotonic() < deadline:
        if poller.keepalive(path)[0] == 200:
            out["keepalive"] = time.monotonic() - t0
    return out


def preload_direct_sqlite(data_dir: Path, n: int, up_addr: str) -> None:
    from pygateway.store.sqlite import SqliteStore

    store = SqliteStore(data_dir / "config.db")
    try:
        for i in range(n):
            store.put(f"routes/pre{i}", {"uri": f"/pre/{i}", "upstream": {"nodes": {up_addr: 1}}})
    finally:
        store.close()


def preload_direct_etcd(url: str, prefix: str, n: int, up_addr: str) -> None:
    import base64

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    host, port = url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for i in range(n):
            value = json.dumps({"uri": f"/pre/{i}", "upstream": {"nodes": {up_addr: 1}}})
            body = json.dumps({"key": b64(f"{prefix}/routes/pre{i}"), "value": b64(value)})
            c.request("POST", "/v3/kv/put", body, {"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"etcd put failed: {r.status}")
    finally:
        c.close()


def preload_admin(gw: Gateway, n: int, up_addr: str) -> float:
    t0 = time.monotonic()
    for i in range(n):
        status, text = gw.admin(
            "PUT", f"/routes/pre{i}", {"uri": f"/pre/{i}", "upstream": {"nodes": {up_addr: 1}}}
        )
        if status not in (200, 201):
            raise RuntimeError(f"preload PUT /routes/pre{i}: {status} {text[:300]!r}")
        if i and i % 1000 == 0:
            log(f"  preloaded {i}/{n} routes through the admin API ({time.monotonic() - t0:.0f}s)")
    return time.monotonic() - t0


def run_store(procs: Procs, store: str, args: argparse.Namespace, up_port: int) -> dict[str, Any]:
    up_addr = f"127.0.0.1:{up_port}"
    data_dir = Path(tempfile.mkdtemp(prefix=f"data-{store}-", dir=procs.work))
    store_args: list[str] = []
    etcd_url = None
    if store == "etcd":
        etcd_url = procs.etcd()
        store_args = ["--store", "etcd", "--etcd-endpoints", etcd_url, "--etcd-prefix", "/apisix"]
    res: dict[str, Any] = {
        "store": store,
        "routes": args.routes,
        "preload": args.preload if args.routes else None,
    }
    if args.routes and args.preload == "direct":
        t0 = time.monotonic()
        if etcd_url:
            preload_direct_etcd(etcd_url, "/apisix", args.routes, up_addr)
        else:
            preload_direct_sqlite(data_dir, args.routes, up_addr)
        res["preload_seconds"] = round(time.monotonic() - t0, 2)
    gw = procs.gateway(f"gateway-{store}", args.workers, store_args, data_dir)
    res["gateway_start_seconds"] = round(gw.start_seconds, 2)
    poller = Poller(gw.port)
    try:
        if args.routes and args.preload == "admin":
            res["preload_seconds"] = round(preload_admin(gw, args.routes, up_addr), 2)
        if args.routes:
            res["preload_settle_seconds"] = round(wait_served(poller, f"/pre/{args.routes - 1}", 120), 2)
        # warm-up: a few changes not counted
        for i in range(3):
            measure_once(gw, poller, -1 - i, up_addr, args.timeout)
        samples: list[dict[str, Any]] = []
        t_start = time.monotonic()
        for i in range(args.samples):
            if time.monotonic() - t_start > args.budget:
                log(f"  time budget of {args.budget}s used up after {i} samples")
                break
            samples.append(measure_once(gw, poller, i, up_addr, args.timeout))
        timeouts = sum(1 for s in samples if s.get("timeout"))
        res["samples"] = len(samples)
        res["timeouts"] = timeouts
        for metric in ("put", "keepalive", "first", "all", "all_run_end"):
            res[metric] = summary_ms([s[metric] for s in samples if s[metric] is not None])
        target = 0.050 if store == "sqlite" else 0.100
        res["target_p99_ms"] = target * 1000
        res["meets_target"] = bool(
            timeouts == 0 and res["all"].get("n") and res["all"]["p99"] <= target * 1000
        )
    finally:
        procs.stop(gw.proc)
    return res


def print_report(result: dict[str, Any]) -> None:
    gwi = result["gateway"]
    print(f"\npygateway from {gwi['pkg']} (_core={gwi['build']}), python {gwi['python']}, "
          f"{result['args']['workers']} workers")  # fmt: skip
    if gwi["build"] != "release":
        print("WARNING: _core is not a release build: the figures are not meaningful")
    for r in result["stores"]:
        extra = (
            f", {r['routes']} routes preloaded ({r['preload']}, {r.get('preload_seconds')}s)"
            if r["routes"]
            else ""
        )
        print(f"\n{r['store']}: {r['samples']} samples, {r['timeouts']} timeouts{extra}; "
              f"gateway start {r['gateway_start_seconds']}s")  # fmt: skip
        print(f"  {'ms':<34} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
        labels = {
            "put": "admin PUT round trip",
            "keepalive": "first seen, one keep-alive conn",
            "first": "first seen, fresh connections",
            "all": f"all workers ({STREAK} fresh in a row)",
            "all_run_end": "  (end of that run: upper bound)",
        }
        for metric, label in labels.items():
            s = r[metric]
            if not s.get("n"):
                print(f"  {label:<34} {'-':>8}")
                continue
            print(f"  {label:<34} {s['p50']:>8.2f} {s['p90']:>8.2f} {s['p99']:>8.2f} {s['max']:>8.2f}")
        verdict = "OK" if r["meets_target"] else "MISSED"
        print(f"  target: p99(all) <= {r['target_p99_ms']:.0f} ms: {verdict}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--store", choices=["sqlite", "etcd", "both"], default="both")
    ap.add_argument("--routes", type=int, default=0, help="routes preloaded before measuring")
    ap.add_argument("--preload", choices=["admin", "direct"], default="admin",
                    help="preload through the admin API (default) or straight into the store before start")  # fmt: skip
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds one change may take before a timeout")
    ap.add_argument("--budget", type=float, default=180.0, help="seconds of sampling per store at most")
    ap.add_argument("--python", help="interpreter that runs pygateway (default: this one)")
    ap.add_argument("--json", help="default: benches/results/propagation.json")
    args = ap.parse_args()
    if args.store in ("etcd", "both") and not (shutil.which("etcd") or os.path.exists("/usr/bin/etcd")):
        print("propagation.py: etcd not found (apt-get install etcd-server)", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    work = Path(tempfile.mkdtemp(prefix="pygw-prop-"))
    procs = Procs(work, args.python or sys.executable)
    result: dict[str, Any] = {"args": vars(args), "stores": []}
    ok = True
    try:
        result["gateway"] = procs.locate_gateway()
        if procs.env.get("PYTHONPATH", "").startswith(str(ROOT)):
            sys.path.insert(0, str(ROOT))  # direct preloads import pygateway here too
        log(f"pygateway: {result['gateway']['pkg']} (_core={result['gateway']['build']})")
        up_port = procs.upstream()
        for store in ("sqlite", "etcd") if args.store == "both" else (args.store,):
            log(f"{store}: measuring {args.samples} changes ({args.routes} routes preloaded)")
            try:
                r = run_store(procs, store, args, up_port)
            except (RuntimeError, TimeoutError, OSError) as exc:
                log(f"{store}: FAILED: {exc}")
                result["stores"].append({"store": store, "failed": str(exc)})
                ok = False
                continue
            result["stores"].append(r)
            ok = ok and r["meets_target"]
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        procs.stop_all()
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print_report({**result, "stores": [r for r in result["stores"] if "failed" not in r]})
    out = Path(args.json or HERE / "results" / "propagation.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
