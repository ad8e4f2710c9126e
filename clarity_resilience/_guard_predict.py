"""The prediction path of :class:`~clarity_resilience.ModelGuard`: breaker, limit, deadline.

A mixin, so that ``_guard.py`` keeps serving and loading and this module keeps running
predictions: on the serving model, under the breaker, within the guard's concurrency
limit and deadline (:mod:`clarity_resilience._guard_overload`), with every outcome
reported (and ``prediction_in_flight`` moved where the work really runs).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
    overload,
)

from ._guard_overload import check_timeout
from ._reasons import Reason
from .exceptions import ClarityResilienceError, InvalidInputError, ModelUnavailableError
from .instrumentation import PredictionFailed, PredictionSucceeded

if TYPE_CHECKING:
    from ._breaker import Breaker
    from ._guard_overload import Overload
    from .instrumentation import Emitter

__all__ = ["Predictor", "TimedPredictions"]

M = TypeVar("M")
M_co = TypeVar("M_co", covariant=True)
R = TypeVar("R")
P = ParamSpec("P")


class _Serving(Protocol[M_co]):
    """What a prediction reads of the serving record: the model."""

    @property
    def model(self) -> M_co: ...


class Predictor(Generic[M]):
    """Prediction methods of :class:`~clarity_resilience.ModelGuard` (a mixin)."""

    # Set by ModelGuard.__init__.
    name: str
    breaker: Breaker
    invalid_input: tuple[type[Exception], ...]
    _serving: _Serving[M] | None
    _overload: Overload
    _emitter: Emitter

    def _unavailable(self) -> ModelUnavailableError:
        """Return the error saying why nothing serves (the guard knows: it loads)."""
        raise NotImplementedError

    def predict(
        self, fn: Callable[Concatenate[M, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run ``fn(model, *args, **kwargs)`` on the serving model, under the breaker.

        With ``timeout`` the call runs in the guard's worker pool and the caller is
        released at the deadline; with ``max_concurrency`` it waits for a slot first.

        Raises:
            ModelUnavailableError: Nothing verified is serving.
            CircuitOpenError: The breaker is open.
            OverloadedError: Shed by the concurrency limit (never a breaker failure).
            PredictionTimeoutError: ``fn`` ran past the deadline (a breaker failure).
            InvalidInputError: ``fn`` rejected its input (the breaker ignores it).
            Exception: Whatever ``fn`` raised, counted as a failure.
        """
        return self._predict(fn, args, kwargs, self._overload.timeout)

    def with_timeout(self, seconds: float) -> TimedPredictions[M]:
        """Return predictions with their own deadline: ``guard.with_timeout(2).predict(fn, x)``.

        A separate step, not a keyword of :meth:`predict`, so it can never collide with
        a keyword argument of ``fn``.

        Raises:
            ValueError: ``seconds`` is not a positive, finite number.
        """
        return TimedPredictions(self, check_timeout(seconds))

    def _predict(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> R:
        start = time.perf_counter()
        serving = self._serving  # one read: the whole call uses this one model
        try:
            if serving is None:
                raise self._unavailable()
            model = serving.model
            limit = self._overload.limit
            if limit is None and timeout is None:
                result = self.breaker.call(self._run_counted, fn, model, args, kwargs)
            else:
                result = self._predict_bounded(fn, model, args, kwargs, timeout)
        except Exception as exc:
            self._failed(exc, start)
            raise
        self._emitter.emit(PredictionSucceeded(model=self.name, duration=_since(start)))
        return result

    def _predict_bounded(
        self,
        fn: Callable[..., R],
        model: M,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> R:
        limit = self._overload.limit
        if limit is not None:
            # Order matters: an open breaker rejects before the call queues, and the
            # breaker admits (taking a half-open permit) only once the call has a slot,
            # so a shed call never holds a permit. No lock is held while fn runs.
            self.breaker._reject_if_open()
            limit.acquire()
        try:
            if timeout is None:
                return self.breaker.call(self._run_counted, fn, model, args, kwargs)
            work = functools.partial(self._run_counted, fn, model, args, kwargs)
            return self.breaker.call(self._overload.deadline(timeout).run, work, timeout)
        finally:
            if limit is not None:
                limit.release()

    # Coroutine, not Awaitable: for an ``async def`` fn both overloads match, and only
    # with identical parameter types does mypy pick the first instead of answering Any
    # when fn's signature mentions Any (as ``NDArray[Any]`` does).
    @overload
    async def predict_async(
        self,
        fn: Callable[Concatenate[M, P], Coroutine[Any, Any, R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R: ...

    @overload
    async def predict_async(
        self, fn: Callable[Concatenate[M, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...

    async def predict_async(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Await ``fn(model, *args, **kwargs)`` under the breaker and return its result.

        ``fn`` may be ``async def``; a plain function runs in a worker thread so that
        inference never blocks the event loop (an awaitable it returns is awaited, so
        the result is always the awaited value). Cancellation is not a failure. At the
        deadline the awaiting caller is released: an ``async def`` fn is cancelled, a
        plain one runs on in its thread (abandoned, counted in ``prediction_in_flight``).
        """
        return await self._predict_async(fn, args, kwargs, self._overload.timeout)

    async def _predict_async(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        start = time.perf_counter()
        serving = self._serving
        limit = self._overload.limit
        try:
            if serving is None:
                raise self._unavailable()
            if limit is not None:
                self.breaker._reject_if_open()  # before queueing (see _predict_bounded)
                await limit.acquire_async()
            try:
                result = await self.breaker.call_async(
                    self._run_async_bounded, fn, serving.model, args, kwargs, timeout
                )
            finally:
                if limit is not None:
                    limit.release()
        except Exception as exc:
            self._failed(exc, start)
            raise
        self._emitter.emit(PredictionSucceeded(model=self.name, duration=_since(start)))
        return result

    async def _run_async_bounded(
        self,
        fn: Callable[..., Any],
        model: M,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        if inspect.iscoroutinefunction(fn):
            work = self._run_async_counted(fn, model, args, kwargs)
            if timeout is None:
                return await work
            # A coroutine can be cancelled: at the deadline nothing runs on.
            return await self._overload.deadline(timeout).await_within(work, timeout)
        if timeout is None:
            return await self._run_in_thread(fn, model, args, kwargs)
        deadline = self._overload.deadline(timeout)
        started = time.monotonic()
        result = await deadline.run_async(
            functools.partial(self._run_counted, fn, model, args, kwargs), timeout
        )
        if inspect.isawaitable(result):  # a plain function that returned an awaitable
            left = max(timeout - (time.monotonic() - started), 1e-3)
            return await deadline.await_within(self._await_result(result), left)
        return result

    def _run_counted(
        self, fn: Callable[..., R], model: M, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        """Run ``fn`` where it runs (maybe a worker past its caller's deadline), counted."""
        emitter = self._emitter
        emitter.in_flight(self.name, 1)
        try:
            return self._run(fn, model, args, kwargs)
        finally:
            emitter.in_flight(self.name, -1)

    async def _run_async_counted(
        self,
        fn: Callable[..., Awaitable[R]],
        model: M,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        emitter = self._emitter
        emitter.in_flight(self.name, 1)
        try:
            return await self._run_async(fn, model, args, kwargs)
        finally:
            emitter.in_flight(self.name, -1)

    async def _await_result(self, result: Awaitable[R]) -> R:
        try:
            return await result
        except self.invalid_input as e:
            raise InvalidInputError(str(e) or type(e).__name__) from e

    def _run(
        self, fn: Callable[..., R], model: M, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        try:
            return fn(model, *args, **kwargs)
        except self.invalid_input as e:
            raise InvalidInputError(str(e) or type(e).__name__) from e

    async def _run_async(
        self,
        fn: Callable[..., Awaitable[R]],
        model: M,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        try:
            return await fn(model, *args, **kwargs)
        except self.invalid_input as e:
            raise InvalidInputError(str(e) or type(e).__name__) from e

    async def _run_in_thread(
        self, fn: Callable[..., Any], model: M, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = await asyncio.to_thread(self._run_counted, fn, model, args, kwargs)
        if inspect.isawaitable(result):  # a plain function that returned an awaitable
            return await self._await_result(result)
        return result

    def _failed(self, exc: Exception, start: float) -> None:
        self._emitter.emit(
            PredictionFailed(
                model=self.name,
                reason=_reason_of(exc),
                error_type=type(exc).__name__,
                duration=_since(start),
            )
        )


class TimedPredictions(Generic[M]):
    """Predictions of one guard with their own deadline (see :meth:`ModelGuard.with_timeout`)."""

    __slots__ = ("_guard", "timeout")

    def __init__(self, guard: Predictor[M], timeout: float) -> None:
        self._guard = guard
        self.timeout = timeout

    def predict(
        self, fn: Callable[Concatenate[M, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run :meth:`ModelGuard.predict` with this deadline."""
        return self._guard._predict(fn, args, kwargs, self.timeout)

    @overload
    async def predict_async(
        self,
        fn: Callable[Concatenate[M, P], Coroutine[Any, Any, R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> R: ...

    @overload
    async def predict_async(
        self, fn: Callable[Concatenate[M, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...

    async def predict_async(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Await :meth:`ModelGuard.predict_async` with this deadline."""
        return await self._guard._predict_async(fn, args, kwargs, self.timeout)


def _reason_of(exc: BaseException) -> Reason:
    if isinstance(exc, ClarityResilienceError):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return Reason.TIMEOUT
    return Reason.INTERNAL


def _since(start: float) -> float:
    return time.perf_counter() - start
