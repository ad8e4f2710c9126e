"""Draw the benchmark document's ratios: an SVG bar chart and a Markdown table.

``run.py`` calls this after every full run, so the chart and the table in
``docs/performance.md`` always show the JSON next to them. To redraw from a saved
document::

    python benchmarks/chart.py docs/performance.json docs/performance.svg [docs/performance.md]

The SVG is written by hand (no plotting dependency) and is deterministic: the same
document gives the same bytes. One bar per ratio that has a target, on a logarithmic
axis (ratios from 0.1 to 20 share one chart), with the target as a tick on the bar's
row; green if met, red if not.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
from typing import Any
from xml.sax.saxutils import escape

#: Readable names of the known ratios, by (benchmark, name in the document).
LABELS: dict[tuple[str, str], str] = {
    ("integrity", "load.verified_vs_naive"): "verified load / naive hash + load_file",
    ("integrity", "load.verified_vs_hash_only"): "verified load / hash only (file_digest)",
    ("integrity", "load.verified_vs_hash_plus_parse"): "verified load / (hash only + parse)",
    ("integrity", "memory.verified_vs_unverified_peak"): "peak RSS: verified / unverified load",
    (
        "integrity",
        "memory.verified_growth_vs_file_size",
    ): "RSS growth of verified load / file size",
    ("integrity", "directory.verify_vs_single_thread"): "Manifest.verify speed-up, 2 threads",
    ("chunked", "load.chunked_vs_single_thread"): "huge file: parallel chunks / read_verified",
    ("breaker", "closed.ours_vs_pybreaker"): "breaker call / pybreaker call",
    ("breaker", "open.ours_vs_pybreaker"): "rejection / pybreaker rejection",
    ("breaker", "threads.ours_vs_pybreaker"): "16 threads: calls/s / pybreaker's",
    ("http", "http.ratio_503_to_200"): "HTTP: 503 path / trivial 200, req/s",
    (
        "signing",
        "load.guard_vs_model_signing_then_load_file",
    ): "signed load / model_signing verify + load",
    ("signing", "load.signature_check.under_5_ms"): "signature check alone, in ms",
    (
        "directories",
        "parallel.parallel_vs_single_thread",
    ): "read_verified_files speed-up, 2 threads",
    (
        "directories",
        "memory.verified_vs_unverified_peak",
    ): "4 shards peak RSS: verified / load_file",
    ("directories", "materialize.materialize_vs_cp_r"): "materialize / cp -r",
    ("s3", "fetch.verified_vs_s3fs_get"): "S3: verified fetch / plain s3fs get",
}

MET, MISSED, INK, GRID = "#2e7d32", "#c62828", "#222222", "#dddddd"
WIDTH, LABEL_W, PLOT_X, PLOT_W = 940, 330, 340, 380
ROW, TOP, BOTTOM = 26, 74, 56


def disturbed_runs(node: Any) -> tuple[int, int]:
    """Return (timed runs kept although other processes were busy, timed runs) in ``node``."""
    if isinstance(node, dict):
        if "repetitions" in node and "contended_runs" in node:
            return int(node["contended_runs"]), int(node["repetitions"])
        pairs = [disturbed_runs(value) for value in node.values()]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return 0, 0


def label(item: dict[str, Any]) -> str:
    """Return the readable name of one target entry."""
    return LABELS.get((item["benchmark"], item["name"]), f"{item['benchmark']}: {item['name']}")


def _bound(item: dict[str, Any]) -> tuple[str, float]:
    op, value = item["target"].split()
    return op, float(value)


def _steps(low: float, high: float) -> list[float]:
    """Return the 1-2-5 steps from the decade of ``low`` to the first one >= ``high``."""
    steps: list[float] = []
    decade = 10.0 ** math.floor(math.log10(low))
    while not steps or steps[-1] < high:
        steps.extend(round(decade * m, 10) for m in (1, 2, 5))
        decade *= 10
    return [s for s in steps if s >= low * 0.9999 or s == steps[0]]


def _axis(items: list[dict[str, Any]]) -> tuple[float, float]:
    """Return the axis range: from 0.1 (or lower) to the first 1-2-5 step past every bar."""
    values = [v for item in items for v in (float(item["value"]), _bound(item)[1]) if v > 0]
    low = min(0.1, 10.0 ** math.floor(math.log10(min(values, default=0.1))))
    high = max(2.0, max(values, default=2.0) * 1.05)
    return low, next(s for s in _steps(low, high) if s >= high)


def _ticks(low: float, high: float) -> list[float]:
    return [s for s in _steps(low, high) if low * 0.9999 <= s <= high * 1.0001]


def _fmt(value: float) -> str:
    return f"{value:g}"


def render_svg(document: dict[str, Any]) -> str:
    """Return the SVG chart of every target in ``document`` (deterministic)."""
    items: list[dict[str, Any]] = list(document.get("targets", []))
    low, high = _axis(items)
    span = math.log10(high) - math.log10(low)

    def x(value: float) -> float:
        clamped = min(max(value, low), high)
        return round(PLOT_X + PLOT_W * (math.log10(clamped) - math.log10(low)) / span, 1)

    crashed = sorted(
        name
        for name, result in document.get("benchmarks", {}).items()
        if isinstance(result, dict) and "error" in result
    )
    height = TOP + ROW * max(len(items), 1) + BOTTOM + (16 if crashed else 0)
    m = document.get("machine", {})
    facts = (
        f"{m.get('cpus', '?')} CPUs ({m.get('cpu', 'unknown CPU')}), Python "
        f"{m.get('python', '?')}, {'quick' if document.get('quick') else 'full'} run, "
        f"load {m.get('load_average_1m', '?')}, page cache warm; each ratio against a "
        "baseline measured in the same run"
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold" fill="{INK}">'
        "clarity-resilience: benchmark ratios against their baselines</text>",
        f'<text x="10" y="42" fill="#555555">{escape(facts)}</text>',
        '<text x="10" y="60" fill="#555555">bar: measured ratio (log scale); '
        "black tick: target; green: met, red: missed</text>",
    ]
    plot_bottom = TOP + ROW * max(len(items), 1)
    for tick in _ticks(low, high):
        tx = x(tick)
        out.append(
            f'<line x1="{tx}" y1="{TOP - 6}" x2="{tx}" y2="{plot_bottom}" stroke="{GRID}"/>'
        )
        out.append(
            f'<text x="{tx}" y="{plot_bottom + 16}" text-anchor="middle" fill="#555555">'
            f"{_fmt(tick)}</text>"
        )
    one = x(1.0)
    out.append(f'<line x1="{one}" y1="{TOP - 6}" x2="{one}" y2="{plot_bottom}" stroke="#999999"/>')
    for row, item in enumerate(items):
        y = TOP + ROW * row
        value = float(item["value"])
        op, bound = _bound(item)
        color = MET if item["met"] else MISSED
        out.append(
            f'<text x="{PLOT_X - 8}" y="{y + 15}" text-anchor="end" fill="{INK}">'
            f"{escape(label(item))}</text>"
        )
        out.append(
            f'<rect x="{PLOT_X}" y="{y + 4}" width="{round(x(value) - PLOT_X, 1)}" '
            f'height="{ROW - 10}" fill="{color}"/>'
        )
        bx = x(bound)
        out.append(
            f'<line x1="{bx}" y1="{y + 1}" x2="{bx}" y2="{y + ROW - 3}" '
            f'stroke="{INK}" stroke-width="2"/>'
        )
        verdict = "met" if item["met"] else "missed"
        symbol = "\u2264" if op == "<=" else "\u2265"
        out.append(
            f'<text x="{PLOT_X + PLOT_W + 10}" y="{y + 15}" fill="{color}">'
            f"{value:.2f} (target {symbol} {_fmt(bound)}: {verdict})</text>"
        )
    if not items:
        out.append(f'<text x="{PLOT_X}" y="{TOP + 15}" fill="{INK}">no targets measured</text>')
    if crashed:
        out.append(
            f'<text x="10" y="{height - 12}" fill="{MISSED}">'
            f"not measured (crashed): {escape(', '.join(crashed))}</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_table(document: dict[str, Any]) -> str:
    """Return the Markdown table of every target in ``document``."""
    lines = ["| ratio (baseline measured in the same run) | measured | target | met |"]
    lines.append("|---|---|---|---|")
    for item in document.get("targets", []):
        op, bound = _bound(item)
        symbol = "\u2264" if op == "<=" else "\u2265"
        met = "yes" if item["met"] else "**no**"
        lines.append(
            f"| {label(item)} | **{float(item['value']):.2f}** | {symbol} {_fmt(bound)} | {met} |"
        )
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- benchmark-table:begin -->", "<!-- benchmark-table:end -->"


def update_markdown(text: str, document: dict[str, Any]) -> str:
    """Replace the generated block between the markers in ``text`` (unchanged if absent)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return text
    m = document.get("machine", {})
    disturbed, runs = disturbed_runs(document.get("benchmarks", {}))
    facts = (
        f"Measured in one {'quick' if document.get('quick') else 'full'} run on "
        f"{m.get('cpus', '?')} CPUs ({m.get('cpu', 'unknown CPU')}), Python "
        f"{m.get('python', '?')}, {m.get('platform', '?')}; 1-minute load average at the "
        f"start {m.get('load_average_1m', '?')}; page cache warm; {disturbed} of {runs} "
        "timed file runs were disturbed by other processes (after retries).\n"
    )
    block = f"{BEGIN}\n{facts}\n{render_table(document)}{END}"
    return text[:start] + block + text[end + len(END) :]


def write(
    document: dict[str, Any],
    svg: pathlib.Path,
    markdown: pathlib.Path | None = None,
) -> None:
    """Write the chart to ``svg`` and refresh the table in ``markdown`` (if given)."""
    svg.write_text(render_svg(document), encoding="utf-8")
    if markdown is not None and markdown.exists():
        text = markdown.read_text(encoding="utf-8")
        markdown.write_text(update_markdown(text, document), encoding="utf-8")


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    document = json.loads(pathlib.Path(argv[0]).read_text(encoding="utf-8"))
    write(document, pathlib.Path(argv[1]), pathlib.Path(argv[2]) if len(argv) == 3 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
