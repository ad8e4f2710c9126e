"""Run the benchmarks and print one JSON document of figures, ratios and targets.

Usage::

    python benchmarks/run.py [--quick] [--only integrity,breaker] [--docs | --no-docs]

Every ``benchmarks/bench_<name>.py`` module exposes ``run(quick: bool) -> dict``. A
ratio with a target is reported as ``{"value": 1.07, "target": "<= 1.15", "met": true}``
and collected under ``"targets"``. Benchmarks are not tests: the exit status is 0 even
when a target is missed (it is 1 only if a benchmark crashed).

A full run of every benchmark also writes the document to ``docs/performance.json``,
draws its ratios into ``docs/performance.svg`` and refreshes the generated table in
``docs/performance.md`` (``chart.py``), so the published figures are always those of
one run. ``--docs`` forces that for a partial or quick run, ``--no-docs`` skips it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import time
import traceback
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for _common and the bench_* modules (even with PYTHONSAFEPATH)

try:
    import clarity_resilience  # noqa: F401 - the installed package, as under `nox -s bench`
except ImportError:  # a plain checkout: benchmark the source tree
    sys.path.insert(1, str(HERE.parent))

import chart  # noqa: E402
from _common import log, machine  # noqa: E402


def discover() -> list[str]:
    """Return the benchmark names, from ``bench_<name>.py`` next to this file."""
    return sorted(path.stem.removeprefix("bench_") for path in HERE.glob("bench_*.py"))


def collect_targets(name: str, node: Any, path: str = "") -> list[dict[str, Any]]:
    """Find every ``{"target": ..., "met": ...}`` in a benchmark's result."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "target" in node and "met" in node:
            found.append({"benchmark": name, "name": path, **node})
        for key, value in node.items():
            found.extend(collect_targets(name, value, f"{path}.{key}" if path else key))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repetitions")
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument(
        "--docs", action="store_true", default=None, help="write docs/performance.* anyway"
    )
    docs.add_argument(
        "--no-docs", dest="docs", action="store_false", help="do not write docs/performance.*"
    )
    args = parser.parse_args(argv)

    available = discover()
    selected = available if not args.only else [n.strip() for n in args.only.split(",") if n]
    unknown = sorted(set(selected) - set(available))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {available}")

    results: dict[str, Any] = {}
    crashed = False
    for name in selected:
        log(f"{name}: starting ({'quick' if args.quick else 'full'})")
        start = time.perf_counter()
        try:
            # Imported here: one benchmark's missing package must not stop the others.
            module = importlib.import_module(f"bench_{name}")
            results[name] = module.run(args.quick)
        except Exception:  # noqa: BLE001 - reported in the document, other benchmarks still run
            crashed = True
            results[name] = {"error": traceback.format_exc()}
        log(f"{name}: done in {time.perf_counter() - start:.1f}s")

    targets = [t for name, result in results.items() for t in collect_targets(name, result)]
    document = {
        "machine": machine(),
        "quick": args.quick,
        "benchmarks": results,
        "targets": targets,
        "all_targets_met": all(t["met"] for t in targets),
    }
    print(json.dumps(document, indent=2))
    full_run = not args.quick and selected == available
    if args.docs or (args.docs is None and full_run):
        write_docs(document)
    return 1 if crashed else 0


def write_docs(document: dict[str, Any]) -> None:
    """Save the document next to the docs, with its chart and table drawn from it."""
    docs = HERE.parent / "docs"
    (docs / "performance.json").write_text(json.dumps(document, indent=2) + "\n")
    chart.write(document, docs / "performance.svg", docs / "performance.md")
    log(f"wrote {docs / 'performance.json'}, performance.svg and the table in performance.md")


if __name__ == "__main__":
    sys.exit(main())
