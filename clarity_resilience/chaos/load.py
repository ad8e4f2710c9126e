"""Load drivers that call a function concurrently and record every outcome.

Use them to prove a promise under concurrency: "every failure is one of ours", "no
call ever returned a corrupted model", "the breaker let exactly one trial through"::

    def predict(call: Call) -> float:
        return guard.predict(score, call.rng.random())

    with bit_flip(model_path):
        result = run_threads(predict, workers=8, iterations=50, seed=3)
    assert not result.untyped_errors, result.counts()

Each worker gets its own :class:`random.Random` seeded from ``seed`` and the worker
number, so a seed reproduces every worker's inputs. Workers wait at a start barrier
and begin together. Exceptions (subclasses of :class:`Exception`) raised by the
function are recorded; anything else (``KeyboardInterrupt``, ``SystemExit``, an outer
cancellation) stops the run and propagates.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from clarity_resilience import ClarityResilienceError

__all__ = ["Call", "LoadResult", "Outcome", "run_tasks", "run_threads"]

T = TypeVar("T")

#: The exception types a load run counts as deliberate, typed denials by default.
EXPECTED: tuple[type[BaseException], ...] = (ClarityResilienceError,)


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of the function under load.

    Attributes:
        worker: The worker (thread or task) number, from 0.
        index: The iteration within that worker, from 0.
        rng: The worker's own generator, seeded from the run's seed and ``worker``.
    """

    worker: int
    index: int
    rng: random.Random


