"""Tests for a Breaker on a shared pybreaker storage (real Redis) that stops answering."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pybreaker
import pytest
import redis
import time_machine
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from clarity_resilience import Breaker, CircuitOpenError
from clarity_resilience.instrumentation import BreakerStorageFailed, Event
from clarity_resilience.testing import capture_events

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
# What an unreachable Redis costs per command before the fix (the client's own timeout):
# every bound below is far under it, and far over what the fixed breaker needs.
CLIENT_SOCKET_TIMEOUT = 6.0
STORAGE_TIMEOUT = 0.2


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("upstream failed")


class SwitchableRedis:
    """A Redis client that can be pointed elsewhere mid-test (the network going away)."""

    def __init__(self, target: redis.Redis) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


class Blackhole:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.05)  # so the accept loop notices close()
        self.port = self._server.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._clients: list[redis.Redis] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            self._conns.append(conn)

    def client(self) -> redis.Redis:
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=CLIENT_SOCKET_TIMEOUT,
            socket_connect_timeout=CLIENT_SOCKET_TIMEOUT,
        )
        self._clients.append(client)
        return client

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=10)
        self._server.close()
        for conn in self._conns:  # blocked clients see EOF and give up
            conn.close()
        for client in self._clients:
            client.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.close()


@pytest.fixture
def client(redis_server: str) -> SwitchableRedis:
    """Return a client of the real Redis that a test can later point at a dead peer."""
    return SwitchableRedis(redis.Redis(unix_socket_path=redis_server))


def refusing_client(tmp_path: pathlib.Path) -> redis.Redis:
    """Return a client of a socket nobody listens on, failing at once (no retries)."""
    return redis.Redis(
        unix_socket_path=str(tmp_path / "nobody-listens.sock"), retry=Retry(NoBackoff(), 0)
    )


def make_breaker(
    client: SwitchableRedis, registry: CollectorRegistry, *, fail_max: int = 5
) -> Breaker:
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace="m")  # type: ignore[arg-type]
    return Breaker(
        "m",
        fail_max=fail_max,
        storage=storage,
        storage_timeout=STORAGE_TIMEOUT,
        registry=registry,
    )


def storage_failures(events: list[Event]) -> list[BreakerStorageFailed]:
    return [e for e in events if isinstance(e, BreakerStorageFailed)]


class TestUnreachableRedis:
    def test_calls_stay_fast_and_failures_are_audited(
        self, client: SwitchableRedis, blackhole: Blackhole, registry: CollectorRegistry
    ) -> None:
        """With Redis silent, calls take about one storage timeout, not the client's."""
        breaker = make_breaker(client, registry)
        client.target = blackhole.client()
        with capture_events(keep_hooks=True) as events:
            started = time.monotonic()
            for _ in range(10):
                assert breaker.call(lambda: "ok") == "ok"
            elapsed = time.monotonic() - started
        assert elapsed < CLIENT_SOCKET_TIMEOUT / 2
        failed = storage_failures(events)
        assert failed
        assert failed[0].problem == "timeout"
        assert failed[0].level == "error"
        counted = registry.get_sample_value(
            "circuit_breaker_storage_failures_total", {"breaker": "m"}
        )
        assert counted == len(failed)

    def test_breaker_still_opens_without_its_storage(
        self, client: SwitchableRedis, blackhole: Blackhole, registry: CollectorRegistry
    ) -> None:
        """Storage down never means 'always closed': this process's failures open it."""
        breaker = make_breaker(client, registry)
        client.target = blackhole.client()
        for _ in range(5):
            with pytest.raises(Boom):
                breaker.call(boom)
        calls: list[int] = []
        with pytest.raises(CircuitOpenError):
            breaker.call(calls.append, 1)
        assert calls == []

    def test_refused_connection_is_an_audited_failure(
        self, client: SwitchableRedis, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """pybreaker's silent fallback to 'closed' on a Redis error becomes an audited failure."""
        breaker = make_breaker(client, registry, fail_max=2)
        client.target = refusing_client(tmp_path)
        with capture_events() as events:
            for _ in range(2):
                with pytest.raises(Boom):
                    breaker.call(boom)
            with pytest.raises(CircuitOpenError):
                breaker.call(lambda: None)
        failed = storage_failures(events)
        assert failed
        assert (failed[0].problem, failed[0].error_type) == ("error", "ConnectionError")

    def test_concurrent_failures_do_not_queue(
        self, client: SwitchableRedis, blackhole: Blackhole, registry: CollectorRegistry
    ) -> None:
        """Eight threads failing at once each finish quickly: no storage call under a lock."""
        breaker = make_breaker(client, registry, fail_max=100)
        client.target = blackhole.client()
        threads = 8
        inside = threading.Barrier(threads, timeout=CLIENT_SOCKET_TIMEOUT / 2)
        durations: list[float] = []
        errors: list[BaseException] = []

        def fail_together() -> None:
            inside.wait()  # all eight are inside the breaker at the same time
            raise Boom

        def worker() -> None:
            started = time.monotonic()
            try:
                breaker.call(fail_together)
            except Boom:
                durations.append(time.monotonic() - started)
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=60)
        assert errors == []
        assert len(durations) == threads
        assert max(durations) < CLIENT_SOCKET_TIMEOUT / 2
        assert breaker.fail_counter == threads  # every failure counted (locally)

    def test_event_loop_keeps_running(
        self, client: SwitchableRedis, blackhole: Blackhole, registry: CollectorRegistry
    ) -> None:
        """call_async never blocks the loop on storage: a heartbeat keeps its rhythm."""
        breaker = make_breaker(client, registry, fail_max=100)
        client.target = blackhole.client()

        async def main() -> tuple[float, list[object]]:
            gaps: list[float] = []
            stop = asyncio.Event()

            async def heartbeat() -> None:
                last = time.monotonic()
                while not stop.is_set():
                    await asyncio.sleep(0.01)  # sleep-ok: poll
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            async def ok() -> str:
                return "ok"

            async def broken() -> None:
                raise Boom

            beat = asyncio.create_task(heartbeat())
            await asyncio.sleep(0.05)  # sleep-ok: polling for a condition, bounded by a deadline
            outcomes: list[object] = []
            for _ in range(3):  # three rounds: the storage is retried after its pause
                outcomes += await asyncio.gather(
                    *(breaker.call_async(ok) for _ in range(10)),
                    *(breaker.call_async(broken) for _ in range(10)),
                    return_exceptions=True,
                )
            stop.set()
            await beat
            return max(gaps), outcomes

        max_gap, outcomes = asyncio.run(main())
        assert max_gap < CLIENT_SOCKET_TIMEOUT / 4
        assert outcomes.count("ok") == 30
        assert sum(isinstance(o, Boom) for o in outcomes) == 30

    def test_state_is_read_again_once_redis_answers(
        self, client: SwitchableRedis, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """After the pause that follows a failure, the shared state wins again."""
        real = client.target
        with time_machine.travel(T0, tick=False) as clock:
            breaker = make_breaker(client, registry)
            other = Breaker(
                "m",
                storage=pybreaker.CircuitRedisStorage("closed", real, namespace="m"),
                registry=CollectorRegistry(),
            )
            client.target = refusing_client(tmp_path)
            assert breaker.call(lambda: 1) == 1  # fails: the storage is paused
            for _ in range(5):
                with pytest.raises(Boom):
                    other.call(boom)  # another process opens the shared breaker
            client.target = real
            assert breaker.call(lambda: 2) == 2  # still paused: this process's state
            clock.shift(2)
            with pytest.raises(CircuitOpenError):
                breaker.call(lambda: 3)


class TestConfiguration:
    @pytest.mark.parametrize(
        ("timeout", "error"),
        [
            pytest.param(0, ValueError, id="zero"),
            pytest.param(-1.0, ValueError, id="negative"),
            pytest.param(float("inf"), ValueError, id="inf"),
            pytest.param("1", TypeError, id="str"),
        ],
    )
    def test_bad_storage_timeout_is_refused(self, timeout: object, error: type[Exception]) -> None:
        """storage_timeout must be a positive, finite number of seconds."""
        with pytest.raises(error, match="storage_timeout"):
            Breaker("t", storage_timeout=timeout)  # type: ignore[arg-type]
