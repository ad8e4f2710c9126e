"""Overload control: the concurrency limiter's cost, and the shed path over real HTTP.

1. Closed path: ``ModelGuard.predict(fn, x)`` on a guard with ``max_concurrency=4``
   (always a free slot: one caller) against the same call on a guard without a limit.
   Rounds alternate the order; the figure is the median of per-round ratios.
   Target: <= 1.2. Also reported, no target: a guard with ``timeout=`` (each call hops
   to a worker thread and back).
2. Shed path: requests per second of ``GET /predict`` answered 503 ``overloaded`` (the
   only slot held, no queue) against a trivial 200 endpoint of the same FastAPI app and
   uvicorn server (see ``_overload_app.py``), driven by ``wrk`` or the async httpx
   client. Target: >= 0.9x.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
from _common import child_env, log, target
from bench_http import _free_port, _httpx, _wrk
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr
from clarity_resilience.instrumentation import (
    PrometheusOnEventHook,
    get_on_event_hooks,
    set_on_event_hooks,
)

APP = pathlib.Path(__file__).with_name("_overload_app.py")


def _guards(tmp: str, **variants: dict[str, Any]) -> dict[str, cr.ModelGuard[Any]]:
    data = save({"w": np.ones((16, 16), np.float32)})
    path = pathlib.Path(tmp, "m.safetensors")
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    guards = {}
    for label, options in variants.items():
        guard = cr.ModelGuard(
            label, path=path, sha256=sha, loader=cr.loaders.safetensors,
            registry=CollectorRegistry(), **options,
        )  # fmt: skip
        guard.load()
        guards[label] = guard
    return guards


def _loop(call: Callable[[], object], number: int) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(number):
            call()
        return (time.perf_counter_ns() - start) / number
    finally:
        gc.enable()


def _closed_path(quick: bool) -> dict[str, Any]:
    previous = get_on_event_hooks()
    set_on_event_hooks([PrometheusOnEventHook])  # metrics on, stdout kept for the JSON
    number, rounds = (5_000, 5) if quick else (20_000, 9)
    x = np.ones(16, np.float32)

    def fn(m: dict[str, np.ndarray], v: np.ndarray) -> float:
        return float((m["w"] @ v)[0])

    try:
        with tempfile.TemporaryDirectory() as tmp:
            guards = _guards(
                tmp, plain={}, limited={"max_concurrency": 4}, deadline={"timeout": 5.0}
            )
        calls = {label: (lambda g=g: g.predict(fn, x)) for label, g in guards.items()}
        for call in calls.values():
            _loop(call, number // 10)  # warm-up
        times: dict[str, list[float]] = {label: [] for label in calls}
        ratios: list[float] = []
        deadline_ratios: list[float] = []
        for i in range(rounds):
            order = list(calls) if i % 2 == 0 else list(reversed(calls))
            this = {label: _loop(calls[label], number) for label in order}
            for label, ns in this.items():
                times[label].append(ns)
            ratios.append(this["limited"] / this["plain"])
            deadline_ratios.append(this["deadline"] / this["plain"])
    finally:
        set_on_event_hooks(previous)
    return {
        "per_call_ns_median": {k: round(statistics.median(v)) for k, v in times.items()},
        "limited_to_plain": target(statistics.median(ratios), "<=", 1.2),
        "deadline_to_plain": round(statistics.median(deadline_ratios), 2),
    }


@contextlib.contextmanager
def _server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(APP), str(port)], env=child_env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the benchmark server did not start") from None
                time.sleep(0.05)  # polling a child process that is starting up
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _shed_path(quick: bool) -> dict[str, Any]:
    seconds, rounds, connections = (2, 2, 16) if quick else (5, 3, 32)
    tool = "wrk" if shutil.which("wrk") else "httpx"
    drive = _wrk if tool == "wrk" else _httpx
    ok: list[float] = []
    shed: list[float] = []
    with _server() as url:
        response = httpx.get(f"{url}/predict", timeout=5)
        assert response.status_code == 503, response.status_code
        assert response.json()["reason"] == "overloaded", response.text
        for i in range(rounds):  # interleaved, so drift hits both alike
            log(f"overload: shed round {i + 1}/{rounds} with {tool}")
            ok.append(drive(f"{url}/ok", seconds, connections))
            shed.append(drive(f"{url}/predict", seconds, connections))
    return {
        "load_generator": f"{tool}, 1 thread, {connections} connections, {seconds}s x {rounds}",
        "trivial_200_rps": [round(r) for r in ok],
        "overloaded_503_rps": [round(r) for r in shed],
        "ratio_503_to_200": target(max(shed) / max(ok), ">=", 0.9),
    }


def run(quick: bool) -> dict[str, Any]:
    """Run both measurements."""
    return {"closed_path": _closed_path(quick), "shed_path": _shed_path(quick)}
