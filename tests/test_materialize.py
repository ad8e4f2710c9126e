"""Tests for materialize: verified private snapshots for path-based frameworks."""

from __future__ import annotations

import errno
import fcntl
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


def contents(root: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def leftovers(cache: pathlib.Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.fixture
def no_reflink(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the read-hash-write path, whatever the filesystem under tmp_path can do."""
    monkeypatch.setattr(_materialize, "_clone", lambda src_fd, dst_fd: False)


def copy_fd(src_fd: int, dst_fd: int) -> bool:
    """Stand in for a reflink: copy the whole source into the destination."""
    os.lseek(src_fd, 0, os.SEEK_SET)
    while data := os.read(src_fd, 65536):
        os.write(dst_fd, data)
    return True


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

    @pytest.mark.usefixtures("no_reflink")
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

    @pytest.mark.usefixtures("no_reflink")
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


class TestFastPaths:
    @pytest.mark.parametrize(
        "code",
        [errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY],
        ids=errno.errorcode.get,
    )
    def test_a_filesystem_that_cannot_clone_falls_back_to_copying(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
        code: int,
    ) -> None:
        """FICLONE is tried on every file; "cannot clone here" means read, hash, write."""
        calls: list[tuple[int, int, int]] = []

        def refuse(fd: int, request: int, arg: int) -> int:
            calls.append((fd, request, arg))
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(fcntl, "ioctl", refuse)
        snapshot = cr.materialize(model_dir, manifest=manifest, into=cache)
        assert snapshot.method == "copy"
        assert contents(snapshot) == FILES
        assert len(calls) == len(FILES)
        assert {request for _, request, _ in calls} == {0x40049409}
        assert leftovers(cache) == [snapshot.name]

    def test_copy_path_is_reported(
        self, model_dir: pathlib.Path, manifest: cr.Manifest, cache: pathlib.Path
    ) -> None:
        """Without a reflink the snapshot says it was copied; a reuse says so too."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_materialize, "_clone", lambda src_fd, dst_fd: False)
            first = cr.materialize(model_dir, manifest=manifest, into=cache)
        assert first.method == "copy"
        again = cr.materialize(model_dir, manifest=manifest, into=cache)
        assert again == first
        assert again.method == "reused"

    def test_a_clone_is_used_and_hashed(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
        events: list[Event],
    ) -> None:
        """When the filesystem clones, nothing is copied through the process."""

        def no_copy(*_: Any) -> str:
            raise AssertionError("copied although the clone worked")

        monkeypatch.setattr(_materialize, "_clone", copy_fd)
        monkeypatch.setattr(_materialize, "_copy_hashing", no_copy)
        snapshot = cr.materialize(model_dir, manifest=manifest, into=cache)
        assert snapshot.method == "reflink"
        assert contents(snapshot) == FILES
        for path in snapshot.rglob("*"):
            if path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) == 0o444, path
        assert not [e for e in events if isinstance(e, IntegrityCheckFailed)]

    def test_what_the_clone_holds_is_hashed_not_the_source(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
        registry: CollectorRegistry,
    ) -> None:
        """A clone whose content differs from the (intact) source is refused and audited."""

        def wrong_clone(src_fd: int, dst_fd: int) -> bool:
            if os.readlink(f"/proc/self/fd/{src_fd}").endswith("config.json"):
                os.write(dst_fd, b"X" * os.fstat(src_fd).st_size)  # same size, other bytes
                return True
            return copy_fd(src_fd, dst_fd)

        monkeypatch.setattr(_materialize, "_clone", wrong_clone)
        with pytest.raises(cr.ChecksumMismatchError):
            cr.materialize(model_dir, manifest=manifest, into=cache, model="m", registry=registry)
        assert leftovers(cache) == []
        failed = registry.get_sample_value(
            "model_integrity_failures_total", {"model": "m", "reason": "checksum_mismatch"}
        )
        assert failed == 1

    def test_a_clone_of_another_length_is_refused(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A clone longer than the listed size (the source grew) is refused."""

        def longer_clone(src_fd: int, dst_fd: int) -> bool:
            copy_fd(src_fd, dst_fd)
            os.write(dst_fd, b"appended")
            return True

        monkeypatch.setattr(_materialize, "_clone", longer_clone)
        with pytest.raises(cr.SizeMismatchError):
            cr.materialize(model_dir, manifest=manifest, into=cache)
        assert leftovers(cache) == []

    def test_a_clone_failing_otherwise_is_an_audited_io_error(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
        events: list[Event],
    ) -> None:
        """Only "cannot clone here" falls back; a real I/O error fails closed."""

        def broken(fd: int, request: int, arg: int) -> int:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(fcntl, "ioctl", broken)
        with pytest.raises(cr.IntegrityError) as info:
            cr.materialize(model_dir, manifest=manifest, into=cache)
        assert info.value.reason is cr.Reason.IO_ERROR
        assert cr.Reason.IO_ERROR in [
            e.reason for e in events if isinstance(e, IntegrityCheckFailed)
        ]
        assert leftovers(cache) == []

    def test_some_files_cloned_and_some_copied_is_mixed(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A snapshot whose files took both paths reports "mixed"."""

        def clone_large_only(src_fd: int, dst_fd: int) -> bool:
            return os.fstat(src_fd).st_size > 100 and copy_fd(src_fd, dst_fd)

        monkeypatch.setattr(_materialize, "_clone", clone_large_only)
        snapshot = cr.materialize(model_dir, manifest=manifest, into=cache)
        assert snapshot.method == "mixed"
        assert contents(snapshot) == FILES

    def test_later_changes_to_the_source_never_reach_a_cloned_snapshot(
        self,
        model_dir: pathlib.Path,
        manifest: cr.Manifest,
        cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Writing the source in place after a (real or simulated) clone leaves it intact."""
        if not _reflinks(cache.parent):
            monkeypatch.setattr(_materialize, "_clone", copy_fd)
        snapshot = cr.materialize(model_dir, manifest=manifest, into=cache)
        assert snapshot.method == "reflink"
        shard = model_dir / "model-00001-of-00002.safetensors"
        with open(shard, "r+b") as f:  # in place: a reflink's shared extents are unshared
            f.write(b"EVIL")
        assert contents(snapshot) == FILES


def _reflinks(directory: pathlib.Path) -> bool:
    """Return whether the filesystem under ``directory`` can clone a file."""
    (directory / "probe-src").write_bytes(b"probe")
    with open(directory / "probe-src", "rb") as src, open(directory / "probe-dst", "wb") as dst:
        return _materialize._clone(src.fileno(), dst.fileno())
