"""Tests for ModelGuard's deadlines, concurrency limit and in-flight gauge (issue 12)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import structlog
import time_machine
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr
from clarity_resilience._workers import DaemonPool
from clarity_resilience.degradation import problem_for, problem_type
from clarity_resilience.instrumentation import (
    Event,
    PredictionFailed,
    StructlogOnEventHook,
    get_on_event_hooks,
    set_on_event_hooks,
)

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
DEADLINE = 0.2
# How late past its deadline a caller may be released on a busy 2-core machine.
MARGIN = 1.0
# Bound on waiting for a worker thread to finish once its work is released.
SETTLE = 10.0

Model = dict[str, np.ndarray]


@pytest.fixture
def model_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, str]:
    """Write a small real safetensors model; return its path and digest."""
    data = save({"w": np.ones((2, 2), np.float32)})
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture
def make(
    model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
) -> Callable[..., cr.ModelGuard[Model]]:
    """Return a factory of loaded guards over the model file."""

    def _make(**kwargs: Any) -> cr.ModelGuard[Model]:
        path, sha = model_file
        kwargs.setdefault("breaker", cr.Breaker("m", registry=registry))
        guard = cr.ModelGuard(
            "m", path=path, sha256=sha, loader=cr.loaders.safetensors, registry=registry, **kwargs
        )
        guard.load()
        return guard

    return _make


class Hung:
    """A prediction function that blocks until released, counting calls and endings."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.calls = 0
        self.ended = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, model: Model, x: float = 1.0) -> float:
        with self._lock:
            self.calls += 1
        self.started.release()
        try:
            assert self.release.wait(SETTLE * 3)
            return x
        finally:
            self.ended.set()


