"""Tests for examples/sharded_model.py: a sharded model, a pinned manifest, a warm-up."""

from __future__ import annotations

import json
import pathlib

import pytest
import sharded_model
from prometheus_client import CollectorRegistry

import clarity_resilience as cr


class TestShardedExample:
    def test_main_tells_the_rollout_story(self, capsys: pytest.CaptureFixture[str]) -> None:
        """v1 serves, the NaN v2 is refused at warm-up while v1 answers, v3 is promoted."""
        assert sharded_model.main() == 0
        out = capsys.readouterr().out
        lines = [line for line in out.splitlines() if not line.startswith("20")]
        v1 = lines[0].split()[2]
        assert lines[0].startswith("v1 serving:")
        assert lines[1] == "v2 refused: warmup_failed (still serving v1)"
        assert lines[2] == f"during the failed rollout: {v1}"
        assert lines[3].startswith("v3 serving:")
        assert lines[3].endswith("(v3)")
        assert lines[4] == "model_integrity_failures_total{reason=warmup_failed} 1.0"

    def test_guard_serves_the_published_shards(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """The example's guard loads every shard and predicts like the model in memory."""
        pin = sharded_model.publish(tmp_path / "v1", seed=1)
        guard = sharded_model.make_guard(tmp_path / "v1", pin, registry=registry)
        model = guard.load()
        assert set(model) == {"hidden.weight", "output.weight"}
        probe = [1.0, 2.0, 3.0, 4.0]
        assert guard.predict(sharded_model.predict, probe) == sharded_model.predict(model, probe)

    def test_tampered_shard_or_manifest_is_refused(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A changed shard, or a manifest rebuilt to match it, never serves."""
        directory = tmp_path / "v1"
        pin = sharded_model.publish(directory, seed=1)
        shard = directory / sharded_model.SHARDS[1]
        shard.write_bytes(shard.read_bytes()[:-4] + b"\x00\x00\x80\x7f")  # last weight -> inf
        with pytest.raises(cr.ChecksumMismatchError):
            sharded_model.make_guard(directory, pin, registry=registry).load()
        cr.Manifest.build(directory, version="v1").write(
            directory.with_suffix(".json"), format="json"
        )
        with pytest.raises(cr.ChecksumMismatchError) as caught:
            sharded_model.make_guard(directory, pin, registry=registry).load()
        assert caught.value.path == str(directory.with_suffix(".json"))

    def test_loader_refuses_an_inconsistent_index(self, tmp_path: pathlib.Path) -> None:
        """An index that puts tensors in the wrong shards is a load error, not a model."""
        directory = tmp_path / "v1"
        sharded_model.publish(directory, seed=1)
        files = {p.name: p.read_bytes() for p in directory.iterdir()}
        index = json.loads(files[sharded_model.INDEX])
        index["weight_map"]["output.weight"] = sharded_model.SHARDS[0]  # the shards swapped
        index["weight_map"]["hidden.weight"] = sharded_model.SHARDS[1]
        files[sharded_model.INDEX] = json.dumps(index).encode()
        with pytest.raises(cr.ModelLoadError, match="does not hold it"):
            cr.loaders.safetensors_sharded(files)
