"""RFC 9457 problem responses and health probes, shared by every framework adapter.

Nothing here imports a web framework: the adapters turn a :class:`Problem` or a
:class:`HealthResponse` into their own response type.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from .._reasons import Reason, bytes_refused
from ..exceptions import (
    ClarityResilienceError,
    InvalidInputError,
    ModelUnavailableError,
    PredictionTimeoutError,
)

if TYPE_CHECKING:
    from .._guard import ModelGuard

__all__ = [
    "FieldError",
    "HealthResponse",
    "INTEGRITY_RETRY_AFTER",
    "PROBLEM_CONTENT_TYPE",
    "Problem",
    "ProblemReason",
    "UNAVAILABLE_RETRY_AFTER",
    "liveness",
    "problem_for",
    "problem_type",
    "readiness",
]

#: The media type of every problem body (RFC 9457).
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

#: ``Retry-After`` seconds for an :class:`~clarity_resilience.IntegrityError` raised
#: directly: a corrupted artifact rarely fixes itself within seconds.
INTEGRITY_RETRY_AFTER: Final = 300

#: ``Retry-After`` seconds for a load failure or another library error raised directly.
UNAVAILABLE_RETRY_AFTER: Final = 5

#: The closed set of ``reason`` values a problem body carries.
ProblemReason = Literal[
    "breaker_open", "unavailable", "integrity_failure", "invalid_input", "overloaded", "timeout"
]

_TYPE_PREFIX: Final = "urn:clarity-resilience:problem:"
_JSON_CONTENT_TYPE: Final = "application/json"

_TITLES: Final[dict[ProblemReason, str]] = {
    "breaker_open": "Circuit breaker open",
    "unavailable": "Model unavailable",
    "integrity_failure": "Model integrity failure",
    "invalid_input": "Invalid input",
    "overloaded": "Model overloaded",
    "timeout": "Prediction timed out",
}

# One fixed sentence per situation: exception messages name paths and digests (they
# belong in the audit log), so they never reach a response body.
_DETAILS: Final[dict[str, str]] = {
    "breaker_open": "The model is failing and calls are paused; retry after Retry-After seconds.",
    "unavailable": "No verified model is serving yet; retry after Retry-After seconds.",
    "integrity_failure": "No model that passed integrity checks is available to serve requests.",
    "invalid_input": "The request input is not valid for this model.",
    "overloaded": "Too many requests are in progress; retry after Retry-After seconds.",
    "timeout": "The model did not answer in time; retry after Retry-After seconds.",
    "validation": "The request does not match the expected schema; see errors for the fields.",
    "malformed": "The request body could not be parsed.",
    "too_large": "The request body is larger than this endpoint accepts.",
}

# status() fields that are safe to show anyone who can reach the probe: the digest
# prefix stays out of bodies like every other digest.
_SAFE_STATUS_FIELDS: Final = ("model", "ready", "version", "breaker", "last_error")


class RequestBodyTooLarge(Exception):
    """Raised by the middlewares' body readers once a body exceeds ``max_body_size``.

    Private to this package: the middlewares answer it with a 413, and the Flask and
    FastAPI adapters register a handler for it.
    """


def problem_type(reason: ProblemReason) -> str:
    """Return the stable ``type`` URI of a problem reason.

    >>> problem_type("breaker_open")
    'urn:clarity-resilience:problem:breaker_open'
    """
    return _TYPE_PREFIX + reason


@dataclasses.dataclass(frozen=True, slots=True)
class FieldError:
    """Where a request failed validation: a location and an error code, never the value.

    Attributes:
        loc: The path to the field, e.g. ``("body", "features", 0)``.
        type: A machine-readable error code, e.g. ``"float_parsing"``.
    """

    loc: tuple[str | int, ...]
    type: str


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """An RFC 9457 problem response: status, headers and a JSON body.

    Attributes:
        status: The HTTP status code.
        title: A short summary, the same for every problem of this ``type``.
        detail: A fixed sentence for this situation (never an exception message).
        reason: One of ``breaker_open``, ``unavailable``, ``integrity_failure``,
            ``invalid_input``, ``overloaded``, ``timeout``.
        type: A stable URI naming the problem type (see :func:`problem_type`).
        retry_after: Whole seconds for the ``Retry-After`` header (at least 1), or
            None to send none.
        errors: Field locations that failed validation (sent as an ``errors``
            extension member only when not empty).

    Raises:
        ValueError: ``retry_after`` is below 1 (a ``Retry-After: 0`` invites a
            retry storm, and werkzeug drops it).
    """

    status: int
    title: str
    detail: str
    reason: str
    type: str
    retry_after: int | None = None
    errors: tuple[FieldError, ...] = ()

    def __post_init__(self) -> None:
        if self.retry_after is not None and self.retry_after < 1:
            raise ValueError(f"retry_after must be at least 1 second, got {self.retry_after!r}")

    def headers(self) -> list[tuple[str, str]]:
        """Return the response headers (``Content-Type``, ``Cache-Control``, ``Retry-After``)."""
        headers = [("Content-Type", PROBLEM_CONTENT_TYPE), ("Cache-Control", "no-store")]
        if self.retry_after is not None:
            headers.append(("Retry-After", str(self.retry_after)))
        return headers

    def body(self) -> bytes:
        """Return the JSON body as bytes (the same few documents again and again: cached)."""
        return _problem_body(self)


class HealthResponse(NamedTuple):
    """A probe answer: unpack it as ``status, headers, body``."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def problem_for(
    exc: BaseException,
    *,
    integrity_retry_after: float = INTEGRITY_RETRY_AFTER,
    unavailable_retry_after: float = UNAVAILABLE_RETRY_AFTER,
) -> Problem | None:
    """Return the problem response for one of this library's exceptions.

    | exception                                  | status | reason              |
    |--------------------------------------------|--------|---------------------|
    | `CircuitOpenError`                         | 503    | `breaker_open`      |
    | `OverloadedError` (shed)                   | 503    | `overloaded`        |
    | `PredictionTimeoutError`                   | 503    | `timeout`           |
    | `ModelUnavailableError` (integrity reason) | 503    | `integrity_failure` |
    | `ModelUnavailableError` (other)            | 503    | `unavailable`       |
    | `IntegrityError`                           | 503    | `integrity_failure` |
    | ... for `io_error`/`fetch_error`/`timeout` | 503    | `unavailable`       |
    | `InvalidInputError`                        | 422    | `invalid_input`     |
    | any other `ClarityResilienceError`         | 503    | `unavailable`       |

    An integrity reason means the bytes themselves were refused (digest, size, path,
    manifest, version). A disk, store or network failure is not the bytes' fault: it
    answers ``unavailable``, with the short default retry.

    ``Retry-After`` is the exception's ``retry_after`` rounded up (at least 1) for a
    ``ModelUnavailableError``, the defaults below for errors that carry none, and
    absent for invalid input.

    Args:
        exc: The exception to answer.
        integrity_retry_after: Seconds to send for an ``IntegrityError`` raised directly.
        unavailable_retry_after: Seconds to send for a ``ModelLoadError`` or another
            library error raised directly.

    Returns:
        The problem, or None when ``exc`` is not this library's (let the framework
        answer it, usually with a 500).
    """
    if isinstance(exc, RequestBodyTooLarge):
        return body_too_large_problem()
    if not isinstance(exc, ClarityResilienceError):
        return None
    if isinstance(exc, InvalidInputError):
        return _problem(422, "invalid_input")
    if isinstance(exc, ModelUnavailableError):
        if exc.reason == Reason.BREAKER_OPEN:
            reason: ProblemReason = "breaker_open"
        elif exc.reason == Reason.OVERLOADED:
            reason = "overloaded"
        elif bytes_refused(exc.reason):
            reason = "integrity_failure"
        else:
            reason = "unavailable"
        fallback = (
            integrity_retry_after if reason == "integrity_failure" else unavailable_retry_after
        )
        return _problem(503, reason, retry_after=_seconds(exc.retry_after, fallback))
    if bytes_refused(exc.reason):
        return _problem(503, "integrity_failure", retry_after=_seconds(integrity_retry_after))
    other: ProblemReason = "unavailable"
    seconds = unavailable_retry_after
    if isinstance(exc, PredictionTimeoutError):  # a hung model: retry soon, maybe elsewhere
        other, seconds = "timeout", exc.retry_after
    return _problem(503, other, retry_after=_seconds(seconds))


