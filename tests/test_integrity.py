"""Tests for verified reads: sha256_file, read_verified and load_verified (promise 1)."""

from __future__ import annotations

import dataclasses
import errno
import gc
import hashlib
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import requirements
from prometheus_client import CollectorRegistry
from safetensors.numpy import save as save_safetensors

import clarity_resilience as cr
from clarity_resilience import _hashing, loaders
from clarity_resilience.instrumentation import (
    Event,
    IntegrityCheckFailed,
    IntegrityCheckPassed,
    ModelLoaded,
    ModelLoadFailed,
)
from clarity_resilience.testing import capture_events

MIB = 1024 * 1024


def make_tensors(seed: int, nbytes: int) -> dict[str, np.ndarray]:
    """Return float32 tensors totalling about ``nbytes`` (same shapes for every seed)."""
    rng = np.random.default_rng(seed)
    count = max(1, nbytes // 4 // 4)
    return {f"layer{i}.weight": rng.standard_normal(count, dtype=np.float32) for i in range(4)}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass
class ModelFile:
    """A safetensors model on disk and what a manifest would say about it."""

    path: pathlib.Path
    content: bytes
    tensors: dict[str, np.ndarray]
    nbytes: int  # what make_tensors was asked for

    @property
    def sha256(self) -> str:
        return digest(self.content)

    @property
    def size(self) -> int:
        return len(self.content)

    def other_content(self, seed: int = 99) -> bytes:
        """Return a different, equally valid safetensors file of exactly the same size."""
        other = save_safetensors(make_tensors(seed, self.nbytes))
        assert len(other) == self.size
        assert other != self.content
        return other


def write_model(path: pathlib.Path, nbytes: int, seed: int = 0) -> ModelFile:
    tensors = make_tensors(seed, nbytes)
    content = save_safetensors(tensors)
    path.write_bytes(content)
    return ModelFile(path, content, tensors, nbytes)


@pytest.fixture
def model(tmp_path: pathlib.Path) -> ModelFile:
    """Return a 64 KiB safetensors model in a temporary directory."""
    return write_model(tmp_path / "model.safetensors", 64 * 1024)


class LoaderSpy:
    """A real loader (safetensors) that records every call made to it."""

    def __init__(self, loader: Callable[[bytes], Any] = loaders.safetensors) -> None:
        self.loader = loader
        self.calls: list[int] = []

    def __call__(self, data: bytes) -> Any:
        self.calls.append(len(data))
        return self.loader(data)


def assert_same_tensors(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype
        np.testing.assert_array_equal(actual[name], array)


# --- corruptions: each changes the file on disk and returns what the error must say ---


@dataclasses.dataclass(frozen=True)
class Expected:
    error: type[cr.IntegrityError]
    reason: cr.Reason
    expected: object = None
    actual: object = None


def flip_one_bit(m: ModelFile) -> Expected:
    corrupted = bytearray(m.content)
    corrupted[len(corrupted) // 2] ^= 0x01
    with open(m.path, "r+b") as f:  # in place: same inode, same size
        f.seek(len(corrupted) // 2)
        f.write(corrupted[len(corrupted) // 2 : len(corrupted) // 2 + 1])
    return Expected(
        cr.ChecksumMismatchError, cr.Reason.CHECKSUM_MISMATCH, m.sha256, digest(corrupted)
    )


def truncate(m: ModelFile) -> Expected:
    os.truncate(m.path, m.size - 100)
    return Expected(cr.SizeMismatchError, cr.Reason.SIZE_MISMATCH, m.size, m.size - 100)


def append(m: ModelFile) -> Expected:
    with open(m.path, "ab") as f:
        f.write(b"\x00" * 10)
    return Expected(cr.SizeMismatchError, cr.Reason.SIZE_MISMATCH, m.size, m.size + 10)


def zero_fill(m: ModelFile) -> Expected:
    m.path.write_bytes(bytes(m.size))
    return Expected(
        cr.ChecksumMismatchError, cr.Reason.CHECKSUM_MISMATCH, m.sha256, digest(bytes(m.size))
    )


def replace_by_rename(m: ModelFile) -> Expected:
    other = m.other_content()
    staged = m.path.with_name("staged.tmp")
    staged.write_bytes(other)
    os.replace(staged, m.path)
    return Expected(cr.ChecksumMismatchError, cr.Reason.CHECKSUM_MISMATCH, m.sha256, digest(other))


def swap_in_symlink(m: ModelFile) -> Expected:
    # Even the exact expected bytes are refused behind a symlink: the link could be
    # re-pointed between any two operations.
    elsewhere = m.path.with_name("elsewhere.safetensors")
    elsewhere.write_bytes(m.content)
    m.path.unlink()
    m.path.symlink_to(elsewhere)
    return Expected(cr.IntegrityError, cr.Reason.UNSAFE_PATH)


def delete(m: ModelFile) -> Expected:
    m.path.unlink()
    return Expected(cr.IntegrityError, cr.Reason.MISSING)


def directory_in_place(m: ModelFile) -> Expected:
    m.path.unlink()
    m.path.mkdir()
    return Expected(cr.IntegrityError, cr.Reason.UNSAFE_PATH)


CORRUPTIONS = [
    pytest.param(flip_one_bit, True, id="same-size-bit-flip"),
    pytest.param(truncate, True, id="truncated"),
    pytest.param(append, True, id="appended"),
    pytest.param(zero_fill, True, id="zero-filled"),
    pytest.param(replace_by_rename, True, id="replaced-by-rename"),
    pytest.param(swap_in_symlink, True, id="symlink-to-identical-file"),
    pytest.param(delete, True, id="deleted"),
    pytest.param(directory_in_place, True, id="directory"),
]


def without_size(corrupt: Callable[[ModelFile], Expected]) -> Callable[[ModelFile], Expected]:
    """Without an expected size, a size change must still be caught (by the digest)."""

    def corrupt_and_expect_digest(m: ModelFile) -> Expected:
        corrupt(m)
        return Expected(
            cr.ChecksumMismatchError,
            cr.Reason.CHECKSUM_MISMATCH,
            m.sha256,
            digest(m.path.read_bytes()),
        )

    return corrupt_and_expect_digest


CORRUPTIONS += [
    pytest.param(without_size(truncate), False, id="truncated-no-size"),
    pytest.param(without_size(append), False, id="appended-no-size"),
]


class TestCorruptionIsRefused:
    @pytest.mark.parametrize(("corrupt", "pass_size"), CORRUPTIONS)
    def test_refused_before_the_loader_runs(
        self,
        model: ModelFile,
        registry: CollectorRegistry,
        corrupt: Callable[[ModelFile], Expected],
        pass_size: bool,
    ) -> None:
        """Each corruption raises a typed IntegrityError and the loader is never called."""
        expected = corrupt(model)
        spy = LoaderSpy()
        size = model.size if pass_size else None

        with pytest.raises(cr.IntegrityError) as info:
            cr.load_verified(
                model.path,
                sha256=model.sha256,
                size=size,
                loader=spy,
                model="m",
                registry=registry,
            )

        error = info.value
        assert type(error) is expected.error
        assert error.reason == expected.reason
        assert error.path == str(model.path)
        assert error.expected == expected.expected
        assert error.actual == expected.actual
        assert spy.calls == []
        failures = registry.get_sample_value(
            "model_integrity_failures_total", {"model": "m", "reason": str(expected.reason)}
        )
        assert failures == 1

    @pytest.mark.parametrize(("corrupt", "pass_size"), CORRUPTIONS)
    def test_read_verified_refuses_too(
        self, model: ModelFile, corrupt: Callable[[ModelFile], Expected], pass_size: bool
    ) -> None:
        """read_verified raises the same error (it is what load_verified relies on)."""
        expected = corrupt(model)

        with pytest.raises(cr.IntegrityError) as info:
            cr.read_verified(
                model.path, sha256=model.sha256, size=model.size if pass_size else None
            )

        assert type(info.value) is expected.error
        assert info.value.reason == expected.reason

    def test_symlink_is_refused_at_open(self, model: ModelFile) -> None:
        """A symlink is refused by the open itself (O_NOFOLLOW), with a message saying so."""
        swap_in_symlink(model)

        with pytest.raises(cr.IntegrityError, match="is a symbolic link") as info:
            cr.read_verified(model.path, sha256=model.sha256)

        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ELOOP

    def test_fifo_is_refused_without_hanging(self, model: ModelFile) -> None:
        """A FIFO planted in place of the model is refused at once, not waited on."""
        model.path.unlink()
        os.mkfifo(model.path)
        spy = LoaderSpy()
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                cr.load_verified(model.path, sha256=model.sha256, size=model.size, loader=spy)
            except BaseException as e:  # recorded and asserted on in the test body
                outcome.append(e)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(timeout=10)
        hung = caller.is_alive()
        if hung:  # release the blocked open() so the thread can finish
            os.close(os.open(model.path, os.O_WRONLY | os.O_NONBLOCK))
            caller.join(timeout=10)

        assert not hung, "opening a FIFO blocked"
        assert len(outcome) == 1
        assert type(outcome[0]) is cr.IntegrityError
        assert outcome[0].reason == cr.Reason.UNSAFE_PATH
        assert spy.calls == []


# The permission case runs in a child process: root ignores file modes, so the child
# drops to the unprivileged "nobody" user before it opens the file.
PERMISSION_CHILD = textwrap.dedent(
    """
    import json, os, sys
    import clarity_resilience as cr
    from clarity_resilience.testing import capture_events

    path, sha256, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = []

    def spy(data):
        calls.append(len(data))
        return data

    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        except PermissionError:
            print(json.dumps({"cannot_drop_privileges": True}))
            sys.exit(0)
    result = {"uid": os.geteuid(), "can_stat": True}
    try:
        os.stat(path)  # the directory is searchable: only the file's own mode can deny
    except OSError:
        result["can_stat"] = False
    with capture_events() as events:
        try:
            cr.load_verified(path, sha256=sha256, size=size, loader=spy)
        except cr.ClarityResilienceError as e:
            result["error"] = type(e).__name__
            result["reason"] = str(e.reason)
            result["path"] = e.path
            result["cause_errno"] = getattr(e.__cause__, "errno", None)
    result["loader_calls"] = len(calls)
    result["events"] = [e.name for e in events]
    print(json.dumps(result))
    """
)


@pytest.fixture
def world_searchable_dir() -> Iterator[pathlib.Path]:
    """Return a directory an unprivileged user can search (pytest's tmp_path is 0700)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="clarity-perm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


class TestPermissionDenied:
    def test_unreadable_file_is_refused(
        self, world_searchable_dir: pathlib.Path, in_ci: bool
    ) -> None:
        """A file with mode 000 fails with EACCES as IntegrityError(io_error), never loaded."""
        if not hasattr(os, "setuid"):
            requirements.missing("POSIX users (os.setuid)")
        m = write_model(world_searchable_dir / "model.safetensors", 4096)
        m.path.chmod(0o000)

        child = subprocess.run(
            [sys.executable, "-c", PERMISSION_CHILD, str(m.path), m.sha256, str(m.size)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

        result = json.loads(child.stdout)
        if result.get("cannot_drop_privileges"):
            requirements.missing("CAP_SETUID (root must drop to nobody to test permissions)")
        assert result["uid"] != 0
        assert result["can_stat"] is True
        assert result["error"] == "IntegrityError"
        assert result["reason"] == "io_error"
        assert result["path"] == str(m.path)
        assert result["cause_errno"] == errno.EACCES
        assert result["loader_calls"] == 0
        assert result["events"] == [
            "clarity_resilience.integrity_check_failed",
            "clarity_resilience.model_load_failed",
        ]


# --- the race: the file changes while (and after) it is being read ---------------------


class Writer(threading.Thread):
    """Keep rewriting, truncating, extending and replacing a file until stopped."""

    def __init__(self, m: ModelFile, seed: int, pause: float) -> None:
        super().__init__(name="corruptor", daemon=True)
        self.m = m
        self.pause = pause
        self.bad = m.other_content()
        self.rng = random.Random(seed)
        self.stopped = threading.Event()
        self.changed = threading.Condition()
        self.generation = 0
        self.error: BaseException | None = None

    def _in_place(self, content: bytes) -> None:
        with open(self.m.path, "r+b") as f:
            for start in range(0, len(content), 256 * 1024):  # readers see a mixture
                f.write(content[start : start + 256 * 1024])
            f.truncate()

    def _replace(self, content: bytes) -> None:
        staged = self.m.path.with_name("staged.tmp")
        staged.write_bytes(content)
        os.replace(staged, self.m.path)

    def _step(self) -> None:
        good, bad = self.m.content, self.bad
        action = self.rng.choice(
            ["restore", "restore", "rewrite", "truncate", "extend", "replace-bad",
             "replace-good"]
        )  # fmt: skip
        if action == "restore":
            self._in_place(good)
        elif action == "rewrite":
            self._in_place(bad)
        elif action == "truncate":
            os.truncate(self.m.path, self.rng.randrange(len(good)))
        elif action == "extend":
            with open(self.m.path, "ab") as f:
                f.write(b"\x01" * self.rng.randrange(1, 4096))
        else:
            self._replace(good if action == "replace-good" else bad)
        if action in ("restore", "replace-good"):
            # Leave the good bytes alone for a moment so that some reads can succeed.
            self.stopped.wait(self.rng.uniform(0, self.pause))

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                self._step()
                with self.changed:
                    self.generation += 1
                    self.changed.notify_all()
        except BaseException as e:  # reported by the test after join()
            self.error = e

    def wait_for_changes(self, since: int, count: int = 2) -> None:
        with self.changed:
            self.changed.wait_for(
                lambda: self.generation >= since + count or not self.is_alive(), timeout=10
            )


class TestConcurrentModification:
    @pytest.mark.parametrize(
        ("nbytes", "chunk", "pipeline_min", "iterations"),
        [
            pytest.param(4 * MIB, 256 * 1024, None, 300, id="sequential-4MiB-16-chunks"),
            pytest.param(4 * MIB, 256 * 1024, 0, 300, id="pipelined-4MiB-16-chunks"),
            pytest.param(40 * MIB, None, None, 16, id="pipelined-40MiB-default-chunks"),
        ],
    )
    def test_only_verified_bytes_are_ever_returned(
        self,
        tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
        nbytes: int,
        chunk: int | None,
        pipeline_min: int | None,
        iterations: int,
    ) -> None:
        """Under a concurrent corruptor every call returns exactly the good model or raises."""
        if chunk is not None:  # smaller chunks: a small file still spans many reads
            monkeypatch.setattr(_hashing, "CHUNK", chunk)
        if pipeline_min is not None:
            monkeypatch.setattr(_hashing, "PIPELINE_MIN", pipeline_min)
        m = write_model(tmp_path / "model.safetensors", nbytes, seed=1)
        assert nbytes >= _hashing.PIPELINE_MIN or pipeline_min is None
        rng = random.Random(1234)
        # Good bytes stay put for up to twice what one read takes on this machine
        # now: measured, not assumed, since a busy machine reads far slower.
        started = time.perf_counter()
        assert cr.read_verified(m.path, sha256=m.sha256) == m.content
        one_read = time.perf_counter() - started
        writer = Writer(m, seed=4321, pause=max(nbytes / (1000 * MIB), 2 * one_read))
        corrupted: list[str] = []
        refused = verified = 0

        with capture_events():  # keep hundreds of audit events out of the test output
            writer.start()
            try:
                for i in range(iterations):
                    size = m.size if rng.random() < 0.5 else None
                    before = writer.generation
                    try:
                        if i % 2:
                            result: Any = cr.read_verified(m.path, sha256=m.sha256, size=size)
                        else:
                            result = cr.load_verified(
                                m.path, sha256=m.sha256, size=size, loader=loaders.safetensors
                            )
                    except cr.IntegrityError:
                        refused += 1
                        continue
                    # The file keeps changing after the call returned: the result must
                    # be private memory, not a view of the file.
                    writer.wait_for_changes(since=before)
                    verified += 1
                    if isinstance(result, bytes):
                        if result != m.content:
                            corrupted.append(f"iteration {i}: bytes differ")
                    elif result.keys() != m.tensors.keys() or any(
                        not np.array_equal(result[k], v) for k, v in m.tensors.items()
                    ):
                        corrupted.append(f"iteration {i}: tensors differ")
            finally:
                writer.stopped.set()
                writer.join(timeout=30)

        assert writer.error is None
        assert corrupted == []
        assert refused > 0, "the corruptor never hit a read: the race was not exercised"
        assert verified > 0, "no read ever succeeded: the good path was not exercised"
        assert writer.generation > iterations // 4


# --- functions and their contracts ------------------------------------------------------


class TestSha256File:
    @pytest.mark.parametrize(
        "nbytes",
        [
            pytest.param(0, id="empty"),
            pytest.param(1, id="one-byte"),
            pytest.param(1_000_003, id="about-1MB"),
            pytest.param(8 * MIB + 1, id="chunk-plus-one"),
        ],
    )
    def test_matches_hashlib(self, tmp_path: pathlib.Path, nbytes: int) -> None:
        """sha256_file returns the same hex digest as hashlib over the whole content."""
        content = random.Random(nbytes).randbytes(nbytes)
        path = tmp_path / "f.bin"
        path.write_bytes(content)

        assert cr.sha256_file(path) == digest(content)
        assert cr.sha256_file(str(path)) == digest(content)


class TestReadVerified:
    @pytest.mark.parametrize(
        "nbytes",
        [
            pytest.param(0, id="empty"),
            pytest.param(1, id="one-byte"),
            pytest.param(2, id="two-bytes"),
            pytest.param(100_000, id="100kB"),
            pytest.param(33 * MIB, id="33MiB-pipelined"),
        ],
    )
    def test_returns_the_verified_content_as_real_bytes(
        self, tmp_path: pathlib.Path, nbytes: int
    ) -> None:
        """The result is a genuine bytes object equal to the file (hashable, usable as a key)."""
        content = random.Random(nbytes).randbytes(nbytes)
        path = tmp_path / "f.bin"
        path.write_bytes(content)

        data = cr.read_verified(path, sha256=digest(content), size=nbytes)

        assert type(data) is bytes
        assert data == content
        assert hash(data) == hash(content)
        assert {content: 1}[data] == 1

    def test_digest_is_case_insensitive(self, model: ModelFile) -> None:
        """An upper-case digest (as some tools print it) is accepted."""
        data = cr.read_verified(model.path, sha256=model.sha256.upper())

        assert data == model.content

    def test_size_is_checked_before_any_byte_is_read(self, tmp_path: pathlib.Path) -> None:
        """A 1 TiB sparse file with the wrong size is refused from fstat alone."""
        path = tmp_path / "huge.bin"
        with open(path, "wb") as f:
            f.truncate(1 << 40)  # sparse: reading (or allocating) it all would fail

        with pytest.raises(cr.SizeMismatchError) as info:
            cr.read_verified(path, sha256="0" * 64, size=1000)

        assert info.value.reason == cr.Reason.SIZE_MISMATCH
        assert info.value.expected == 1000
        assert info.value.actual == 1 << 40
        assert info.value.path == str(path)

    @pytest.mark.parametrize(
        "sha256",
        [
            pytest.param("", id="empty"),
            pytest.param("ab" * 31, id="too-short"),
            pytest.param("ab" * 33, id="too-long"),
            pytest.param("g" * 64, id="not-hex"),
            pytest.param("sha256:" + "a" * 57, id="prefixed"),
        ],
    )
    def test_malformed_digest_is_a_value_error(self, model: ModelFile, sha256: str) -> None:
        """A digest that is not 64 hex digits is a programming error, not an integrity one."""
        with pytest.raises(ValueError, match="64 hex digits"):
            cr.read_verified(model.path, sha256=sha256)

    def test_non_string_digest_is_a_type_error(self, model: ModelFile) -> None:
        """Passing the raw digest bytes instead of hex text is rejected."""
        with pytest.raises(TypeError):
            cr.read_verified(model.path, sha256=hashlib.sha256(model.content).digest())  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "size",
        [
            pytest.param(-1, id="negative"),
            pytest.param(True, id="bool"),
            pytest.param(1.5, id="float"),
            pytest.param("10", id="string"),
        ],
    )
    def test_invalid_size_is_a_value_error(self, model: ModelFile, size: Any) -> None:
        """A size that is not a non-negative int is rejected before the file is touched."""
        model.path.unlink()  # a missing file would raise IntegrityError if it were opened

        with pytest.raises(ValueError, match="non-negative int"):
            cr.read_verified(model.path, sha256=model.sha256, size=size)


def bytes_retained_by(call: Callable[[], object]) -> tuple[BaseException, int]:
    """Run a failing call; return its exception (kept alive) and the memory still held."""
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        with pytest.raises(cr.ClarityResilienceError) as info:
            call()
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    return info.value, retained


class TestFailedReadsReleaseTheBuffer:
    def test_kept_integrity_error_does_not_hold_the_bytes(self, tmp_path: pathlib.Path) -> None:
        """A refused file's bytes are freed even while its exception is kept (a last error)."""
        path = tmp_path / "big.bin"
        path.write_bytes(random.Random(5).randbytes(16 * MIB))

        error, retained = bytes_retained_by(lambda: cr.read_verified(path, sha256="0" * 64))

        assert isinstance(error, cr.ChecksumMismatchError)
        assert error.__traceback__ is not None
        assert retained < MIB

    def test_kept_load_error_does_not_hold_the_bytes(self, tmp_path: pathlib.Path) -> None:
        """Bytes a loader rejected are freed even while the ModelLoadError is kept."""
        content = random.Random(6).randbytes(16 * MIB)
        path = tmp_path / "big.bin"
        path.write_bytes(content)

        def rejecting_loader(data: bytes) -> object:
            raise ValueError("unsupported")

        error, retained = bytes_retained_by(
            lambda: cr.load_verified(path, sha256=digest(content), loader=rejecting_loader)
        )

        assert isinstance(error, cr.ModelLoadError)
        assert isinstance(error.__cause__, ValueError)
        assert retained < MIB


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def checks_counted(registry: CollectorRegistry, model: str) -> float | None:
    return sample(registry, "checksum_verification_duration_seconds_count", model=model)


class TestIntegrityEvents:
    def test_success_emits_passed_and_observes_duration(
        self, model: ModelFile, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """A verified read emits IntegrityCheckPassed and counts one check for the model."""
        cr.read_verified(model.path, sha256=model.sha256, model="ranker", registry=registry)

        assert [type(e) for e in events] == [IntegrityCheckPassed]
        passed = events[0]
        assert isinstance(passed, IntegrityCheckPassed)
        assert (passed.model, passed.path, passed.size) == ("ranker", str(model.path), model.size)
        assert checks_counted(registry, "ranker") == 1
        assert (
            sample(
                registry,
                "model_integrity_failures_total",
                model="ranker",
                reason="checksum_mismatch",
            )
            == 0
        )

    @pytest.mark.parametrize(
        ("corrupt", "reason"),
        [
            pytest.param(flip_one_bit, "checksum_mismatch", id="checksum"),
            pytest.param(truncate, "size_mismatch", id="size"),
            pytest.param(delete, "missing", id="missing"),
            pytest.param(swap_in_symlink, "unsafe_path", id="symlink"),
        ],
    )
    def test_failure_emits_failed_and_counts_the_reason(
        self,
        model: ModelFile,
        registry: CollectorRegistry,
        events: list[Event],
        corrupt: Callable[[ModelFile], Expected],
        reason: str,
    ) -> None:
        """A refused read emits IntegrityCheckFailed and increments its reason's counter."""
        corrupt(model)

        with pytest.raises(cr.IntegrityError):
            cr.read_verified(
                model.path, sha256=model.sha256, size=model.size, model="ranker",
                registry=registry,
            )  # fmt: skip

        assert [type(e) for e in events] == [IntegrityCheckFailed]
        failed = events[0]
        assert isinstance(failed, IntegrityCheckFailed)
        assert failed.reason == reason
        assert failed.path == str(model.path)
        assert (
            sample(registry, "model_integrity_failures_total", model="ranker", reason=reason) == 1
        )
        assert checks_counted(registry, "ranker") == 1


class TestLoadVerified:
    def test_loads_exactly_the_verified_tensors(
        self, model: ModelFile, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """The loader gets the verified bytes once; ModelLoaded is emitted and timed."""
        spy = LoaderSpy()

        tensors = cr.load_verified(
            model.path, sha256=model.sha256, size=model.size, loader=spy, model="ranker",
            registry=registry,
        )  # fmt: skip

        assert_same_tensors(tensors, model.tensors)
        assert spy.calls == [model.size]
        assert [type(e) for e in events] == [IntegrityCheckPassed, ModelLoaded]
        loaded = events[1]
        assert isinstance(loaded, ModelLoaded)
        assert (loaded.model, loaded.sha256) == ("ranker", model.sha256)
        assert sample(registry, "model_load_duration_seconds_count", model="ranker") == 1

    def test_default_loader_detects_the_format(self, model: ModelFile) -> None:
        """Without a loader, the format is detected from the bytes (here safetensors)."""
        tensors = cr.load_verified(model.path, sha256=model.sha256)

        assert_same_tensors(tensors, model.tensors)

    def test_loader_exception_becomes_model_load_error(
        self, model: ModelFile, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """Whatever a loader raises surfaces as ModelLoadError, with the original as cause."""
        cause = RuntimeError("unsupported layer")

        def broken_loader(data: bytes) -> object:
            raise cause

        with pytest.raises(cr.ModelLoadError) as info:
            cr.load_verified(
                model.path, sha256=model.sha256, loader=broken_loader, model="ranker",
                registry=registry,
            )  # fmt: skip

        assert info.value.__cause__ is cause
        assert info.value.reason == cr.Reason.LOAD_ERROR
        assert "broken_loader" in str(info.value)
        assert [type(e) for e in events] == [IntegrityCheckPassed, ModelLoadFailed]
        failed = events[1]
        assert isinstance(failed, ModelLoadFailed)
        assert (failed.reason, failed.error_type) == ("load_error", "ModelLoadError")
        assert sample(registry, "model_load_duration_seconds_count", model="ranker") == 1
        assert checks_counted(registry, "ranker") == 1

    def test_integrity_failure_is_reported_as_a_failed_load(
        self, model: ModelFile, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """A refused file emits both the integrity failure and ModelLoadFailed with its reason."""
        flip_one_bit(model)

        with pytest.raises(cr.ChecksumMismatchError):
            cr.load_verified(
                model.path, sha256=model.sha256, loader=LoaderSpy(), model="ranker",
                registry=registry,
            )  # fmt: skip

        assert [type(e) for e in events] == [IntegrityCheckFailed, ModelLoadFailed]
        failed = events[1]
        assert isinstance(failed, ModelLoadFailed)
        assert failed.reason == "checksum_mismatch"
        assert sample(registry, "model_load_duration_seconds_count", model="ranker") == 1
