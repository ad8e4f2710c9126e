"""ModelGuard: one model, its expected digest, a loader, a breaker, and last known good.

The serving model lives in one immutable record swapped by a single reference
assignment, so every prediction reads exactly one complete model, and a reload that
fails verification or loading never replaces what is serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    TypeVar,
    Unpack,
    overload,
)

from ._breaker import Breaker
from ._guard_overload import Overload, check_timeout
from ._loading import deserialize_verified
from ._origin import Origin, OriginKeywords, origin_from
from ._reasons import Reason, bytes_refused
from .exceptions import (
    ClarityResilienceError,
    InvalidInputError,
    ModelUnavailableError,
)
from .instrumentation import (
    Emitter,
    ModelRegistered,
    PredictionFailed,
    PredictionSucceeded,
    ReloadPromoted,
    ReloadRefused,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._manifest import Manifest
    from .sources import HttpSource

__all__ = ["ModelGuard", "TimedPredictions"]

M = TypeVar("M")
R = TypeVar("R")
P = ParamSpec("P")


@dataclasses.dataclass(frozen=True, slots=True)
class _Serving(Generic[M]):
    """The verified model that is serving, with what it was verified against."""

    model: M
    sha256: str
    version: str | None


class ModelGuard(Generic[M]):
    """Serve one model only from verified bytes, under a circuit breaker.

    Give exactly one origin: ``path`` + ``sha256`` (a file), ``manifest`` + ``path``
    (a directory; ``entry`` names the file to load when the manifest lists several),
    ``source`` (a remote artifact such as :class:`~clarity_resilience.sources.HttpSource`),
    or an ``origin`` object. The guard keeps the serving record, the breaker, the swap
    and the last known good model; the origin owns reading and verifying.

    Args:
        name: The model's name: the ``model`` metric label and the breaker's name.
        path: The model file, or with ``manifest`` the model directory.
        sha256: The expected digest of the file.
        size: The expected size of the file in bytes (checked before hashing).
        manifest: A :class:`~clarity_resilience.Manifest`, or the path of one (read
            again at every load, so a reload picks up a new manifest).
        entry: Which manifest entry to load.
        source: A remote source with ``fetch()``, ``evict()``, ``path``, ``sha256`` and
            ``size`` (:class:`~clarity_resilience.sources.HttpSource`).
        origin: Any other :class:`~clarity_resilience._origin.Origin` (instead of the
            keywords above).
        version: A version string to report (defaults to the manifest's version).
        expected_version: With a manifest: refuse (``version_mismatch``) any manifest
            whose model version differs, so a stale or foreign manifest never serves.
        loader: Turns verified bytes into the model (default: ``loaders.auto``, and the
            guard is then typed ``ModelGuard[Any]``).
        breaker: The breaker for loads and predictions (default: a new one, same name).
        registry: The Prometheus registry to record into (default registry if None).
        invalid_input: Exception types that ``fn`` raises for bad input; re-raised as
            :class:`InvalidInputError`, which breakers ignore.
        unavailable_retry_after: ``Retry-After`` seconds while nothing has loaded yet.
        integrity_retry_after: ``Retry-After`` seconds when the last load failed
            integrity checks (digest, size, path, manifest, version) and nothing good is
            serving. A refusal caused by the disk, store or network (``io_error``,
            ``fetch_error``, ``timeout``) or by the loader uses
            ``unavailable_retry_after``.
        timeout: Deadline of a prediction in seconds (None: none); past it the caller
            gets :class:`PredictionTimeoutError`, a breaker failure. Per call:
            :meth:`with_timeout`. See docs/guard.md, "Overload and hung models".
        max_concurrency: Predictions that may run at once (None: no limit); beyond
            that and ``max_queue`` calls are shed with :class:`OverloadedError`.
        max_queue: Predictions that may wait for a slot (with ``max_concurrency``).
        queue_timeout: Longest wait for a slot in seconds (None: no limit).
        max_abandoned: Predictions past their deadline still running (threads cannot
            be killed) beyond which new plain-function calls are shed.
        overloaded_retry_after: ``Retry-After`` seconds of a shed call.

    Raises:
        ValueError: The origin is missing, ambiguous or incomplete, or given a setting
            it does not take (``entry=`` for a file, ``size=`` for a manifest or source).
        TypeError: ``origin`` does not implement the origin protocol.
    """

    # Two signatures so that a guard without a loader is a ModelGuard[Any] (auto detects
    # the format at run time) instead of a guard whose model type cannot be inferred.
    @overload
    def __init__(
        self,
        name: str,
        *,
        expected_version: str | None = None,
        loader: Callable[[bytes], M],
        breaker: Breaker | None = None,
        registry: CollectorRegistry | None = None,
        invalid_input: Iterable[type[Exception]] = (),
        unavailable_retry_after: float = 5.0,
        integrity_retry_after: float = 300.0,
        timeout: float | None = None,
        max_concurrency: int | None = None,
        max_queue: int = 0,
        queue_timeout: float | None = None,
        max_abandoned: int = 16,
        overloaded_retry_after: float = 1.0,
        **origin: Unpack[OriginKeywords],
    ) -> None: ...

    @overload
    def __init__(
        self: ModelGuard[Any],
        name: str,
        *,
        expected_version: str | None = None,
        loader: None = None,
        breaker: Breaker | None = None,
        registry: CollectorRegistry | None = None,
        invalid_input: Iterable[type[Exception]] = (),
        unavailable_retry_after: float = 5.0,
        integrity_retry_after: float = 300.0,
        timeout: float | None = None,
        max_concurrency: int | None = None,
        max_queue: int = 0,
        queue_timeout: float | None = None,
        max_abandoned: int = 16,
        overloaded_retry_after: float = 1.0,
        **origin: Unpack[OriginKeywords],
    ) -> None: ...

    def __init__(
        self,
        name: str,
        *,
        path: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        size: int | None = None,
        manifest: Manifest | str | os.PathLike[str] | None = None,
        entry: str | None = None,
        source: HttpSource | None = None,
        origin: Origin | None = None,
        version: str | None = None,
        expected_version: str | None = None,
        loader: Callable[[bytes], M] | None = None,
        breaker: Breaker | None = None,
        registry: CollectorRegistry | None = None,
        invalid_input: Iterable[type[Exception]] = (),
        unavailable_retry_after: float = 5.0,
        integrity_retry_after: float = 300.0,
        timeout: float | None = None,
        max_concurrency: int | None = None,
        max_queue: int = 0,
        queue_timeout: float | None = None,
        max_abandoned: int = 16,
        overloaded_retry_after: float = 1.0,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.name = name
        self.loader = loader
        self.expected_version = expected_version
        self.registry = registry
        self.breaker = breaker if breaker is not None else Breaker(name, registry=registry)
        self.invalid_input = tuple(invalid_input)
        self.unavailable_retry_after = float(unavailable_retry_after)
        self.integrity_retry_after = float(integrity_retry_after)
        self._origin = origin_from(
            path=path,
            sha256=sha256,
            size=size,
            manifest=manifest,
            entry=entry,
            source=source,
            origin=origin,
            version=version,
            expected_version=expected_version,
        )
        self._serving: _Serving[M] | None = None
        self._last_error: ClarityResilienceError | None = None
        self._load_lock = threading.Lock()
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._loop_locks_guard = threading.Lock()
        self._overload = Overload(
            name,
            timeout=timeout,
            max_concurrency=max_concurrency,
            max_queue=max_queue,
            queue_timeout=queue_timeout,
            max_abandoned=max_abandoned,
            retry_after=overloaded_retry_after,
        )
        self._emitter = Emitter(registry)
        self._emitter.emit(ModelRegistered(model=name))

    # -- state ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Return whether a verified model is serving."""
        return self._serving is not None

    @property
    def model(self) -> M:
        """Return the verified model that is serving.

        Raises:
            ModelUnavailableError: Nothing verified has been loaded (yet).
        """
        serving = self._serving
        if serving is None:
            raise self._unavailable()
        return serving.model

    def status(self) -> dict[str, Any]:
        """Return a summary that is safe to show operators (no paths, digest prefix only)."""
        serving = self._serving
        return {
            "model": self.name,
            "ready": serving is not None,
            "sha256": serving.sha256[:12] if serving else None,
            "version": serving.version if serving else None,
            "breaker": self.breaker.state,
            "last_error": str(self._last_error.reason) if self._last_error else None,
        }

    # -- loading --------------------------------------------------------------------

    def load(self) -> M:
        """Verify and load the configured model, and serve it.

        While nothing is serving, the load runs under the breaker (repeated failures
        open it, and callers are told when to retry). When a model is serving this is
        :meth:`reload` of the configured origin.

        Raises:
            IntegrityError: The bytes failed verification; nothing new is served.
            ModelLoadError: The loader rejected the verified bytes.
            CircuitOpenError: Loads keep failing and the breaker is open.
        """
        return self._swap(self._origin)

    @property
    def origin(self) -> Origin:
        """Return the origin :meth:`load` and a bare :meth:`reload` read (the last good one)."""
        return self._origin

    def reload(
        self,
        *,
        path: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        size: int | None = None,
        manifest: Manifest | str | os.PathLike[str] | None = None,
        entry: str | None = None,
        source: HttpSource | None = None,
        origin: Origin | None = None,
        version: str | None = None,
    ) -> M:
        """Verify and load a new version off the serving path, then swap atomically.

        Predictions keep using the serving model while the new one loads, and switch to
        it in one step. A version that fails is refused: the last known good model keeps
        serving, the refusal is audited (``reload_refused``) and counted, and the origin
        to load next stays the last good one.

        With no arguments the last good (or configured) origin is loaded again (e.g. a
        file rewritten in place with the same expected digest is refused). Keywords
        change that origin (``path=``/``sha256=``/``size=`` for a file, ``path=``/
        ``entry=`` for a manifest's directory and entry, ``version=`` for any); a new
        file without ``size=`` has no size pinned. ``manifest=`` (with ``path=``),
        ``source=`` or ``origin=`` replace the origin.

        Raises:
            IntegrityError, ModelLoadError: The new version was refused.
            ValueError: The arguments do not describe one origin.
        """
        if manifest is not None or source is not None or origin is not None:
            new = origin_from(
                path=path,
                sha256=sha256,
                size=size,
                manifest=manifest,
                entry=entry,
                source=source,
                origin=origin,
                version=version,
                expected_version=self.expected_version,
            )
        else:
            new = self._origin.replaced(
                path=path, sha256=sha256, size=size, entry=entry, version=version
            )
        return self._swap(new)

    async def load_async(self) -> M:
        """Run :meth:`load` in a worker thread: hashing never blocks the event loop.

        Concurrent async loads and reloads wait for each other as coroutines, not as
        threads, so a burst of reloads cannot use up the event loop's thread pool (which
        ``predict_async`` needs for plain functions).
        """
        async with self._async_load_lock():
            return await asyncio.to_thread(self.load)

    async def reload_async(self, **changes: Unpack[OriginKeywords]) -> M:
        """Run :meth:`reload` in a worker thread (same keywords; see :meth:`load_async`)."""
        async with self._async_load_lock():
            return await asyncio.to_thread(functools.partial(self.reload, **changes))

    def _async_load_lock(self) -> asyncio.Lock:
        """Return this guard's load lock for the running event loop (one per loop)."""
        loop = asyncio.get_running_loop()
        with self._loop_locks_guard:
            lock = self._loop_locks.get(loop)
            if lock is None:
                lock = self._loop_locks[loop] = asyncio.Lock()
            return lock

    def _swap(self, origin: Origin) -> M:
        with self._load_lock:  # one load at a time; predictions never take this lock
            serving = self._serving
            try:
                if serving is None:
                    loaded = self.breaker.call(self._load, origin)
                else:
                    # A refused reload must not open the breaker of a healthy model.
                    loaded = self._load(origin)
            except ClarityResilienceError as e:
                self._last_error = e
                if serving is not None:
                    self._emitter.emit(
                        ReloadRefused(
                            model=self.name, reason=e.reason, serving_sha256=serving.sha256
                        )
                    )
                raise
            self._serving = loaded
            self._origin = origin
            self._last_error = None
            if serving is not None:
                self._emitter.emit(
                    ReloadPromoted(
                        model=self.name,
                        old_sha256=serving.sha256,
                        new_sha256=loaded.sha256,
                        version=loaded.version,
                    )
                )
            return loaded.model

    def _load(self, origin: Origin) -> _Serving[M]:
        model, verified = deserialize_verified(
            lambda: origin.read(model=self.name, registry=self.registry),
            loader=self.loader,
            model=self.name,
            registry=self.registry,
        )
        return _Serving(model, verified.sha256, verified.version)

    # -- predicting -----------------------------------------------------------------

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

    def _unavailable(self) -> ModelUnavailableError:
        last = self._last_error
        if last is None:
            error = ModelUnavailableError(
                f"model {self.name!r} has no verified version loaded",
                retry_after=self.unavailable_retry_after,
            )
        else:
            long_wait = bytes_refused(last.reason)
            error = ModelUnavailableError(
                f"model {self.name!r} has nothing verified to serve (last load: {last.reason})",
                retry_after=self.integrity_retry_after
                if long_wait
                else self.unavailable_retry_after,
                reason=last.reason,
            )
        error.__cause__ = last
        return error

    def __repr__(self) -> str:
        state = "ready" if self.ready else "unavailable"
        origin = self._origin.describe()
        return (
            f"<ModelGuard {self.name!r} {state} origin={origin!r} breaker={self.breaker.state!r}>"
        )


class TimedPredictions(Generic[M]):
    """Predictions of one guard with their own deadline (see :meth:`ModelGuard.with_timeout`)."""

    __slots__ = ("_guard", "timeout")

    def __init__(self, guard: ModelGuard[M], timeout: float) -> None:
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
