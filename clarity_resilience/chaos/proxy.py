"""A fault-injecting TCP proxy for loopback services, with Toxiproxy's vocabulary.

Put a :class:`FaultProxy` between the code under test and a real server (an artifact
store, Redis, your own HTTP service) and degrade the link while connections are open::

    async with FaultProxy("127.0.0.1", store_port, seed=1) as proxy:
        client = ArtifactClient(proxy.url)
        proxy.latency(200, jitter=50)        # every response 150-250 ms late
        proxy.timeout(0)                     # now a blackhole: reads time out
        proxy.clear()
        await proxy.down()                   # connection refused until up()

Sync tests use the same controls on a proxy whose event loop runs in a thread::

    with FaultProxy.threaded("127.0.0.1", port) as proxy:
        proxy.reset_peer()
        with pytest.raises(httpx.ReadError):
            httpx.get(proxy.url)

Toxics apply to one direction: ``"downstream"`` (server to client, the default, as in
Toxiproxy) or ``"upstream"``. Jitter and slice sizes are drawn from a generator seeded
with ``f"{seed}:{n}:{direction}"`` for the n-th connection (counting from 1), so a seed
reproduces them. The proxy listens and forwards on loopback only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import threading
import types
from collections.abc import Callable, Coroutine
from typing import Any, Self

from ._proxy_core import (
    Bandwidth,
    Direction,
    Latency,
    LimitData,
    ProxyCore,
    ResetPeer,
    Slicer,
    Timeout,
    Toxic,
    Toxics,
)

__all__ = [
    "Bandwidth",
    "Direction",
    "FaultProxy",
    "Latency",
    "LimitData",
    "ResetPeer",
    "Slicer",
    "ThreadedFaultProxy",
    "Timeout",
    "Toxic",
]

_CONTROL_TIMEOUT = 30.0  # seconds a sync control call waits for the proxy's thread


def _loopback(host: str, role: str) -> str:
    """Return ``host`` if it is a loopback address (or ``localhost``).

    Raises:
        ValueError: The host is not loopback. No DNS lookup is made: a name other
            than ``localhost`` is refused rather than resolved.
    """
    if host == "localhost":
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"the {role} must be a loopback IP address or 'localhost', got {host!r}"
        ) from None
    if not address.is_loopback:
        raise ValueError(f"the {role} must be on loopback, got {host!r}")
    return host


class _ProxyControls:
    """The toxic controls and counters shared by the async and threaded proxies."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
    ) -> None:
        upstream = (_loopback(upstream_host, "upstream host"), upstream_port)
        self._core = ProxyCore(upstream, (_loopback(host, "listen host"), port), seed)

    @property
    def host(self) -> str:
        """Return the address the proxy listens on."""
        return self._core.listen_host

    @property
    def port(self) -> int:
        """Return the port the proxy listens on.

        Raises:
            RuntimeError: The port is chosen on start and the proxy was never started.
        """
        if self._core.port == 0:
            raise RuntimeError("the proxy has no port until it is started")
        return self._core.port

    @property
    def url(self) -> str:
        """Return ``http://host:port`` for HTTP clients."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def upstream(self) -> tuple[str, int]:
        """Return the ``(host, port)`` every connection is forwarded to."""
        return self._core.upstream

    @property
    def listening(self) -> bool:
        """Return whether the proxy accepts connections (started and not down)."""
        return self._core.listening

    @property
    def connections_total(self) -> int:
        """Return how many client connections were accepted so far."""
        return self._core.connections_total

    @property
    def active_connections(self) -> int:
        """Return how many client connections are open right now."""
        return len(self._core.links)

    @property
    def bytes_upstream(self) -> int:
        """Return how many bytes were delivered from clients to the upstream server."""
        return self._core.bytes["upstream"]

    @property
    def bytes_downstream(self) -> int:
        """Return how many bytes were delivered from the upstream server to clients."""
        return self._core.bytes["downstream"]

    @property
    def toxics(self) -> dict[str, Toxic]:
        """Return the active toxics by name, in the order they apply."""
        return dict(self._core.toxics)

    def add_toxic(self, toxic: Toxic, *, name: str | None = None) -> str:
        """Apply ``toxic`` to every connection, including those already open.

        Args:
            toxic: The fault, e.g. ``Latency(latency_ms=100)``.
            name: A name to remove it by; default ``"<kind>_<direction>"`` as in
                Toxiproxy (e.g. ``"latency_downstream"``).

        Returns:
            The toxic's name.

        Raises:
            ValueError: A toxic with this name is already active.
        """
        chosen = name or f"{toxic.kind}_{toxic.direction}"

        def add(toxics: Toxics) -> Toxics:
            if any(existing == chosen for existing, _ in toxics):
                raise ValueError(f"a toxic named {chosen!r} is already active")
            return (*toxics, (chosen, toxic))

        self._change(add)
        return chosen

    def remove_toxic(self, name: str) -> None:
        """Stop applying the toxic called ``name``.

        Raises:
            KeyError: No active toxic has this name.
        """

        def remove(toxics: Toxics) -> Toxics:
            if all(existing != name for existing, _ in toxics):
                raise KeyError(name)
            return tuple(item for item in toxics if item[0] != name)

        self._change(remove)

    def clear(self) -> None:
        """Remove every toxic: the proxy passes bytes through unchanged again."""
        self._change(lambda toxics: ())

    def latency(
        self,
        ms: float,
        jitter: float = 0,
        *,
        direction: Direction = "downstream",
        name: str | None = None,
    ) -> str:
        """Delay each chunk by ``ms`` ± ``jitter`` milliseconds; return the toxic's name."""
        return self.add_toxic(
            Latency(latency_ms=ms, jitter_ms=jitter, direction=direction), name=name
        )

    def bandwidth(
        self, kb_per_s: float, *, direction: Direction = "downstream", name: str | None = None
    ) -> str:
        """Limit throughput to ``kb_per_s`` KB/s (1 KB = 1000 bytes); return the name."""
        return self.add_toxic(Bandwidth(rate=kb_per_s, direction=direction), name=name)

    def timeout(
        self, ms: float, *, direction: Direction = "downstream", name: str | None = None
    ) -> str:
        """Drop all data and close connections after ``ms`` (0: hold them open forever).

        Returns:
            The toxic's name; removing it lets later data through again.
        """
        return self.add_toxic(Timeout(timeout_ms=ms, direction=direction), name=name)

    def reset_peer(
        self, ms: float = 0, *, direction: Direction = "downstream", name: str | None = None
    ) -> str:
        """Reset connections with a TCP RST ``ms`` after data next arrives; return the name.

        With the default direction the client gets ``ConnectionResetError``; with
        ``"upstream"`` the upstream server does.
        """
        return self.add_toxic(ResetPeer(timeout_ms=ms, direction=direction), name=name)

    def slicer(
        self,
        average_size: int,
        size_variation: int = 0,
        delay_us: int = 0,
        *,
        direction: Direction = "downstream",
        name: str | None = None,
    ) -> str:
        """Deliver data in small pieces, ``delay_us`` microseconds apart; return the name."""
        toxic = Slicer(
            average_size=average_size,
            size_variation=size_variation,
            delay_us=delay_us,
            direction=direction,
        )
        return self.add_toxic(toxic, name=name)

    def limit_data(
        self, nbytes: int, *, direction: Direction = "downstream", name: str | None = None
    ) -> str:
        """Close each connection once ``nbytes`` bytes have passed; return the name."""
        return self.add_toxic(LimitData(bytes=nbytes, direction=direction), name=name)

    def _change(self, change: Callable[[Toxics], Toxics]) -> None:
        self._core.update_toxics(change)

    def _raise_errors(self) -> None:
        errors, self._core.errors = self._core.errors, []
        if errors:
            raise RuntimeError(f"the fault proxy failed internally: {errors[0]!r}") from errors[0]

    def __repr__(self) -> str:
        where = f"{self.host}:{self._core.port}" if self._core.port else "not started"
        upstream_host, upstream_port = self.upstream
        return f"<{type(self).__name__} {where} -> {upstream_host}:{upstream_port}>"


