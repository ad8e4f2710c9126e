"""Benchmark a fleet-wide breaker: RedisStorage against pybreaker's CircuitRedisStorage.

Run alone with ``python benchmarks/run.py --only fleet`` (needs ``redis-server``). One
throwaway redis-server on a free loopback TCP port serves every contender:

* closed path: ns per successful call of ``Breaker(storage=RedisStorage(url))`` (state
  cached for at most 0.5 s), ``pybreaker.CircuitBreaker`` on ``CircuitRedisStorage`` (a
  few round trips per call), and ``Breaker`` on ``CircuitRedisStorage`` (one exchange
  per call on the worker thread). Target: RedisStorage <= 0.5x pybreaker.
* event-loop stall with Redis down (SIGKILLed: connection refused) and silent (a
  listener that never answers): the longest gap of a 1 ms ticker while ``call_async``
  runs in a loop, and the slowest call. Target: stall < 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any

import pybreaker
import redis
from _common import log, target
from bench_breaker import call_loop, compare, paired_ratio, production_instrumentation, spread
from prometheus_client import CollectorRegistry

from clarity_resilience import Breaker, CircuitOpenError, RedisStorage


def trivial() -> None:
    return None


class _Server:
    def __init__(self, directory: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", directory]
        self.proc = subprocess.Popen(
            [binary, *args, "--save", "", "--appendonly", "no"], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "ready to accept connections" in line.lower():
                break

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def bench_closed(server: _Server, n: int, rounds: int) -> dict[str, Any]:
    url = f"redis://127.0.0.1:{server.port}"
    ours = Breaker("ours", storage=RedisStorage(url), registry=CollectorRegistry())
    client = redis.Redis(port=server.port, socket_timeout=0.1, socket_connect_timeout=0.1)
    pb_storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace="pb")
    pb = pybreaker.CircuitBreaker(name="pb", state_storage=pb_storage)
    wrapped_storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, client, namespace="wrapped"
    )
    wrapped = Breaker("wrapped", storage=wrapped_storage, registry=CollectorRegistry())
    log(f"fleet/closed: {rounds} rounds x {n} calls")
    per_call = compare(
        {
            "redis_storage": call_loop(ours.call, trivial),
            "pybreaker_circuit_redis_storage": call_loop(pb.call, trivial),
            "breaker_on_circuit_redis_storage": call_loop(wrapped.call, trivial),
        },
        n,
        rounds,
    )
    ratio, ratio_spread = paired_ratio(
        per_call["redis_storage"], per_call["pybreaker_circuit_redis_storage"]
    )
    return {
        "calls_per_round": n,
        "ns_per_call": {name: spread(values) for name, values in per_call.items()},
        "redis_storage_vs_pybreaker": target(ratio, "<=", 0.5),
        "redis_storage_vs_pybreaker_spread": ratio_spread,
    }


async def _stall(breaker: Breaker, seconds: float) -> dict[str, float]:
    gaps: list[float] = []
    calls: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def ok() -> None:
        return None

    task = asyncio.create_task(ticker())
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        with contextlib.suppress(CircuitOpenError):
            await breaker.call_async(ok)
        calls.append(time.perf_counter() - started)
        await asyncio.sleep(0)
    done.set()
    await task
    return {
        "max_loop_stall_ms": round(max(gaps) * 1000, 2),
        "max_call_ms": round(max(calls) * 1000, 2),
        "calls": len(calls),
    }


def bench_down(server: _Server, seconds: float) -> dict[str, Any]:
    url = f"redis://127.0.0.1:{server.port}"
    refused = Breaker("down", storage=RedisStorage(url), registry=CollectorRegistry())
    server.kill()
    log(f"fleet/down: {seconds} s of call_async with Redis SIGKILLed")
    killed = asyncio.run(_stall(refused, seconds))
    # A listener that accepts and never answers: every exchange runs into the timeout.
    hole = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        hole.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(hole.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    silent_url = f"redis://127.0.0.1:{hole.getsockname()[1]}"
    silent = Breaker("silent", storage=RedisStorage(silent_url), registry=CollectorRegistry())
    log(f"fleet/silent: {seconds} s of call_async with Redis never answering")
    unanswered = asyncio.run(_stall(silent, seconds))
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    hole.close()
    return {
        "redis_killed": killed,
        "redis_silent": unanswered,
        "stall_under_50ms": target(
            max(killed["max_loop_stall_ms"], unanswered["max_loop_stall_ms"]), "<=", 50.0
        ),
    }


def run(quick: bool) -> dict[str, Any]:
    """Run the closed-path comparison and the Redis-down stall; return figures and targets."""
    rounds = 3 if quick else 7
    calls = 2_000 if quick else 10_000
    with tempfile.TemporaryDirectory() as directory, production_instrumentation():
        server = _Server(directory)
        try:
            closed = bench_closed(server, calls, rounds)
            down = bench_down(server, 2.0 if quick else 5.0)
        finally:
            server.kill()
    return {
        "method": "one redis-server on loopback TCP; closed: ns per successful call, "
        "medians over rounds alternating the contenders; down: the longest gap of a 1 ms "
        "asyncio ticker while call_async runs in a loop (default RedisStorage settings: "
        "timeout 0.1 s, max_staleness 0.5 s)",
        "closed": closed,
        "down": down,
    }