def liveness() -> HealthResponse:
    """Return the ``/livez`` answer: always 200.

    Liveness says "this process can answer HTTP"; it never looks at models or
    breakers, so an orchestrator never restarts a process for a model it cannot load.
    """
    return _health(200, {"status": "ok"})


def readiness(*guards: ModelGuard[Any]) -> HealthResponse:
    """Return the ``/readyz`` answer: 200 once every guard serves a verified model.

    Until then 503 with ``Retry-After`` (the longest wait any guard asks for, at
    least 1) and a ``reason`` (``integrity_failure`` before ``breaker_open`` before
    ``unavailable``). The body lists each guard's safe status fields: ``model``,
    ``ready``, ``version``, ``breaker`` and ``last_error`` (a reason code); never a
    path or a digest. Only local state is read: no file, no network.
    """
    models = [_safe_status(guard) for guard in guards]
    waiting = [guard for guard, status in zip(guards, models, strict=True) if not status["ready"]]
    if not waiting:
        return _health(200, {"status": "ready", "models": models})
    retry_after = 1
    reasons: set[ProblemReason] = set()
    for guard in waiting:
        try:
            guard.model  # noqa: B018 - the property raises the error that says when to retry
        except ModelUnavailableError as e:
            problem = problem_for(e)
            assert problem is not None
            assert problem.retry_after is not None
            integrity = problem.reason == "integrity_failure"
            reasons.add("integrity_failure" if integrity else "unavailable")
            retry_after = max(retry_after, problem.retry_after)
        if guard.breaker.state != "closed":
            reasons.add("breaker_open")
        retry_after = max(retry_after, _seconds(guard.breaker.retry_after(), 1))
    # A guard that became ready since status() was read leaves no reason: unavailable.
    severity = ("integrity_failure", "breaker_open")
    reason = next((r for r in severity if r in reasons), "unavailable")
    body = {"status": "unavailable", "reason": reason, "models": models}
    return _health(503, body, retry_after=retry_after)


