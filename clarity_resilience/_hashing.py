"""The one hashing primitive: open once, ``fstat``, hash while reading, compare in constant time.

Every file the library trusts (model files, manifest entries, manifests, cached
downloads) is opened here and nowhere else:

- ``O_NOFOLLOW`` (a symlink in the last component is refused), ``O_NONBLOCK`` (a FIFO
  planted in place of a file cannot hang the open) and ``O_CLOEXEC``;
- below a model directory, one component at a time relative to the parent's directory
  descriptor (``openat``), so a directory swapped for a symlink during a check is never
  traversed;
- ``fstat`` must show a regular file; its size is checked (and capped) before a byte is
  read, and caps the read;
- the bytes are hashed while they are read, a file that shrinks or grows during the read
  fails, and digests are compared with :func:`hmac.compare_digest`.

Large reads into memory are pipelined: the calling thread reads chunk n+1 while a helper
thread hashes chunk n (both release the GIL). The helper holds its own reference to the
buffer and talks to the reader only through C-level queues, so an interrupt
(``KeyboardInterrupt`` or any asynchronous exception) at any point leaves no thread
writing into freed memory, no thread blocked forever and no lock held.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import queue
import stat
import threading
import time
from typing import Any, NamedTuple

from ._reasons import Reason
from .exceptions import ChecksumMismatchError, IntegrityError, SizeMismatchError

__all__ = [
    "DEFAULT_MAX_SIZE",
    "Opened",
    "check_not_replaced",
    "check_size",
    "compare",
    "grew_error",
    "hash_fd",
    "hash_fd_chunks",
    "open_below",
    "open_regular",
    "read_small",
    "shrank_error",
]

#: The largest file read or verified when the caller gives no expected size: 16 GiB
#: (the largest single shard model hubs publish is well below). Pass ``size=`` (the
#: expected size) or ``max_size=`` to go beyond it.
DEFAULT_MAX_SIZE = 16 * 1024**3

# Reads into memory go in small chunks, each hashed while it is still in cache: hashing a
# large buffer back from main memory is measurably slower, and a small first chunk lets
# the pipeline start hashing at once.
CHUNK = 256 * 1024
# Chunks the reader may run ahead of the hashing thread (bounds how cold they get).
PIPELINE_DEPTH = 8
# Below this size a second thread costs more than it saves.
PIPELINE_MIN = 32 * 1024 * 1024
# Hashing without keeping the bytes reuses one buffer; large reads keep the GIL
# hand-offs of parallel workers rare.
REUSED_CHUNK = 8 * 1024 * 1024
# How often a waiting thread of the pipeline looks at its partner (seconds).
_POLL = 0.25
# A reader that hands the hashing thread nothing for this long has stopped (an interrupt
# that struck twice): the hashing thread gives up rather than wait forever.
_STALL_LIMIT = 60.0

OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NONBLOCK", 0)
)
_DIR_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_DIRECTORY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class Opened(NamedTuple):
    """An open regular file: its descriptor, ``fstat``, and how to name and re-find it."""

    fd: int
    st: os.stat_result
    name: str  # for messages and events
    leaf: str  # the path to ``os.stat`` again (relative to ``dir_fd`` when that is set)
    dir_fd: int | None = None

    def close(self) -> None:
        """Close the file (and the directory it was opened in)."""
        try:
            os.close(self.fd)
        finally:
            if self.dir_fd is not None:
                os.close(self.dir_fd)


def _open_error(name: str, error: OSError) -> IntegrityError:
    if isinstance(error, FileNotFoundError):
        return IntegrityError(f"{name} does not exist", path=name, reason=Reason.MISSING)
    if isinstance(error, PermissionError):
        return IntegrityError(
            f"{name} cannot be read: permission denied", path=name, reason=Reason.IO_ERROR
        )
    if error.errno == errno.ELOOP:
        return IntegrityError(
            f"{name} is a symbolic link; a verified file must be a regular file",
            path=name,
            reason=Reason.UNSAFE_PATH,
        )
    return IntegrityError(
        f"{name} cannot be opened: {error.strerror}", path=name, reason=Reason.IO_ERROR
    )


def open_regular(
    path: str, *, dir_fd: int | None = None, name: str | None = None, follow: bool = False
) -> Opened:
    """Open ``path`` (relative to ``dir_fd`` if given) as a regular file, never blocking.

    Args:
        path: The file.
        dir_fd: A directory descriptor ``path`` is relative to; the result owns it.
        name: How to name the file in messages (default: ``path``).
        follow: Follow a symlink in the last component (``sha256_file`` only).

    Raises:
        IntegrityError: Missing (``MISSING``), a symlink or not a regular file
            (``UNSAFE_PATH``), or unreadable (``IO_ERROR``).
    """
    shown = path if name is None else name
    flags = OPEN_FLAGS & ~getattr(os, "O_NOFOLLOW", 0) if follow else OPEN_FLAGS
    try:
        try:
            fd = os.open(path, flags, dir_fd=dir_fd)
        except OSError as e:
            raise _open_error(shown, e) from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IntegrityError(
                    f"{shown} is not a regular file", path=shown, reason=Reason.UNSAFE_PATH
                )
        except BaseException:
            os.close(fd)
            raise
    except BaseException:
        if dir_fd is not None:
            os.close(dir_fd)
        raise
    return Opened(fd, st, shown, path, dir_fd)


def open_below(root: str, rel: str, *, symlink_root: str | None = None) -> Opened:
    """Open the file ``rel`` below the directory ``root`` one component at a time.

    ``root`` itself may be a symlink (a ``current -> v3`` switch); nothing below it may
    be: each directory is opened relative to its parent with ``O_NOFOLLOW``, so a
    directory swapped for a symlink after any earlier check is refused, not traversed.

    With ``symlink_root`` (the Hugging Face cache layout, where a snapshot's files are
    symlinks into the repository's ``blobs/``), a *file* that is a symlink is allowed
    if its target lies inside ``symlink_root``: the link is read (never followed by the
    kernel), its target resolved against the link's directory, and opened the same way
    from ``symlink_root``, so a chain of links or a link on the target's way is refused.

    Raises:
        IntegrityError: A symlink on the way (``UNSAFE_PATH``), a missing component or one
            that is not a directory (``MISSING``), or an unreadable one (``IO_ERROR``).
    """
    parts = rel.split("/")
    name = os.path.join(root, *parts)
    try:
        dir_fd = os.open(root, _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise _below_error(name, root, e) from e
    try:
        current = root
        for part in parts[:-1]:
            current = os.path.join(current, part)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as e:
                raise _below_error(name, current, e, dir_fd=dir_fd, part=part) from e
            os.close(dir_fd)
            dir_fd = child
        target = None if symlink_root is None else _link_target(parts[-1], dir_fd, name)
    except BaseException:
        os.close(dir_fd)
        raise
    if target is None:
        return open_regular(parts[-1], dir_fd=dir_fd, name=name)
    os.close(dir_fd)
    assert symlink_root is not None
    return _open_link_target(root, rel, target, symlink_root, name)


def _link_target(leaf: str, dir_fd: int, name: str) -> str | None:
    """Return what the symlink ``leaf`` points to, or ``None`` if it is not a symlink."""
    try:
        return os.readlink(leaf, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.EINVAL:  # not a symlink: opened as a file
            return None
        raise _open_error(name, e) from e


def _open_link_target(root: str, rel: str, target: str, symlink_root: str, name: str) -> Opened:
    # The link's own directory was just opened component by component (no symlinks),
    # so resolving its target lexically from the real root is exact.
    base = os.path.dirname(os.path.join(os.path.realpath(root), *rel.split("/")))
    resolved = os.path.normpath(os.path.join(base, target))
    allowed = os.path.realpath(symlink_root)
    if os.path.commonpath([allowed, resolved]) != allowed or resolved == allowed:
        raise IntegrityError(
            f"{name} is a symbolic link to {target}, outside {symlink_root}",
            path=name,
            reason=Reason.UNSAFE_PATH,
        )
    opened = open_below(allowed, os.path.relpath(resolved, allowed))
    return opened._replace(name=name)


def _below_error(
    name: str, directory: str, error: OSError, *, dir_fd: int | None = None, part: str = ""
) -> IntegrityError:
    if error.errno in (errno.ENOTDIR, errno.ELOOP) and dir_fd is not None:
        try:
            is_link = stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link:
            return IntegrityError(
                f"{name} lies below the symbolic link {directory}; listed paths must not "
                "pass through symlinks",
                path=name,
                reason=Reason.UNSAFE_PATH,
            )
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        what = "" if error.errno == errno.ENOENT else f" ({directory} is not a directory)"
        return IntegrityError(f"{name} does not exist{what}", path=name, reason=Reason.MISSING)
    return IntegrityError(
        f"{name} cannot be reached: {error.strerror}", path=name, reason=Reason.IO_ERROR
    )


def check_size(opened: Opened, size: int | None, max_size: int | None) -> int:
    """Return how many bytes to read: ``size`` if the file has it, else its size if capped.

    Raises:
        SizeMismatchError: The file is not ``size`` bytes, or (no ``size`` given) it is
            larger than ``max_size`` (default :data:`DEFAULT_MAX_SIZE`).
    """
    actual = opened.st.st_size
    if size is not None:
        if actual != size:
            raise SizeMismatchError(
                f"{opened.name} is {actual} bytes, expected {size}",
                path=opened.name,
                expected=size,
                actual=actual,
            )
        return size
    cap = DEFAULT_MAX_SIZE if max_size is None else max_size
    if actual > cap:
        raise SizeMismatchError(
            f"{opened.name} is {actual} bytes, more than the {cap} bytes allowed without an "
            "expected size; pass size= (or a larger max_size=)",
            path=opened.name,
            expected=f"<={cap}",
            actual=actual,
        )
    return actual


def hash_fd(
    opened: Opened, length: int, view: memoryview | None = None, owner: object = None
) -> str:
    """Read exactly ``length`` bytes of ``opened`` (into ``view`` if given); return the digest.

    Args:
        opened: The open file.
        length: Its expected length; more or fewer bytes fail.
        view: A writable view of ``length`` bytes to keep the bytes in, or ``None`` to
            hash through a reused buffer.
        owner: The object that owns ``view``'s memory (kept alive by the hashing thread).

    Raises:
        SizeMismatchError: The file shrank or grew during the read.
        IntegrityError: A read failed (``IO_ERROR``).
    """
    hasher = hashlib.sha256()
    try:
        if view is None:
            _hash_reused(opened, hasher, length)
        elif length >= PIPELINE_MIN:
            _read_pipelined(opened, hasher, view, owner, length)
        else:
            _read_sequential(opened, hasher, view, length)
    except OSError as e:
        raise IntegrityError(
            f"{opened.name} could not be read: {e.strerror}",
            path=opened.name,
            reason=Reason.IO_ERROR,
        ) from e
    return hasher.hexdigest()


def shrank_error(opened: Opened, got: int, length: int) -> SizeMismatchError:
    return SizeMismatchError(
        f"{opened.name} shrank while being read ({got} of {length} bytes)",
        path=opened.name,
        expected=length,
        actual=got,
    )


def grew_error(opened: Opened, length: int) -> SizeMismatchError:
    return SizeMismatchError(
        f"{opened.name} grew while being read (more than {length} bytes)",
        path=opened.name,
        expected=length,
        actual=f">{length}",
    )


def _hash_reused(opened: Opened, hasher: Any, length: int) -> None:
    buffer = memoryview(bytearray(min(REUSED_CHUNK, max(length, 1))))
    total = 0
    while got := os.readv(opened.fd, [buffer]):
        total += got
        if total > length:  # stop at once: a file that keeps growing must not keep us
            raise grew_error(opened, length)
        hasher.update(buffer[:got])  # releases the GIL: other files hash meanwhile
    if total != length:
        raise shrank_error(opened, total, length)


def hash_fd_chunks(opened: Opened, length: int, chunk_size: int) -> tuple[str, tuple[str, ...]]:
    """Hash ``length`` bytes of ``opened`` whole and in ``chunk_size`` chunks, in one pass.

    Returns the whole file's digest and one digest per chunk (the last may be shorter;
    an empty file has one chunk), as a manifest records them for parallel reads.

    Raises:
        SizeMismatchError: The file shrank or grew during the read.
        IntegrityError: A read failed (``IO_ERROR``).
    """
    whole, part = hashlib.sha256(), hashlib.sha256()
    chunks: list[str] = []
    buffer = memoryview(bytearray(min(REUSED_CHUNK, max(length, 1))))
    total = in_part = 0
    try:
        while got := os.readv(opened.fd, [buffer[: min(len(buffer), chunk_size - in_part)]]):
            total += got
            if total > length:
                raise grew_error(opened, length)
            whole.update(buffer[:got])
            part.update(buffer[:got])
            in_part += got
            if in_part == chunk_size:
                chunks.append(part.hexdigest())
                part, in_part = hashlib.sha256(), 0
    except OSError as e:
        raise IntegrityError(
            f"{opened.name} could not be read: {e.strerror}",
            path=opened.name,
            reason=Reason.IO_ERROR,
        ) from e
    if total != length:
        raise shrank_error(opened, total, length)
    if in_part or not chunks:
        chunks.append(part.hexdigest())
    return whole.hexdigest(), tuple(chunks)


def _read_sequential(opened: Opened, hasher: Any, view: memoryview, length: int) -> None:
    pos = 0
    while pos < length:
        got = os.readv(opened.fd, [view[pos : pos + min(CHUNK, length - pos)]])
        if got == 0:
            raise shrank_error(opened, pos, length)
        hasher.update(view[pos : pos + got])
        pos += got
    if os.read(opened.fd, 1):
        raise grew_error(opened, length)


class _Pipeline:
    """What the reader and the hashing thread share (C-level queues and plain flags)."""

    __slots__ = ("abandoned", "cancelled", "credits", "failure", "todo")

    def __init__(self) -> None:
        self.todo: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self.credits: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.cancelled = False
        self.abandoned = False
        self.failure: BaseException | None = None


def _read_pipelined(
    opened: Opened, hasher: Any, view: memoryview, owner: object, length: int
) -> None:
    pipe = _Pipeline()
    worker = threading.Thread(
        target=_hash_chunks,
        # The worker holds ``owner`` (and ``view``) itself: whatever happens to the
        # reader, the memory it hashes stays alive until it has stopped.
        args=(hasher, view, owner, pipe, threading.current_thread()),
        name="clarity-hash",
        daemon=True,
    )
    # The end marker is put inside the try, and again by the handler: an interrupt
    # anywhere before it is handled here, so the worker always gets one and ends.
    started = False
    try:
        worker.start()
        started = True
        pos = ahead = 0
        while pos < length:
            if ahead >= PIPELINE_DEPTH:
                _wait_for_credit(pipe, worker, opened)
                ahead -= 1
            got = os.readv(opened.fd, [view[pos : pos + min(CHUNK, length - pos)]])
            if got == 0:
                raise shrank_error(opened, pos, length)
            pipe.todo.put((pos, pos + got))
            ahead += 1
            pos += got
        if os.read(opened.fd, 1):
            raise grew_error(opened, length)
        pipe.todo.put(None)
    except BaseException:
        pipe.cancelled = True
        pipe.todo.put(None)
        if started:
            worker.join()  # at most one chunk's hashing: it skips the rest
        raise
    # If this wait is interrupted, the worker still ends: it has its end marker.
    worker.join()
    if pipe.failure is not None:
        raise pipe.failure
    if pipe.abandoned:
        raise IntegrityError(
            f"{opened.name} could not be read: the read stalled", path=opened.name,
            reason=Reason.IO_ERROR,
        )  # fmt: skip


def _wait_for_credit(pipe: _Pipeline, worker: threading.Thread, opened: Opened) -> None:
    while True:
        try:
            pipe.credits.get(timeout=_POLL)
        except queue.Empty:
            if not worker.is_alive():
                raise IntegrityError(
                    f"{opened.name} could not be read: the hashing thread stopped",
                    path=opened.name,
                    reason=Reason.IO_ERROR,
                ) from None
            continue
        return


def _hash_chunks(
    hasher: Any,
    view: memoryview,
    owner: object,
    pipe: _Pipeline,
    reader: threading.Thread,
) -> None:
    del owner  # held by this thread's arguments until it returns
    idle_since = time.monotonic()
    while True:
        try:
            item = pipe.todo.get(timeout=_POLL)
        except queue.Empty:
            stalled = time.monotonic() - idle_since > _STALL_LIMIT
            if pipe.cancelled or not reader.is_alive() or stalled:
                pipe.abandoned = True
                return
            continue
        if item is None:
            return
        idle_since = time.monotonic()
        if not pipe.cancelled and pipe.failure is None:
            try:
                hasher.update(view[item[0] : item[1]])
            except BaseException as e:  # noqa: BLE001 - re-raised by the reader after join()
                pipe.failure = e
        pipe.credits.put(None)


def compare(name: str, actual: str, expected: str) -> None:
    """Raise :class:`ChecksumMismatchError` unless the digests match (constant time)."""
    if not hmac.compare_digest(actual, expected):
        raise ChecksumMismatchError(
            f"{name} has SHA-256 {actual}, expected {expected}",
            path=name,
            expected=expected,
            actual=actual,
        )


def check_not_replaced(opened: Opened) -> None:
    """Fail if the path no longer names the inode that was read (replaced during the read)."""
    try:
        now = os.stat(opened.leaf, dir_fd=opened.dir_fd, follow_symlinks=False)
    except FileNotFoundError as e:
        raise IntegrityError(
            f"{opened.name} was removed while being read", path=opened.name, reason=Reason.MISSING
        ) from e
    except OSError as e:
        raise IntegrityError(
            f"{opened.name} could not be re-checked: {e.strerror}",
            path=opened.name,
            reason=Reason.IO_ERROR,
        ) from e
    if (now.st_dev, now.st_ino) != (opened.st.st_dev, opened.st.st_ino):
        raise IntegrityError(
            f"{opened.name} was replaced while being read",
            path=opened.name,
            reason=Reason.UNSAFE_PATH,
        )


def read_small(path: str, *, max_size: int) -> bytes:
    """Return the whole content of a small file (a manifest, a signature) opened safely.

    Opened like a model file (no symlink, never blocking, regular file), refused before
    reading if larger than ``max_size``.

    Raises:
        IntegrityError: Missing (``MISSING``), not a regular file or a symlink
            (``UNSAFE_PATH``), unreadable or larger than ``max_size`` (``IO_ERROR``).
    """
    opened = open_regular(path)
    try:
        if opened.st.st_size > max_size:
            raise IntegrityError(
                f"{path} is larger than {max_size} bytes",
                path=path,
                reason=Reason.IO_ERROR,
            )
        chunks: list[bytes] = []
        total = 0
        try:
            # Read to the end, at most max_size + 1 bytes: a file growing meanwhile is caught.
            want = min(opened.st.st_size, max_size) + 1
            while chunk := os.read(opened.fd, min(want, max_size + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > max_size:
                    raise IntegrityError(
                        f"{path} is larger than {max_size} bytes",
                        path=path,
                        reason=Reason.IO_ERROR,
                    )
        except OSError as e:
            raise IntegrityError(
                f"{path} cannot be read: {e.strerror}", path=path, reason=Reason.IO_ERROR
            ) from e
    finally:
        opened.close()
    return b"".join(chunks)
