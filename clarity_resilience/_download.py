"""The one download core of remote sources: verified cache, lock, stream, retries, audit.

:class:`CachedSource` holds everything :class:`~clarity_resilience.sources.HttpSource`
and :class:`~clarity_resilience.sources.FsspecSource` share: the digest-named cache path,
verification of a cached copy (``_integrity.verify_file``), a per-artifact file lock so
one host downloads once, streaming SHA-256 with a size cap and an overall deadline into
an atomic write, retries with jitter (stamina) on transient failures only, and typed,
audited failures. A transport only implements :meth:`CachedSource._open` (a byte stream
for the artifact) and says which of its failures are transient and how to name them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import math
import os
import pathlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO, ClassVar

from ._atomic import DEFAULT_MODE, atomic_writer
from ._http import DeadlineError, check_number
from ._integrity import normalize_sha256, verify_file
from ._outcome import Attempt
from ._reasons import Reason
from .exceptions import ChecksumMismatchError, IntegrityError, SizeMismatchError
from .instrumentation import Emitter

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["DEFAULT_DEADLINE", "Body", "CachedSource", "LocalError"]

#: Default overall deadline of one download attempt, in seconds.
DEFAULT_DEADLINE = 300.0
# The clock of attempt deadlines (monotonic: a wall-clock jump must not end or extend one).
_clock = time.monotonic
# How often a process waiting for another one's download looks at the lock again.
_LOCK_POLL = 0.05


class Body:
    """An open artifact stream: the size the store announces (if any) and its chunks."""

    __slots__ = ("chunks", "size")

    def __init__(self, size: int | None, chunks: Iterable[bytes]) -> None:
        self.size = size
        self.chunks = chunks


class LocalError(Exception):
    """The local cache failed (create, write or commit the file): never the transport.

    Transport failures propagate as raised (stamina's retry hooks see them); a local
    ``OSError`` is wrapped in this, so it is never taken for a network error.
    """

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class CachedSource:
    """An artifact fetched into a local cache and verified by SHA-256 (the shared core).

    Subclasses set :attr:`display_url` (credential-free) and implement :meth:`_open`,
    :meth:`_transient` and :meth:`_failure`. The arguments mean what the public
    sources document.
    """

    #: The extra a transport needs, named in errors (``http``, ``s3``...).
    kind: ClassVar[str] = "source"

    def __init__(
        self,
        display_url: str,
        *,
        sha256: str,
        size: int | None,
        cache_dir: str | os.PathLike[str],
        max_size: int | None,
        timeout: float,
        deadline: float,
        attempts: int,
        wait_initial: float,
        wait_max: float,
        wait_jitter: float,
        model: str,
        registry: CollectorRegistry | None,
        filename: str | None,
        lock_timeout: float | None,
    ) -> None:
        for arg, count in (("size", size), ("max_size", max_size), ("attempts", attempts)):
            check_number(arg, count, integer=True, least=1 if arg == "attempts" else 0)
        for arg, seconds in (("wait_initial", wait_initial), ("wait_max", wait_max),
                             ("wait_jitter", wait_jitter), ("timeout", timeout),
                             ("deadline", deadline), ("lock_timeout", lock_timeout)):  # fmt: skip
            check_number(arg, seconds, least=0 if arg.startswith("wait") else 1e-3)
        for arg, given in (("deadline", deadline), ("lock_timeout", lock_timeout)):
            # Typed float, but callers may pass None or inf: nothing unbounded.
            if (arg == "deadline" or given is not None) and (
                not isinstance(given, int | float) or not math.isfinite(given)
            ):
                raise ValueError(f"{arg} must be a finite number >= 0.001, got {given!r}")
        if size is not None and max_size is not None and size > max_size:
            raise ValueError(f"size {size} exceeds max_size {max_size}")
        if filename is not None and (
            filename in ("", ".", "..") or os.path.basename(filename) != filename
            or "\0" in filename or (os.altsep is not None and os.altsep in filename)
        ):  # fmt: skip
            raise ValueError(f"filename must be a plain file name, got {filename!r}")
        self.display_url = display_url
        self.sha256 = normalize_sha256(sha256)
        self.size = size
        self.max_size = max_size
        self.cache_dir = pathlib.Path(cache_dir)
        self.model = model
        self.attempts = attempts
        self.deadline = float(deadline)
        #: Seconds a fetch waits for another process's download of the same artifact.
        self.lock_timeout = self.deadline if lock_timeout is None else float(lock_timeout)
        # No single socket wait may outlast the deadline it is part of.
        self.timeout = min(float(timeout), self.deadline)
        self._waits = (float(wait_initial), float(wait_max), float(wait_jitter))
        self._emitter = Emitter(registry)
        self._closed = False
        self._lock = threading.Lock()
        name = self.sha256 if filename is None else f"{self.sha256}-{filename}"
        #: Where the verified artifact lives once fetched.
        self.path = self.cache_dir / name
        #: The per-artifact lock file: one download per host (flock: freed if its holder dies).
        self.lock_path = self.cache_dir / f".{name}.lock"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display_url!r}, sha256={self.sha256!r})"

    def __enter__(self) -> CachedSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Refuse further downloads; a verified cached copy is still served."""
        with self._lock:
            self._closed = True

    # -- transport hooks ----------------------------------------------------------------

    def _open(self, deadline_at: float) -> contextlib.AbstractContextManager[Body]:
        """Open a byte stream for the artifact (the one thing a transport does)."""
        raise NotImplementedError

    def _transient(self, cause: BaseException) -> bool | float:
        """Return whether ``cause`` may pass on a retry; a float is a store-given backoff."""
        raise NotImplementedError

    def _failure(self, cause: BaseException) -> tuple[str, Reason, object]:
        """Return ``(problem, reason, actual)`` describing a transport failure."""
        raise NotImplementedError

    # -- fetch --------------------------------------------------------------------------

    def fetch(
        self, *, model: str | None = None, registry: CollectorRegistry | None = None
    ) -> pathlib.Path:
        """Return the path of a verified local copy, downloading it if needed.

        Args:
            model: Report this fetch under another ``model`` label (and ``registry``)
                than the source's own: a ``ModelGuard`` passes its name and registry.
            registry: With ``model``: the Prometheus registry to record into.

        Raises:
            ChecksumMismatchError: The bytes (or the store's own checksum) differ.
            SizeMismatchError: The artifact is larger than the cap, or not ``size`` bytes.
            IntegrityError: ``timeout``, ``fetch_error`` or ``io_error`` (see the docs).
            RuntimeError: The source was closed and the artifact is not cached.
        """
        report = (
            Attempt(self.model, emitter=self._emitter)
            if model is None
            else Attempt(model, registry)
        )
        start = time.perf_counter()
        try:
            cached_size = self._cached(start, report)
            if cached_size is None:
                with self._host_lock():
                    # Another process may have completed it while this one waited.
                    cached_size = self._cached(start, report)
                    if cached_size is None:
                        size = self._download()
                        report.check_passed(self.display_url, size)
                        return self.path
        except IntegrityError as e:
            report.check_failed(e.path if e.path is not None else self.display_url, e)
            raise
        report.check_passed(str(self.path), cached_size)
        return self.path

    async def fetch_async(
        self, *, model: str | None = None, registry: CollectorRegistry | None = None
    ) -> pathlib.Path:
        """Run :meth:`fetch` in a worker thread, so the event loop never blocks on it."""
        return await asyncio.to_thread(
            functools.partial(self.fetch, model=model, registry=registry)
        )

    @contextlib.contextmanager
    def _host_lock(self) -> Iterator[None]:
        """Hold the artifact's file lock: one download per host, the others wait.

        Raises:
            IntegrityError: ``timeout`` after ``lock_timeout`` seconds of waiting;
                ``io_error`` when the lock file cannot be created.
            RuntimeError: The source was closed.
        """
        import filelock

        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(self.lock_path, thread_local=False)
            lock.acquire(timeout=self.lock_timeout, poll_interval=_LOCK_POLL)
        except filelock.Timeout as e:
            raise IntegrityError(
                f"fetching {self.display_url} timed out: another process held the "
                f"download lock for more than {self.lock_timeout:g} s",
                path=self.display_url,
                expected=self.lock_timeout,
                reason=Reason.TIMEOUT,
            ) from e
        except OSError as e:
            raise self._io_error(e) from e
        try:
            yield
        finally:
            lock.release()

    def _io_error(self, e: OSError) -> IntegrityError:
        return IntegrityError(
            f"cannot write {self.path.name} into the cache {self.cache_dir}: {e.strerror or e}",
            path=str(self.path),
            reason=Reason.IO_ERROR,
        )

    def _cached(self, start: float, report: Attempt) -> int | None:
        """Return the size of a verified cached copy, or None; audit and drop a bad one.

        Raises:
            IntegrityError: A bad copy that cannot be removed, with the copy's reason.
        """
        try:
            return verify_file(self.path, sha256=self.sha256, size=self.size)
        except IntegrityError as e:
            if e.reason is Reason.MISSING:
                return None
            bad = e
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            # Never served, never replaced: the fetch fails for the copy's own reason.
            raise type(bad)(
                f"{bad}; the cached copy cannot be removed: {e.strerror or e}",
                path=str(self.path),
                expected=bad.expected,
                actual=bad.actual,
                reason=bad.reason,
            ) from e
        # Corruption or tampering in the cache is worth an alert even though a fresh
        # download may still succeed.
        report.check_failed(str(self.path), bad)
        return None

    def evict(self) -> None:
        """Remove the cached copy (if any), so the next :meth:`fetch` downloads afresh.

        Raises:
            IntegrityError: ``io_error``: the copy exists but cannot be removed.
        """
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise IntegrityError(
                f"cannot remove the cached copy {self.path}: {e.strerror or e}",
                path=str(self.path),
                reason=Reason.IO_ERROR,
            ) from e

    def _download(self) -> int:
        """Download with retries on transient errors; return the verified size."""
        import stamina

        attempt_num = 0
        wait_initial, wait_max, wait_jitter = self._waits
        try:
            # timeout=None: ``attempts`` alone bounds the retries (each bounded by
            # ``deadline``); stamina's default 45 s budget would cut a slow download short.
            for attempt in stamina.retry_context(
                on=self._retryable,
                attempts=self.attempts,
                timeout=None,
                wait_initial=wait_initial,
                wait_max=wait_max,
                wait_jitter=wait_jitter,
            ):
                with attempt:
                    attempt_num = attempt.num
                    return self._download_once()
        except DeadlineError as e:
            raise IntegrityError(
                f"fetching {self.display_url} timed out: not complete within the "
                f"{self.deadline:g} s deadline (after {attempt_num} attempt(s))",
                path=self.display_url,
                expected=self.deadline,
                reason=Reason.TIMEOUT,
            ) from e
        except LocalError as e:
            raise self._io_error(e.cause) from e.cause
        except IntegrityError:
            raise
        except Exception as e:
            # Whatever else a transport raised: typed, audited, never a raw exception.
            problem, reason, actual = self._failure(e)
            raise IntegrityError(
                f"fetching {self.display_url} {problem} (after {attempt_num} attempt(s))",
                path=self.display_url,
                actual=actual,
                reason=reason,
            ) from e
        raise AssertionError("unreachable: stamina re-raises the last failure")

    def _retryable(self, exc: Exception) -> bool | float:
        if isinstance(exc, DeadlineError):
            return True  # a slow path may be faster next time, like a read timeout
        if isinstance(exc, IntegrityError | LocalError):
            return False
        return self._transient(exc)

    def _download_once(self) -> int:
        """Make one attempt: stream into a temp file, verify, then rename into place."""
        deadline_at = _clock() + self.deadline
        # The temporary file is opened before any request: a local problem costs no traffic.
        with _cache_file(self.path) as f, self._open(deadline_at) as body:
            self._check_deadline(deadline_at)
            if body.size is not None:
                self._check_size(body.size, "announces", final=True)
            hasher = hashlib.sha256()
            total = 0
            for chunk in body.chunks:
                total += len(chunk)
                self._check_size(total, "sent at least", final=False)
                self._check_deadline(deadline_at)
                hasher.update(chunk)
                f.write(chunk)
            self._check_size(total, "sent", final=True)
            actual = hasher.hexdigest()
            if not hmac.compare_digest(actual, self.sha256):
                raise ChecksumMismatchError(
                    f"{self.display_url} has SHA-256 {actual}, expected {self.sha256}",
                    path=self.display_url,
                    expected=self.sha256,
                    actual=actual,
                )
        return total

    def _check_deadline(self, deadline_at: float) -> None:
        """Raise :class:`DeadlineError` once the attempt's deadline has passed."""
        if _clock() > deadline_at:
            raise DeadlineError(f"attempt not complete within {self.deadline:g} s")

    def _check_size(self, count: int, what: str, *, final: bool) -> None:
        """Refuse ``count`` bytes over the cap, or (``final``) other than ``size``."""
        cap = self.size if self.size is not None else self.max_size
        if cap is not None and count > cap:
            expected, problem = cap, f"over the {cap}-byte cap"
        elif final and self.size is not None and count != self.size:
            expected, problem = self.size, f"expected {self.size}"
        else:
            return
        raise SizeMismatchError(
            f"{self.display_url} {what} {count} bytes, {problem}",
            path=self.display_url,
            expected=expected,
            actual=count,
        )


class _CacheFile:
    """The temporary file of a download; a failed write is a :class:`LocalError`."""

    __slots__ = ("_file",)

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as e:
            raise LocalError(e) from e


@contextlib.contextmanager
def _cache_file(path: pathlib.Path) -> Iterator[_CacheFile]:
    """Yield an atomic writer for ``path``; its own failures (create, commit) are local.

    An exception from the ``with`` body (the transport's, or a refusal) passes through
    untouched; only ``atomic_writer``'s own ``OSError`` becomes a :class:`LocalError`.
    """
    in_body = False
    try:
        with atomic_writer(path, mode=DEFAULT_MODE, suffix=".part") as f:
            in_body = True
            yield _CacheFile(f)
            in_body = False
    except OSError as e:
        if in_body:
            raise
        raise LocalError(e) from e
