"""The hook protocol and the lazily built hook factory (no backend imports)."""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ._events import Event

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["EventHook", "HookFactory"]


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
