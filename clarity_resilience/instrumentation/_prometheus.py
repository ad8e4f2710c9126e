"""Prometheus hook: the metric names and labels of the telemetry contract."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from .._reasons import INTEGRITY_REASONS, Reason
from ._events import (
    BreakerRegistered,
    BreakerStateChanged,
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
from ._hooks import HookFactory

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["BREAKER_STATES", "PrometheusOnEventHook", "prometheus_hook"]

BREAKER_STATES = ("closed", "open", "half-open")

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
            "Model bytes refused by integrity checks, by reason.",
            ["model", "reason"],
            **kw,
        )
        self._models: set[str] = set()
        self._breakers: set[str] = set()
        self._lock = threading.Lock()

    def ensure_model(self, model: str) -> None:
        """Pre-initialise every series of ``model`` so alerts work from the first failure."""
        if model in self._models:  # the hot path: already done, no lock
            return
        with self._lock:
            if model in self._models:
                return
            self._models.add(model)
        self.success.labels(model)
        for reason in Reason:
            self.failure.labels(model, reason.value)
        for reason in INTEGRITY_REASONS:
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
            for old in BREAKER_STATES:
                for new in BREAKER_STATES:
                    if old != new:
                        self.transitions.labels(breaker, old, new)
        self.set_state(breaker, state)

    def set_state(self, breaker: str, state: str) -> None:
        for candidate in BREAKER_STATES:
            self.state.labels(breaker, candidate).set(1 if candidate == state else 0)


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

    def __call__(self, event: Event, /) -> None:
        m = self._m
        match event:
            case PredictionSucceeded(model=model):
                m.ensure_model(model)
                m.success.labels(model).inc()
            case PredictionFailed(model=model, reason=reason):
                m.ensure_model(model)
                m.failure.labels(model, reason.value).inc()
            case CallRejected(breaker=breaker):
                m.rejections.labels(breaker).inc()
            case BreakerStateChanged(breaker=breaker, old_state=old, new_state=new):
                if old != new:
                    m.transitions.labels(breaker, old, new).inc()
                    m.set_state(breaker, new)
            case IntegrityCheckPassed(model=model, duration=duration):
                m.ensure_model(model)
                m.check_duration.labels(model).observe(duration)
            case IntegrityCheckFailed(model=model, reason=reason, duration=duration):
                m.ensure_model(model)
                m.check_duration.labels(model).observe(duration)
                m.integrity_failures.labels(model, reason.value).inc()
            case (
                ModelLoaded(model=model, duration=duration)
                | ModelLoadFailed(model=model, duration=duration)
            ):
                m.ensure_model(model)
                m.load_duration.labels(model).observe(duration)
            case ModelRegistered(model=model):
                m.ensure_model(model)
            case BreakerRegistered(breaker=breaker, state=state):
                m.ensure_breaker(breaker, state)
            case _:
                pass


def prometheus_hook(namespace: str = "") -> HookFactory:
    """Return a hook factory recording into the emitter's registry.

    Args:
        namespace: Optional prefix for every metric name (``ns_prediction_success_total``).
    """
    return HookFactory(lambda registry: PrometheusHook(_metrics_for(registry, namespace)))


#: The default Prometheus hook: no namespace, one set of metrics per registry.
PrometheusOnEventHook = prometheus_hook()
