"""The asyncio engine behind FaultProxy: toxics, the accept loop and one link per client.

Everything here runs on the proxy's event loop except :meth:`ProxyCore.update_toxics`,
which any thread may call: toxics are an immutable tuple swapped atomically, and each
link reads the current tuple for every chunk, so a change applies to open connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import random
import socket
import struct
import threading
from collections.abc import Callable
from typing import ClassVar, Literal

__all__ = [
    "Bandwidth",
    "Direction",
    "Latency",
    "LimitData",
    "ProxyCore",
    "ResetPeer",
    "Slicer",
    "Timeout",
    "Toxic",
]

Direction = Literal["upstream", "downstream"]
DIRECTIONS: tuple[Direction, ...] = ("upstream", "downstream")

_CHUNK = 65536
_QUEUE_CHUNKS = 16  # read-ahead per direction: enough to pipeline latency, bounded
_CLOSE_GRACE = 1.0  # seconds a closing peer gets to take buffered bytes before a reset


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toxic:
    """A fault applied to one direction of every connection through the proxy.

    Attributes:
        direction: ``"downstream"`` (upstream server to client, the default, as in
            Toxiproxy) or ``"upstream"`` (client to upstream server).
    """

    kind: ClassVar[str] = "toxic"
    direction: Direction = "downstream"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"direction must be 'upstream' or 'downstream', got {self.direction!r}"
            )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int | float) and value < 0:
                raise ValueError(f"{self.kind} {field.name} must be >= 0, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Latency(Toxic):
    """Delay every chunk by ``latency_ms`` plus a uniform draw in ``±jitter_ms``."""

    kind: ClassVar[str] = "latency"
    latency_ms: float
    jitter_ms: float = 0.0

    def sample(self, rng: random.Random) -> float:
        """Return one delay in seconds, never negative, drawing the jitter from ``rng``."""
        jitter = rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.latency_ms + jitter) / 1000


@dataclasses.dataclass(frozen=True, kw_only=True)
class Bandwidth(Toxic):
    """Pass data at ``rate`` KB/s (1 KB = 1000 bytes), in 100 ms slices."""

    kind: ClassVar[str] = "bandwidth"
    rate: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rate <= 0:
            raise ValueError(f"bandwidth rate must be > 0 KB/s, got {self.rate}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Timeout(Toxic):
    """Drop all data; close the connection after ``timeout_ms`` (0: never, a blackhole)."""

    kind: ClassVar[str] = "timeout"
    timeout_ms: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResetPeer(Toxic):
    """Reset the connection (TCP RST) ``timeout_ms`` after data next arrives."""

    kind: ClassVar[str] = "reset_peer"
    timeout_ms: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Slicer(Toxic):
    """Cut data into pieces of ``average_size ± size_variation`` bytes, ``delay_us`` apart."""

    kind: ClassVar[str] = "slicer"
    average_size: int
    size_variation: int = 0
    delay_us: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.average_size < 1 or self.size_variation >= self.average_size:
            raise ValueError("slicer needs average_size >= 1 and size_variation < average_size")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LimitData(Toxic):
    """Close the connection once ``bytes`` bytes have passed in this direction."""

    kind: ClassVar[str] = "limit_data"
    bytes: int


Toxics = tuple[tuple[str, Toxic], ...]


class ProxyCore:
    """Listen on a loopback port and forward every connection through the toxics."""

    def __init__(self, upstream: tuple[str, int], listen: tuple[str, int], seed: int) -> None:
        self.upstream = upstream
        self.listen_host, self.port = listen
        self.seed = seed
        self.toxics: Toxics = ()
        self.connections_total = 0
        self.bytes = dict.fromkeys(DIRECTIONS, 0)
        self.links: set[Link] = set()
        self.errors: list[Exception] = []  # bugs surfaced by stop(), never swallowed
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._changed = asyncio.Event()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        """Return whether new connections are accepted."""
        return self._listener is not None

    def update_toxics(self, change: Callable[[Toxics], Toxics]) -> None:
        """Apply ``change`` to the toxics atomically, from any thread."""
        with self._lock:
            self.toxics = change(self.toxics)
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        if _running_loop() is loop:
            self._toxics_changed()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._toxics_changed)

    def _toxics_changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        for link in self.links:
            link.sync_timers()

    async def changed_within(self, seconds: float) -> bool:
        """Wait up to ``seconds``; return early (true) if the toxics change meanwhile."""
        if seconds <= 0:
            return False
        changed = self._changed
        try:
            async with asyncio.timeout(seconds):
                await changed.wait()
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        """Bind the listening socket and start accepting."""
        self.loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()  # bound to this loop on first use
        await self.up()

    async def up(self) -> None:
        """Listen again (on the same port once one was assigned)."""
        if self.loop is None:
            raise RuntimeError("the proxy is not running; call start() first")
        if self._listener is not None:
            return
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        listener = socket.create_server((self.listen_host, self.port), family=family)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accepting = asyncio.get_running_loop().create_task(self._accept(listener))

    async def down(self) -> None:
        """Stop listening (clients get "connection refused") and close every connection."""
        accepting, self._accepting = self._accepting, None
        listener, self._listener = self._listener, None
        if accepting is not None:
            accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await accepting
        if listener is not None:
            listener.close()
        for link in list(self.links):
            link.close()
        await self._wait_for_handlers()

    async def stop(self) -> None:
        """Close the listener and every connection, and wait for all tasks to finish."""
        await self.down()
        self.loop = None

    async def _wait_for_handlers(self) -> None:
        if not self._handlers:
            return
        _, pending = await asyncio.wait(set(self._handlers), timeout=_CLOSE_GRACE * 2)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(listener)
            except (ConnectionAbortedError, InterruptedError):
                continue
            self.connections_total += 1
            link = Link(self, self.connections_total)
            task = loop.create_task(link.run(client))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
            # A task cancelled before it ever ran never reaches run()'s cleanup.
            task.add_done_callback(functools.partial(_close_socket, client))


def _close_socket(sock: socket.socket, _: object) -> None:
    sock.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Link:
    """One client connection and its upstream connection, with two toxic pipelines."""

    def __init__(self, core: ProxyCore, number: int) -> None:
        self.core = core
        self.number = number
        self._finished = asyncio.Event()
        self._eof: set[Direction] = set()
        self._writers: dict[Direction, asyncio.StreamWriter] = {}
        self._reset: Direction | None = None
        self._timers: dict[str, tuple[Toxic, asyncio.TimerHandle]] = {}

    @property
    def closing(self) -> bool:
        """Return whether the link is closing (nothing more may be forwarded)."""
        return self._finished.is_set()

    def close(self) -> None:
        """Close both sides gracefully (pending bytes are still delivered)."""
        self._finished.set()

    def reset(self, direction: Direction) -> None:
        """Reset the peer that ``direction`` writes to with a TCP RST, close the other."""
        self._reset = direction
        self._finished.set()

    def sync_timers(self) -> None:
        """Start a close timer for each new timeout toxic; cancel removed ones."""
        current = {name: toxic for name, toxic in self.core.toxics if isinstance(toxic, Timeout)}
        for name, (toxic, handle) in list(self._timers.items()):
            if current.get(name) is not toxic:
                handle.cancel()
                del self._timers[name]
        loop = asyncio.get_running_loop()
        for name, toxic in current.items():
            if toxic.timeout_ms > 0 and name not in self._timers:
                handle = loop.call_later(toxic.timeout_ms / 1000, self.close)
                self._timers[name] = (toxic, handle)

    async def run(self, client: socket.socket) -> None:
        """Connect upstream and pump both ways until either side or a toxic ends it."""
        self.core.links.add(self)
        tasks: list[asyncio.Task[None]] = []
        try:
            client_reader, self._writers["downstream"] = await asyncio.open_connection(sock=client)
            upstream_reader, self._writers["upstream"] = await asyncio.open_connection(
                *self.core.upstream
            )
            self.sync_timers()
            loop = asyncio.get_running_loop()
            readers: dict[Direction, asyncio.StreamReader] = {
                "upstream": client_reader,
                "downstream": upstream_reader,
            }
            for direction, reader in readers.items():
                pipe = Pipe(self, direction, reader, self._writers[direction])
                tasks += [loop.create_task(pipe.read()), loop.create_task(pipe.write())]
            await self._finished.wait()
        except OSError:
            pass  # the client left or the upstream is down: close whatever was opened
        except Exception as error:  # noqa: BLE001 - a bug, raised by stop()
            self.core.errors.append(error)
        finally:
            self.core.links.discard(self)
            for _, handle in self._timers.values():
                handle.cancel()
            for task in tasks:
                task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception):
                    self.core.errors.append(result)
            await self._close_writers()

    def eof(self, direction: Direction) -> None:
        """Note that ``direction`` has passed its end of stream on."""
        self._eof.add(direction)
        if len(self._eof) == len(DIRECTIONS):
            self.close()

    async def _close_writers(self) -> None:
        for direction, writer in self._writers.items():
            if direction == self._reset:
                sock = writer.get_extra_info("socket")
                # SO_LINGER with a zero timeout makes close() send RST, not FIN.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
        for writer in self._writers.values():
            try:
                async with asyncio.timeout(_CLOSE_GRACE):
                    await writer.wait_closed()
            except TimeoutError:
                writer.transport.abort()  # the peer stopped reading: do not wait forever
                await asyncio.sleep(0)  # let the transport run connection_lost
            except OSError:
                pass  # the peer reset first; the socket is closed either way


class Pipe:
    """Carry one direction of a link: a reader task feeding a toxic-applying writer."""

    def __init__(
        self,
        link: Link,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.link = link
        self.core = link.core
        self.direction = direction
        self.reader = reader
        self.writer = writer
        # Jitter and slice sizes of connection n come from their own generator, so a
        # seed reproduces them whatever the other connections do.
        self.rng = random.Random(f"{self.core.seed}:{link.number}:{direction}")  # noqa: S311
        self.queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE_CHUNKS)
        self.limited: dict[str, int] = {}  # bytes passed under each limit_data toxic

    def active(self) -> list[tuple[str, Toxic]]:
        """Return the toxics currently applying to this direction, in order added."""
        return [
            (name, toxic) for name, toxic in self.core.toxics if toxic.direction == self.direction
        ]

    async def read(self) -> None:
        """Read chunks, stamped with their arrival time, until end of stream."""
        loop = asyncio.get_running_loop()
        try:
            while data := await self.reader.read(_CHUNK):
                await self.queue.put((loop.time(), data))
        except OSError:
            self.link.close()
            return
        await self.queue.put(None)

    async def write(self) -> None:
        """Apply the toxics to each chunk and deliver what survives."""
        try:
            while (item := await self.queue.get()) is not None:
                await self._deliver(*item)
                if self.link.closing:
                    return  # a toxic ended the link: not even an EOF may follow
            while any(isinstance(toxic, Timeout) for _, toxic in self.active()):
                await self.core.changed_within(3600)  # a blackhole holds the EOF too
            if self.writer.can_write_eof():
                self.writer.write_eof()
            self.link.eof(self.direction)
        except OSError:
            self.link.close()

    async def _deliver(self, stamp: float, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        delays: dict[str, float] = {}
        while True:  # re-evaluated whenever the toxics change during the wait
            toxics = self.active()
            if any(isinstance(toxic, Timeout) for _, toxic in toxics):
                return  # dropped, as Toxiproxy's timeout toxic does
            for name, toxic in toxics:
                if isinstance(toxic, Latency) and name not in delays:
                    delays[name] = toxic.sample(self.rng)
            delay = sum(delays[name] for name, toxic in toxics if isinstance(toxic, Latency))
            if not await self.core.changed_within(stamp + delay - loop.time()):
                break
        reset = next((t for _, t in self.active() if isinstance(t, ResetPeer)), None)
        if reset is not None:
            await asyncio.sleep(reset.timeout_ms / 1000)
            self.link.reset(self.direction)
            return
        data, close_after = self._limit(data)
        await self._send(data)
        if close_after:
            self.link.close()

    def _limit(self, data: bytes) -> tuple[bytes, bool]:
        close_after = False
        limits = [(n, t) for n, t in self.active() if isinstance(t, LimitData)]
        for name, limit in limits:
            allowed = max(0, limit.bytes - self.limited.get(name, 0))
            if len(data) >= allowed:
                data, close_after = data[:allowed], True
        for name, _ in limits:
            self.limited[name] = self.limited.get(name, 0) + len(data)
        return data, close_after

    async def _send(self, data: bytes) -> None:
        view = memoryview(data)
        first = True
        while view and not self.link.closing:
            toxics = self.active()
            if any(isinstance(toxic, Timeout) for _, toxic in toxics):
                return
            size, pause = len(view), 0.0
            slicer = next((t for _, t in toxics if isinstance(t, Slicer)), None)
            if slicer is not None:
                variation = self.rng.randint(-slicer.size_variation, slicer.size_variation)
                size = min(size, slicer.average_size + variation)
                pause = 0.0 if first else slicer.delay_us / 1_000_000
            rates = [t.rate for _, t in toxics if isinstance(t, Bandwidth)]
            if rates:
                rate = min(rates) * 1000  # bytes per second
                size = min(size, max(1, int(rate / 10)))
                pause = max(pause, size / rate)
            await self.core.changed_within(pause)
            self.writer.write(view[:size])
            await self.writer.drain()
            self.core.bytes[self.direction] += size
            view, first = view[size:], False
