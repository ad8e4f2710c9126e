"""Tests for clarity_resilience.chaos.proxy: a real proxy in front of real servers."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import random
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from clarity_resilience.chaos import FaultProxy, Latency, ThreadedFaultProxy
from clarity_resilience.chaos.proxy import Bandwidth, LimitData, ResetPeer, Slicer, Timeout

pytestmark = pytest.mark.timeout(30)

READ_TIMEOUT = 0.3
BODY = b"verified model bytes\n" * 100


class EchoServer:
    """An asyncio echo server on loopback that remembers how its connections ended."""

    def __init__(self) -> None:
        self.port = 0
        self.errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError as error:
            self.errors.append(error)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.stop()


class ThreadedEcho(socketserver.ThreadingTCPServer):
    """An echo server in threads that can wait until every connection has ended."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.port = self.server_address[1]
        self.open_connections = 0
        self.idle = threading.Condition()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        with self.idle:
            return self.idle.wait_for(lambda: self.open_connections == 0, timeout)


class _EchoHandler(socketserver.BaseRequestHandler):
    server: ThreadedEcho

    def setup(self) -> None:
        with self.server.idle:
            self.server.open_connections += 1

    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)

    def finish(self) -> None:
        self.request.close()  # before reporting idle, so no descriptor is left open
        with self.server.idle:
            self.server.open_connections -= 1
            self.server.idle.notify_all()


@pytest.fixture
def threaded_echo() -> Iterator[ThreadedEcho]:
    """Serve echo on loopback from a thread, for proxies used by sync code."""
    server = ThreadedEcho()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


class _BodyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


@pytest.fixture
def http_server() -> Iterator[int]:
    """Serve a fixed body over real HTTP on loopback from a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BodyHandler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(proxy.host, proxy.port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> tuple[bytes, float]:
    started = time.perf_counter()
    writer.write(data)
    await writer.drain()
    received = await asyncio.wait_for(reader.readexactly(len(data)), 5)
    return received, time.perf_counter() - started


async def read_all(reader: asyncio.StreamReader) -> list[bytes]:
    pieces = []
    while piece := await asyncio.wait_for(reader.read(65536), 5):
        pieces.append(piece)
    return pieces


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class TestLoopbackOnly:
    @pytest.mark.parametrize(
        "host",
        [
            pytest.param("10.0.0.1", id="private"),
            pytest.param("8.8.8.8", id="public"),
            pytest.param("0.0.0.0", id="wildcard"),
            pytest.param("example.com", id="hostname"),
        ],
    )
    def test_non_loopback_upstream_is_refused(self, host: str) -> None:
        """A proxy never forwards to anything off the machine."""
        with pytest.raises(ValueError, match="loopback"):
            FaultProxy(host, 80)

    def test_non_loopback_listen_address_is_refused(self) -> None:
        """A proxy never listens where other machines could reach it."""
        with pytest.raises(ValueError, match="loopback"):
            FaultProxy("127.0.0.1", 80, host="0.0.0.0")

    @pytest.mark.parametrize(
        "host",
        [
            pytest.param("127.0.0.1", id="ipv4"),
            pytest.param("127.8.9.10", id="ipv4-range"),
            pytest.param("::1", id="ipv6"),
            pytest.param("localhost", id="localhost"),
        ],
    )
    def test_loopback_upstream_is_accepted(self, host: str) -> None:
        """Every loopback spelling is a valid upstream."""
        assert FaultProxy(host, 80).upstream == (host, 80)

    def test_port_is_unknown_before_start(self) -> None:
        """An ephemeral port has no number until the proxy listens."""
        with pytest.raises(RuntimeError, match="started"):
            _ = FaultProxy("127.0.0.1", 80).url


class TestToxicRegistry:
    def test_default_names_follow_toxiproxy(self) -> None:
        """Toxics are named <type>_<direction> unless a name is given."""
        proxy = FaultProxy("127.0.0.1", 80)
        assert proxy.latency(10) == "latency_downstream"
        assert proxy.bandwidth(5, direction="upstream") == "bandwidth_upstream"
        assert proxy.slicer(10, name="tiny") == "tiny"
        assert list(proxy.toxics) == ["latency_downstream", "bandwidth_upstream", "tiny"]
        assert proxy.toxics["tiny"] == Slicer(average_size=10)

    def test_duplicate_name_is_refused(self) -> None:
        """Adding a second toxic under an active name fails instead of replacing it."""
        proxy = FaultProxy("127.0.0.1", 80)
        proxy.timeout(0)
        with pytest.raises(ValueError, match="already active"):
            proxy.add_toxic(Timeout(timeout_ms=5))
        assert proxy.toxics == {"timeout_downstream": Timeout(timeout_ms=0)}

    def test_remove_and_clear(self) -> None:
        """Toxics are removed by name, unknown names raise, and clear removes all."""
        proxy = FaultProxy("127.0.0.1", 80)
        proxy.add_toxic(ResetPeer(), name="a")
        proxy.add_toxic(LimitData(bytes=3), name="b")
        proxy.remove_toxic("a")
        assert list(proxy.toxics) == ["b"]
        with pytest.raises(KeyError):
            proxy.remove_toxic("a")
        proxy.clear()
        assert proxy.toxics == {}

    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda: Latency(latency_ms=-1), id="negative-latency"),
            pytest.param(lambda: Bandwidth(rate=0), id="zero-bandwidth"),
            pytest.param(lambda: Slicer(average_size=0), id="empty-slices"),
            pytest.param(lambda: Slicer(average_size=5, size_variation=5), id="variation"),
            pytest.param(lambda: LimitData(bytes=-3), id="negative-limit"),
            pytest.param(lambda: Timeout(timeout_ms=1, direction="sideways"), id="direction"),
        ],
    )
    def test_invalid_toxics_are_refused(self, make: object) -> None:
        """Impossible toxic parameters fail when the toxic is built."""
        with pytest.raises(ValueError):
            make()  # type: ignore[operator]


class TestPassThrough:
    @pytest.mark.asyncio
    async def test_bytes_pass_unchanged_and_are_counted(self, echo: EchoServer) -> None:
        """Without toxics every byte arrives intact, and the counters see each one."""
        payload = random.Random(1).randbytes(300_000)
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            reader, writer = await connect(proxy)
            received, _ = await round_trip(reader, writer, payload)
            assert received == payload
            assert proxy.connections_total == 1
            assert proxy.active_connections == 1
            assert proxy.bytes_upstream == len(payload)
            assert proxy.bytes_downstream == len(payload)
            await close(writer)

    def test_http_through_threaded_proxy(self, http_server: int) -> None:
        """A sync HTTP client gets the upstream's exact response through the proxy."""
        with FaultProxy.threaded("127.0.0.1", http_server) as proxy, httpx.Client() as client:
            response = client.get(proxy.url, timeout=5)
        assert response.status_code == 200
        assert response.content == BODY

    @pytest.mark.asyncio
    async def test_upstream_down_closes_the_client(self) -> None:
        """When the upstream refuses, the client's connection is closed, not hung."""
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))
            dead_port = placeholder.getsockname()[1]
        async with FaultProxy("127.0.0.1", dead_port) as proxy:
            reader, writer = await connect(proxy)
            assert await asyncio.wait_for(reader.read(10), 5) == b""
            await close(writer)


