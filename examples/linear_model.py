"""The example model: a small linear regressor stored as safetensors with a JSON manifest.

Shared by ``fastapi_app.py``, ``flask_app.py`` and the demo. A real service would ship
its model directory and manifest from training; here they are generated on first start.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry
from safetensors.numpy import save_file

import clarity_resilience as cr

N_FEATURES = 4
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"

Model = dict[str, NDArray[np.float32]]


def ensure_model(directory: pathlib.Path, *, version: str = "v1", seed: int = 7) -> pathlib.Path:
    """Create the model directory and its manifest unless they exist; return the manifest."""
    weights = directory / "weights"
    manifest = directory / MANIFEST_FILE
    if not manifest.exists():
        write_model(directory, version=version, seed=seed)
    assert weights.is_dir()
    return manifest


def write_model(directory: pathlib.Path, *, version: str, seed: int) -> pathlib.Path:
    """Write a model version (weights + manifest) into ``directory``; return the manifest."""
    weights = directory / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file(
        {
            "w": rng.standard_normal(N_FEATURES).astype(np.float32),
            "b": np.asarray([rng.standard_normal()], dtype=np.float32),
        },
        str(weights / WEIGHTS_FILE),
    )
    manifest = directory / MANIFEST_FILE
    cr.Manifest.build(weights, version=version).write(manifest, format="json")
    return manifest


def origin(directory: pathlib.Path) -> dict[str, Any]:
    """Return the guard's origin: the weights file as listed in the manifest on disk."""
    return {
        "path": directory / "weights",
        "manifest": directory / MANIFEST_FILE,
        "entry": WEIGHTS_FILE,
    }


def make_guard(
    directory: pathlib.Path,
    *,
    breaker: cr.Breaker | None = None,
    registry: CollectorRegistry | None = None,
) -> cr.ModelGuard[Model]:
    """Return a guard for the model in ``directory`` (created there on first use).

    The guard verifies the weights against the manifest at every load; without a
    ``breaker`` it gets its own (5 failures, 60 s).
    """
    ensure_model(directory)
    return cr.ModelGuard(
        "linear",
        **origin(directory),
        loader=cr.loaders.safetensors,
        breaker=breaker,
        registry=registry,
    )


def predict(model: Model, features: Sequence[object]) -> float:
    """Score one example; bad input raises InvalidInputError (a 422, never a breaker trip).

    ``features`` may come straight from untrusted JSON, so every item is checked.
    """
    if len(features) != N_FEATURES:
        raise cr.InvalidInputError(f"expected {N_FEATURES} features, got {len(features)}")
    if not all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
        for x in features
    ):
        raise cr.InvalidInputError("features must be finite numbers")
    x = np.asarray(features, dtype=np.float32)
    return float(x @ model["w"] + model["b"][0])
