"""structlog hook: one audit event per outcome, named ``clarity_resilience.<noun>_<verb>``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._reasons import Reason
from ._events import CallRejected, Event, PredictionFailed
from ._hooks import HookFactory

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["StructlogOnEventHook", "logs_rejection"]

_LEVELS = ("debug", "info", "warning", "error", "critical")


def logs_rejection(count: int) -> bool:
    """Return whether the ``count``-th rejection since a breaker opened is logged.

    An open breaker in front of busy traffic rejects thousands of calls a second; a log
    line for each would drown the audit log (and cost more than the rejection). Every
    rejection is counted in ``circuit_breaker_rejections_total``; the log gets the first
    one, the 10th, the 100th and every 1000th, each carrying the running count.
    """
    return count in (1, 10, 100) or count % 1000 == 0


class _Bound:
    """A bound logger and the structlog configuration it was assembled from."""

    __slots__ = (
        "context_class",
        "logger",
        "logger_factory",
        "processors",
        "skipped",
        "wrapper_class",
    )

    def __init__(self, config: dict[str, Any], logger: Any, skipped: frozenset[str]) -> None:
        self.processors = config["processors"]
        self.wrapper_class = config["wrapper_class"]
        self.logger_factory = config["logger_factory"]
        self.context_class = config["context_class"]
        self.logger = logger
        self.skipped = skipped


class StructlogHook:
    """Log each event with structlog at the event's level.

    The library never configures structlog: events go wherever the application's
    structlog configuration sends them, and a reconfiguration takes effect at once.
    """

    def __init__(self) -> None:
        import logging

        import structlog

        self._proxy = structlog.get_logger("clarity_resilience")
        self._get_config: Callable[[], dict[str, Any]] = structlog.get_config
        # The method a filtering bound logger has for the levels it drops (public API:
        # a logger filtering at CRITICAL drops debug).
        self._nop = structlog.make_filtering_bound_logger(logging.CRITICAL).debug
        self._bound: _Bound | None = None

    def _logger(self) -> _Bound:
        # Asking the lazy proxy to log assembles a new bound logger (and calls the logger
        # factory) on every event. Assemble one per structlog configuration instead: the
        # same objects, compared by identity, give the same logger (processors is the
        # configured list itself, so in-place edits like capture_logs() apply at once).
        config = self._get_config()
        bound = self._bound
        if (
            bound is None
            or bound.processors is not config["processors"]
            or bound.wrapper_class is not config["wrapper_class"]
            or bound.logger_factory is not config["logger_factory"]
            or bound.context_class is not config["context_class"]
        ):
            logger = self._proxy.bind()
            # Levels whose method is a filtering logger's no-op: skip building the fields.
            skipped = frozenset(
                level for level in _LEVELS if getattr(type(logger), level, None) is self._nop
            )
            bound = self._bound = _Bound(config, logger, skipped)
        return bound

    def __call__(self, event: Event, /) -> None:
        if isinstance(event, CallRejected) and not logs_rejection(event.rejected_since_open):
            return
        if isinstance(event, PredictionFailed) and event.reason is Reason.BREAKER_OPEN:
            return  # the breaker's own (sampled) call_rejected line audits this denial
        bound = self._logger()
        level = event.level
        if level in bound.skipped:
            return
        getattr(bound.logger, level)(event.name, **event.fields())


def _build(_registry: CollectorRegistry | None) -> StructlogHook:
    return StructlogHook()


#: The default structlog hook (one logger, whatever the registry).
StructlogOnEventHook = HookFactory(_build)
