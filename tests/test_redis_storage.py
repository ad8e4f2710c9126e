"""Tests for RedisStorage: one breaker shared by many breakers (processes) through real Redis."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator

import pybreaker
import pytest
import redis
import time_machine
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience import Breaker, CircuitOpenError, RedisStorage
from clarity_resilience._redis_mirror import SCRIPT, RedisMirror
from clarity_resilience.instrumentation import BreakerStorageFailed, Event

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
RESET = 30.0


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("upstream failed")


def ok() -> str:
    return "ok"


class FakeClock:
    """A monotonic clock the test moves (RedisStorage's staleness bound)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def url(redis_server: str) -> str:
    return f"unix://{redis_server}"


@pytest.fixture
def clock() -> Iterator[time_machine.Coordinates]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def member(url: str, *, fail_max: int = 5, staleness: float = 0.0, **kw: object) -> Breaker:
    """Return a breaker as one process of the fleet would build it (its own client)."""
    storage = RedisStorage(url, namespace="fleet", timeout=1.0, max_staleness=staleness, **kw)  # type: ignore[arg-type]
    return Breaker(
        "scorer",
        fail_max=fail_max,
        reset_timeout=RESET,
        storage=storage,
        registry=CollectorRegistry(),
    )


def fails(breaker: Breaker) -> None:
    with pytest.raises(Boom):
        breaker.call(boom)


class TestConstruction:
    @pytest.mark.parametrize(
        "kwargs",
        [
            pytest.param({"timeout": 0}, id="zero-timeout"),
            pytest.param({"timeout": True}, id="bool-timeout"),
            pytest.param({"timeout": float("inf")}, id="infinite-timeout"),
            pytest.param({"max_staleness": 1.5}, id="stale-beyond-1s"),
            pytest.param({"max_staleness": -0.1}, id="negative-staleness"),
            pytest.param({"namespace": ""}, id="empty-namespace"),
        ],
    )
    def test_bad_settings_are_refused(self, kwargs: dict[str, object]) -> None:
        """Settings that would break the bounds are refused at construction."""
        with pytest.raises(ValueError):
            RedisStorage("redis://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]

    def test_refuses_other_clients(self) -> None:
        """Only URLs and redis.Redis clients are accepted (not a pybreaker storage)."""
        with pytest.raises(TypeError):
            RedisStorage(pybreaker.CircuitMemoryStorage("closed"))  # type: ignore[arg-type]

    def test_url_client_has_the_timeout_and_no_retries(self) -> None:
        """A client built from a URL times out every socket operation after ``timeout``."""
        storage = RedisStorage("redis://127.0.0.1:1", timeout=0.3)
        kwargs = storage.client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.3
        assert kwargs["socket_connect_timeout"] == 0.3
        assert storage.client.get_retry() is None or storage.client.get_retry()._retries == 0  # type: ignore[no-untyped-call]

    def test_exported_from_the_package_root(self) -> None:
        """``cr.RedisStorage`` is the public name."""
        assert cr.RedisStorage is RedisStorage


class TestSharedState:
    def test_failures_spread_across_members_open_it_for_all(
        self, url: str, clock: time_machine.Coordinates
    ) -> None:
        """Five failures, at most two per member, open the breaker for every member."""
        fleet = [member(url) for _ in range(4)]
        for breaker in (*fleet, fleet[0]):
            fails(breaker)
        calls: list[int] = []
        for breaker in fleet:
            with pytest.raises(CircuitOpenError) as info:
                breaker.call(calls.append, 1)
            assert info.value.retry_after == pytest.approx(RESET)
        assert calls == []
        assert {b.state for b in fleet} == {"open"}

    def test_a_success_resets_the_shared_count(
        self, url: str, clock: time_machine.Coordinates
    ) -> None:
        """A success anywhere resets the consecutive count everywhere."""
        a, b = member(url), member(url)
        for _ in range(4):
            fails(a)
        assert b.call(ok) == "ok"
        assert a.fail_counter == 0
        for _ in range(4):
            fails(a)
        assert a.state == b.state == "closed"

    def test_a_late_member_reads_the_open_state(
        self, url: str, clock: time_machine.Coordinates
    ) -> None:
        """A process that starts while the fleet's breaker is open starts open."""
        a = member(url)
        for _ in range(5):
            fails(a)
        late = member(url)
        assert late.state == "open"
        assert late.retry_after() == pytest.approx(RESET)

    def test_cached_state_is_served_until_stale_then_reread(
        self, url: str, clock: time_machine.Coordinates
    ) -> None:
        """Within max_staleness a member serves its last read; after it, it sees the opening."""
        fake = FakeClock()
        cached = member(url, staleness=1.0, clock=fake)
        other = member(url)
        for _ in range(5):
            fails(other)
        assert cached.call(ok) == "ok"  # read less than 1 s ago: allowed to lag
        fake.now += 1.0
        with pytest.raises(CircuitOpenError):
            cached.call(ok)

    def test_closed_calls_do_not_cost_a_round_trip_each(
        self, url: str, redis_server: str, clock: time_machine.Coordinates
    ) -> None:
        """With a staleness budget, 200 successful calls make at most a couple of reads."""
        fake = FakeClock()
        breaker = member(url, staleness=0.5, clock=fake)
        stats = redis.Redis(unix_socket_path=redis_server)
        stats.config_resetstat()
        for _ in range(200):
            assert breaker.call(ok) == "ok"
        calls = stats.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        assert calls <= 1


class TestFleetTrial:
    def open_fleet(self, url: str, size: int) -> list[Breaker]:
        fleet = [member(url) for _ in range(size)]
        for _ in range(5):
            fails(fleet[0])
        return fleet

    def test_exactly_one_trial_fleet_wide(self, url: str, clock: time_machine.Coordinates) -> None:
        """While one member's trial runs, every other is rejected; its success closes all."""
        fleet = self.open_fleet(url, 3)
        clock.shift(RESET + 1)
        inside: list[str] = []

        def trial() -> str:
            for other in fleet[1:]:
                with pytest.raises(CircuitOpenError):
                    other.call(inside.append, "second trial")
            return "recovered"

        assert fleet[0].call(trial) == "recovered"
        assert inside == []
        assert [b.call(ok) for b in fleet] == ["ok"] * 3
        assert {b.state for b in fleet} == {"closed"}

    def test_lease_lives_the_reset_timeout_and_is_released_on_outcome(
        self, url: str, redis_server: str, clock: time_machine.Coordinates
    ) -> None:
        """The trial lease expires on its own (a dead holder) and is deleted by the outcome."""
        fleet = self.open_fleet(url, 2)
        clock.shift(RESET + 1)
        stats = redis.Redis(unix_socket_path=redis_server)
        lease = "fleet:{scorer}:trial"
        ttls: list[int] = []

        def trial() -> None:
            ttls.append(stats.pttl(lease))
            raise Boom("still down")

        with pytest.raises(Boom):
            fleet[0].call(trial)
        assert 0 < ttls[0] <= RESET * 1000
        assert stats.exists(lease) == 0
        # The failed trial reopened the breaker for everyone, for a fresh timeout.
        with pytest.raises(CircuitOpenError) as info:
            fleet[1].call(ok)
        assert info.value.retry_after == pytest.approx(RESET)

    def test_a_dead_holders_lease_lets_another_member_trial(
        self, url: str, redis_server: str, clock: time_machine.Coordinates
    ) -> None:
        """A lease whose holder never reports blocks trials only until it expires."""
        fleet = self.open_fleet(url, 2)
        clock.shift(RESET + 1)
        holder = fleet[0]._shared
        assert holder is not None
        holder.sync()  # takes the lease, then "dies" before calling
        with pytest.raises(CircuitOpenError) as info:
            fleet[1].call(ok)
        assert info.value.retry_after == fleet[1].retry_after() == 1.0
        redis.Redis(unix_socket_path=redis_server).delete("fleet:{scorer}:trial")  # expired
        assert fleet[1].call(ok) == "ok"
        assert fleet[0].call(ok) == "ok"

    @pytest.mark.parametrize(
        "op",
        [
            pytest.param("c", id="close"),
            pytest.param("o:{later}", id="reopen-later"),
            pytest.param("f", id="failure"),
        ],
    )
    def test_stale_writes_from_a_non_holder_change_nothing(
        self, url: str, redis_server: str, clock: time_machine.Coordinates, op: str
    ) -> None:
        """Only the lease holder closes or re-times an open breaker; failures add nothing."""
        fleet = self.open_fleet(url, 1)
        raw = redis.Redis(unix_socket_path=redis_server)
        before = raw.hgetall("fleet:{scorer}")
        script = raw.register_script(SCRIPT)
        now = time.time()
        reply = script(
            keys=["fleet:{scorer}", "fleet:{scorer}:trial"],
            args=["not-the-holder", 5, 1000, f"{now:.6f}", "0", op.format(later=now + 10)],
        )
        assert reply[0] == b"open"
        assert raw.hgetall("fleet:{scorer}") == before
        assert fleet[0].retry_after() == pytest.approx(RESET)


class TestForce:
    def test_forced_states_apply_fleet_wide_whoever_holds_the_lease(
        self, url: str, redis_server: str, clock: time_machine.Coordinates
    ) -> None:
        """An operator's reset closes the fleet's breaker; a forced opening opens it."""
        a, b = member(url), member(url)
        for _ in range(5):
            fails(a)
        clock.shift(RESET + 1)
        assert b._shared is not None
        b._shared.sync()  # b takes the trial lease
        mirror = a._shared
        assert isinstance(mirror, RedisMirror)
        mirror.force("closed")
        mirror.sync()
        raw = redis.Redis(unix_socket_path=redis_server)
        assert raw.hget("fleet:{scorer}", "state") == b"closed"
        assert raw.exists("fleet:{scorer}:trial") == 0
        assert b.call(ok) == "ok"
        mirror.force("open")
        mirror.sync()
        with pytest.raises(CircuitOpenError) as info:
            b.call(ok)
        assert info.value.retry_after == pytest.approx(RESET)
        with pytest.raises(ValueError):
            mirror.force("half-open")


class TestFork:
    def test_a_forked_worker_shares_the_breaker_built_before_the_fork(
        self, url: str, redis_server: str
    ) -> None:
        """A breaker built before a fork (gunicorn --preload) still talks to Redis in the child."""
        import os
        import warnings

        breaker = member(url, staleness=0.0)
        assert breaker.call(ok) == "ok"  # the parent's worker thread is running
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: on purpose
            pid = os.fork()
        if pid == 0:  # the child: five failures must reach Redis, then exit at once
            code = 1
            try:
                for _ in range(5):
                    with contextlib.suppress(Boom):
                        breaker.call(boom)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        raw = redis.Redis(unix_socket_path=redis_server)
        assert raw.hget("fleet:{scorer}", "state") == b"open"


class TestUnknownState:
    def test_an_unknown_shared_state_fails_closed_until_a_trial_repairs_it(
        self,
        url: str,
        redis_server: str,
        clock: time_machine.Coordinates,
        events: list[Event],
    ) -> None:
        """A garbage state in Redis counts as open, is reported, and a trial writes closed."""
        raw = redis.Redis(unix_socket_path=redis_server)
        raw.hset("fleet:{scorer}", "state", "bogus")
        breaker = member(url)
        calls: list[int] = []
        with pytest.raises(CircuitOpenError):
            breaker.call(calls.append, 1)
        assert calls == []
        problems = [e.problem for e in events if isinstance(e, BreakerStorageFailed)]
        assert problems == ["unknown_state"]
        clock.shift(RESET + 1)
        assert breaker.call(ok) == "ok"
        assert raw.hget("fleet:{scorer}", "state") == b"closed"


class TestRedisUnavailable:
    def test_falls_back_to_a_local_breaker_and_resyncs(
        self,
        redis_tcp: int,
        fault_proxy: object,
        clock: time_machine.Coordinates,
        events: list[Event],
    ) -> None:
        """Redis down: audited, bounded, a local breaker with the same thresholds; back: shared."""
        proxy = fault_proxy("127.0.0.1", redis_tcp)  # type: ignore[operator]
        url = f"redis://127.0.0.1:{proxy.port}"
        registry = CollectorRegistry()
        storage = RedisStorage(url, namespace="fleet", timeout=0.2, max_staleness=0)
        breaker = Breaker(
            "scorer", fail_max=3, reset_timeout=RESET, storage=storage, registry=registry
        )
        direct = member(f"redis://127.0.0.1:{redis_tcp}", fail_max=3)
        proxy.down()
        durations: list[float] = []
        for _ in range(3):
            started = time.monotonic()
            fails(breaker)
            durations.append(time.monotonic() - started)
            clock.shift(1.1)  # past the storage's retry interval: Redis is tried each time
        assert max(durations) < 2 * 0.2 + 2.0  # generous: a busy 2-core machine
        with pytest.raises(CircuitOpenError):  # never "always closed"
            breaker.call(ok)
        failed = [e for e in events if isinstance(e, BreakerStorageFailed)]
        assert failed
        assert {e.breaker for e in failed} == {"scorer"}
        counted = registry.get_sample_value(
            "circuit_breaker_storage_failures_total", {"breaker": "scorer"}
        )
        assert counted == len(failed)
        assert direct.state == "closed"  # the local opening was not shared (Redis was down)
        proxy.up()
        clock.shift(1.1)
        assert breaker.state == "open"
        assert direct.state == "open"  # re-synced: the local opening is now the fleet's


class TestEventLoop:
    @pytest.mark.asyncio
    async def test_call_async_does_not_block_the_loop_on_slow_redis(
        self, redis_tcp: int, fault_proxy: object
    ) -> None:
        """With 300 ms Redis latency, the loop keeps ticking while calls wait for Redis."""
        import asyncio

        proxy = fault_proxy("127.0.0.1", redis_tcp)  # type: ignore[operator]
        storage = RedisStorage(f"redis://127.0.0.1:{proxy.port}", timeout=0.1, max_staleness=0)
        breaker = Breaker("slow", storage=storage, registry=CollectorRegistry())
        proxy.latency(300)
        stalls: list[float] = []
        done = threading.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.005)  # sleep-ok: poll
                now = time.monotonic()
                stalls.append(now - last)
                last = now

        async def ok_async() -> str:
            return "ok"

        task = asyncio.create_task(ticker())
        for _ in range(5):
            assert await breaker.call_async(ok_async) == "ok"
        done.set()
        await task
        assert stalls
        assert max(stalls) < 0.25  # a blocking call would stall >= 300 ms
