"""Verified reads of one large file on several cores, against per-chunk SHA-256 digests.

SHA-256 of one file is sequential: one core hashes about 1.3 GB/s, however many there
are. A manifest that records the digest of every fixed-size chunk of a file lets each
chunk be read and hashed on its own thread, into its own slice of one buffer.

The rules are those of :func:`~clarity_resilience.read_verified` (promise 1): the file
is opened once, without following a final symlink and without blocking on a FIFO;
``fstat`` must show a regular file of the expected size; only that many bytes are read,
each chunk is compared in constant time with its expected digest, and the buffer is
returned only if every chunk matched, the file did not grow, and the path still names
the inode that was read. Any failure, in any worker, fails the whole read.

Chunking: chunk ``i`` covers bytes ``[i * chunk_size, min((i + 1) * chunk_size, size))``;
there are ``ceil(size / chunk_size)`` chunks, and at least one (an empty file has one
chunk, the digest of no bytes). The last chunk may be shorter.

Interrupts: workers hold strong references to the buffer and to the open file, and
the caller never returns (or raises) before every worker has stopped: a
``KeyboardInterrupt`` in the caller sets a stop flag that workers check between blocks,
cancels the chunks not started, and waits for the running ones (a further interrupt
during that wait is deferred until it is over, then raised).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence

from ._bytesfill import new_buffer
from ._hashing import Opened, check_not_replaced, open_regular
from ._integrity import normalize_sha256
from ._reasons import Reason
from .exceptions import ChecksumMismatchError, IntegrityError, SizeMismatchError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ChunkDigests",
    "chunk_digests",
    "read_opened_chunks",
    "read_verified_chunks",
]

#: A chunk size that gives every core several chunks of a multi-GiB file while keeping
#: the manifest short (32 digests for 2 GiB).
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
# Each worker reads and hashes its chunk in blocks small enough to be hashed while
# still in the CPU cache, and checks the stop flag between blocks.
_BLOCK = 1024 * 1024
THREAD_NAME_PREFIX = "clarity-chunk"


@dataclasses.dataclass(frozen=True)
class ChunkDigests:
    """The per-chunk SHA-256 digests of a file, as a manifest would record them.

    Attributes:
        size: The file's size in bytes (what was read).
        chunk_size: The size of every chunk but the last.
        sha256: One lower-case hex digest per chunk, in file order.
    """

    size: int
    chunk_size: int
    sha256: tuple[str, ...]


def chunk_count(size: int, chunk_size: int) -> int:
    """Return how many chunks of ``chunk_size`` cover ``size`` bytes (at least one)."""
    return max(1, -(-size // chunk_size))


def _check_chunk_size(chunk_size: int) -> None:
    if type(chunk_size) is not int or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _default_workers(workers: int | None, chunks: int) -> int:
    if workers is None:
        workers = os.cpu_count() or 1
    if type(workers) is not int or workers <= 0:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    return min(workers, chunks)


#: Processes bytes ``[start, end)`` of a file: ``(fd, path, start, end, stop) -> sha256``.
_ChunkWork = Callable[[int, str, int, int, threading.Event], str]


class _Stopped(Exception):
    """A worker saw the stop flag: another chunk failed, or the caller was interrupted."""


def _read_chunk(
    fd: int,
    path: str,
    start: int,
    end: int,
    stop: threading.Event,
    *,
    buffer: memoryview,
    owner: object = None,
) -> str:
    """Read bytes ``[start, end)`` of ``fd`` into ``buffer`` while hashing; return the digest.

    ``buffer`` is referenced by this frame until the worker returns, so memory the
    caller dropped is never written to.
    """
    hasher = hashlib.sha256()
    pos = start
    while pos < end:
        if stop.is_set():
            raise _Stopped
        block = buffer[pos : min(pos + _BLOCK, end)]
        got = os.preadv(fd, [block], pos)
        if got == 0:
            raise SizeMismatchError(
                f"{path} shrank while being read (no byte at offset {pos})",
                path=path,
                expected=end,
                actual=pos,
            )
        hasher.update(block[:got])  # releases the GIL: other chunks hash meanwhile
        pos += got
    return hasher.hexdigest()


def _hash_chunk(fd: int, path: str, start: int, end: int, stop: threading.Event) -> str:
    """Hash bytes ``[start, end)`` of ``fd`` through a small private buffer."""
    buffer = memoryview(bytearray(min(_BLOCK, end - start)))
    hasher = hashlib.sha256()
    pos = start
    while pos < end:
        if stop.is_set():
            raise _Stopped
        got = os.preadv(fd, [buffer[: min(_BLOCK, end - pos)]], pos)
        if got == 0:
            raise SizeMismatchError(
                f"{path} shrank while being read (no byte at offset {pos})",
                path=path,
                expected=end,
                actual=pos,
            )
        hasher.update(buffer[:got])
        pos += got
    return hasher.hexdigest()


def _stop_all(
    stop: threading.Event,
    futures: Sequence[concurrent.futures.Future[str]],
    executor: concurrent.futures.ThreadPoolExecutor,
) -> None:
    """Stop the workers and wait for them, even through further interrupts.

    Workers check ``stop`` between blocks, so the wait is short. An interrupt during it
    is kept and raised once every worker has stopped (never leave one running: it
    holds the buffer and the file descriptor the caller is about to close).
    """
    deferred: BaseException | None = None
    while True:
        try:
            stop.set()
            for future in futures:
                future.cancel()
            # Waiting on the futures survives an interrupt (it is simply repeated);
            # once they are done, no worker touches the buffer or the descriptor.
            concurrent.futures.wait(futures)
            break
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the workers stop
            deferred = e
    # The idle threads exit at once. Join them with signals held back: on CPython
    # 3.11-3.12 an interrupted Thread.join() marks a thread that still runs as stopped.
    with _signals_held():
        executor.shutdown(wait=True, cancel_futures=True)
    if deferred is not None:
        raise deferred


# Signals a process cannot defer without dying or misbehaving.
_UNBLOCKABLE = {
    getattr(signal, name)
    for name in ("SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT")
    if hasattr(signal, name)
}


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold back the signals that have a Python handler (they run when this block ends)."""
    if (
        not hasattr(signal, "pthread_sigmask")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield  # Python signal handlers only ever run in the main thread
        return
    handled = {
        number
        for number in signal.valid_signals()
        if number not in _UNBLOCKABLE and callable(signal.getsignal(number))
    }
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _as_integrity_error(error: BaseException, path: str) -> IntegrityError:
    """Return the error a failed worker is reported as (always typed: fail closed)."""
    if isinstance(error, IntegrityError):
        return error
    if isinstance(error, OSError):
        detail = error.strerror or type(error).__name__
        result = IntegrityError(
            f"{path} could not be read: {detail}", path=path, reason=Reason.IO_ERROR
        )
    else:
        result = IntegrityError(
            f"{path} could not be read: {type(error).__name__} in a reading thread",
            path=path,
            reason=Reason.IO_ERROR,
        )
    result.__cause__ = error
    return result


def _run_chunks(
    fd: int, path: str, size: int, *, chunk_size: int, workers: int, work: _ChunkWork
) -> list[str]:
    """Run ``work`` on every chunk in a thread pool; return the digests in file order.

    Raises the first failure (an :class:`IntegrityError`) after every worker stopped.
    """
    count = chunk_count(size, chunk_size)
    stop = threading.Event()
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix=THREAD_NAME_PREFIX
    )
    futures: list[concurrent.futures.Future[str]] = []
    try:
        # Submitting starts the threads: an interrupt inside Thread.start() would leave
        # a thread the executor does not know of, so signals wait until it is done.
        try:
            with _signals_held():
                for index in range(count):
                    start = index * chunk_size
                    end = min(start + chunk_size, size)
                    futures.append(executor.submit(work, fd, path, start, end, stop))
        except Exception as e:  # e.g. no thread could be started: fail typed
            raise _as_integrity_error(e, path) from e
        done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        failures = [
            error
            for future in futures
            if future in done
            and not future.cancelled()
            and (error := future.exception()) is not None
            and not isinstance(error, _Stopped)
        ]
        if failures:
            stop.set()
            raise _as_integrity_error(failures[0], path)
        return [future.result() for future in futures]
    finally:
        _stop_all(stop, futures, executor)


