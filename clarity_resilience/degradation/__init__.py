"""Degrade to a clean HTTP 503 (or 4xx) with an RFC 9457 problem body.

This package is framework-neutral and imports no web framework; the adapters do,
each in its own module, imported only when you import it:

- :mod:`clarity_resilience.degradation.asgi`: ``DegradationMiddleware`` (any ASGI app)
- :mod:`clarity_resilience.degradation.wsgi`: ``DegradationMiddleware`` (any WSGI app)
- :mod:`clarity_resilience.degradation.fastapi`: ``install(app, *guards)``
- :mod:`clarity_resilience.degradation.flask`: ``init_app(app, *guards)``

The HTTP contract (:func:`problem_for`):

| condition                                | status | `Retry-After`  | `reason`            |
|------------------------------------------|--------|----------------|---------------------|
| breaker open / half-open trial in flight | 503    | ceil(s), >= 1  | `breaker_open`      |
| shed by the concurrency limit            | 503    | short, >= 1    | `overloaded`        |
| prediction past its deadline             | 503    | short, >= 1    | `timeout`           |
| no verified model loaded yet             | 503    | configurable   | `unavailable`       |
| integrity failure, nothing good to serve | 503    | configurable   | `integrity_failure` |
| malformed / invalid / oversized input    | 4xx    | none           | `invalid_input`     |

Bodies carry fixed sentences only: never an exception message, a path, a digest or a
traceback (those go to the audit log).
"""

from __future__ import annotations

from ._problem import (
    INTEGRITY_RETRY_AFTER,
    PROBLEM_CONTENT_TYPE,
    UNAVAILABLE_RETRY_AFTER,
    FieldError,
    HealthResponse,
    Problem,
    ProblemReason,
    liveness,
    problem_for,
    problem_type,
    readiness,
)

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
