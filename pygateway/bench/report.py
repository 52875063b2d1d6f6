"""Text and JSON output of `pygateway bench`: the live progress line, the percentile table, the
achieved-vs-asked rate, errors, and with --compare the latency the second target adds."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

# (label, percentile) of the table; 100 is the maximum.
TABLE = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9), ("max", 100.0)]


def fmt_us(us: float) -> str:
    """Latency for people: 850us, 1.25ms, 2.10s."""
    if abs(us) < 1000:
        return f"{us:.0f}us"
    if abs(us) < 1_000_000:
        ms = us / 1000
        return f"{ms:.2f}ms" if abs(ms) < 10 else f"{ms:.1f}ms" if abs(ms) < 100 else f"{ms:.0f}ms"
    return f"{us / 1e6:.2f}s"


def fmt_rate(r: float) -> str:
    return f"{r:,.0f}" if r >= 100 else f"{r:.1f}"


def percentile(target: dict[str, Any], p: float) -> int:
    for q, us in target["percentiles"]:
        if q == p:
            return int(us)
    raise KeyError(p)


def header(args: argparse.Namespace, urls: list[str]) -> str:
    mode = f"open loop, {fmt_rate(args.rate)} req/s asked per target" if args.rate else "closed loop (max throughput)"
    proto = "h2c" if args.http2 else "HTTP/1.1"
    return (f"pygateway bench {' vs '.join(urls)}\n  {mode}, {args.duration:g}s after {args.warmup:g}s warm-up, "
            f"{args.connections} connections per target, {args.threads} thread(s), {proto}")  # fmt: skip


class ProgressLine:
    """The callback `run_bench` calls once a second: one line, rewritten in place (terminals only)."""

    def __init__(self, out: TextIO, urls: list[str]) -> None:
        self.out, self.urls, self.width = out, urls, 0

    def __call__(self, p: dict[str, Any]) -> None:
        if p["warmup"]:
            line = "  warming up..."
        else:
            parts = []
            for i, t in enumerate(p["targets"]):
                tag = f"[{i + 1}] " if len(p["targets"]) > 1 else ""
                parts.append(f"{tag}{fmt_rate(t['rate'])} req/s, {t['errors']} errors, "
                             f"p50 {fmt_us(t['p50_us'])}, p99 {fmt_us(t['p99_us'])}")  # fmt: skip
            line = f"  {p['elapsed']:4.0f}s  " + "  |  ".join(parts)
        self.out.write("\r" + line.ljust(self.width))
        self.out.flush()
        self.width = len(line)

    def clear(self) -> None:
        if self.width:
            self.out.write("\r" + " " * self.width + "\r")
            self.out.flush()
            self.width = 0


def add_comparison(result: dict[str, Any]) -> None:
    """With two targets: `added_us`, the second target's latency minus the first's at each percentile."""
    if len(result["targets"]) == 2:
        a, b = result["targets"]
        result["added_us"] = {label: percentile(b, p) - percentile(a, p) for label, p in TABLE}


def _errors(t: dict[str, Any]) -> str:
    if not t["errors"]:
        return "0 errors"
    parts = [f"{t['status_errors']:,} non-2xx/3xx", f"{t['socket_errors']:,} socket", f"{t['timeouts']:,} timeouts"]
    last = f"; last socket error: {t['last_error']}" if t.get("last_error") else ""
    return f"{t['errors']:,} errors ({', '.join(parts)}){last}"


def text(result: dict[str, Any]) -> str:
    targets = result["targets"]
    names = [f"[{i + 1}] {t['url']}" if len(targets) > 1 else t["url"] for i, t in enumerate(targets)]
    w = max(len(n) for n in names + ["added ([2] - [1])"])
    lines = ["", f"  {'latency':<{w}}" + "".join(f"{label:>10}" for label, _ in TABLE)]
    for name, t in zip(names, targets):
        lines.append(f"  {name:<{w}}" + "".join(f"{fmt_us(percentile(t, p)):>10}" for _, p in TABLE))
    if "added_us" in result:
        added = result["added_us"]
        cells = "".join(f"{('+' if added[label] >= 0 else '-') + fmt_us(abs(added[label])):>10}" for label, _ in TABLE)
        lines.append(f"  {'added ([2] - [1])':<{w}}" + cells)
    lines.append("")
    asked = result["rate_asked"]
    for name, t in zip(names, targets):
        rate = f"{fmt_rate(t['rate'])} req/s achieved" + (f" of {fmt_rate(asked)} asked" if asked else "")
        lines.append(f"  {name}: {t['requests']:,} responses in {result['duration']:.1f}s, {rate}, {_errors(t)}")
        statuses = ", ".join(f"{code}: {n:,}" for code, n in sorted(t["statuses"].items()))
        if statuses:
            lines.append(f"    statuses {statuses}")
        if asked and t["rate"] < 0.9 * asked:
            why = ("the target or this client could not keep up; try more --connections or --threads"
                   if t["not_sent"] else "see the errors")  # fmt: skip
            lines.append(f"    warning: the asked rate was not reached ({t['not_sent']:,} requests never sent, "
                         f"{t['errors']:,} failed): {why}")  # fmt: skip
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(to_json(result), f, indent=2)
        f.write("\n")


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """The result with percentiles keyed by label ("p50" .. "max") for easy reading by other tools."""
    out = dict(result)
    out["targets"] = []
    for t in result["targets"]:
        t = dict(t)
        t["percentiles_us"] = {label: percentile(t, p) for label, p in TABLE}
        t["percentiles"] = [list(x) for x in t["percentiles"]]
        t["curve"] = [list(x) for x in t["curve"]]
        t["histogram"] = [list(x) for x in t["histogram"]]
        t["statuses"] = {str(k): v for k, v in t["statuses"].items()}
        out["targets"].append(t)
    return out
