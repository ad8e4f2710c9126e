"""What the object-store tests share: the retry log, and views of audit, metrics and cache.

The fixtures that go with them (``no_backoff``, ``retries``, ``cache``) are in conftest.
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from clarity_resilience import Reason
from clarity_resilience.instrumentation import Event, IntegrityCheckFailed

__all__ = ["InThread", "RetryLog", "audited", "cache_entries", "failures", "kill_mid_download"]


class RetryLog(list[Any]):
    """Every retry stamina scheduled, and actions to run on each one."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[Any] = []

    def __call__(self, details: Any) -> None:
        self.append(details)
        for action in self.actions:
            action(details)


def audited(events: list[Event]) -> list[tuple[str, Reason]]:
    """Return the (path, reason) of every integrity_check_failed event."""
    return [(e.path, e.reason) for e in events if isinstance(e, IntegrityCheckFailed)]


def failures(registry: CollectorRegistry, model: str = "m") -> dict[Reason, float]:
    """Return the nonzero ``model_integrity_failures_total`` counts of ``model`` by reason."""
    counts = {
        reason: registry.get_sample_value(
            "model_integrity_failures_total", {"model": model, "reason": reason.value}
        )
        for reason in Reason
    }
    return {reason: value for reason, value in counts.items() if value}


def cache_entries(cache: pathlib.Path) -> list[str]:
    """Return the names in a source's cache directory, lock files left out."""
    names = [p.name for p in cache.iterdir()] if cache.exists() else []
    return sorted(name for name in names if not name.endswith(".lock"))


class InThread:
    """Run ``call`` in a thread; keep what it returned or the exception it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as e:
            self.error = e

    def outcome(self, timeout: float) -> Any:
        """Wait up to ``timeout`` s; return the result, failing the test with the error."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout} s"
        assert self.error is None, f"raised {self.error!r} (cause {self.error.__cause__!r})"
        return self.result


def kill_mid_download(
    proxy: Any, kill: Callable[[], None], source: Any, *, after: int = (1 << 20) + (200 << 10)
) -> Any:
    """Start ``source.fetch()``, kill the store once ``after`` bytes came through the proxy.

    Returns what the fetch returned (it must recover through its retries), failing the
    test with the fetch's own error otherwise.
    """
    fetching = InThread(source.fetch)
    deadline = time.monotonic() + 30
    while proxy.bytes_downstream < after:
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.005)  # sleep-ok: polling for a condition, bounded by a deadline
    kill()
    return fetching.outcome(timeout=60)