class TestLatency:
    @pytest.mark.parametrize("direction", ["downstream", "upstream"])
    @pytest.mark.asyncio
    async def test_latency_delays_each_round_trip(self, echo: EchoServer, direction: str) -> None:
        """A latency toxic delays data by at least the configured time, either way."""
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.latency(150, direction=direction)  # type: ignore[arg-type]
            reader, writer = await connect(proxy)
            received, elapsed = await round_trip(reader, writer, b"ping")
            assert received == b"ping"
            assert elapsed >= 0.149  # a lower bound only: a busy machine only adds time
            await close(writer)

    @pytest.mark.asyncio
    async def test_jitter_is_reproducible_from_the_seed(self, echo: EchoServer) -> None:
        """Jitter for connection n is drawn from a generator seeded with seed:n:direction."""
        toxic = Latency(latency_ms=60, jitter_ms=50)
        rng = random.Random("7:1:downstream")
        expected = [toxic.sample(rng) for _ in range(5)]
        assert len({round(delay, 3) for delay in expected}) > 1  # the jitter varies
        async with FaultProxy("127.0.0.1", echo.port, seed=7) as proxy:
            proxy.add_toxic(toxic)
            reader, writer = await connect(proxy)
            for delay in expected:
                _, elapsed = await round_trip(reader, writer, b"tick")
                # Another generator's draws would undershoot some of these bounds.
                assert elapsed >= delay - 0.001
            await close(writer)

    @pytest.mark.asyncio
    async def test_switched_on_and_off_while_connected(self, echo: EchoServer) -> None:
        """Adding and removing latency changes an already open connection."""
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            reader, writer = await connect(proxy)
            assert (await round_trip(reader, writer, b"a"))[0] == b"a"
            name = proxy.latency(250)
            _, during = await round_trip(reader, writer, b"b")
            proxy.remove_toxic(name)
            # Held for ten minutes unless removing the toxic releases it: no speed bound
            # needed, round_trip gives up after 5 s.
            hold = proxy.latency(600_000)
            writer.write(b"c")
            await writer.drain()
            with pytest.raises(TimeoutError):  # held (a "not yet" check: load cannot break it)
                await asyncio.wait_for(reader.readexactly(1), 0.2)
            proxy.remove_toxic(hold)
            assert await asyncio.wait_for(reader.readexactly(1), 5) == b"c"
            await close(writer)
        assert during >= 0.249


