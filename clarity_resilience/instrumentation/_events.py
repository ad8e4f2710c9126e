"""Frozen event records: what happened, never the payload that it happened to."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .._reasons import Reason

__all__ = [
    "BreakerOperatorAction",
    "BreakerRegistered",
    "BreakerStateChanged",
    "BreakerStorageFailed",
    "CallRejected",
    "Event",
    "IntegrityCheckFailed",
    "IntegrityCheckPassed",
    "ModelLoadFailed",
    "ModelLoaded",
    "ModelRegistered",
    "PredictionFailed",
    "PredictionSucceeded",
    "ReloadPromoted",
    "ReloadRefused",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """Base class of every event delivered to hooks.

    Attributes:
        name: The structlog event name, ``clarity_resilience.<noun>_<verb>``.
        level: The log level the structlog hook uses for it.
    """

    name: ClassVar[str] = "clarity_resilience.event"
    level: ClassVar[str] = "info"

    def fields(self) -> dict[str, Any]:
        """Return the event's fields as a flat dict (enums as their string values)."""
        cls = type(self)
        names = _FIELD_NAMES.get(cls)
        if names is None:  # once per event class: dataclasses.fields() is slow
            names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
        fields: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name)
            fields[name] = str(value) if isinstance(value, Reason) else value
        return fields


_FIELD_NAMES: dict[type[Event], tuple[str, ...]] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerRegistered(Event):
    """A breaker was created; lets hooks pre-initialise its label sets."""

    name: ClassVar[str] = "clarity_resilience.breaker_registered"
    level: ClassVar[str] = "debug"
    breaker: str
    state: str


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerStateChanged(Event):
    """A breaker moved between ``closed``, ``open`` and ``half-open``."""

    level: ClassVar[str] = "warning"
    breaker: str
    old_state: str
    new_state: str

    @property
    def name(self) -> str:  # type: ignore[override]
        """Name the event after the new state, e.g. ``clarity_resilience.breaker_opened``."""
        verb = {"open": "opened", "half-open": "half_opened", "closed": "closed"}
        return f"clarity_resilience.breaker_{verb.get(self.new_state, 'changed')}"


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerOperatorAction(Event):
    """An operator forced a breaker open (``force_open``) or reset it (``reset``).

    Attributes:
        action: ``force_open`` or ``reset``.
        old_state: The breaker's state before the action.
        reason: The reason given to ``force_open`` (for ``reset``: the one released,
            or empty).
    """

    name: ClassVar[str] = "clarity_resilience.breaker_operator_action"
    level: ClassVar[str] = "warning"
    breaker: str
    action: str
    old_state: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerStorageFailed(Event):
    """A breaker's shared storage failed, timed out or held an unknown state.

    The breaker goes on from the state it last read (an unknown state counts as
    ``open``), so it keeps breaking on this process's own outcomes.

    Attributes:
        problem: ``timeout`` (past the breaker's ``storage_timeout``), ``error`` (the
            storage raised) or ``unknown_state`` (a value that is not a breaker state).
        error_type: The exception's type name, or ``UnknownState``.
        detail: A short description (the exception's message, the unknown value's repr).
    """

    name: ClassVar[str] = "clarity_resilience.breaker_storage_failed"
    level: ClassVar[str] = "error"
    breaker: str
    problem: str
    error_type: str
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class CallRejected(Event):
    """A breaker denied a call without running it.

    Attributes:
        rejected_since_open: How many calls this breaker has rejected since it last
            changed state, this one included (1 for the first rejection).
    """

    name: ClassVar[str] = "clarity_resilience.call_rejected"
    level: ClassVar[str] = "warning"
    breaker: str
    state: str
    retry_after: float
    rejected_since_open: int = 1
    reason: Reason = Reason.BREAKER_OPEN


@dataclasses.dataclass(frozen=True, slots=True)
class ModelRegistered(Event):
    """A model guard was created; lets hooks pre-initialise its label sets."""

    name: ClassVar[str] = "clarity_resilience.model_registered"
    level: ClassVar[str] = "debug"
    model: str


@dataclasses.dataclass(frozen=True, slots=True)
class PredictionSucceeded(Event):
    """A prediction ran on a verified model and returned."""

    name: ClassVar[str] = "clarity_resilience.prediction_succeeded"
    level: ClassVar[str] = "debug"
    model: str
    duration: float


@dataclasses.dataclass(frozen=True, slots=True)
class PredictionFailed(Event):
    """A prediction was denied or raised; ``reason`` says which."""

    name: ClassVar[str] = "clarity_resilience.prediction_failed"
    level: ClassVar[str] = "error"
    model: str
    reason: Reason
    error_type: str
    duration: float


@dataclasses.dataclass(frozen=True, slots=True)
class IntegrityCheckPassed(Event):
    """Bytes were read and matched their expected SHA-256 (and size)."""

    name: ClassVar[str] = "clarity_resilience.integrity_check_passed"
    level: ClassVar[str] = "info"
    model: str
    path: str
    size: int
    duration: float


@dataclasses.dataclass(frozen=True, slots=True)
class IntegrityCheckFailed(Event):
    """Bytes could not be verified; nothing was deserialized."""

    name: ClassVar[str] = "clarity_resilience.integrity_check_failed"
    level: ClassVar[str] = "error"
    model: str
    path: str
    reason: Reason
    error_type: str
    detail: str
    duration: float


@dataclasses.dataclass(frozen=True, slots=True)
class ModelLoaded(Event):
    """Verified bytes were deserialized into a model."""

    name: ClassVar[str] = "clarity_resilience.model_loaded"
    level: ClassVar[str] = "info"
    model: str
    sha256: str
    version: str | None
    duration: float
    signer: str | None = None  # who signed the manifest, for signed origins


@dataclasses.dataclass(frozen=True, slots=True)
class ModelLoadFailed(Event):
    """Loading failed (integrity, I/O, loader); whatever was serving keeps serving."""

    name: ClassVar[str] = "clarity_resilience.model_load_failed"
    level: ClassVar[str] = "error"
    model: str
    reason: Reason
    error_type: str
    detail: str
    duration: float


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadPromoted(Event):
    """A new verified model replaced the one serving."""

    name: ClassVar[str] = "clarity_resilience.reload_promoted"
    level: ClassVar[str] = "info"
    model: str
    old_sha256: str | None
    new_sha256: str
    version: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadRefused(Event):
    """A new version failed; the last known good model keeps serving."""

    name: ClassVar[str] = "clarity_resilience.reload_refused"
    level: ClassVar[str] = "error"
    model: str
    reason: Reason
    serving_sha256: str | None
