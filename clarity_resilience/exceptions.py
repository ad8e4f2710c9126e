"""Exceptions raised by clarity-resilience.

Every exception shares one root, so serving code can catch "anything this library
denied" in one clause::

    ClarityResilienceError
    ├── IntegrityError            digest/size mismatch, unsafe path, bad manifest, missing file
    │   ├── ChecksumMismatchError
    │   ├── SizeMismatchError
    │   └── ManifestError
    ├── ModelLoadError            verified bytes that the loader rejects; refused unsafe format
    ├── InvalidInputError         the caller's input is bad (-> 422); ignored by breakers
    ├── PredictionTimeoutError    a prediction ran past its deadline (a model failure)
    └── ModelUnavailableError     nothing verified is serving (carries retry_after)
        ├── CircuitOpenError      the breaker rejected the call (carries retry_after)
        └── OverloadedError       shed: concurrency limit and queue full (not a failure)

Each exception carries a :class:`~clarity_resilience.Reason` in ``reason``: the same
closed set of codes used by metrics labels and audit events. Messages may name paths
and digests for the audit log; the HTTP adapters never copy them into response bodies.
"""

from __future__ import annotations

import os

from ._reasons import Reason

__all__ = [
    "ChecksumMismatchError",
    "CircuitOpenError",
    "ClarityResilienceError",
    "IntegrityError",
    "InvalidInputError",
    "ManifestError",
    "ModelLoadError",
    "ModelUnavailableError",
    "OverloadedError",
    "PredictionTimeoutError",
    "SizeMismatchError",
]


class ClarityResilienceError(Exception):
    """Root of every exception this library raises on purpose."""

    reason: Reason = Reason.INTERNAL

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class IntegrityError(ClarityResilienceError):
    """The bytes on disk (or on the wire) cannot be trusted.

    Attributes:
        path: The file that failed, if one is known.
        expected: What the manifest or caller promised (digest, size, version), if any.
        actual: What was found instead, if it could be measured.
    """

    reason = Reason.UNSAFE_PATH

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        expected: object = None,
        actual: object = None,
        reason: Reason | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.path = os.fspath(path) if path is not None else None
        self.expected = expected
        self.actual = actual


class ChecksumMismatchError(IntegrityError):
    """The SHA-256 digest of the bytes read differs from the expected digest."""

    reason = Reason.CHECKSUM_MISMATCH


class SizeMismatchError(IntegrityError):
    """The file is larger or smaller than expected, or changed size while being read."""

    reason = Reason.SIZE_MISMATCH


class ManifestError(IntegrityError):
    """A manifest is malformed, unsafe, or disagrees with the directory it describes.

    Attributes:
        line: The 1-based line number of a malformed manifest line, if any.
        problems: Every individual failure when a directory check found several.
    """

    reason = Reason.MANIFEST_INVALID

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        line: int | None = None,
        expected: object = None,
        actual: object = None,
        reason: Reason | None = None,
        problems: tuple[IntegrityError, ...] = (),
    ) -> None:
        super().__init__(message, path=path, expected=expected, actual=actual, reason=reason)
        self.line = line
        self.problems = problems


class ModelLoadError(ClarityResilienceError):
    """Verified bytes could not be turned into a model, or the format is refused."""

    reason = Reason.LOAD_ERROR


class InvalidInputError(ClarityResilienceError):
    """The caller's input is malformed or out of range.

    This is a client fault: HTTP adapters answer it with 422 and breakers ignore it,
    so bad requests can never take a healthy service down.
    """

    reason = Reason.INVALID_INPUT


class ModelUnavailableError(ClarityResilienceError):
    """No verified model can serve this call right now.

    Attributes:
        retry_after: Seconds after which a retry may succeed (a hint, never negative).
    """

    reason = Reason.UNAVAILABLE

    def __init__(
        self, message: str, *, retry_after: float = 0.0, reason: Reason | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = max(0.0, float(retry_after))


class CircuitOpenError(ModelUnavailableError):
    """A circuit breaker rejected the call without running it.

    Attributes:
        breaker: The name of the breaker that rejected the call.
        retry_after: Seconds until the breaker admits a trial call.
        forced: The operator's reason when the breaker was forced open
            (``Breaker.force_open``), else None.
    """

    reason = Reason.BREAKER_OPEN

    def __init__(self, breaker: str, retry_after: float, *, forced: str | None = None) -> None:
        # Raised on every rejection, so it is kept cheap: the message is formatted only
        # when someone reads it.
        Exception.__init__(self, breaker, retry_after)
        self.breaker = breaker
        self.retry_after = float(retry_after) if retry_after > 0 else 0.0
        self.forced = forced

    def __str__(self) -> str:
        if self.forced is not None:
            return f"circuit breaker {self.breaker!r} is forced open ({self.forced})"
        return f"circuit breaker {self.breaker!r} is open; retry in {self.retry_after:.1f}s"


class OverloadedError(ModelUnavailableError):
    """The call was shed: every slot is busy and the queue is full (or the wait timed out).

    Shedding protects a healthy model from a traffic spike: it is not a model failure,
    so breakers never count it. HTTP adapters answer 503 with a short ``Retry-After``.
    """

    reason = Reason.OVERLOADED


class PredictionTimeoutError(ClarityResilienceError):
    """A prediction did not finish within its deadline.

    A hung model is a failing model: breakers count this like any failure. The work
    itself may still be running in its thread (threads cannot be killed).

    Attributes:
        timeout: The deadline that was exceeded, in seconds.
        retry_after: Seconds after which a retry may succeed (a short hint).
    """

    reason = Reason.TIMEOUT

    def __init__(self, message: str, *, timeout: float, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.timeout = float(timeout)
        self.retry_after = max(0.0, float(retry_after))
