"""Verified reads: hash the bytes you load, and load only the bytes you hashed.

The one rule (promise 1): a file is opened once, without following a symlink in its
last component; ``fstat`` must show a regular file of the expected size; its bytes are
read into private memory while being hashed, compared in constant time, and only that
memory is handed to a deserializer. Nothing re-opens the path after the check, so a
file swapped, truncated, grown or rewritten during or after the check can never reach
a loader.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import hmac
import os
import queue
import stat
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, TypeVar

from ._reasons import Reason
from .exceptions import (
    ChecksumMismatchError,
    IntegrityError,
    SizeMismatchError,
)
from .instrumentation import (
    Emitter,
    IntegrityCheckFailed,
    IntegrityCheckPassed,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["normalize_sha256", "read_verified", "sha256_file", "verify_file"]

T = TypeVar("T")

#: Model label used when a bare function is called without ``model=``.
UNNAMED = "unnamed"

# read_verified reads (and hands to the hashing thread) small chunks, each hashed while
# it is still in cache: hashing a large buffer back from main memory is measurably
# slower, and a small first chunk lets the pipeline start hashing at once.
_CHUNK = 256 * 1024
# Chunks the reader may run ahead of the hashing thread (bounds how cold they get).
_PIPELINE_DEPTH = 8
# verify_file's reused buffer: large reads keep the GIL hand-offs of parallel workers rare.
_VERIFY_CHUNK = 8 * 1024 * 1024
# Below this size a second thread costs more than it saves.
_PIPELINE_MIN = 32 * 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO planted in place of a model must not hang; fstat then refuses it.
_OPEN_FLAGS |= getattr(os, "O_NONBLOCK", 0)
_HEX = frozenset("0123456789abcdef")


def normalize_sha256(sha256: str) -> str:
    """Return ``sha256`` in lower case, or raise ``ValueError`` if it is not 64 hex digits."""
    if not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a str of 64 hex digits, not {type(sha256).__name__}")
    digest = sha256.strip().lower()
    if len(digest) != 64 or not _HEX.issuperset(digest):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return digest


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 hex digest of a file, streaming it with a large buffer.

    Hashing releases the GIL, so several files can be hashed in parallel threads.
    Use :func:`read_verified` instead when the bytes are going to be loaded.
    """
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _new_bytes(size: int) -> tuple[bytes | None, memoryview]:
    """Allocate an uninitialised ``bytes`` of ``size`` and a writable view of it.

    Loaders such as ``safetensors`` and ``onnxruntime`` accept only ``bytes``; reading
    into a ``bytearray`` and converting would hold the file twice. CPython's own
    ``FileIO.readall`` fills a fresh bytes object the same way, and nobody else holds a
    reference to it until it is returned. Elsewhere (and for 0 or 1 byte, which CPython
    may share) the bytes come from a ``bytearray`` copied after the read: ``None`` is
    returned and the caller copies.
    """
    if _PyBytes_FromStringAndSize is None or size < 2:
        return None, memoryview(bytearray(size))
    data: bytes = _PyBytes_FromStringAndSize(None, size)
    offset = bytes.__basicsize__ - 1  # ob_sval: the payload after the object header
    view = memoryview((ctypes.c_char * size).from_address(id(data) + offset)).cast("B")
    return data, view


def _bytes_allocator() -> Any:
    if sys.implementation.name != "cpython":
        return None
    alloc = ctypes.pythonapi.PyBytes_FromStringAndSize
    alloc.restype = ctypes.py_object
    alloc.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
    return alloc


_PyBytes_FromStringAndSize = _bytes_allocator()


