"""_loop_stream: async bodies read from a synchronous core, every wait bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from clarity_resilience._http import DeadlineError
from clarity_resilience._loop_stream import CHUNK, LoopStream, run_on_loop


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in its own thread, as s3fs's and adlfs's are."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def now() -> float:
    return 100.0


class Body:
    """An async body handing out ``data`` in pieces of ``piece`` bytes."""

    def __init__(self, data: bytes, piece: int = 1000) -> None:
        self.data = data
        self.piece = piece
        self.closed = threading.Event()
        self.reads = 0

    async def read(self, size: int) -> bytes:
        self.reads += 1
        part, self.data = self.data[: min(size, self.piece)], self.data[min(size, self.piece) :]
        return part

    def close(self) -> None:
        self.closed.set()


class TestRunOnLoop:
    def test_returns_the_result(self, loop: asyncio.AbstractEventLoop) -> None:
        """A coroutine that finishes in time gives its result."""

        async def answer() -> int:
            return 42

        assert run_on_loop(loop, answer(), 101.0, now) == 42

    def test_a_request_timeout_is_not_the_deadline(self, loop: asyncio.AbstractEventLoop) -> None:
        """The coroutine's own TimeoutError (a socket wait) propagates as itself."""

        async def socket_timeout() -> None:
            raise TimeoutError("read timed out")

        with pytest.raises(TimeoutError, match="read timed out"):
            run_on_loop(loop, socket_timeout(), 1e9, now)

    def test_the_deadline_cancels_the_coroutine(self, loop: asyncio.AbstractEventLoop) -> None:
        """Past the deadline: DeadlineError, and the coroutine is cancelled on its loop."""
        cancelled = threading.Event()

        async def hang() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with pytest.raises(DeadlineError):
            run_on_loop(loop, hang(), 100.0, now)  # the deadline is now
        assert cancelled.wait(timeout=30)


class TestLoopStream:
    def test_chunks_are_whole_and_in_order(self, loop: asyncio.AbstractEventLoop) -> None:
        """Pieces are gathered into chunks of CHUNK bytes; the last is the rest."""
        data = bytes(range(256)) * ((2 * CHUNK + 777) // 256 + 1)
        body = Body(data, piece=65536)

        async def open_body() -> Body:
            return body

        stream = LoopStream(loop, open_body, 1e9, now)
        chunks = list(stream)
        stream.close()
        assert b"".join(chunks) == data
        assert [len(c) for c in chunks[:-1]] == [CHUNK] * (len(chunks) - 1)
        assert body.closed.wait(timeout=30)

    def test_no_request_before_the_first_chunk_is_asked_for(
        self, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Closing an unread stream sends nothing (a size refusal costs no GET)."""
        opened: list[bool] = []

        async def open_body() -> Body:
            opened.append(True)
            return Body(b"x")

        stream = LoopStream(loop, open_body, 1e9, now)
        stream.close()
        run_on_loop(loop, asyncio.sleep(0), 1e9, now)  # the close has run on the loop
        assert opened == []

    def test_read_once(self, loop: asyncio.AbstractEventLoop) -> None:
        """A second iteration is a programming error, not a silent empty body."""

        async def open_body() -> Body:
            return Body(b"abc")

        stream = LoopStream(loop, open_body, 1e9, now)
        assert list(stream) == [b"abc"]
        with pytest.raises(RuntimeError, match="once"):
            list(stream)

    def test_a_stalled_read_ends_at_the_deadline_and_closes_the_body(
        self, loop: asyncio.AbstractEventLoop
    ) -> None:
        """A read still pending at the deadline: DeadlineError, then the body is closed."""
        body = Body(b"")
        reading = threading.Event()

        async def stall(size: int) -> bytes:
            reading.set()
            await asyncio.Event().wait()
            return b""

        body.read = stall  # type: ignore[method-assign]

        async def open_body() -> Body:
            return body

        def clock_once_reading() -> float:
            # The deadline is reached only once the read is under way (no race with it).
            assert reading.wait(timeout=30)
            return 100.0

        stream = LoopStream(loop, open_body, 100.0, clock_once_reading)
        with pytest.raises(DeadlineError):
            next(iter(stream))
        stream.close()
        assert body.closed.wait(timeout=30)