@dataclasses.dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one call did.

    Attributes:
        worker: The worker that made the call.
        index: The iteration within that worker.
        ok: Whether the call returned instead of raising.
        started: Seconds from the start of the run to the start of the call.
        duration: Seconds the call took.
        value: What the call returned (``None`` if it raised).
        exc_type: The exception's class name, if it raised.
        reason: The exception's ``reason`` attribute as a string, if it has one
            (every :class:`~clarity_resilience.ClarityResilienceError` does).
        message: ``str()`` of the exception, if it raised.
        exc_class: The exception's class, if it raised. The exception itself is not
            kept: its traceback would keep every frame (and buffer) alive.
    """

    worker: int
    index: int
    ok: bool
    started: float
    duration: float
    value: T | None = None
    exc_type: str | None = None
    reason: str | None = None
    message: str | None = None
    exc_class: type[BaseException] | None = dataclasses.field(default=None, repr=False)

    @property
    def label(self) -> str:
        """Return ``"ok"``, ``"ExcType"`` or ``"ExcType[reason]"`` for counting."""
        if self.ok:
            return "ok"
        return f"{self.exc_type}[{self.reason}]" if self.reason else str(self.exc_type)


@dataclasses.dataclass(frozen=True)
class LoadResult(Generic[T]):
    """Every outcome of a load run, ordered by worker and iteration.

    Attributes:
        outcomes: One :class:`Outcome` per call made.
        elapsed: Wall-clock seconds the run took.
        expected: The exception types that count as typed (deliberate) failures.
    """

    outcomes: tuple[Outcome[T], ...]
    elapsed: float
    expected: tuple[type[BaseException], ...] = EXPECTED

    def counts(self) -> collections.Counter[str]:
        """Count outcomes by :attr:`Outcome.label`, e.g. ``{"ok": 90, "X[reason]": 10}``."""
        return collections.Counter(outcome.label for outcome in self.outcomes)

    @property
    def successes(self) -> tuple[Outcome[T], ...]:
        """Return the calls that returned."""
        return tuple(outcome for outcome in self.outcomes if outcome.ok)

    @property
    def errors(self) -> tuple[Outcome[T], ...]:
        """Return the calls that raised."""
        return tuple(outcome for outcome in self.outcomes if not outcome.ok)

    @property
    def untyped_errors(self) -> tuple[Outcome[T], ...]:
        """Return the calls that raised something not in :attr:`expected`.

        These are the failures a fail-closed library must not produce: a bare
        ``OSError``, ``ValueError`` or ``KeyError`` escaping instead of a typed denial.
        """
        return tuple(
            outcome
            for outcome in self.errors
            if outcome.exc_class is None or not issubclass(outcome.exc_class, self.expected)
        )

    def raise_for_untyped(self) -> None:
        """Raise :class:`AssertionError` listing the untyped errors, if there are any."""
        untyped = self.untyped_errors
        if untyped:
            examples = "; ".join(f"{o.exc_type}: {o.message}" for o in untyped[:5])
            raise AssertionError(
                f"{len(untyped)} of {len(self.outcomes)} calls raised an untyped error "
                f"({examples}); counts: {dict(self.counts())}"
            )


def _rng(seed: int, worker: int) -> random.Random:
    return random.Random(f"{seed}:{worker}")  # noqa: S311 - reproducible load, not secrecy


def _success(call: Call, started: float, origin: float, value: T) -> Outcome[T]:
    now = time.perf_counter()
    return Outcome(call.worker, call.index, True, started - origin, now - started, value)


def _failure(call: Call, started: float, origin: float, error: BaseException) -> Outcome[T]:
    now = time.perf_counter()
    reason = getattr(error, "reason", None)
    return Outcome(
        call.worker,
        call.index,
        False,
        started - origin,
        now - started,
        exc_type=type(error).__name__,
        reason=None if reason is None else str(reason),
        message=str(error),
        exc_class=type(error),
    )


def _check_sizes(workers: int, iterations: int) -> None:
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")


def run_threads(
    fn: Callable[[Call], T],
    *,
    workers: int,
    iterations: int,
    seed: int = 0,
    expected: tuple[type[BaseException], ...] = EXPECTED,
) -> LoadResult[T]:
    """Call ``fn`` ``iterations`` times in each of ``workers`` threads, all at once.

    Args:
        fn: The function under load; it receives a :class:`Call`.
        workers: How many threads call it concurrently.
        iterations: How many calls each thread makes.
        seed: Seeds each worker's ``Call.rng``.
        expected: The exception types that count as typed failures.

    Returns:
        Every outcome, ordered by worker and iteration.

    Raises:
        BaseException: Whatever non-``Exception`` a call raised (``KeyboardInterrupt``,
            ``SystemExit``), after every thread has stopped.
        ValueError: ``workers`` < 1 or ``iterations`` < 0.
    """
    _check_sizes(workers, iterations)
    barrier = threading.Barrier(workers)
    stop = threading.Event()
    recorded: list[list[Outcome[T]]] = [[] for _ in range(workers)]
    fatal: list[BaseException] = []
    origin = time.perf_counter()

    def work(worker: int) -> None:
        rng = _rng(seed, worker)
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return  # another worker could not start: the run is being abandoned
        for index in range(iterations):
            if stop.is_set():
                return
            call = Call(worker, index, rng)
            started = time.perf_counter()
            try:
                value = fn(call)
            except Exception as error:  # noqa: BLE001 - recording it is the point
                recorded[worker].append(_failure(call, started, origin, error))
            except BaseException as error:  # noqa: BLE001 - re-raised by the caller below
                fatal.append(error)
                stop.set()
                return
            else:
                recorded[worker].append(_success(call, started, origin, value))

    threads = [
        threading.Thread(target=work, args=(worker,), name=f"clarity-chaos-load-{worker}")
        for worker in range(workers)
    ]
    started_threads: list[threading.Thread] = []
    try:
        for thread in threads:
            thread.start()
            started_threads.append(thread)
        for thread in started_threads:
            thread.join()
    except BaseException:
        stop.set()
        barrier.abort()
        for thread in started_threads:
            thread.join()
        raise
    if fatal:
        raise fatal[0]
    outcomes = tuple(outcome for worker in recorded for outcome in worker)
    return LoadResult(outcomes, time.perf_counter() - origin, expected)


async def run_tasks(
    fn: Callable[[Call], Awaitable[T]],
    *,
    tasks: int,
    iterations: int,
    seed: int = 0,
    expected: tuple[type[BaseException], ...] = EXPECTED,
) -> LoadResult[T]:
    """Await ``fn`` ``iterations`` times in each of ``tasks`` concurrent tasks.

    At most ``tasks`` calls are in flight at once. A ``CancelledError`` raised by
    ``fn`` itself (for example, from an inner task it awaited) is recorded; a
    cancellation of the run propagates.

    Args:
        fn: The coroutine function under load; it receives a :class:`Call`.
        tasks: How many tasks await it concurrently.
        iterations: How many calls each task makes.
        seed: Seeds each task's ``Call.rng``.
        expected: The exception types that count as typed failures.

    Returns:
        Every outcome, ordered by task and iteration.

    Raises:
        BaseException: Whatever non-``Exception`` a call raised, after every task
            has stopped.
        ValueError: ``tasks`` < 1 or ``iterations`` < 0.
    """
    _check_sizes(tasks, iterations)
    barrier = asyncio.Barrier(tasks)
    recorded: list[list[Outcome[T]]] = [[] for _ in range(tasks)]
    origin = time.perf_counter()

    async def work(worker: int) -> None:
        rng = _rng(seed, worker)
        await barrier.wait()
        for index in range(iterations):
            call = Call(worker, index, rng)
            started = time.perf_counter()
            try:
                value = await fn(call)
            except asyncio.CancelledError as error:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the run itself is being cancelled
                recorded[worker].append(_failure(call, started, origin, error))
            except Exception as error:  # noqa: BLE001 - recording it is the point
                recorded[worker].append(_failure(call, started, origin, error))
            else:
                recorded[worker].append(_success(call, started, origin, value))

    try:
        async with asyncio.TaskGroup() as group:
            for worker in range(tasks):
                group.create_task(work(worker))
    except BaseExceptionGroup as group:
        # Only non-Exception errors escape work(); raise the first as run_threads does.
        raise group.exceptions[0] from None
    outcomes = tuple(outcome for worker in recorded for outcome in worker)
    return LoadResult(outcomes, time.perf_counter() - origin, expected)
