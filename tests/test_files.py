"""Tests for multi-file verified reads and the Hugging Face cache layout."""

from __future__ import annotations

import hashlib
import os
import pathlib
import threading
from typing import Any

import pytest
from model_dirs import FILES, make_hf_cache
from prometheus_client import CollectorRegistry
from trees import make_tree

import clarity_resilience as cr
from clarity_resilience import _files
from clarity_resilience.instrumentation import Event, IntegrityCheckFailed, IntegrityCheckPassed


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_tree(tmp_path / "model", FILES)


@pytest.fixture
def manifest(model_dir: pathlib.Path) -> cr.Manifest:
    return cr.Manifest.build(model_dir)


def failures(registry: CollectorRegistry, reason: cr.Reason) -> float:
    value = registry.get_sample_value(
        "model_integrity_failures_total", {"model": "m", "reason": reason.value}
    )
    return value or 0.0


class TestSelection:
    @pytest.mark.parametrize(
        ("entries", "expected"),
        [
            pytest.param(None, sorted(FILES), id="none-is-all"),
            pytest.param("*", sorted(FILES), id="star-is-all"),
            pytest.param(
                "*.safetensors",
                ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
                id="glob",
            ),
            pytest.param("config.json", ["config.json"], id="one-name"),
            pytest.param(["./config.json", "tokenizer/vocab.txt"], None, id="list"),
        ],
    )
    def test_selects_exactly_the_named_files(
        self, manifest: cr.Manifest, entries: Any, expected: list[str] | None
    ) -> None:
        """None, '*', a glob, a name or a list pick exactly those listed files."""
        if expected is None:
            expected = ["config.json", "tokenizer/vocab.txt"]
        assert _files.select_entries(manifest, entries) == expected

    @pytest.mark.parametrize(
        "entries",
        [
            pytest.param("missing.bin", id="unlisted-name"),
            pytest.param(["config.json", "other.json"], id="unlisted-in-list"),
            pytest.param("*.onnx", id="glob-matching-nothing"),
            pytest.param([], id="empty-list"),
        ],
    )
    def test_refuses_what_the_manifest_does_not_list(
        self, manifest: cr.Manifest, entries: Any
    ) -> None:
        """A selection naming unlisted files, or none, is a manifest error."""
        with pytest.raises(cr.ManifestError) as info:
            _files.select_entries(manifest, entries)
        assert info.value.reason is cr.Reason.MANIFEST_INVALID

    def test_unsafe_name_is_refused(self, manifest: cr.Manifest) -> None:
        """A name that climbs out of the directory is unsafe before anything is read."""
        with pytest.raises(cr.ManifestError) as info:
            _files.select_entries(manifest, ["../etc/passwd"])
        assert info.value.reason is cr.Reason.UNSAFE_PATH


