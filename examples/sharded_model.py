"""A sharded model served as one verified unit, warmed up before it serves.

Run it with ``python examples/sharded_model.py``. It publishes a two-shard safetensors
model (with ``model.safetensors.index.json`` and ``config.json``) and a manifest whose
digest the serving code pins, then serves it with :class:`clarity_resilience.ModelGuard`:

- ``entries="*"``: every listed file is read once and verified (in parallel), and the
  loader gets them together as a read-only mapping, or not at all;
- ``loader=cr.loaders.safetensors_sharded``: the index and the shards must agree exactly
  (no missing shard, no tensor missing from its shard or held by two); the model is
  one dict of read-only arrays viewing the verified bytes;
- ``manifest_sha256=``: the manifest is trusted because its digest comes from the
  serving code's configuration, not from the directory it describes;
- ``warmup=``: each new version runs one forward pass before it is promoted; a version
  whose output is not finite (a training bug, NaN weights) is refused and the last
  known good version keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr

INDEX = "model.safetensors.index.json"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
N_FEATURES, N_HIDDEN = 4, 8

Model = dict[str, NDArray[Any]]


def publish(directory: pathlib.Path, *, seed: int, poison: bool = False) -> str:
    """Write a model version and its manifest (``<directory>.json``); return the pin.

    Args:
        directory: Where the shards, index and config go.
        seed: Seeds the weights.
        poison: Publish NaN weights (valid files, broken model) to show the warm-up.

    Returns:
        The SHA-256 of the manifest: what a deployment puts in the serving config.
    """
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((N_FEATURES, N_HIDDEN)).astype(np.float32)
    output = rng.standard_normal(N_HIDDEN).astype(np.float32)
    if poison:
        output[:] = np.nan
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SHARDS[0]).write_bytes(save({"hidden.weight": hidden}))
    (directory / SHARDS[1]).write_bytes(save({"output.weight": output}))
    weight_map = {"hidden.weight": SHARDS[0], "output.weight": SHARDS[1]}
    (directory / INDEX).write_text(json.dumps({"weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps({"n_features": N_FEATURES}))
    manifest = directory.with_suffix(".json")
    cr.Manifest.build(directory, version=directory.name).write(manifest, format="json")
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


def predict(model: Model, features: Sequence[float]) -> float:
    """One small two-layer forward pass."""
    x = np.asarray(features, dtype=np.float32)
    hidden = np.maximum(x @ model["hidden.weight"], 0.0)
    return float(hidden @ model["output.weight"])


def warm_up(model: Model) -> None:
    """Run one forward pass on a probe input; refuse a model whose answer is not finite.

    Raises:
        ValueError: The output is NaN or infinite (e.g. NaN weights).
    """
    answer = predict(model, [1.0] * N_FEATURES)
    if not np.isfinite(answer):
        raise ValueError(f"warm-up output is {answer}")


def make_guard(
    directory: pathlib.Path, manifest_sha256: str, *, registry: CollectorRegistry | None = None
) -> cr.ModelGuard[Model]:
    """Return a guard serving the sharded model in ``directory`` under the pinned manifest."""
    return cr.ModelGuard(
        "sharded",
        path=directory,
        manifest=directory.with_suffix(".json"),
        manifest_sha256=manifest_sha256,
        entries="*",
        loader=cr.loaders.safetensors_sharded,
        warmup=warm_up,
        warmup_timeout=30.0,
        registry=registry,
    )


def main(root: pathlib.Path | None = None) -> int:
    """Serve v1, refuse a NaN v2 at warm-up while v1 keeps serving, then promote v3."""
    with tempfile.TemporaryDirectory() as tmp:
        base = root or pathlib.Path(tmp)
        registry = CollectorRegistry()
        pin = publish(base / "v1", seed=1)
        guard = make_guard(base / "v1", pin, registry=registry)
        guard.load()
        probe = [0.5, -1.0, 2.0, 0.25]
        print(f"v1 serving: {guard.predict(predict, probe):.4f} ({guard.status()['version']})")

        pin = publish(base / "v2", seed=2, poison=True)
        try:
            guard.reload(path=base / "v2", manifest=base / "v2.json", manifest_sha256=pin)
        except cr.ModelLoadError as e:
            print(f"v2 refused: {e.reason} (still serving {guard.status()['version']})")
        print(f"during the failed rollout: {guard.predict(predict, probe):.4f}")

        pin = publish(base / "v3", seed=3)
        guard.reload(path=base / "v3", manifest=base / "v3.json", manifest_sha256=pin)
        print(f"v3 serving: {guard.predict(predict, probe):.4f} ({guard.status()['version']})")
        refused = registry.get_sample_value(
            "model_integrity_failures_total", {"model": "sharded", "reason": "warmup_failed"}
        )
        print(f"model_integrity_failures_total{{reason=warmup_failed}} {refused}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
