"""Tests for the one hashing primitive: interrupts, special files, caps and races (promises 1, 10).

Each race here is made deterministic by doing the racing change at a chosen point of
the read (inside a wrapped step of ``_hashing``), so each check is proven by a test that
would go red if that check were removed.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience import _bytesfill, _hashing, _integrity
from clarity_resilience.instrumentation import IntegrityCheckFailed
from clarity_resilience.testing import capture_events

POSITIONS = pytest.mark.parametrize(
    "position", [pytest.param(-1, id="last"), pytest.param(0, id="first")]
)
MIB = 1024 * 1024


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def near_miss(sha256: str, position: int = -1) -> str:
    """Return ``sha256`` with one hex digit changed (the last one by default)."""
    digits = list(sha256)
    digits[position] = "0" if digits[position] != "0" else "1"
    return "".join(digits)


def failures(registry: CollectorRegistry, reason: cr.Reason, model: str = "m") -> float:
    value = registry.get_sample_value(
        "model_integrity_failures_total", {"model": model, "reason": reason.value}
    )
    return value or 0.0


@pytest.fixture
def blob(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(3 * MIB + 17))
    return path


def append(path: pathlib.Path, data: bytes = b"tail") -> None:
    with path.open("ab") as f:
        f.write(data)


def wrap(monkeypatch: pytest.MonkeyPatch, name: str, after: Callable[..., None]) -> None:
    """Run ``after(*args)`` right after ``_hashing.<name>`` returns (a point inside the read)."""
    original = getattr(_hashing, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        after(*args)
        return result

    monkeypatch.setattr(_hashing, name, wrapped)


PIPELINED = pytest.mark.parametrize(
    "pipelined", [pytest.param(False, id="sequential"), pytest.param(True, id="pipelined")]
)


class TestNearMissDigests:
    @POSITIONS
    def test_read_verified_refuses_one_digit_off(
        self, blob: pathlib.Path, registry: CollectorRegistry, position: int
    ) -> None:
        """A digest that differs in a single hex digit is a mismatch, never a match."""
        wrong = near_miss(digest(blob.read_bytes()), position)
        with pytest.raises(cr.ChecksumMismatchError) as info:
            cr.read_verified(blob, sha256=wrong, model="m", registry=registry)
        assert info.value.expected == wrong
        assert info.value.actual == digest(blob.read_bytes())
        assert failures(registry, cr.Reason.CHECKSUM_MISMATCH) == 1

    @POSITIONS
    def test_verify_file_refuses_one_digit_off(self, blob: pathlib.Path, position: int) -> None:
        """verify_file compares the whole digest too."""
        wrong = near_miss(digest(blob.read_bytes()), position)
        with pytest.raises(cr.ChecksumMismatchError):
            _integrity.verify_file(blob, sha256=wrong)
        size = _integrity.verify_file(blob, sha256=digest(blob.read_bytes()))
        assert size == blob.stat().st_size

    def test_pipelined_read_refuses_one_digit_off(
        self, blob: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The two-thread read compares the whole digest of every chunk it hashed."""
        monkeypatch.setattr(_hashing, "PIPELINE_MIN", 0)
        good = digest(blob.read_bytes())
        assert cr.read_verified(blob, sha256=good) == blob.read_bytes()
        with pytest.raises(cr.ChecksumMismatchError):
            cr.read_verified(blob, sha256=near_miss(good))


