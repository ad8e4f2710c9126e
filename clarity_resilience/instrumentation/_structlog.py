"""structlog hook: one audit event per outcome, named ``clarity_resilience.<noun>_<verb>``."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._reasons import Reason
from ._events import CallRejected, Event, PredictionFailed
from ._factory import HookFactory

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["StructlogOnEventHook", "logs_rejection"]

_LEVELS = ("debug", "info", "warning", "error", "critical")
_LEVEL_NUMBERS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

#: Where events go while the application has not configured structlog.
STDLIB_LOGGER = logging.getLogger("clarity_resilience")


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
    While the application has not configured structlog (``structlog.is_configured()``
    is false), events go to the standard ``logging`` logger ``clarity_resilience``
    instead of structlog's default (which prints everything, debug included, to
    stdout): the application's logging configuration applies, and with none, only
    warnings and errors reach stderr through logging's last-resort handler.
    """

    def __init__(self) -> None:
        import structlog

        self._proxy = structlog.get_logger("clarity_resilience")
        self._get_config: Callable[[], dict[str, Any]] = structlog.get_config
        self._is_configured: Callable[[], bool] = structlog.is_configured
        # The method a filtering bound logger has for the levels it drops (public API:
        # a logger filtering at CRITICAL drops debug).
        self._nop = structlog.make_filtering_bound_logger(logging.CRITICAL).debug
        self._bound: _Bound | None = None
        self._shed_counts: dict[str, itertools.count[int]] = {}

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
        if isinstance(event, PredictionFailed):
            if event.reason is Reason.BREAKER_OPEN:
                return  # the breaker's own (sampled) call_rejected line audits this denial
            if event.reason is Reason.OVERLOADED and not logs_rejection(self._shed(event.model)):
                return  # a spike sheds thousands a second: sampled like rejections
        self._log(event)

    def _shed(self, model: str) -> int:
        """Return the running count of shed calls of ``model`` (this one included)."""
        counter = self._shed_counts.get(model)
        if counter is None:
            counter = self._shed_counts.setdefault(model, itertools.count(1))
        return next(counter)  # next() on a count is atomic in CPython

    def on_rejection(self, breaker: str, state: str, retry_after: float, count: int) -> None:
        """Log a sampled rejection; build its event only when it is logged (fast path)."""
        if logs_rejection(count):
            self._log(
                CallRejected(
                    breaker=breaker,
                    state=state,
                    retry_after=retry_after,
                    rejected_since_open=count,
                )
            )

    def _log(self, event: Event) -> None:
        if not self._is_configured():
            _log_to_stdlib(event)
            return
        bound = self._logger()
        level = event.level
        if level in bound.skipped:
            return
        getattr(bound.logger, level)(event.name, **event.fields())


def _log_to_stdlib(event: Event) -> None:
    """Log ``event`` through the ``clarity_resilience`` stdlib logger."""
    level = _LEVEL_NUMBERS.get(event.level, logging.ERROR)
    if not STDLIB_LOGGER.isEnabledFor(level):
        return
    fields = event.fields()
    rendered = " ".join(f"{key}={value!r}" for key, value in fields.items())
    STDLIB_LOGGER.log(
        level,
        "%s %s",
        event.name,
        rendered,
        extra={"clarity_event": event.name, "clarity_fields": fields},
    )


def _build(_registry: CollectorRegistry | None) -> StructlogHook:
    return StructlogHook()


#: The default structlog hook (one logger, whatever the registry).
StructlogOnEventHook = HookFactory(_build)
