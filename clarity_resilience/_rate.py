"""A sliding time window of call outcomes, for the breaker's failure-rate mode.

resilience4j's time-based window, in small fixed memory: the window of ``window``
seconds is split into ``buckets`` equal slots; each call lands in the slot of its time,
and slots older than the window are dropped as time moves on. The window *trips* when,
with at least ``minimum_calls`` calls in it, the share of failures reaches
``failure_rate`` or the share of slow calls reaches ``slow_call_rate``.

The clock is injected, so the rules can be tested (and model-checked) without sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["RateWindow"]


class RateWindow:
    """Count calls, failures and slow calls over the last ``window`` seconds.

    Args:
        failure_rate: Trip when failures / calls reaches this (0 < rate <= 1).
        minimum_calls: Never trip with fewer calls than this in the window.
        window: The window's length in seconds.
        slow_call_duration: Calls taking at least this long (seconds) are slow; None:
            no call is slow.
        slow_call_rate: Trip when slow calls / calls reaches this (None: never for
            slowness).
        buckets: How many slots the window is split into (its time resolution).
        clock: Returns the time in seconds (default :func:`time.monotonic`).

    Raises:
        ValueError: A rate is outside (0, 1], a count or duration is not positive.
    """

    def __init__(
        self,
        *,
        failure_rate: float,
        minimum_calls: int = 20,
        window: float = 60.0,
        slow_call_duration: float | None = None,
        slow_call_rate: float | None = None,
        buckets: int = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_rate("failure_rate", failure_rate)
        if slow_call_rate is not None:
            _check_rate("slow_call_rate", slow_call_rate)
        if (slow_call_rate is None) != (slow_call_duration is None):
            raise ValueError("slow_call_duration and slow_call_rate go together")
        if slow_call_duration is not None and not slow_call_duration > 0:
            raise ValueError(f"slow_call_duration must be positive, got {slow_call_duration!r}")
        if isinstance(minimum_calls, bool) or not isinstance(minimum_calls, int):
            raise TypeError(f"minimum_calls must be an int, got {minimum_calls!r}")
        if minimum_calls < 1:
            raise ValueError(f"minimum_calls must be at least 1, got {minimum_calls}")
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        if type(buckets) is not int or buckets < 1:
            raise ValueError(f"buckets must be a positive int, got {buckets!r}")
        self.failure_rate = float(failure_rate)
        self.minimum_calls = minimum_calls
        self.window = float(window)
        self.slow_call_duration = slow_call_duration
        self.slow_call_rate = slow_call_rate
        self._buckets = buckets
        self._width = self.window / buckets
        self._clock = clock
        self._lock = threading.Lock()
        # Per slot: [slot number, calls, failures, slow calls]
        self._slots = [[-1, 0, 0, 0] for _ in range(buckets)]
        self._calls = self._failures = self._slow = 0

    def _advance(self, slot: int) -> list[int]:
        """Return the counters of ``slot``, dropping what fell out of the window."""
        for entry in self._slots:
            if entry[0] >= 0 and entry[0] <= slot - self._buckets:
                self._calls -= entry[1]
                self._failures -= entry[2]
                self._slow -= entry[3]
                entry[:] = [-1, 0, 0, 0]
        entry = self._slots[slot % self._buckets]
        if entry[0] != slot:
            entry[:] = [slot, 0, 0, 0]
        return entry

    def record(self, *, failed: bool, duration: float = 0.0) -> bool:
        """Count one call's outcome; return whether the window now trips."""
        slow = self.slow_call_duration is not None and duration >= self.slow_call_duration
        with self._lock:
            entry = self._advance(int(self._clock() // self._width))
            entry[1] += 1
            entry[2] += failed
            entry[3] += slow
            self._calls += 1
            self._failures += failed
            self._slow += slow
            return self._trips()

    def _trips(self) -> bool:
        if self._calls < self.minimum_calls:
            return False
        # Divide (do not multiply the rate): 3 / 10 >= 0.3 holds, 3 >= 0.3 * 10 does not.
        if self._failures / self._calls >= self.failure_rate:
            return True
        return self.slow_call_rate is not None and self._slow / self._calls >= self.slow_call_rate

    def counts(self) -> tuple[int, int, int]:
        """Return (calls, failures, slow calls) in the window now."""
        with self._lock:
            self._advance(int(self._clock() // self._width))
            return self._calls, self._failures, self._slow

    def reset(self) -> None:
        """Forget every outcome (the breaker closed again, or was reset)."""
        with self._lock:
            for entry in self._slots:
                entry[:] = [-1, 0, 0, 0]
            self._calls = self._failures = self._slow = 0


def _check_rate(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number in (0, 1], got {value!r}")
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