class TestChangedDuringTheRead:
    @PIPELINED
    def test_growth_after_fstat_is_refused(
        self, blob: pathlib.Path, monkeypatch: pytest.MonkeyPatch, pipelined: bool
    ) -> None:
        """Bytes appended after the size was taken fail the read, though the prefix matches."""
        content = blob.read_bytes()
        if pipelined:
            monkeypatch.setattr(_hashing, "PIPELINE_MIN", 0)
        wrap(monkeypatch, "check_size", lambda *_: append(blob))
        with pytest.raises(cr.SizeMismatchError, match="grew") as info:
            cr.read_verified(blob, sha256=digest(content))
        assert info.value.expected == len(content)

    def test_growth_is_refused_by_verify_file(
        self, blob: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """verify_file notices a file that grew after its size was taken."""
        content = blob.read_bytes()
        wrap(monkeypatch, "check_size", lambda *_: append(blob))
        with pytest.raises(cr.SizeMismatchError, match="grew"):
            _integrity.verify_file(blob, sha256=digest(content))

    @PIPELINED
    def test_shrinking_after_fstat_is_refused(
        self, blob: pathlib.Path, monkeypatch: pytest.MonkeyPatch, pipelined: bool
    ) -> None:
        """A file truncated after its size was taken fails as shrunk."""
        content = blob.read_bytes()
        if pipelined:
            monkeypatch.setattr(_hashing, "PIPELINE_MIN", 0)
        wrap(monkeypatch, "check_size", lambda *_: os.truncate(blob, MIB))
        with pytest.raises(cr.SizeMismatchError, match="shrank") as info:
            cr.read_verified(blob, sha256=digest(content))
        assert info.value.actual == MIB

    def test_replaced_after_the_read_is_refused(
        self, blob: pathlib.Path, monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry
    ) -> None:
        """A path renamed over while being read is refused even though the bytes read match."""
        content = blob.read_bytes()
        other = blob.with_name("other.bin")
        other.write_bytes(b"something else")
        wrap(monkeypatch, "hash_fd", lambda *_: os.replace(other, blob))
        with pytest.raises(cr.IntegrityError, match="replaced") as info:
            cr.read_verified(blob, sha256=digest(content), model="m", registry=registry)
        assert info.value.reason is cr.Reason.UNSAFE_PATH
        assert failures(registry, cr.Reason.UNSAFE_PATH) == 1

    def test_removed_after_the_read_is_refused(
        self, blob: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A path unlinked while being read is refused as missing."""
        content = blob.read_bytes()
        wrap(monkeypatch, "hash_fd", lambda *_: blob.unlink())
        with pytest.raises(cr.IntegrityError, match="removed") as info:
            cr.read_verified(blob, sha256=digest(content))
        assert info.value.reason is cr.Reason.MISSING


class TestSymlinkSwappedForAParent:
    def test_parent_swapped_after_it_was_opened_is_not_traversed(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A listed directory swapped for a symlink mid-open: the symlink is never followed.

        The manifest pins the bytes of the symlink's target, so reading through the
        symlink would *pass*; opening relative to the already-open directory reads the
        real file, which does not match.
        """
        root = tmp_path / "model"
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "w.bin").write_bytes(b"real weights")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "w.bin").write_bytes(b"planted weights")
        manifest = cr.Manifest([cr.ManifestEntry("sub/w.bin", digest(b"planted weights"))])

        def swap(*_: object) -> None:
            shutil.move(root / "sub", tmp_path / "moved")
            (root / "sub").symlink_to(elsewhere, target_is_directory=True)

        original = _hashing.open_regular

        def swapping_open(path: str, **kwargs: Any) -> _hashing.Opened:
            if kwargs.get("dir_fd") is not None:
                swap()
            return original(path, **kwargs)

        monkeypatch.setattr(_hashing, "open_regular", swapping_open)
        with pytest.raises(cr.ChecksumMismatchError):
            manifest.read_entry(root, "sub/w.bin")

    def test_symlinked_parent_is_refused(self, tmp_path: pathlib.Path) -> None:
        """A listed path that passes through a symlinked directory is unsafe."""
        root = tmp_path / "model"
        root.mkdir()
        real = tmp_path / "real"
        real.mkdir()
        (real / "w.bin").write_bytes(b"weights")
        (root / "sub").symlink_to(real, target_is_directory=True)
        manifest = cr.Manifest([cr.ManifestEntry("sub/w.bin", digest(b"weights"))])
        with pytest.raises(cr.IntegrityError) as info:
            manifest.read_entry(root, "sub/w.bin")
        assert info.value.reason is cr.Reason.UNSAFE_PATH
        [problem] = manifest.check(root)
        assert problem.reason is cr.Reason.UNSAFE_PATH

    def test_file_in_place_of_a_parent_is_missing(self, tmp_path: pathlib.Path) -> None:
        """A regular file where a listed directory should be means the entry is missing."""
        root = tmp_path / "model"
        root.mkdir()
        (root / "sub").write_bytes(b"not a directory")
        manifest = cr.Manifest([cr.ManifestEntry("sub/w.bin", digest(b"weights"))])
        with pytest.raises(cr.IntegrityError, match="not a directory") as info:
            manifest.read_entry(root, "sub/w.bin")
        assert info.value.reason is cr.Reason.MISSING

    def test_no_descriptor_is_left_open(self, tmp_path: pathlib.Path) -> None:
        """Opening component by component closes every directory it opened, on any outcome."""
        root = tmp_path / "model"
        (root / "a" / "b").mkdir(parents=True)
        (root / "a" / "b" / "w.bin").write_bytes(b"weights")
        good = cr.Manifest([cr.ManifestEntry("a/b/w.bin", digest(b"weights"))])
        bad = cr.Manifest([cr.ManifestEntry("a/x/w.bin", digest(b"weights"))])
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(50):
            good.read_entry(root, "a/b/w.bin")
            with pytest.raises(cr.IntegrityError):
                bad.read_entry(root, "a/x/w.bin")
        assert len(os.listdir("/proc/self/fd")) == before


