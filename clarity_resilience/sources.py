"""Remote artifact sources: fetch a model over HTTP into a verified local cache.

:class:`HttpSource` downloads one artifact whose SHA-256 is known in advance. The bytes
are hashed as published (never decoded: ``Content-Encoding`` is not undone) while they
stream into a temporary file in the cache directory; only a download whose digest and
size match is renamed (atomically) to its final name, which is derived from the digest.
A failed or killed download never leaves a file that looks complete, and a stale file
can never be taken for another version. Loading still goes through
:func:`~clarity_resilience.read_verified`, which verifies the bytes it loads.

Every attempt has an overall ``deadline`` besides the socket ``timeout``, so a server
that trickles bytes cannot keep a load busy for long. Transient failures (connect
errors, timeouts, a missed deadline, broken or truncated responses, HTTP 5xx and 429)
are retried with stamina (exponential backoff plus jitter, bounded attempts); nothing
else is. Requires the ``http`` extra (``httpx`` and ``stamina``), imported only
when a source is created.
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
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._atomic import DEFAULT_MODE, atomic_writer
from ._http import (
    DeadlineError,
    StatusError,
    check_number,
    is_transient,
    parse_retry_after,
    redact,
    require_extra,
)
from ._integrity import UNNAMED, normalize_sha256, verify_file
from ._reasons import Reason
from .exceptions import (
    ChecksumMismatchError,
    IntegrityError,
    SizeMismatchError,
)
from .instrumentation import Emitter, IntegrityCheckFailed, IntegrityCheckPassed

if TYPE_CHECKING:
    import httpx
    from prometheus_client import CollectorRegistry

__all__ = ["HttpSource"]

#: Default overall deadline of one download attempt, in seconds.
DEFAULT_DEADLINE = 300.0
# The clock of attempt deadlines (monotonic: a wall-clock jump must not end or extend one).
_clock = time.monotonic


class HttpSource:
    """An artifact fetched over HTTP(S) into a local cache, verified by SHA-256.

    Args:
        url: ``http://`` or ``https://`` address of the artifact.
        sha256: The expected SHA-256 hex digest of the artifact.
        size: The expected size in bytes; caps the download and must match exactly.
        cache_dir: Directory of verified downloads (created if missing). Partial
            downloads are written there too, so the final rename is atomic.
        max_size: Cap on the download when ``size`` is unknown (``None``: no cap).
        timeout: Seconds allowed to connect and for each read (or write) on the socket.
        deadline: Seconds one attempt may take in all (request, headers and the whole
            body), checked as bytes arrive: a server that trickles bytes fails with
            reason ``timeout`` at most ``min(timeout, deadline)`` later.
        attempts: Total attempts for transient failures (1 disables retries).
        wait_initial: Backoff before the first retry, in seconds (doubles each retry).
        wait_max: Longest backoff between attempts, also for a server's ``Retry-After``.
        wait_jitter: Largest random jitter added to each backoff, in seconds.
        client: An ``httpx.Client`` to use (never closed by the source). By default each
            download uses a client of its own that follows redirects and is closed when
            the download ends.
        model: The ``model`` label for metrics and audit events.
        registry: The Prometheus registry to record into (default registry if None).
        filename: Appended to the digest in the cache file name, e.g. ``model.onnx``.

    Raises:
        ValueError: A non-HTTP(S) URL, a malformed digest, or a bad argument.
        ClarityResilienceError: ``httpx`` or ``stamina`` is not installed (it is also an
            ``ImportError``).
    """

    def __init__(
        self,
        url: str,
        *,
        sha256: str,
        size: int | None = None,
        cache_dir: str | os.PathLike[str],
        max_size: int | None = None,
        timeout: float = 5.0,
        deadline: float = DEFAULT_DEADLINE,
        attempts: int = 3,
        wait_initial: float = 0.1,
        wait_max: float = 5.0,
        wait_jitter: float = 1.0,
        client: httpx.Client | None = None,
        model: str = UNNAMED,
        registry: CollectorRegistry | None = None,
        filename: str | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// URL, got {redact(url)!r}")
        for arg, count in (("size", size), ("max_size", max_size), ("attempts", attempts)):
            check_number(arg, count, integer=True, least=1 if arg == "attempts" else 0)
        for arg, seconds in (("wait_initial", wait_initial), ("wait_max", wait_max),
                             ("wait_jitter", wait_jitter), ("timeout", timeout),
                             ("deadline", deadline)):  # fmt: skip
            check_number(arg, seconds, least=1e-3 if arg in ("timeout", "deadline") else 0)
        given: object = deadline  # typed float, but callers may pass None or inf
        if not isinstance(given, int | float) or not math.isfinite(given):
            raise ValueError(f"deadline must be a finite number >= 0.001, got {deadline!r}")
        if size is not None and max_size is not None and size > max_size:
            raise ValueError(f"size {size} exceeds max_size {max_size}")
        if filename is not None and (
            filename in ("", ".", "..") or os.path.basename(filename) != filename
            or "\0" in filename or (os.altsep is not None and os.altsep in filename)
        ):  # fmt: skip
            raise ValueError(f"filename must be a plain file name, got {filename!r}")
        require_extra()
        import httpx

        try:
            httpx.URL(url)
        except httpx.InvalidURL as e:
            raise ValueError(f"invalid url {redact(url)!r}: {e}") from e

        self.url = url
        self.sha256 = normalize_sha256(sha256)
        self.size = size
        self.max_size = max_size
        self.cache_dir = pathlib.Path(cache_dir)
        self.model = model
        self.display_url = redact(url)
        self.attempts = attempts
        self.deadline = float(deadline)
        # No single socket wait may outlast the deadline it is part of.
        self._timeout = httpx.Timeout(min(float(timeout), self.deadline))
        self._waits = (float(wait_initial), float(wait_max), float(wait_jitter))
        self._emitter = Emitter(registry)
        self._client = client
        self._closed = False
        self._lock = threading.Lock()
        name = self.sha256 if filename is None else f"{self.sha256}-{filename}"
        #: Where the verified artifact lives once fetched.
        self.path = self.cache_dir / name

    def __repr__(self) -> str:
        return f"HttpSource({self.display_url!r}, sha256={self.sha256!r})"

    def __enter__(self) -> HttpSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Refuse further downloads; a verified cached copy is still served.

        A client passed to the constructor is never closed by the source.
        """
        with self._lock:
            self._closed = True

    def fetch(
        self, *, model: str | None = None, registry: CollectorRegistry | None = None
    ) -> pathlib.Path:
        """Return the path of a verified local copy, downloading it if needed.

        Args:
            model: Report this fetch under another ``model`` label (and ``registry``)
                than the source's own: a ``ModelGuard`` passes its name and registry,
                so its alerts see the fetches made for it.
            registry: With ``model``: the Prometheus registry to record into.

        A cached copy is used only if it verifies (digest and size); a corrupt one is
        reported, removed and downloaded again. Deserialize with ``read_verified`` on
        the returned path, never by opening it unchecked.

        Raises:
            ChecksumMismatchError: The downloaded bytes have another digest.
            SizeMismatchError: The artifact is larger than the cap, or not ``size`` bytes.
            IntegrityError: ``reason`` ``timeout`` (a socket timeout or the ``deadline``
                on every attempt), ``fetch_error`` (HTTP error status or transport
                failure, after retries for transient ones), ``io_error`` (the cache cannot
                be read or written: a local disk problem, never retried), or the reason
                of a bad cached copy that cannot be removed.
            RuntimeError: The source was closed and the artifact is not cached.
        """
        report = _Report(self.model, self._emitter) if model is None else (
            _Report(model, Emitter(registry))
        )  # fmt: skip
        start = time.perf_counter()
        try:
            cached_size = self._cached(start, report)
            if cached_size is not None:
                report.passed(str(self.path), cached_size, start)
                return self.path
            size = self._download()
        except IntegrityError as e:
            # ``path`` says where it failed: the URL, or the cache file for a local failure.
            report.failed(e.path if e.path is not None else self.display_url, e, start)
            raise
        report.passed(self.display_url, size, start)
        return self.path

    async def fetch_async(
        self, *, model: str | None = None, registry: CollectorRegistry | None = None
    ) -> pathlib.Path:
        """Run :meth:`fetch` in a worker thread, so the event loop never blocks on it.

        Cancelling the caller does not stop the download already under way; it still
        ends in a verified file or in nothing under the final name.
        """
        return await asyncio.to_thread(
            functools.partial(self.fetch, model=model, registry=registry)
        )

    def _cached(self, start: float, report: _Report) -> int | None:
        """Return the size of a verified cached copy, or None; audit and drop a bad one.

        Any failure but "missing" (a bad digest or size, a symlink, FIFO or directory, an
        unreadable file) drops the copy, so a download can replace it.

        Raises:
            IntegrityError: A bad copy that cannot be removed, with the copy's own
                reason (``io_error`` for a cache that cannot be read, e.g. ``cache_dir``
                is a file): no download could be stored in its place.
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
        report.failed(str(self.path), bad, start)
        return None

    def evict(self) -> None:
        """Remove the cached copy (if any), so the next :meth:`fetch` downloads afresh.

        For a caller that found the cached copy bad itself (and has audited that).

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

    @contextlib.contextmanager
    def _client_for_download(self) -> Iterator[httpx.Client]:
        """Yield the user's client, or one made for this download and closed after it.

        Downloads are rare (a load or a reload); a client per download means a source
        handed to ``ModelGuard.reload(source=...)`` and then dropped leaks nothing.
        """
        import httpx

        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            client = self._client
        if client is not None:
            yield client
            return
        with httpx.Client(timeout=self._timeout, follow_redirects=True) as owned:
            yield owned

    def _download(self) -> int:
        """Download with retries on transient errors; return the verified size."""
        import httpx
        import stamina

        attempt_num = 0
        try:
            wait_initial, wait_max, wait_jitter = self._waits
            # timeout=None: ``attempts`` alone bounds the retries (each bounded by
            # ``deadline``); stamina's default 45 s budget would cut a slow download short.
            for attempt in stamina.retry_context(
                on=is_transient,
                attempts=self.attempts,
                timeout=None,
                wait_initial=wait_initial,
                wait_max=wait_max,
                wait_jitter=wait_jitter,
            ):
                with attempt, self._client_for_download() as client:
                    attempt_num = attempt.num
                    return self._download_once(client)
        except StatusError as e:
            raise IntegrityError(
                f"fetching {self.display_url} failed: HTTP {e.status} "
                f"(after {attempt_num} attempt(s))",
                path=self.display_url,
                actual=e.status,
                reason=Reason.FETCH_ERROR,
            ) from e
        except DeadlineError as e:
            raise IntegrityError(
                f"fetching {self.display_url} timed out: not complete within the "
                f"{self.deadline:g} s deadline (after {attempt_num} attempt(s))",
                path=self.display_url,
                expected=self.deadline,
                reason=Reason.TIMEOUT,
            ) from e
        except httpx.HTTPError as e:
            timed_out = isinstance(e, httpx.TimeoutException)
            raise IntegrityError(
                f"fetching {self.display_url} {'timed out' if timed_out else 'failed'}: "
                f"{type(e).__name__}: {e} (after {attempt_num} attempt(s))",
                path=self.display_url,
                reason=Reason.TIMEOUT if timed_out else Reason.FETCH_ERROR,
            ) from e
        except OSError as e:
            # httpx wraps every network error: an OSError here is the local disk's.
            raise IntegrityError(
                f"cannot write {self.path.name} into the cache {self.cache_dir}: "
                f"{e.strerror or e}",
                path=str(self.path),
                reason=Reason.IO_ERROR,
            ) from e
        raise AssertionError("unreachable: stamina re-raises the last failure")

    def _download_once(self, client: httpx.Client) -> int:
        """Make one attempt: stream into a temp file, verify, then rename into place."""
        deadline_at = _clock() + self.deadline
        # The cache is prepared before any request: a local problem costs no traffic.
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # identity: the digest is of the bytes as published, and Content-Length counts
        # them. A server may encode anyway: the raw body is what is hashed and stored.
        headers = {"Accept-Encoding": "identity"}
        with (
            atomic_writer(self.path, mode=DEFAULT_MODE, suffix=".part") as f,
            client.stream("GET", self.url, headers=headers, timeout=self._timeout) as response,
        ):
            if not 200 <= response.status_code <= 299:
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), self._waits[1]
                )
                raise StatusError(response.status_code, retry_after)
            self._check_deadline(deadline_at)
            announced = response.headers.get("Content-Length", "")
            if announced.isdigit():
                self._check_size(int(announced), "announces", final=True)
            hasher = hashlib.sha256()
            total = 0
            # iter_raw, never iter_bytes: no Content-Encoding is undone, so nothing is
            # hashed but the published bytes and no decompression bomb can expand.
            for chunk in response.iter_raw():
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


class _Report:
    """Who a fetch is reported as: a ``model`` label and an emitter (its registry)."""

    __slots__ = ("emitter", "model")

    def __init__(self, model: str, emitter: Emitter) -> None:
        self.model = model
        self.emitter = emitter

    def passed(self, path: str, size: int, start: float) -> None:
        self.emitter.emit(
            IntegrityCheckPassed(
                model=self.model, path=path, size=size, duration=time.perf_counter() - start
            )
        )

    def failed(self, path: str, error: IntegrityError, start: float) -> None:
        self.emitter.emit(
            IntegrityCheckFailed(
                model=self.model,
                path=path,
                reason=error.reason,
                error_type=type(error).__name__,
                detail=str(error),
                duration=time.perf_counter() - start,
            )
        )
