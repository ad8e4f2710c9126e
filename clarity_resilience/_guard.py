"""ModelGuard: one model, its expected digest, a loader, a breaker, and last known good.

The serving model lives in one immutable record swapped by a single reference
assignment, so every prediction reads exactly one complete model, and a reload that
fails verification or loading never replaces what is serving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import pathlib
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    TypeVar,
    Unpack,
    overload,
)

from ._breaker import Breaker
from ._guard_overload import Overload
from ._guard_predict import Predictor, TimedPredictions
from ._loading import deserialize_verified
from ._origin import Origin, OriginKeywords, TrustKeywords, origin_from
from ._origin_directory import DirectoryOrigin
from ._reasons import bytes_refused
from .exceptions import (
    ClarityResilienceError,
    ModelUnavailableError,
)
from .instrumentation import (
    Emitter,
    ModelRegistered,
    ReloadPromoted,
    ReloadRefused,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec
    from prometheus_client import CollectorRegistry

    from ._manifest import Manifest
    from ._signing import PemSource
    from .sources import CachedSource

__all__ = ["ModelGuard", "TimedPredictions"]

#: Seconds a warm-up may take when ``warmup_timeout`` is not given.
DEFAULT_WARMUP_TIMEOUT = 300.0

M = TypeVar("M")


@dataclasses.dataclass(frozen=True, slots=True)
class _Serving(Generic[M]):
    """The verified model that is serving, with what it was verified against."""

    model: M
    sha256: str
    version: str | None
    signer: str | None = None


class ModelGuard(Predictor[M]):
    """Serve one model only from verified bytes, under a circuit breaker.

    Give exactly one origin: ``path`` + ``sha256`` (a file), ``manifest`` + ``path``
    (a directory; ``entry`` names the file to load when the manifest lists several),
    ``signature`` + ``path`` + a trust root (a signed directory),
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
        manifest_sha256: Pin the manifest file's own digest (from your configuration):
            a manifest whose bytes differ is refused (``checksum_mismatch``).
        signature: An OMS signature file (``model.sig``) of the directory ``path``, read
            and authenticated at every load, instead of ``manifest``.
        public_key: The signature's trust root, as for
            :meth:`Manifest.from_signature` (or ``certificate_chain``, or ``identity``
            with ``issuer``); built once, here.
        entries: Load several files (``"*"``, a glob or names): the loader gets a
            read-only ``Mapping[str, bytes]``, only if every file matched.
        materialize_into: A private cache directory: the loader gets the
            ``pathlib.Path`` of a verified snapshot (see :func:`materialize`).
        symlink_root: Allow listed files that are symlinks into this directory (the
            Hugging Face cache layout).
        warmup: ``warmup(model)`` runs on each new version before it is promoted; if it
            raises, the version is refused (``warmup_failed``).
        warmup_timeout: Refuse a version whose warm-up takes longer (seconds; default
            300). The warm-up runs in a daemon thread that is left running if it hangs;
            ``math.inf`` runs it in the loading thread, without a limit.
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
        TypeError: ``origin`` does not implement the origin protocol, or not exactly
            one way to name a signer.
        ManifestError: The key or certificate chain cannot be read or used.
    """

    # One signature per kind of loader input (bytes, several files, a snapshot path), and
    # one without a loader, so that a guard without a loader is a ModelGuard[Any] (auto
    # detects the format at run time) instead of a guard whose type cannot be inferred.
    @overload
    def __init__(
        self,
        name: str,
        *,
        materialize_into: str | os.PathLike[str],
        loader: Callable[[pathlib.Path], M],
        entries: str | Sequence[str] | None = None,
        warmup: Callable[[M], object] | None = None,
        warmup_timeout: float | None = None,
        expected_version: str | None = None,
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
        **origin: Unpack[TrustKeywords],
    ) -> None: ...

    @overload
    def __init__(
        self,
        name: str,
        *,
        entries: str | Sequence[str],
        loader: Callable[[Mapping[str, bytes]], M],
        materialize_into: None = None,
        warmup: Callable[[M], object] | None = None,
        warmup_timeout: float | None = None,
        expected_version: str | None = None,
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
        **origin: Unpack[TrustKeywords],
    ) -> None: ...

    @overload
    def __init__(
        self,
        name: str,
        *,
        loader: Callable[[bytes], M],
        entries: None = None,
        materialize_into: None = None,
        warmup: Callable[[M], object] | None = None,
        warmup_timeout: float | None = None,
        expected_version: str | None = None,
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
        **origin: Unpack[TrustKeywords],
    ) -> None: ...

    @overload
    def __init__(
        self: ModelGuard[Any],
        name: str,
        *,
        loader: None = None,
        entries: None = None,
        materialize_into: None = None,
        warmup: Callable[[Any], object] | None = None,
        warmup_timeout: float | None = None,
        expected_version: str | None = None,
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
        **origin: Unpack[TrustKeywords],
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
        source: CachedSource | None = None,
        origin: Origin | None = None,
        version: str | None = None,
        expected_version: str | None = None,
        manifest_sha256: str | None = None,
        signature: str | os.PathLike[str] | None = None,
        public_key: PemSource | ec.EllipticCurvePublicKey | None = None,
        certificate_chain: PemSource | Iterable[PemSource] | None = None,
        identity: str | None = None,
        issuer: str | None = None,
        entries: str | Sequence[str] | None = None,
        materialize_into: str | os.PathLike[str] | None = None,
        symlink_root: str | os.PathLike[str] | None = None,
        loader: Callable[[Any], M] | None = None,
        warmup: Callable[[M], object] | None = None,
        warmup_timeout: float | None = None,
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
        if warmup_timeout is not None and (warmup is None or not warmup_timeout > 0):
            raise ValueError("warmup_timeout= must be a positive number of seconds, with warmup=")
        if materialize_into is not None and loader is None:
            raise ValueError("materialize_into= needs a loader= that takes a path")
        self.name = name
        self.loader = loader
        self.warmup = warmup
        # Everything is bounded: a warm-up gets a limit unless it is explicitly infinite.
        self.warmup_timeout = DEFAULT_WARMUP_TIMEOUT if warmup_timeout is None else warmup_timeout
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
            manifest_sha256=manifest_sha256,
            signature=signature,
            public_key=public_key,
            certificate_chain=certificate_chain,
            identity=identity,
            issuer=issuer,
            entries=entries,
            materialize_into=materialize_into,
            symlink_root=symlink_root,
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
            "signer": serving.signer if serving else None,
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
        source: CachedSource | None = None,
        origin: Origin | None = None,
        version: str | None = None,
        manifest_sha256: str | None = None,
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
        ``source=`` or ``origin=`` replace the origin; ``manifest=`` with
        ``manifest_sha256=`` pins the new manifest. A new manifest for a guard built
        with ``entries=``, ``materialize_into=`` or ``symlink_root=`` keeps them.

        Raises:
            IntegrityError, ModelLoadError: The new version was refused.
            ValueError: The arguments do not describe one origin.
        """
        if manifest is not None or source is not None or origin is not None:
            # A new manifest for a directory origin keeps what it hands the loader
            # (entries, snapshot, symlink root): the loader expects the same input.
            keep: dict[str, object] = {}
            if manifest is not None and isinstance(self._origin, DirectoryOrigin):
                keep = self._origin.selection()
                if entry is None and "entries" not in keep:
                    entry = self._origin.entry
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
                manifest_sha256=manifest_sha256,
                **keep,
            )
        elif manifest_sha256 is not None:
            raise ValueError("manifest_sha256= pins a new manifest; pass manifest= with it")
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
            warmup=self.warmup,
            warmup_timeout=self.warmup_timeout,
        )
        return _Serving(model, verified.sha256, verified.version, verified.signer)

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
