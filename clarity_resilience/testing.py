"""Helpers for testing code that uses clarity-resilience.

Like :func:`structlog.testing.capture_logs`, :func:`capture_events` swaps the event
hooks for a recorder for the duration of a ``with`` block and restores them after::

    from clarity_resilience.testing import capture_events

    with capture_events() as events:
        guard.load()
    assert [e.name for e in events] == ["clarity_resilience.model_loaded"]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .instrumentation import Event, get_on_event_hooks, set_on_event_hooks

__all__ = ["capture_events"]


@contextlib.contextmanager
def capture_events(*, keep_hooks: bool = False) -> Iterator[list[Event]]:
    """Record every event emitted inside the block into a list.

    Args:
        keep_hooks: Also deliver events to the hooks configured before the block
            (Prometheus, structlog), instead of only recording them.

    Yields:
        The list that receives the events, in emission order.
    """
    previous = get_on_event_hooks()
    events: list[Event] = []
    set_on_event_hooks([*previous, events.append] if keep_hooks else [events.append])
    try:
        yield events
    finally:
        set_on_event_hooks(previous)
