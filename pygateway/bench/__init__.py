"""`pygateway bench URL`: an HTTP latency benchmark (the load engine is Rust: `_core.run_bench`).

Closed loop (no --rate) measures maximum throughput like `wrk`; open loop (--rate R) offers R req/s on
a fixed schedule and times each request from when it should have been sent, like `wrk2`, so a stall
is not hidden by the client waiting for it (no coordinated omission). `--compare URL2` measures a
second target interleaved on the same schedule and prints the latency it adds.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from pygateway.bench import report

__all__ = ["add_parser", "main"]

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: str) -> float:
    """`10s`, `500ms`, `2m`, `1.5` (seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|m|h)?\s*", value)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 10s, 500ms or 2m, got {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _rate(value: str) -> float:
    """`1000`, `2.5k`, `1M` requests per second."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmM]?)\s*", value)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected requests per second > 0 (e.g. 1000, 2k), got {value!r}")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


def _header(value: str) -> tuple[str, str]:
    name, sep, val = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), val.strip()


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="latency benchmark of a URL (e.g. your gateway)")
    b.add_argument("url", help="http://HOST[:PORT]/PATH (HTTP/1.1, or h2c with --http2)")
    b.add_argument("--rate", type=_rate, help="req/s offered to each target (open loop); omit = max throughput")
    b.add_argument("--duration", type=_seconds, default=10.0, help="measured time (default 10s)")
    b.add_argument("--warmup", type=_seconds, default=1.0, help="unmeasured time first (default 1s)")
    b.add_argument("--connections", type=_count, default=50, help="connections per target (default 50)")
    b.add_argument("--threads", type=_count, default=1, help="client threads (default 1)")
    b.add_argument("--http2", action="store_true", help="h2c with prior knowledge instead of HTTP/1.1")
    b.add_argument("--method", default="GET", help="HTTP method (default GET)")
    b.add_argument("-H", "--header", type=_header, action="append", default=[], help="'Name: value' (repeatable)")
    b.add_argument("--body-file", help="request body from this file")
    b.add_argument("--timeout", type=_seconds, default=10.0, help="per request (default 10s)")
    b.add_argument("--compare", metavar="URL2", help="second target, interleaved; prints the latency URL2 adds")
    b.add_argument("--json", metavar="FILE", help="write the result as JSON")
    b.add_argument("--png", metavar="FILE", help="write a latency-percentile plot (needs matplotlib)")
    b.add_argument("--html", metavar="FILE", help="write a self-contained HTML report (plot + table)")


def _fail(message: str) -> int:
    sys.stderr.write(f"pygateway bench: {message}\n")
    return 1


def main(args: argparse.Namespace) -> int:
    from pygateway import _core
    from pygateway.bench import plot

    if args.png and not plot.have_matplotlib():
        return _fail("--png needs matplotlib: pip install 'pygateway[plot]'")
    body = b""
    if args.body_file:
        try:
            body = Path(args.body_file).read_bytes()
        except OSError as e:
            return _fail(f"--body-file: {e}")
    urls = [args.url] + ([args.compare] if args.compare else [])
    progress = report.ProgressLine(sys.stdout, urls) if sys.stdout.isatty() else None
    print(report.header(args, urls), flush=True)
    try:
        result = _core.run_bench(
            urls, rate=args.rate, duration=args.duration, warmup=args.warmup, connections=args.connections,
            threads=args.threads, http2=args.http2, method=args.method, headers=args.header, body=body,
            timeout=args.timeout, progress=progress, progress_interval=1.0,
        )  # fmt: skip
    except (ValueError, ConnectionError) as e:
        if progress:
            progress.clear()
        return _fail(str(e))
    except KeyboardInterrupt:
        if progress:
            progress.clear()
        _fail("interrupted")
        return 130
    if progress:
        progress.clear()
    report.add_comparison(result)
    print(report.text(result), flush=True)
    outputs: list[str] = []
    if args.json:
        report.write_json(result, args.json)
        outputs.append(args.json)
    if args.png:
        plot.write_png(result, args.png)
        outputs.append(args.png)
    if args.html:
        plot.write_html(result, args.html)
        outputs.append(args.html)
    if outputs:
        print("wrote " + ", ".join(outputs))
    return 0