def _open_sized(name: str, size: int) -> Opened:
    opened = open_regular(name)
    st = opened.st
    if st.st_size != size:
        opened.close()
        raise SizeMismatchError(
            f"{name} is {st.st_size} bytes, expected {size}",
            path=name,
            expected=size,
            actual=st.st_size,
        )
    return opened


def _check_not_grown(fd: int, name: str, size: int) -> None:
    try:
        extra = os.pread(fd, 1, size)
    except OSError as e:
        raise IntegrityError(
            f"{name} could not be read: {e.strerror}", path=name, reason=Reason.IO_ERROR
        ) from e
    if extra:
        raise SizeMismatchError(
            f"{name} grew while being read (more than {size} bytes)",
            path=name,
            expected=size,
            actual=f">{size}",
        )


def read_verified_chunks(
    path: str | os.PathLike[str],
    *,
    size: int,
    chunk_size: int,
    chunk_sha256: Sequence[str],
    workers: int | None = None,
) -> memoryview:
    """Read a file once, on several threads, and return it if every chunk matches.

    Args:
        path: The file. A symbolic link in its last component is refused.
        size: The expected size in bytes; checked before reading and caps the read.
        chunk_size: The size of every chunk but the last (as the digests were made).
        chunk_sha256: The expected SHA-256 hex digest of every chunk, in file order
            (``ceil(size / chunk_size)`` of them, at least one).
        workers: Reading threads (default: one per CPU, at most one per chunk).

    Returns:
        A read-only view of the verified bytes (one buffer, kept alive by the view).

    Raises:
        ValueError: ``size``, ``chunk_size`` or ``workers`` is invalid, a digest is
            malformed, or the number of digests does not match ``size``.
        ChecksumMismatchError: A chunk's digest differs (``expected``/``actual`` are
            that chunk's digests; the message names its index).
        SizeMismatchError: The size differs, or changed during the read.
        IntegrityError: Missing, unreadable, not a regular file, a symlink, replaced,
            or a reading thread failed.
    """
    if type(size) is not int or size < 0:
        raise ValueError(f"size must be a non-negative int, got {size!r}")
    _check_chunk_size(chunk_size)
    count = chunk_count(size, chunk_size)
    expected = [normalize_sha256(digest) for digest in chunk_sha256]
    if len(expected) != count:
        raise ValueError(
            f"{size} bytes in chunks of {chunk_size} need {count} digests, got {len(expected)}"
        )
    threads = _default_workers(workers, count)
    data = read_opened_chunks(
        _open_sized(os.fspath(path), size),
        chunk_size=chunk_size,
        chunk_sha256=expected,
        workers=threads,
    )
    return memoryview(data).toreadonly()


