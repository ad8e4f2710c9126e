"""Bodies of async object-store clients, read from a synchronous download core.

s3fs and adlfs run their clients (aiobotocore, the async Azure SDK) on an event loop of
their own, in another thread. :class:`LoopStream` reads such a body there one chunk ahead
of the chunk being used here, so the download goes on while the core hashes and writes.
Every wait is bounded by the attempt's deadline: a read still pending then is cancelled
and reported as :class:`~clarity_resilience._http.DeadlineError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

from ._http import DeadlineError

__all__ = ["CHUNK", "MAX_READ", "LoopStream", "read_chunks", "run_on_loop"]

#: The size of one read of a body (the last may be shorter).
CHUNK = 1 << 20
#: Ranged reads (no streamed body) double from :data:`CHUNK` up to this size.
MAX_READ = 16 << 20
_T = TypeVar("_T")


class _Body(Protocol):
    def read(self, size: int) -> Awaitable[bytes]: ...


def run_on_loop(
    loop: asyncio.AbstractEventLoop,
    coroutine: Coroutine[Any, Any, _T],
    deadline_at: float,
    clock: Callable[[], float],
) -> _T:
    """Run ``coroutine`` on ``loop`` (another thread) and return its result.

    Raises:
        DeadlineError: ``deadline_at`` (on ``clock``) passed first; the coroutine is
            cancelled.
    """
    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    return _result(future, deadline_at, clock)


def _result(
    future: concurrent.futures.Future[_T], deadline_at: float, clock: Callable[[], float]
) -> _T:
    # wait(), not result(timeout=): the request's own TimeoutError (a socket wait over
    # ``timeout``) is the same class, and must not pass for the deadline.
    done, _ = concurrent.futures.wait([future], timeout=max(deadline_at - clock(), 0.0))
    if not done:
        future.cancel()
        raise DeadlineError("no answer before the attempt's deadline")
    return future.result()


class LoopStream:
    """The chunks of one async body, each read started before the last is handed over.

    ``open_body`` (a coroutine function) sends the request on the first iteration, so a
    refusal before the body (an announced size over the cap) costs no request. Reads and
    the final close run on ``loop``, the client's own. Iterate once; always :meth:`close`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        open_body: Callable[[], Awaitable[_Body]],
        deadline_at: float,
        clock: Callable[[], float],
    ) -> None:
        self._loop = loop
        self._open_body = open_body
        self._deadline_at = deadline_at
        self._clock = clock
        self._body: _Body | None = None
        self._started = False
        self._next: concurrent.futures.Future[bytes] | None = None

    def _start(self, first: bool) -> concurrent.futures.Future[bytes]:
        read = self._open_and_read() if first else self._read()
        return asyncio.run_coroutine_threadsafe(read, self._loop)

    async def _open_and_read(self) -> bytes:
        body = await self._open_body()
        # Set before the first read: a cancellation from close() lands at an await (the
        # request or a read), so the body is either never returned or closed below.
        self._body = body
        return await self._read()

    async def _read(self) -> bytes:
        """Read :data:`CHUNK` bytes (fewer only at the end of the body)."""
        assert self._body is not None
        parts: list[bytes] = []
        got = 0
        while got < CHUNK:
            part = await self._body.read(CHUNK - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise RuntimeError("a body is read once")
        self._started = True
        self._next = self._start(first=True)
        while self._next is not None:
            chunk = _result(self._next, self._deadline_at, self._clock)
            # Start the next read before handing this chunk over.
            self._next = self._start(first=False) if chunk else None
            if chunk:
                yield chunk

    def close(self) -> None:
        """Abandon any read in flight and close the body (idempotent)."""
        pending, self._next = self._next, None
        if pending is not None:
            pending.cancel()
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._close_body)

    def _close_body(self) -> None:
        # On the loop's thread, after the cancellation above was delivered.
        if self._body is not None:
            _close(self._body)


def _close(body: object) -> None:
    """Close ``body`` if it can be (an aiobotocore body can; an Azure downloader cannot)."""
    close = getattr(body, "close", None)
    if callable(close):
        close()


def read_chunks(f: Any) -> Iterator[bytes]:
    """Yield the chunks of a file object, reads doubling from :data:`CHUNK` to 16 MiB.

    Each read of an unbuffered object-store file is one ranged GET: start small (a
    failure is found early, the deadline is checked often), then double so a large
    object costs a few dozen requests, not one per MiB.
    """
    size = CHUNK
    while chunk := f.read(size):
        yield bytes(chunk)
        size = min(size * 2, MAX_READ)
