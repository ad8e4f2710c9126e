"""Atomic file writes: readers see the old file or the complete new one, never a part.

The one pattern, used for every file the library writes (cache downloads, manifests):
a new temporary file with a unique random name is created with ``O_EXCL`` in the
target's directory (so on the same filesystem, and never through a planted symlink),
written, ``fsync``-ed, renamed over the target with ``os.replace`` and the directory
``fsync``-ed. On any failure, including ``KeyboardInterrupt`` and other asynchronous
exceptions, the temporary file is removed and the target is left untouched. A process
killed mid-write leaves at most a hidden temporary file, never a complete-looking one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["DEFAULT_MODE", "atomic_writer", "write_atomic"]

#: Mode of a new file: readable by the serving user (mkstemp's 0600 would not be).
DEFAULT_MODE = 0o644
_TEMP_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_BINARY", 0)
)
# A directory fsync these errors refuse is one the filesystem cannot make (not a failure).
_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF})


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str], *, mode: int | None = None, suffix: str = ".tmp"
) -> Iterator[BinaryIO]:
    """Yield a binary file to stream into; on success it atomically replaces ``path``.

    The file is a temporary ``.<name>.<16 hex digits><suffix>`` beside ``path``. When the
    ``with`` block ends normally it is flushed, ``fsync``-ed, given ``mode`` and renamed
    over ``path``, and the directory is ``fsync``-ed. When the block raises (anything,
    ``KeyboardInterrupt`` included), or committing fails, the temporary file is removed,
    ``path`` is untouched and the exception propagates.

    Args:
        path: The file to create or replace. A symlink at ``path`` is replaced itself,
            never written through.
        mode: Permission bits of the new file, exactly (the umask does not apply).
            ``None``: those of the file being replaced, else :data:`DEFAULT_MODE`.
        suffix: Ends the temporary file's name (``.part`` for downloads).

    Raises:
        OSError: The temporary file could not be created, written or renamed.
    """
    target = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(target))
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = DEFAULT_MODE
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(8)}{suffix}")
    fd = os.open(temporary, _TEMP_FLAGS, 0o600)
    committed = False
    try:
        f = open(fd, "wb")  # noqa: SIM115 - closed by the with below
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temporary, target)
        committed = True
    finally:
        if not committed:
            # Also reached on KeyboardInterrupt: the half-written file must not stay.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    fsync_directory(directory)


def write_atomic(
    path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *, mode: int | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_writer`).

    Raises:
        OSError: Writing failed; ``path`` is untouched and no temporary file is left.
    """
    with atomic_writer(path, mode=mode) as f:
        f.write(data)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable; a no-op where the platform cannot.

    Raises:
        OSError: The directory fsync failed with a real I/O error.
    """
    if os.name == "nt":
        return  # directories cannot be opened on Windows; NTFS journals the rename
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except PermissionError:
        return  # a write-only directory cannot be opened to fsync it; the rename stands
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)