def _read_exactly(fd: int, view: memoryview, size: int, path: str) -> str:
    """Fill ``view`` with exactly ``size`` bytes of ``fd`` while hashing them."""
    hasher = hashlib.sha256()
    chunks: queue.Queue[memoryview | None] | None = None
    worker: threading.Thread | None = None
    failure: list[BaseException] = []
    if size >= _PIPELINE_MIN:
        # Hash chunk n on a second thread while chunk n+1 is read (both release the GIL).
        chunks = queue.Queue(maxsize=_PIPELINE_DEPTH)
        worker = threading.Thread(
            target=_hash_chunks,
            args=(hasher, chunks, failure),
            name="clarity-hash",
            daemon=True,
        )
        worker.start()
    try:
        pos = 0
        while pos < size:
            got = os.readv(fd, [view[pos : pos + min(_CHUNK, size - pos)]])
            if got == 0:
                raise SizeMismatchError(
                    f"{path} shrank while being read ({pos} of {size} bytes)",
                    path=path,
                    expected=size,
                    actual=pos,
                )
            if chunks is None:
                hasher.update(view[pos : pos + got])
            else:
                chunks.put(view[pos : pos + got])
            pos += got
        if os.read(fd, 1):
            raise SizeMismatchError(
                f"{path} grew while being read (more than {size} bytes)",
                path=path,
                expected=size,
                actual=f">{size}",
            )
    finally:
        if chunks is not None and worker is not None:
            chunks.put(None)
            worker.join()
    if failure:
        raise failure[0]
    return hasher.hexdigest()


