"""``with breaker.guard():`` and ``async with breaker.guard():``."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._breaker import Breaker
    from ._breaker_storage import SharedStorage

__all__ = ["BreakerGuard", "sync_shielded"]

# The breaker's clock (time-machine moves it together with pybreaker's UTC now).
_now = time.time


class BreakerGuard:
    """``with breaker.guard():`` and ``async with breaker.guard():``."""

    __slots__ = ("_breaker", "_start", "_trial")

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker
        self._trial = False
        self._start = 0.0

    def __enter__(self) -> None:
        shared = self._breaker._shared
        if shared is not None:
            shared.sync()
        self._trial = self._breaker._admit()
        self._start = _now() if self._breaker._timed else 0.0

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._record(exc)
        shared = self._breaker._shared
        if shared is not None and shared.has_pending:
            shared.sync()

    def _record(self, exc: BaseException | None) -> None:
        if exc is None:
            self._breaker._record_success(self._trial, self._start)
        else:
            self._breaker._record_error(exc, self._trial, self._start)

    async def __aenter__(self) -> None:
        shared = self._breaker._shared
        if shared is not None:
            await shared.sync_async()
        self._trial = self._breaker._admit()
        self._start = _now() if self._breaker._timed else 0.0

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._record(exc)
        shared = self._breaker._shared
        if shared is not None and shared.has_pending:
            await sync_shielded(shared)


async def sync_shielded(shared: SharedStorage) -> None:
    """Send an outcome's writes even while the task is being cancelled."""
    await asyncio.shield(shared.sync_async())
