#!/usr/bin/env python3
"""Macro benchmark: pygateway vs an nginx reverse proxy, one core each, CPU time per request.

    python benches/macro.py [--rounds 3] [--duration 10] [--json out.json] [--quick]

Layout (2-core box; same as the shared peers harness):
  * upstream: nginx, 1 worker, keep-alive, `return 200 "hello"`        -> CPU 0 (with wrk)
  * server under test (nginx proxy_pass baseline, or pygateway --workers 1) -> CPU 1
  * load: `wrk -t1 -c50 -dNs --latency`                                -> CPU 0

Each scenario is started fresh, checked (must answer 200 "hello", twice on one keep-alive connection),
warmed up, then measured. Scenarios alternate within each round; the figures are medians over rounds.
"CPU us/req" is the user+system CPU time of the server's whole process tree (master + workers + all
their threads, from /proc/<pid>/stat) during the measured wrk run, divided by the requests wrk completed.
It is the figure that says how much work one request costs, independently of whether the load side
managed to saturate the server.

Everything listens on 127.0.0.1 (free ports), every step is time-bounded, and every process started here
is stopped (by PID) on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PLUGIN_DIR = HERE / "bench_plugins"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ----------------------------------------------------------------------------- targets
# (scenario, metric, limit, description). "vs nginx" ratios compare to the nginx row of the same
# round set; "vs plain" to the pygateway plain row.
TARGETS: list[tuple[str, str, float, str]] = [
    ("gw-plain", "cpu_vs_nginx", 1.0, "CPU/req <= 1.0x nginx"),
    ("gw-plain", "rps_vs_nginx", 0.95, "req/s >= 0.95x nginx"),
    ("gw-plain", "p99_vs_nginx", 1.0, "p99 <= nginx p99"),
    ("gw-noop", "cpu_vs_plain", 1.2, "CPU/req <= 1.2x gw plain"),
    ("gw-limit-req", "cpu_vs_plain", 1.1, "CPU/req <= 1.1x gw plain"),
    ("gw-key-auth-limit", "cpu_vs_plain", 1.3, "CPU/req <= 1.3x gw plain"),
    ("gw-observed", "cpu_vs_plain", 1.15, "CPU/req <= 1.15x gw plain"),
]
HIGHER_IS_BETTER = {"rps_vs_nginx"}


@dataclass
class Scenario:
    name: str
    server: str  # "nginx" | "gateway"
    path: str
    headers: dict[str, str] = field(default_factory=dict)  # values may name {jwt_hs256} / {jwt_rs256}
    desc: str = ""
    auth: bool = False  # the check also expects 401 without `headers`
    expect_headers: tuple[str, ...] = ()  # response headers the plugins must have added (checked first)
    gw_args: tuple[str, ...] = ()  # extra `pygateway run` flags; `{d}` is the scenario's scratch dir


SCENARIOS = [
    Scenario("nginx-plain", "nginx", "/plain", desc="nginx proxy_pass (keepalive 64)"),
    Scenario("gw-plain", "gateway", "/plain", desc="pygateway, no plugins"),
    Scenario("gw-noop", "gateway", "/noop", desc="pygateway + no-op Python plugin"),
    Scenario(
        "gw-keycheck", "gateway", "/keyauth", {"apikey": "key-1"}, "pygateway + key-check Python plugin", True
    ),
    Scenario("gw-limit-req", "gateway", "/limited", desc="pygateway + limit-req (native)"),
    Scenario("gw-key-auth", "gateway", "/key-auth", {"apikey": "bench-key-1"}, "key-auth", True),
    Scenario(
        "gw-jwt-hs256", "gateway", "/jwt", {"authorization": "Bearer {jwt_hs256}"}, "jwt-auth HS256", True
    ),
    Scenario(
        "gw-jwt-rs256", "gateway", "/jwt", {"authorization": "Bearer {jwt_rs256}"}, "jwt-auth RS256", True
    ),
    Scenario(
        "gw-key-auth-limit",
        "gateway",
        "/key-auth-limited",
        {"apikey": "bench-key-1"},
        "key-auth + limit-count (local, never reached)",
        True,
        ("x-ratelimit-remaining",),
    ),
    Scenario(
        "gw-cors-reqid-rewrite",
        "gateway",
        "/combo",
        {"origin": "http://bench.example"},
        "cors + request-id + proxy-rewrite",
        False,
        ("access-control-allow-origin", "x-request-id"),
    ),
    Scenario(
        "gw-observed",
        "gateway",
        "/observed",
        desc="prometheus plugin + JSON access log to a file",
        gw_args=("--access-log", "{d}/access.log", "--metrics-listen", "127.0.0.1:{metrics_port}"),
    ),
]
BASELINES = ("nginx-plain", "gw-plain")

JWT_HS256_SECRET = "bench-hs256-secret-0123456789abcdef"


def gateway_config(up: int, plugins: Path, rsa_public_pem: str) -> str:
    """The gateway's standalone config (JSON is YAML): one route per scenario path."""

    def r(rid: str, uri: str, plugins: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "id": rid,
            "uri": uri,
            "plugins": plugins or {},
            "upstream": {"nodes": {f"127.0.0.1:{up}": 1}},
        }

    cfg = {
        "routes": [
            r("plain", "/plain"),
            r("limited", "/limited", {"limit-req": {"rate": 1000000, "burst": 1000000, "nodelay": True}}),
            r("noop", "/noop", {"bench-noop": {}}),
            r("observed", "/observed", {"prometheus": {}}),
            r("keyauth", "/keyauth", {"bench-keycheck": {}}),
            r("key-auth", "/key-auth", {"key-auth": {}}),
            r("jwt", "/jwt", {"jwt-auth": {}}),
            # counts per consumer; 16M (the native counter's ceiling) is never reached in one server's life
            r(
                "key-auth-limited",
                "/key-auth-limited",
                {
                    "key-auth": {},
                    "limit-count": {"count": 16000000, "time_window": 3600, "key": "consumer_name"},
                },
            ),
            # the upstream answers 404 on /combo: a 200 proves proxy-rewrite ran
            r(
                "combo",
                "/combo",
                {
                    "cors": {},
                    "request-id": {},
                    "proxy-rewrite": {"uri": "/rewritten", "headers": {"set": {"X-Bench": "1"}}},
                },
            ),
        ],
        "consumers": [
            {"username": "bench_key", "plugins": {"key-auth": {"key": "bench-key-1"}}},
            {"username": "bench_hs", "plugins": {"jwt-auth": {"key": "user-hs", "secret": JWT_HS256_SECRET}}},
            {
                "username": "bench_rs",
                "plugins": {
                    "jwt-auth": {"key": "user-rs", "algorithm": "RS256", "public_key": rsa_public_pem},
                },
            },
        ],
        "plugin_dirs": [str(plugins)],
    }
    return json.dumps(cfg, indent=1)


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwts(work: Path) -> tuple[dict[str, str], str]:
    """Precomputed tokens ({jwt_hs256, jwt_rs256}) and the RSA public key (PEM), via hmac and openssl."""
    import hashlib
    import hmac

    def signing_input(alg: str, key: str) -> bytes:
        head = _b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        return f"{head}.{_b64url(json.dumps({'key': key}).encode())}".encode()

    hs = signing_input("HS256", "user-hs")
    hs_sig = hmac.new(JWT_HS256_SECRET.encode(), hs, hashlib.sha256).digest()
    key, data = work / "rsa.pem", work / "rs.input"

    def run(*cmd: str) -> bytes:
        return subprocess.run(list(cmd), capture_output=True, check=True, timeout=60).stdout

    run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
    public_pem = run("openssl", "pkey", "-in", str(key), "-pubout").decode()
    rs = signing_input("RS256", "user-rs")
    data.write_bytes(rs)
    rs_sig = run("openssl", "dgst", "-sha256", "-sign", str(key), str(data))
    tokens = {
        "jwt_hs256": f"{hs.decode()}.{_b64url(hs_sig)}",
        "jwt_rs256": f"{rs.decode()}.{_b64url(rs_sig)}",
    }
    return tokens, public_pem