class TestReadVerifiedFiles:
    def test_returns_every_selected_file_verified(
        self, manifest: cr.Manifest, model_dir: pathlib.Path, events: list[Event]
    ) -> None:
        """All listed files come back as bytes, one passed event each."""
        files = cr.read_verified_files(model_dir, manifest)
        assert files == FILES
        assert all(type(data) is bytes for data in files.values())
        passed = [e for e in events if isinstance(e, IntegrityCheckPassed)]
        assert len(passed) == len(FILES)

    def test_one_tampered_shard_refuses_the_whole_version(
        self,
        manifest: cr.Manifest,
        model_dir: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """One bad file fails the call: nothing is returned, the failure is audited once."""
        (model_dir / "model-00002-of-00002.safetensors").write_bytes(b"shard TWO " * 1000)
        with pytest.raises(cr.ChecksumMismatchError) as info:
            cr.read_verified_files(model_dir, manifest, model="m", registry=registry)
        assert info.value.path is not None
        assert info.value.path.endswith("model-00002-of-00002.safetensors")
        assert failures(registry, cr.Reason.CHECKSUM_MISMATCH) == 1
        assert [e.reason for e in events if isinstance(e, IntegrityCheckFailed)] == [
            cr.Reason.CHECKSUM_MISMATCH
        ]

    def test_a_missing_shard_refuses_the_version(
        self, manifest: cr.Manifest, model_dir: pathlib.Path
    ) -> None:
        """A deleted file is a typed refusal, not a partial result."""
        (model_dir / "model-00001-of-00002.safetensors").unlink()
        with pytest.raises(cr.IntegrityError) as info:
            cr.read_verified_files(model_dir, manifest, "*.safetensors")
        assert info.value.reason is cr.Reason.MISSING

    def test_two_shards_swapped_are_refused(
        self, manifest: cr.Manifest, model_dir: pathlib.Path
    ) -> None:
        """Swapping two files' contents (same sizes) is caught for both names."""
        one, two = (model_dir / name for name in sorted(FILES)[1:3])
        a, b = one.read_bytes(), two.read_bytes()
        one.write_bytes(b)
        two.write_bytes(a)
        with pytest.raises(cr.ChecksumMismatchError):
            cr.read_verified_files(model_dir, manifest, "*.safetensors")

    def test_files_are_read_in_parallel_threads(
        self, manifest: cr.Manifest, model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With two workers, two files are read at the same time in different threads."""
        barrier = threading.Barrier(2, timeout=30)
        names: set[str] = set()
        original = _files.read_verified_entry

        def meeting(*args: Any, **kwargs: Any) -> bytes:
            if len(names) < 2:
                names.add(threading.current_thread().name)
                barrier.wait()
            return original(*args, **kwargs)

        monkeypatch.setattr(_files, "read_verified_entry", meeting)
        assert cr.read_verified_files(model_dir, manifest, workers=2) == FILES
        assert len(names) == 2
        assert all(name.startswith("clarity-files") for name in names)

    def test_two_failures_report_the_first_file_whoever_fails_first(
        self, manifest: cr.Manifest, model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Both files refused: the error is the first file's, though the second failed first."""
        first, second = sorted(FILES)[:2]
        released = threading.Event()
        real_wait = _files.wait

        def failing(root: Any, name: str, **kwargs: Any) -> bytes:
            if name == first:
                # Fail only once the other read's failure has been seen.
                assert released.wait(timeout=30)
            raise cr.IntegrityError(f"{name} refused", path=name, reason=cr.Reason.IO_ERROR)

        def wait_then_release(*args: Any, **kwargs: Any) -> Any:
            result = real_wait(*args, **kwargs)
            released.set()
            return result

        monkeypatch.setattr(_files, "read_verified_entry", failing)
        monkeypatch.setattr(_files, "wait", wait_then_release)
        with pytest.raises(cr.IntegrityError) as caught:
            cr.read_verified_files(model_dir, manifest, [first, second], workers=2)
        assert caught.value.path == first

    def test_workers_must_be_positive(
        self, manifest: cr.Manifest, model_dir: pathlib.Path
    ) -> None:
        """workers=0 is a usage error."""
        with pytest.raises(ValueError, match="workers"):
            cr.read_verified_files(model_dir, manifest, workers=0)


class TestHuggingFaceLayout:
    def test_snapshot_of_symlinks_verifies_with_symlink_root(self, tmp_path: pathlib.Path) -> None:
        """Symlinks into the repo's blobs are followed (by us) when the root is allowed."""
        repo, snapshot, manifest = make_hf_cache(tmp_path)
        assert cr.read_verified_files(snapshot, manifest, symlink_root=repo) == FILES
        manifest.verify(snapshot, symlink_root=repo)
        assert (
            manifest.read_entry(snapshot, "config.json", symlink_root=repo) == FILES["config.json"]
        )

    def test_symlinks_stay_refused_without_symlink_root(self, tmp_path: pathlib.Path) -> None:
        """The layout is opt-in: by default a symlinked file is unsafe."""
        _, snapshot, manifest = make_hf_cache(tmp_path)
        with pytest.raises(cr.IntegrityError) as info:
            cr.read_verified_files(snapshot, manifest)
        assert info.value.reason is cr.Reason.UNSAFE_PATH

    def test_tampered_blob_is_refused(self, tmp_path: pathlib.Path) -> None:
        """A blob rewritten in the cache does not match its pinned digest."""
        repo, snapshot, manifest = make_hf_cache(tmp_path)
        blob = repo / "blobs" / sha(FILES["config.json"])
        blob.write_bytes(b'{"layers": 9}')
        with pytest.raises(cr.ChecksumMismatchError):
            cr.read_verified_files(snapshot, manifest, symlink_root=repo)

    def test_symlink_escaping_the_root_is_refused(self, tmp_path: pathlib.Path) -> None:
        """A snapshot link pointing outside the repository is unsafe, even with good bytes."""
        repo, snapshot, manifest = make_hf_cache(tmp_path)
        outside = tmp_path / "outside.json"
        outside.write_bytes(FILES["config.json"])
        link = snapshot / "config.json"
        link.unlink()
        link.symlink_to(outside)
        with pytest.raises(cr.IntegrityError, match="outside") as info:
            manifest.read_entry(snapshot, "config.json", symlink_root=repo)
        assert info.value.reason is cr.Reason.UNSAFE_PATH

    def test_symlink_chain_is_refused(self, tmp_path: pathlib.Path) -> None:
        """A link to a link (inside the root) is not followed a second time."""
        repo, snapshot, manifest = make_hf_cache(tmp_path)
        blob = repo / "blobs" / sha(FILES["config.json"])
        hop = repo / "blobs" / "hop"
        hop.symlink_to(blob.name)
        link = snapshot / "config.json"
        link.unlink()
        link.symlink_to(os.path.relpath(hop, link.parent))
        with pytest.raises(cr.IntegrityError) as info:
            manifest.read_entry(snapshot, "config.json", symlink_root=repo)
        assert info.value.reason is cr.Reason.UNSAFE_PATH

    def test_link_to_the_root_itself_is_refused(self, tmp_path: pathlib.Path) -> None:
        """A link to the allowed directory itself is not a file inside it."""
        repo, snapshot, manifest = make_hf_cache(tmp_path)
        link = snapshot / "config.json"
        link.unlink()
        link.symlink_to(repo)
        with pytest.raises(cr.IntegrityError):
            manifest.read_entry(snapshot, "config.json", symlink_root=repo)
