"""A circuit breaker on pybreaker's state machine that never runs user code under a lock.

pybreaker holds its lock while the wrapped function runs (threads queue single file),
has no asyncio support, counts excluded exceptions as successes and lets every caller
through while half-open. So admission is ours: a state check (lock-free while closed)
and a half-open permit count. User code runs outside every lock. Its outcome is then
recorded into pybreaker's state machine with a trivial call, so the thresholds, the
transitions and the storage (memory or Redis) stay pybreaker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar, overload

from ._breaker_guard import BreakerGuard, sync_shielded
from ._rate import RateWindow
from ._redis_storage import RedisStorage  # light: imports redis only when one is built
from .exceptions import CircuitOpenError, InvalidInputError, OverloadedError
from .instrumentation import (
    BreakerOperatorAction,
    BreakerRegistered,
    BreakerStateChanged,
    BreakerStorageFailed,
    Emitter,
)

if TYPE_CHECKING:
    import pybreaker
    from prometheus_client import CollectorRegistry

    from ._breaker_storage import SharedStorage

__all__ = ["Breaker", "ExcludeSpec"]

P = ParamSpec("P")
T = TypeVar("T")

# pybreaker's state names (imported lazily: pybreaker imports redis when it is installed).
CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"
STATES = frozenset({CLOSED, OPEN, HALF_OPEN})

#: An exception type, or a predicate on an exception, whose occurrences are ignored.
ExcludeSpec = type[BaseException] | Callable[[BaseException], bool]

# While the half-open trial runs, nobody knows when the next trial will be: ask callers
# to come back soon; if the trial fails they are told the full reset timeout then.
_TRIAL_IN_FLIGHT_RETRY_AFTER = 1.0
# After a shared storage failed or timed out, it is left alone for this long (the
# breaker goes on from the state it last read).
_STORAGE_RETRY_SECONDS = 1.0
# A breaker forced open by an operator opens again only when released: callers are told
# to come back much later than any reset timeout would suggest.
FORCED_OPEN_RETRY_AFTER = 300.0

_log = logging.getLogger("clarity_resilience")
# time.time() and pybreaker's datetime.now(UTC) are the same clock (time-machine moves
# both); looked up once, as the rejection path reads it on every call.
_now = time.time


class _RecordedFailure(Exception):
    """Stands in for the caller's exception inside pybreaker (whose traceback stays intact)."""


def _succeed() -> None:
    return None


def _fail() -> None:
    raise _RecordedFailure


