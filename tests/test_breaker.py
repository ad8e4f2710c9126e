"""Tests for clarity_resilience.Breaker: thresholds, concurrency, outcomes, typing helpers."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import threading
from collections.abc import Iterator

import pybreaker
import pytest
import time_machine
from prometheus_client import CollectorRegistry

from clarity_resilience import Breaker, CircuitOpenError, InvalidInputError
from clarity_resilience.instrumentation import BreakerStorageFailed, Event, set_on_event_hooks
from clarity_resilience.testing import capture_events

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)


class Boom(Exception):
    pass


class NotOurFault(Exception):
    pass


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    """Freeze time at T0; tests move it with ``clock.shift(seconds)``."""
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def boom() -> None:
    raise Boom("upstream failed")


def fail(breaker: Breaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            breaker.call(boom)


def open_breaker(breaker: Breaker) -> None:
    fail(breaker, breaker.fail_max)
    assert breaker.state == "open"


class TestThresholds:
    def test_four_failures_keep_it_closed(self, clock: time_machine.Traveller) -> None:
        """Four consecutive failures leave the default breaker closed."""
        breaker = Breaker("t")
        fail(breaker, 4)
        assert breaker.state == "closed"
        assert breaker.fail_counter == 4

    def test_fifth_failure_opens_and_reraises_its_own_error(
        self, clock: time_machine.Traveller
    ) -> None:
        """The call that trips the breaker raises its own exception, not CircuitOpenError."""
        breaker = Breaker("t")
        fail(breaker, 4)
        with pytest.raises(Boom, match="upstream failed"):
            breaker.call(boom)
        assert breaker.state == "open"

    def test_open_breaker_rejects_without_calling(self, clock: time_machine.Traveller) -> None:
        """Once open, calls are rejected with retry_after and the function never runs."""
        breaker = Breaker("t")
        open_breaker(breaker)
        calls: list[int] = []
        clock.shift(10)
        with pytest.raises(CircuitOpenError) as info:
            breaker.call(calls.append, 1)
        assert calls == []
        assert info.value.retry_after == pytest.approx(50.0)
        assert info.value.breaker == "t"

    def test_success_resets_the_count(self, clock: time_machine.Traveller) -> None:
        """Failures must be consecutive: a success in between starts the count again."""
        breaker = Breaker("t")
        fail(breaker, 4)
        assert breaker.call(lambda: "ok") == "ok"
        fail(breaker, 4)
        assert breaker.state == "closed"

    def test_one_trial_after_reset_timeout_and_success_closes(
        self, clock: time_machine.Traveller
    ) -> None:
        """After 60 s one trial runs; its success closes the breaker."""
        breaker = Breaker("t")
        open_breaker(breaker)
        clock.shift(59.9)
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: None)
        clock.shift(0.1)
        assert breaker.state == "half-open"
        assert breaker.call(lambda: 42) == 42
        assert breaker.state == "closed"
        assert breaker.fail_counter == 0

    def test_failed_trial_reopens_with_fresh_timeout(self, clock: time_machine.Traveller) -> None:
        """A failed trial opens the breaker again for a full reset_timeout."""
        breaker = Breaker("t")
        open_breaker(breaker)
        clock.shift(60)
        with pytest.raises(Boom):
            breaker.call(boom)
        assert breaker.state == "open"
        assert breaker.retry_after() == pytest.approx(60.0)
        clock.shift(30)
        assert breaker.retry_after() == pytest.approx(30.0)

    def test_state_reports_trial_eligibility_without_traffic(
        self, clock: time_machine.Traveller
    ) -> None:
        """An open breaker whose timeout passed reports half-open and retry_after 0."""
        breaker = Breaker("t", reset_timeout=5)
        open_breaker(breaker)
        clock.shift(5)
        assert breaker.state == "half-open"
        assert breaker.retry_after() == 0.0

    def test_custom_thresholds(self, clock: time_machine.Traveller) -> None:
        """fail_max and reset_timeout are honoured."""
        breaker = Breaker("t", fail_max=2, reset_timeout=1.5)
        fail(breaker, 2)
        assert breaker.state == "open"
        clock.shift(1.5)
        assert breaker.call(lambda: 1) == 1
        assert breaker.state == "closed"


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            pytest.param({"fail_max": 0}, ValueError, id="fail_max-zero"),
            pytest.param({"fail_max": -1}, ValueError, id="fail_max-negative"),
            pytest.param({"fail_max": 1.5}, ValueError, id="fail_max-float"),
            pytest.param({"fail_max": True}, ValueError, id="fail_max-bool"),
            pytest.param({"reset_timeout": 0}, ValueError, id="reset-zero"),
            pytest.param({"reset_timeout": -3.0}, ValueError, id="reset-negative"),
            pytest.param({"reset_timeout": float("nan")}, ValueError, id="reset-nan"),
            pytest.param({"reset_timeout": float("inf")}, ValueError, id="reset-inf"),
            pytest.param({"reset_timeout": "60"}, TypeError, id="reset-str"),
            pytest.param({"half_open_permits": 0}, ValueError, id="permits-zero"),
            pytest.param({"exclude": [42]}, TypeError, id="exclude-not-type"),
        ],
    )
    def test_bad_configuration_is_refused(
        self, kwargs: dict[str, object], error: type[Exception]
    ) -> None:
        """Non-positive or non-numeric settings raise a clear error at construction."""
        with pytest.raises(error, match=next(iter(kwargs))):
            Breaker("t", **kwargs)  # type: ignore[arg-type]

    def test_empty_name_is_refused(self) -> None:
        """A breaker needs a name for its metric label."""
        with pytest.raises(ValueError, match="name"):
            Breaker("")


class TestOutcomes:
    def test_async_failures_count(self, clock: time_machine.Traveller) -> None:
        """Exceptions from awaited coroutines are failures."""
        breaker = Breaker("t")

        async def broken() -> None:
            raise Boom

        async def main() -> None:
            for _ in range(5):
                with pytest.raises(Boom):
                    await breaker.call_async(broken)

        asyncio.run(main())
        assert breaker.state == "open"

    def test_cancellation_is_ignored(self, clock: time_machine.Traveller) -> None:
        """Cancelled calls neither count as failures nor reset the count."""
        breaker = Breaker("t")
        fail(breaker, 4)

        async def main() -> None:
            started = asyncio.Event()

            async def hang() -> None:
                started.set()
                await asyncio.Event().wait()

            for _ in range(10):
                started.clear()
                task = asyncio.create_task(breaker.call_async(hang))
                await started.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

        asyncio.run(main())
        assert breaker.state == "closed"
        assert breaker.fail_counter == 4

    def test_cancelled_trial_releases_permit_without_closing(
        self, clock: time_machine.Traveller
    ) -> None:
        """A cancelled half-open trial frees its permit and leaves the breaker half-open."""
        breaker = Breaker("t")
        open_breaker(breaker)
        clock.shift(60)

        async def main() -> None:
            started = asyncio.Event()

            async def hang() -> None:
                started.set()
                await asyncio.Event().wait()

            task = asyncio.create_task(breaker.call_async(hang))
            await started.wait()
            with pytest.raises(CircuitOpenError):
                await breaker.call_async(asyncio.sleep, 0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert breaker.state == "half-open"
        assert breaker.call(lambda: "trial") == "trial"
        assert breaker.state == "closed"

    @pytest.mark.parametrize(
        "exclude",
        [
            pytest.param([NotOurFault], id="type"),
            pytest.param([lambda e: isinstance(e, NotOurFault)], id="predicate"),
        ],
    )
    def test_excluded_exceptions_are_ignored(
        self, clock: time_machine.Traveller, exclude: list[object]
    ) -> None:
        """Excluded exceptions neither count nor reset the count (pybreaker would reset it)."""
        breaker = Breaker("t", exclude=exclude)  # type: ignore[arg-type]

        def not_our_fault() -> None:
            raise NotOurFault

        fail(breaker, 4)
        for _ in range(10):
            with pytest.raises(NotOurFault):
                breaker.call(not_our_fault)
        assert breaker.fail_counter == 4
        fail(breaker, 1)
        assert breaker.state == "open"

    def test_excluded_exception_does_not_close_half_open(
        self, clock: time_machine.Traveller
    ) -> None:
        """An excluded exception in the trial releases the permit; the breaker stays half-open."""
        breaker = Breaker("t", exclude=[NotOurFault])
        open_breaker(breaker)
        clock.shift(60)

        def not_our_fault() -> None:
            raise NotOurFault

        with pytest.raises(NotOurFault):
            breaker.call(not_our_fault)
        assert breaker.state == "half-open"
        with pytest.raises(Boom):
            breaker.call(boom)
        assert breaker.state == "open"

    @pytest.mark.parametrize(
        "exc",
        [
            pytest.param(InvalidInputError("bad shape"), id="invalid-input"),
            pytest.param(KeyboardInterrupt(), id="keyboard-interrupt"),
        ],
    )
    def test_client_faults_and_interrupts_are_ignored(
        self, clock: time_machine.Traveller, exc: BaseException
    ) -> None:
        """Bad input and interrupts never trip a breaker, however many arrive."""
        breaker = Breaker("t")

        def raise_it() -> None:
            raise exc

        for _ in range(20):
            with pytest.raises(type(exc)):
                breaker.call(raise_it)
        assert breaker.state == "closed"
        assert breaker.fail_counter == 0

    def test_stale_success_does_not_close_half_open(self, clock: time_machine.Traveller) -> None:
        """A slow call admitted while closed cannot close a breaker that has since opened."""
        breaker = Breaker("t")
        with breaker.guard():  # admitted while closed ...
            open_breaker(breaker)  # ... meanwhile five others fail
            clock.shift(60)
            assert breaker.state == "half-open"
        assert breaker.state == "half-open"  # the stale success was dropped

    def test_coroutine_passed_to_sync_call_is_refused(self) -> None:
        """Breaker.call refuses an async function instead of counting an unawaited coroutine."""
        breaker = Breaker("t")

        async def coro() -> int:
            return 1

        with pytest.raises(TypeError, match="call_async"):
            breaker.call(coro)
        assert breaker.fail_counter == 0


class TestConcurrency:
    def test_sixteen_threads_run_at_once(self) -> None:
        """User code runs outside every lock: 16 calls are inside the breaker together."""
        breaker = Breaker("t")
        barrier = threading.Barrier(16, timeout=10)
        results: list[int] = []

        def work(i: int) -> int:
            barrier.wait()  # only passes if all 16 calls are running at the same time
            return i

        threads = [
            threading.Thread(target=lambda i=i: results.append(breaker.call(work, i)))
            for i in range(16)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert sorted(results) == list(range(16))

    def test_pybreaker_alone_serializes(self) -> None:
        """The reason for the facade: pybreaker holds its lock while the call runs."""
        cb = pybreaker.CircuitBreaker()
        barrier = threading.Barrier(2, timeout=0.5)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                barrier.wait()
            except threading.BrokenBarrierError as e:
                errors.append(e)

        threads = [threading.Thread(target=cb.call, args=(work,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=5)
        assert errors  # the second call could not enter while the first held the lock

    def test_two_hundred_tasks_run_at_once(self) -> None:
        """200 asyncio tasks are inside call_async together; none blocks the loop."""
        breaker = Breaker("t")

        async def main() -> list[int]:
            inside = 0
            all_in = asyncio.Event()

            async def work(i: int) -> int:
                nonlocal inside
                inside += 1
                if inside == 200:
                    all_in.set()
                await asyncio.wait_for(all_in.wait(), timeout=10)
                return i

            return await asyncio.gather(*(breaker.call_async(work, i) for i in range(200)))

        assert sorted(asyncio.run(main())) == list(range(200))

    def test_exactly_one_half_open_trial_under_threads(
        self, clock: time_machine.Traveller
    ) -> None:
        """While one trial runs, the other 15 threads are rejected at once, not queued."""
        breaker = Breaker("t")
        open_breaker(breaker)
        clock.shift(60)
        trial_running = threading.Event()
        release = threading.Event()
        rejected: list[float] = []
        admitted: list[str] = []

        def trial() -> str:
            trial_running.set()
            release.wait(timeout=10)
            return "trial"

        first = threading.Thread(target=lambda: admitted.append(breaker.call(trial)))
        first.start()
        assert trial_running.wait(timeout=10)

        def other() -> None:
            try:
                admitted.append(breaker.call(lambda: "other"))
            except CircuitOpenError as e:
                rejected.append(e.retry_after)

        others = [threading.Thread(target=other) for _ in range(15)]
        for t in others:
            t.start()
        for t in others:
            t.join(timeout=10)
        assert len(rejected) == 15
        assert all(r >= 1.0 for r in rejected)
        release.set()
        first.join(timeout=10)
        assert admitted == ["trial"]
        assert breaker.state == "closed"

    def test_exactly_one_half_open_trial_under_asyncio(
        self, clock: time_machine.Traveller
    ) -> None:
        """Of 50 concurrent tasks in half-open state, one runs the trial, 49 are rejected."""
        breaker = Breaker("t")
        open_breaker(breaker)
        clock.shift(60)

        async def main() -> list[object]:
            gate = asyncio.Event()

            async def work() -> str:
                await gate.wait()
                return "ran"

            tasks = [asyncio.create_task(breaker.call_async(work)) for _ in range(50)]
            await asyncio.sleep(0)
            gate.set()
            return await asyncio.gather(*tasks, return_exceptions=True)

        outcomes = asyncio.run(main())
        assert outcomes.count("ran") == 1
        assert sum(isinstance(o, CircuitOpenError) for o in outcomes) == 49
        assert breaker.state == "closed"

    def test_configurable_permits(self, clock: time_machine.Traveller) -> None:
        """half_open_permits=3 lets three trials run at once."""
        breaker = Breaker("t", half_open_permits=3)
        open_breaker(breaker)
        clock.shift(60)
        guards = [breaker.guard() for _ in range(3)]
        for g in guards:
            g.__enter__()
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: None)
        for g in guards:
            g.__exit__(None, None, None)
        assert breaker.state == "closed"


class TestGuardAndDecorator:
    def test_with_guard_records_failure(self, clock: time_machine.Traveller) -> None:
        """A block that raises counts as a failure and the exception propagates."""
        breaker = Breaker("t", fail_max=1)
        with pytest.raises(Boom), breaker.guard():
            raise Boom
        assert breaker.state == "open"
        with pytest.raises(CircuitOpenError), breaker.guard():
            pytest.fail("an open breaker must not run the block")

    def test_async_with_guard(self, clock: time_machine.Traveller) -> None:
        """``async with breaker.guard()`` records outcomes like call_async."""
        breaker = Breaker("t", fail_max=2)

        async def main() -> None:
            async with breaker.guard():
                pass
            for _ in range(2):
                with pytest.raises(Boom):
                    async with breaker.guard():
                        raise Boom

        asyncio.run(main())
        assert breaker.state == "open"

    def test_decorator_sync_and_async_keep_signatures(self, clock: time_machine.Traveller) -> None:
        """@breaker works on def and async def and keeps names and signatures."""
        breaker = Breaker("t", fail_max=1)

        @breaker
        def add(a: int, b: int = 2) -> int:
            return a + b

        @breaker
        async def async_add(a: int, b: int = 2) -> int:
            return a + b

        assert add(1) == 3
        assert asyncio.run(async_add(1, b=5)) == 6
        assert add.__name__ == "add"
        assert str(inspect.signature(async_add)) == "(a: 'int', b: 'int' = 2) -> 'int'"
        assert inspect.iscoroutinefunction(async_add)

        @breaker
        async def broken() -> None:
            raise Boom

        with pytest.raises(Boom):
            asyncio.run(broken())
        assert breaker.state == "open"


class TestHooks:
    def test_raising_hook_changes_nothing(
        self, clock: time_machine.Traveller, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A hook that raises on every event is logged once and the breaker behaves the same."""

        def broken_hook(event: Event) -> None:
            raise RuntimeError("hook bug")

        set_on_event_hooks([broken_hook])
        try:
            with caplog.at_level(logging.ERROR, logger="clarity_resilience.instrumentation"):
                breaker = Breaker("t")
                fail(breaker, 5)
                assert breaker.state == "open"
                with pytest.raises(CircuitOpenError):
                    breaker.call(lambda: None)
                clock.shift(60)
                assert breaker.call(lambda: "ok") == "ok"
                assert breaker.state == "closed"
        finally:
            set_on_event_hooks(None)
        assert len([r for r in caplog.records if "hook bug" in str(r.exc_info)]) == 1