class TestBandwidth:
    @pytest.mark.asyncio
    async def test_rate_limits_throughput(self, echo: EchoServer) -> None:
        """20 kB at 100 KB/s takes at least 0.2 s and arrives intact."""
        payload = random.Random(2).randbytes(20_000)
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.bandwidth(100)
            reader, writer = await connect(proxy)
            received, elapsed = await round_trip(reader, writer, payload)
            await close(writer)
        assert received == payload
        assert elapsed >= 0.195  # a lower bound only: a busy machine only adds time


class TestTimeout:
    @pytest.mark.asyncio
    async def test_blackhole_times_out_reads_until_removed(self, echo: EchoServer) -> None:
        """timeout(0) holds the connection open while dropping data; removal resumes."""
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            reader, writer = await connect(proxy)
            name = proxy.timeout(0)
            writer.write(b"lost")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(10), READ_TIMEOUT)
            assert proxy.active_connections == 1
            proxy.remove_toxic(name)
            received, _ = await round_trip(reader, writer, b"found")
            assert received == b"found"
            await close(writer)

    @pytest.mark.asyncio
    async def test_timeout_closes_an_open_connection(self, echo: EchoServer) -> None:
        """timeout(ms) drops data and closes the connection once ms have passed."""
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            reader, writer = await connect(proxy)
            await round_trip(reader, writer, b"warm")
            started = time.perf_counter()
            proxy.timeout(200)
            writer.write(b"dropped")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(10), 5) == b""
            assert time.perf_counter() - started >= 0.199
            await close(writer)

    def test_blackhole_makes_http_client_time_out(self, http_server: int) -> None:
        """A sync HTTP client behind a blackhole gets its own read timeout."""
        with FaultProxy.threaded("127.0.0.1", http_server) as proxy, httpx.Client() as client:
            proxy.timeout(0)
            with pytest.raises(httpx.ReadTimeout):
                client.get(proxy.url, timeout=READ_TIMEOUT)


class TestResetPeer:
    @pytest.mark.asyncio
    async def test_client_gets_connection_reset(self, echo: EchoServer) -> None:
        """reset_peer answers the next data with a TCP RST to the client."""
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            reader, writer = await connect(proxy)
            proxy.reset_peer(100)
            started = time.perf_counter()
            writer.write(b"boom")
            await writer.drain()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(10), 5)
            assert time.perf_counter() - started >= 0.099
            await close(writer)

    @pytest.mark.asyncio
    async def test_upstream_direction_resets_the_server(self, echo: EchoServer) -> None:
        """With direction="upstream" the upstream server sees the reset."""
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            reader, writer = await connect(proxy)
            await round_trip(reader, writer, b"warm")
            proxy.reset_peer(direction="upstream")
            writer.write(b"boom")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(10), 5) == b""
            await close(writer)
        assert any(isinstance(error, ConnectionResetError) for error in echo.errors)

    def test_http_client_sees_read_error(self, http_server: int) -> None:
        """A sync HTTP client gets a read error, never a partial 200."""
        with FaultProxy.threaded("127.0.0.1", http_server) as proxy, httpx.Client() as client:
            proxy.reset_peer()
            with pytest.raises(httpx.ReadError):
                client.get(proxy.url, timeout=5)


class TestSlicer:
    @pytest.mark.asyncio
    async def test_data_arrives_intact_in_many_pieces(self, echo: EchoServer) -> None:
        """A slicer splits one write into many small reads of the same bytes."""
        payload = random.Random(3).randbytes(10_000)
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.slicer(500, 100, delay_us=2000)
            reader, writer = await connect(proxy)
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            pieces = await read_all(reader)
            await close(writer)
        assert b"".join(pieces) == payload
        assert len(pieces) >= 5


