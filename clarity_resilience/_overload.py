"""Overload control for predictions: a concurrency limit with a bounded queue, and deadlines.

A model that hangs never raises, so without a deadline its breaker never opens and
requests pile up; a traffic spike without a limit drains every thread. Both are handled
here, around predictions (never around loads):

- :class:`ConcurrencyLimit`: at most ``max_concurrency`` calls run, at most
  ``max_queue`` wait (each at most ``queue_timeout`` seconds, first come first served);
  any other call is shed at once with :class:`~clarity_resilience.OverloadedError`.
  One limit serves threads and asyncio tasks alike; its lock is held only to count,
  never while user code runs or while anyone waits.
- :class:`Deadline`: runs a plain function in a bounded pool of worker threads and
  gives up waiting after ``timeout`` seconds with
  :class:`~clarity_resilience.PredictionTimeoutError`. A thread cannot be killed: the
  abandoned call runs on in its worker and still counts as in flight until it ends; at
  most ``max_abandoned`` may run on like that, after which new calls are shed.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._workers import DaemonPool
from .exceptions import OverloadedError, PredictionTimeoutError

__all__ = ["ConcurrencyLimit", "Deadline"]

T = TypeVar("T")


def _check_int(name: str, value: object, *, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")


class _Waiter:
    """One queued caller: granted a slot by ``release``, or gone (timed out, cancelled)."""

    __slots__ = ("event", "future", "granted", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.event = threading.Event() if loop is None else None
        self.loop = loop
        self.future = future
        self.granted = False

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
        elif self.loop is not None and self.future is not None:
            future = self.future

            def resolve() -> None:
                if not future.done():
                    future.set_result(None)

            # The loop may be closed (its caller gone): the slot is then released by
            # nobody, so refuse to hand it over (the caller of wake() takes it back).
            self.loop.call_soon_threadsafe(resolve)


class ConcurrencyLimit:
    """Admit at most ``max_concurrency`` calls; queue ``max_queue``; shed the rest.

    Args:
        max_concurrency: Calls that may run at once (at least 1).
        max_queue: Calls that may wait for a slot (0: shed as soon as all slots are busy).
        queue_timeout: Longest wait in the queue, in seconds (None: no limit other
            than the queue's length).
        retry_after: The ``Retry-After`` hint of a shed call, in seconds.

    Raises:
        ValueError: A bound is not a positive number (``max_queue`` may be 0).
    """

    def __init__(
        self,
        max_concurrency: int,
        *,
        max_queue: int = 0,
        queue_timeout: float | None = None,
        retry_after: float = 1.0,
    ) -> None:
        _check_int("max_concurrency", max_concurrency, least=1)
        _check_int("max_queue", max_queue, least=0)
        if queue_timeout is not None and not queue_timeout > 0:
            raise ValueError(f"queue_timeout must be a positive number, got {queue_timeout!r}")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.retry_after = float(retry_after)
        self._lock = threading.Lock()
        self._running = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()

    @property
    def running(self) -> int:
        """Return how many admitted calls hold a slot now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Return how many calls wait in the queue now."""
        return len(self._waiters)

    def _shed(self, why: str) -> OverloadedError:
        return OverloadedError(why, retry_after=self.retry_after)

    def _try_admit(self, waiter: _Waiter | None) -> _Waiter | None:
        """Take a free slot (return None), or queue ``waiter`` (returned), or shed."""
        with self._lock:
            if self._running < self.max_concurrency and not self._waiters:
                self._running += 1
                return None
            if len(self._waiters) >= self.max_queue or waiter is None:
                raise self._shed(
                    f"{self._running} calls running and {len(self._waiters)} waiting: shed"
                )
            self._waiters.append(waiter)
            return waiter

    def _give_up(self, waiter: _Waiter) -> bool:
        """Leave the queue; return True if a slot was granted meanwhile (then it is ours)."""
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            return False

    def acquire(self) -> None:
        """Take a slot, waiting in the queue if there is room.

        Raises:
            OverloadedError: The queue is full, or the wait exceeded ``queue_timeout``.
        """
        with self._lock:  # the common case first: a free slot, nobody waiting, no waiter built
            if self._running < self.max_concurrency and not self._waiters:
                self._running += 1
                return
        waiter = self._try_admit(_Waiter() if self.max_queue else None)
        if waiter is None:
            return
        assert waiter.event is not None
        try:
            waited = waiter.event.wait(self.queue_timeout)
        except BaseException:
            if self._give_up(waiter):
                self.release()
            raise
        if not waited and not self._give_up(waiter):
            raise self._shed(f"no slot within the queue timeout of {self.queue_timeout}s")

    async def acquire_async(self) -> None:
        """Take a slot like :meth:`acquire`, waiting as a coroutine (never blocking the loop).

        Raises:
            OverloadedError: The queue is full, or the wait exceeded ``queue_timeout``.
        """
        with self._lock:  # a free slot: no future built, no await
            if self._running < self.max_concurrency and not self._waiters:
                self._running += 1
                return
        if not self.max_queue:
            self._try_admit(None)
            return
        loop = asyncio.get_running_loop()
        waiter = self._try_admit(_Waiter(loop, loop.create_future()))
        if waiter is None:
            return
        assert waiter.future is not None
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.queue_timeout)
        except TimeoutError:
            if not self._give_up(waiter):
                raise self._shed(
                    f"no slot within the queue timeout of {self.queue_timeout}s"
                ) from None
        except BaseException:  # cancelled: hand back a slot granted meanwhile
            if self._give_up(waiter):
                self.release()
            raise

    def release(self) -> None:
        """Give the slot back: to the first waiter still queued, else free it."""
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                waiter.granted = True  # the slot passes over: running stays the same
                try:
                    waiter.wake()
                except RuntimeError:  # its event loop is closed: nobody will use it
                    continue
                return
            self._running -= 1


class Deadline:
    """Run plain functions in worker threads and stop waiting for them at a deadline.

    Args:
        timeout: Seconds a call may take.
        workers: Threads for calls within their deadline.
        max_abandoned: Calls past their deadline that may still be running (threads
            cannot be killed); beyond that, new calls are shed.
        name: Prefix of the worker threads' names.
    """

    def __init__(
        self, timeout: float, *, workers: int, max_abandoned: int, name: str = "clarity-predict"
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        _check_int("max_abandoned", max_abandoned, least=0)
        self.timeout = float(timeout)
        self.max_abandoned = max_abandoned
        self._lock = threading.Lock()
        self._abandoned = 0
        # Daemon workers: a call stuck for ever must not keep the process from exiting.
        self._pool = DaemonPool(workers + max_abandoned, name=name)

    @property
    def abandoned(self) -> int:
        """Return how many calls past their deadline are still running."""
        return self._abandoned

    def _submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._abandoned >= self.max_abandoned:
                raise OverloadedError(
                    f"{self._abandoned} calls past their deadline are still running: shed",
                    retry_after=self.timeout,
                )
        return self._pool.submit(fn)

    def _abandon(self, future: concurrent.futures.Future[Any]) -> None:
        if future.cancel():  # never started: nothing runs on
            return
        with self._lock:
            self._abandoned += 1

        def ended(_: concurrent.futures.Future[Any]) -> None:
            with self._lock:
                self._abandoned -= 1

        future.add_done_callback(ended)

    def _timed_out(self, timeout: float) -> PredictionTimeoutError:
        return PredictionTimeoutError(
            f"the prediction did not finish within {timeout}s", timeout=timeout
        )

    def run(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Return ``fn()``, or raise :class:`PredictionTimeoutError` at the deadline.

        Raises:
            PredictionTimeoutError: ``fn`` did not return in time (it runs on, abandoned).
            OverloadedError: Too many abandoned calls are still running.
        """
        limit = self.timeout if timeout is None else timeout
        future = self._submit(fn)
        try:
            return future.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            self._abandon(future)
            raise self._timed_out(limit) from None
        except BaseException:
            if not future.done():  # interrupted while waiting
                self._abandon(future)
            raise

    async def run_async(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Await ``fn()`` run in a worker thread; release the caller at the deadline."""
        limit = self.timeout if timeout is None else timeout
        future = self._submit(fn)
        wrapped = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(asyncio.shield(wrapped), limit)
        except TimeoutError:
            self._abandon(future)
            raise self._timed_out(limit) from None
        except BaseException:
            if not future.done():
                self._abandon(future)
            raise

    async def await_within(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """Await a coroutine, cancelling it at the deadline (async work can be cancelled)."""
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(awaitable, limit)
        except TimeoutError:
            raise self._timed_out(limit) from None

    def shutdown(self) -> None:
        """Stop the worker threads once their calls end (never waits for abandoned ones)."""
        self._pool.shutdown()
