"""Helpers shared by the benchmarks: timing, targets, machine description, child processes.

Benchmarks are not tests: they compare against a baseline measured in the same run and
report ratios; they never fail because of an absolute time.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import pathlib
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def log(message: str) -> None:
    """Report progress on stderr; stdout carries only the JSON document."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Timing:
    """Wall-clock times of repeated runs of one operation.

    ``contended`` counts kept runs during which other processes used a noticeable share
    of the CPUs; ``cold`` counts kept runs that read from storage (the page cache was
    not warm). Such runs are retried, and kept only if every retry is disturbed too.
    Both are measured on Linux only.
    """

    runs: list[float] = dataclasses.field(default_factory=list)
    contended: int = 0
    cold: int = 0

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "best_s": round(self.best, 4),
            "median_s": round(self.median, 4),
            "repetitions": len(self.runs),
            "contended_runs": self.contended,
            "cold_cache_runs": self.cold,
        }


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Other processes' share of all CPUs above which a run counts as contended (on 2 CPUs,
#: a tenth of one core): a pipelined read needs both cores, so little disturbs it.
CONTENDED_SHARE = 0.05


def _cpu_ticks() -> tuple[int, int] | None:
    """Return (busy ticks of the whole machine, ticks of this process), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            own = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    busy = sum(values) - values[3] - values[4]  # all but idle and iowait
    return busy, sum(int(v) for v in own[11:15])  # utime, stime, cutime, cstime


def storage_read_bytes() -> int | None:
    """Return the bytes this process has read from storage (not the page cache)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


#: Storage reads above which a run counts as cold (some hosts evict idle page cache
#: within seconds, e.g. a DAMON "pageout" scheme).
COLD_READ_BYTES = 1024 * 1024


def foreign_share(before: tuple[int, int] | None, elapsed: float) -> float:
    """Return the share of all CPUs that other processes used since ``before``."""
    after = _cpu_ticks()
    if before is None or after is None or elapsed <= 0:
        return 0.0
    foreign = (after[0] - before[0]) - (after[1] - before[1])
    return max(0, foreign) / (elapsed * _CLOCK_TICKS * (os.cpu_count() or 1))


def measure(
    candidates: dict[str, Callable[[], object]],
    repeat: int,
    retries: int = 3,
    setup: Callable[[], object] | None = None,
) -> dict[str, Timing]:
    """Time each candidate ``repeat`` times, interleaved, after one untimed warm-up run each.

    The warm-up fills the page cache. Rounds interleave the candidates, in a different
    (seeded) order each round, so that a disturbance hits all of them alike. A run
    during which other processes used more than ``CONTENDED_SHARE`` of the CPUs, or
    which read more than ``COLD_READ_BYTES`` from storage, is retried up to ``retries``
    times. The result of each run is dropped after its clock stops, so freeing a large
    model is not charged to the operation. ``setup``, if given, runs before every run
    (warm-up included) outside the clock, e.g. to remove what the run before wrote.
    """
    for fn in candidates.values():
        if setup is not None:
            setup()
        fn()
    timings = {name: Timing() for name in candidates}
    order = list(candidates)
    shuffle = random.Random(0).shuffle
    for _ in range(repeat):
        shuffle(order)  # the run before can matter (freed memory, caches): vary it
        for name in order:
            fn = candidates[name]
            for attempt in range(retries + 1):
                if setup is not None:
                    setup()
                gc.collect()
                ticks, read_before = _cpu_ticks(), storage_read_bytes()
                start = time.perf_counter()
                result = fn()
                elapsed = time.perf_counter() - start
                del result
                read_after = storage_read_bytes()
                contended = foreign_share(ticks, elapsed) > CONTENDED_SHARE
                cold = (
                    read_before is not None
                    and read_after is not None
                    and (read_after - read_before > COLD_READ_BYTES)
                )
                if not (contended or cold):
                    break
                if attempt == retries:
                    timings[name].contended += contended
                    timings[name].cold += cold
            timings[name].runs.append(elapsed)
    return timings


def target(value: float, op: str, bound: float) -> dict[str, Any]:
    """Return a ratio and its target: ``{"value": 1.07, "target": "<= 1.15", "met": true}``."""
    met = value <= bound if op == "<=" else value >= bound
    return {"value": round(value, 3), "target": f"{op} {bound}", "met": met}


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Describe where the figures were measured."""
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def child_env() -> dict[str, str]:
    """Return an environment in which a child ``python`` imports the same clarity_resilience."""
    import clarity_resilience

    root = str(pathlib.Path(clarity_resilience.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
