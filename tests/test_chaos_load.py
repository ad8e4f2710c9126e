"""Tests for clarity_resilience.chaos.load: real threads and real tasks."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from clarity_resilience import ChecksumMismatchError, CircuitOpenError
from clarity_resilience.chaos import Call, LoadResult, run_tasks, run_threads

pytestmark = pytest.mark.timeout(30)


class Abort(BaseException):
    """A non-Exception error, like KeyboardInterrupt, that must never be recorded."""


def mixed(call: Call) -> int:
    """Succeed, fail typed, or fail untyped depending on the iteration."""
    if call.index % 3 == 1:
        raise ChecksumMismatchError("digest differs", expected="a", actual="b")
    if call.index % 3 == 2:
        raise KeyError("bug")
    return call.worker * 100 + call.index


async def mixed_async(call: Call) -> int:
    await asyncio.sleep(0)
    return mixed(call)


def check_mixed(result: LoadResult[int], calls: int) -> None:
    typed = calls // 3
    assert result.counts() == {
        "ok": calls - 2 * typed,
        "ChecksumMismatchError[checksum_mismatch]": typed,
        "KeyError": typed,
    }
    assert {o.exc_type for o in result.untyped_errors} == {"KeyError"}
    assert len(result.errors) == 2 * typed
    assert all(o.value == o.worker * 100 + o.index for o in result.successes)
    failure = next(o for o in result.errors if o.exc_type == "ChecksumMismatchError")
    assert failure.reason == "checksum_mismatch"
    assert failure.exc_class is ChecksumMismatchError
    assert failure.message == "digest differs"


class TestOutcomes:
    def test_labels(self) -> None:
        """Labels name successes, exception types and reasons for counting."""
        result = run_threads(
            lambda call: (_ for _ in ()).throw(CircuitOpenError("model", 3.0)),
            workers=1,
            iterations=1,
        )
        assert result.counts() == {"CircuitOpenError[breaker_open]": 1}

    def test_expected_types_can_be_widened(self) -> None:
        """Errors of user-given expected types are typed, not untyped."""
        result = run_threads(mixed, workers=2, iterations=3, expected=(KeyError,))
        assert {o.exc_type for o in result.untyped_errors} == {"ChecksumMismatchError"}

    def test_raise_for_untyped(self) -> None:
        """raise_for_untyped fails with examples when anything untyped escaped."""
        result = run_threads(mixed, workers=1, iterations=3)
        with pytest.raises(AssertionError, match="1 of 3 calls raised an untyped error"):
            result.raise_for_untyped()
        run_threads(mixed, workers=1, iterations=2).raise_for_untyped()

    @pytest.mark.parametrize(
        ("workers", "iterations"),
        [pytest.param(0, 1, id="no-workers"), pytest.param(1, -1, id="negative-iterations")],
    )
    def test_invalid_sizes(self, workers: int, iterations: int) -> None:
        """A run needs at least one worker and a non-negative iteration count."""
        with pytest.raises(ValueError):
            run_threads(mixed, workers=workers, iterations=iterations)


class TestRunThreads:
    def test_every_call_is_recorded_in_order(self) -> None:
        """Each (worker, iteration) appears once, ordered, with its result or error."""
        result = run_threads(mixed, workers=4, iterations=6)
        assert [(o.worker, o.index) for o in result.outcomes] == [
            (w, i) for w in range(4) for i in range(6)
        ]
        check_mixed(result, 24)
        assert all(o.started >= 0 and o.duration >= 0 for o in result.outcomes)
        assert result.elapsed >= max(o.started for o in result.outcomes)

    def test_workers_really_run_at_the_same_time(self) -> None:
        """A barrier needing every worker inside the function at once is passed."""
        inside = threading.Barrier(6, timeout=10)
        result = run_threads(lambda call: inside.wait(), workers=6, iterations=3)
        assert result.counts() == {"ok": 18}

    def test_start_barrier_holds_calls_until_every_thread_runs(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No call begins before the last worker thread has been started."""
        start_requests: list[float] = []
        original_start = threading.Thread.start

        def recording_start(thread: threading.Thread) -> None:
            start_requests.append(time.perf_counter())
            original_start(thread)

        monkeypatch.setattr(threading.Thread, "start", recording_start)
        result = run_threads(lambda call: time.perf_counter(), workers=8, iterations=1)
        monkeypatch.undo()
        assert len(start_requests) == 8
        assert min(o.value for o in result.outcomes if o.value) > max(start_requests)

    def test_thread_that_cannot_start_aborts_without_hanging(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If a worker thread cannot start, the started ones are released and joined."""
        original_start = threading.Thread.start
        started: list[threading.Thread] = []

        def failing_start(thread: threading.Thread) -> None:
            if len(started) == 2:
                raise RuntimeError("can't start new thread")
            original_start(thread)
            started.append(thread)

        monkeypatch.setattr(threading.Thread, "start", failing_start)
        with pytest.raises(RuntimeError, match="can't start"):
            run_threads(mixed, workers=4, iterations=1)
        monkeypatch.undo()
        assert len(started) == 2
        assert not any(thread.is_alive() for thread in started)

    def test_same_seed_same_inputs(self) -> None:
        """Each worker's generator depends only on the seed and the worker number."""

        def draw(call: Call) -> float:
            return call.rng.random()

        first = run_threads(draw, workers=3, iterations=4, seed=11)
        second = run_threads(draw, workers=3, iterations=4, seed=11)
        other = run_threads(draw, workers=3, iterations=4, seed=12)
        assert [o.value for o in first.outcomes] == [o.value for o in second.outcomes]
        assert [o.value for o in first.outcomes] != [o.value for o in other.outcomes]

    def test_keyboard_interrupt_stops_the_run_and_propagates(self) -> None:
        """A KeyboardInterrupt is never recorded: it stops every worker and is re-raised."""
        calls = []
        inside = threading.Barrier(4, timeout=10)

        def work(call: Call) -> None:
            if call.index == 0:
                inside.wait()
                if call.worker == 0:
                    raise KeyboardInterrupt
            calls.append(call)

        with pytest.raises(KeyboardInterrupt):
            run_threads(work, workers=4, iterations=100_000)
        assert len(calls) < 3 * 100_000


class TestRunTasks:
    @pytest.mark.asyncio
    async def test_every_call_is_recorded_in_order(self) -> None:
        """Each (task, iteration) appears once, ordered, with its result or error."""
        result = await run_tasks(mixed_async, tasks=3, iterations=6)
        assert [(o.worker, o.index) for o in result.outcomes] == [
            (w, i) for w in range(3) for i in range(6)
        ]
        check_mixed(result, 18)

    @pytest.mark.asyncio
    async def test_tasks_really_run_at_the_same_time_and_no_more(self) -> None:
        """All tasks are inside the function at once, and never more than asked for."""
        inside = asyncio.Barrier(5)
        in_flight = 0
        peak = 0

        async def work(call: Call) -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                async with asyncio.timeout(10):
                    await inside.wait()
            finally:
                in_flight -= 1

        result = await run_tasks(work, tasks=5, iterations=3)
        assert result.counts() == {"ok": 15}
        assert peak == 5

    @pytest.mark.asyncio
    async def test_same_seed_same_inputs(self) -> None:
        """Each task's generator depends only on the seed and the task number."""

        async def draw(call: Call) -> float:
            return call.rng.random()

        first = await run_tasks(draw, tasks=3, iterations=4, seed=5)
        second = await run_tasks(draw, tasks=3, iterations=4, seed=5)
        assert [o.value for o in first.outcomes] == [o.value for o in second.outcomes]

    @pytest.mark.asyncio
    async def test_inner_cancellation_is_recorded(self) -> None:
        """A CancelledError raised by the function itself is an outcome, not an abort."""

        async def cancelled_inside(call: Call) -> None:
            inner = asyncio.get_running_loop().create_future()
            inner.cancel()
            await inner

        result = await run_tasks(cancelled_inside, tasks=2, iterations=2)
        assert result.counts() == {"CancelledError": 4}
        assert len(result.untyped_errors) == 4

    @pytest.mark.asyncio
    async def test_cancelling_the_run_propagates(self) -> None:
        """Cancelling the run cancels every task and is not recorded as an outcome."""
        entered = asyncio.Event()
        never = asyncio.Event()

        async def wait_forever(call: Call) -> None:
            entered.set()
            await never.wait()

        run = asyncio.ensure_future(run_tasks(wait_forever, tasks=3, iterations=1))
        await entered.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    @pytest.mark.asyncio
    async def test_base_exception_propagates(self) -> None:
        """A non-Exception error stops the run and is raised as itself."""

        async def abort(call: Call) -> None:
            if call.worker == 1:
                raise Abort
            await asyncio.sleep(0)

        with pytest.raises(Abort):
            await run_tasks(abort, tasks=3, iterations=5)