def read_opened_chunks(
    opened: Opened, *, chunk_size: int, chunk_sha256: Sequence[str], workers: int | None = None
) -> bytes:
    """Read an open file of checked size on several threads; return it if every chunk matches.

    The file's size (``opened.st``) must already be checked against what the manifest
    says; ``chunk_sha256`` holds normalized digests, one per chunk. The file is closed.
    The result is ``bytes`` (filled in place where the interpreter allows it).

    Raises:
        ChecksumMismatchError, SizeMismatchError, IntegrityError: As
            :func:`read_verified_chunks`.
    """
    name = opened.name
    size = opened.st.st_size
    count = chunk_count(size, chunk_size)
    if len(chunk_sha256) != count:
        opened.close()
        raise IntegrityError(
            f"{name}: {size} bytes in chunks of {chunk_size} need {count} digests, "
            f"the manifest lists {len(chunk_sha256)}",
            path=name,
            reason=Reason.MANIFEST_INVALID,
        )
    threads = _default_workers(workers, count)
    try:
        try:
            owner, view = new_buffer(size)
        except MemoryError as e:
            raise IntegrityError(
                f"{name} could not be read: no memory for {size} bytes",
                path=name,
                reason=Reason.IO_ERROR,
            ) from e
        # The workers get the owner too: the view alone does not keep the memory alive.
        fill = functools.partial(_read_chunk, buffer=view, owner=owner)
        actual = _run_chunks(
            opened.fd, name, size, chunk_size=chunk_size, workers=threads, work=fill
        )
        _check_not_grown(opened.fd, name, size)
        for index, (got, want) in enumerate(zip(actual, chunk_sha256, strict=True)):
            if not hmac.compare_digest(got, want):
                raise ChecksumMismatchError(
                    f"{name} chunk {index} (bytes {index * chunk_size}-"
                    f"{min((index + 1) * chunk_size, size) - 1}) has SHA-256 {got}, "
                    f"expected {want}",
                    path=name,
                    expected=want,
                    actual=got,
                )
        check_not_replaced(opened)  # before closing: it may need the directory's fd
    finally:
        opened.close()
    return owner if isinstance(owner, bytes) else bytes(owner)


def chunk_digests(
    path: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
) -> ChunkDigests:
    """Return the SHA-256 digest of every chunk of a file (to write into a manifest).

    The file is opened like :func:`read_verified_chunks` opens it and hashed chunk by
    chunk in parallel threads, through small buffers (the bytes are not kept).

    Raises:
        ValueError: ``chunk_size`` or ``workers`` is invalid.
        SizeMismatchError: The file changed size while being hashed.
        IntegrityError: Missing, unreadable, not a regular file, or a symlink.
    """
    _check_chunk_size(chunk_size)
    name = os.fspath(path)
    opened = open_regular(name)
    fd = opened.fd
    try:
        size = opened.st.st_size
        threads = _default_workers(workers, chunk_count(size, chunk_size))
        digests = _run_chunks(
            fd, name, size, chunk_size=chunk_size, workers=threads, work=_hash_chunk
        )
        _check_not_grown(fd, name, size)
    finally:
        os.close(fd)
    return ChunkDigests(size=size, chunk_size=chunk_size, sha256=tuple(digests))
