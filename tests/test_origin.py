"""Tests for the origins behind ModelGuard, and that each refused load is reported once."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr
from clarity_resilience._loading import VerifiedBytes
from clarity_resilience._origin import (
    ManifestEntryOrigin,
    Origin,
    PinnedFile,
    SourceOrigin,
    origin_from,
)
from clarity_resilience._origin_directory import (
    DirectoryOrigin,
    TrustedManifest,
    selection_sha256,
)
from clarity_resilience.instrumentation import (
    Event,
    IntegrityCheckFailed,
    ModelLoadFailed,
    ReloadRefused,
)
from clarity_resilience.sources import HttpSource

MODEL = save({"w": np.full((8, 8), 1.0, np.float32)})
OTHER = save({"w": np.full((8, 8), 2.0, np.float32)})  # same length, other bytes
NOT_A_MODEL = b"\x00" * 64


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def failures(registry: CollectorRegistry) -> dict[str, float]:
    """Return every non-zero model_integrity_failures_total sample, by reason."""
    found: dict[str, float] = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == "model_integrity_failures_total" and s.value:
                found[s.labels["reason"]] = s.value
    return found


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Serve a good model and a non-model over real HTTP (one process for the module)."""
    from artifact_store import ArtifactStore

    root = tmp_path_factory.mktemp("store")
    (root / "model.safetensors").write_bytes(MODEL)
    (root / "junk.bin").write_bytes(NOT_A_MODEL)
    with ArtifactStore(root) as running:
        yield running


# -- the failing origins: (origin keywords, expected reason, counted as integrity check) --

Case = Callable[[pathlib.Path, Any], dict[str, Any]]


def _file(tmp: pathlib.Path, data: bytes) -> pathlib.Path:
    path = tmp / "bad.safetensors"
    path.write_bytes(data)
    return path


def _model_dir(
    tmp: pathlib.Path, data: bytes, *, version: str = "v1", listed: bytes = MODEL
) -> tuple[pathlib.Path, Any]:
    """Write a directory with ``listed``, build its manifest, then replace the file with data."""
    directory = tmp / "dir"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(listed)
    manifest = cr.Manifest.build(directory, version=version)
    (directory / "model.safetensors").write_bytes(data)
    return directory, manifest


def _manifest_path(
    tmp: pathlib.Path, data: bytes, *, version: str = "v1", listed: bytes = MODEL
) -> dict[str, Any]:
    directory, manifest = _model_dir(tmp, data, version=version, listed=listed)
    manifest.write(tmp / "manifest.json", format="json")
    return {"path": directory, "manifest": tmp / "manifest.json", "entry": "model.safetensors"}


def _manifest_memory(
    tmp: pathlib.Path, data: bytes, *, version: str = "v1", listed: bytes = MODEL
) -> dict[str, Any]:
    directory, manifest = _model_dir(tmp, data, version=version, listed=listed)
    return {"path": directory, "manifest": manifest, "entry": "model.safetensors"}


