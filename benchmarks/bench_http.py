"""The 503 path over real HTTP, and ModelGuard.predict overhead.

1. Requests per second of the 503 problem path (breaker open) against a trivial 200
   endpoint on the same FastAPI app and uvicorn server, driven by Debian's ``wrk`` (a
   separate process; the async httpx client is the fallback). Target: >= 0.9x.
2. ``ModelGuard.predict(fn, x)`` against calling ``fn(model, x)`` directly, in process.
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
from _common import child_env, log, target
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr
from clarity_resilience.instrumentation import get_on_event_hooks, set_on_event_hooks

APP = pathlib.Path(__file__).with_name("_http_app.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _server() -> Iterator[str]:
    port = _free_port()
    # The parent owns the model's directory: a server stopped by SIGTERM runs no atexit.
    workdir = tempfile.TemporaryDirectory(prefix="clarity-bench-")
    proc = subprocess.Popen([sys.executable, str(APP), str(port), workdir.name], env=child_env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
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
        workdir.cleanup()


def _wrk(url: str, seconds: int, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output: {out}")
    return float(match.group(1))


def _httpx(url: str, seconds: int, connections: int) -> float:
    import asyncio

    async def drive() -> float:
        done = 0
        stop = time.perf_counter() + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await client.get(url)
                done += 1

        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            start = time.perf_counter()
            await asyncio.gather(*(worker(client) for _ in range(connections)))
            return done / (time.perf_counter() - start)

    return asyncio.run(drive())


def _http(quick: bool) -> dict[str, Any]:
    seconds, rounds, connections = (2, 2, 16) if quick else (5, 3, 32)
    tool = "wrk" if shutil.which("wrk") else "httpx"
    drive = _wrk if tool == "wrk" else _httpx
    ok: list[float] = []
    problem: list[float] = []
    with _server() as url:
        status = httpx.get(f"{url}/predict", timeout=5)
        assert status.status_code == 503, status.status_code
        for i in range(rounds):  # interleaved, so drift hits both alike
            log(f"http: round {i + 1}/{rounds} with {tool}")
            ok.append(drive(f"{url}/ok", seconds, connections))
            problem.append(drive(f"{url}/predict", seconds, connections))
    best_ok, best_problem = max(ok), max(problem)
    return {
        "load_generator": f"{tool}, 1 thread, {connections} connections, {seconds}s x {rounds}",
        "trivial_200_rps": [round(r) for r in ok],
        "breaker_open_503_rps": [round(r) for r in problem],
        "ratio_503_to_200": target(best_problem / best_ok, ">=", 0.9),
    }


def _predict_overhead(quick: bool) -> dict[str, Any]:
    previous = get_on_event_hooks()
    set_on_event_hooks([])  # stdout carries only the JSON document
    registry = CollectorRegistry()
    with tempfile.TemporaryDirectory() as tmp:
        data = save({"w": np.ones((16, 16), np.float32)})
        path = pathlib.Path(tmp, "m.safetensors")
        path.write_bytes(data)
        guard = cr.ModelGuard(
            "bench", path=path, sha256=hashlib.sha256(data).hexdigest(),
            loader=cr.loaders.safetensors, registry=registry,
        )  # fmt: skip
        guard.load()
    model = guard.model
    x = np.ones(16, np.float32)

    def fn(m: dict[str, np.ndarray], v: np.ndarray) -> float:
        return float((m["w"] @ v)[0])

    number = 20_000 if quick else 100_000
    results: dict[str, Any] = {}
    try:
        for label, hooks in (("instrumentation_off", []), ("prometheus_only", None)):
            if hooks is None:
                from clarity_resilience.instrumentation import PrometheusOnEventHook

                set_on_event_hooks([PrometheusOnEventHook])
            else:
                set_on_event_hooks(hooks)
            direct = min(timeit.repeat(lambda: fn(model, x), number=number, repeat=5)) / number
            guarded = (
                min(timeit.repeat(lambda: guard.predict(fn, x), number=number, repeat=5)) / number
            )
            results[label] = {
                "direct_ns": round(direct * 1e9),
                "guarded_ns": round(guarded * 1e9),
                "overhead_ns": round((guarded - direct) * 1e9),
                "ratio": round(guarded / direct, 2),
            }
    finally:
        set_on_event_hooks(previous)
    return results


def run(quick: bool) -> dict[str, Any]:
    """Run both measurements."""
    return {"http": _http(quick), "predict_overhead": _predict_overhead(quick)}
