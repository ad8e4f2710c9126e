"""Verified reads: hash the bytes you load, and load only the bytes you hashed.

The one rule (promise 1): a file is opened once, without following a symlink in its
last component; ``fstat`` must show a regular file of the expected size; its bytes are
read into private memory while being hashed, compared in constant time, and only that
memory is handed to a deserializer. Nothing re-opens the path after the check, so a
file swapped, truncated, grown or rewritten during or after the check can never reach
a loader.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from . import _bytesfill, _hashing
from ._hashing import DEFAULT_MAX_SIZE, Opened
from ._outcome import Attempt
from ._reasons import Reason
from .exceptions import IntegrityError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "DEFAULT_MAX_SIZE",
    "normalize_sha256",
    "read_verified",
    "read_verified_entry",
    "sha256_file",
    "verify_entry",
    "verify_file",
]

T = TypeVar("T")

#: Model label used when a bare function is called without ``model=``.
UNNAMED = "unnamed"

_HEX = frozenset("0123456789abcdef")


def normalize_sha256(sha256: str) -> str:
    """Return ``sha256`` in lower case, or raise ``ValueError`` if it is not 64 hex digits."""
    if not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a str of 64 hex digits, not {type(sha256).__name__}")
    digest = sha256.strip().lower()
    if len(digest) != 64 or not _HEX.issuperset(digest):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return digest


def _check_size_argument(name: str, value: object) -> None:
    if value is None:
        return
    # bool excluded: True is an int, but not a size.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 hex digest of a regular file (a symlink to one is followed).

    The file is opened without blocking (a FIFO is refused, not waited on) and hashed
    through a reused buffer. Use :func:`read_verified` instead when the bytes are going
    to be loaded.

    Raises:
        IntegrityError: Missing (``MISSING``), not a regular file (``UNSAFE_PATH``),
            unreadable or changed size while being hashed.
    """
    opened = _hashing.open_regular(os.fspath(path), follow=True)
    try:
        return _hashing.hash_fd(opened, opened.st.st_size)
    finally:
        opened.close()


def _read(opened: Opened, sha256: str, size: int | None, max_size: int | None) -> bytes:
    """Read the open file into private memory while hashing it; return it if it matches."""
    try:
        length = _hashing.check_size(opened, size, max_size)
        try:
            owner, view = _bytesfill.new_buffer(length)
        except MemoryError:
            raise IntegrityError(
                f"{opened.name} ({length} bytes) cannot be read: not enough memory",
                path=opened.name,
                reason=Reason.IO_ERROR,
            ) from None
        actual = _hashing.hash_fd(opened, length, view, owner)
        view.release()
        data = owner if isinstance(owner, bytes) else bytes(owner)  # a copy off CPython
        del owner
        _hashing.compare(opened.name, actual, sha256)
        _hashing.check_not_replaced(opened)
    finally:
        opened.close()
    return data


def _read_chunks(opened: Opened, size: int | None, chunks: tuple[int, tuple[str, ...]]) -> bytes:
    """Read the open file on several threads against per-chunk digests."""
    from ._chunked import read_opened_chunks  # imports this module

    try:
        if size is None:
            raise IntegrityError(
                f"{opened.name}: chunk digests need the file's size",
                path=opened.name,
                reason=Reason.MANIFEST_INVALID,
            )
        _hashing.check_size(opened, size, None)
    except BaseException:
        opened.close()
        raise
    return read_opened_chunks(opened, chunk_size=chunks[0], chunk_sha256=chunks[1])


def _verify(opened: Opened, sha256: str, size: int | None, max_size: int | None) -> int:
    try:
        length = _hashing.check_size(opened, size, max_size)
        actual = _hashing.hash_fd(opened, length)
    finally:
        opened.close()
    _hashing.compare(opened.name, actual, sha256)
    return length


