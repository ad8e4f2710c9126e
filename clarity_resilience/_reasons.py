"""The closed set of reason codes shared by exceptions, metrics labels and audit events."""

from __future__ import annotations

import enum

__all__ = [
    "INTEGRITY_REASONS",
    "REFUSAL_REASONS",
    "TRANSIENT_REASONS",
    "Reason",
    "bytes_refused",
]


class Reason(enum.StrEnum):
    """Why a call was denied or failed.

    The set is closed and small on purpose: it is used as a Prometheus label value,
    so every member is pre-initialised and alerts fire from the first failure.
    """

    CHECKSUM_MISMATCH = "checksum_mismatch"
    SIZE_MISMATCH = "size_mismatch"
    MISSING = "missing"
    UNSAFE_PATH = "unsafe_path"
    MANIFEST_INVALID = "manifest_invalid"
    VERSION_MISMATCH = "version_mismatch"
    SIGNATURE_INVALID = "signature_invalid"
    IO_ERROR = "io_error"
    FETCH_ERROR = "fetch_error"
    TIMEOUT = "timeout"
    LOAD_ERROR = "load_error"
    UNSAFE_FORMAT = "unsafe_format"
    WARMUP_FAILED = "warmup_failed"
    INVALID_INPUT = "invalid_input"
    OVERLOADED = "overloaded"
    BREAKER_OPEN = "breaker_open"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


#: Failures to establish that bytes are the published ones (HTTP: ``integrity_failure``).
INTEGRITY_REASONS: tuple[Reason, ...] = (
    Reason.CHECKSUM_MISMATCH,
    Reason.SIZE_MISMATCH,
    Reason.MISSING,
    Reason.UNSAFE_PATH,
    Reason.MANIFEST_INVALID,
    Reason.VERSION_MISMATCH,
    Reason.SIGNATURE_INVALID,
    Reason.IO_ERROR,
    Reason.FETCH_ERROR,
    Reason.TIMEOUT,
)

#: Every reason a model can be refused for: integrity, plus verified bytes that the
#: loader rejects or whose format is refused. ``model_integrity_failures_total`` is
#: labelled with these, so one counter alerts on "a model could not be served".
REFUSAL_REASONS: tuple[Reason, ...] = (
    *INTEGRITY_REASONS,
    Reason.LOAD_ERROR,
    Reason.UNSAFE_FORMAT,
    Reason.WARMUP_FAILED,
)

#: Refusals caused by the path to the bytes (disk, store, network), not by the bytes:
#: they may pass on the next attempt, so callers are told to retry soon.
TRANSIENT_REASONS: tuple[Reason, ...] = (Reason.IO_ERROR, Reason.FETCH_ERROR, Reason.TIMEOUT)


def bytes_refused(reason: Reason) -> bool:
    """Return whether ``reason`` says the bytes themselves failed integrity checks.

    That is what waits for an operator (HTTP ``integrity_failure``, the long
    ``Retry-After``); a disk, store or network failure may pass on the next attempt.
    """
    return reason in INTEGRITY_REASONS and reason not in TRANSIENT_REASONS