UPSTREAM_NGINX = """\
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "hello"; }}
    location = /combo {{ return 404 "not rewritten"; }}
  }}
}}
"""

PROXY_NGINX = """\
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{up}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def log(msg: str) -> None:
    print(f"[macro] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- processes
class Procs:
    """Everything we started; `stop_all` stops each tree by PID (TERM, then KILL after a grace)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def launch(
        self,
        name: str,
        cpu: str,
        cmd: list[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        # own session: a terminal Ctrl-C reaches only us, and we stop the children in order
        with open(workdir / f"{name}.log", "ab") as logf:
            proc = subprocess.Popen(
                ["taskset", "-c", cpu, *cmd],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        if proc.poll() is not None:
            if proc in self.started:
                self.started.remove(proc)
            return
        pids = tree_pids(proc.pid)
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not any(alive(p) for p in pids if p != proc.pid):
                break
            time.sleep(0.05)
        for p in pids:
            if alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.started)):
            self.stop(proc)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from #3 (state) on


def tree_pids(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat_fields(int(d))
            if f:
                kids.setdefault(int(f[1]), []).append(int(d))
    out, queue = [], [root]
    while queue:
        p = queue.pop()
        out.append(p)
        queue.extend(kids.get(p, []))
    return out


def alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"


def cpu_ticks(pids: list[int]) -> int:
    """utime+stime of each process (all its threads, live or exited) plus reaped children."""
    total = 0
    for p in pids:
        f = _stat_fields(p)
        if f:  # utime stime cutime cstime = fields 14..17 -> indexes 11..14 here
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total


def children_ticks() -> int:
    """CPU ticks of our reaped children (wrk runs), like cutime+cstime."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((ru.ru_utime + ru.ru_stime) * CLK_TCK)


def cpu_task_ticks() -> int:
    """user+nice+system+irq+softirq jiffies of all CPUs. Without IRQ time accounting a tick that lands
    in an interrupt is also charged to the interrupted process, so per-process times include these."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return sum(int(parts[i]) for i in (1, 2, 3, 6, 7))


def ctx_switches(pids: list[int]) -> int:
    """Context switches (voluntary + involuntary) of every thread of these processes."""
    total = 0
    for p in pids:
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                status = Path(f"/proc/{p}/task/{t}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def children_switches() -> int:
    """Context switches of our reaped children (wrk runs)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_nvcsw + ru.ru_nivcsw


def ipis_into(cpu: int) -> int:
    """Reschedule + function-call IPIs CPU `cpu` has received (/proc/interrupts RES and CAL rows). On
    the load core these are the server's wake-ups of wrk or the upstream that preempt or wake it; in a
    VM each costs the sending core a VM exit (benches/README.md, "Which rhythm the load core runs in")."""
    lines = Path("/proc/interrupts").read_text().splitlines()
    col = lines[0].split().index(f"CPU{cpu}") + 1
    return sum(int(ln.split()[col]) for ln in lines[1:] if ln.split()[:1] in (["RES:"], ["CAL:"]))


def cpu_busy(cpu: int | None) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU (None = all CPUs) from /proc/stat."""
    want = "cpu" if cpu is None else f"cpu{cpu}"
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts[0] == want:
            vals = [int(x) for x in parts[1:]]
            total = sum(vals[:8])
            return total - vals[3] - vals[4], total
    return 0, 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(
    port: int, path: str, headers: dict[str, str], n: int = 1, timeout: float = 3.0
) -> list[tuple[int, bytes, dict[str, str]]]:
    """n GETs on ONE keep-alive connection; [(status, body, lower-cased headers)]."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        out = []
        for _ in range(n):
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            out.append((r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}))
        return out
    finally:
        conn.close()


def wait_http(
    port: int,
    path: str,
    headers: dict[str, str],
    proc: subprocess.Popen[bytes],
    what: str,
    timeout: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering")
        try:
            last = http_get(port, path, headers, n=1, timeout=2.0)
            if last[0][0] == 200:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{what} not answering 200 on :{port}{path} after {timeout:.0f}s (last: {last!r})")


# ----------------------------------------------------------------------------- wrk
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"bad wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {"non2xx": 0, "socket_errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise ValueError("no Requests/sec in wrk output:\n" + out)
    res["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    res["requests"] = int(m.group(1)) if m else 0
    res["wrk_seconds"] = _ms(m.group(2) + m.group(3)) / 1000 if m else 0.0
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        res["lat_avg_ms"] = _ms(m.group(1))
        res["lat_max_ms"] = _ms(m.group(3))
    dist = re.search(r"Latency Distribution\s*\n((?:\s+\d+%\s+\S+\s*\n)+)", out)
    if dist:
        for pct, val in re.findall(r"(\d+)%\s+(\S+)", dist.group(1)):
            res[f"p{pct}_ms"] = _ms(val)
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["socket_errors"] = sum(int(x) for x in m.groups())
        res["socket_errors_detail"] = m.group(0)
    return res


def run_wrk(
    cpu: str, port: int, sc: Scenario, seconds: float, conns: int, latency: bool = True
) -> tuple[str, dict[str, Any]]:
    cmd = ["taskset", "-c", cpu, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s"]
    if latency:
        cmd.append("--latency")
    for k, v in sc.headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(f"http://127.0.0.1:{port}{sc.path}")
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 30, start_new_session=True, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr or r.stdout}")
    return r.stdout, parse_wrk(r.stdout) if latency else {}


# ----------------------------------------------------------------------------- servers
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.procs = Procs()
        self.work = Path(tempfile.mkdtemp(prefix="pygw-macro-"))
        self.up_port = 0
        self.rsa_public_pem = ""  # set with the JWT tokens at the start of run()
        self.gw_python = args.python or sys.executable
        self.gw_env = dict(os.environ)
        self.gw_env.pop("PYTHONSTARTUP", None)
        self.gw_env["PYTHONUNBUFFERED"] = "1"

    # -- pygateway location: the interpreter's installed package, else this checkout
    def locate_gateway(self) -> dict[str, Any]:
        probe = (
            "import json, os, pygateway, pygateway._core as c; "
            "print(json.dumps({'pkg': os.path.dirname(pygateway.__file__), 'core': c.__file__, "
            "'version': c.__version__}))"
        )
        r = subprocess.run(
            [self.gw_python, "-c", probe],
            capture_output=True,
            text=True,
            cwd=self.work,
            env=self.gw_env,
            timeout=60,
            check=False,
        )
        if r.returncode != 0:
            self.gw_env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(ROOT), self.gw_env.get("PYTHONPATH")])
            )
            r = subprocess.run(
                [self.gw_python, "-c", probe],
                capture_output=True,
                text=True,
                cwd=self.work,
                env=self.gw_env,
                timeout=60,
                check=False,
            )
        if r.returncode != 0:
            raise RuntimeError(f"cannot import pygateway with {self.gw_python}:\n{r.stderr}")
        info: dict[str, Any] = json.loads(r.stdout)
        info["python"] = self.gw_python
        info["core_size_mb"] = round(os.path.getsize(info["core"]) / 2**20, 1)
        info["build"] = core_build_kind(info["core"])
        return info

    def start_upstream(self) -> None:
        d = self.work / "upstream"
        (d / "tmp").mkdir(parents=True)
        self.up_port = free_port()
        (d / "nginx.conf").write_text(UPSTREAM_NGINX.format(d=d, port=self.up_port))
        self.upstream = self.procs.launch(
            "upstream",
            self.a.load_cpu,
            ["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
            self.work,
        )
        wait_http(self.up_port, "/", {}, self.upstream, "upstream nginx", timeout=15)

    def start_server(self, sc: Scenario, tag: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        d = self.work / tag
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        if sc.server == "nginx":
            (d / "nginx.conf").write_text(PROXY_NGINX.format(d=d, port=port, up=self.up_port))
            cmd = ["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]
            proc = self.procs.launch(tag, self.a.server_cpu, cmd, self.work)
            timeout = 15.0
        else:
            cfg = d / "apisix.yaml"
            cfg.write_text(gateway_config(self.up_port, PLUGIN_DIR, self.rsa_public_pem))
            cmd = [
                self.gw_python,
                "-m",
                "pygateway.cli",
                "run",
                "-c",
                str(cfg),
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--drain-timeout",
                "2",
                # Like the nginx under test (keepalive_requests 1000000): a client connection is not
                # closed every 1000 requests (our default, as nginx's), so both do the same work.
                "--keepalive-requests",
                "1000000",
                # Its own admin port: a gateway already on the default 9180 must not fail the run.
                "--admin-listen",
                f"127.0.0.1:{free_port()}",
            ]
            extra = [a.format(d=d, metrics_port=free_port()) for a in sc.gw_args]
            # Metrics and access log are off unless the scenario measures them.
            cmd += extra if extra else ["--no-metrics"]
            # cwd = scratch dir, so `-m` does not pick up a checkout in the current directory by accident
            proc = self.procs.launch(tag, self.a.server_cpu, cmd, self.work, env=self.gw_env, cwd=d)
            timeout = 60.0
            self._wait_log(self.work / f"{tag}.log", "listening on", proc, timeout)
        wait_http(port, sc.path, sc.headers, proc, sc.name, timeout=timeout)
        return proc, port

    def _wait_log(self, path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in path.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = "\n".join(path.read_text(errors="replace").splitlines()[-20:])
        why = (
            f"exited with {proc.returncode}"
            if proc.poll() is not None
            else f"did not print {needle!r} within {timeout:.0f}s"
        )
        raise RuntimeError(f"gateway {why}; log tail:\n{tail}")

    def check(self, sc: Scenario, port: int) -> None:
        res = http_get(port, sc.path, sc.headers, n=2)
        if [s for s, _, _ in res] != [200, 200] or any(b != b"hello" for _, b, _ in res):
            raise RuntimeError(f"{sc.name}: expected 200 'hello' twice on one connection, got {res!r}")
        missing = [h for h in sc.expect_headers for _, _, hdrs in res if h not in hdrs]
        if missing:
            raise RuntimeError(f"{sc.name}: response lacks {missing} (plugin not in the path?)")
        if sc.auth:  # the plugin must actually be in the path: without the key -> 401
            ((status, body, _),) = http_get(port, sc.path, {}, n=1)
            if status != 401:
                raise RuntimeError(f"{sc.name}: expected 401 without credentials, got {status} {body!r}")

    # -- one measurement
    def measure(self, sc: Scenario, rnd: int) -> dict[str, Any]:
        tag = f"{sc.name}-r{rnd}"
        proc, port = self.start_server(sc, tag)
        try:
            self.check(sc, port)
            if self.a.warmup > 0:
                run_wrk(self.a.load_cpu, port, sc, self.a.warmup, self.a.conns, latency=False)
            pids = tree_pids(proc.pid)
            up_pids = tree_pids(self.upstream.pid)
            load_cpu0 = int(self.a.load_cpu.split(",")[0])
            b0, t0 = cpu_busy(load_cpu0)
            a0, u0, k0 = cpu_task_ticks(), cpu_ticks(up_pids), children_ticks()
            s0 = ctx_switches(up_pids) + children_switches()
            i0 = ipis_into(load_cpu0)
            c0, w0 = cpu_ticks(pids), time.monotonic()
            out, res = run_wrk(self.a.load_cpu, port, sc, self.a.duration, self.a.conns)
            c1, w1 = cpu_ticks(tree_pids(proc.pid)), time.monotonic()  # threads may come and go: re-list
            b1, t1 = cpu_busy(load_cpu0)
            a1, u1, k1 = cpu_task_ticks(), cpu_ticks(up_pids), children_ticks()
            s1 = ctx_switches(up_pids) + children_switches()
            i1 = ipis_into(load_cpu0)
            if proc.poll() is not None:
                raise RuntimeError(f"{sc.name}: server exited during the run")
            (self.work / f"{tag}.wrk.txt").write_text(out)
        finally:
            self.procs.stop(proc, signal.SIGTERM)
        cpu_s = (c1 - c0) / CLK_TCK
        wall = w1 - w0
        ok_requests = max(1, res["requests"] - res["non2xx"])
        res.update(
            scenario=sc.name,
            round=rnd,
            server_cpu_s=cpu_s,
            wall_s=wall,
            server_cpu_pct=100 * cpu_s / wall if wall else 0.0,
            load_cpu_pct=100 * (b1 - b0) / max(1, t1 - t0),
            # How often wrk and the upstream took turns on the load core (see benches/README.md).
            load_switches_per_kreq=1000 * (s1 - s0) / max(1, res["requests"]),
            load_ipis_per_kreq=1000 * (i1 - i0) / max(1, res["requests"]),
            cpu_us_per_req=1e6 * cpu_s / max(1, res["requests"]),
            # CPU used by anything but the server, the upstream and wrk (other jobs on a shared box), % of a core
            foreign_cpu_pct=max(0.0, 100 * ((a1 - a0) - (c1 - c0) - (u1 - u0) - (k1 - k0)) / CLK_TCK / wall)
            if wall
            else 0.0,
            errors=res["non2xx"] + res["socket_errors"],
            ok_requests=ok_requests,
            processes=len(pids),
        )
        return res

    def run(self) -> dict[str, Any]:
        meta = self.meta()
        log(
            f"pygateway {meta['gateway']['version']} from {meta['gateway']['pkg']} "
            f"(_core {meta['gateway']['build']}, {meta['gateway']['core_size_mb']} MiB)"
        )
        if meta["gateway"]["build"] != "release":
            log("WARNING: _core is not a release build: the gateway figures are not meaningful")
        self.start_upstream()
        log(
            f"upstream nginx on 127.0.0.1:{self.up_port} (CPU {self.a.load_cpu}); servers on CPU {self.a.server_cpu}; "
            f"wrk -t1 -c{self.a.conns} -d{self.a.duration}s, warm-up {self.a.warmup}s, {self.a.rounds} round(s)"
        )
        scenarios = [s for s in SCENARIOS if not self.a.only or s.name in self.a.only]
        tokens, self.rsa_public_pem = make_jwts(self.work)
        for sc in scenarios:
            sc.headers = {k: v.format(**tokens) for k, v in sc.headers.items()}
        rows: list[dict[str, Any]] = []
        for rnd in range(1, self.a.rounds + 1):
            order = scenarios if rnd % 2 else [scenarios[0], *reversed(scenarios[1:])]
            for sc in order:
                for attempt in range(self.a.retries + 1):
                    try:
                        row = self.measure(sc, rnd)
                    except (RuntimeError, ValueError, subprocess.TimeoutExpired, OSError) as exc:
                        log(f"round {rnd} {sc.name}: FAILED: {exc}")
                        row = {"scenario": sc.name, "round": rnd, "failed": str(exc)}
                        break
                    row["noisy"] = row["foreign_cpu_pct"] > self.a.max_foreign
                    if not row["noisy"]:
                        break
                    log(
                        f"round {rnd} {sc.name}: other processes used {row['foreign_cpu_pct']:.0f}% of a core "
                        f"during the run (> {self.a.max_foreign:g}%)"
                        + ("; re-running" if attempt < self.a.retries else "; keeping it, marked noisy")
                    )
                    time.sleep(1)
                if "failed" not in row:
                    log(
                        f"round {rnd} {sc.name:<13} {row['rps']:>10,.0f} req/s  p99 {row.get('p99_ms', 0):7.2f} ms  "
                        f"{row['cpu_us_per_req']:7.2f} CPU us/req  server CPU {row['server_cpu_pct']:5.1f}%  "
                        f"load CPU {row['load_cpu_pct']:5.1f}%  other {row['foreign_cpu_pct']:4.1f}%  errors {row['errors']}"
                    )
                rows.append(row)
        summary = summarize(rows, scenarios)
        return {"meta": meta, "summary": summary, "targets": check_targets(summary), "runs": rows}

    def meta(self) -> dict[str, Any]:
        def cmd_out(*c: str) -> str:
            try:
                r = subprocess.run(list(c), capture_output=True, text=True, timeout=10, check=False)
                return (r.stdout + r.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "?"

        cpu_model = "?"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        return {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu_model},
            "params": {
                "rounds": self.a.rounds,
                "duration_s": self.a.duration,
                "warmup_s": self.a.warmup,
                "conns": self.a.conns,
                "server_cpu": self.a.server_cpu,
                "load_cpu": self.a.load_cpu,
            },
            "gateway": self.locate_gateway(),
            "nginx": cmd_out("nginx", "-v"),
            "wrk": cmd_out("wrk", "-v"),
        }

    def cleanup(self) -> None:
        self.procs.stop_all()
        if self.a.keep_tmp:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def core_build_kind(path: str) -> str:
    """'debug' when the extension carries DWARF debug info and is not LTO-stripped, else 'release'."""
    try:
        r = subprocess.run(
            ["readelf", "-S", "-W", path], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if r.returncode != 0:
        return "unknown"
    return "debug" if ".debug_info" in r.stdout else "release"


# ----------------------------------------------------------------------------- results
def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else None


def summarize(rows: list[dict[str, Any]], scenarios: list[Scenario]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for sc in scenarios:
        ok = [r for r in rows if r["scenario"] == sc.name and "failed" not in r]
        s: dict[str, Any] = {
            "desc": sc.desc,
            "rounds_ok": len(ok),
            "rounds_failed": sum(1 for r in rows if r["scenario"] == sc.name and "failed" in r),
        }
        s["rounds_noisy"] = sum(1 for r in ok if r.get("noisy"))
        for k in (
            "rps",
            "p50_ms",
            "p99_ms",
            "cpu_us_per_req",
            "server_cpu_pct",
            "load_cpu_pct",
            "load_switches_per_kreq",
            "load_ipis_per_kreq",
            "foreign_cpu_pct",
        ):
            s[k] = _median(ok, k)
        s["rps_min"] = min((r["rps"] for r in ok), default=None)
        s["rps_max"] = max((r["rps"] for r in ok), default=None)
        s["errors_total"] = sum(r["errors"] for r in ok)
        s["non2xx_total"] = sum(r["non2xx"] for r in ok)
        out[sc.name] = s
    ng, pl = out.get("nginx-plain", {}), out.get("gw-plain", {})

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    for name, s in out.items():
        s["rps_vs_nginx"] = ratio(s["rps"], ng.get("rps"))
        s["cpu_vs_nginx"] = ratio(s["cpu_us_per_req"], ng.get("cpu_us_per_req"))
        s["p99_vs_nginx"] = ratio(s["p99_ms"], ng.get("p99_ms"))
        baseline = name in BASELINES
        s["cpu_vs_plain"] = None if baseline else ratio(s["cpu_us_per_req"], pl.get("cpu_us_per_req"))
        s["rps_vs_plain"] = None if baseline else ratio(s["rps"], pl.get("rps"))
    return out


def check_targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    res = []
    for name, metric, limit, desc in TARGETS:
        val = summary.get(name, {}).get(metric)
        if val is None:
            ok = None
        else:
            ok = val >= limit if metric in HIGHER_IS_BETTER else val <= limit
        res.append(
            {"scenario": name, "metric": metric, "limit": limit, "desc": desc, "value": val, "pass": ok}
        )
    return res


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def print_report(result: dict[str, Any]) -> None:
    meta, summary = result["meta"], result["summary"]
    gw = meta["gateway"]
    p = meta["params"]
    print()
    print(
        f"pygateway macro benchmark  {meta['date']}  ({meta['host']['cpu']}, nproc={meta['host']['nproc']}, "
        f"kernel {meta['host']['kernel']})"
    )
    print(f"  pygateway {gw['version']} _core={gw['build']} build ({gw['core']})")
    print(f"  {meta['nginx']}; {meta['wrk']}")
    print(
        f"  server on CPU {p['server_cpu']}, wrk + upstream on CPU {p['load_cpu']}; wrk -t1 -c{p['conns']} "
        f"-d{p['duration_s']}s --latency after {p['warmup_s']}s warm-up; median of {p['rounds']} round(s)"
    )
    if gw["build"] != "release":
        print("  !! _core is a DEBUG build: gateway numbers are not representative")
    print()
    targets_by: dict[str, dict[str, Any]] = {}
    for t in result["targets"]:
        targets_by.setdefault(t["scenario"], {})[t["metric"]] = t

    def mark(name: str, metric: str) -> str:
        t = targets_by.get(name, {}).get(metric)
        if not t:
            return ""
        op = ">=" if metric in HIGHER_IS_BETTER else "<="
        verdict = "?" if t["pass"] is None else ("ok" if t["pass"] else "MISS")
        return f" [{op}{t['limit']:g} {verdict}]"

    hdr = [
        "scenario",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "req/s vs nginx",
        "CPU/req vs nginx",
        "p99 vs nginx",
        "req/s vs gw plain",
        "CPU/req vs gw plain",
        "srv CPU%",
        "load CPU%",
        "load cs/1k",
        "load IPI/1k",
        "other CPU%",
        "errors",
        "rounds",
    ]
    lines = []
    for name, s in summary.items():
        lines.append(
            [
                name,
                _f(s["rps"], ",.0f"),
                _f(s["p50_ms"], ".3f"),
                _f(s["p99_ms"], ".3f"),
                _f(s["cpu_us_per_req"], ".2f"),
                _f(s["rps_vs_nginx"], ".2f") + mark(name, "rps_vs_nginx"),
                _f(s["cpu_vs_nginx"], ".2f") + mark(name, "cpu_vs_nginx"),
                _f(s["p99_vs_nginx"], ".2f") + mark(name, "p99_vs_nginx"),
                _f(s["rps_vs_plain"], ".2f"),
                _f(s["cpu_vs_plain"], ".2f") + mark(name, "cpu_vs_plain"),
                _f(s["server_cpu_pct"], ".0f"),
                _f(s["load_cpu_pct"], ".0f"),
                _f(s.get("load_switches_per_kreq"), ".0f"),
                _f(s.get("load_ipis_per_kreq"), ".0f"),
                _f(s["foreign_cpu_pct"], ".0f"),
                str(s["errors_total"]) + (f" ({s['non2xx_total']} non-2xx)" if s["non2xx_total"] else ""),
                f"{s['rounds_ok']}"
                + (f" ({s['rounds_failed']} FAILED)" if s["rounds_failed"] else "")
                + (f" ({s['rounds_noisy']} noisy)" if s["rounds_noisy"] else ""),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(hdr)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(hdr, widths))))
    for r in lines:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print()
    print("targets:")
    for t in result["targets"]:
        verdict = "n/a " if t["pass"] is None else ("ok  " if t["pass"] else "MISS")
        print(f"  {verdict} {t['scenario']:<13} {t['desc']:<28} measured {_f(t['value'], '.2f')}")
    print(
        textwrap.dedent("""
        CPU us/req = CPU time (user+sys) of the server's process tree during the measured run / requests
        completed. srv CPU% near 100 = the server's core was the bottleneck; load CPU% near 100 = wrk + the
        upstream (CPU 0) were saturated, so req/s is a floor for that row and CPU us/req is the fair figure.
        load cs/1k = context switches of wrk + the upstream per 1000 requests: how often they took turns on
        CPU 0; fewer = longer runs of requests each (benches/README.md, "Which rhythm the load core runs in").
        load IPI/1k = reschedule/call IPIs CPU 0 received per 1000 requests, nearly all sent by the server's
        wake-ups of wrk and the upstream; in a VM each costs the sending core an exit (~11 us measured here).
        other CPU% = CPU used meanwhile by processes outside the benchmark (% of one core); rows above
        --max-foreign are re-run (--retries) and otherwise marked noisy.""")
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    ap.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of wrk before each measured run (0 = none)"
    )
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument(
        "--json",
        help="where to write results (default benches/results/macro.json, or macro-quick.json with --quick)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round of 3 s, 1 s warm-up")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        choices=[s.name for s in SCENARIOS],
        help="run just this scenario (repeatable; ratios need nginx-plain and gw-plain)",
    )
    ap.add_argument(
        "--scenarios",
        help="comma-separated scenarios to run, plus the baselines nginx-plain and gw-plain the ratios need "
        f"(choices: {', '.join(s.name for s in SCENARIOS)})",
    )
    ap.add_argument("--python", help="interpreter that runs pygateway (default: this one)")
    ap.add_argument("--server-cpu", default="1", help="taskset CPU list of the server under test")
    ap.add_argument("--load-cpu", default="0", help="taskset CPU list of wrk and the upstream")
    ap.add_argument(
        "--max-foreign",
        type=float,
        default=10.0,
        help="%% of a core other processes may use during a run before it counts as noisy",
    )
    ap.add_argument("--retries", type=int, default=1, help="re-runs of a noisy measurement")
    ap.add_argument("--keep-tmp", action="store_true", help="keep configs, logs and wrk outputs")
    args = ap.parse_args()
    if args.scenarios:
        picked = [n.strip() for n in args.scenarios.split(",") if n.strip()]
        unknown = sorted(set(picked) - {s.name for s in SCENARIOS})
        if unknown:
            ap.error(f"--scenarios: unknown {', '.join(unknown)}")
        args.only = list(dict.fromkeys([*args.only, *BASELINES, *picked]))
    if args.quick:
        args.rounds, args.duration, args.warmup, args.retries = 1, 3.0, 1.0, 0
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            print(f"macro.py: {tool} not found (apt-get install nginx wrk util-linux)", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        log("WARNING: fewer than 2 CPUs: server and load share a core")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored (background job)
    bench = Bench(args)
    try:
        result = bench.run()
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        bench.cleanup()
    print_report(result)
    out = Path(args.json or HERE / "results" / ("macro-quick.json" if args.quick else "macro.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    failed = [r for r in result["runs"] if "failed" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
