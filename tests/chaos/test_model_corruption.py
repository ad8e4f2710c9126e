"""Model corruption (the CLARITY chaos document): corrupted files never load, 503 and breaker.

Each scenario damages a real model file in a temporary directory with the chaos kit's
corruptors and checks the product's answer by content, events and metrics.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any

import pytest
import structlog
import time_machine
from chaos_models import Model, ModelVersion, failure_total, signature
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience.chaos import CORRUPTORS, rewrite_while_reading, run_threads

# A hang detector, not a speed bound: generous, so a busy machine never trips it.
pytestmark = [pytest.mark.chaos, pytest.mark.non_destructive, pytest.mark.timeout(120)]

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)

# What each corruption must be refused as.
EXPECTED_REASON = {
    "append": cr.Reason.SIZE_MISMATCH,
    "bit_flip": cr.Reason.CHECKSUM_MISMATCH,
    "delete": cr.Reason.MISSING,
    "replace_by_rename": cr.Reason.CHECKSUM_MISMATCH,
    "symlink_swap": cr.Reason.UNSAFE_PATH,
    "truncate": cr.Reason.SIZE_MISMATCH,
    "zero_fill": cr.Reason.CHECKSUM_MISMATCH,
}


class LoaderSpy:
    """The real safetensors loader, counting how often a deserializer ran."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes) -> Model:
        self.calls += 1
        return cr.loaders.safetensors(data)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


class TestModelCorruption:
    @pytest.mark.parametrize("kind", [pytest.param(name, id=name) for name in CORRUPTORS])
    def test_corrupted_model_files(
        self,
        publish_model: Callable[..., ModelVersion],
        registry: CollectorRegistry,
        kind: str,
    ) -> None:
        """Every kind of corrupted file is refused before any deserializer runs, loudly."""
        version = publish_model(1.0)
        spy = LoaderSpy()
        guard = version.guard(registry, loader=spy)
        with (
            CORRUPTORS[kind](version.path, seed=3),
            structlog.testing.capture_logs() as logs,
            pytest.raises(cr.IntegrityError) as info,
        ):
            guard.load()
        assert info.value.reason == EXPECTED_REASON[kind]
        assert spy.calls == 0
        assert not guard.ready
        failed = [e for e in logs if e["event"] == "clarity_resilience.integrity_check_failed"]
        assert [e["reason"] for e in failed] == [EXPECTED_REASON[kind].value]
        assert (
            sample(registry, "model_integrity_failures_total", model="m", reason=info.value.reason)
            == 1.0
        )
        # Restored by the corruptor: the very same guard now loads the real model.
        assert signature(guard.load()) == version.signature
        assert spy.calls == 1

    def test_checksum_mismatch_detection(
        self, publish_model: Callable[..., ModelVersion], registry: CollectorRegistry
    ) -> None:
        """A tampered file that is itself a perfectly valid model is still refused."""
        version = publish_model(1.0)
        forged = publish_model(666.0, name="forged.safetensors")
        os.replace(forged.path, version.path)  # a valid model, same name, other bytes
        spy = LoaderSpy()
        guard = version.guard(registry, loader=spy)
        with pytest.raises(cr.ChecksumMismatchError) as info:
            guard.load()
        assert info.value.expected == version.sha256
        assert info.value.actual == forged.sha256
        assert spy.calls == 0

    def test_circuit_breaker_activation(
        self, publish_model: Callable[..., ModelVersion], registry: CollectorRegistry
    ) -> None:
        """5 failures open the breaker; calls are rejected until 60 s pass; a trial closes it."""
        version = publish_model(1.0)
        guard = version.guard(registry)
        guard.load()
        ran: list[int] = []

        def broken(model: Model) -> float:
            ran.append(1)
            raise RuntimeError("inference backend crashed")

        with time_machine.travel(T0, tick=False) as clock:
            for _ in range(5):
                with pytest.raises(RuntimeError):
                    guard.predict(broken)
            assert guard.breaker.state == "open"
            for _ in range(3):
                with pytest.raises(cr.CircuitOpenError) as info:
                    guard.predict(broken)
            assert len(ran) == 5  # rejected calls never reach the model
            assert info.value.retry_after == pytest.approx(60.0)
            clock.shift(59)
            with pytest.raises(cr.CircuitOpenError):
                guard.predict(signature)
            clock.shift(1)
            assert guard.predict(signature) == version.signature
        assert guard.breaker.state == "closed"
        transitions = "circuit_breaker_transitions_total"
        assert (
            sample(registry, transitions, breaker="m", from_state="closed", to_state="open") == 1
        )
        assert sample(registry, "circuit_breaker_rejections_total", breaker="m") == 4
        assert sample(registry, "prediction_failure_total", model="m", reason="breaker_open") == 4

    def test_performance_degradation(
        self, publish_model: Callable[..., ModelVersion], registry: CollectorRegistry
    ) -> None:
        """Under corruption every check and load is still timed, refused ones included."""
        version = publish_model(1.0)
        guard = version.guard(registry)
        guard.load()
        attempts = 12
        for i in range(attempts):
            with CORRUPTORS["bit_flip"](version.path, seed=i), pytest.raises(cr.IntegrityError):
                guard.reload()
        checks = sample(registry, "checksum_verification_duration_seconds_count", model="m")
        loads = sample(registry, "model_load_duration_seconds_count", model="m")
        assert checks == attempts + 1
        assert loads == attempts + 1
        assert sample(registry, "checksum_verification_duration_seconds_sum", model="m") > 0
        # The histogram has buckets up to ten minutes, for slow disks and large models.
        assert (
            sample(registry, "model_load_duration_seconds_bucket", model="m", le="600.0")
            == attempts + 1
        )

    def test_concurrent_corruption(
        self,
        publish_model: Callable[..., ModelVersion],
        registry: CollectorRegistry,
    ) -> None:
        """8 threads reload and predict while the file is rewritten: no corrupted answer."""
        version = publish_model(1.0)
        guard = version.guard(registry)
        guard.load()

        def work(call: Any) -> float:
            if call.rng.random() < 0.3:
                return signature(guard.reload())
            return guard.predict(signature)

        with rewrite_while_reading(version.path, seed=7) as rewriter:
            result = run_threads(work, workers=8, iterations=40, seed=7)
            assert rewriter.cycles > 0
        result.raise_for_untyped()
        assert {o.value for o in result.successes} == {version.signature}
        refused = [
            o for o in result.errors if o.exc_class and issubclass(o.exc_class, cr.IntegrityError)
        ]
        assert len(refused) == len(result.errors)
        assert failure_total(registry, "prediction_failure_total") == 0.0
        assert guard.predict(signature) == version.signature


class TestGracefulDegradationHelpers:
    def test_refused_model_reports_integrity_reason_with_long_retry(
        self, publish_model: Callable[..., ModelVersion], registry: CollectorRegistry
    ) -> None:
        """With nothing good to serve, callers get the integrity reason and a long Retry-After."""
        version = publish_model(1.0)
        guard = version.guard(registry)
        with CORRUPTORS["zero_fill"](version.path), pytest.raises(cr.IntegrityError):
            guard.load()
        with pytest.raises(cr.ModelUnavailableError) as info:
            guard.predict(signature)
        assert info.value.reason == cr.Reason.CHECKSUM_MISMATCH
        assert info.value.retry_after == 300.0
