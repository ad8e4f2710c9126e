"""Events, hooks and the default Prometheus and structlog integrations.

Every outcome (prediction, rejection, state change, integrity check, load, reload) is
an immutable :class:`Event` delivered to the configured hooks. Replace or extend them
with :func:`set_on_event_hooks`::

    from clarity_resilience import instrumentation

    def audit(event: instrumentation.Event) -> None:
        send_somewhere(event.name, event.fields())

    instrumentation.set_on_event_hooks([
        instrumentation.PrometheusOnEventHook,
        instrumentation.StructlogOnEventHook,
        audit,
    ])
"""

from __future__ import annotations

from ._events import (
    BreakerOperatorAction,
    BreakerRegistered,
    BreakerStateChanged,
    BreakerStorageFailed,
    CallRejected,
    Event,
    IntegrityCheckFailed,
    IntegrityCheckPassed,
    ModelLoaded,
    ModelLoadFailed,
    ModelRegistered,
    PredictionFailed,
    PredictionSucceeded,
    ReloadPromoted,
    ReloadRefused,
)
from ._hooks import Emitter, EventHook, HookFactory, get_on_event_hooks, set_on_event_hooks
from ._prometheus import BREAKER_STATES, PrometheusOnEventHook, prometheus_hook
from ._structlog import StructlogOnEventHook

__all__ = [
    "BREAKER_STATES",
    "BreakerOperatorAction",
    "BreakerRegistered",
    "BreakerStateChanged",
    "BreakerStorageFailed",
    "CallRejected",
    "Emitter",
    "Event",
    "EventHook",
    "HookFactory",
    "IntegrityCheckFailed",
    "IntegrityCheckPassed",
    "ModelLoadFailed",
    "ModelLoaded",
    "ModelRegistered",
    "PredictionFailed",
    "PredictionSucceeded",
    "PrometheusOnEventHook",
    "ReloadPromoted",
    "ReloadRefused",
    "StructlogOnEventHook",
    "get_on_event_hooks",
    "prometheus_hook",
    "set_on_event_hooks",
]
