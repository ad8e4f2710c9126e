"""structlog hook: one audit event per outcome, named ``clarity_resilience.<noun>_<verb>``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._events import Event
from ._hooks import HookFactory

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["StructlogOnEventHook"]


class StructlogHook:
    """Log each event with structlog at the event's level.

    The library never configures structlog: events go wherever the application's
    structlog configuration sends them.
    """

    def __init__(self) -> None:
        import structlog

        self._logger = structlog.get_logger("clarity_resilience")

    def __call__(self, event: Event, /) -> None:
        getattr(self._logger, event.level)(event.name, **event.fields())


def _build(_registry: CollectorRegistry | None) -> StructlogHook:
    return StructlogHook()


#: The default structlog hook (one logger, whatever the registry).
StructlogOnEventHook = HookFactory(_build)