class TestSizeCap:
    def test_sparse_file_over_the_default_cap_is_refused_before_reading(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Without size=, a file over DEFAULT_MAX_SIZE is a typed, audited refusal."""
        huge = tmp_path / "huge.bin"
        with huge.open("wb") as f:
            f.truncate(_hashing.DEFAULT_MAX_SIZE + 1)  # sparse: no disk, no memory
        refused = pytest.raises(cr.SizeMismatchError)
        with capture_events(keep_hooks=True) as events, refused as info:
            cr.read_verified(huge, sha256="0" * 64, model="m", registry=registry)
        assert info.value.actual == _hashing.DEFAULT_MAX_SIZE + 1
        assert [type(e) for e in events] == [IntegrityCheckFailed]
        assert failures(registry, cr.Reason.SIZE_MISMATCH) == 1

    def test_max_size_lowers_the_cap(self, blob: pathlib.Path) -> None:
        """max_size= refuses a smaller file; the exact cap still reads."""
        content = blob.read_bytes()
        with pytest.raises(cr.SizeMismatchError):
            cr.read_verified(blob, sha256=digest(content), max_size=len(content) - 1)
        assert cr.read_verified(blob, sha256=digest(content), max_size=len(content)) == content

    def test_allocation_failure_is_a_typed_transient_refusal(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A real MemoryError (a 1 TiB sparse file, size given) becomes an audited io_error."""
        huge = tmp_path / "huge.bin"
        size = 1024**4
        with huge.open("wb") as f:
            f.truncate(size)
        with pytest.raises(cr.IntegrityError, match="not enough memory") as info:
            cr.read_verified(huge, sha256="0" * 64, size=size, model="m", registry=registry)
        assert info.value.reason is cr.Reason.IO_ERROR
        assert failures(registry, cr.Reason.IO_ERROR) == 1

    def test_huge_file_refused_by_a_guard_sets_last_error(self, tmp_path: pathlib.Path) -> None:
        """A guard refusing an oversized file is unavailable with a typed reason, not crashed."""
        huge = tmp_path / "huge.bin"
        with huge.open("wb") as f:
            f.truncate(_hashing.DEFAULT_MAX_SIZE + 1)
        guard = cr.ModelGuard("m", path=huge, sha256="0" * 64, registry=CollectorRegistry())
        with pytest.raises(cr.SizeMismatchError):
            guard.load()
        assert guard.status()["last_error"] == "size_mismatch"
        with pytest.raises(cr.ModelUnavailableError) as info:
            _ = guard.model
        assert info.value.reason is cr.Reason.SIZE_MISMATCH

    @pytest.mark.parametrize("value", [-1, 1.5, True, "10"])
    def test_invalid_max_size_is_a_value_error(self, blob: pathlib.Path, value: Any) -> None:
        """max_size must be a non-negative int."""
        with pytest.raises(ValueError, match="max_size"):
            cr.read_verified(blob, sha256="0" * 64, max_size=value)


class TestSpecialFiles:
    """Nothing the library reads can block on a FIFO (promise 10)."""

    @pytest.fixture
    def fifo(self, tmp_path: pathlib.Path) -> pathlib.Path:
        path = tmp_path / "fifo"
        os.mkfifo(path)
        return path

    def test_manifest_read_refuses_a_fifo(self, fifo: pathlib.Path) -> None:
        """Manifest.read of a FIFO fails at once with a typed error instead of blocking."""
        with pytest.raises(cr.ManifestError, match="not a regular file") as info:
            cr.Manifest.read(fifo)
        assert info.value.reason is cr.Reason.UNSAFE_PATH

    def test_guard_with_a_fifo_manifest_refuses_the_load(
        self, fifo: pathlib.Path, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A guard whose manifest is a FIFO refuses the load, audited, instead of hanging."""
        guard = cr.ModelGuard("m", path=tmp_path, manifest=fifo, registry=registry)
        with capture_events(keep_hooks=True) as events, pytest.raises(cr.ManifestError):
            guard.load()
        assert any(isinstance(e, IntegrityCheckFailed) for e in events)
        assert failures(registry, cr.Reason.UNSAFE_PATH) == 1
        assert not guard.ready

    def test_symlinked_manifest_is_refused(self, tmp_path: pathlib.Path) -> None:
        """A manifest is opened like a model file: a symlink in its place is refused."""
        real = tmp_path / "real.sha256"
        real.write_text(f"{'0' * 64}  a\n")
        link = tmp_path / "SHA256SUMS"
        link.symlink_to(real)
        with pytest.raises(cr.ManifestError) as info:
            cr.Manifest.read(link)
        assert info.value.reason is cr.Reason.UNSAFE_PATH

    def test_sha256_file_refuses_a_fifo(self, fifo: pathlib.Path) -> None:
        """sha256_file does not wait on a FIFO either."""
        with pytest.raises(cr.IntegrityError, match="not a regular file"):
            cr.sha256_file(fifo)

    def test_sha256_file_follows_a_symlink_to_a_regular_file(self, blob: pathlib.Path) -> None:
        """sha256_file is a utility: a symlink to a regular file is hashed."""
        link = blob.with_name("link")
        link.symlink_to(blob)
        assert cr.sha256_file(link) == digest(blob.read_bytes())

    def test_device_is_refused(self) -> None:
        """A character device (endless bytes) is not a regular file."""
        with pytest.raises(cr.IntegrityError) as info:
            cr.read_verified("/dev/zero", sha256="0" * 64)
        assert info.value.reason is cr.Reason.UNSAFE_PATH


class TestBytesFill:
    def test_in_place_on_the_gated_versions(self) -> None:
        """CPython 3.11-3.13 pass the gate and the self-test: reads cost no second copy."""
        expected = sys.implementation.name == "cpython" and sys.version_info[:2] in (
            (3, 11),
            (3, 12),
            (3, 13),
        )
        assert _bytesfill.IN_PLACE is expected

    @pytest.mark.parametrize("size", [0, 1, 2, 4096])
    def test_buffer_reads_back_what_was_written(self, size: int) -> None:
        """Whatever the path (in place or fallback), the buffer holds the written bytes."""
        owner, view = _bytesfill.new_buffer(size)
        expected = bytes(i % 251 for i in range(size))
        view[:] = expected
        assert bytes(owner) == expected
        assert len(owner) == size

    def test_fallback_is_used_when_the_self_test_fails(
        self, monkeypatch: pytest.MonkeyPatch, blob: pathlib.Path
    ) -> None:
        """With the fill unavailable, reads still return the verified bytes (as a copy)."""
        monkeypatch.setattr(_bytesfill, "IN_PLACE", False)
        owner, _ = _bytesfill.new_buffer(16)
        assert isinstance(owner, bytearray)
        content = blob.read_bytes()
        result = cr.read_verified(blob, sha256=digest(content))
        assert type(result) is bytes
        assert result == content


INTERRUPT_SCRIPT = textwrap.dedent(
    """
    import gc, hashlib, os, random, signal, sys, threading, time
    import clarity_resilience as cr
    from clarity_resilience.testing import capture_events

    path, rounds = sys.argv[1], int(sys.argv[2])
    content = open(path, "rb").read()
    sha = hashlib.sha256(content).hexdigest()
    rng = random.Random(7)
    start = time.perf_counter()
    cr.read_verified(path, sha256=sha)
    took = time.perf_counter() - start  # fire within twice that: some reads complete

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, interrupt)
    interrupted = completed = 0
    with capture_events():
        for _ in range(rounds):
            data = None
            try:
                try:
                    # Fire somewhere inside the read: reading, hashing, joining, comparing.
                    signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0005, 2 * took))
                    data = cr.read_verified(path, sha256=sha)
                    assert data == content, "wrong bytes"
                    completed += 1
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                interrupted += 1
            del data
            # Churn the allocator: freed buffers get reused at once.
            garbage = [bytes(1 << 20) for _ in range(8)]
            del garbage
            gc.collect()
    # Every hashing thread ends by itself, promptly.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [t for t in threading.enumerate() if t.name == "clarity-hash"]
        if not left:
            break
        time.sleep(0.05)  # sleep-ok: polling for a condition, bounded by a deadline
    assert not left, f"{len(left)} hashing threads leaked"
    # And the next read still works.
    assert cr.read_verified(path, sha256=sha) == content
    print(f"interrupted={interrupted} completed={completed}")
    """
)


class TestInterrupts:
    """Ctrl-C (or any asynchronous exception) during a pipelined read (promise 10)."""

    def test_interrupted_reads_never_crash_leak_or_deadlock(self, tmp_path: pathlib.Path) -> None:
        """Hundreds of reads interrupted at random points: no crash, no leaked thread.

        Runs in a child process so that a use-after-free would show as a signal exit
        (not kill the test run), under a timeout so that a deadlock fails the test.
        """
        path = tmp_path / "model.bin"
        path.write_bytes(os.urandom(_hashing.PIPELINE_MIN + 5 * MIB))  # pipelined reads
        script = tmp_path / "interrupt.py"
        script.write_text(INTERRUPT_SCRIPT)
        result = subprocess.run(
            [sys.executable, str(script), str(path), "80"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        counts = dict(part.split("=") for part in result.stdout.splitlines()[-1].split())
        assert int(counts["interrupted"]) > 0, "no read was interrupted: nothing was tested"
        assert int(counts["completed"]) > 0, "no read completed: the late windows were not hit"

    def test_interrupt_during_the_read_stops_the_hashing_thread(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An interrupt raised by the reader ends its hashing thread, which held the buffer."""
        path = tmp_path / "model.bin"
        path.write_bytes(os.urandom(4 * MIB))
        monkeypatch.setattr(_hashing, "PIPELINE_MIN", 0)
        reads = 0
        real_readv = os.readv

        def interrupting_readv(fd: int, buffers: list[memoryview]) -> int:
            nonlocal reads
            reads += 1
            if reads == 5:
                raise KeyboardInterrupt
            return real_readv(fd, buffers)

        monkeypatch.setattr(_hashing.os, "readv", interrupting_readv)
        with pytest.raises(KeyboardInterrupt):
            cr.read_verified(path, sha256="0" * 64)
        monkeypatch.undo()
        assert [t for t in threading.enumerate() if t.name == "clarity-hash"] == []
        content = path.read_bytes()
        assert cr.read_verified(path, sha256=digest(content)) == content