def in_flight(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("prediction_in_flight", {"model": "m"})


def failures(registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value("prediction_failure_total", {"model": "m", "reason": reason})


def wait_for(predicate: Callable[[], bool]) -> None:
    """Wait (bounded) for a worker thread to publish its end; fail if it never does."""
    limit = time.monotonic() + SETTLE
    while not predicate():
        assert time.monotonic() < limit, "timed out waiting for the stuck work to end"
        time.sleep(0.01)  # sleep-ok: polling for a condition, bounded by a deadline


class TestDeadline:
    def test_caller_released_at_deadline(
        self, make: Callable[..., cr.ModelGuard[Model]], registry: CollectorRegistry
    ) -> None:
        """A hung sync prediction raises PredictionTimeoutError soon after its deadline."""
        guard = make(timeout=DEADLINE)
        hung = Hung()
        start = time.monotonic()
        with pytest.raises(cr.PredictionTimeoutError) as info:
            guard.predict(hung)
        elapsed = time.monotonic() - start
        assert DEADLINE <= elapsed < DEADLINE + MARGIN
        assert info.value.timeout == DEADLINE
        assert info.value.reason == cr.Reason.TIMEOUT
        assert failures(registry, "timeout") == 1
        assert in_flight(registry) == 1  # abandoned, still running
        hung.release.set()
        wait_for(lambda: in_flight(registry) == 0)

    def test_five_hung_calls_open_the_breaker(
        self, make: Callable[..., cr.ModelGuard[Model]]
    ) -> None:
        """Timeouts are breaker failures: the sixth call is rejected without running."""
        guard = make(timeout=DEADLINE)
        hung = Hung()
        try:
            for _ in range(5):
                with pytest.raises(cr.PredictionTimeoutError):
                    guard.predict(hung)
            assert guard.breaker.state == "open"
            with pytest.raises(cr.CircuitOpenError):
                guard.predict(hung)
            assert hung.calls == 5
        finally:
            hung.release.set()

    def test_with_timeout_never_collides_with_fn_keywords(
        self, make: Callable[..., cr.ModelGuard[Model]]
    ) -> None:
        """A per-call deadline leaves fn's own ``timeout`` keyword alone, and applies."""
        guard = make()

        def fn(model: Model, *, timeout: float) -> float:
            return timeout

        assert guard.with_timeout(5).predict(fn, timeout=123.0) == 123.0
        hung = Hung()
        try:
            with pytest.raises(cr.PredictionTimeoutError) as info:
                guard.with_timeout(DEADLINE).predict(hung)
            assert info.value.timeout == DEADLINE
        finally:
            hung.release.set()

    @pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
    def test_bad_timeouts_are_refused(
        self, make: Callable[..., cr.ModelGuard[Model]], bad: float
    ) -> None:
        """A deadline must be a positive, finite number of seconds."""
        guard = make()
        with pytest.raises(ValueError, match="timeout"):
            guard.with_timeout(bad)
        with pytest.raises(ValueError, match="timeout"):
            make(timeout=bad)

    def test_abandoned_calls_are_bounded(
        self, make: Callable[..., cr.ModelGuard[Model]], registry: CollectorRegistry
    ) -> None:
        """Past ``max_abandoned`` stuck calls, new ones are shed (not breaker failures)."""
        guard = make(timeout=DEADLINE, max_abandoned=1)
        hung = Hung()
        try:
            with pytest.raises(cr.PredictionTimeoutError):
                guard.predict(hung)
            with pytest.raises(cr.OverloadedError):
                guard.predict(hung)
            assert hung.calls == 1
            assert guard.breaker.fail_counter == 1
            assert failures(registry, "overloaded") == 1
        finally:
            hung.release.set()
        wait_for(lambda: in_flight(registry) == 0)
        assert guard.predict(lambda model: 7) == 7

    def test_async_plain_fn_releases_the_awaiting_caller(
        self, make: Callable[..., cr.ModelGuard[Model]], registry: CollectorRegistry
    ) -> None:
        """predict_async of a hung plain function returns control at the deadline."""
        guard = make(timeout=DEADLINE)
        hung = Hung()

        async def main() -> float:
            start = time.monotonic()
            with pytest.raises(cr.PredictionTimeoutError):
                await guard.predict_async(hung)
            return time.monotonic() - start

        try:
            elapsed = asyncio.run(main())
            assert DEADLINE <= elapsed < DEADLINE + MARGIN
            assert in_flight(registry) == 1
        finally:
            hung.release.set()
        wait_for(lambda: in_flight(registry) == 0)

    def test_async_coroutine_is_cancelled_at_deadline(
        self, make: Callable[..., cr.ModelGuard[Model]], registry: CollectorRegistry
    ) -> None:
        """An ``async def`` fn is cancelled at the deadline: nothing runs on."""
        guard = make()
        cancelled = []

        async def stuck(model: Model) -> None:
            try:
                await asyncio.sleep(3600)  # sleep-ok: hangs on purpose
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        async def main() -> None:
            with pytest.raises(cr.PredictionTimeoutError):
                await guard.with_timeout(DEADLINE).predict_async(stuck)

        asyncio.run(main())
        assert cancelled == [True]
        assert in_flight(registry) == 0
        assert guard.breaker.fail_counter == 1

    def test_fast_calls_pass_under_a_deadline(
        self, make: Callable[..., cr.ModelGuard[Model]], registry: CollectorRegistry
    ) -> None:
        """Calls within the deadline return their result, sync and async."""
        guard = make(timeout=5.0)

        async def double(model: Model, x: float) -> float:
            return 2 * x

        assert guard.predict(lambda model, x: x + 1, 1) == 2
        assert asyncio.run(guard.predict_async(lambda model, x: x + 2, 1)) == 3
        assert asyncio.run(guard.predict_async(double, 4)) == 8
        assert registry.get_sample_value("prediction_success_total", {"model": "m"}) == 3
        assert in_flight(registry) == 0


class TestConcurrencyLimit:
    def test_full_limit_sheds_without_counting_a_failure(
        self, make: Callable[..., cr.ModelGuard[Model]], registry: CollectorRegistry
    ) -> None:
        """With every slot busy and no queue room, a call is shed at once."""
        guard = make(max_concurrency=1, overloaded_retry_after=2.0)
        hung = Hung()
        worker = threading.Thread(target=guard.predict, args=(hung,))
        worker.start()
        try:
            assert hung.started.acquire(timeout=SETTLE)
            assert in_flight(registry) == 1
            with pytest.raises(cr.OverloadedError) as info:
                guard.predict(hung)
            assert info.value.retry_after == 2.0
            assert hung.calls == 1
            assert guard.breaker.fail_counter == 0
            assert failures(registry, "overloaded") == 1
        finally:
            hung.release.set()
            worker.join(SETTLE)
        assert in_flight(registry) == 0
        assert guard.predict(lambda model: 1) == 1

    def test_queued_call_runs_when_a_slot_frees(
        self, make: Callable[..., cr.ModelGuard[Model]]
    ) -> None:
        """A call within ``max_queue`` waits for a slot instead of being shed."""
        guard = make(max_concurrency=1, max_queue=1)
        hung = Hung()
        results: list[float] = []
        first = threading.Thread(target=lambda: results.append(guard.predict(hung, 1.0)))
        first.start()
        assert hung.started.acquire(timeout=SETTLE)
        second = threading.Thread(target=lambda: results.append(guard.predict(hung, 2.0)))
        second.start()
        limit = guard._overload.limit
        assert limit is not None
        wait_for(lambda: limit.waiting == 1)
        with pytest.raises(cr.OverloadedError):
            guard.predict(hung)  # one running, one waiting: no room
        hung.release.set()
        first.join(SETTLE)
        second.join(SETTLE)
        assert sorted(results) == [1.0, 2.0]

    def test_open_breaker_rejects_before_queueing(
        self, make: Callable[..., cr.ModelGuard[Model]]
    ) -> None:
        """An open breaker answers CircuitOpenError even when the limit is full."""
        guard = make(max_concurrency=1)
        hung = Hung()
        worker = threading.Thread(target=guard.predict, args=(hung,))
        worker.start()
        try:
            assert hung.started.acquire(timeout=SETTLE)
            guard.breaker.force_open(reason="maintenance")
            with pytest.raises(cr.CircuitOpenError):
                guard.predict(hung)
        finally:
            hung.release.set()
            worker.join(SETTLE)

    def test_shed_call_never_takes_the_half_open_permit(
        self, make: Callable[..., cr.ModelGuard[Model]]
    ) -> None:
        """Shed while half-open: the single trial is still there for the next call."""
        with time_machine.travel(T0, tick=False) as traveller:
            guard = make(max_concurrency=1)
            hung = Hung()
            worker = threading.Thread(target=guard.predict, args=(hung,))
            worker.start()
            try:
                assert hung.started.acquire(timeout=SETTLE)
                for _ in range(5):  # open the breaker beside the guard (no slot used)
                    with pytest.raises(OSError):
                        guard.breaker.call(_raise_os_error)
                traveller.shift(guard.breaker.reset_timeout + 1)
                assert guard.breaker.state == "half-open"
                with pytest.raises(cr.OverloadedError):
                    guard.predict(hung)
                assert guard.breaker.retry_after() == 0.0
                assert guard.breaker.call(lambda: 5) == 5  # the trial, still available
                assert guard.breaker.state == "closed"
            finally:
                hung.release.set()
                worker.join(SETTLE)

    def test_async_shedding(
        self, make: Callable[..., cr.ModelGuard[Model]], registry: CollectorRegistry
    ) -> None:
        """predict_async queues as a coroutine and sheds beyond the queue."""
        guard = make(max_concurrency=1, max_queue=1)

        async def main() -> list[object]:
            release = asyncio.Event()

            async def slow(model: Model, x: int) -> int:
                await release.wait()
                return x

            tasks = [asyncio.create_task(guard.predict_async(slow, i)) for i in range(3)]
            for _ in range(100):  # let the three tasks reach the limit
                await asyncio.sleep(0)
                if tasks[2].done():
                    break
            release.set()
            return await asyncio.gather(*tasks, return_exceptions=True)

        results = asyncio.run(main())
        assert results[:2] == [0, 1]
        assert isinstance(results[2], cr.OverloadedError)
        assert guard.breaker.fail_counter == 0
        assert failures(registry, "overloaded") == 1

    def test_queue_settings_need_a_limit(self, make: Callable[..., cr.ModelGuard[Model]]) -> None:
        """``max_queue`` without ``max_concurrency`` is a configuration error."""
        with pytest.raises(ValueError, match="max_concurrency"):
            make(max_queue=3)


class TestTelemetry:
    def test_in_flight_gauge_is_preinitialised(
        self, make: Callable[..., cr.ModelGuard[Model]], registry: CollectorRegistry
    ) -> None:
        """The gauge exists at 0 as soon as the guard is registered."""
        make()
        assert in_flight(registry) == 0

    def test_shed_and_timeout_events(
        self,
        make: Callable[..., cr.ModelGuard[Model]],
        events: list[Event],
        registry: CollectorRegistry,
    ) -> None:
        """Timed-out and shed calls are reported with their reasons."""
        guard = make(timeout=DEADLINE, max_abandoned=1)
        hung = Hung()
        try:
            with pytest.raises(cr.PredictionTimeoutError):
                guard.predict(hung)
            with pytest.raises(cr.OverloadedError):
                guard.predict(hung)
        finally:
            hung.release.set()
        reasons = [e.reason for e in events if isinstance(e, PredictionFailed)]
        assert reasons == [cr.Reason.TIMEOUT, cr.Reason.OVERLOADED]
        wait_for(lambda: in_flight(registry) == 0)

    def test_shed_calls_are_sampled_in_the_log(self) -> None:
        """Shed calls log the 1st and 10th (like rejections); other failures log each time."""
        hook = StructlogOnEventHook.bind(None)
        shed = PredictionFailed(
            model="m", reason=cr.Reason.OVERLOADED, error_type="OverloadedError", duration=0.0
        )
        failed = PredictionFailed(
            model="m", reason=cr.Reason.INTERNAL, error_type="RuntimeError", duration=0.0
        )
        with structlog.testing.capture_logs() as logs:
            for _ in range(12):
                hook(shed)
            hook(failed)
        assert [e["reason"] for e in logs] == ["overloaded", "overloaded", "internal"]

    def test_only_gauge_hooks_see_in_flight_changes(
        self, make: Callable[..., cr.ModelGuard[Model]]
    ) -> None:
        """Hooks with ``on_in_flight`` get +1/-1 per prediction; plain hooks no extra event."""
        deltas: list[tuple[str, int]] = []
        seen: list[Event] = []

        class Gauge:
            def __call__(self, event: Event) -> None:
                seen.append(event)

            def on_in_flight(self, model: str, delta: int) -> None:
                deltas.append((model, delta))

        previous = get_on_event_hooks()
        set_on_event_hooks([Gauge()])
        try:
            guard = make()
            seen.clear()
            assert guard.predict(lambda model: 3) == 3
        finally:
            set_on_event_hooks(previous)
        assert deltas == [("m", 1), ("m", -1)]
        assert [type(e).__name__ for e in seen] == ["PredictionSucceeded"]

    def test_max_abandoned_must_allow_one(self, make: Callable[..., cr.ModelGuard[Model]]) -> None:
        """``max_abandoned=0`` would shed every call: refused."""
        with pytest.raises(ValueError, match="max_abandoned"):
            make(timeout=1.0, max_abandoned=0)


class TestProblems:
    def test_overloaded_problem(self) -> None:
        """A shed call answers 503 ``overloaded`` with its Retry-After."""
        problem = problem_for(cr.OverloadedError("shed", retry_after=1.5))
        assert problem is not None
        assert (problem.status, problem.reason, problem.retry_after) == (503, "overloaded", 2)
        assert problem.type == problem_type("overloaded")

    def test_timeout_problem(self) -> None:
        """A prediction past its deadline answers 503 ``timeout`` with a short Retry-After."""
        problem = problem_for(cr.PredictionTimeoutError("late", timeout=3.0))
        assert problem is not None
        assert (problem.status, problem.reason, problem.retry_after) == (503, "timeout", 1)
        assert b"late" not in problem.body()

    def test_load_timeout_stays_unavailable(self) -> None:
        """Nothing serving after a fetch timeout is still ``unavailable``, not ``timeout``."""
        error = cr.ModelUnavailableError("x", retry_after=5, reason=cr.Reason.TIMEOUT)
        problem = problem_for(error)
        assert problem is not None
        assert problem.reason == "unavailable"


def _raise_os_error() -> None:
    raise OSError("upstream failed")


class TestDaemonPool:
    def test_workers_are_daemon_threads_and_bounded(self) -> None:
        """At most max_workers daemon threads run; queued jobs wait for a free one."""
        pool = DaemonPool(2, name="t")
        release = threading.Event()
        started = threading.Semaphore(0)

        def job() -> bool:
            started.release()
            assert release.wait(SETTLE)
            return threading.current_thread().daemon

        futures = [pool.submit(job) for _ in range(4)]
        assert started.acquire(timeout=SETTLE)
        assert started.acquire(timeout=SETTLE)
        assert pool.threads == 2
        assert not any(f.running() for f in futures[2:])
        release.set()
        assert [f.result(SETTLE) for f in futures] == [True] * 4
        pool.shutdown()

    def test_a_cancelled_job_never_runs(self) -> None:
        """A job cancelled while queued is skipped by the worker."""
        pool = DaemonPool(1, name="t")
        release = threading.Event()
        ran: list[str] = []
        first = pool.submit(lambda: release.wait(SETTLE))
        second = pool.submit(lambda: ran.append("second"))
        assert second.cancel()
        release.set()
        assert first.result(SETTLE) is True
        assert pool.submit(lambda: 5).result(SETTLE) == 5
        assert ran == []
        pool.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            pool.submit(lambda: 1)

    def test_a_hung_call_does_not_block_interpreter_exit(self, tmp_path: pathlib.Path) -> None:
        """A process whose prediction hangs for ever still exits once its main code ends."""
        script = tmp_path / "hang.py"
        script.write_text(
            "import threading\n"
            "from clarity_resilience._overload import Deadline\n"
            "from clarity_resilience.exceptions import PredictionTimeoutError\n"
            "deadline = Deadline(0.1, workers=1, max_abandoned=1)\n"
            "try:\n"
            "    deadline.run(threading.Event().wait)\n"
            "except PredictionTimeoutError:\n"
            "    print('released')\n",
            encoding="utf-8",
        )
        root = str(pathlib.Path(cr.__file__).resolve().parent.parent)
        result = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": root},
        )
        assert (result.returncode, result.stdout) == (0, "released\n"), result.stderr
