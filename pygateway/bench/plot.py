"""Latency-percentile plots of a `pygateway bench` result: PNG (matplotlib, optional extra `plot`) and a
self-contained HTML page (inline SVG, the table and the JSON data; no scripts or links to load).

The x axis is HdrHistogram's: percentile on a log scale of 1/(1-p), so 90%, 99%, 99.9% ... are equally
spaced and the tail, where stalls live, gets as much room as the median."""

from __future__ import annotations

import html
import json
import math
from typing import Any

from pygateway.bench.report import TABLE, fmt_us, percentile, text, to_json

COLOURS = ["#1f77b4", "#d62728"]


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _x(p: float, count: int) -> float:
    """log10(1/(1-p)); the maximum (p = 100) sits where the last sample does, at 1 - 1/count."""
    top = 1.0 - 1.0 / max(count, 2)
    return math.log10(1.0 / (1.0 - min(p / 100.0, top)))


def _series(result: dict[str, Any]) -> list[tuple[str, list[float], list[float]]]:
    out = []
    for t in result["targets"]:
        n = max(int(t["requests"]), 2)
        xs = [_x(p, n) for p, _ in t["curve"]]
        ys = [us / 1000.0 for _, us in t["curve"]]
        out.append((t["url"], xs, ys))
    return out


def _ticks(max_x: float) -> list[tuple[float, str]]:
    ticks = [(0.0, "0%")]
    for d in range(1, max(1, math.floor(max_x + 1e-9)) + 1):
        ticks.append((float(d), f"{100 - 100 / 10**d:.{max(0, d - 2)}f}%"))
    return ticks


def _title(result: dict[str, Any]) -> str:
    if result["mode"] == "open":
        return f"latency by percentile, open loop at {result['rate_asked']:g} req/s per target"
    return "latency by percentile, closed loop (max throughput)"


def write_png(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    max_x = 1.0
    for i, (url, xs, ys) in enumerate(_series(result)):
        ax.plot(xs, ys, color=COLOURS[i % 2], label=url, linewidth=1.8)
        max_x = max(max_x, *xs)
    ticks = _ticks(max_x)
    ax.set_xticks([x for x, _ in ticks], [label for _, label in ticks])
    ax.set_xlim(0, max_x * 1.02)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title(_title(result))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _svg(result: dict[str, Any]) -> str:
    w, h, left, right, top, bottom = 860, 420, 70, 20, 30, 50
    series = _series(result)
    max_x = max([1.0] + [x for _, xs, _ in series for x in xs])
    max_y = max([0.001] + [y for _, _, ys in series for y in ys]) * 1.05
    sx = lambda x: left + (w - left - right) * x / max_x
    sy = lambda y: h - bottom - (h - top - bottom) * y / max_y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-size="12">',
        f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" fill="none" stroke="#888"/>',
    ]
    for x, label in _ticks(max_x):
        px = sx(x)
        parts.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{h - bottom}" stroke="#ddd"/>')
        parts.append(f'<text x="{px:.1f}" y="{h - bottom + 16}" text-anchor="middle">{label}</text>')
    for i in range(6):
        y = max_y * i / 5
        py = sy(y)
        parts.append(f'<line x1="{left}" y1="{py:.1f}" x2="{w - right}" y2="{py:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    parts.append(f'<text x="{(left + w - right) / 2}" y="{h - 10}" text-anchor="middle">percentile</text>')
    parts.append(f'<text x="16" y="{(top + h - bottom) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 16 {(top + h - bottom) / 2})">latency (ms)</text>')  # fmt: skip
    for i, (url, xs, ys) in enumerate(series):
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
        parts.append(f'<polyline fill="none" stroke="{COLOURS[i % 2]}" stroke-width="2" points="{pts}"/>')
        parts.append(f'<rect x="{left + 12}" y="{top + 10 + 18 * i}" width="14" height="4" fill="{COLOURS[i % 2]}"/>')
        parts.append(f'<text x="{left + 32}" y="{top + 16 + 18 * i}">{html.escape(url)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _table(result: dict[str, Any]) -> str:
    head = "".join(f"<th>{label}</th>" for label, _ in TABLE)
    rows = []
    for t in result["targets"]:
        cells = "".join(f"<td>{fmt_us(percentile(t, p))}</td>" for _, p in TABLE)
        rows.append(f"<tr><th>{html.escape(t['url'])}</th>{cells}</tr>")
    if "added_us" in result:
        cells = "".join(f"<td>{'+' if v >= 0 else '-'}{fmt_us(abs(v))}</td>" for v in result["added_us"].values())
        rows.append(f"<tr><th>added (second - first)</th>{cells}</tr>")
    return f"<table><tr><th>latency</th>{head}</tr>{''.join(rows)}</table>"


def write_html(result: dict[str, Any], path: str) -> None:
    data = json.dumps(to_json(result)).replace("</", "<\\/")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pygateway bench</title>
<style>
body, svg {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th:first-child {{ text-align: left; }}
pre {{ background: #f6f6f6; padding: 1em; }}
</style></head><body>
<h1>pygateway bench</h1>
<p>{html.escape(_title(result))}; {result['duration']:.1f} s measured, {result['connections']} connections per
target, {'h2c' if result['http2'] else 'HTTP/1.1'}.</p>
{_svg(result)}
{_table(result)}
<pre>{html.escape(text(result))}</pre>
<script type="application/json" id="bench-data">{data}</script>
</body></html>
"""
    with open(path, "w") as f:
        f.write(page)
