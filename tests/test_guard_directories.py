"""Tests for ModelGuard over real model directories: shards, warm-up, snapshots, HF cache."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from model_dirs import make_hf_cache
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr
from clarity_resilience.instrumentation import (
    Event,
    IntegrityCheckFailed,
    ModelLoaded,
    ModelLoadFailed,
    ReloadRefused,
)

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def write_sharded(root: pathlib.Path, version: float) -> None:
    """Write a two-shard model whose every weight, and config, encode ``version``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / SHARDS[0]).write_bytes(save({"a": np.full((16, 16), version, np.float32)}))
    (root / SHARDS[1]).write_bytes(save({"b": np.full((16, 16), version, np.float32)}))
    (root / "config.json").write_text(json.dumps({"version": version}))


def load_sharded(files: Mapping[str, bytes]) -> dict[str, Any]:
    """Build one model from every shard and the config (the version each one claims)."""
    tensors: dict[str, Any] = {}
    for name in SHARDS:
        tensors.update(cr.loaders.safetensors(files[name]))
    tensors["version"] = json.loads(files["config.json"])["version"]
    return tensors


def version_of(model: dict[str, Any]) -> float:
    """Answer the version, or NaN if the shards and config disagree (a mixed model)."""
    a, b, version = model["a"], model["b"], model["version"]
    if (a == version).all() and (b == version).all():
        return float(version)
    return math.nan


