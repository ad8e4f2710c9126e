"""Prometheus hook: the metric names and labels of the telemetry contract."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._reasons import INTEGRITY_REASONS, REFUSAL_REASONS, Reason
from ._events import (
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
)
from ._factory import HookFactory

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["BREAKER_STATES", "PrometheusOnEventHook", "prometheus_hook"]

BREAKER_STATES = ("closed", "open", "half-open")
#: How ``circuit_breaker_state`` aggregates across worker processes (docs/telemetry.md).
STATE_MULTIPROCESS_MODE: Final = "liveall"
_LOADER_REASONS = frozenset(REFUSAL_REASONS) - frozenset(INTEGRITY_REASONS)

# Loading a large model from a slow disk or store can take minutes.
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
CHECK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0, 300.0, 600.0)  # fmt: skip


class _Metrics:
    """The metric objects of one registry (and namespace), created exactly once."""

    def __init__(self, registry: CollectorRegistry | None, namespace: str) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        reg = REGISTRY if registry is None else registry
        kw: dict[str, Any] = {"namespace": namespace, "registry": reg}
        self.success = Counter(
            "prediction_success_total", "Predictions served by a verified model.", ["model"], **kw
        )
        self.failure = Counter(
            "prediction_failure_total",
            "Predictions denied or failed, by reason.",
            ["model", "reason"],
            **kw,
        )
        self.state = Gauge(
            "circuit_breaker_state",
            "1 for the breaker's current state, 0 for the others.",
            ["breaker", "state"],
            # Under prometheus-client's multiprocess mode: one series per live worker
            # (a ``pid`` label), so a dead worker's state vanishes with it and the alerts,
            # which aggregate by (job, breaker), still see every live worker's state.
            multiprocess_mode=STATE_MULTIPROCESS_MODE,
            **kw,
        )
        self.transitions = Counter(
            "circuit_breaker_transitions_total",
            "Breaker state transitions.",
            ["breaker", "from_state", "to_state"],
            **kw,
        )
        self.rejections = Counter(
            "circuit_breaker_rejections_total",
            "Calls rejected by an open breaker.",
            ["breaker"],
            **kw,
        )
        self.storage_failures = Counter(
            "circuit_breaker_storage_failures_total",
            "Shared breaker storage calls that failed, timed out or read an unknown state.",
            ["breaker"],
            **kw,
        )
        self.in_flight = Gauge(
            "prediction_in_flight",
            "Predictions running now, including those past their deadline that still run.",
            ["model"],
            multiprocess_mode="livesum",
            **kw,
        )
        self.load_duration = Histogram(
            "model_load_duration_seconds",
            "Time to verify and deserialize a model, failed loads included.",
            ["model"],
            buckets=LOAD_BUCKETS,
            **kw,
        )
        self.check_duration = Histogram(
            "checksum_verification_duration_seconds",
            "Time to read and hash model bytes, failed checks included.",
            ["model"],
            buckets=CHECK_BUCKETS,
            **kw,
        )
        self.integrity_failures = Counter(
            "model_integrity_failures_total",
            "Models refused (integrity checks, refused format, loader errors), by reason.",
            ["model", "reason"],
            **kw,
        )
        self._models: set[str] = set()
        self._breakers: set[str] = set()
        self._lock = threading.Lock()
        # The labelled children of the per-call counters: ``labels()`` validates the
        # values and takes a lock on every call, a dict lookup does not. (The series are
        # never removed: they are pre-initialised and live as long as the registry.)
        self._success_children: dict[str, Counter] = {}
        self._failure_children: dict[tuple[str, Reason], Counter] = {}
        self._rejection_children: dict[str, Counter] = {}
        self._in_flight_children: dict[str, Gauge] = {}

    def ensure_model(self, model: str) -> None:
        """Pre-initialise every series of ``model`` so alerts work from the first failure."""
        if model in self._models:  # the hot path: already done, no lock
            return
        with self._lock:
            if model in self._models:
                return
            self._models.add(model)
        self.success.labels(model)
        self.in_flight.labels(model)
        for reason in Reason:
            self.failure.labels(model, reason.value)
        for reason in REFUSAL_REASONS:
            self.integrity_failures.labels(model, reason.value)
        self.load_duration.labels(model)
        self.check_duration.labels(model)

    def ensure_breaker(self, breaker: str, state: str) -> None:
        """Pre-initialise every series of ``breaker`` and set its state gauge."""
        with self._lock:
            first = breaker not in self._breakers
            self._breakers.add(breaker)
        if first:
            self.rejections.labels(breaker)
            self.storage_failures.labels(breaker)
            for old in BREAKER_STATES:
                for new in BREAKER_STATES:
                    if old != new:
                        self.transitions.labels(breaker, old, new)
        self.set_state(breaker, state)

    def set_state(self, breaker: str, state: str) -> None:
        if state not in BREAKER_STATES:
            return  # never a label value outside the fixed set (the breaker reports it)
        for candidate in BREAKER_STATES:
            self.state.labels(breaker, candidate).set(1 if candidate == state else 0)

    def success_of(self, model: str) -> Counter:
        """Return the ``prediction_success_total`` series of ``model`` (pre-initialised)."""
        child = self._success_children.get(model)
        if child is None:
            self.ensure_model(model)
            child = self._success_children.setdefault(model, self.success.labels(model))
        return child

    def failure_of(self, model: str, reason: Reason) -> Counter:
        """Return the ``prediction_failure_total`` series of ``model`` and ``reason``."""
        child = self._failure_children.get((model, reason))
        if child is None:
            self.ensure_model(model)
            child = self._failure_children.setdefault(
                (model, reason), self.failure.labels(model, reason.value)
            )
        return child

    def in_flight_of(self, model: str) -> Gauge:
        """Return the ``prediction_in_flight`` series of ``model`` (pre-initialised)."""
        child = self._in_flight_children.get(model)
        if child is None:
            self.ensure_model(model)
            child = self._in_flight_children.setdefault(model, self.in_flight.labels(model))
        return child

    def rejections_of(self, breaker: str) -> Counter:
        """Return the ``circuit_breaker_rejections_total`` series of ``breaker``."""
        child = self._rejection_children.get(breaker)
        if child is None:
            child = self._rejection_children.setdefault(breaker, self.rejections.labels(breaker))
        return child


_metrics_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Metrics]] = (
    weakref.WeakKeyDictionary()
)
_metrics_default: dict[str, _Metrics] = {}
_metrics_lock = threading.Lock()


def _metrics_for(registry: CollectorRegistry | None, namespace: str) -> _Metrics:
    with _metrics_lock:
        if registry is None:
            by_namespace = _metrics_default
        else:
            by_namespace = _metrics_by_registry.setdefault(registry, {})
        metrics = by_namespace.get(namespace)
        if metrics is None:
            metrics = by_namespace[namespace] = _Metrics(registry, namespace)
        return metrics


class PrometheusHook:
    """Record events into one registry's metrics."""

    def __init__(self, metrics: _Metrics) -> None:
        self._m = metrics
        self._rejection_children = metrics._rejection_children
        # Dispatch on the event's exact type: a dict lookup instead of trying the cases
        # of a match statement in turn on every event (rejections came third).
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            PredictionSucceeded: self._prediction_succeeded,
            PredictionFailed: self._prediction_failed,
            CallRejected: self._call_rejected,
            BreakerStorageFailed: self._breaker_storage_failed,
            BreakerStateChanged: self._breaker_state_changed,
            IntegrityCheckPassed: self._integrity_check_passed,
            IntegrityCheckFailed: self._integrity_check_failed,
            ModelLoaded: self._model_loaded,
            ModelLoadFailed: self._model_load_failed,
            ModelRegistered: self._model_registered,
            BreakerRegistered: self._breaker_registered,
        }

    def __call__(self, event: Event, /) -> None:
        handler = self._handlers.get(type(event))
        if handler is None:
            handler = self._handlers[type(event)] = self._handler_for(type(event))
        handler(event)

    def _handler_for(self, cls: type[Event]) -> Callable[[Any], None]:
        """Return the handler of the nearest known base class (other events: none)."""
        for base in cls.__mro__[1:]:
            handler = self._handlers.get(base)
            if handler is not None:
                return handler
        return _ignore

    def _prediction_succeeded(self, event: PredictionSucceeded) -> None:
        self._m.success_of(event.model).inc()

    def _prediction_failed(self, event: PredictionFailed) -> None:
        self._m.failure_of(event.model, event.reason).inc()

    def _call_rejected(self, event: CallRejected) -> None:
        self._m.rejections_of(event.breaker).inc()

    def on_rejection(self, breaker: str, state: str, retry_after: float, count: int) -> None:
        """Count a rejection without an event object (the emitter's fast path)."""
        child = self._rejection_children.get(breaker)
        if child is None:
            child = self._m.rejections_of(breaker)
        child.inc()

    def on_in_flight(self, model: str, delta: int) -> None:
        """Move the ``prediction_in_flight`` gauge of ``model`` by ``delta``."""
        self._m.in_flight_of(model).inc(delta)

    def _breaker_storage_failed(self, event: BreakerStorageFailed) -> None:
        self._m.storage_failures.labels(event.breaker).inc()

    def _breaker_state_changed(self, event: BreakerStateChanged) -> None:
        known = event.old_state in BREAKER_STATES and event.new_state in BREAKER_STATES
        if known and event.old_state != event.new_state:
            self._m.transitions.labels(event.breaker, event.old_state, event.new_state).inc()
            self._m.set_state(event.breaker, event.new_state)

    def _integrity_check_passed(self, event: IntegrityCheckPassed) -> None:
        self._m.ensure_model(event.model)
        self._m.check_duration.labels(event.model).observe(event.duration)

    def _integrity_check_failed(self, event: IntegrityCheckFailed) -> None:
        m = self._m
        m.ensure_model(event.model)
        m.check_duration.labels(event.model).observe(event.duration)
        m.integrity_failures.labels(event.model, event.reason.value).inc()

    def _model_loaded(self, event: ModelLoaded) -> None:
        self._m.ensure_model(event.model)
        self._m.load_duration.labels(event.model).observe(event.duration)

    def _model_load_failed(self, event: ModelLoadFailed) -> None:
        m = self._m
        m.ensure_model(event.model)
        m.load_duration.labels(event.model).observe(event.duration)
        if event.reason in _LOADER_REASONS:
            # Verified bytes the loader refused: no integrity event has counted them.
            m.integrity_failures.labels(event.model, event.reason.value).inc()

    def _model_registered(self, event: ModelRegistered) -> None:
        self._m.ensure_model(event.model)

    def _breaker_registered(self, event: BreakerRegistered) -> None:
        self._m.ensure_breaker(event.breaker, event.state)


def _ignore(_event: Event) -> None:
    return None


def prometheus_hook(namespace: str = "") -> HookFactory:
    """Return a hook factory recording into the emitter's registry.

    Args:
        namespace: Optional prefix for every metric name (``ns_prediction_success_total``).
    """
    return HookFactory(lambda registry: PrometheusHook(_metrics_for(registry, namespace)))


#: The default Prometheus hook: no namespace, one set of metrics per registry.
PrometheusOnEventHook = prometheus_hook()
