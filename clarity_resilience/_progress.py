"""A one-line progress display for long hashing commands, on a terminal only.

The command line shows files done, bytes, rate and time left on stderr while it hashes;
piped, redirected or with ``--quiet`` it shows nothing, so its output stays the result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]

# Redraw at most this often (seconds): hashing threads call in far more often.
_REDRAW = 0.2
_MIB = 1024 * 1024


class Progress:
    """Count files and bytes done, and redraw one status line now and then.

    Args:
        stream: Where to draw (stderr); nothing is drawn unless ``enabled``.
        files: How many files will be done (0: not known in advance).
        total_bytes: How many bytes, if known (for the time left).
        enabled: Whether to draw at all (a terminal, and not ``--quiet``).
        clock: Returns seconds (injected by tests).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        files: int,
        total_bytes: int | None,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.files = files
        self.total_bytes = total_bytes
        self.enabled = enabled
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._drawn_at = float("-inf")
        self._drawn = False
        self.done_files = 0
        self.done_bytes = 0

    def __call__(self, nbytes: int) -> None:
        """Record one finished file of ``nbytes`` bytes (called from hashing threads)."""
        with self._lock:
            self.done_files += 1
            self.done_bytes += nbytes
            now = self._clock()
            if self.enabled and (now - self._drawn_at >= _REDRAW or self.done_files == self.files):
                self._drawn_at = now
                self._draw(now)

    def line(self, now: float) -> str:
        """Return the status line for the counts so far."""
        elapsed = max(now - self._start, 1e-9)
        rate = self.done_bytes / elapsed
        files = f"{self.done_files}/{self.files}" if self.files else f"{self.done_files}"
        text = (
            f"{files} files, {self.done_bytes / _MIB:.1f}"
            + (f"/{self.total_bytes / _MIB:.1f}" if self.total_bytes else "")
            + f" MiB, {rate / _MIB:.1f} MiB/s"
        )
        if self.total_bytes and rate > 0 and self.done_bytes < self.total_bytes:
            text += f", {(self.total_bytes - self.done_bytes) / rate:.0f} s left"
        return text

    def _draw(self, now: float) -> None:
        self.stream.write(f"\r\x1b[K{self.line(now)}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Clear the status line (results then print on a clean line)."""
        with self._lock:
            if self._drawn:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._drawn = False