class TestRedisStorage:
    def test_state_is_shared_through_a_real_redis(
        self, redis_server: str, clock: time_machine.Traveller
    ) -> None:
        """Two breakers (two processes) on one Redis namespace share failures and state."""
        import redis

        def make() -> Breaker:
            client = redis.Redis(unix_socket_path=redis_server)  # decode_responses=False
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, client, namespace="model-a"
            )
            return Breaker("model-a", storage=storage)

        first, second = make(), make()
        fail(first, 3)
        fail(second, 2)  # the fifth consecutive failure, counted across both
        assert first.state == "open"
        with pytest.raises(CircuitOpenError):
            first.call(lambda: None)
        clock.shift(60)
        assert second.call(lambda: "trial") == "trial"
        assert first.state == "closed"
        assert first.call(lambda: "ok") == "ok"


def raising_predicate(exc: BaseException) -> bool:
    raise LookupError("predicate bug")


class TestRaisingPredicate:
    def test_raising_predicate_counts_a_failure_while_closed(
        self, clock: time_machine.Traveller
    ) -> None:
        """A predicate that raises counts the call as a failure and the caller sees its error."""
        breaker = Breaker("t", exclude=[raising_predicate])
        for _ in range(5):
            with pytest.raises(Boom):
                breaker.call(boom)
        assert breaker.state == "open"

    def test_raising_predicate_in_trial_does_not_stick_half_open(
        self, clock: time_machine.Traveller
    ) -> None:
        """A trial whose predicate raises is a failed trial: reopened, and the next trial runs."""
        breaker = Breaker("t", exclude=[raising_predicate])
        open_breaker(breaker)
        clock.shift(60)
        with pytest.raises(Boom):
            breaker.call(boom)
        assert breaker.state == "open"
        assert breaker.retry_after() == pytest.approx(60.0)
        clock.shift(60)
        assert breaker.call(lambda: "trial") == "trial"
        assert breaker.state == "closed"

    def test_raising_predicate_is_logged_once(
        self, clock: time_machine.Traveller, caplog: pytest.LogCaptureFixture
    ) -> None:
        """However often it raises, a broken predicate is logged once per breaker."""
        breaker = Breaker("t", fail_max=100, exclude=[raising_predicate])
        with caplog.at_level(logging.ERROR, logger="clarity_resilience"):
            fail(breaker, 10)
        logged = [r for r in caplog.records if "exclude predicate" in r.getMessage()]
        assert len(logged) == 1
        assert logged[0].levelno == logging.ERROR
        assert logged[0].exc_info is not None
        assert isinstance(logged[0].exc_info[1], LookupError)
        assert breaker.fail_counter == 10

    def test_later_predicates_still_ignore(self, clock: time_machine.Traveller) -> None:
        """A predicate that matches before the broken one still ignores the exception."""
        breaker = Breaker("t", exclude=[lambda e: isinstance(e, NotOurFault), raising_predicate])

        def not_our_fault() -> None:
            raise NotOurFault

        for _ in range(10):
            with pytest.raises(NotOurFault):
                breaker.call(not_our_fault)
        assert breaker.fail_counter == 0


