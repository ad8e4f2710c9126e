"""The example model: a small linear regressor stored as safetensors with a JSON manifest.

Shared by ``fastapi_app.py``, ``flask_app.py`` and the demo. A real service would ship
its model directory and manifest from training; here they are generated on first start.

What a service must check on top of the verified bytes is here too: weights that are
not finite are refused at load (:func:`load`), features come from untrusted JSON and are
checked before any arithmetic (:func:`features_array`: a 422, never a 500 or a breaker
trip), and a score that is not finite is a model failure (:func:`finite_score`), never a
200 with ``NaN`` (invalid JSON) or ``null``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry
from safetensors.numpy import save_file

import clarity_resilience as cr

N_FEATURES = 4
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"

#: The largest finite float32: features beyond it cannot be represented by the model.
FLOAT32_MAX: Final = float(np.finfo(np.float32).max)

Model = dict[str, NDArray[np.float32]]
#: ``predictor(model, features) -> score``: how the apps score one example.
Predictor = Callable[[Model, Sequence[object]], float]


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


def load(data: bytes) -> Model:
    """Load verified safetensors bytes; refuse weights of the wrong shape or not finite.

    The digest proves the bytes are the published ones, not that training produced a
    usable model: a ``NaN`` weight would turn every score into ``NaN``.

    Raises:
        ModelLoadError: The tensors are missing, misshapen or not finite (the guard
            refuses the version; the last known good one keeps serving).
    """
    model = cr.loaders.safetensors(data)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.items()}
    if shapes != {"w": (N_FEATURES,), "b": (1,)}:
        raise cr.ModelLoadError(f"expected tensors w[{N_FEATURES}] and b[1], got {shapes}")
    if not all(np.isfinite(tensor).all() for tensor in model.values()):
        raise cr.ModelLoadError("the model has weights that are not finite")
    return model


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
        loader=load,
        breaker=breaker,
        registry=registry,
    )


def shapes(model: Model) -> dict[str, list[int]]:
    """Return the shape of each tensor of ``model`` (what ``GET /model`` shows)."""
    return {name: list(tensor.shape) for name, tensor in sorted(model.items())}


def public_status(guard: cr.ModelGuard[Any]) -> dict[str, Any]:
    """Return the guard's status without its digest prefix: no digest reaches a client."""
    return {key: value for key, value in guard.status().items() if key != "sha256"}


def features_array(features: object) -> NDArray[np.float32]:
    """Return untrusted JSON features as the model's float32 input.

    Raises:
        InvalidInputError: ``features`` is not a list of exactly ``N_FEATURES`` numbers
            within float32's finite range (a bool, a string, ``NaN``, an infinity,
            ``1e39`` or a 400-digit integer all are refused).
    """
    if not isinstance(features, list | tuple) or len(features) != N_FEATURES:
        raise cr.InvalidInputError(f"features must be a list of {N_FEATURES} numbers")
    for x in features:
        # Compare before converting: float() of a 400-digit int raises OverflowError (a
        # 500 and a breaker failure), and a float beyond float32 becomes inf. Python
        # compares int with float exactly, and NaN fails both comparisons.
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise cr.InvalidInputError("features must be numbers")
        if not -FLOAT32_MAX <= x <= FLOAT32_MAX:
            raise cr.InvalidInputError("features must be finite and within float32 range")
    return np.asarray(features, dtype=np.float32)


def finite_score(score: float) -> float:
    """Return ``score`` if it is finite; otherwise fail as the model, not the client.

    Raises:
        ClarityResilienceError: The score is ``NaN`` or infinite (reason ``internal``:
            the breaker counts it, and clients get a 503 problem, never invalid JSON).
    """
    if not np.isfinite(score):
        raise cr.ClarityResilienceError(
            "the model produced a score that is not finite", reason=cr.Reason.INTERNAL
        )
    return float(score)


def predict(model: Model, features: Sequence[object]) -> float:
    """Score one example; bad input raises InvalidInputError (a 422, never a breaker trip).

    ``features`` may come straight from untrusted JSON, so every item is checked. The
    sum is taken in float64: four float32 products cannot overflow it, so a score that
    is not finite can only come from the model.
    """
    x = features_array(features).astype(np.float64)
    score = x @ model["w"].astype(np.float64) + float(model["b"][0])
    return finite_score(float(score))


def checked(predictor: Predictor) -> Predictor:
    """Wrap ``predictor`` so that a score that is not finite fails as the model.

    The apps run every predictor through this (under the guard's breaker), including
    one passed in by a test or the demo.
    """

    def predict_checked(model: Model, features: Sequence[object]) -> float:
        return finite_score(predictor(model, features))

    return predict_checked
