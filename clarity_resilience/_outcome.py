"""Report a load attempt's outcome: one event (and its metric) per stage, exactly once.

A load attempt has two stages, each reported once:

- the *check* (are these the published bytes?): ``IntegrityCheckPassed`` or
  ``IntegrityCheckFailed``; the failure increments ``model_integrity_failures_total``;
- the *load* (did the loader accept them?): ``ModelLoaded`` or ``ModelLoadFailed``; a
  loader refusal (``load_error``, ``unsafe_format``) increments the same counter, an
  integrity refusal does not (its check already counted it).

Nested layers (a manifest entry read by an origin read by a guard) may each see the same
error; :meth:`Attempt.check_failed` marks the error it reports, so a second report of it
is a no-op and one refusal is never counted twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .exceptions import ClarityResilienceError, IntegrityError
from .instrumentation import (
    Emitter,
    IntegrityCheckFailed,
    IntegrityCheckPassed,
    ModelLoaded,
    ModelLoadFailed,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Attempt", "was_reported"]

# Set on an error once its failure event has been emitted (exceptions take attributes).
_CHECK_REPORTED = "_clarity_check_reported"
_LOAD_REPORTED = "_clarity_load_reported"


def was_reported(error: BaseException) -> bool:
    """Return whether ``error``'s integrity-check failure has already been reported."""
    return bool(getattr(error, _CHECK_REPORTED, False))


class Attempt:
    """The reporter of one load attempt for one ``model`` label.

    Args:
        model: The ``model`` label of every event.
        registry: The Prometheus registry to record into (default registry if None).
        emitter: An emitter to reuse instead (its registry wins over ``registry``).
    """

    __slots__ = ("emitter", "model", "start")

    def __init__(
        self,
        model: str,
        registry: CollectorRegistry | None = None,
        *,
        emitter: Emitter | None = None,
    ) -> None:
        self.model = model
        self.emitter = emitter if emitter is not None else Emitter(registry)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Return the seconds since the attempt started."""
        return time.perf_counter() - self.start

    # -- the check: are these the published bytes? ----------------------------------

    def check_passed(self, path: str, size: int) -> None:
        """Report that ``path`` (``size`` bytes) matched its digest."""
        self.emitter.emit(
            IntegrityCheckPassed(model=self.model, path=path, size=size, duration=self.elapsed())
        )

    def check_failed(self, path: str, error: IntegrityError) -> bool:
        """Report ``error`` (found checking ``path``) unless it was reported already.

        Returns:
            Whether an event was emitted (False: reported before, by an inner layer).
        """
        if was_reported(error):
            return False
        setattr(error, _CHECK_REPORTED, True)
        self.emitter.emit(
            IntegrityCheckFailed(
                model=self.model,
                path=error.path or path,
                reason=error.reason,
                error_type=type(error).__name__,
                detail=str(error),
                duration=self.elapsed(),
            )
        )
        return True

    @contextlib.contextmanager
    def checking(self, path: str) -> Iterator[None]:
        """Report an ``IntegrityError`` raised in the block as a failed check, then re-raise."""
        try:
            yield
        except IntegrityError as e:
            self.check_failed(path, e)
            raise

    # -- the load: did the loader accept the verified bytes? ------------------------

    def loaded(self, sha256: str, version: str | None, *, signer: str | None = None) -> None:
        """Report that the verified bytes (``sha256``, ``version``, ``signer``) became a model."""
        self.emitter.emit(
            ModelLoaded(
                model=self.model,
                sha256=sha256,
                version=version,
                duration=self.elapsed(),
                signer=signer,
            )
        )

    def load_failed(self, error: ClarityResilienceError) -> bool:
        """Report that the attempt failed with ``error``, unless it was reported already.

        Returns:
            Whether an event was emitted.
        """
        if getattr(error, _LOAD_REPORTED, False):
            return False
        setattr(error, _LOAD_REPORTED, True)
        if isinstance(error, IntegrityError):
            # Every layer reports through Attempt, so this only fires on a path that
            # forgot to: the refusal is still counted, once.
            self.check_failed("<unknown>", error)
        self.emitter.emit(
            ModelLoadFailed(
                model=self.model,
                reason=error.reason,
                error_type=type(error).__name__,
                detail=str(error),
                duration=self.elapsed(),
            )
        )
        return True
