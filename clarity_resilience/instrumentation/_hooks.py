"""Hook configuration and event delivery.

Breakers, guards and the integrity functions report every outcome as an
:class:`Event`. The hooks configured here receive them. By default that is Prometheus
and structlog, both built lazily on the first event (so importing the package
registers no metric and touches no logger). A :class:`HookFactory` is built once per
``CollectorRegistry``, which is how ``Breaker(..., registry=reg)`` records into ``reg``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol, TypeAlias

from ._events import Event

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


class EventHook(Protocol):
    """Anything that can be called with an :class:`Event`.

    A hook must be quick and must not block: it runs on the caller's thread (or event
    loop). If it raises, the error is logged once and the call it reports on goes on.
    """

    def __call__(self, event: Event, /) -> None: ...


@dataclasses.dataclass(frozen=True, eq=False)
class HookFactory:
    """Build a hook lazily, once per Prometheus registry.

    Args:
        build: Called with the emitting object's registry (``None`` for the default
            registry) on its first event; returns the hook for that registry.
    """

    build: Callable[[CollectorRegistry | None], EventHook]
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)
    _bound: weakref.WeakKeyDictionary[CollectorRegistry, EventHook] = dataclasses.field(
        default_factory=weakref.WeakKeyDictionary, repr=False
    )
    _default: list[EventHook] = dataclasses.field(default_factory=list, repr=False)

    def bind(self, registry: CollectorRegistry | None) -> EventHook:
        """Return the hook for ``registry``, building it on first use."""
        with self._lock:
            if registry is None:
                if not self._default:
                    self._default.append(self.build(None))
                return self._default[0]
            hook = self._bound.get(registry)
            if hook is None:
                hook = self._bound[registry] = self.build(registry)
            return hook


HookSpec: TypeAlias = "EventHook | HookFactory"


class _Config:
    """The process-wide hook list, with a generation so emitters notice changes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hooks: tuple[HookSpec, ...] | None = None  # None: the defaults, not built yet
        self.generation = 0


_CONFIG = _Config()


def _default_hooks() -> tuple[HookSpec, ...]:
    from ._prometheus import PrometheusOnEventHook
    from ._structlog import StructlogOnEventHook

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


class Emitter:
    """Deliver events to the configured hooks on behalf of one breaker or guard.

    Args:
        registry: The Prometheus registry that registry-bound hooks record into
            (``None``: prometheus_client's default registry).
    """

    __slots__ = ("_generation", "_hooks", "registry")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry
        self._generation = -1
        self._hooks: tuple[EventHook, ...] = ()

    def _resolve(self) -> tuple[EventHook, ...]:
        if self._generation != _CONFIG.generation:
            generation = _CONFIG.generation
            specs = get_on_event_hooks()
            self._hooks = tuple(
                spec.bind(self.registry) if isinstance(spec, HookFactory) else spec
                for spec in specs
            )
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
