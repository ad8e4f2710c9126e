"""Tests for the Breaker's failure-rate mode and its operator controls (issue 12)."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import threading
from collections.abc import Iterator

import pytest
import time_machine
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience._breaker import FORCED_OPEN_RETRY_AFTER
from clarity_resilience.instrumentation import (
    BreakerOperatorAction,
    BreakerStateChanged,
    Event,
)

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)


class Boom(Exception):
    """A failure of the guarded call."""


def fail() -> None:
    raise Boom


def ok() -> str:
    return "ok"


def invalid() -> None:
    raise cr.InvalidInputError("bad row")


@pytest.fixture
def traveller() -> Iterator[time_machine.Traveller]:
    """Freeze the clock at T0 (pybreaker's UTC now and the window's clock alike)."""
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def rate_breaker(registry: CollectorRegistry, **kwargs: float) -> cr.Breaker:
    options: dict[str, float] = {"failure_rate": 0.5, "minimum_calls": 4, "window": 60.0}
    options.update(kwargs)
    return cr.Breaker("b", registry=registry, reset_timeout=30.0, **options)  # type: ignore[arg-type]


def run(breaker: cr.Breaker, outcome: str) -> None:
    """Run one call with the given outcome, swallowing its expected exception."""
    fn = {"ok": ok, "fail": fail, "invalid": invalid}[outcome]
    with contextlib.suppress(Boom, cr.InvalidInputError):
        breaker.call(fn)


def transitions(registry: CollectorRegistry, old: str, new: str) -> float | None:
    return registry.get_sample_value(
        "circuit_breaker_transitions_total", {"breaker": "b", "from_state": old, "to_state": new}
    )


class TestRateScripted:
    def test_opens_exactly_when_the_rate_reaches_the_threshold(
        self, registry: CollectorRegistry, traveller: time_machine.Traveller
    ) -> None:
        """Below minimum_calls nothing opens; the call that makes 2 of 4 failures does."""
        breaker = rate_breaker(registry)
        for outcome in ("fail", "fail", "ok"):
            run(breaker, outcome)
            assert breaker.state == "closed"
        with pytest.raises(Boom):
            breaker.call(fail)  # 2 failures of 4 calls: 0.5 reaches the rate
        assert breaker.state == "open"
        assert transitions(registry, "closed", "open") == 1

    def test_stays_closed_just_below_the_threshold(
        self, registry: CollectorRegistry, traveller: time_machine.Traveller
    ) -> None:
        """1 failure in 4 calls (and 2 in 5) stays under a 0.5 rate."""
        breaker = rate_breaker(registry)
        for outcome in ("ok", "fail", "ok", "ok", "ok", "fail"):
            run(breaker, outcome)
        assert breaker.state == "closed"
        run(breaker, "fail")  # 3 of 7: still under
        assert breaker.state == "closed"
        run(breaker, "fail")  # 4 of 8: reaches 0.5
        assert breaker.state == "open"

    def test_consecutive_threshold_does_not_apply(
        self, registry: CollectorRegistry, traveller: time_machine.Traveller
    ) -> None:
        """Eight consecutive failures stay closed under a 0.9 rate with 20 minimum calls."""
        breaker = rate_breaker(registry, failure_rate=0.9, minimum_calls=20)
        for _ in range(8):
            run(breaker, "fail")
        assert breaker.state == "closed"
        assert breaker.fail_counter == 0

    def test_old_outcomes_leave_the_window(
        self, registry: CollectorRegistry, traveller: time_machine.Traveller
    ) -> None:
        """Failures older than the window no longer count toward the rate."""
        breaker = rate_breaker(registry)
        for outcome in ("fail", "fail", "ok"):
            run(breaker, outcome)
        traveller.shift(61)
        run(breaker, "fail")  # the earlier three are gone: 1 call in the window
        assert breaker.state == "closed"
        window = breaker.rate_window
        assert window is not None
        assert window.counts() == (1, 1, 0)

    def test_invalid_input_is_not_counted(
        self, registry: CollectorRegistry, traveller: time_machine.Traveller
    ) -> None:
        """Client faults and shed calls never enter the window."""
        breaker = rate_breaker(registry)
        run(breaker, "invalid")
        with pytest.raises(cr.OverloadedError):
            breaker.call(_shed)
        window = breaker.rate_window
        assert window is not None
        assert window.counts() == (0, 0, 0)

    def test_slow_calls_open_it(
        self, registry: CollectorRegistry, traveller: time_machine.Traveller
    ) -> None:
        """Successful but slow calls open it once their share reaches slow_call_rate."""
        breaker = rate_breaker(
            registry, failure_rate=1.0, slow_call_duration=2.0, slow_call_rate=0.5
        )

        def slow() -> str:
            traveller.shift(3)
            return "slow"

        for fn in (ok, ok, slow):
            assert breaker.call(fn)
            assert breaker.state == "closed"
        breaker.call(slow)  # 2 slow of 4
        assert breaker.state == "open"

    def test_slow_settings_need_failure_rate(self, registry: CollectorRegistry) -> None:
        """Slow-call settings without rate mode are refused."""
        with pytest.raises(ValueError, match="failure_rate"):
            cr.Breaker("b", registry=registry, slow_call_duration=1.0, slow_call_rate=0.5)

    def test_half_open_single_trial_and_fresh_window(
        self, registry: CollectorRegistry, traveller: time_machine.Traveller
    ) -> None:
        """After the reset timeout one trial runs; its success closes with an empty window."""
        breaker = rate_breaker(registry)
        for outcome in ("fail", "fail", "fail", "fail"):
            run(breaker, outcome)
        assert breaker.state == "open"
        traveller.shift(31)
        assert breaker.state == "half-open"
        with breaker.guard(), pytest.raises(cr.CircuitOpenError):
            breaker.call(ok)  # the one permit is taken
        assert breaker.state == "closed"
        window = breaker.rate_window
        assert window is not None
        assert window.counts() == (0, 0, 0)
        assert transitions(registry, "half-open", "closed") == 1

    def test_default_mode_unchanged(self, registry: CollectorRegistry) -> None:
        """Without failure_rate, five consecutive failures open it as before."""
        breaker = cr.Breaker("b", registry=registry)
        assert breaker.rate_window is None
        for _ in range(4):
            run(breaker, "fail")
        assert breaker.state == "closed"
        run(breaker, "fail")
        assert breaker.state == "open"


def _shed() -> None:
    raise cr.OverloadedError("shed", retry_after=1.0)


class TestOperatorControls:
    def test_force_open_holds_until_reset(
        self,
        registry: CollectorRegistry,
        traveller: time_machine.Traveller,
        events: list[Event],
    ) -> None:
        """Forced open: rejections say why, no trial after the timeout; reset closes it."""
        breaker = cr.Breaker("b", registry=registry, reset_timeout=30.0)
        breaker.force_open(reason="maintenance")
        for _ in range(2):  # the locked path, then again with the opening reported
            with pytest.raises(cr.CircuitOpenError) as info:
                breaker.call(ok)
            assert info.value.forced == "maintenance"
            assert info.value.retry_after == FORCED_OPEN_RETRY_AFTER
            assert "forced open" in str(info.value)
        traveller.shift(3600)
        assert breaker.state == "open"
        assert breaker.retry_after() == FORCED_OPEN_RETRY_AFTER
        with pytest.raises(cr.CircuitOpenError):
            breaker.call(ok)
        breaker.reset()
        assert breaker.state == "closed"
        assert breaker.forced_open is None
        assert breaker.call(ok) == "ok"
        actions = [
            (e.action, e.old_state, e.reason)
            for e in events
            if isinstance(e, BreakerOperatorAction)
        ]
        assert actions == [
            ("force_open", "closed", "maintenance"),
            ("reset", "open", "maintenance"),
        ]
        assert transitions(registry, "closed", "open") == 1
        assert transitions(registry, "open", "closed") == 1

    def test_reset_forgets_failures(self, registry: CollectorRegistry) -> None:
        """reset() closes an open breaker and zeroes its failure count."""
        breaker = cr.Breaker("b", registry=registry)
        for _ in range(5):
            run(breaker, "fail")
        assert breaker.state == "open"
        breaker.reset()
        assert breaker.state == "closed"
        assert breaker.fail_counter == 0

    def test_force_open_needs_a_reason(self, registry: CollectorRegistry) -> None:
        """An unexplained forced opening is refused (it is audited)."""
        breaker = cr.Breaker("b", registry=registry)
        with pytest.raises(ValueError, match="reason"):
            breaker.force_open(reason="")

    def test_trial_in_flight_cannot_close_a_forced_breaker(
        self, registry: CollectorRegistry, traveller: time_machine.Traveller
    ) -> None:
        """A half-open trial that succeeds after force_open leaves the breaker open."""
        breaker = cr.Breaker("b", registry=registry, reset_timeout=30.0)
        for _ in range(5):
            run(breaker, "fail")
        traveller.shift(31)
        with breaker.guard():
            breaker.force_open(reason="maintenance")
        assert breaker.state == "open"
        assert breaker.forced_open == "maintenance"

    def test_trial_failing_after_a_reset_is_stale_in_rate_mode(
        self, registry: CollectorRegistry, traveller: time_machine.Traveller
    ) -> None:
        """A trial that fails after reset() closed the breaker counts nowhere."""
        breaker = rate_breaker(registry)
        for _ in range(4):
            run(breaker, "fail")
        traveller.shift(31)

        def reset_then_fail() -> None:
            breaker.reset()  # the operator closes it while the trial runs
            raise Boom

        with pytest.raises(Boom):
            breaker.call(reset_then_fail)
        assert breaker.state == "closed"
        assert breaker.fail_counter == 0
        window = breaker.rate_window
        assert window is not None
        assert window.counts() == (0, 0, 0)

    def test_sixteen_threads(self, registry: CollectorRegistry, events: list[Event]) -> None:
        """force_open and reset from 16 threads, among calls: every action audited, consistent."""
        breaker = cr.Breaker("b", registry=registry)
        barrier = threading.Barrier(16)
        errors: list[BaseException] = []
        rejected_because: list[str | None] = []

        def operator(i: int) -> None:
            try:
                barrier.wait(10)
                for j in range(50):
                    if (i + j) % 2:
                        breaker.force_open(reason=f"op{i}")
                    else:
                        breaker.reset()
                    try:
                        breaker.call(ok)
                    except cr.CircuitOpenError as e:
                        rejected_because.append(e.forced)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=operator, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert None not in rejected_because  # only forced openings reject here
        actions = [e for e in events if isinstance(e, BreakerOperatorAction)]
        assert len(actions) == 16 * 50
        changes = [e for e in events if isinstance(e, BreakerStateChanged)]
        # Each transition starts where the previous one ended: no lost or torn update.
        for before, after in itertools.pairwise(changes):
            assert before.new_state == after.old_state
        for old, new in (("closed", "open"), ("open", "closed")):
            counted = sum(1 for c in changes if (c.old_state, c.new_state) == (old, new))
            assert transitions(registry, old, new) == counted
        breaker.reset()
        assert breaker.state == "closed"
        assert breaker.call(ok) == "ok"
        gauge = registry.get_sample_value(
            "circuit_breaker_state", {"breaker": "b", "state": "closed"}
        )
        assert gauge == 1


class RateBreakerMachine(RuleBasedStateMachine):
    """The rate-mode breaker against a small reference model of its rules."""

    WINDOW = 60  # seconds; the breaker's slots are then 1 s wide, time moves in whole seconds
    RESET = 30
    MINIMUM = 4
    RATE = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.travel = time_machine.travel(T0, tick=False)
        self.clock = self.travel.start()
        self.now = 0
        self.breaker = cr.Breaker(
            "b",
            registry=CollectorRegistry(),
            reset_timeout=float(self.RESET),
            failure_rate=self.RATE,
            minimum_calls=self.MINIMUM,
            window=float(self.WINDOW),
        )
        # The reference model.
        self.state = "closed"
        self.opened_at = 0
        self.forced = False
        self.calls: list[tuple[int, bool]] = []

    def teardown(self) -> None:
        self.travel.stop()

    def model_state(self) -> str:
        if self.state == "open" and not self.forced and self.now - self.opened_at >= self.RESET:
            return "half-open"
        return self.state

    def open_now(self) -> None:
        self.state, self.opened_at, self.calls = "open", self.now, []

    @rule(seconds=st.integers(min_value=0, max_value=40))
    def advance(self, seconds: int) -> None:
        self.clock.shift(seconds)
        self.now += seconds

    @rule(outcome=st.sampled_from(["ok", "fail", "invalid"]))
    def call(self, outcome: str) -> None:
        state = self.model_state()
        if state == "open":
            with pytest.raises(cr.CircuitOpenError):
                self.breaker.call(ok)
            return
        run(self.breaker, outcome)
        if outcome == "invalid":
            return
        failed = outcome == "fail"
        if state == "half-open":
            if failed:
                self.open_now()
            else:
                self.state, self.calls = "closed", []
            return
        self.calls = [(t, f) for t, f in self.calls if self.now - t < self.WINDOW]
        self.calls.append((self.now, failed))
        failures = sum(f for _, f in self.calls)
        if len(self.calls) >= self.MINIMUM and failures / len(self.calls) >= self.RATE:
            self.open_now()

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open(reason="maintenance")
        self.forced = True
        self.open_now()

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.forced = False
        self.state, self.calls = "closed", []

    @invariant()
    def same_state(self) -> None:
        assert self.breaker.state == self.model_state()


TestRateBreakerMachine = RateBreakerMachine.TestCase
TestRateBreakerMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
