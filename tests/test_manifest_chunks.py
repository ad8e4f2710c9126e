"""Tests for per-chunk digests in manifests: one large file verified on every core."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience import _chunked

CHUNK = 64 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "model"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(5 * CHUNK + 123))
    (root / "small.json").write_bytes(b'{"a": 1}')
    return root


@pytest.fixture
def manifest(model_dir: pathlib.Path) -> cr.Manifest:
    return cr.Manifest.build(model_dir, chunk_size=CHUNK)


class TestBuildAndFormat:
    def test_build_records_chunks_for_large_files_only(
        self, manifest: cr.Manifest, model_dir: pathlib.Path
    ) -> None:
        """Files over one chunk get a digest per chunk, computed like a plain hash."""
        data = (model_dir / "big.bin").read_bytes()
        big = manifest.entries["big.bin"]
        assert big.sha256 == sha(data)
        assert big.chunk_size == CHUNK
        assert big.chunks == tuple(sha(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK))
        assert manifest.entries["small.json"].chunk_size is None

    def test_json_round_trip_keeps_the_chunks(self, manifest: cr.Manifest) -> None:
        """The JSON form writes and reads the chunk digests back."""
        text = manifest.dumps("json")
        assert json.loads(text)["files"]["big.bin"]["chunks"]["size"] == CHUNK
        assert cr.Manifest.parse(text).entries["big.bin"] == manifest.entries["big.bin"]

    def test_sha256sum_form_drops_them(self, manifest: cr.Manifest) -> None:
        """sha256sum lines have no room for chunks: reading back gives whole-file digests."""
        back = cr.Manifest.parse(manifest.dumps("sha256sum"))
        assert back.entries["big.bin"].chunk_size is None

    @pytest.mark.parametrize(
        "chunks",
        [
            pytest.param({"size": CHUNK, "sha256": ["0" * 64]}, id="too-few-digests"),
            pytest.param({"size": 0, "sha256": []}, id="zero-chunk-size"),
            pytest.param({"size": CHUNK}, id="no-digests"),
            pytest.param({"size": CHUNK, "sha256": "x"}, id="digests-not-a-list"),
            pytest.param({"size": CHUNK, "sha256": ["xyz"] * 6}, id="bad-digest"),
        ],
    )
    def test_malformed_chunks_are_refused(
        self, manifest: cr.Manifest, chunks: dict[str, Any]
    ) -> None:
        """Chunk lists that do not cover the file exactly are manifest errors."""
        document = json.loads(manifest.dumps("json"))
        document["files"]["big.bin"]["chunks"] = chunks
        with pytest.raises(cr.ManifestError):
            cr.Manifest.parse(json.dumps(document))

    def test_chunks_need_a_size(self) -> None:
        """An entry with chunks but no size is refused."""
        with pytest.raises(cr.ManifestError):
            cr.ManifestEntry("a", "0" * 64, None, CHUNK, ("0" * 64,))

    def test_invalid_chunk_size_for_build(self, model_dir: pathlib.Path) -> None:
        """build(chunk_size=0) is a usage error."""
        with pytest.raises(ValueError, match="chunk_size"):
            cr.Manifest.build(model_dir, chunk_size=0)


class TestChunkedReads:
    def test_read_entry_reads_chunks_on_several_threads(
        self,
        manifest: cr.Manifest,
        model_dir: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A chunked entry is read by the chunk workers and returned as real bytes."""
        names: set[str] = set()
        original = _chunked._read_chunk

        def recording(*args: Any, **kwargs: Any) -> str:
            names.add(threading.current_thread().name)
            return original(*args, **kwargs)

        monkeypatch.setattr(_chunked, "_read_chunk", recording)
        data = manifest.read_entry(model_dir, "big.bin")
        assert data == (model_dir / "big.bin").read_bytes()
        assert type(data) is bytes
        assert names
        assert all(name.startswith(_chunked.THREAD_NAME_PREFIX) for name in names)

    @pytest.mark.parametrize("offset", [0, 3 * CHUNK + 7, 5 * CHUNK + 122])
    def test_one_changed_byte_in_any_chunk_is_refused_and_counted_once(
        self,
        manifest: cr.Manifest,
        model_dir: pathlib.Path,
        registry: CollectorRegistry,
        offset: int,
    ) -> None:
        """A byte flipped in the first, a middle or the last chunk fails the read."""
        path = model_dir / "big.bin"
        data = bytearray(path.read_bytes())
        data[offset] ^= 1
        path.write_bytes(bytes(data))
        with pytest.raises(cr.ChecksumMismatchError):
            manifest.read_entry(model_dir, "big.bin", model="m", registry=registry)
        count = registry.get_sample_value(
            "model_integrity_failures_total", {"model": "m", "reason": "checksum_mismatch"}
        )
        assert count == 1

    def test_wrong_size_is_refused_before_reading(
        self, manifest: cr.Manifest, model_dir: pathlib.Path
    ) -> None:
        """The listed size is checked before any chunk is read."""
        with (model_dir / "big.bin").open("ab") as f:
            f.write(b"x")
        with pytest.raises(cr.SizeMismatchError):
            manifest.read_entry(model_dir, "big.bin")

    def test_read_verified_files_uses_the_chunks(
        self, manifest: cr.Manifest, model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Multi-file reads use the chunk digests too, and still match byte for byte."""
        calls: list[int] = []
        original = _chunked.read_opened_chunks

        def spy(*args: Any, **kwargs: Any) -> bytes:
            calls.append(kwargs["chunk_size"])
            return original(*args, **kwargs)

        monkeypatch.setattr(_chunked, "read_opened_chunks", spy)
        files = cr.read_verified_files(model_dir, manifest)
        assert files["big.bin"] == (model_dir / "big.bin").read_bytes()
        assert calls == [CHUNK]


class TestCommandLine:
    def test_create_records_chunks_in_json(
        self, model_dir: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """manifest create --chunk-size writes per-chunk digests that verify reads back."""
        from clarity_resilience._cli import main

        out = tmp_path / "manifest.json"
        args = ["manifest", "create", str(model_dir), "-o", str(out), "--format", "json"]
        assert main([*args, "--chunk-size", str(CHUNK)]) == 0
        written = cr.Manifest.read(out)
        assert written.entries["big.bin"].chunk_size == CHUNK
        assert main(["verify", str(model_dir), "--manifest", str(out)]) == 0

    def test_chunk_size_needs_json(self, model_dir: pathlib.Path) -> None:
        """--chunk-size with the sha256sum format is a usage error."""
        from clarity_resilience._cli import main

        assert main(["manifest", "create", str(model_dir), "--chunk-size", "65536"]) == 2
