"""Tests for the failure-rate window: scripted sequences and a model-checked state machine."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from clarity_resilience._rate import RateWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestScripted:
    def test_trips_exactly_when_the_rate_is_reached_after_minimum_calls(self) -> None:
        """Failures below minimum_calls never trip; the call that reaches the rate does."""
        window = RateWindow(failure_rate=0.5, minimum_calls=4, window=60, clock=Clock())
        assert window.record(failed=True) is False  # 1/1 but fewer than 4 calls
        assert window.record(failed=True) is False
        assert window.record(failed=False) is False
        assert window.record(failed=False) is True  # 2/4 = 0.5 with 4 calls

    def test_below_the_rate_does_not_trip(self) -> None:
        """49 % failures with a 50 % threshold never trips."""
        window = RateWindow(failure_rate=0.5, minimum_calls=10, clock=Clock())
        results = [window.record(failed=i < 49) for i in range(100)]
        assert results[-1] is False
        assert window.counts() == (100, 49, 0)

    def test_decimal_rates_are_exact(self) -> None:
        """3 failures in 10 calls reach a 0.3 threshold (no float rounding surprise)."""
        window = RateWindow(failure_rate=0.3, minimum_calls=10, clock=Clock())
        for i in range(9):
            assert window.record(failed=i < 3) is False
        assert window.record(failed=False) is True

    def test_old_outcomes_leave_the_window(self) -> None:
        """Failures older than the window no longer count."""
        clock = Clock()
        window = RateWindow(failure_rate=0.5, minimum_calls=2, window=10, buckets=10, clock=clock)
        window.record(failed=True)
        clock.now += 10
        assert window.counts() == (0, 0, 0)
        assert window.record(failed=True) is False  # only one call in the window
        clock.now += 5
        assert window.record(failed=False) is True  # 1 failure of 2, both within 10 s

    def test_slow_calls_trip_the_slow_rate(self) -> None:
        """Successful but slow calls trip on slow_call_rate."""
        window = RateWindow(
            failure_rate=1.0,
            minimum_calls=2,
            slow_call_duration=2.0,
            slow_call_rate=0.5,
            clock=Clock(),
        )
        assert window.record(failed=False, duration=2.5) is False
        assert window.record(failed=False, duration=0.1) is True
        assert window.counts() == (2, 0, 1)

    def test_reset_forgets_everything(self) -> None:
        """reset empties the window."""
        window = RateWindow(failure_rate=0.5, minimum_calls=1, clock=Clock())
        window.record(failed=True)
        window.reset()
        assert window.counts() == (0, 0, 0)

    @pytest.mark.parametrize(
        "kwargs",
        [
            pytest.param({"failure_rate": 0}, id="zero-rate"),
            pytest.param({"failure_rate": 1.5}, id="rate-over-one"),
            pytest.param({"failure_rate": 0.5, "minimum_calls": 0}, id="no-calls"),
            pytest.param({"failure_rate": 0.5, "window": 0}, id="no-window"),
            pytest.param({"failure_rate": 0.5, "slow_call_rate": 0.5}, id="rate-without-duration"),
            pytest.param({"failure_rate": 0.5, "buckets": 0}, id="no-buckets"),
        ],
    )
    def test_invalid_settings(self, kwargs: dict[str, float]) -> None:
        """Nonsense settings are refused at construction."""
        with pytest.raises(ValueError):
            RateWindow(**kwargs)  # type: ignore[arg-type]


class WindowMachine(RuleBasedStateMachine):
    """The window against a reference: every outcome kept, counted by its time slot."""

    WINDOW, BUCKETS, MINIMUM, RATE, SLOW, SLOW_RATE = 10.0, 5, 3, 0.5, 1.0, 0.6

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.window = RateWindow(
            failure_rate=self.RATE,
            minimum_calls=self.MINIMUM,
            window=self.WINDOW,
            slow_call_duration=self.SLOW,
            slow_call_rate=self.SLOW_RATE,
            buckets=self.BUCKETS,
            clock=self.clock,
        )
        self.outcomes: list[tuple[int, bool, bool]] = []

    def slot(self) -> int:
        return int(self.clock.now // (self.WINDOW / self.BUCKETS))

    def reference(self) -> tuple[int, int, int]:
        live = [o for o in self.outcomes if o[0] > self.slot() - self.BUCKETS]
        return len(live), sum(o[1] for o in live), sum(o[2] for o in live)

    @rule(seconds=st.floats(min_value=0, max_value=15, allow_nan=False))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(failed=st.booleans(), duration=st.sampled_from([0.0, 0.5, 1.0, 3.0]))
    def record(self, failed: bool, duration: float) -> None:
        tripped = self.window.record(failed=failed, duration=duration)
        self.outcomes.append((self.slot(), failed, duration >= self.SLOW))
        calls, failures, slow = self.reference()
        expected = calls >= self.MINIMUM and (
            failures / calls >= self.RATE or slow / calls >= self.SLOW_RATE
        )
        assert tripped == expected

    @rule()
    def reset(self) -> None:
        self.window.reset()
        self.outcomes.clear()

    @invariant()
    def counts_match(self) -> None:
        assert self.window.counts() == self.reference()


TestWindowMachine = WindowMachine.TestCase
TestWindowMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
