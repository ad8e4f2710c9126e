"""Tests for verified reads of one file in parallel chunks (clarity_resilience._chunked)."""

from __future__ import annotations

import hashlib
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clarity_resilience import (
    ChecksumMismatchError,
    IntegrityError,
    Reason,
    SizeMismatchError,
    _chunked,
)
from clarity_resilience._chunked import (
    THREAD_NAME_PREFIX,
    ChunkDigests,
    chunk_count,
    chunk_digests,
    read_verified_chunks,
)

CHUNK = 64 * 1024
# Six chunks, the last one shorter than the others.
SIZE = 5 * CHUNK + 1234


def chunk_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def digests_of(data: bytes, chunk_size: int = CHUNK) -> list[str]:
    count = chunk_count(len(data), chunk_size)
    return [
        hashlib.sha256(data[i * chunk_size : (i + 1) * chunk_size]).hexdigest()
        for i in range(count)
    ]


class Model:
    """A file of random bytes and the per-chunk digests it was published with."""

    def __init__(self, path: pathlib.Path, data: bytes) -> None:
        self.path = path
        self.data = data
        self.digests = digests_of(data)

    def read(self, **kwargs: Any) -> memoryview:
        arguments: dict[str, Any] = {
            "size": len(self.data),
            "chunk_size": CHUNK,
            "chunk_sha256": self.digests,
        }
        arguments.update(kwargs)
        return read_verified_chunks(self.path, **arguments)


@pytest.fixture
def model(tmp_path: pathlib.Path) -> Model:
    data = os.urandom(SIZE)
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    return Model(path, data)


@pytest.fixture(autouse=True)
def no_threads_left() -> Iterator[None]:
    """Fail any test after which a reading thread is still alive."""
    yield
    assert chunk_threads() == []


