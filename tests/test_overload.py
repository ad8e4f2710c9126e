"""Tests for overload control: the concurrency limit with shedding, and deadlines."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

import clarity_resilience as cr
from clarity_resilience._overload import ConcurrencyLimit, Deadline

# Bounds here are generous safety nets against hangs, never the behaviour under test.
WAIT = 30.0


def start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def wait_until(condition: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(int(WAIT / 0.005)):
        if condition():
            return
        done.wait(0.005)
    pytest.fail("condition never became true")


class TestConcurrencyLimit:
    def test_admits_runs_queues_then_sheds(self) -> None:
        """n calls run, m wait, the next one is shed at once with OverloadedError."""
        limit = ConcurrencyLimit(2, max_queue=1)
        limit.acquire()
        limit.acquire()
        assert limit.running == 2
        admitted = threading.Event()

        def queued() -> None:
            limit.acquire()
            admitted.set()

        waiter = start(queued)
        wait_until(lambda: limit.waiting == 1)
        with pytest.raises(cr.OverloadedError) as info:
            limit.acquire()
        assert info.value.reason is cr.Reason.OVERLOADED
        assert info.value.retry_after == 1.0
        assert not admitted.is_set()
        limit.release()  # the slot passes to the waiter
        assert admitted.wait(WAIT)
        waiter.join(WAIT)
        assert (limit.running, limit.waiting) == (2, 0)
        limit.release()
        limit.release()
        assert limit.running == 0

    def test_without_a_queue_a_busy_limit_sheds(self) -> None:
        """max_queue=0 sheds the moment every slot is busy."""
        limit = ConcurrencyLimit(1)
        limit.acquire()
        with pytest.raises(cr.OverloadedError):
            limit.acquire()
        limit.release()
        limit.acquire()

    def test_waiters_are_served_first_come_first_served(self) -> None:
        """Released slots go to waiters in arrival order, not to newcomers."""
        limit = ConcurrencyLimit(1, max_queue=3)
        limit.acquire()
        order: list[int] = []
        threads = []
        for i in range(3):
            threads.append(start(lambda i=i: (limit.acquire(), order.append(i))))  # type: ignore[func-returns-value]
            wait_until(lambda i=i: limit.waiting == i + 1)
        for expected in range(3):
            limit.release()
            wait_until(lambda expected=expected: len(order) == expected + 1)
        for thread in threads:
            thread.join(WAIT)
        assert order == [0, 1, 2]

    def test_queue_timeout_sheds_a_waiter(self) -> None:
        """A waiter that gets no slot within queue_timeout is shed and leaves the queue."""
        limit = ConcurrencyLimit(1, max_queue=1, queue_timeout=0.01)
        limit.acquire()
        with pytest.raises(cr.OverloadedError, match="queue timeout"):
            limit.acquire()
        assert limit.waiting == 0
        limit.release()
        assert limit.running == 0

    def test_shed_and_timed_out_calls_have_distinct_types(self) -> None:
        """Shedding is 'unavailable' (503, never a failure); a timeout is a model failure."""
        assert issubclass(cr.OverloadedError, cr.ModelUnavailableError)
        assert not issubclass(cr.PredictionTimeoutError, cr.ModelUnavailableError)

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            pytest.param({"max_concurrency": 0}, ValueError, id="zero-slots"),
            pytest.param({"max_concurrency": True}, TypeError, id="bool-slots"),
            pytest.param({"max_concurrency": 1, "max_queue": -1}, ValueError, id="negative-queue"),
            pytest.param(
                {"max_concurrency": 1, "queue_timeout": 0}, ValueError, id="zero-timeout"
            ),
        ],
    )
    def test_invalid_bounds(self, kwargs: dict[str, object], error: type[Exception]) -> None:
        """Bounds must be sensible numbers."""
        with pytest.raises(error):
            ConcurrencyLimit(**kwargs)  # type: ignore[arg-type]


@pytest.mark.asyncio
class TestConcurrencyLimitAsync:
    async def test_tasks_queue_and_shed_without_blocking_the_loop(self) -> None:
        """Async callers wait as coroutines; beyond the queue they are shed at once."""
        limit = ConcurrencyLimit(1, max_queue=1)
        await limit.acquire_async()
        waiter = asyncio.create_task(limit.acquire_async())
        while limit.waiting != 1:
            await asyncio.sleep(0)
        with pytest.raises(cr.OverloadedError):
            await limit.acquire_async()
        limit.release()
        await asyncio.wait_for(waiter, WAIT)
        assert (limit.running, limit.waiting) == (1, 0)
        limit.release()

    async def test_cancelled_waiter_gives_its_place_back(self) -> None:
        """A cancelled waiting task leaves the queue and holds no slot."""
        limit = ConcurrencyLimit(1, max_queue=1)
        await limit.acquire_async()
        waiter = asyncio.create_task(limit.acquire_async())
        while limit.waiting != 1:
            await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limit.waiting == 0
        limit.release()
        assert limit.running == 0

    async def test_waiter_cancelled_after_its_grant_releases_the_slot(self) -> None:
        """A slot granted to a task that is cancelled before it runs is not lost."""
        limit = ConcurrencyLimit(1, max_queue=1)
        await limit.acquire_async()
        waiter = asyncio.create_task(limit.acquire_async())
        while limit.waiting != 1:
            await asyncio.sleep(0)
        limit.release()  # granted, but the task has not resumed yet
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limit.running == 0

    async def test_async_queue_timeout(self) -> None:
        """An async waiter is shed after queue_timeout."""
        limit = ConcurrencyLimit(1, max_queue=1, queue_timeout=0.01)
        await limit.acquire_async()
        with pytest.raises(cr.OverloadedError):
            await limit.acquire_async()
        assert limit.waiting == 0

    async def test_threads_and_tasks_share_one_limit(self) -> None:
        """A slot released by a thread is granted to a waiting task, and back."""
        limit = ConcurrencyLimit(1, max_queue=2)
        limit.acquire()
        task = asyncio.create_task(limit.acquire_async())
        while limit.waiting != 1:
            await asyncio.sleep(0)
        await asyncio.to_thread(limit.release)
        await asyncio.wait_for(task, WAIT)
        assert limit.running == 1
        limit.release()


class TestDeadline:
    def test_returns_the_result_within_the_deadline(self) -> None:
        """A call that finishes in time returns its value."""
        deadline = Deadline(WAIT, workers=2, max_abandoned=1)
        assert deadline.run(lambda: 42) == 42
        deadline.shutdown()

    def test_hung_call_is_abandoned_at_the_deadline_and_counted_until_it_ends(self) -> None:
        """The caller is released with PredictionTimeoutError; the work runs on, counted."""
        deadline = Deadline(0.05, workers=1, max_abandoned=2)
        release = threading.Event()
        with pytest.raises(cr.PredictionTimeoutError) as info:
            deadline.run(lambda: release.wait(WAIT))
        assert info.value.reason is cr.Reason.TIMEOUT
        assert info.value.timeout == 0.05
        assert deadline.abandoned == 1
        release.set()
        wait_until(lambda: deadline.abandoned == 0)
        deadline.shutdown()

    def test_too_many_abandoned_calls_shed_new_ones(self) -> None:
        """Past max_abandoned hung calls, new calls are shed instead of piling up."""
        deadline = Deadline(0.01, workers=1, max_abandoned=1)
        release = threading.Event()
        with pytest.raises(cr.PredictionTimeoutError):
            deadline.run(lambda: release.wait(WAIT))
        with pytest.raises(cr.OverloadedError):
            deadline.run(lambda: 1)
        release.set()
        wait_until(lambda: deadline.abandoned == 0)
        assert deadline.run(lambda: 2, timeout=WAIT) == 2
        deadline.shutdown()

    def test_per_call_timeout_overrides_the_default(self) -> None:
        """run(fn, timeout=) uses that deadline for this call only."""
        deadline = Deadline(WAIT, workers=1, max_abandoned=1)
        release = threading.Event()
        with pytest.raises(cr.PredictionTimeoutError) as info:
            deadline.run(lambda: release.wait(WAIT), timeout=0.01)
        assert info.value.timeout == 0.01
        release.set()
        deadline.shutdown()

    @pytest.mark.asyncio
    async def test_async_caller_is_released_at_the_deadline(self) -> None:
        """An awaiting caller gets PredictionTimeoutError while the thread runs on."""
        deadline = Deadline(0.05, workers=1, max_abandoned=1)
        release = threading.Event()
        with pytest.raises(cr.PredictionTimeoutError):
            await deadline.run_async(lambda: release.wait(WAIT))
        assert deadline.abandoned == 1
        release.set()
        while deadline.abandoned:
            await asyncio.sleep(0.005)  # sleep-ok: polling for a condition, bounded by a deadline
        assert await deadline.run_async(lambda: 7) == 7
        deadline.shutdown()

    @pytest.mark.asyncio
    async def test_coroutine_is_cancelled_at_the_deadline(self) -> None:
        """Async work is cancelled at its deadline (nothing is left running)."""
        deadline = Deadline(0.01, workers=1, max_abandoned=1)
        cancelled = asyncio.Event()

        async def hang() -> None:
            try:
                await asyncio.sleep(WAIT)  # sleep-ok: hangs on purpose
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with pytest.raises(cr.PredictionTimeoutError):
            await deadline.await_within(hang())
        assert cancelled.is_set()
        assert deadline.abandoned == 0
        deadline.shutdown()
