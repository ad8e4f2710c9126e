"""Shared breaker storage (e.g. Redis) kept off the breaker's lock and the event loop.

A breaker reads and writes its state many times per call. With a shared storage each
of those is a network round trip, and a dead peer turns each into a hang (pybreaker's
``CircuitRedisStorage`` also falls back to ``closed`` on any error, silently for the
caller). So :class:`SharedStorage` serves pybreaker's state machine from process
memory (a mirror, never any I/O) and exchanges with the real storage in one batch per
:meth:`SharedStorage.sync`: the queued writes, then a fresh read of the state. The
batch runs on a worker thread, at most one at a time, and the caller waits at most
``timeout`` seconds for it (``await``-ing, from ``call_async``). When the storage fails
or times out, the breaker goes on from the state it last read, counting this
process's own failures, and the storage is left alone for ``retry_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from datetime import UTC, datetime
from typing import Any, NoReturn

import pybreaker

__all__ = ["SharedStorage", "StorageReport"]

# pybreaker's state names (not imported from _breaker: that module imports this one).
STATES = frozenset({"closed", "open", "half-open"})

# Writes queued while an exchange is in flight; beyond that the oldest are dropped
# (the state moves on from this process's mirror either way).
_MAX_PENDING = 1024
# A worker thread with nothing to do for this long exits; the next sync starts another.
_WORKER_IDLE_SECONDS = 30.0
# Distinct unknown state values reported per storage (each once), to stay bounded.
_MAX_REPORTED_STATES = 16

#: ``report(problem, error_type, detail)``: how the breaker learns of a storage failure.
StorageReport = Callable[[str, str, str], None]

_Op = tuple[str, Any]
_Snapshot = tuple[object, int, datetime | None]


class _StorageError(Exception):
    """pybreaker's Redis storage swallowed a Redis error; this carries it out instead."""


class _RaisingLogger:
    """Stands in for ``CircuitRedisStorage.logger``, which it calls in its ``except`` blocks.

    pybreaker answers a Redis error with a fallback value (``closed``, 0, None) and a log
    line. Raising from the logging call turns that silent fallback into an error the
    exchange sees (the Redis error is chained as its ``__context__``).
    """

    def exception(self, msg: str, *args: object, **kwargs: object) -> NoReturn:
        raise _StorageError(msg % args if args else msg)

    error = exception