def _hash_chunks(
    hasher: Any, chunks: queue.Queue[memoryview | None], failure: list[BaseException]
) -> None:
    while (chunk := chunks.get()) is not None:
        if failure:
            continue  # keep draining: the reader must never block on a full queue
        try:
            hasher.update(chunk)
        except BaseException as e:  # noqa: BLE001 - re-raised by the reader after join()
            failure.append(e)


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open ``path`` without following a final symlink; return the fd and its fstat."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError as e:
        raise IntegrityError(f"{path} does not exist", path=path, reason=Reason.MISSING) from e
    except PermissionError as e:
        raise IntegrityError(
            f"{path} cannot be read: permission denied", path=path, reason=Reason.IO_ERROR
        ) from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise IntegrityError(
                f"{path} is a symbolic link; a verified file must be a regular file",
                path=path,
                reason=Reason.UNSAFE_PATH,
            ) from e
        raise IntegrityError(
            f"{path} cannot be opened: {e.strerror}", path=path, reason=Reason.IO_ERROR
        ) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(
                f"{path} is not a regular file", path=path, reason=Reason.UNSAFE_PATH
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_verified(path: str, sha256: str, size: int | None) -> bytes:
    fd, st = _open_regular(path)
    try:
        if size is not None and st.st_size != size:
            raise SizeMismatchError(
                f"{path} is {st.st_size} bytes, expected {size}",
                path=path,
                expected=size,
                actual=st.st_size,
            )
        length = st.st_size
        data, view = _new_bytes(length)
        try:
            actual = _read_exactly(fd, view, length, path)
        except OSError as e:
            raise IntegrityError(
                f"{path} could not be read: {e.strerror}", path=path, reason=Reason.IO_ERROR
            ) from e
        if data is None:
            data = bytes(view)
        view.release()
    finally:
        os.close(fd)
    if not hmac.compare_digest(actual, sha256):
        raise ChecksumMismatchError(
            f"{path} has SHA-256 {actual}, expected {sha256}",
            path=path,
            expected=sha256,
            actual=actual,
        )
    _check_not_replaced(path, st)
    return data


def verify_file(path: str | os.PathLike[str], *, sha256: str, size: int | None = None) -> int:
    """Check a file like :func:`read_verified` without keeping its bytes; return its size.

    Same open rules (no final symlink, regular file, size checked first); reads through
    a reused buffer, so verifying a large directory costs one buffer per thread. Emits
    no events: callers (``Manifest.verify``) report one outcome for the whole check.

    Raises:
        ChecksumMismatchError, SizeMismatchError, IntegrityError: As :func:`read_verified`.
    """
    name = os.fspath(path)
    expected = normalize_sha256(sha256)
    fd, st = _open_regular(name)
    try:
        if size is not None and st.st_size != size:
            raise SizeMismatchError(
                f"{name} is {st.st_size} bytes, expected {size}",
                path=name,
                expected=size,
                actual=st.st_size,
            )
        hasher = hashlib.sha256()
        buf = memoryview(bytearray(_VERIFY_CHUNK))
        total = 0
        try:
            while got := os.readv(fd, [buf]):
                hasher.update(buf[:got])
                total += got
                if total > st.st_size:
                    raise SizeMismatchError(
                        f"{name} grew while being read", path=name, expected=st.st_size,
                        actual=f">{st.st_size}",
                    )  # fmt: skip
        except OSError as e:
            raise IntegrityError(
                f"{name} could not be read: {e.strerror}", path=name, reason=Reason.IO_ERROR
            ) from e
        if total != st.st_size:
            raise SizeMismatchError(
                f"{name} shrank while being read ({total} of {st.st_size} bytes)",
                path=name,
                expected=st.st_size,
                actual=total,
            )
    finally:
        os.close(fd)
    actual = hasher.hexdigest()
    if not hmac.compare_digest(actual, expected):
        raise ChecksumMismatchError(
            f"{name} has SHA-256 {actual}, expected {expected}",
            path=name,
            expected=expected,
            actual=actual,
        )
    return total


def _check_not_replaced(path: str, st: os.stat_result) -> None:
    """Fail if ``path`` no longer names the inode that was read (replaced during the read)."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError as e:
        raise IntegrityError(
            f"{path} was removed while being read", path=path, reason=Reason.MISSING
        ) from e
    except OSError as e:
        raise IntegrityError(
            f"{path} could not be re-checked: {e.strerror}", path=path, reason=Reason.IO_ERROR
        ) from e
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise IntegrityError(
            f"{path} was replaced while being read", path=path, reason=Reason.UNSAFE_PATH
        )


def read_verified(
    path: str | os.PathLike[str],
    *,
    sha256: str,
    size: int | None = None,
    model: str = UNNAMED,
    registry: CollectorRegistry | None = None,
) -> bytes:
    """Read a file once and return its bytes only if they match ``sha256`` (and ``size``).

    Args:
        path: The file. A symbolic link in its last component is refused.
        sha256: The expected SHA-256 hex digest.
        size: The expected size in bytes; checked before hashing and caps the read.
        model: The ``model`` label for metrics and audit events.
        registry: The Prometheus registry to record into (default registry if None).

    Returns:
        The verified bytes. Deserialize these, never the path.

    Raises:
        ChecksumMismatchError: The digest differs.
        SizeMismatchError: The size differs, or changed during the read.
        IntegrityError: Missing, unreadable, not a regular file, a symlink, or replaced.
    """
    expected = normalize_sha256(sha256)
    # type() rather than isinstance(): True is an int, but not a size.
    if size is not None and (type(size) is not int or size < 0):
        raise ValueError(f"size must be a non-negative int, got {size!r}")
    name = os.fspath(path)
    emitter = Emitter(registry)
    start = time.perf_counter()
    try:
        data = _read_verified(name, expected, size)
    except IntegrityError as e:
        _drop_frames(e)
        emitter.emit(
            IntegrityCheckFailed(
                model=model,
                path=name,
                reason=e.reason,
                error_type=type(e).__name__,
                detail=str(e),
                duration=time.perf_counter() - start,
            )
        )
        raise
    emitter.emit(
        IntegrityCheckPassed(
            model=model, path=name, size=len(data), duration=time.perf_counter() - start
        )
    )
    return data


def _drop_frames(error: BaseException) -> None:
    """Clear the locals of the finished frames that ``error`` (and its causes) hold.

    Those frames hold the buffer that was read or handed to the loader. A caller that
    keeps the exception (a guard's last error) would otherwise keep a refused model's
    bytes alive next to the model that is serving. Tracebacks still print in full.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__