def verify_file(
    path: str | os.PathLike[str],
    *,
    sha256: str,
    size: int | None = None,
    max_size: int | None = None,
) -> int:
    """Check a file like :func:`read_verified` without keeping its bytes; return its size.

    Same open rules (no final symlink, regular file, size checked first); reads through
    a reused buffer, so verifying a large directory costs one buffer per thread. Emits
    no events: callers (``Manifest.verify``) report one outcome for the whole check.

    Raises:
        ChecksumMismatchError, SizeMismatchError, IntegrityError: As :func:`read_verified`.
    """
    expected = normalize_sha256(sha256)
    _check_size_argument("size", size)
    _check_size_argument("max_size", max_size)
    return _verify(_hashing.open_regular(os.fspath(path)), expected, size, max_size)


def verify_entry(
    root: str,
    rel: str,
    *,
    sha256: str,
    size: int | None = None,
    symlink_root: str | None = None,
) -> int:
    """Check the file ``rel`` below ``root`` (opened component by component); return its size.

    Raises:
        ChecksumMismatchError, SizeMismatchError, IntegrityError: As :func:`verify_file`,
            or a symlink or missing directory on the way.
    """
    opened = _hashing.open_below(root, rel, symlink_root=symlink_root)
    return _verify(opened, normalize_sha256(sha256), size, None)


def read_verified(
    path: str | os.PathLike[str],
    *,
    sha256: str,
    size: int | None = None,
    max_size: int | None = None,
    model: str = UNNAMED,
    registry: CollectorRegistry | None = None,
) -> bytes:
    """Read a file once and return its bytes only if they match ``sha256`` (and ``size``).

    Args:
        path: The file. A symbolic link in its last component is refused.
        sha256: The expected SHA-256 hex digest.
        size: The expected size in bytes; checked before hashing and caps the read.
        max_size: Without ``size``, refuse a file larger than this before reading it
            (default :data:`DEFAULT_MAX_SIZE`, 16 GiB).
        model: The ``model`` label for metrics and audit events.
        registry: The Prometheus registry to record into (default registry if None).

    Returns:
        The verified bytes. Deserialize these, never the path.

    Raises:
        ChecksumMismatchError: The digest differs.
        SizeMismatchError: The size differs, changed during the read, or is over the cap.
        IntegrityError: Missing, unreadable, not a regular file, a symlink, replaced, or
            too large for the memory available (``io_error``).
    """
    expected = normalize_sha256(sha256)
    _check_size_argument("size", size)
    _check_size_argument("max_size", max_size)
    name = os.fspath(path)
    return _reported(
        lambda: _read(_hashing.open_regular(name), expected, size, max_size),
        name,
        model,
        registry,
    )


def read_verified_entry(
    root: str,
    rel: str,
    *,
    sha256: str,
    size: int | None = None,
    symlink_root: str | None = None,
    chunks: tuple[int, tuple[str, ...]] | None = None,
    model: str = UNNAMED,
    registry: CollectorRegistry | None = None,
) -> bytes:
    """Read the file ``rel`` below ``root`` like :func:`read_verified`.

    With ``chunks`` (a chunk size and one digest per chunk, from a trusted manifest),
    the chunks are read and verified in parallel threads instead (``size`` required).

    Each directory on the way is opened relative to its parent without following a
    symlink, so a directory swapped for a symlink is refused, never traversed. With
    ``symlink_root``, a file that is a symlink into that directory is allowed (its target
    is opened the same way).
    """
    expected = normalize_sha256(sha256)

    def read() -> bytes:
        opened = _hashing.open_below(root, rel, symlink_root=symlink_root)
        if chunks is None:
            return _read(opened, expected, size, None)
        return _read_chunks(opened, size, chunks)

    return _reported(
        read,
        os.path.join(root, *rel.split("/")),
        model,
        registry,
    )


def _reported(
    read: Callable[[], bytes], name: str, model: str, registry: CollectorRegistry | None
) -> bytes:
    """Run a verified read and report its one outcome (event and metric)."""
    attempt = Attempt(model, registry)
    try:
        data = read()
    except IntegrityError as e:
        _drop_frames(e)
        attempt.check_failed(name, e)
        raise
    attempt.check_passed(name, len(data))
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