class Breaker:
    """A circuit breaker for model loading and prediction.

    ``fail_max`` consecutive failures open it; after ``reset_timeout`` seconds it lets
    ``half_open_permits`` trial calls through (others are rejected at once); a trial
    that succeeds closes it, one that fails opens it again for a fresh timeout.

    Failures are exceptions. *Ignored* outcomes neither count as failures nor reset the
    count nor close a half-open breaker: :class:`InvalidInputError` (client faults),
    anything matched by ``exclude``, and ``BaseException`` that is not an ``Exception``
    (``asyncio.CancelledError``, ``KeyboardInterrupt``). An ``exclude`` predicate that
    raises does not match: the call counts as a failure, and the predicate's error is
    logged once per breaker and predicate. The call that trips the breaker re-raises its
    own exception; later calls raise :class:`CircuitOpenError`.

    In *rate mode* (``failure_rate`` given) the consecutive count does not apply: the
    breaker opens when, over the last ``window`` seconds and with at least
    ``minimum_calls`` calls, the share of failures reaches ``failure_rate`` (or the
    share of calls slower than ``slow_call_duration`` reaches ``slow_call_rate``).
    Half-open works the same in both modes. :meth:`force_open` holds the breaker open
    (maintenance) until :meth:`reset`.

    Args:
        name: The breaker's name, used as the ``breaker`` metric label.
        fail_max: Consecutive failures that open the breaker (not in rate mode).
        reset_timeout: Seconds the breaker stays open before a trial call.
        half_open_permits: How many trial calls may run at once while half-open.
        exclude: Exception types or predicates whose outcomes are ignored.
        storage: A :class:`RedisStorage` (one breaker for the whole fleet: shared
            count, one trial), or a pybreaker storage (e.g.
            ``pybreaker.CircuitRedisStorage``) to share state between processes; in
            memory by default. Half-open permits are counted per process. A given
            storage is never called under a lock or on the event loop: see
            ``storage_timeout``.
        storage_timeout: Seconds a call waits for one exchange with ``storage`` (the
            queued writes and a read of the state, on a worker thread). On a timeout
            or error the failure is reported (``BreakerStorageFailed``), the breaker
            goes on from the state it last read, and the storage is left alone for a
            second. A ``RedisStorage`` uses its own ``timeout`` instead.
        registry: The Prometheus registry to record into (default registry if None).
        failure_rate: Rate mode: open when failures / calls in the window reaches this.
        minimum_calls: Rate mode: never open with fewer calls than this in the window.
        window: Rate mode: the sliding window's length in seconds.
        slow_call_duration: Rate mode: calls at least this long (seconds) are slow.
        slow_call_rate: Rate mode: open when slow calls / calls reaches this.

    Raises:
        ValueError: A threshold or timeout is not a positive number, or a rate-mode
            setting is given without ``failure_rate``.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int = 5,
        reset_timeout: float = 60.0,
        half_open_permits: int = 1,
        exclude: Iterable[ExcludeSpec] = (),
        storage: pybreaker.CircuitBreakerStorage | RedisStorage | None = None,
        storage_timeout: float = 0.25,
        registry: CollectorRegistry | None = None,
        failure_rate: float | None = None,
        minimum_calls: int = 20,
        window: float = 60.0,
        slow_call_duration: float | None = None,
        slow_call_rate: float | None = None,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        _check_positive_int("fail_max", fail_max)
        _check_positive_int("half_open_permits", half_open_permits)
        _check_positive_seconds("reset_timeout", reset_timeout)
        _check_positive_seconds("storage_timeout", storage_timeout)
        excluded = tuple(exclude)
        for spec in excluded:
            if not (isinstance(spec, type) and issubclass(spec, BaseException)) and not callable(
                spec
            ):
                raise TypeError(f"exclude takes exception types or predicates, got {spec!r}")
        import pybreaker

        self.name = name
        self.half_open_permits = half_open_permits
        # Shed calls never ran: a traffic spike is not a failure of what the breaker guards.
        self._ignored_types: tuple[type[BaseException], ...] = (
            InvalidInputError,
            OverloadedError,
            *(s for s in excluded if isinstance(s, type)),
        )
        self._predicates = tuple(s for s in excluded if not isinstance(s, type))
        self._broken_predicates: set[int] = set()
        self._emitter = Emitter(registry)
        self._shared: SharedStorage | None = None
        self._storage: pybreaker.CircuitBreakerStorage
        if storage is None:
            self._storage = pybreaker.CircuitMemoryStorage(CLOSED)
        elif isinstance(storage, RedisStorage):
            # Fleet-wide: atomic counting and one trial lease in Redis (_redis_mirror).
            self._shared = storage.attach(
                name=name,
                fail_max=fail_max,
                reset_timeout=float(reset_timeout),
                retry_interval=_STORAGE_RETRY_SECONDS,
                report=self._storage_failed,
            )
            self._shared.sync(trial=False)
            self._storage = self._shared
        else:
            from ._breaker_storage import SharedStorage

            self._shared = SharedStorage(
                storage,
                name=name,
                timeout=float(storage_timeout),
                retry_interval=_STORAGE_RETRY_SECONDS,
                report=self._storage_failed,
            )
            self._shared.sync()  # the shared state, before pybreaker reads it
            self._storage = self._shared
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            state_storage=self._storage,
            name=name,
            throw_new_error_on_trip=False,
        )
        self._reset_seconds = float(reset_timeout)
        self._window: RateWindow | None = None
        if failure_rate is not None:
            # The window reads the same clock as pybreaker's opened_at (UTC now), so
            # time-machine moves both together.
            self._window = RateWindow(
                failure_rate=failure_rate,
                minimum_calls=minimum_calls,
                window=window,
                slow_call_duration=slow_call_duration,
                slow_call_rate=slow_call_rate,
                clock=_now,
            )
        elif slow_call_duration is not None or slow_call_rate is not None:
            raise ValueError("slow_call_duration and slow_call_rate need failure_rate")
        # Only slow-call counting needs each call's duration.
        self._timed = slow_call_duration is not None
        self._forced: str | None = None
        self._deadline: tuple[datetime | None, float] = (None, 0.0)
        self._lock = threading.Lock()
        self._trials = 0
        # Rejections since the last transition (next() on a count is atomic in CPython).
        self._rejections = itertools.count(1)
        self._seen = self._storage.state
        self._emitter.emit(BreakerRegistered(breaker=name, state=self._seen))

    # -- public state ---------------------------------------------------------------

    @property
    def fail_max(self) -> int:
        """Return how many consecutive failures open the breaker."""
        return self._cb.fail_max

    @property
    def reset_timeout(self) -> float:
        """Return how many seconds the breaker stays open before a trial."""
        return float(self._cb.reset_timeout)

    @property
    def rate_window(self) -> RateWindow | None:
        """Return the sliding window of rate mode (None in consecutive-failures mode)."""
        return self._window

    @property
    def forced_open(self) -> str | None:
        """Return the reason given to :meth:`force_open`, or None when not forced."""
        return self._forced

    @property
    def fail_counter(self) -> int:
        """Return the current count of consecutive failures."""
        self._refresh()
        return int(self._storage.counter)

    @property
    def state(self) -> str:
        """Return ``"closed"``, ``"open"`` or ``"half-open"``.

        An open breaker whose timeout has passed reports ``"half-open"``: the next call
        is a trial, even if no call has arrived yet to make the transition. With a
        shared ``storage`` it is read afresh (bounded by ``storage_timeout``), except
        on an event loop's thread, where the state last read is returned.
        """
        self._refresh()
        state = str(self._storage.state)
        if state == OPEN and self._forced is None and self._open_remaining() <= 0:
            return HALF_OPEN
        return state

    def retry_after(self) -> float:
        """Return the seconds until this breaker would admit a call (0.0 if it would now)."""
        self._refresh()
        state = self._storage.state
        if self._forced is not None:
            return FORCED_OPEN_RETRY_AFTER
        if state == OPEN and (self._open_remaining() > 0 or self._may_trial()):
            return max(0.0, self._open_remaining())
        if state in (OPEN, HALF_OPEN) and not self._may_trial():
            # Another process holds the fleet's trial (RedisStorage's lease).
            return min(_TRIAL_IN_FLIGHT_RETRY_AFTER, self._reset_seconds)
        if state == HALF_OPEN and self._trials >= self.half_open_permits:
            return min(_TRIAL_IN_FLIGHT_RETRY_AFTER, self._reset_seconds)
        return 0.0

    # -- calling --------------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` under the breaker and return its result.

        Raises:
            CircuitOpenError: The breaker is open, or its half-open trial is in flight.
            TypeError: ``fn`` returned a coroutine; use :meth:`call_async`.
            BaseException: Whatever ``fn`` raised, after recording the outcome.
        """
        shared = self._shared
        if shared is not None:
            shared.sync()
        trial = self._admit()
        start = _now() if self._timed else 0.0
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record_error(exc, trial, start)
            if shared is not None and shared.has_pending:
                shared.sync()
            raise
        if inspect.isawaitable(result):
            self._release(trial)
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(f"{fn!r} returned an awaitable; use Breaker.call_async")
        self._record_success(trial, start)
        if shared is not None and shared.has_pending:
            shared.sync()
        return result

    async def call_async(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args, **kwargs)`` under the breaker and return its result.

        Cancellation is ignored: it releases a half-open permit without closing the
        breaker and does not count as a failure. A shared ``storage`` is exchanged with
        on a worker thread (awaited, never blocking the event loop).
        """
        shared = self._shared
        if shared is not None:
            await shared.sync_async()
        trial = self._admit()
        start = _now() if self._timed else 0.0
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._record_error(exc, trial, start)
            if shared is not None and shared.has_pending:
                await sync_shielded(shared)
            raise
        self._record_success(trial, start)
        if shared is not None and shared.has_pending:
            await shared.sync_async()
        return result

    def guard(self) -> BreakerGuard:
        """Return a context manager for ``with`` and ``async with`` blocks.

        The block is admitted on entry (raising :class:`CircuitOpenError` if rejected)
        and its outcome recorded on exit.
        """
        return BreakerGuard(self)

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a sync or ``async def`` function so every call runs under the breaker."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call_async(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper

    def __repr__(self) -> str:
        return f"<Breaker {self.name!r} state={self.state!r} failures={self.fail_counter}>"

    # -- admission and recording ----------------------------------------------------

    def _admit(self) -> bool:  # noqa: PLR0912 - the rejection hot path is inlined on purpose
        """Admit a call or raise :class:`CircuitOpenError`; return whether it is a trial."""
        state = self._storage.state
        seen = self._seen
        if state == CLOSED and seen == CLOSED:
            return False  # the hot path: no lock, nothing to record
        if state == OPEN and seen == OPEN and self._forced is None:
            # Open, and the opening already reported: until the timeout has passed
            # nothing can change, so reject without taking the lock. (The hot path of
            # an outage: inlined, and the same opening recognised by identity.)
            cached_at, deadline = self._deadline
            if cached_at is not None and cached_at is self._storage.opened_at:
                remaining = deadline - _now()
            else:
                remaining = self._open_remaining()
            if remaining > 0:
                # The emitter builds the CallRejected event only for a hook that needs it.
                self._emitter.rejected(self.name, OPEN, remaining, next(self._rejections))
                raise CircuitOpenError(self.name, remaining)
        rejected: tuple[str, float] | None = None
        with self._lock:
            state = self._observe()
            forced = self._forced  # read under the lock: the rejection says what decided it
            if state == OPEN:
                remaining = self._open_remaining()
                if forced is not None:
                    rejected = (OPEN, FORCED_OPEN_RETRY_AFTER)
                elif remaining > 0:
                    rejected = (OPEN, remaining)
                elif not self._may_trial():
                    # Another process holds the fleet's one trial (RedisStorage's lease).
                    rejected = (HALF_OPEN, min(_TRIAL_IN_FLIGHT_RETRY_AFTER, self._reset_seconds))
                else:
                    self._cb.half_open()
                    state = self._observe()
            if rejected is None and state == HALF_OPEN:
                if self._trials < self.half_open_permits and self._may_trial():
                    self._trials += 1
                    return True
                rejected = (HALF_OPEN, min(_TRIAL_IN_FLIGHT_RETRY_AFTER, self._reset_seconds))
        if rejected is None:
            return False
        self._reject(*rejected, forced=forced)

    def _reject_if_open(self) -> None:
        """Reject now a call that :meth:`_admit` would reject, without taking a permit.

        The guard asks this before a call waits for a concurrency slot: an open breaker
        rejects before queueing, and a call that is then shed never held a half-open
        permit. (The call is admitted for real, under the lock, once it has a slot.)
        """
        state = self._storage.state
        if state == CLOSED or state != self._seen:
            return  # closed, or a transition not reported yet: _admit decides
        forced = self._forced
        if forced is not None:
            self._reject(OPEN, FORCED_OPEN_RETRY_AFTER, forced)
        if state == OPEN:
            remaining = self._open_remaining()
            if remaining > 0:
                self._reject(OPEN, remaining)
        elif state == HALF_OPEN and self._trials >= self.half_open_permits:
            self._reject(HALF_OPEN, min(_TRIAL_IN_FLIGHT_RETRY_AFTER, self._reset_seconds))

    def _may_trial(self) -> bool:
        """Return whether this process may run a trial (a fleet-wide lease, if shared)."""
        return self._shared is None or self._shared.may_trial()

    def _reject(self, state: str, retry_after: float, forced: str | None = None) -> NoReturn:
        """Report a rejection (outside the lock) and raise :class:`CircuitOpenError`."""
        # The emitter builds the CallRejected event only for a hook that needs one.
        self._emitter.rejected(self.name, state, retry_after, next(self._rejections))
        raise CircuitOpenError(self.name, retry_after, forced=forced)

    def _is_ignored(self, exc: BaseException) -> bool:
        if not isinstance(exc, Exception) or isinstance(exc, self._ignored_types):
            return True
        for predicate in self._predicates:
            try:
                if predicate(exc):
                    return True
            except Exception:  # noqa: BLE001 - a broken predicate must not break the breaker
                # Fail closed: an outcome nobody could classify is a failure.
                self._predicate_failed(predicate, exc)
                return False
        return False

    def _predicate_failed(self, predicate: object, exc: BaseException) -> None:
        """Log a raising ``exclude`` predicate, once per breaker and predicate."""
        key = id(predicate)
        with self._lock:
            if key in self._broken_predicates:
                return
            self._broken_predicates.add(key)
        _log.error(
            "exclude predicate %r of breaker %r raised on %s; the call counts as a failure "
            "(further errors from this predicate are not logged)",
            predicate,
            self.name,
            type(exc).__name__,
            exc_info=True,
        )

    def _record_error(self, exc: BaseException, trial: bool, start: float = 0.0) -> None:
        try:
            ignored = self._is_ignored(exc)
        except BaseException:
            self._release(trial)  # an interrupt in a predicate still frees the permit
            raise
        if ignored:
            self._release(trial)
            return
        window = self._window
        if window is not None and not trial:
            self._record_in_window(window, failed=True, start=start)
            return
        with self._lock:
            if trial:
                self._trials -= 1
            # Stale outcomes are dropped: a call admitted while closed must not reopen a
            # half-open breaker, and nothing extends an open one. (In rate mode only a
            # trial gets here: one that ends after a reset() closed the breaker is stale.)
            state = self._storage.state
            if (state == CLOSED and window is None) or (trial and state == HALF_OPEN):
                with contextlib.suppress(_RecordedFailure):
                    self._cb.call(_fail)
            self._observe()

    def _record_success(self, trial: bool, start: float = 0.0) -> None:
        window = self._window
        if window is not None and not trial:
            self._record_in_window(window, failed=False, start=start)
            return
        if not trial and not self._storage.counter and self._seen == CLOSED:
            return  # nothing to reset: keep the closed-state hot path lock-free
        with self._lock:
            if trial:
                self._trials -= 1
            state = self._storage.state
            if (state == CLOSED and self._storage.counter) or (trial and state == HALF_OPEN):
                self._cb.call(_succeed)
                if self._window is not None:
                    self._window.reset()  # closed again: a fresh window
            self._observe()

    def _record_in_window(self, window: RateWindow, *, failed: bool, start: float) -> None:
        """Rate mode: count a call admitted while closed; open if the window trips."""
        if self._storage.state != CLOSED:
            return  # stale: admitted while closed, ended after the breaker opened
        duration = _now() - start if self._timed else 0.0
        if not window.record(failed=failed, duration=duration):
            return
        with self._lock:
            if self._storage.state == CLOSED:
                self._cb.open()
                window.reset()
            self._observe()

    # -- operator controls ----------------------------------------------------------

    def force_open(self, *, reason: str) -> None:
        """Open the breaker and hold it open until :meth:`reset` (e.g. for maintenance).

        Every call is rejected with :class:`CircuitOpenError` whose ``forced`` says
        ``reason`` and whose ``retry_after`` is a long hint; no trial runs meanwhile.
        Audited: a ``breaker_operator_action`` event and the state transition.

        Args:
            reason: Why (for the audit log and the rejections), e.g. ``"maintenance"``.

        Raises:
            ValueError: ``reason`` is empty.
        """
        if not reason or not isinstance(reason, str):
            raise ValueError(f"reason must be a non-empty str, got {reason!r}")
        with self._lock:
            old = self._observe()
            self._forced = reason
            self._cb.open()
            self._force_shared("open")
            self._observe()
            self._emitter.emit(
                BreakerOperatorAction(
                    breaker=self.name, action="force_open", old_state=old, reason=reason
                )
            )
        self._flush()

    def reset(self) -> None:
        """Close the breaker now: release :meth:`force_open`, forget failures. Audited."""
        with self._lock:
            old = self._observe()
            forced = self._forced
            self._forced = None
            self._cb.close()
            self._force_shared("closed")
            if self._window is not None:
                self._window.reset()
            self._observe()
            self._emitter.emit(
                BreakerOperatorAction(
                    breaker=self.name, action="reset", old_state=old, reason=forced or ""
                )
            )
        self._flush()

    def _force_shared(self, state: str) -> None:
        """Queue an operator's state for the whole fleet (a shared RedisStorage).

        RedisStorage applies it whoever holds the trial lease; the breaker's ordinary
        writes would be ignored without the lease.
        """
        force = getattr(self._shared, "force", None)
        if force is not None:
            force(state)

    def _flush(self) -> None:
        """Send an operator's change to a shared storage (off the lock)."""
        shared = self._shared
        if shared is not None and shared.has_pending:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                shared.sync()

    def _release(self, trial: bool) -> None:
        if trial:
            with self._lock:
                self._trials -= 1

    def _refresh(self) -> None:
        """Read a shared storage afresh, unless on an event loop's thread."""
        shared = self._shared
        if shared is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            shared.sync(trial=False)

    def _storage_failed(self, problem: str, error_type: str, detail: str) -> None:
        self._emitter.emit(
            BreakerStorageFailed(
                breaker=self.name, problem=problem, error_type=error_type, detail=detail
            )
        )

    def _observe(self) -> str:
        """Return the stored state, emitting a transition if it changed (lock held)."""
        state = str(self._storage.state)
        if state not in STATES:  # only a custom in-memory storage can get here
            state = OPEN
        if state != self._seen:
            # Emitted under the lock so hooks see transitions in order; hooks that raise
            # are contained by the emitter and cannot break the breaker.
            try:
                self._emitter.emit(
                    BreakerStateChanged(breaker=self.name, old_state=self._seen, new_state=state)
                )
            finally:
                # Published after the event: the lock-free paths that read _seen (closed
                # calls, rejections while open) never run ahead of the transition's report.
                self._rejections = itertools.count(1)
                self._seen = state
        return state

    def _open_remaining(self) -> float:
        """Return the seconds left before an open breaker admits a trial (clock: UTC now)."""
        opened_at = self._storage.opened_at
        if opened_at is None:
            return 0.0
        cached_at, deadline = self._deadline
        if opened_at != cached_at:  # a new opening (or another process's, via Redis)
            deadline = opened_at.timestamp() + self._reset_seconds
            self._deadline = (opened_at, deadline)
        # time.time() and pybreaker's datetime.now(UTC) are the same clock (time-machine
        # moves both); a float subtraction is cheaper than datetime arithmetic per call.
        return deadline - _now()


def _check_positive_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
