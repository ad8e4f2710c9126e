"""Real model versions whose content can be checked, for the chaos suite.

Import with ``from chaos_models import ...`` (tests/support is on pytest's pythonpath).

Every model version is a real safetensors file whose weights all equal one value, so
a prediction computed from the *whole* model (:func:`signature`) tells exactly which
bytes served it. A corrupted model that slipped through would show a value no
published version has: tests check content, not our own flags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import threading

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr

SIDE = 256  # 256 x 256 float32: 256 KiB of weights, many read chunks under load
Model = dict[str, NDArray[np.float32]]


def signature(model: Model, *_: object) -> float:
    """Return a value that depends on every weight of the model."""
    return float(sum(float(t.sum(dtype=np.float64)) for t in model.values()))


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """A published model version: where it is and what it must hash to."""

    path: pathlib.Path
    sha256: str
    size: int
    signature: float
    data: bytes = dataclasses.field(repr=False)

    def guard(self, registry: CollectorRegistry, **kwargs: object) -> cr.ModelGuard[Model]:
        """Return a guard for this version (not yet loaded)."""
        kwargs.setdefault("loader", cr.loaders.safetensors)
        return cr.ModelGuard(
            kwargs.pop("name", "m"),  # type: ignore[arg-type]
            path=self.path,
            sha256=self.sha256,
            size=self.size,
            registry=registry,
            **kwargs,  # type: ignore[arg-type]
        )

    def restore(self) -> None:
        """Write the published bytes back (after a test corrupted the file)."""
        self.path.write_bytes(self.data)


def model_bytes(value: float) -> bytes:
    return save(
        {"w": np.full((SIDE, SIDE), value, np.float32), "b": np.full(SIDE, value, np.float32)}
    )


def publish(
    directory: pathlib.Path, value: float = 1.0, name: str = "model.safetensors"
) -> ModelVersion:
    """Write a model version whose weights all equal ``value``; return its record."""
    data = model_bytes(value)
    path = directory / name
    path.write_bytes(data)
    expected = float(value) * (SIDE * SIDE + SIDE)
    return ModelVersion(path, hashlib.sha256(data).hexdigest(), len(data), expected, data)


@dataclasses.dataclass(frozen=True)
class Resources:
    """Open file descriptors and live threads, to prove a scenario leaks neither."""

    fds: int
    threads: frozenset[threading.Thread]

    @classmethod
    def now(cls) -> Resources:
        return cls(len(os.listdir("/proc/self/fd")), frozenset(threading.enumerate()))

    def leaked_since(self, before: Resources) -> list[str]:
        """Return what was opened or started after ``before`` and is still there.

        Threads of earlier tests that end meanwhile are not a leak of this one, so new
        threads are compared by identity, not counted.
        """
        leaks = [f"thread {t.name} still running" for t in self.threads - before.threads]
        if self.fds > before.fds:
            leaks.append(f"{self.fds - before.fds} more open file descriptors")
        return leaks


def failure_total(registry: CollectorRegistry, metric: str, model: str = "m") -> float:
    """Sum a ``{model, reason}`` counter over every reason."""
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == metric.removesuffix("_total")
        for sample in family.samples
        if sample.name == metric and sample.labels.get("model") == model
    )