def failures(registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value(
        "model_integrity_failures_total", {"model": "m", "reason": reason}
    )


def of_type(events: list[Event], kind: type[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture
def sharded(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A sharded model directory and its manifest file (outside the directory)."""
    root = tmp_path / "model"
    write_sharded(root, 1.0)
    manifest = tmp_path / "manifest.json"
    cr.Manifest.build(root).write(manifest, format="json")
    return root, manifest


def sharded_guard(
    sharded: tuple[pathlib.Path, pathlib.Path], registry: CollectorRegistry, **kw: Any
) -> cr.ModelGuard[dict[str, Any]]:
    root, manifest = sharded
    return cr.ModelGuard(
        "m",
        path=root,
        manifest=manifest,
        entries="*",
        loader=load_sharded,
        registry=registry,
        **kw,
    )


class TestEntries:
    def test_loader_gets_exactly_the_selected_files_read_only(
        self, sharded: tuple[pathlib.Path, pathlib.Path], registry: CollectorRegistry
    ) -> None:
        """entries= hands a read-only mapping of exactly the selected files."""
        seen: list[Mapping[str, bytes]] = []

        def keep(files: Mapping[str, bytes]) -> int:
            seen.append(files)
            return len(files)

        root, manifest = sharded
        guard = cr.ModelGuard(
            "m", path=root, manifest=manifest, entries="*.safetensors", loader=keep
        )
        assert guard.load() == 2
        assert sorted(seen[0]) == list(SHARDS)
        assert seen[0][SHARDS[0]] == (root / SHARDS[0]).read_bytes()
        with pytest.raises(TypeError):
            seen[0]["x"] = b""  # type: ignore[index]
        named = cr.ModelGuard(
            "m", path=root, manifest=manifest, entries=["config.json"], loader=keep
        )
        assert named.load() == 1

    def test_sharded_model_serves_with_a_version_digest(
        self,
        sharded: tuple[pathlib.Path, pathlib.Path],
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """A multi-file version is reported once, under the digest of its entry list."""
        guard = sharded_guard(sharded, registry)
        guard.load()
        assert guard.predict(version_of) == 1.0
        (loaded,) = of_type(events, ModelLoaded)
        assert len(loaded.sha256) == 64
        assert guard.status()["sha256"] == loaded.sha256[:12]

    @pytest.mark.parametrize(
        "tamper",
        [
            pytest.param("one-byte", id="tampered-shard"),
            pytest.param("swapped", id="shards-swapped"),
            pytest.param("missing", id="missing-shard"),
        ],
    )
    def test_one_bad_shard_refuses_the_whole_version(
        self,
        sharded: tuple[pathlib.Path, pathlib.Path],
        registry: CollectorRegistry,
        events: list[Event],
        tamper: str,
    ) -> None:
        """One bad shard: the loader never runs, the refusal counts once, v1 keeps serving."""
        root, _ = sharded
        calls: list[int] = []

        def counting(files: Mapping[str, bytes]) -> dict[str, Any]:
            calls.append(1)
            return load_sharded(files)

        guard = cr.ModelGuard(
            "m", path=root, manifest=sharded[1], entries="*", loader=counting, registry=registry
        )
        guard.load()
        write_sharded(root, 2.0)  # a new version on disk the manifest does not vouch for
        first, second = (root / name for name in SHARDS)
        if tamper == "one-byte":
            write_sharded(root, 1.0)
            data = bytearray(second.read_bytes())
            data[-1] ^= 1
            second.write_bytes(bytes(data))
        elif tamper == "swapped":
            write_sharded(root, 1.0)
            one, two = first.read_bytes(), second.read_bytes()
            first.write_bytes(two)
            second.write_bytes(one)
        else:
            write_sharded(root, 1.0)
            second.unlink()
        events.clear()
        with pytest.raises(cr.IntegrityError):
            guard.reload()
        assert calls == [1]
        assert len(of_type(events, ModelLoadFailed)) == 1
        assert len(of_type(events, ReloadRefused)) == 1
        assert len(of_type(events, IntegrityCheckFailed)) >= 1
        assert guard.predict(version_of) == 1.0

    def test_entry_and_entries_together_are_refused(
        self, sharded: tuple[pathlib.Path, pathlib.Path]
    ) -> None:
        """Either one file or several: both at once is a configuration error."""
        root, manifest = sharded
        with pytest.raises(ValueError, match="not both"):
            cr.ModelGuard(
                "m", path=root, manifest=manifest, entry="config.json", entries="*", loader=len
            )

    def test_unknown_entry_is_an_audited_refusal(
        self, sharded: tuple[pathlib.Path, pathlib.Path], registry: CollectorRegistry
    ) -> None:
        """entries naming a file the manifest does not list is refused (manifest_invalid)."""
        root, manifest = sharded
        guard = cr.ModelGuard(
            "m", path=root, manifest=manifest, entries=["nope.bin"], loader=len, registry=registry
        )
        with pytest.raises(cr.ManifestError):
            guard.load()
        assert failures(registry, "manifest_invalid") == 1.0


class TestLoadVerifiedFiles:
    def test_loads_all_or_nothing(
        self,
        sharded: tuple[pathlib.Path, pathlib.Path],
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """The function loads a verified mapping, and refuses a tampered shard before loading."""
        root, manifest_path = sharded
        manifest = cr.Manifest.read(manifest_path)
        model = cr.load_verified_files(
            root, manifest, loader=load_sharded, model="m", registry=registry
        )
        assert version_of(model) == 1.0
        assert len(of_type(events, ModelLoaded)) == 1
        (root / SHARDS[0]).write_bytes(save({"a": np.full((16, 16), 1.0, np.float32)}) + b" ")
        events.clear()
        called: list[int] = []
        with pytest.raises(cr.SizeMismatchError):
            cr.load_verified_files(
                root,
                manifest,
                loader=lambda files: called.append(1),
                model="m",
                registry=registry,
            )
        assert called == []
        assert len(of_type(events, ModelLoadFailed)) == 1
        assert failures(registry, "size_mismatch") == 1.0

    def test_entries_and_loader_errors(
        self, sharded: tuple[pathlib.Path, pathlib.Path], registry: CollectorRegistry
    ) -> None:
        """entries= selects the files; a loader failure is one typed, counted load error."""
        root, manifest_path = sharded
        manifest = cr.Manifest.read(manifest_path)
        assert cr.load_verified_files(root, manifest, loader=sorted, entries="*.json") == [
            "config.json"
        ]

        def broken(files: Mapping[str, bytes]) -> None:
            raise ValueError("bad index")

        with pytest.raises(cr.ModelLoadError, match="bad index"):
            cr.load_verified_files(root, manifest, loader=broken, model="m", registry=registry)
        assert failures(registry, "load_error") == 1.0


class TestWarmup:
    def test_warmup_runs_on_the_new_version_before_promotion(
        self, sharded: tuple[pathlib.Path, pathlib.Path], registry: CollectorRegistry
    ) -> None:
        """The warm-up sees the fresh model while the old one is still serving."""
        root, manifest = sharded
        seen: list[tuple[float, float | None]] = []
        guard: cr.ModelGuard[dict[str, Any]]

        def warm(model: dict[str, Any]) -> None:
            serving = guard.predict(version_of) if guard.ready else None
            seen.append((version_of(model), serving))

        guard = sharded_guard(sharded, registry, warmup=warm)
        guard.load()
        write_sharded(root, 2.0)
        cr.Manifest.build(root).write(manifest, format="json")
        guard.reload()
        assert seen == [(1.0, None), (2.0, 1.0)]
        assert guard.predict(version_of) == 2.0

    @pytest.mark.parametrize("kind", ["raises", "nan"])
    def test_failed_warmup_refuses_and_last_good_serves(
        self,
        sharded: tuple[pathlib.Path, pathlib.Path],
        registry: CollectorRegistry,
        events: list[Event],
        kind: str,
    ) -> None:
        """A warm-up that raises or finds NaN refuses the version (warmup_failed), once."""
        root, manifest = sharded

        def warm(model: dict[str, Any]) -> None:
            if model["version"] == 2.0 and kind == "raises":
                raise RuntimeError("CUDA out of memory")
            if np.isnan(model["a"]).any():
                raise ValueError("NaN weights")

        guard = sharded_guard(sharded, registry, warmup=warm)
        guard.load()
        write_sharded(root, 2.0)
        if kind == "nan":
            (root / SHARDS[0]).write_bytes(save({"a": np.full((16, 16), np.nan, np.float32)}))
        cr.Manifest.build(root).write(manifest, format="json")
        events.clear()
        with pytest.raises(cr.ModelLoadError) as caught:
            guard.reload()
        assert caught.value.reason is cr.Reason.WARMUP_FAILED
        assert failures(registry, "warmup_failed") == 1.0
        (failed,) = of_type(events, ModelLoadFailed)
        assert failed.reason is cr.Reason.WARMUP_FAILED
        assert of_type(events, ModelLoaded) == []
        assert guard.predict(version_of) == 1.0
        assert guard.status()["last_error"] == "warmup_failed"

    def test_hanging_warmup_times_out_while_the_old_version_serves(
        self, sharded: tuple[pathlib.Path, pathlib.Path], registry: CollectorRegistry
    ) -> None:
        """A warm-up past warmup_timeout is refused; predictions meanwhile answer from v1."""
        root, manifest = sharded
        entered = threading.Event()
        release = threading.Event()

        def warm(model: dict[str, Any]) -> None:
            if model["version"] == 2.0:
                entered.set()
                release.wait(60)

        guard = sharded_guard(sharded, registry, warmup=warm, warmup_timeout=2.0)
        guard.load()
        write_sharded(root, 2.0)
        cr.Manifest.build(root).write(manifest, format="json")
        outcome: list[BaseException] = []

        def reload() -> None:
            try:
                guard.reload()
            except cr.ModelLoadError as e:
                outcome.append(e)

        reloader = threading.Thread(target=reload)
        reloader.start()
        try:
            assert entered.wait(30)
            assert guard.predict(version_of) == 1.0  # during the warm-up
            reloader.join(30)
        finally:
            release.set()
        assert not reloader.is_alive()
        (error,) = outcome
        assert isinstance(error, cr.ModelLoadError)
        assert error.reason is cr.Reason.WARMUP_FAILED
        assert "did not finish" in str(error)
        assert guard.predict(version_of) == 1.0

    def test_failed_first_warmup_serves_nothing(
        self, sharded: tuple[pathlib.Path, pathlib.Path], registry: CollectorRegistry
    ) -> None:
        """A first version failing its warm-up never serves."""

        def warm(model: dict[str, Any]) -> None:
            raise RuntimeError("broken")

        guard = sharded_guard(sharded, registry, warmup=warm, warmup_timeout=30)
        with pytest.raises(cr.ModelLoadError):
            guard.load()
        with pytest.raises(cr.ModelUnavailableError) as caught:
            guard.predict(version_of)
        assert caught.value.reason is cr.Reason.WARMUP_FAILED

    @pytest.mark.parametrize("timeout", [0, -1.0, math.nan])
    def test_bad_warmup_timeout(
        self, sharded: tuple[pathlib.Path, pathlib.Path], timeout: float
    ) -> None:
        """warmup_timeout must be positive."""
        with pytest.raises(ValueError, match="warmup_timeout"):
            sharded_guard(sharded, CollectorRegistry(), warmup=len, warmup_timeout=timeout)


class TestMaterialize:
    def test_path_loader_reads_a_verified_private_snapshot(
        self, sharded: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path
    ) -> None:
        """The loader gets a snapshot Path in the cache, holding the verified files."""
        root, manifest = sharded
        paths: list[pathlib.Path] = []

        def from_path(path: pathlib.Path) -> dict[str, Any]:
            paths.append(path)
            return load_sharded({name: (path / name).read_bytes() for name in os.listdir(path)})

        guard = cr.ModelGuard(
            "m",
            path=root,
            manifest=manifest,
            materialize_into=tmp_path / "cache",
            loader=from_path,
        )
        guard.load()
        (snapshot,) = paths
        assert isinstance(snapshot, pathlib.Path)
        assert snapshot.parent == tmp_path / "cache"
        assert guard.predict(version_of) == 1.0
        # The source changes afterwards: the snapshot does not.
        write_sharded(root, 5.0)
        assert (
            load_sharded({n: (snapshot / n).read_bytes() for n in (*SHARDS, "config.json")})[
                "version"
            ]
            == 1.0
        )

    def test_tampered_source_is_refused_and_old_snapshot_serves(
        self,
        sharded: tuple[pathlib.Path, pathlib.Path],
        tmp_path: pathlib.Path,
        registry: CollectorRegistry,
    ) -> None:
        """A source that no longer matches the manifest is refused at the next load."""
        root, manifest = sharded
        guard = cr.ModelGuard(
            "m",
            path=root,
            manifest=manifest,
            entries=list(SHARDS),
            materialize_into=tmp_path / "cache",
            loader=lambda path: sorted(p.name for p in path.iterdir()),
            registry=registry,
        )
        assert guard.load() == list(SHARDS)
        # Drop the snapshot so the next load must copy from the (tampered) source.
        for child in (tmp_path / "cache").iterdir():
            child.chmod(0o700)
            shutil.rmtree(child)
        (root / SHARDS[1]).write_bytes(b"tampered")
        with pytest.raises(cr.IntegrityError):
            guard.reload()
        assert guard.model == list(SHARDS)
        assert failures(registry, "size_mismatch") == 1.0

    def test_materialize_needs_a_loader(
        self, sharded: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path
    ) -> None:
        """auto cannot load a path: materialize_into= without loader= is refused."""
        root, manifest = sharded
        with pytest.raises(ValueError, match="loader"):
            cr.ModelGuard("m", path=root, manifest=manifest, materialize_into=tmp_path / "c")


class TestHuggingFaceLayout:
    def test_symlinked_snapshot_loads_only_with_symlink_root(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """symlink_root= passes through: the HF cache loads; without it, it is refused."""
        repo, snapshot, manifest = make_hf_cache(tmp_path)
        guard = cr.ModelGuard(
            "m",
            path=snapshot,
            manifest=manifest,
            entries="*",
            symlink_root=repo,
            loader=sorted,
        )
        assert "config.json" in guard.load()
        strict = cr.ModelGuard(
            "m", path=snapshot, manifest=manifest, entries="*", loader=len, registry=registry
        )
        with pytest.raises(cr.IntegrityError) as caught:
            strict.load()
        assert caught.value.reason is cr.Reason.UNSAFE_PATH


class TestAtomicPromotion:
    def test_sharded_versions_promote_atomically_under_32_threads(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """While versions (one of them corrupt) are promoted, each answer is one whole version."""
        manifest = tmp_path / "manifest.json"
        first = tmp_path / "v1"
        write_sharded(first, 1.0)
        cr.Manifest.build(first).write(manifest, format="json")
        guard = sharded_guard((first, manifest), registry)
        guard.load()
        stop = threading.Event()
        start = threading.Barrier(33)
        answers: list[list[float]] = [[] for _ in range(32)]

        def predict(mine: list[float]) -> None:
            start.wait()
            while not stop.is_set() or len(mine) < 5:
                mine.append(guard.predict(version_of))

        threads = [threading.Thread(target=predict, args=(a,)) for a in answers]
        for thread in threads:
            thread.start()
        start.wait()
        refused = 0
        try:
            for version in range(2, 10):
                directory = tmp_path / f"v{version}"
                write_sharded(directory, float(version))
                cr.Manifest.build(directory).write(manifest, format="json")
                if version == 5:  # one shard of this version is corrupted after signing off
                    (directory / SHARDS[1]).write_bytes(
                        save({"b": np.full((16, 16), 4.0, np.float32)})
                    )
                try:
                    guard.reload(path=directory)
                except cr.IntegrityError:
                    refused += 1
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert refused == 1
        seen = {answer for mine in answers for answer in mine}
        assert seen <= {1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0}
        assert all(mine == sorted(mine) for mine in answers)  # never back to an old version
        assert guard.predict(version_of) == 9.0


class TestReloadNewManifest:
    def test_new_pinned_manifest_keeps_the_selection(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """reload(manifest=, manifest_sha256=) pins the new manifest and keeps entries=."""
        first, second = tmp_path / "v1", tmp_path / "v2"
        write_sharded(first, 1.0)
        write_sharded(second, 2.0)
        pins = {}
        for directory in (first, second):
            manifest = directory.with_suffix(".json")
            cr.Manifest.build(directory).write(manifest, format="json")
            pins[directory] = hashlib.sha256(manifest.read_bytes()).hexdigest()
        guard = cr.ModelGuard(
            "m",
            path=first,
            manifest=first.with_suffix(".json"),
            manifest_sha256=pins[first],
            entries="*",
            loader=load_sharded,
            registry=registry,
        )
        guard.load()
        with pytest.raises(cr.ChecksumMismatchError):
            guard.reload(
                path=second, manifest=second.with_suffix(".json"), manifest_sha256="0" * 64
            )
        assert guard.predict(version_of) == 1.0
        guard.reload(
            path=second, manifest=second.with_suffix(".json"), manifest_sha256=pins[second]
        )
        assert guard.predict(version_of) == 2.0
        assert "entries='*'" in guard.origin.describe()
        with pytest.raises(ValueError, match="manifest="):
            guard.reload(manifest_sha256=pins[second])


class TestWarmupDefaults:
    def test_warmup_is_bounded_by_default(
        self, sharded: tuple[pathlib.Path, pathlib.Path], registry: CollectorRegistry
    ) -> None:
        """A warm-up without warmup_timeout still gets a limit (300 s), in its own thread."""
        threads: list[threading.Thread] = []
        guard = sharded_guard(
            sharded, registry, warmup=lambda model: threads.append(threading.current_thread())
        )
        assert guard.warmup_timeout == 300.0
        guard.load()
        assert threads[0] is not threading.current_thread()
