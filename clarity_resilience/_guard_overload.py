"""A guard's overload settings: its concurrency limit and its prediction deadlines.

Kept out of ``_guard.py`` so the guard reads as serving + loading; the prediction path
there calls into this module. See :mod:`clarity_resilience._overload` for the
primitives (:class:`ConcurrencyLimit`, :class:`Deadline`).
"""

from __future__ import annotations

import math
import threading

from ._overload import ConcurrencyLimit, Deadline

__all__ = ["DEFAULT_DEADLINE_WORKERS", "Overload", "check_timeout"]

#: Worker threads for plain functions under a deadline when no concurrency limit is set.
DEFAULT_DEADLINE_WORKERS = 32


def check_timeout(timeout: float) -> float:
    """Return ``timeout`` as a float, or raise if it is not a positive, finite number.

    Raises:
        TypeError: ``timeout`` is not a number.
        ValueError: ``timeout`` is not positive and finite.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class Overload:
    """One guard's concurrency limit (optional) and deadline pool (made on first use).

    Args:
        name: The model's name (names the worker threads).
        timeout: The default deadline of a prediction, in seconds (None: none).
        max_concurrency: Predictions that may run at once (None: no limit).
        max_queue: Predictions that may wait for a slot.
        queue_timeout: Longest wait for a slot, in seconds.
        max_abandoned: Predictions past their deadline that may still run.
        retry_after: ``Retry-After`` seconds of a shed call.
    """

    def __init__(
        self,
        name: str,
        *,
        timeout: float | None,
        max_concurrency: int | None,
        max_queue: int,
        queue_timeout: float | None,
        max_abandoned: int,
        retry_after: float,
    ) -> None:
        self.timeout = None if timeout is None else check_timeout(timeout)
        self.limit: ConcurrencyLimit | None = None
        if max_concurrency is not None:
            self.limit = ConcurrencyLimit(
                max_concurrency,
                max_queue=max_queue,
                queue_timeout=queue_timeout,
                retry_after=retry_after,
            )
        elif max_queue or queue_timeout is not None:
            raise ValueError("max_queue and queue_timeout need max_concurrency")
        if isinstance(max_abandoned, bool) or not isinstance(max_abandoned, int):
            raise TypeError(f"max_abandoned must be an int, got {max_abandoned!r}")
        if max_abandoned < 1:  # 0 would shed every call under a deadline
            raise ValueError(f"max_abandoned must be at least 1, got {max_abandoned}")
        self.max_abandoned = max_abandoned
        self._name = name
        self._deadline: Deadline | None = None
        self._lock = threading.Lock()

    @property
    def abandoned(self) -> int:
        """Return how many predictions past their deadline are still running."""
        deadline = self._deadline
        return 0 if deadline is None else deadline.abandoned

    def deadline(self, timeout: float) -> Deadline:
        """Return the deadline pool, made on first use (importing starts no thread)."""
        deadline = self._deadline
        if deadline is None:
            with self._lock:
                deadline = self._deadline
                if deadline is None:
                    limit = self.limit
                    workers = DEFAULT_DEADLINE_WORKERS if limit is None else limit.max_concurrency
                    deadline = self._deadline = Deadline(
                        timeout,
                        workers=workers,
                        max_abandoned=self.max_abandoned,
                        name=f"clarity-predict-{self._name}",
                    )
        return deadline