# -- helpers for the adapters (private to this package) ----------------------------


def invalid_input_problem(
    status: int = 422, *, situation: str = "invalid_input", errors: Iterable[FieldError] = ()
) -> Problem:
    """Return an ``invalid_input`` problem: 400 malformed, 413 too large, 422 invalid."""
    return _problem(status, "invalid_input", situation=situation, errors=tuple(errors))


def body_too_large_problem() -> Problem:
    """Return the 413 problem for a request body over the configured limit."""
    return invalid_input_problem(413, situation="too_large")


def field_errors(errors: Iterable[Any]) -> tuple[FieldError, ...]:
    """Return the locations and codes of pydantic-style errors, dropping their values."""
    result = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        loc = tuple(part if isinstance(part, int) else str(part) for part in error.get("loc", ()))
        result.append(FieldError(loc=loc, type=str(error.get("type", "invalid"))))
    return tuple(result)


def _problem(
    status: int,
    reason: ProblemReason,
    *,
    retry_after: int | None = None,
    situation: str | None = None,
    errors: tuple[FieldError, ...] = (),
) -> Problem:
    return Problem(
        status=status,
        title=_TITLES[reason],
        detail=_DETAILS[situation or reason],
        reason=reason,
        type=problem_type(reason),
        retry_after=retry_after,
        errors=errors,
    )


def _seconds(value: float, fallback: float = 1) -> int:
    """Return ``value`` rounded up to whole seconds, at least 1 (``fallback`` if not finite)."""
    if not math.isfinite(value):
        value = fallback
    return max(1, math.ceil(value))


def _safe_status(guard: ModelGuard[Any]) -> dict[str, Any]:
    status = guard.status()
    return {field: status.get(field) for field in _SAFE_STATUS_FIELDS}


def _health(
    status: int, document: dict[str, Any], *, retry_after: int | None = None
) -> HealthResponse:
    headers = [("Content-Type", _JSON_CONTENT_TYPE), ("Cache-Control", "no-store")]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    return HealthResponse(status, headers, _dump(document))


@functools.lru_cache(maxsize=512)
def _problem_body(problem: Problem) -> bytes:
    """Serialize a problem body.

    The 503 path of an open breaker answers the same few problems thousands of times a
    second (they differ only in ``Retry-After``, a header), so bodies are cached.
    """
    document: dict[str, Any] = {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "reason": problem.reason,
    }
    if problem.errors:
        document["errors"] = [{"loc": list(e.loc), "type": e.type} for e in problem.errors]
    return _dump(document)


def _dump(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