class FaultProxy(_ProxyControls):
    """A fault-injecting TCP proxy running on the current event loop.

    Toxic controls are plain methods, safe to call from any thread; the lifecycle
    (:meth:`start`, :meth:`stop`, :meth:`down`, :meth:`up`) is awaited.

    Args:
        upstream_host: Where to forward: a loopback IP address or ``localhost``.
        upstream_port: The upstream port.
        host: The loopback address to listen on.
        port: The port to listen on; 0 picks a free one.
        seed: Seeds jitter and slice sizes.

    Raises:
        ValueError: The upstream or listen host is not loopback.
    """

    @classmethod
    def threaded(
        cls,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
    ) -> ThreadedFaultProxy:
        """Return a proxy whose event loop runs in a background thread, for sync code."""
        return ThreadedFaultProxy(upstream_host, upstream_port, host=host, port=port, seed=seed)

    async def start(self) -> Self:
        """Listen and start forwarding.

        Returns:
            This proxy.

        Raises:
            OSError: The port cannot be bound.
        """
        await self._core.start()
        return self

    async def stop(self) -> None:
        """Close the listener and every connection, and wait until all are closed.

        Raises:
            RuntimeError: A connection failed on a bug rather than a network error.
        """
        await self._core.stop()
        self._raise_errors()

    async def down(self) -> None:
        """Refuse new connections and close the open ones, like a dead server."""
        await self._core.down()

    async def up(self) -> None:
        """Accept connections again, on the same port."""
        await self._core.up()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.stop()


