"""The HTTP plumbing of remote sources: retry policy, URL redaction, argument checks.

Kept apart from :mod:`clarity_resilience.sources` so that module reads as the fetch
itself. Nothing here imports ``httpx`` or ``stamina`` at module import.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import urllib.parse

from ._reasons import Reason
from .exceptions import ClarityResilienceError

__all__ = [
    "DeadlineError",
    "MissingExtraError",
    "StatusError",
    "check_number",
    "is_transient",
    "parse_retry_after",
    "redact",
    "require_extra",
]


class MissingExtraError(ClarityResilienceError, ImportError):
    """An optional extra is not installed (both a library error and an ImportError)."""


class StatusError(Exception):
    """A non-2xx response, raised inside an attempt so the retry policy can judge it."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class DeadlineError(Exception):
    """An attempt ran past its overall deadline (raised inside it, retried as transient)."""


def require_extra(
    who: str = "HttpSource",
    extra: str = "http",
    modules: tuple[str, ...] = ("httpx", "stamina", "filelock"),
) -> None:
    """Import ``modules`` or raise :class:`MissingExtraError` naming ``extra``.

    Raises:
        MissingExtraError: One of them is not installed.
    """
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingExtraError(
                f"{who} needs {e.name or module}: pip install 'clarity-resilience[{extra}]'",
                reason=Reason.INTERNAL,
            ) from e


def redact(url: str) -> str:
    """Return ``url`` without credentials, query or fragment (presigned URLs carry secrets)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_retry_after(value: str | None, cap: float) -> float | None:
    """Return a ``Retry-After`` header (seconds or HTTP date) in seconds, clamped to ``cap``."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def is_transient(exc: Exception) -> bool | float:
    """Decide whether stamina retries ``exc``; a float is a server-given backoff."""
    import httpx

    if isinstance(exc, StatusError):
        if exc.status == 429 or 500 <= exc.status <= 599:
            return True if exc.retry_after is None else exc.retry_after
        return False
    if isinstance(exc, DeadlineError):
        return True  # a slow path may be faster next time, like a read timeout
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


def check_number(name: str, value: object, *, integer: bool = False, least: float = 0) -> None:
    """Raise ``ValueError`` unless ``value`` is None or a number (an int) ``>= least``."""
    if value is None:
        return
    kind = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kind) or not value >= least:
        what = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {what} >= {least}, got {value!r}")
