"""Breaker benchmark: what our facade costs over calling pybreaker directly.

Every figure is measured with instrumentation ON, as in production: the default hooks
(Prometheus into a fresh ``CollectorRegistry`` passed as ``registry=``, and structlog
configured like a service: level filter INFO, ISO timestamps, JSON lines written to
``os.devnull``). structlog and the hooks are restored afterwards.

(a) closed: per-call time of ``Breaker.call(trivial)`` against
    ``pybreaker.CircuitBreaker.call(trivial)``, and both net of the bare ``trivial()``
    call. Target: ratio <= 1.0.
(b) open: per-call time of a rejection (``CircuitOpenError``, which reaches every hook:
    a counter increment, and the sampled JSON warning line; the ``CallRejected`` object is
    built only for a hook that needs it) against pybreaker's ``CircuitBreakerError``
    (open, timeout not elapsed). Target: <= 1.0.
    Also reported: that JSON line alone, logged straight through a bound logger (the
    floor of the audit promise under this configuration), and our rejection net of it.
(c) async: ``await Breaker.call_async(trivial_coroutine)`` against pybreaker's ``call``
    on the sync function (pybreaker has no usable asyncio support). Reported, no target.
(d) threads: 16 threads each doing N calls of a function that blocks 2 ms
    (``time.sleep(0.002)``, the simulated I/O) through each breaker; calls/s.
    Target: ours >= 10 x pybreaker (which holds its lock while the function runs).

Method for (a)-(c): one untimed warm-up round, then R rounds; each round times a loop of
N calls of every contender (``time.perf_counter_ns``), in an order that alternates
between rounds, with the garbage collector disabled during each timed loop (the same
for every contender) and a ``gc.collect()`` before it. Figures are medians over rounds
(min and max reported as the spread); a ratio is the median of the per-round ratios,
so both sides of a ratio were measured next to each other. For (d) the figure is the
median of R runs of the whole thread pool, each run started behind a barrier.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pybreaker
import structlog
from _common import log, target
from prometheus_client import CollectorRegistry

from clarity_resilience import Breaker, CircuitOpenError, instrumentation

THREADS = 16
BLOCKING_SECONDS = 0.002

Loop = Callable[[int], int]  # runs n calls, returns elapsed nanoseconds


def trivial() -> None:
    return None


async def trivial_coroutine() -> None:
    return None


def blocking_io() -> None:
    time.sleep(BLOCKING_SECONDS)  # the simulated I/O: this is the workload


@contextlib.contextmanager
def production_instrumentation() -> Iterator[None]:
    """Turn on the default hooks and configure structlog like a service logging JSON."""
    previous_hooks = instrumentation.get_on_event_hooks()
    with open(os.devnull, "w") as devnull:
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.WriteLoggerFactory(file=devnull),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.processors.JSONRenderer(),
            ],
        )
        instrumentation.set_on_event_hooks(None)  # the defaults: Prometheus + structlog
        try:
            yield
        finally:
            structlog.reset_defaults()
            instrumentation.set_on_event_hooks(previous_hooks)


@contextlib.contextmanager
def gc_disabled() -> Iterator[None]:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# -- timed loops (one per contender; each returns the elapsed ns of n calls) ---------------


def bare_loop(fn: Callable[[], object]) -> Loop:
    def loop(n: int) -> int:
        with gc_disabled():
            start = time.perf_counter_ns()
            for _ in itertools.repeat(None, n):
                fn()
            return time.perf_counter_ns() - start

    return loop


def call_loop(call: Callable[[Callable[[], object]], object], fn: Callable[[], object]) -> Loop:
    def loop(n: int) -> int:
        with gc_disabled():
            start = time.perf_counter_ns()
            for _ in itertools.repeat(None, n):
                call(fn)
            return time.perf_counter_ns() - start

    return loop


def rejection_loop(
    call: Callable[[Callable[[], object]], object],
    fn: Callable[[], object],
    error: type[BaseException],
) -> Loop:
    def loop(n: int) -> int:
        with gc_disabled():
            start = time.perf_counter_ns()
            for _ in itertools.repeat(None, n):
                try:
                    call(fn)
                except error:
                    pass
                else:
                    raise AssertionError("the open breaker admitted a call")
            return time.perf_counter_ns() - start

    return loop


def async_bare_loop(fn: Callable[[], Awaitable[object]]) -> Loop:
    """Time ``await fn()`` n times inside one running event loop."""

    async def body(n: int) -> int:
        with gc_disabled():
            start = time.perf_counter_ns()
            for _ in itertools.repeat(None, n):
                await fn()
            return time.perf_counter_ns() - start

    return lambda n: asyncio.run(body(n))


def async_call_loop(
    call: Callable[[Callable[[], Awaitable[object]]], Awaitable[object]],
    fn: Callable[[], Awaitable[object]],
) -> Loop:
    """Time ``await call(fn)`` n times inside one running event loop."""

    async def body(n: int) -> int:
        with gc_disabled():
            start = time.perf_counter_ns()
            for _ in itertools.repeat(None, n):
                await call(fn)
            return time.perf_counter_ns() - start

    return lambda n: asyncio.run(body(n))


def compare(loops: dict[str, Loop], n: int, rounds: int) -> dict[str, list[float]]:
    """Return ns per call of each loop, per round, after one untimed warm-up round."""
    names = list(loops)
    for name in names:
        loops[name](max(1, n // 10))
    per_call: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        order = names if i % 2 == 0 else names[::-1]  # alternate to cancel drift
        for name in order:
            per_call[name].append(loops[name](n) / n)
    return per_call


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def paired_ratio(
    numerator: list[float], denominator: list[float]
) -> tuple[float, dict[str, float]]:
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return statistics.median(ratios), {
        "median": round(statistics.median(ratios), 3),
        "min": round(min(ratios), 3),
        "max": round(max(ratios), 3),
    }


def net_of(values: list[float], bare: list[float]) -> list[float]:
    return [v - b for v, b in zip(values, bare, strict=True)]


# -- the four measurements ------------------------------------------------------------------


def bench_closed(n: int, rounds: int) -> dict[str, Any]:
    breaker = Breaker("bench-closed", registry=CollectorRegistry())
    cb = pybreaker.CircuitBreaker(name="bench-closed")
    log(f"breaker/closed: {rounds} rounds x {n} calls")
    per_call = compare(
        {
            "bare": bare_loop(trivial),
            "ours": call_loop(breaker.call, trivial),
            "pybreaker": call_loop(cb.call, trivial),
        },
        n,
        rounds,
    )
    assert breaker.state == "closed"
    assert cb.current_state == "closed"
    ratio, ratio_spread = paired_ratio(per_call["ours"], per_call["pybreaker"])
    net_ours = net_of(per_call["ours"], per_call["bare"])
    net_pybreaker = net_of(per_call["pybreaker"], per_call["bare"])
    return {
        "calls_per_round": n,
        "ns_per_call": {name: spread(values) for name, values in per_call.items()},
        "overhead_ns_per_call_net_of_bare_call": {
            "ours": spread(net_ours),
            "pybreaker": spread(net_pybreaker),
        },
        "ours_vs_pybreaker": target(ratio, "<=", 1.0),
        "ours_vs_pybreaker_spread": ratio_spread,
        "overhead_ratio_net_of_bare_call": round(
            statistics.median(net_ours) / statistics.median(net_pybreaker), 3
        ),
    }


def bench_open(n: int, rounds: int) -> dict[str, Any]:
    registry = CollectorRegistry()
    # An hour-long timeout: the breakers stay open for the whole measurement.
    breaker = Breaker("bench-open", fail_max=1, reset_timeout=3600, registry=registry)
    with contextlib.suppress(RuntimeError):
        breaker.call(_raise_runtime_error)
    cb = pybreaker.CircuitBreaker(name="bench-open", fail_max=1, reset_timeout=3600)
    with contextlib.suppress(pybreaker.CircuitBreakerError):
        cb.call(_raise_runtime_error)
    assert breaker.state == "open"
    assert cb.current_state == "open"
    # The floor of the audit promise: the same JSON warning line, logged directly through
    # an already assembled bound logger (the cheapest way structlog offers to emit it).
    audit_logger = structlog.get_logger("clarity_resilience").bind()

    def audit_line() -> None:
        audit_logger.warning(
            "clarity_resilience.call_rejected",
            breaker="bench-open",
            state="open",
            retry_after=3599.123456789,  # a float like the real one
        )

    log(f"breaker/open: {rounds} rounds x {n} rejections")
    per_call = compare(
        {
            "ours": rejection_loop(breaker.call, trivial, CircuitOpenError),
            "pybreaker": rejection_loop(cb.call, trivial, pybreaker.CircuitBreakerError),
            "audit_line_alone": bare_loop(audit_line),
        },
        n,
        rounds,
    )
    rejections = registry.get_sample_value(
        "circuit_breaker_rejections_total", {"breaker": "bench-open"}
    )
    expected = max(1, n // 10) + n * rounds
    assert rejections == expected, (rejections, expected)  # one event per rejection
    ratio, ratio_spread = paired_ratio(per_call["ours"], per_call["pybreaker"])
    _, audit_line_ratio = paired_ratio(per_call["audit_line_alone"], per_call["pybreaker"])
    net_of_audit = net_of(per_call["ours"], per_call["audit_line_alone"])
    _, net_of_audit_ratio = paired_ratio(net_of_audit, per_call["pybreaker"])
    return {
        "rejections_per_round": n,
        "ns_per_rejection": {name: spread(values) for name, values in per_call.items()},
        "rejection_events_recorded": int(rejections),
        "ours_vs_pybreaker": target(ratio, "<=", 1.0),
        "ours_vs_pybreaker_spread": ratio_spread,
        "audit_line_alone_vs_pybreaker": audit_line_ratio,
        "ours_net_of_audit_line_ns": spread(net_of_audit),
        "ours_net_of_audit_line_vs_pybreaker": net_of_audit_ratio,
        "note": "audit_line_alone is the JSON warning line that every rejection must log, "
        "emitted directly through a pre-assembled structlog bound logger: the floor of the "
        "audit promise under this structlog configuration",
    }


def _raise_runtime_error() -> None:
    raise RuntimeError("bench: trip the breaker")


def bench_async(n: int, rounds: int) -> dict[str, Any]:
    breaker = Breaker("bench-async", registry=CollectorRegistry())
    cb = pybreaker.CircuitBreaker(name="bench-async")
    log(f"breaker/async: {rounds} rounds x {n} awaits")
    per_call = compare(
        {
            "bare_sync": bare_loop(trivial),
            "bare_await": async_bare_loop(trivial_coroutine),
            "ours_call_async": async_call_loop(breaker.call_async, trivial_coroutine),
            "pybreaker_call_sync": call_loop(cb.call, trivial),
        },
        n,
        rounds,
    )
    ratio, ratio_spread = paired_ratio(
        per_call["ours_call_async"], per_call["pybreaker_call_sync"]
    )
    net_ours = net_of(per_call["ours_call_async"], per_call["bare_await"])
    net_pybreaker = net_of(per_call["pybreaker_call_sync"], per_call["bare_sync"])
    return {
        "calls_per_round": n,
        "ns_per_call": {name: spread(values) for name, values in per_call.items()},
        "overhead_ns_per_call_net_of_bare_call": {
            "ours_call_async_vs_bare_await": spread(net_ours),
            "pybreaker_call_vs_bare_call": spread(net_pybreaker),
        },
        "ours_async_vs_pybreaker_sync": round(ratio, 3),
        "ours_async_vs_pybreaker_sync_spread": ratio_spread,
        "note": "ours includes creating and awaiting the coroutine (bare_await is that "
        "alone); pybreaker's figure is a plain sync call",
    }


def _threaded_run(call: Callable[[Callable[[], None]], object], calls_per_thread: int) -> float:
    """Return the wall-clock seconds for THREADS threads to do their calls, barrier-started."""
    barrier = threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            for _ in range(calls_per_thread):
                call(blocking_io)
        except BaseException as e:  # noqa: BLE001 - reported after the join
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for t in threads:
        t.join()
    elapsed = time.perf_counter_ns() - start
    if errors:
        raise errors[0]
    return elapsed / 1e9


def bench_threads(calls_per_thread: int, rounds: int) -> dict[str, Any]:
    breaker = Breaker("bench-threads", registry=CollectorRegistry())
    cb = pybreaker.CircuitBreaker(name="bench-threads")
    total = THREADS * calls_per_thread
    log(f"breaker/threads: {rounds} rounds x {THREADS} threads x {calls_per_thread} calls")
    contenders: dict[str, Callable[[Callable[[], None]], object]] = {
        "ours": breaker.call,
        "pybreaker": cb.call,
    }
    _threaded_run(breaker.call, 2)  # warm-up: threads, sleep, the hot paths
    _threaded_run(cb.call, 2)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(rounds):
        order = list(contenders) if i % 2 == 0 else list(contenders)[::-1]
        for name in order:
            rates[name].append(total / _threaded_run(contenders[name], calls_per_thread))
    ratio, ratio_spread = paired_ratio(rates["ours"], rates["pybreaker"])
    return {
        "threads": THREADS,
        "calls_per_thread": calls_per_thread,
        "blocking_seconds_per_call": BLOCKING_SECONDS,
        "ideal_calls_per_s": round(THREADS / BLOCKING_SECONDS),
        "calls_per_s": {name: spread(values) for name, values in rates.items()},
        "ours_vs_pybreaker": target(ratio, ">=", 10.0),
        "ours_vs_pybreaker_spread": ratio_spread,
    }


def run(quick: bool) -> dict[str, Any]:
    """Run (a) closed, (b) open, (c) async and (d) threads; return figures and targets."""
    rounds = 5 if quick else 9
    calls = 20_000 if quick else 200_000
    rejections = 5_000 if quick else 40_000
    with production_instrumentation():
        return {
            "method": "instrumentation on (Prometheus into a fresh registry, structlog JSON "
            "to /dev/null at INFO); one warm-up round, then rounds alternating the order of "
            "the contenders; perf_counter_ns around loops of n calls with gc disabled (for "
            "every contender); medians over rounds, min/max as spread; ratios are medians "
            "of per-round ratios",
            "rounds": rounds,
            "closed": bench_closed(calls, rounds),
            "open": bench_open(rejections, rounds),
            "async": bench_async(calls // 2, rounds),
            "threads": bench_threads(10 if quick else 25, 3 if quick else 5),
        }