class ThreadedFaultProxy(_ProxyControls):
    """A :class:`FaultProxy` whose event loop runs in a background thread.

    Every method is synchronous and safe to call from any thread except the proxy's
    own; when a toxic method returns, the toxic applies to every open connection.
    Build one with :meth:`FaultProxy.threaded`.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(upstream_host, upstream_port, host=host, port=port, seed=seed)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._failure: BaseException | None = None

    def start(self) -> Self:
        """Start the loop thread, listen and start forwarding.

        Returns:
            This proxy.

        Raises:
            RuntimeError: The proxy is already running.
            OSError: The port cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the proxy is already running")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(ready),), name="clarity-chaos-proxy", daemon=True
        )
        self._thread.start()
        try:
            ready.result(timeout=_CONTROL_TIMEOUT)
        except BaseException:
            self._thread.join(timeout=_CONTROL_TIMEOUT)
            self._thread = self._loop = self._stopping = None
            raise
        return self

    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self._core.start()
        except BaseException as error:  # noqa: BLE001 - raised in the caller by start()
            ready.set_exception(error)
            return
        ready.set_result(None)
        try:
            await self._stopping.wait()
        finally:
            try:
                await self._core.stop()
            except BaseException as error:  # noqa: BLE001 - raised in the caller by stop()
                self._failure = error

    def stop(self) -> None:
        """Close the listener and every connection, then end the loop thread.

        Raises:
            RuntimeError: A connection failed on a bug rather than a network error.
        """
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        self._check_not_proxy_thread()
        loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = self._loop = self._stopping = None
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        self._raise_errors()

    def down(self) -> None:
        """Refuse new connections and close the open ones, like a dead server."""
        self._run(self._core.down())

    def up(self) -> None:
        """Accept connections again, on the same port."""
        self._run(self._core.up())

    def _change(self, change: Callable[[Toxics], Toxics]) -> None:
        self._core.update_toxics(change)
        if self._loop is not None and self._thread is not threading.current_thread():
            # The change is announced with call_soon_threadsafe; a no-op scheduled after
            # it returns only once every connection has seen it.
            self._run(asyncio.sleep(0))

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        if loop is None:
            coroutine.close()
            raise RuntimeError("the proxy is not running; call start() first")
        try:
            self._check_not_proxy_thread()
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # our own thread, or the loop closed meanwhile
            coroutine.close()
            raise
        future.result(timeout=_CONTROL_TIMEOUT)

    def _check_not_proxy_thread(self) -> None:
        if self._thread is threading.current_thread():
            raise RuntimeError("a threaded proxy cannot be controlled from its own loop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.stop()