class TestUnknownStoredState:
    def test_unknown_state_counts_as_open(
        self, clock: time_machine.Traveller, registry: CollectorRegistry
    ) -> None:
        """A storage holding a state that is not a breaker state rejects calls (fail closed)."""
        storage = pybreaker.CircuitMemoryStorage("bogus")
        with capture_events() as events:
            breaker = Breaker("t", storage=storage, registry=registry)
            calls: list[int] = []
            with pytest.raises(CircuitOpenError):
                breaker.call(calls.append, 1)
        assert calls == []
        assert breaker.state == "open"
        failed = [e for e in events if isinstance(e, BreakerStorageFailed)]
        assert [(e.problem, e.detail) for e in failed] == [("unknown_state", "'bogus'")]

    def test_unknown_state_gets_a_trial_after_reset_timeout(
        self, clock: time_machine.Traveller, registry: CollectorRegistry
    ) -> None:
        """After reset_timeout a trial runs, and its success writes a valid state back."""
        storage = pybreaker.CircuitMemoryStorage("bogus")
        breaker = Breaker("t", storage=storage, registry=registry)
        clock.shift(59)
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: None)
        clock.shift(1)
        assert breaker.call(lambda: "trial") == "trial"
        assert storage.state == "closed"
        assert breaker.state == "closed"

    def test_unknown_state_never_reaches_a_metric_label(
        self, clock: time_machine.Traveller, registry: CollectorRegistry
    ) -> None:
        """The state gauge and transitions carry only closed/open/half-open."""
        storage = pybreaker.CircuitMemoryStorage("bogus")
        breaker = Breaker("t", storage=storage, registry=registry)
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: None)
        states = {
            value
            for metric in registry.collect()
            for s in metric.samples
            for key, value in s.labels.items()
            if key in ("state", "from_state", "to_state")
        }
        assert states == {"closed", "open", "half-open"}
        assert (
            registry.get_sample_value("circuit_breaker_state", {"breaker": "t", "state": "open"})
            == 1.0
        )
        assert (
            registry.get_sample_value("circuit_breaker_storage_failures_total", {"breaker": "t"})
            == 1.0
        )
