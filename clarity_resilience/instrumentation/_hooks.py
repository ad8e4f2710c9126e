"""Hook configuration and event delivery.

Breakers, guards and the integrity functions report every outcome as an
:class:`Event`. The hooks configured here receive them. By default that is Prometheus
and structlog, both built lazily on the first event (so importing the package
registers no metric and touches no logger). A :class:`HookFactory` is built once per
``CollectorRegistry``, which is how ``Breaker(..., registry=reg)`` records into ``reg``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeAlias

from ._events import CallRejected, Event
from ._factory import EventHook, HookFactory
from ._prometheus import PrometheusOnEventHook
from ._structlog import StructlogOnEventHook

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "Emitter",
    "EventHook",
    "HookFactory",
    "get_on_event_hooks",
    "set_on_event_hooks",
]

_log = logging.getLogger("clarity_resilience.instrumentation")


HookSpec: TypeAlias = "EventHook | HookFactory"


class _Config:
    """The process-wide hook list, with a generation so emitters notice changes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hooks: tuple[HookSpec, ...] | None = None  # None: the defaults, not built yet
        self.generation = 0


_CONFIG = _Config()


def _default_hooks() -> tuple[HookSpec, ...]:
    return (PrometheusOnEventHook, StructlogOnEventHook)


def set_on_event_hooks(hooks: Iterable[EventHook | HookFactory] | None) -> None:
    """Replace the hooks that receive every event.

    Args:
        hooks: The new hooks. ``None`` restores the defaults (Prometheus and
            structlog); an empty iterable turns instrumentation off.
    """
    with _CONFIG.lock:
        _CONFIG.hooks = None if hooks is None else tuple(hooks)
        _CONFIG.generation += 1


def get_on_event_hooks() -> tuple[EventHook | HookFactory, ...]:
    """Return the hooks (and hook factories) that currently receive events."""
    with _CONFIG.lock:
        if _CONFIG.hooks is None:
            _CONFIG.hooks = _default_hooks()
        return _CONFIG.hooks


#: A hook's optional fast path for rejections: ``(breaker, state, retry_after, count)``.
#: The built-in hooks have one (``on_rejection``), so an open breaker's rejection
#: builds no event object unless a hook without it (or a sampled log line) needs one.
RejectionHandler: TypeAlias = "Callable[[str, str, float, int], None]"
#: A hook's gauge of predictions in flight: ``(model, delta)`` with delta +1 or -1.
InFlightHandler: TypeAlias = "Callable[[str, int], None]"


class Emitter:
    """Deliver events to the configured hooks on behalf of one breaker or guard.

    Args:
        registry: The Prometheus registry that registry-bound hooks record into
            (``None``: prometheus_client's default registry).
    """

    __slots__ = ("_generation", "_hooks", "_in_flight_hooks", "_rejection_hooks", "registry")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry
        self._generation = -1
        self._hooks: tuple[EventHook, ...] = ()
        self._rejection_hooks: tuple[tuple[RejectionHandler | None, EventHook], ...] = ()
        self._in_flight_hooks: tuple[InFlightHandler, ...] = ()

    def _resolve(self) -> tuple[EventHook, ...]:
        if self._generation != _CONFIG.generation:
            generation = _CONFIG.generation
            specs = get_on_event_hooks()
            hooks = tuple(
                spec.bind(self.registry) if isinstance(spec, HookFactory) else spec
                for spec in specs
            )
            self._rejection_hooks = tuple(
                (getattr(hook, "on_rejection", None), hook) for hook in hooks
            )
            self._in_flight_hooks = tuple(
                handler
                for handler in (getattr(hook, "on_in_flight", None) for hook in hooks)
                if handler is not None
            )
            self._hooks = hooks
            self._generation = generation
        return self._hooks

    def emit(self, event: Event) -> None:
        """Call every hook with ``event``; a hook that raises is logged once, then skipped over."""
        if self._generation == _CONFIG.generation:  # the hot path: nothing reconfigured
            hooks = self._hooks
        else:
            try:
                hooks = self._resolve()
            except Exception:  # noqa: BLE001 - a failed hook factory must never break the caller
                _report_failure("hook factory", event)
                return
        for hook in hooks:
            try:
                hook(event)
            except Exception:  # noqa: BLE001 - a broken hook must not break the caller
                _report_failure(hook, event)

    def rejected(self, breaker: str, state: str, retry_after: float, count: int) -> None:
        """Deliver a :class:`CallRejected`, building the event only for hooks that need it.

        Args:
            breaker: The rejecting breaker's name.
            state: Its state (``open`` or ``half-open``).
            retry_after: Seconds until it admits a call.
            count: Rejections since its last transition, this one included.
        """
        if self._generation != _CONFIG.generation:
            try:
                self._resolve()
            except Exception:  # noqa: BLE001 - a failed hook factory must never break the caller
                _report_failure("hook factory", _rejection(breaker, state, retry_after, count))
                return
        event: CallRejected | None = None
        for fast, hook in self._rejection_hooks:
            try:
                if fast is not None:
                    fast(breaker, state, retry_after, count)
                else:
                    if event is None:
                        event = _rejection(breaker, state, retry_after, count)
                    hook(event)
            except Exception:  # noqa: BLE001 - a broken hook must not break the caller
                _report_failure(hook, event or _rejection(breaker, state, retry_after, count))

    def in_flight(self, model: str, delta: int) -> None:
        """Tell hooks with ``on_in_flight(model, delta)`` that predictions began or ended.

        A gauge, not an audit event: hooks without ``on_in_flight`` are not called (two
        log lines per prediction would drown everything else).
        """
        if self._generation != _CONFIG.generation:
            try:
                self._resolve()
            except Exception:  # noqa: BLE001 - a failed hook factory must never break the caller
                return
        for handler in self._in_flight_hooks:
            try:
                handler(model, delta)
            except Exception:  # noqa: BLE001 - a broken hook must not break the caller
                _report_failure(handler, Event())


def _rejection(breaker: str, state: str, retry_after: float, count: int) -> CallRejected:
    return CallRejected(
        breaker=breaker, state=state, retry_after=retry_after, rejected_since_open=count
    )


_reported: set[int] = set()
_reported_lock = threading.Lock()


def _report_failure(hook: object, event: Event) -> None:
    key = id(hook)
    with _reported_lock:
        if key in _reported:
            return
        _reported.add(key)
    _log.error(
        "clarity_resilience event hook %r raised on %s; it stays installed, further "
        "errors from it are not logged",
        hook,
        type(event).__name__,
        exc_info=True,
    )
