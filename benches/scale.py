"""The cost of one route change with many routes loaded.

    python benches/scale.py [--routes 10000] [--workers 2] [--changes 20]

(a) in-process, for N=10 and N=`--routes`: a config of N routes (a mix of exact, prefix, `:param`
    and host-bound routes) where one route changes, and the parts of what that costs: on the master
    `compile_config` (validate + compile, reusing unchanged objects), the dry run (plugin chains +
    `_core.check_snapshot`) and the message; on a worker the message decode, the plugin chains and
    the Rust compile+swap (`_core.Worker(...).apply`) of the whole table.
(b) end to end: N routes written straight into a fresh data dir's config.db (SqliteStore) before
    the gateway starts; then `--changes` times one route is moved to a new path through the admin
    API, timed as in propagation.py (PUT returned -> first request / every worker sees it) and from
    the master's log (write -> "config version V pushed" -> "applied by all workers", ms
    timestamps); and the admin list latency (`GET /apisix/admin/routes?page=1&page_size=100`).

Target: one change with 10 000 routes well under 50 ms of worker time. Measure a release build
(run with an interpreter whose installed pygateway is a release wheel, from outside the checkout).
Writes benches/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from propagation import HERE, ROOT, Poller, Procs, log, measure_once, summary_ms, wait_served


def make_raw(n: int, up_addr: str) -> dict[str, Any]:
    routes: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 4
        r: dict[str, Any] = {"id": f"r{i}", "upstream": {"nodes": {up_addr: 1}}}
        if kind == 0:
            r["uri"] = f"/exact/{i}"
        elif kind == 1:
            r["uri"] = f"/prefix/{i}/*"
        elif kind == 2:
            r["uri"] = f"/param/{i}/:id/detail"
            r["methods"] = ["GET", "POST"]
        else:
            r["uri"] = "/hosted/*"
            r["hosts"] = [f"h{i}.example.com"]
        routes.append(r)
    return {"routes": routes}


def timed(fn: Any, *a: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    v = fn(*a)
    return time.perf_counter() - t0, v


def in_process(n: int, reps: int) -> dict[str, Any]:
    import io

    from pygateway import _core
    from pygateway.config.snapshot import compile_config
    from pygateway.plugin.registry import Registry
    from pygateway.settings import Settings
    from pygateway.worker.compiled import Compiled

    registry = Registry()
    raw = make_raw(n, "127.0.0.1:1980")
    worker = _core.Worker(Settings().worker_json())
    parts = ("master_compile", "master_dry_run", "master_total", "msg_decode", "chains", "rust_apply", "worker_total")
    cols: dict[str, list[float]] = {k: [] for k in parts}
    version = 0
    msg = b""
    for _ in range(reps + 1):  # the first round is a warm-up (and fills the master's caches)
        version += 1
        raw["routes"][0]["uri"] = f"/changed/{version}"  # one route changes per round
        # master: validate + compile (unchanged objects reused), dry run, encode
        t_comp, compiled = timed(compile_config, raw, version, registry)
        t_dry, _ = timed(lambda c=compiled: (c.chains(registry), _core.check_snapshot(c.snapshot)))
        t_msg, msg = timed(compiled.encode)
        # worker: decode, instantiate plugin chains, compile + swap in Rust
        t_dec, got = timed(lambda m=msg: Compiled.read(io.BytesIO(m)))
        t_chains, chains = timed(got.chains, registry)
        t_apply, _ = timed(worker.apply, got.snapshot, chains)
        if version == 1:
            continue
        cols["master_compile"].append(t_comp)
        cols["master_dry_run"].append(t_dry)
        cols["master_total"].append(t_comp + t_dry + t_msg)
        cols["msg_decode"].append(t_dec)
        cols["chains"].append(t_chains)
        cols["rust_apply"].append(t_apply)
        cols["worker_total"].append(t_dec + t_chains + t_apply)
    assert worker.version == version
    return {
        "routes": n,
        "reps": reps,
        "message_bytes": len(msg),
        "median_ms": {k: round(statistics.median(v) * 1000, 3) for k, v in cols.items()},
        "max_ms": {k: round(max(v) * 1000, 3) for k, v in cols.items()},
    }


_LOG_TS = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) master INFO config version (\d+) (pushed|applied)"
)


def log_times(text: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        m = _LOG_TS.match(line)
        if m:
            ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.setdefault(int(m.group(2)), {})[m.group(3)] = ts
    return out


def end_to_end(procs: Procs, n: int, workers: int, changes: int, up_port: int) -> dict[str, Any]:
    from pygateway.store.sqlite import SqliteStore

    up_addr = f"127.0.0.1:{up_port}"
    data_dir = Path(tempfile.mkdtemp(prefix="data-scale-", dir=procs.work))
    t0 = time.monotonic()
    store = SqliteStore(data_dir / "config.db")
    try:
        for r in make_raw(n, up_addr)["routes"]:
            rid = r.pop("id")
            store.put(f"routes/{rid}", r)
    finally:
        store.close()
    res: dict[str, Any] = {
        "routes": n,
        "workers": workers,
        "preload_seconds": round(time.monotonic() - t0, 2),
    }
    gw = procs.gateway("gateway-scale", workers, [], data_dir)
    res["gateway_start_seconds"] = round(gw.start_seconds, 2)
    poller = Poller(gw.port)
    try:
        res["first_route_served_seconds"] = round(wait_served(poller, "/exact/0", 30), 3)
        for i in range(3):  # warm-up
            measure_once(gw, poller, -1 - i, up_addr, 10)
        samples, master_s, workers_s, write_to_applied = [], [], [], []
        for i in range(changes):
            before = time.time()
            s = measure_once(gw, poller, i, up_addr, 10)
            samples.append(s)
            # this change is the newest version; wait (bounded) for both log lines
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                times = log_times(gw.log())
                v = max(times) if times else 0
                if v and "applied" in times[v] and times[v]["pushed"] >= before - 0.002:
                    master_s.append(times[v]["pushed"] - before)
                    workers_s.append(times[v]["applied"] - times[v]["pushed"])
                    write_to_applied.append(times[v]["applied"] - before)
                    break
                time.sleep(0.01)
        res["samples"] = len(samples)
        res["timeouts"] = sum(1 for s in samples if s.get("timeout"))
        for metric in ("put", "keepalive", "first", "all", "all_run_end"):
            res[metric] = summary_ms([s[metric] for s in samples if s[metric] is not None])
        res["log_master_put_to_pushed"] = summary_ms(master_s)
        res["log_pushed_to_applied_by_all"] = summary_ms(workers_s)
        res["log_put_to_applied_by_all"] = summary_ms(write_to_applied)
        lat = []
        for _ in range(30):
            t, (status, body) = timed(gw.admin, "GET", "/routes?page=1&page_size=100")
            assert status == 200, body[:300]
            lat.append(t)
        page = json.loads(body)
        res["admin_list_page_100"] = {
            **summary_ms(lat),
            "total": page.get("total"),
            "items": len(page["list"]),
        }
        lat = []
        for _ in range(3):
            t, (status, body) = timed(gw.admin, "GET", "/routes")
            assert status == 200, body[:300]
            lat.append(t)
        res["admin_list_all"] = {**summary_ms(lat), "bytes": len(body)}
    finally:
        procs.stop(gw.proc)
    return res


def print_report(result: dict[str, Any]) -> None:
    gwi = result["gateway"]
    print(f"\npygateway from {gwi['pkg']} (_core={gwi['build']}), python {gwi['python']}")
    if gwi["build"] != "release":
        print("WARNING: _core is not a release build: the figures are not meaningful")
    print("\n(a) in process, one route changed (median ms; max in brackets)")
    keys = ["master_compile", "master_dry_run", "master_total", "msg_decode", "chains", "rust_apply", "worker_total"]
    print(f"  {'routes':>7} " + " ".join(f"{k:>17}" for k in keys))
    for r in result["in_process"]:
        cells = " ".join(f"{r['median_ms'][k]:>8.2f} [{r['max_ms'][k]:>6.1f}]" for k in keys)
        print(f"  {r['routes']:>7} {cells}")
    print("  (master_compile = validate + compile, reusing unchanged objects; worker_total = msg_decode + chains +"
          " rust_apply)")  # fmt: skip
    e = result.get("end_to_end")
    if e:
        print(f"\n(b) end to end: {e['routes']} routes, {e['workers']} workers, {e['samples']} changes, "
              f"{e['timeouts']} timeouts; gateway start {e['gateway_start_seconds']}s")  # fmt: skip
        print(f"  {'ms':<44} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
        rows = [
            ("admin PUT round trip", "put"),
            ("PUT returned -> first seen (fresh conns)", "first"),
            ("PUT returned -> all workers (20 in a row)", "all"),
            ("log: PUT sent -> master 'pushed'", "log_master_put_to_pushed"),
            ("log: 'pushed' -> 'applied by all workers'", "log_pushed_to_applied_by_all"),
            ("log: PUT sent -> 'applied by all workers'", "log_put_to_applied_by_all"),
            ("GET /routes?page=1&page_size=100", "admin_list_page_100"),
            ("GET /routes (everything)", "admin_list_all"),
        ]
        for label, k in rows:
            s = e[k]
            if not s.get("n"):
                print(f"  {label:<44} {'-':>8}")
                continue
            print(f"  {label:<44} {s['p50']:>8.2f} {s['p90']:>8.2f} {s['p99']:>8.2f} {s['max']:>8.2f}")
    big = max(result["in_process"], key=lambda r: r["routes"])
    wt = big["median_ms"]["worker_total"]
    print(f"\ntarget: worker time for one change with {big['routes']} routes < 50 ms: "
          f"{wt:.1f} ms -> {'OK' if wt < 50 else 'MISSED'}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--changes", type=int, default=20, help="end-to-end changes measured")
    ap.add_argument("--reps", type=int, default=5, help="in-process repetitions with --routes routes")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--json", help="default: benches/results/scale.json")
    args = ap.parse_args()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    work = Path(tempfile.mkdtemp(prefix="pygw-scale-"))
    procs = Procs(work, sys.executable)
    result: dict[str, Any] = {"args": vars(args)}
    try:
        result["gateway"] = procs.locate_gateway()
        if procs.env.get("PYTHONPATH", "").startswith(str(ROOT)):
            sys.path.insert(0, str(ROOT))
        log(f"pygateway: {result['gateway']['pkg']} (_core={result['gateway']['build']})")
        result["in_process"] = []
        for n, reps in sorted({(10, 50), (args.routes, args.reps)}):
            log(f"in process: {n} routes x {reps}")
            result["in_process"].append(in_process(n, reps))
        if not args.skip_e2e:
            up_port = procs.upstream()
            log(f"end to end: preloading {args.routes} routes, then {args.changes} changes")
            result["end_to_end"] = end_to_end(procs, args.routes, args.workers, args.changes, up_port)
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print_report(result)
    out = Path(args.json or HERE / "results" / "scale.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