def _source(store: Any, tmp: pathlib.Path, name: str, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("sha256", digest(MODEL))
    source = HttpSource(store.url(name), cache_dir=tmp / "cache", attempts=1, **kwargs)
    return {"source": source}


def _missing_manifest(tmp: pathlib.Path, store: Any) -> dict[str, Any]:
    kwargs = _manifest_path(tmp, MODEL)
    os.unlink(kwargs["manifest"])
    return kwargs


def _bad_manifest(tmp: pathlib.Path, store: Any) -> dict[str, Any]:
    kwargs = _manifest_path(tmp, MODEL)
    pathlib.Path(kwargs["manifest"]).write_text("not a manifest\n")
    return kwargs


CASES: list[Any] = [
    # pinned file
    pytest.param(
        lambda t, s: {"path": _file(t, OTHER), "sha256": digest(MODEL)},
        "checksum_mismatch",
        id="file-checksum",
    ),
    pytest.param(
        lambda t, s: {"path": _file(t, MODEL), "sha256": digest(MODEL), "size": len(MODEL) + 1},
        "size_mismatch",
        id="file-size",
    ),
    pytest.param(
        lambda t, s: {"path": t / "absent", "sha256": digest(MODEL)}, "missing", id="file-missing"
    ),
    pytest.param(
        lambda t, s: {"path": _file(t, NOT_A_MODEL), "sha256": digest(NOT_A_MODEL)},
        "load_error",
        id="file-loader",
    ),
    # manifest read from a path at load time
    pytest.param(lambda t, s: _manifest_path(t, OTHER), "checksum_mismatch", id="mpath-checksum"),
    pytest.param(lambda t, s: _manifest_path(t, MODEL + b"x"), "size_mismatch", id="mpath-size"),
    pytest.param(_missing_manifest, "missing", id="mpath-missing-manifest"),
    pytest.param(_bad_manifest, "manifest_invalid", id="mpath-bad-manifest"),
    pytest.param(
        lambda t, s: _manifest_path(t, MODEL, version="v2"), "version_mismatch", id="mpath-version"
    ),
    pytest.param(
        lambda t, s: _manifest_path(t, NOT_A_MODEL, listed=NOT_A_MODEL),
        "load_error",
        id="mpath-loader",
    ),
    # manifest in memory
    pytest.param(lambda t, s: _manifest_memory(t, OTHER), "checksum_mismatch", id="mmem-checksum"),
    pytest.param(lambda t, s: _manifest_memory(t, MODEL + b"x"), "size_mismatch", id="mmem-size"),
    pytest.param(
        lambda t, s: _manifest_memory(t, MODEL, version="v2"),
        "version_mismatch",
        id="mmem-version",
    ),
    pytest.param(
        lambda t, s: _manifest_memory(t, NOT_A_MODEL, listed=NOT_A_MODEL),
        "load_error",
        id="mmem-loader",
    ),
    # remote source
    pytest.param(
        lambda t, s: _source(s, t, "model.safetensors", sha256=digest(OTHER)),
        "checksum_mismatch",
        id="source-checksum",
    ),
    pytest.param(
        lambda t, s: _source(s, t, "model.safetensors", size=len(MODEL) - 1),
        "size_mismatch",
        id="source-size",
    ),
    pytest.param(
        lambda t, s: _source(s, t, "junk.bin", sha256=digest(NOT_A_MODEL)),
        "load_error",
        id="source-loader",
    ),
]


class TestEachRefusalIsReportedOnce:
    @pytest.mark.parametrize("phase", ["load", "reload"])
    @pytest.mark.parametrize(("case", "reason"), CASES)
    def test_refused_load_counts_once_and_emits_one_event_of_each_kind(
        self,
        tmp_path: pathlib.Path,
        store: Any,
        registry: CollectorRegistry,
        events: list[Event],
        case: Case,
        reason: str,
        phase: str,
    ) -> None:
        """A refused load adds exactly 1 to the failure counter and one event of each kind."""
        good = tmp_path / "good.safetensors"
        good.write_bytes(MODEL)
        bad = case(tmp_path, store)
        if phase == "load":
            guard: cr.ModelGuard[Any] = cr.ModelGuard(
                "m",
                **bad,
                expected_version="v1",
                loader=cr.loaders.safetensors,
                registry=registry,
            )
            attempt = guard.load
        else:
            guard = cr.ModelGuard(
                "m",
                path=good,
                sha256=digest(MODEL),
                expected_version="v1",
                loader=cr.loaders.safetensors,
                registry=registry,
            )
            guard.load()
            events.clear()

            def attempt() -> Any:
                return guard.reload(**bad)

        with pytest.raises(cr.ClarityResilienceError) as info:
            attempt()
        assert info.value.reason == reason
        assert failures(registry) == {reason: 1.0}
        integrity = [e for e in events if isinstance(e, IntegrityCheckFailed)]
        loads = [e for e in events if isinstance(e, ModelLoadFailed)]
        refused = [e for e in events if isinstance(e, ReloadRefused)]
        loader_fault = reason == "load_error"
        assert [e.reason for e in integrity] == ([] if loader_fault else [reason])
        assert [e.reason for e in loads] == [reason]
        assert [e.reason for e in refused] == ([reason] if phase == "reload" else [])
        assert guard.ready is (phase == "reload")


class TestPinnedFile:
    def test_validates_its_digest_and_size(self) -> None:
        """A malformed digest or a negative or boolean size is refused at construction."""
        with pytest.raises(ValueError, match="64 hex"):
            PinnedFile("p", "abc")
        for size in (-1, True, 1.5):
            with pytest.raises(ValueError, match="size"):
                PinnedFile("p", "0" * 64, size)

    def test_normalizes_path_and_digest(self, tmp_path: pathlib.Path) -> None:
        """A PathLike path becomes a str and an upper-case digest is lowered."""
        origin = PinnedFile(tmp_path / "m", "A" * 64)
        assert origin.path == str(tmp_path / "m")
        assert origin.sha256 == "a" * 64

    @pytest.mark.parametrize(
        ("change", "size"),
        [
            pytest.param({"path": "new"}, None, id="new-path-drops-size"),
            pytest.param({"sha256": "b" * 64}, None, id="new-digest-drops-size"),
            pytest.param({"path": "new", "sha256": "b" * 64}, None, id="new-file-drops-size"),
            pytest.param({"path": "new", "size": 7}, 7, id="new-file-new-size"),
            pytest.param({"version": "v2"}, 10, id="version-keeps-size"),
            pytest.param({}, 10, id="nothing-keeps-size"),
            pytest.param({"size": 3}, 3, id="size-alone"),
        ],
    )
    def test_replaced_never_carries_a_size_over_to_another_file(
        self, change: dict[str, Any], size: int | None
    ) -> None:
        """A new path or digest without a new size has no size pinned; otherwise it is kept."""
        origin = PinnedFile("old", "a" * 64, 10, "v1")
        new = origin.replaced(**change)
        assert new.size == size
        assert new.path == change.get("path", "old")
        assert new.sha256 == change.get("sha256", "a" * 64)
        assert new.version == change.get("version", "v1")

    def test_replaced_refuses_an_entry(self) -> None:
        """entry= means nothing for a file: refused, not ignored."""
        with pytest.raises(ValueError, match="entry="):
            PinnedFile("p", "a" * 64).replaced(entry="x")

    def test_describe_shows_a_digest_prefix_and_no_path(self) -> None:
        """The label names the kind and 12 hex digits, never the path."""
        assert PinnedFile("/secret/dir/m", "ab" * 32).describe() == "file sha256=abababababab"


class TestManifestEntryOrigin:
    def test_in_memory_manifest_with_several_files_and_no_entry_is_refused(
        self, tmp_path: pathlib.Path
    ) -> None:
        """Which file to load is never guessed: an in-memory manifest fails at construction."""
        (tmp_path / "a").write_bytes(b"a")
        (tmp_path / "b").write_bytes(b"b")
        with pytest.raises(ValueError, match="lists 2 files; pass entry="):
            ManifestEntryOrigin(str(tmp_path), cr.Manifest.build(tmp_path))
        with pytest.raises(ValueError, match="not in the manifest"):
            ManifestEntryOrigin(str(tmp_path), cr.Manifest.build(tmp_path), "c")

    def test_manifest_path_with_several_files_and_no_entry_is_refused_at_load(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """A manifest read at load time that lists several files and no entry= loads nothing."""
        directory = tmp_path / "d"
        directory.mkdir()
        (directory / "a.safetensors").write_bytes(MODEL)  # first: a loadable model
        (directory / "b.safetensors").write_bytes(OTHER)
        cr.Manifest.build(directory).write(tmp_path / "SHA256SUMS")
        guard = cr.ModelGuard(
            "m",
            path=directory,
            manifest=tmp_path / "SHA256SUMS",
            loader=cr.loaders.safetensors,
            registry=registry,
        )
        with pytest.raises(cr.ManifestError, match="lists 2 files; pass entry=") as info:
            guard.load()
        assert info.value.reason == cr.Reason.MANIFEST_INVALID
        assert info.value.path == str(tmp_path / "SHA256SUMS")
        assert not guard.ready
        assert failures(registry) == {"manifest_invalid": 1.0}
        assert [type(e).__name__ for e in events if isinstance(e, IntegrityCheckFailed)] == [
            "IntegrityCheckFailed"
        ]

    def test_single_entry_manifest_needs_no_entry(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """With one file listed, entry= may be omitted, from a path and in memory."""
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "only.safetensors").write_bytes(MODEL)
        manifest = cr.Manifest.build(tmp_path / "d", version="v7")
        manifest.write(tmp_path / "m.json", format="json")
        for given in (manifest, tmp_path / "m.json"):
            origin = origin_from(path=tmp_path / "d", manifest=given)
            verified = origin.read(model="m", registry=registry)
            assert verified == VerifiedBytes(MODEL, digest(MODEL), "v7")

    def test_version_keyword_overrides_the_manifest_version(self, tmp_path: pathlib.Path) -> None:
        """version= is reported instead of the manifest's own version."""
        directory, manifest = _model_dir(tmp_path, MODEL)
        origin = ManifestEntryOrigin(str(directory), manifest, "model.safetensors", version="x")
        assert origin.read(model="m", registry=CollectorRegistry()).version == "x"

    def test_unlisted_entry_in_a_manifest_path_is_refused(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """An entry the manifest file does not list is an audited manifest_invalid refusal."""
        kwargs = _manifest_path(tmp_path, MODEL)
        origin = origin_from(**{**kwargs, "entry": "other.safetensors"})
        with pytest.raises(cr.ManifestError, match="does not list") as info:
            origin.read(model="m", registry=registry)
        assert info.value.expected == "other.safetensors"
        assert failures(registry) == {"manifest_invalid": 1.0}

    def test_replaced_changes_directory_entry_and_version_only(self) -> None:
        """A manifest fixes digest and size; directory, entry and version may change."""
        origin = ManifestEntryOrigin("dir", "m.json", "a", "v1", None)
        assert origin.replaced(path="new", entry="b", version="v2") == ManifestEntryOrigin(
            "new", "m.json", "b", "v1", "v2"
        )
        assert origin.replaced() == origin
        for change in ({"sha256": "0" * 64}, {"size": 1}):
            with pytest.raises(ValueError, match="manifest fixes"):
                origin.replaced(**change)

    def test_describe_names_the_entry_not_the_directory(self) -> None:
        """The label is safe to show: the entry name only."""
        assert ManifestEntryOrigin("/secret", "m.json", "w.bin").describe() == (
            "manifest entry='w.bin'"
        )
        assert ManifestEntryOrigin("/secret", "m.json").describe() == "manifest"


class TestSourceOrigin:
    def test_replaced_changes_only_the_version(self, tmp_path: pathlib.Path) -> None:
        """A source fixes path, digest and size: changing them is refused, not ignored."""
        source = HttpSource("http://127.0.0.1:9/m", sha256="c" * 64, cache_dir=tmp_path)
        origin = SourceOrigin(source)
        assert origin.replaced(version="v2") == SourceOrigin(source, "v2")
        assert origin.replaced() == origin
        for change in ({"path": "p"}, {"sha256": "0" * 64}, {"size": 1}, {"entry": "e"}):
            with pytest.raises(ValueError, match="source fixes"):
                origin.replaced(**change)
        assert origin.describe() == "source sha256=cccccccccccc"


class TestOriginFrom:
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            pytest.param(
                {"path": "p", "sha256": "0" * 64, "entry": "e"}, "entry=", id="file+entry"
            ),
            pytest.param({"path": "p", "manifest": "m", "size": 1}, "size=", id="manifest+size"),
            pytest.param({"manifest": "m"}, "path= is required", id="manifest-no-path"),
            pytest.param({"sha256": "0" * 64}, "path= is required", id="digest-no-path"),
            pytest.param({"path": "p"}, "exactly one", id="path-only"),
            pytest.param(
                {"path": "p", "sha256": "0" * 64, "manifest": "m"}, "exactly one", id="two"
            ),
            pytest.param({"path": "p", "sha256": "0" * 64, "size": -1}, "size", id="bad-size"),
        ],
    )
    def test_keywords_that_do_not_describe_one_origin_are_refused(
        self, kwargs: dict[str, Any], match: str
    ) -> None:
        """A setting the chosen origin does not take is an error, never silently dropped."""
        with pytest.raises(ValueError, match=match):
            origin_from(**kwargs)

    def test_source_refuses_path_size_and_entry(self, tmp_path: pathlib.Path) -> None:
        """A source brings its own path, size and single artifact."""
        source = HttpSource("http://127.0.0.1:9/m", sha256="c" * 64, cache_dir=tmp_path)
        for extra, match in (
            ({"path": "p"}, "own path"),
            ({"size": 1}, "size="),
            ({"entry": "e"}, "entry="),
        ):
            with pytest.raises(ValueError, match=match):
                origin_from(source=source, **extra)

    def test_each_keyword_selects_its_kind(self, tmp_path: pathlib.Path) -> None:
        """sha256= makes a pinned file, manifest= a manifest entry, source= a source."""
        source = HttpSource("http://127.0.0.1:9/m", sha256="c" * 64, cache_dir=tmp_path)
        pinned = origin_from(path=tmp_path, sha256="0" * 64, size=3, version="v")
        assert pinned == PinnedFile(str(tmp_path), "0" * 64, 3, "v")
        entry = origin_from(
            path=tmp_path, manifest=tmp_path / "m", entry="e", version="v", expected_version="x"
        )
        assert entry == ManifestEntryOrigin(str(tmp_path), str(tmp_path / "m"), "e", "x", "v")
        assert origin_from(source=source, version="v") == SourceOrigin(source, "v")


@dataclasses.dataclass(frozen=True)
class InMemoryOrigin:
    """A test origin: bytes held in memory (a new kind needs no change to the guard)."""

    kind = "memory"
    data: bytes
    calls: list[str] = dataclasses.field(default_factory=list)

    def read(self, *, model: str, registry: CollectorRegistry | None) -> VerifiedBytes:
        self.calls.append(model)
        return VerifiedBytes(self.data, digest(self.data), "mem")

    def replaced(
        self,
        *,
        path: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        size: int | None = None,
        entry: str | None = None,
        version: str | None = None,
    ) -> InMemoryOrigin:
        return self

    def describe(self) -> str:
        return self.kind


class TestCustomOrigin:
    def test_any_origin_object_serves_through_the_guard(self, registry: CollectorRegistry) -> None:
        """origin= takes any object of the Origin protocol, for load and reload."""
        first = InMemoryOrigin(MODEL)
        assert isinstance(first, Origin)
        guard = cr.ModelGuard("m", origin=first, loader=cr.loaders.safetensors, registry=registry)
        assert guard.load()["w"][0, 0] == 1.0
        assert first.calls == ["m"]
        second = InMemoryOrigin(OTHER)
        assert guard.reload(origin=second)["w"][0, 0] == 2.0
        assert guard.origin is second
        assert guard.status()["version"] == "mem"
        assert "origin='memory'" in repr(guard)

    def test_origin_with_other_keywords_or_of_the_wrong_type_is_refused(self) -> None:
        """origin= is the whole origin: other origin keywords or a non-origin are errors."""
        with pytest.raises(ValueError, match="origin="):
            cr.ModelGuard("m", origin=InMemoryOrigin(MODEL), version="v")
        with pytest.raises(TypeError, match="Origin"):
            cr.ModelGuard("m", origin="model.bin")
        guard = cr.ModelGuard("m", origin=InMemoryOrigin(MODEL))
        with pytest.raises(ValueError, match="origin="):
            guard.reload(origin=InMemoryOrigin(OTHER), path="x")

    def test_an_origin_that_reports_nothing_is_still_counted_once(
        self, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """A custom origin raising an unreported IntegrityError: counted once, not zero."""

        @dataclasses.dataclass(frozen=True)
        class Silent(InMemoryOrigin):
            def read(self, *, model: str, registry: CollectorRegistry | None) -> VerifiedBytes:
                raise cr.ChecksumMismatchError("planted", path="mem")

        guard = cr.ModelGuard("m", origin=Silent(MODEL), registry=registry)
        with pytest.raises(cr.ChecksumMismatchError):
            guard.load()
        failed = [e for e in events if isinstance(e, IntegrityCheckFailed)]
        assert [(e.path, e.reason) for e in failed] == [("mem", "checksum_mismatch")]
        count = registry.get_sample_value(
            "model_integrity_failures_total", {"model": "m", "reason": "checksum_mismatch"}
        )
        assert count == 1


class TestNoGuessing:
    def test_in_memory_manifest_failures_are_labelled_without_a_repr(
        self, tmp_path: pathlib.Path, events: list[Event]
    ) -> None:
        """A refused in-memory manifest is reported as <manifest>, never as its repr."""
        kwargs = _manifest_memory(tmp_path, MODEL, version="v2")
        origin = origin_from(**kwargs, expected_version="v1")
        with pytest.raises(cr.ManifestError) as info:
            origin.read(model="m", registry=CollectorRegistry())
        assert info.value.path is None
        assert (info.value.expected, info.value.actual) == ("v1", "v2")
        failed = [e for e in events if isinstance(e, IntegrityCheckFailed)]
        assert [(e.path, e.reason) for e in failed] == [("<manifest>", "version_mismatch")]


class TestSourceCache:
    def test_an_intact_cache_is_hashed_once_and_not_downloaded(
        self, tmp_path: pathlib.Path, store: Any, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """Reloading from an intact cached copy reads it once: one check, no request."""
        origin = origin_from(**_source(store, tmp_path, "model.safetensors"))
        assert origin.read(model="m", registry=registry).data == MODEL
        before = store.requests("model.safetensors")
        events.clear()
        verified = origin.read(model="m", registry=registry)
        assert verified == VerifiedBytes(MODEL, digest(MODEL), None)
        assert store.requests("model.safetensors") == before
        assert [type(e).__name__ for e in events] == ["IntegrityCheckPassed"]


class TestDirectoryOrigin:
    @pytest.fixture
    def directory(self, tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, str]:
        root = tmp_path / "secret-dir"
        root.mkdir()
        (root / "a.bin").write_bytes(MODEL)
        (root / "b.bin").write_bytes(OTHER)
        manifest = tmp_path / "m.sha256"
        cr.Manifest.build(root).write(manifest)
        return root, manifest, digest(manifest.read_bytes())

    def test_new_keywords_select_a_directory_origin(
        self, directory: tuple[pathlib.Path, pathlib.Path, str]
    ) -> None:
        """manifest_sha256=, entries=, materialize_into=, symlink_root= make a DirectoryOrigin."""
        root, manifest, pin = directory
        for extra in (
            {"manifest_sha256": pin, "entry": "a.bin"},
            {"entries": ["a.bin"]},
            {"materialize_into": root.parent / "cache"},
            {"symlink_root": root.parent, "entry": "a.bin"},
        ):
            origin = origin_from(path=root, manifest=manifest, **extra)
            assert isinstance(origin, DirectoryOrigin)
        assert isinstance(origin_from(path=root, manifest=manifest, entry="a.bin"), Origin)
        plain = origin_from(path=root, manifest=manifest, entry="a.bin", entries=None)
        assert isinstance(plain, ManifestEntryOrigin)

    def test_reads_verified_bytes_mapping_or_snapshot(
        self, directory: tuple[pathlib.Path, pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """One entry gives bytes, entries= a read-only mapping, materialize_into= a Path."""
        root, manifest, pin = directory
        trusted = TrustedManifest(str(manifest), sha256=pin)
        one = DirectoryOrigin(str(root), trusted, entry="a.bin").read(model="m", registry=registry)
        assert one == VerifiedBytes(MODEL, digest(MODEL), None, None)
        several = DirectoryOrigin(str(root), trusted, entries="*").read(model="m", registry=None)
        assert dict(several.data) == {"a.bin": MODEL, "b.bin": OTHER}
        assert several.sha256 == selection_sha256(cr.Manifest.read(manifest), ["b.bin", "a.bin"])
        snap = DirectoryOrigin(
            str(root), trusted, entries=["b.bin"], materialize_into=str(root.parent / "c")
        ).read(model="m", registry=None)
        assert isinstance(snap.data, pathlib.Path)
        assert (snap.data / "b.bin").read_bytes() == OTHER
        assert not (snap.data / "a.bin").exists()

    def test_describe_never_names_a_path(
        self, directory: tuple[pathlib.Path, pathlib.Path, str]
    ) -> None:
        """describe() says the trust and the selection, never a directory or manifest path."""
        root, manifest, pin = directory
        pinned = TrustedManifest(str(manifest), sha256=pin)
        origin = DirectoryOrigin(str(root), pinned, entries=["a.bin"], materialize_into="/c")
        text = origin.describe()
        assert text == f"pinned manifest sha256={pin[:12]} entries=['a.bin'] materialized"
        assert "secret-dir" not in text
        assert DirectoryOrigin(str(root), TrustedManifest(str(manifest))).describe() == "manifest"

    def test_replaced_and_selection(
        self, directory: tuple[pathlib.Path, pathlib.Path, str]
    ) -> None:
        """A reload may move the directory or entry; the manifest fixes digests and sizes."""
        root, manifest, _ = directory
        origin = DirectoryOrigin(str(root), TrustedManifest(str(manifest)), entry="a.bin")
        moved = origin.replaced(path="/elsewhere", entry="b.bin", version="v2")
        assert (moved.directory, moved.entry, moved.version) == ("/elsewhere", "b.bin", "v2")
        with pytest.raises(ValueError, match="fixes the digest"):
            origin.replaced(sha256="0" * 64)
        several = DirectoryOrigin(str(root), TrustedManifest(str(manifest)), entries=["a.bin"])
        assert several.entries == ("a.bin",)
        with pytest.raises(ValueError, match="entries="):
            several.replaced(entry="b.bin")
        assert several.selection() == {"entries": ("a.bin",)}

    def test_trusted_manifest_validation(self, tmp_path: pathlib.Path) -> None:
        """Exactly one source of trust; a pin needs a manifest file; a signature a trust root."""
        with pytest.raises(ValueError, match="exactly one"):
            TrustedManifest()
        with pytest.raises(ValueError, match="exactly one"):
            TrustedManifest("m", signature="s")
        with pytest.raises(ValueError, match="trust root"):
            TrustedManifest(signature="s")
        with pytest.raises(ValueError, match="manifest file"):
            TrustedManifest(cr.Manifest([cr.ManifestEntry("a", "0" * 64)]), sha256="0" * 64)

    def test_several_files_without_a_selection_are_refused_at_load(
        self, directory: tuple[pathlib.Path, pathlib.Path, str], events: list[Event]
    ) -> None:
        """A manifest listing several files and no entry/entries: one audited refusal."""
        root, manifest, pin = directory
        origin = DirectoryOrigin(str(root), TrustedManifest(str(manifest), sha256=pin))
        with pytest.raises(cr.ManifestError, match="entries="):
            origin.read(model="m", registry=CollectorRegistry())
        assert len([e for e in events if isinstance(e, IntegrityCheckFailed)]) == 1
