"""Tests for materialize: verified private snapshots for path-based frameworks."""

from __future__ import annotations

import hashlib
import os
import pathlib
import stat
from typing import Any

import pytest
from model_dirs import FILES, make_hf_cache
from prometheus_client import CollectorRegistry
from trees import make_tree

import clarity_resilience as cr
from clarity_resilience import _materialize
from clarity_resilience.instrumentation import Event, IntegrityCheckFailed


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_tree(tmp_path / "model", FILES)


@pytest.fixture
def manifest(model_dir: pathlib.Path) -> cr.Manifest:
    return cr.Manifest.build(model_dir)


@pytest.fixture
def cache(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "cache"


def contents(root: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def leftovers(cache: pathlib.Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


class TestMaterialize:
    def test_snapshot_holds_exactly_the_verified_files(
        self, model_dir: pathlib.Path, manifest: cr.Manifest, cache: pathlib.Path
    ) -> None:
        """The snapshot has every listed file, read-only, in private directories."""
        snapshot = cr.materialize(model_dir, manifest=manifest, into=cache)
        assert snapshot.parent == cache
        assert contents(snapshot) == FILES
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700
        assert stat.S_IMODE(snapshot.stat().st_mode) == 0o700
        for path in snapshot.rglob("*"):
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o444), path
        assert leftovers(cache) == [snapshot.name]

    def test_later_changes_to_the_source_never_reach_the_snapshot(
        self, model_dir: pathlib.Path, manifest: cr.Manifest, cache: pathlib.Path
    ) -> None:
        """The snapshot is a copy: rewriting the source afterwards changes nothing in it."""
        snapshot = cr.materialize(model_dir, manifest=manifest, into=cache)
        (model_dir / "config.json").write_bytes(b'{"layers": 666}')
        assert contents(snapshot) == FILES

    def test_source_rewritten_during_the_copy_is_refused(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
        registry: CollectorRegistry,
    ) -> None:
        """A source changed while it is copied fails its digest; nothing complete is left."""
        original = _materialize._copy_hashing

        def rewrite_then_copy(opened: Any, target: str, length: int) -> str:
            if target.endswith("config.json"):
                (model_dir / "config.json").write_bytes(b'{"layers": 3}')  # same size
            return original(opened, target, length)

        monkeypatch.setattr(_materialize, "_copy_hashing", rewrite_then_copy)
        with pytest.raises(cr.ChecksumMismatchError):
            cr.materialize(model_dir, manifest=manifest, into=cache, model="m", registry=registry)
        assert leftovers(cache) == []
        failed = registry.get_sample_value(
            "model_integrity_failures_total", {"model": "m", "reason": "checksum_mismatch"}
        )
        assert failed == 1

    def test_tampered_source_is_refused_and_audited(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        events: list[Event],
    ) -> None:
        """A source file that no longer matches is never materialized."""
        (model_dir / "tokenizer" / "vocab.txt").write_bytes(b"x\ny\nz\n")
        with pytest.raises(cr.ChecksumMismatchError):
            cr.materialize(model_dir, manifest=manifest, into=cache)
        assert [e.reason for e in events if isinstance(e, IntegrityCheckFailed)] == [
            cr.Reason.CHECKSUM_MISMATCH
        ]
        assert leftovers(cache) == []

    def test_interrupted_copy_leaves_nothing_that_looks_complete(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """An interrupt mid-copy removes the partial snapshot; the next call builds it whole."""

        def interrupted(*_: Any) -> str:
            raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(_materialize, "_copy_hashing", interrupted)
            with pytest.raises(KeyboardInterrupt):
                cr.materialize(model_dir, manifest=manifest, into=cache)
        assert leftovers(cache) == []
        snapshot = cr.materialize(model_dir, manifest=manifest, into=cache)
        assert contents(snapshot) == FILES

    def test_a_crashed_builder_partial_directory_is_never_used(
        self, model_dir: pathlib.Path, manifest: cr.Manifest, cache: pathlib.Path
    ) -> None:
        """What a killed process left (.partial-*) is not mistaken for a snapshot."""
        partial = cache / ".partial-crashed"
        partial.mkdir(parents=True)
        (partial / "config.json").write_bytes(b"half")
        cache.chmod(0o700)
        snapshot = cr.materialize(model_dir, manifest=manifest, into=cache)
        assert snapshot != partial
        assert contents(snapshot) == FILES

    def test_second_call_reuses_the_snapshot_after_re_verifying(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The same manifest gives the same snapshot without copying again."""
        first = cr.materialize(model_dir, manifest=manifest, into=cache)
        copies: list[str] = []
        monkeypatch.setattr(_materialize, "_copy_all", lambda *a: copies.append("copy"))
        assert cr.materialize(model_dir, manifest=manifest, into=cache) == first
        assert copies == []

    def test_snapshot_edited_after_creation_is_detected_and_rebuilt(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        registry: CollectorRegistry,
    ) -> None:
        """An edited snapshot is audited, thrown away and rebuilt from the verified source."""
        snapshot = cr.materialize(model_dir, manifest=manifest, into=cache)
        edited = snapshot / "config.json"
        edited.chmod(0o644)
        edited.write_bytes(b'{"layers": 7}')
        again = cr.materialize(model_dir, manifest=manifest, into=cache, registry=registry)
        assert contents(again) == FILES
        failed = registry.get_sample_value(
            "model_integrity_failures_total", {"model": "unnamed", "reason": "checksum_mismatch"}
        )
        assert failed == 1

    def test_another_manifest_gets_another_snapshot(
        self, model_dir: pathlib.Path, manifest: cr.Manifest, cache: pathlib.Path
    ) -> None:
        """Snapshots are content-addressed: a subset is a different directory."""
        whole = cr.materialize(model_dir, manifest=manifest, into=cache)
        part = cr.materialize(model_dir, manifest=manifest, into=cache, entries="config.json")
        assert whole != part
        assert contents(part) == {"config.json": FILES["config.json"]}

    @pytest.mark.parametrize("mode", [0o777, 0o775])
    def test_a_cache_others_can_write_is_refused(
        self, model_dir: pathlib.Path, manifest: cr.Manifest, cache: pathlib.Path, mode: int
    ) -> None:
        """Another user able to write the cache could swap a snapshot: refused."""
        cache.mkdir()
        cache.chmod(mode)
        with pytest.raises(cr.IntegrityError, match="writable") as info:
            cr.materialize(model_dir, manifest=manifest, into=cache)
        assert info.value.reason is cr.Reason.UNSAFE_PATH

    def test_a_symlinked_cache_is_refused(
        self, model_dir: pathlib.Path, manifest: cr.Manifest, tmp_path: pathlib.Path
    ) -> None:
        """The cache directory itself must not be a symlink."""
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        link = tmp_path / "link"
        link.symlink_to(real)
        with pytest.raises(cr.IntegrityError) as info:
            cr.materialize(model_dir, manifest=manifest, into=link)
        assert info.value.reason is cr.Reason.UNSAFE_PATH

    def test_hugging_face_snapshot_is_materialized_as_real_files(
        self, tmp_path: pathlib.Path, cache: pathlib.Path
    ) -> None:
        """A snapshot of symlinks into blobs becomes a directory of verified regular files."""
        repo, snapshot, manifest = make_hf_cache(tmp_path)
        private = cr.materialize(snapshot, manifest=manifest, into=cache, symlink_root=repo)
        assert contents(private) == FILES
        assert not any(p.is_symlink() for p in private.rglob("*"))
        assert os.path.realpath(private) == str(private)