class HashingHook:
    """Patch hashlib.sha256 so that a hasher's update runs ``action`` first (once)."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.fired = threading.Event()
        self._original = hashlib.sha256

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _HookedHasher(self, self._original(*args, **kwargs))

    def fire_once(self) -> None:
        if not self.fired.is_set():
            self.fired.set()
            self.action()


class _HookedHasher:
    def __init__(self, hook: HashingHook, hasher: Any) -> None:
        self._hook = hook
        self._hasher = hasher

    def update(self, data: Any) -> None:
        self._hook.fire_once()
        self._hasher.update(data)

    def hexdigest(self) -> str:
        return str(self._hasher.hexdigest())


def hook_hashing(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> HashingHook:
    hook = HashingHook(action)
    monkeypatch.setattr(hashlib, "sha256", hook)
    return hook


class TestAccept:
    def test_returns_the_bytes_read_only(self, model: Model) -> None:
        """A file whose every chunk matches is returned whole, as a read-only view."""
        view = model.read()
        assert view.readonly
        assert view.nbytes == SIZE
        assert view == model.data
        with pytest.raises(TypeError):
            view[0] = 0  # type: ignore[index]

    @pytest.mark.parametrize("workers", [1, 2, 6, 64])
    def test_any_number_of_workers_reads_the_same_bytes(self, model: Model, workers: int) -> None:
        """The result does not depend on how many threads read the chunks."""
        assert model.read(workers=workers) == model.data

    def test_size_a_multiple_of_the_chunk_size(self, tmp_path: pathlib.Path) -> None:
        """A file that ends on a chunk boundary has no empty trailing chunk."""
        data = os.urandom(4 * CHUNK)
        path = tmp_path / "even.bin"
        path.write_bytes(data)
        digests = digests_of(data)
        assert len(digests) == 4
        got = read_verified_chunks(path, size=len(data), chunk_size=CHUNK, chunk_sha256=digests)
        assert got == data

    def test_empty_file_has_one_chunk(self, tmp_path: pathlib.Path) -> None:
        """An empty file is one chunk: the digest of no bytes."""
        path = tmp_path / "empty.bin"
        path.write_bytes(b"")
        empty = hashlib.sha256(b"").hexdigest()
        assert chunk_digests(path, chunk_size=CHUNK) == ChunkDigests(0, CHUNK, (empty,))
        got = read_verified_chunks(path, size=0, chunk_size=CHUNK, chunk_sha256=[empty])
        assert got.tobytes() == b""

    def test_digests_are_case_insensitive(self, model: Model) -> None:
        """Upper-case digests are accepted like the rest of the library accepts them."""
        assert model.read(chunk_sha256=[d.upper() for d in model.digests]) == model.data


class TestChunkDigests:
    @pytest.mark.parametrize("workers", [1, 2])
    def test_digest_of_every_chunk_the_last_one_shorter(self, model: Model, workers: int) -> None:
        """Every chunk's digest is SHA-256 of exactly its bytes, the short last one too."""
        result = chunk_digests(model.path, chunk_size=CHUNK, workers=workers)
        assert result.size == SIZE
        assert result.chunk_size == CHUNK
        assert len(result.sha256) == 6
        assert result.sha256[-1] == hashlib.sha256(model.data[5 * CHUNK :]).hexdigest()
        assert list(result.sha256) == model.digests

    def test_digests_read_back(self, model: Model) -> None:
        """Digests made by chunk_digests verify the file they were made from."""
        made = chunk_digests(model.path, chunk_size=CHUNK)
        got = read_verified_chunks(
            model.path, size=made.size, chunk_size=made.chunk_size, chunk_sha256=made.sha256
        )
        assert got == model.data

    def test_shrunk_while_being_hashed(
        self, model: Model, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A truncation while digests are made is refused, not recorded."""
        hook = hook_hashing(monkeypatch, lambda: os.truncate(model.path, CHUNK))
        with pytest.raises(SizeMismatchError, match="shrank"):
            chunk_digests(model.path, chunk_size=CHUNK, workers=1)
        assert hook.fired.is_set()

    def test_grown_while_being_hashed(self, model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
        """Bytes appended while digests are made are refused, not left out."""

        def append() -> None:
            with open(model.path, "ab") as f:
                f.write(b"appended")

        hook_hashing(monkeypatch, append)
        with pytest.raises(SizeMismatchError, match="grew"):
            chunk_digests(model.path, chunk_size=CHUNK, workers=1)

    def test_symlink_is_refused(self, model: Model, tmp_path: pathlib.Path) -> None:
        """Digests are never made through a symbolic link."""
        link = tmp_path / "link.bin"
        link.symlink_to(model.path)
        with pytest.raises(IntegrityError) as caught:
            chunk_digests(link, chunk_size=CHUNK)
        assert caught.value.reason == Reason.UNSAFE_PATH


class TestTamperingIsRefused:
    @pytest.mark.parametrize(
        "offset",
        [
            pytest.param(0, id="first-chunk"),
            pytest.param(2 * CHUNK + 77, id="middle-chunk"),
            pytest.param(SIZE - 1, id="last-chunk-last-byte"),
        ],
    )
    def test_flipped_byte(self, model: Model, offset: int) -> None:
        """One byte changed anywhere refuses the whole file, naming the chunk."""
        tampered = bytearray(model.data)
        tampered[offset] ^= 0x01
        model.path.write_bytes(tampered)
        index = offset // CHUNK
        with pytest.raises(ChecksumMismatchError) as caught:
            model.read()
        assert caught.value.expected == model.digests[index]
        assert caught.value.actual == digests_of(bytes(tampered))[index]
        assert f"chunk {index} " in str(caught.value)
        assert caught.value.reason == Reason.CHECKSUM_MISMATCH

    @pytest.mark.parametrize("index", [0, 3, 5])
    def test_near_miss_digest(self, model: Model, index: int) -> None:
        """An expected digest that differs only in its last hex digit is refused."""
        digests = list(model.digests)
        last = digests[index][-1]
        digests[index] = digests[index][:-1] + ("0" if last != "0" else "1")
        with pytest.raises(ChecksumMismatchError) as caught:
            model.read(chunk_sha256=digests)
        assert caught.value.expected == digests[index]
        assert caught.value.actual == model.digests[index]

    def test_digests_in_the_wrong_order(self, model: Model) -> None:
        """Right digests for the wrong chunks are refused (order is part of the contract)."""
        digests = list(model.digests)
        digests[1], digests[2] = digests[2], digests[1]
        with pytest.raises(ChecksumMismatchError):
            model.read(chunk_sha256=digests)

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param(lambda data: data + b"x", id="grown"),
            pytest.param(lambda data: data[:-1], id="shrunk"),
        ],
    )
    def test_size_differs_before_reading(
        self, model: Model, content: Callable[[bytes], bytes]
    ) -> None:
        """A file of another size is refused at fstat, before any byte is read."""
        model.path.write_bytes(content(model.data))
        with pytest.raises(SizeMismatchError) as caught:
            model.read()
        assert caught.value.expected == SIZE
        assert caught.value.actual == len(content(model.data))

    def test_grown_while_being_read(self, model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
        """Bytes appended during the read are detected after the last chunk."""

        def append() -> None:
            with open(model.path, "ab") as f:
                f.write(b"appended")

        hook = hook_hashing(monkeypatch, append)
        with pytest.raises(SizeMismatchError) as caught:
            model.read(workers=1)
        assert hook.fired.is_set()
        assert caught.value.actual == f">{SIZE}"
        assert "grew" in str(caught.value)

    def test_shrunk_while_being_read(self, model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
        """A truncation during the read is detected by the chunk that finds no bytes."""
        hook = hook_hashing(monkeypatch, lambda: os.truncate(model.path, CHUNK))
        with pytest.raises(SizeMismatchError) as caught:
            model.read(workers=1)  # one worker: chunk 0 runs before the others start
        assert hook.fired.is_set()
        assert "shrank" in str(caught.value)

    def test_replaced_while_being_read(
        self, model: Model, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A path renamed over during the read is refused, though the old inode matched."""
        other = model.path.with_name("other.bin")
        other.write_bytes(model.data)
        hook_hashing(monkeypatch, lambda: other.replace(model.path))
        with pytest.raises(IntegrityError) as caught:
            model.read()
        assert "replaced" in str(caught.value)
        assert caught.value.reason == Reason.UNSAFE_PATH


class TestUnsafeFiles:
    def test_symlink_is_refused(self, model: Model, tmp_path: pathlib.Path) -> None:
        """A symbolic link in the last component is refused at open."""
        link = tmp_path / "link.bin"
        link.symlink_to(model.path)
        with pytest.raises(IntegrityError) as caught:
            read_verified_chunks(link, size=SIZE, chunk_size=CHUNK, chunk_sha256=model.digests)
        assert caught.value.reason == Reason.UNSAFE_PATH
        assert "symbolic link" in str(caught.value)

    def test_fifo_is_refused_without_hanging(self, tmp_path: pathlib.Path) -> None:
        """A FIFO is refused at fstat (the open does not block waiting for a writer)."""
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        with pytest.raises(IntegrityError) as caught:
            read_verified_chunks(fifo, size=1, chunk_size=CHUNK, chunk_sha256=digests_of(b"x"))
        assert caught.value.reason == Reason.UNSAFE_PATH
        assert "not a regular file" in str(caught.value)

    def test_missing_file(self, tmp_path: pathlib.Path) -> None:
        """A missing file is an IntegrityError with reason missing."""
        with pytest.raises(IntegrityError) as caught:
            read_verified_chunks(
                tmp_path / "absent", size=1, chunk_size=CHUNK, chunk_sha256=digests_of(b"x")
            )
        assert caught.value.reason == Reason.MISSING


class TestArguments:
    @pytest.mark.parametrize("count", [5, 7, 0])
    def test_wrong_number_of_digests(self, model: Model, count: int) -> None:
        """Digests that do not cover the size exactly are a caller error."""
        digests = (model.digests * 2)[:count]
        with pytest.raises(ValueError, match="need 6 digests"):
            model.read(chunk_sha256=digests)

    @pytest.mark.parametrize("chunk_size", [0, -1, 1.5, True])
    def test_invalid_chunk_size(self, model: Model, chunk_size: Any) -> None:
        """The chunk size must be a positive int."""
        with pytest.raises(ValueError, match="chunk_size"):
            model.read(chunk_size=chunk_size)
        with pytest.raises(ValueError, match="chunk_size"):
            chunk_digests(model.path, chunk_size=chunk_size)

    @pytest.mark.parametrize("size", [-1, 1.0, None])
    def test_invalid_size(self, model: Model, size: Any) -> None:
        """The size must be a non-negative int."""
        with pytest.raises(ValueError, match="size"):
            model.read(size=size)

    @pytest.mark.parametrize("workers", [0, -2])
    def test_invalid_workers(self, model: Model, workers: int) -> None:
        """The worker count must be positive."""
        with pytest.raises(ValueError, match="workers"):
            model.read(workers=workers)

    def test_malformed_digest(self, model: Model) -> None:
        """A digest that is not 64 hex digits is refused before the file is opened."""
        digests = [*model.digests[:-1], model.digests[-1][:-1]]
        with pytest.raises(ValueError, match="64 hex digits"):
            model.read(chunk_sha256=digests)


class TestWorkerFailures:
    @pytest.mark.parametrize(
        "error",
        [
            pytest.param(OSError(5, "Input/output error"), id="os-error"),
            pytest.param(RuntimeError("boom"), id="unexpected-error"),
            pytest.param(MemoryError(), id="memory-error"),
        ],
    )
    def test_failed_worker_fails_the_read_typed(
        self, model: Model, monkeypatch: pytest.MonkeyPatch, error: BaseException
    ) -> None:
        """Any failure in a reading thread is an IntegrityError (io_error); nothing leaks."""
        fds = open_fds()

        def fail() -> None:
            raise error

        hook_hashing(monkeypatch, fail)
        with pytest.raises(IntegrityError) as caught:
            model.read()
        assert caught.value.reason == Reason.IO_ERROR
        assert caught.value.__cause__ is error
        assert chunk_threads() == []
        assert open_fds() == fds

    def test_no_thread_can_start(self, model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
        """A thread that cannot be started fails the read typed, closing the file."""
        fds = open_fds()

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(threading.Thread, "start", refuse)
        with pytest.raises(IntegrityError) as caught:
            model.read()
        assert caught.value.reason == Reason.IO_ERROR
        assert open_fds() == fds

    def test_no_memory_for_the_buffer(self, model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
        """A buffer that cannot be allocated fails the read typed, closing the file."""
        fds = open_fds()

        def no_memory(*args: Any, **kwargs: Any) -> None:
            raise MemoryError

        monkeypatch.setattr(_chunked, "new_buffer", no_memory)
        with pytest.raises(IntegrityError) as caught:
            model.read()
        assert caught.value.reason == Reason.IO_ERROR
        assert "no memory" in str(caught.value)
        assert open_fds() == fds


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """Make SIGINT raise KeyboardInterrupt in the main thread, as in a plain script."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupt_main_thread() -> None:
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def main_thread_is_in(function: str) -> bool:
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


@pytest.mark.usefixtures("sigint_raises")
class TestInterrupts:
    def test_interrupt_stops_every_worker(
        self, model: Model, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Ctrl-C during the read raises KeyboardInterrupt after every worker stopped."""
        assert threading.current_thread() is threading.main_thread()
        fds = open_fds()
        hook = hook_hashing(monkeypatch, interrupt_main_thread)
        with pytest.raises(KeyboardInterrupt):
            model.read(workers=2)
        assert hook.fired.is_set()
        assert chunk_threads() == []
        assert open_fds() == fds

    def test_second_interrupt_while_stopping(
        self, model: Model, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second Ctrl-C while the workers are being stopped still waits for all of them."""
        fds = open_fds()
        second_sent = threading.Event()

        def interrupt_twice() -> None:
            interrupt_main_thread()
            deadline = time.monotonic() + 30  # only bounds a broken implementation
            while not main_thread_is_in("_stop_all") and time.monotonic() < deadline:
                time.sleep(0.001)  # sleep-ok: polling for a condition, bounded by a deadline
            interrupt_main_thread()  # lands while the caller waits for this worker
            second_sent.set()

        hook_hashing(monkeypatch, interrupt_twice)
        with pytest.raises(KeyboardInterrupt):
            model.read(workers=2)
        assert second_sent.is_set()
        assert chunk_threads() == []
        assert open_fds() == fds

    def test_repeated_interrupted_reads_leave_nothing_behind(
        self, model: Model, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Many interrupted reads in a row leave no thread and no file descriptor."""
        fds = open_fds()
        for _ in range(20):
            hook_hashing(monkeypatch, interrupt_main_thread)
            with pytest.raises(KeyboardInterrupt):
                model.read()
        monkeypatch.undo()
        assert model.read() == model.data
        assert chunk_threads() == []
        assert open_fds() == fds