class TestLimitData:
    @pytest.mark.asyncio
    async def test_connection_closes_after_limit(self, echo: EchoServer) -> None:
        """limit_data delivers exactly N bytes, then closes the connection."""
        payload = bytes(range(256)) * 4
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            proxy.limit_data(100)
            reader, writer = await connect(proxy)
            writer.write(payload)
            await writer.drain()
            pieces = await read_all(reader)
            await close(writer)
        assert b"".join(pieces) == payload[:100]


class TestDownUp:
    @pytest.mark.asyncio
    async def test_down_refuses_and_closes_then_up_restores(self, echo: EchoServer) -> None:
        """down() closes open connections and refuses new ones; up() serves again."""
        async with FaultProxy("127.0.0.1", echo.port) as proxy:
            port = proxy.port
            reader, writer = await connect(proxy)
            await proxy.down()
            assert not proxy.listening
            assert await asyncio.wait_for(reader.read(10), 5) == b""
            await close(writer)
            with pytest.raises(ConnectionRefusedError):
                await connect(proxy)
            await proxy.up()
            assert proxy.port == port
            reader, writer = await connect(proxy)
            received, _ = await round_trip(reader, writer, b"back")
            assert received == b"back"
            await close(writer)

    def test_threaded_down_and_up(self, threaded_echo: ThreadedEcho) -> None:
        """The threaded proxy's down() and up() block until they have taken effect."""
        with FaultProxy.threaded("127.0.0.1", threaded_echo.port) as proxy:
            proxy.down()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((proxy.host, proxy.port), timeout=5).close()
            proxy.up()
            with socket.create_connection((proxy.host, proxy.port), timeout=5) as client:
                client.sendall(b"up")
                assert client.recv(10) == b"up"


class TestStop:
    @pytest.mark.asyncio
    async def test_stop_closes_every_connection_and_task(self, echo: EchoServer) -> None:
        """stop() closes open connections promptly and leaves no task behind."""
        before = asyncio.all_tasks()
        proxy = await FaultProxy("127.0.0.1", echo.port).start()
        proxy.timeout(0)  # connections that would otherwise hang forever
        clients = [await connect(proxy) for _ in range(3)]
        for _, writer in clients:
            writer.write(b"x")
            await writer.drain()
        # Blackholed connections would hang forever; "promptly" means far less than the
        # test's timeout, with room for a busy machine (closing has a 1 s grace).
        async with asyncio.timeout(20):
            await proxy.stop()
        assert proxy.active_connections == 0
        for reader, writer in clients:
            assert await asyncio.wait_for(reader.read(10), 5) == b""
            await close(writer)
        leftover = [
            task
            for task in asyncio.all_tasks() - before - {asyncio.current_task()}
            if task.get_coro().__qualname__ != "EchoServer._echo"  # type: ignore[union-attr]
        ]
        assert leftover == []

    def test_threaded_start_failure_is_raised_in_the_caller(self) -> None:
        """A port that cannot be bound fails start() in the caller, with no thread left."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            proxy = FaultProxy.threaded("127.0.0.1", 1, port=taken.getsockname()[1])
            with pytest.raises(OSError):
                proxy.start()
        assert not [t for t in threading.enumerate() if t.name == "clarity-chaos-proxy"]
        with pytest.raises(RuntimeError, match="not running"):
            proxy.up()

    def test_threaded_start_twice_is_refused(self, threaded_echo: ThreadedEcho) -> None:
        """A running threaded proxy cannot be started again."""
        with FaultProxy.threaded("127.0.0.1", threaded_echo.port) as proxy:
            with pytest.raises(RuntimeError, match="already running"):
                proxy.start()
            assert proxy.listening
            assert repr(proxy) == (
                f"<ThreadedFaultProxy 127.0.0.1:{proxy.port} -> 127.0.0.1:{threaded_echo.port}>"
            )

    def test_threaded_stop_releases_every_socket(self, threaded_echo: ThreadedEcho) -> None:
        """A threaded proxy's stop joins its thread and closes every descriptor it opened."""
        before = open_fds()
        proxy: ThreadedFaultProxy = FaultProxy.threaded("127.0.0.1", threaded_echo.port)
        with proxy:
            clients = [socket.create_connection((proxy.host, proxy.port)) for _ in range(3)]
            for client in clients:
                client.sendall(b"hi")
                assert client.recv(10) == b"hi"
            assert proxy.active_connections == 3
        assert proxy.active_connections == 0
        for client in clients:
            assert client.recv(10) == b""
            client.close()
        assert threaded_echo.wait_idle()  # the server's ends of the upstream connections
        assert open_fds() == before
        assert not [t for t in threading.enumerate() if t.name == "clarity-chaos-proxy"]
        with pytest.raises(RuntimeError, match="not running"):
            proxy.down()