class _Worker:
    """One daemon thread running storage exchanges (never holds up interpreter exit)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], _Snapshot], Future[_Snapshot]]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], _Snapshot]) -> Future[_Snapshot]:
        future: Future[_Snapshot] = Future()
        with self._lock:
            self._jobs.put((job, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        return future

    def _run(self) -> None:
        while True:
            try:
                job, future = self._jobs.get(timeout=_WORKER_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)


def _apply(storage: pybreaker.CircuitBreakerStorage, op: _Op) -> None:
    name, value = op
    if name == "state":
        storage.state = value
    elif name == "opened_at":
        storage.opened_at = value
    else:
        getattr(storage, name)()


class SharedStorage(pybreaker.CircuitBreakerStorage):
    """Serve pybreaker from a local mirror; exchange with ``remote`` off-lock, on a deadline.

    Args:
        remote: The shared pybreaker storage (e.g. ``CircuitRedisStorage``).
        name: The breaker's name (for the worker thread's name).
        timeout: Seconds a caller waits for one exchange with ``remote``.
        retry_interval: Seconds to leave ``remote`` alone after it failed.
        report: Called (outside every lock) for each failure and unknown state.
    """

    def __init__(
        self,
        remote: pybreaker.CircuitBreakerStorage,
        *,
        name: str,
        timeout: float,
        retry_interval: float,
        report: StorageReport,
    ) -> None:
        super().__init__("shared")
        self.remote = remote
        self.timeout = timeout
        self.retry_interval = retry_interval
        self._report = report
        if isinstance(remote, pybreaker.CircuitRedisStorage):
            remote.logger = _RaisingLogger()  # type: ignore[assignment]
        # The mirror pybreaker reads and writes (see the class docstring).
        self._state = "closed"
        self._counter = 0
        self._success_counter = 0
        self._opened_at: datetime | None = None
        self._worker_name = f"clarity-breaker-storage:{name}"
        self._worker = _Worker(self._worker_name)
        # Guards the fields below; held only for memory operations, never across I/O.
        self._lock = threading.Lock()
        self._pending: collections.deque[_Op] = collections.deque(maxlen=_MAX_PENDING)
        self._in_flight = False
        self._stuck = False
        self._down_until = 0.0
        self._unknown_since: datetime | None = None
        self._reported_states: set[str] = set()
        # A fork (gunicorn --preload) copies this object but not its worker thread, nor
        # the exchange it may have had in flight: the child starts afresh.
        weak_self = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(weak_self))

    def _after_fork(self) -> None:
        """Drop the parent's worker thread and in-flight exchange (in a forked child)."""
        self._worker = _Worker(self._worker_name)
        self._lock = threading.Lock()
        self._in_flight = False
        self._stuck = False

    # -- pybreaker's storage interface: the mirror, plus queued writes ------------------

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._write("state", state)

    @property
    def counter(self) -> int:
        return self._counter

    @property
    def success_counter(self) -> int:
        return self._success_counter

    @property
    def opened_at(self) -> datetime | None:
        return self._opened_at

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        self._write("opened_at", now)

    def increment_counter(self) -> None:
        self._write("increment_counter", None)

    def reset_counter(self) -> None:
        self._write("reset_counter", None)

    def increment_success_counter(self) -> None:
        self._write("increment_success_counter", None)

    def reset_success_counter(self) -> None:
        self._write("reset_success_counter", None)

    def _write(self, name: str, value: Any) -> None:
        with self._lock:
            if name == "state":
                self._state = value
            elif name == "opened_at":
                self._opened_at = value
            elif name == "increment_counter":
                self._counter += 1
            elif name == "reset_counter":
                self._counter = 0
            elif name == "increment_success_counter":
                self._success_counter += 1
            else:
                self._success_counter = 0
            self._pending.append((name, value))

    @property
    def has_pending(self) -> bool:
        """Return whether writes wait to be sent to the shared storage."""
        return bool(self._pending)

    # -- exchanging with the shared storage -------------------------------------------

    def may_trial(self) -> bool:
        """Return whether this process may run a half-open trial (always, here)."""
        return True

    def sync(self, *, trial: bool = True) -> None:
        """Send queued writes and read the shared state, waiting at most ``timeout``.

        Args:
            trial: Whether a call follows (a fleet-wide storage may take the trial
                lease for it); False for a mere look at the state.
        """
        future = self._begin(trial)
        if future is None:
            return
        try:
            snapshot = future.result(timeout=self.timeout)
        except FutureTimeoutError:
            self._failed("timeout", "TimeoutError", f"no answer within {self.timeout:g}s")
            return
        except Exception as exc:  # noqa: BLE001 - any storage error is audited, then survived
            self._failed("error", _type_name(exc), _detail(exc))
            return
        self._accept(snapshot)

    async def sync_async(self, *, trial: bool = True) -> None:
        """Like :meth:`sync`, awaiting the worker instead of blocking the event loop."""
        future = self._begin(trial)
        if future is None:
            return
        try:
            snapshot = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            self._failed("timeout", "TimeoutError", f"no answer within {self.timeout:g}s")
            return
        except Exception as exc:  # noqa: BLE001 - any storage error is audited, then survived
            self._failed("error", _type_name(exc), _detail(exc))
            return
        self._accept(snapshot)

    def _fresh(self) -> bool:
        """Return whether the state last read may still be served (lock held)."""
        return False

    def _begin(self, trial: bool = True) -> Future[_Snapshot] | None:
        """Start one exchange, or return None to go on from the mirror."""
        with self._lock:
            if self._fresh():
                return None  # read recently enough, and nothing to write
            if self._in_flight:
                if not (self._stuck and time.time() >= self._down_until):
                    return None  # another caller's exchange is on its way: don't queue
                # An exchange that timed out is still blocked in the storage client.
                self._down_until = time.time() + self.retry_interval
                blocked = True
            else:
                if time.time() < self._down_until:
                    return None  # the storage failed recently: leave it alone for now
                self._in_flight = True
                ops = tuple(self._pending)
                self._pending.clear()
                blocked = False
        if blocked:
            self._report("timeout", "TimeoutError", "an earlier storage call is still blocked")
            return None
        future = self._worker.submit(lambda: self._exchange(ops, trial))
        future.add_done_callback(self._done)
        return future

    def _exchange(self, ops: tuple[_Op, ...], trial: bool = True) -> _Snapshot:
        """Run on the worker: apply the writes, then read state, counter and opened_at."""
        remote = self.remote
        for op in ops:
            _apply(remote, op)
        return remote.state, int(remote.counter), remote.opened_at

    def _done(self, _future: Future[_Snapshot]) -> None:
        with self._lock:
            self._in_flight = False
            self._stuck = False

    def _failed(self, problem: str, error_type: str, detail: str) -> None:
        with self._lock:
            self._down_until = time.time() + self.retry_interval
            self._stuck = problem == "timeout" and self._in_flight
        logging.getLogger("clarity_resilience").debug(
            "breaker storage %s: %s: %s", problem, error_type, detail
        )
        self._report(problem, error_type, detail)

    def _accept(self, snapshot: _Snapshot) -> None:
        state, counter, opened_at = snapshot
        unknown: str | None = None
        if state not in STATES:
            # Fail closed: an unknown state counts as open, from when it was first seen
            # (or the stored opening time), until a trial writes a valid state back.
            unknown = repr(state)[:80]
            if self._unknown_since is None:
                self._unknown_since = datetime.now(UTC)
            opened_at = opened_at or self._unknown_since
            state = "open"
        else:
            self._unknown_since = None
        first = False
        with self._lock:
            if unknown is not None:
                first = (
                    unknown not in self._reported_states
                    and len(self._reported_states) < _MAX_REPORTED_STATES
                )
                self._reported_states.add(unknown)
            if not self._pending:  # otherwise newer local writes win until they are sent
                self._state = str(state)
                self._counter = counter
                self._opened_at = opened_at
        if unknown is not None and first:
            self._report("unknown_state", "UnknownState", unknown)


def _after_fork(weak_self: weakref.ref[SharedStorage]) -> None:
    storage = weak_self()
    if storage is not None:
        storage._after_fork()


def _type_name(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, _StorageError) and cause is not None:
        return type(cause).__name__
    return type(exc).__name__


def _detail(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    shown = cause if isinstance(exc, _StorageError) and cause is not None else exc
    return str(shown)[:200]
