"""Concurrent corruption under load: no prediction is ever served by a corrupted model.

32 threads and then 500 asyncio tasks load, reload and predict while a corruptor
thread rewrites, truncates, swaps and restores the model file at random (fixed seed).
Checked by the model's content, by the metric totals against the driver's own record
of every outcome, and for leaked file descriptors, threads and temporary files.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import random
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from chaos_models import ModelVersion, Resources, failure_total, publish, signature
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience.chaos import Call, LoadResult, random_corruption, run_tasks, run_threads

# Fast enough (a few seconds) to run in the quick suite as well.
# A hang detector, not a speed bound: generous, so a busy machine never trips it.
pytestmark = [pytest.mark.chaos, pytest.mark.non_destructive, pytest.mark.timeout(120)]

SEED = 20261121


class Corruptor:
    """A thread that keeps damaging and restoring one file while workers use it.

    It applies a random corruption, waits until the workers have made ``hold`` more
    calls (so each damage is really seen under load), restores, and repeats.
    """

    def __init__(self, path: pathlib.Path, *, seed: int, hold: int = 25) -> None:
        self.path = path
        self.rng = random.Random(seed)
        self.hold = hold
        self.applied: Counter[str] = Counter()
        self._calls = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-corruptor")

    def tick(self) -> None:
        """Record that a worker made a call."""
        with self._changed:
            self._calls += 1
            self._changed.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            corruption = random_corruption(self.path, self.rng).apply()
            self.applied[corruption.name] += 1
            try:
                with self._changed:
                    target = self._calls + self.hold

                    def held(target: int = target) -> bool:
                        return self._calls >= target or self._stop.is_set()

                    self._changed.wait_for(held, timeout=5)
            finally:
                corruption.restore()

    @contextlib.contextmanager
    def running(self) -> Iterator[Corruptor]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            with self._changed:
                self._changed.notify_all()
            self._thread.join(timeout=10)
            assert not self._thread.is_alive()


def kinds_and_results(
    kinds: dict[tuple[int, int], str], result: LoadResult[float]
) -> Counter[str]:
    """Count outcomes as ``<operation>:ok`` / ``<operation>:<ExcType>``."""
    return Counter(
        f"{kinds[(o.worker, o.index)]}:{'ok' if o.ok else o.exc_type}" for o in result.outcomes
    )


def check_books(registry: CollectorRegistry, counts: Counter[str], version: ModelVersion) -> None:
    """Metric totals equal what the driver recorded, operation by operation."""

    def total(prefix: str, ok: bool | None = None) -> int:
        return sum(
            n
            for key, n in counts.items()
            if key.startswith(prefix + ":") and (ok is None or (key.endswith(":ok") == ok))
        )

    assert registry.get_sample_value("prediction_success_total", {"model": "m"}) == total(
        "predict", ok=True
    )
    assert failure_total(registry, "prediction_failure_total") == total("predict", ok=False)
    # One refused reload = one integrity failure (the bytes were checked once).
    assert failure_total(registry, "model_integrity_failures_total") == total("reload", ok=False)
    assert failure_total(registry, "model_integrity_failures_total", model="cold") == total(
        "cold", ok=False
    )
    # Every load attempt is timed: the first load plus every reload, refused or not.
    assert registry.get_sample_value(
        "model_load_duration_seconds_count", {"model": "m"}
    ) == 1 + total("reload")


class TestConcurrentCorruption:
    def test_threads_never_get_a_corrupted_model(self) -> None:
        """32 threads x 25 calls under random corruption: all answers from the good model."""
        before = Resources.now()
        with tempfile.TemporaryDirectory(prefix="clarity-chaos-") as tmp:
            root = pathlib.Path(tmp)
            registry = CollectorRegistry()
            version = publish(root, 1.0)
            guard = version.guard(registry)
            guard.load()
            corruptor = Corruptor(version.path, seed=SEED)
            kinds: dict[tuple[int, int], str] = {}

            def work(call: Call) -> float:
                roll = call.rng.random()
                kind = "reload" if roll < 0.35 else "cold" if roll < 0.5 else "predict"
                kinds[(call.worker, call.index)] = kind
                try:
                    if kind == "reload":
                        return signature(guard.reload())
                    if kind == "cold":
                        return signature(
                            cr.load_verified(
                                version.path,
                                sha256=version.sha256,
                                size=version.size,
                                loader=cr.loaders.safetensors,
                                model="cold",
                                registry=registry,
                            )
                        )
                    return guard.predict(signature)
                finally:
                    corruptor.tick()

            with corruptor.running():
                result = run_threads(work, workers=32, iterations=25, seed=SEED)
            result.raise_for_untyped()
            counts = kinds_and_results(kinds, result)
            assert {o.value for o in result.successes} == {version.signature}, counts
            assert counts["predict:ok"] == sum(
                v for k, v in counts.items() if k.startswith("predict")
            )
            assert result.errors, "the corruptor never bit: the scenario proved nothing"
            assert len(corruptor.applied) >= 4, corruptor.applied
            check_books(registry, counts, version)
            assert guard.predict(signature) == version.signature
        assert not root.exists()
        assert Resources.now().leaked_since(before) == []

    def test_tasks_never_get_a_corrupted_model(self) -> None:
        """500 asyncio tasks reload and predict under random corruption: same guarantees."""
        before = Resources.now()
        with tempfile.TemporaryDirectory(prefix="clarity-chaos-") as tmp:
            root = pathlib.Path(tmp)
            registry = CollectorRegistry()
            version = publish(root, 2.0)
            guard = version.guard(registry)
            guard.load()
            corruptor = Corruptor(version.path, seed=SEED + 1, hold=40)
            kinds: dict[tuple[int, int], str] = {}

            async def work(call: Call) -> float:
                kind = "reload" if call.rng.random() < 0.3 else "predict"
                kinds[(call.worker, call.index)] = kind
                try:
                    if kind == "reload":
                        return signature(await guard.reload_async())
                    return float(await guard.predict_async(signature))
                finally:
                    corruptor.tick()

            with corruptor.running():
                result = asyncio.run(run_tasks(work, tasks=500, iterations=4, seed=SEED))
            result.raise_for_untyped()
            counts = kinds_and_results(kinds, result)
            assert {o.value for o in result.successes} == {version.signature}, counts
            assert counts["predict:ok"] == sum(
                v for k, v in counts.items() if k.startswith("predict")
            )
            assert result.errors, "the corruptor never bit: the scenario proved nothing"
            check_books(registry, counts, version)
        assert not root.exists()
        assert Resources.now().leaked_since(before) == []
