"""Verified private snapshots, for frameworks that load from a path.

transformers, vLLM, onnxruntime with external data and TensorRT take a *directory*,
never bytes, and read it whenever they like: verifying the source and then handing
over its path would let a change in between reach the framework. :func:`materialize`
copies the listed files into a private, content-addressed directory while hashing the
very bytes it writes, and returns the snapshot's path only if every file matched.

- The snapshot lives in ``into/<manifest digest>/``: directories 0700, files read-only.
  ``into`` must be a real directory owned by this user and not writable by others.
- Files are built in ``into/.partial-*/`` (``O_EXCL``, ``fsync``), then the whole
  directory is renamed into place and ``into`` is ``fsync``-ed: a crash leaves nothing
  that looks complete, and a concurrent builder's finished snapshot wins.
- Each file is first cloned (``FICLONE``: a copy-on-write reflink, on btrfs, XFS,
  bcachefs...) and the *clone* is then read back and hashed: later writes to the source
  never reach a reflink, so the snapshot holds exactly what was hashed. Where the
  filesystem cannot clone (ext4, tmpfs, across filesystems) the file is read once,
  hashed, and the very same bytes are written. ``copy_file_range`` is not used: on ext4
  it is an in-kernel copy, and hashing its result needs a second read, which measured
  no faster than the single read-hash-write pass.
- The source can change during or after the copy: what was hashed is what the snapshot
  holds, and nobody else can write the snapshot.
- A second call re-verifies the existing snapshot before returning it; one that was
  edited is audited, removed and built again from the (verified) source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

from . import _hashing
from ._atomic import fsync_directory
from ._files import Entries, select_entries
from ._integrity import UNNAMED
from ._manifest import Manifest, ManifestEntry
from ._outcome import Attempt
from ._reasons import Reason
from .exceptions import IntegrityError
from .instrumentation import Emitter

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

if sys.platform == "win32":
    from pathlib import WindowsPath as _ConcretePath
else:
    from pathlib import PosixPath as _ConcretePath

__all__ = ["Snapshot", "materialize"]

#: How a snapshot's files got there: cloned (reflink), copied through this process,
#: both (some files each), or an existing verified snapshot was reused.
CopyMethod = Literal["reflink", "copy", "mixed", "reused"]

#: ``ioctl(dst, FICLONE, src)`` (linux/fs.h): share the source's extents copy-on-write.
FICLONE = 0x40049409
#: What an ioctl answers when this filesystem (or this pair of files) cannot clone.
_NO_CLONE = frozenset(
    {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}
)

_CHUNK = 1024 * 1024
_DIR_MODE = 0o700
_FILE_MODE = 0o444
_PARTIAL = ".partial-"
_WRITE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class Snapshot(_ConcretePath):
    """The path of a verified snapshot, with how its files were made (``method``)."""

    #: ``"reflink"``, ``"copy"``, ``"mixed"`` or ``"reused"`` (paths derived from a
    #: snapshot, such as ``snapshot / "config.json"``, say ``"reused"``).
    method: CopyMethod = "reused"


def _snapshot(path: str, method: CopyMethod) -> Snapshot:
    snapshot = Snapshot(path)
    snapshot.method = method
    return snapshot


def materialize(
    directory: str | os.PathLike[str],
    *,
    manifest: Manifest,
    into: str | os.PathLike[str],
    entries: Entries = None,
    symlink_root: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    model: str = UNNAMED,
    registry: CollectorRegistry | None = None,
) -> Snapshot:
    """Copy the listed files into a private verified snapshot and return its path.

    Args:
        directory: The model directory (the source).
        manifest: The trusted manifest (pinned, or from an authenticated signature).
        into: The cache directory holding snapshots (created 0700 if missing).
        entries: Which files to include (default: every listed file).
        symlink_root: Allow listed source files that are symlinks into this directory
            (the Hugging Face cache layout).
        workers: Copying threads (default: one per CPU).
        model: The ``model`` label for metrics and audit events.
        registry: The Prometheus registry to record into.

    Returns:
        The snapshot directory (a ``pathlib.Path``): every selected file, verified, at its
        listed path. Its ``method`` says how the files were made: ``"reflink"`` (cloned,
        then the clone hashed), ``"copy"`` (read, hashed, written), ``"mixed"`` or
        ``"reused"`` (an existing snapshot, re-verified).

    Raises:
        IntegrityError: A file did not match (audited and counted), or ``into`` is not a
            private directory (``UNSAFE_PATH``); nothing that looks complete is left.
    """
    names = select_entries(manifest, entries)
    emitter = Emitter(registry)
    cache = _private_cache(os.fspath(into))
    key = _snapshot_key(manifest, names)
    final = os.path.join(cache, key)
    selected = Manifest((manifest.entries[name] for name in names), version=manifest.version)
    if os.path.lexists(final) and _still_valid(selected, final, model, registry):
        return _snapshot(final, "reused")
    partial = tempfile.mkdtemp(prefix=_PARTIAL, dir=cache)
    try:
        job = _Job(
            os.fspath(directory),
            partial,
            None if symlink_root is None else os.fspath(symlink_root),
            model,
            emitter,
        )
        methods = _copy_all(job, selected, workers)
        _seal(partial)
        try:
            os.rename(partial, final)
        except OSError:
            # Another builder finished first (or a bad copy is still in the way).
            if not _still_valid(selected, final, model, registry):
                raise
            shutil.rmtree(partial, ignore_errors=True)
            methods = {"reused"}
        fsync_directory(cache)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    method: CopyMethod = "mixed" if len(methods) > 1 else next(iter(methods), "copy")
    return _snapshot(final, method)


def _snapshot_key(manifest: Manifest, names: Iterable[str]) -> str:
    """Name a snapshot by what it must hold: the digest of its canonical entry list."""
    hasher = hashlib.sha256()
    for name in names:
        entry = manifest.entries[name]
        hasher.update(f"{entry.sha256} {entry.size} {name}\0".encode())
    return hasher.hexdigest()


def _private_cache(path: str) -> str:
    """Create ``path`` (0700) if needed; refuse one others could write or swap."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, mode=_DIR_MODE)
    try:
        st = os.lstat(path)
    except OSError as e:
        raise IntegrityError(
            f"cache directory {path} cannot be used: {e.strerror}",
            path=path,
            reason=Reason.IO_ERROR,
        ) from e
    problem = None
    if not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory (or is a symbolic link)"
    elif st.st_uid != os.getuid():
        problem = "is owned by another user"
    elif st.st_mode & 0o022:
        problem = "is writable by other users"
    if problem is not None:
        raise IntegrityError(
            f"cache directory {path} {problem}; snapshots need a private directory",
            path=path,
            reason=Reason.UNSAFE_PATH,
        )
    return path


def _still_valid(
    manifest: Manifest, snapshot: str, model: str, registry: CollectorRegistry | None
) -> bool:
    """Re-verify an existing snapshot; remove it (audited) if it was edited."""
    try:
        manifest.verify(snapshot, model=model, registry=registry)
    except IntegrityError:
        # Audited by verify. Remove it so it is rebuilt from the verified source.
        with contextlib.suppress(OSError):
            _make_writable(snapshot)
        shutil.rmtree(snapshot, ignore_errors=True)
        return False
    return True


@dataclasses.dataclass(frozen=True)
class _Job:
    """Where one snapshot is copied from and to, and how it is reported."""

    source: str
    partial: str
    symlink_root: str | None
    model: str
    emitter: Emitter


def _copy_all(job: _Job, manifest: Manifest, workers: int | None) -> set[CopyMethod]:
    """Copy and verify every file; return the methods used (empty for no files)."""
    names = list(manifest.entries)
    for name in names:  # directories first, so the copies can run in any order
        parent = os.path.dirname(os.path.join(job.partial, *name.split("/")))
        os.makedirs(parent, mode=_DIR_MODE, exist_ok=True)
    count = min(len(names), workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="clarity-copy") as pool:
        results = [pool.submit(_copy_one, job, name, manifest.entries[name]) for name in names]
        errors = [r.exception() for r in results]
    failures = [e for e in errors if e is not None]
    if failures:
        raise failures[0]
    return {r.result() for r in results}


def _copy_one(job: _Job, name: str, entry: ManifestEntry) -> CopyMethod:
    attempt = Attempt(job.model, emitter=job.emitter)
    shown = os.path.join(job.source, *name.split("/"))
    method: CopyMethod = "reflink"
    with attempt.checking(shown):
        opened = _hashing.open_below(job.source, name, symlink_root=job.symlink_root)
        try:
            length = _hashing.check_size(opened, entry.size, None)
            target = os.path.join(job.partial, *name.split("/"))
            actual = _clone_hashing(opened, target, length)
            if actual is None:
                method = "copy"
                actual = _copy_hashing(opened, target, length)
        finally:
            opened.close()
        _hashing.compare(shown, actual, entry.sha256)
    attempt.check_passed(shown, length)
    return method


def _clone(src_fd: int, dst_fd: int) -> bool:
    """Reflink ``src_fd`` into ``dst_fd``; return False if the filesystem cannot clone."""
    import fcntl  # POSIX only: imported here so the module imports everywhere

    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as e:
        if e.errno in _NO_CLONE:
            return False
        raise
    return True


def _clone_hashing(opened: _hashing.Opened, target: str, length: int) -> str | None:
    """Reflink the source to ``target``, then hash the clone; None if it cannot clone.

    The digest is that of the clone read back, never of the source: a reflink is
    copy-on-write, so later writes to the source cannot reach it, and what was hashed
    is what the snapshot holds even if the source changed during the clone.
    """
    if sys.platform == "win32":
        return None
    out = _create(target)
    cloned = False
    try:
        try:
            cloned = _clone(opened.fd, out)
            if cloned:
                os.fchmod(out, _FILE_MODE)
                os.fsync(out)
        except OSError as e:
            raise IntegrityError(
                f"{opened.name} could not be cloned: {e.strerror}",
                path=opened.name,
                reason=Reason.IO_ERROR,
            ) from e
    finally:
        os.close(out)
    if not cloned:
        # The fallback creates it again (O_EXCL): if it cannot be removed, that fails
        # as a typed io_error.
        with contextlib.suppress(OSError):
            os.unlink(target)
        return None
    clone = _hashing.open_regular(target, name=opened.name)
    try:
        return _hashing.hash_fd(clone, length)
    finally:
        clone.close()


def _create(target: str) -> int:
    try:
        return os.open(target, _WRITE_FLAGS, 0o600)
    except OSError as e:
        raise IntegrityError(
            f"{target} cannot be created: {e.strerror}", path=target, reason=Reason.IO_ERROR
        ) from e


def _copy_hashing(opened: _hashing.Opened, target: str, length: int) -> str:
    """Write exactly the bytes read to ``target`` while hashing them; return the digest.

    What is hashed is the buffer that is written, so the copy holds exactly the bytes
    whose digest is returned, whatever the source does meanwhile.
    """
    hasher = hashlib.sha256()
    buffer = memoryview(bytearray(min(_CHUNK, max(length, 1))))
    out = _create(target)
    try:
        total = 0
        while got := os.readv(opened.fd, [buffer]):
            total += got
            if total > length:
                raise _hashing.grew_error(opened, length)
            chunk = buffer[:got]
            hasher.update(chunk)
            view = chunk
            while view:
                view = view[os.write(out, view) :]
        if total != length:
            raise _hashing.shrank_error(opened, total, length)
        os.fchmod(out, _FILE_MODE)
        os.fsync(out)
    except OSError as e:
        raise IntegrityError(
            f"{opened.name} could not be copied: {e.strerror}",
            path=opened.name,
            reason=Reason.IO_ERROR,
        ) from e
    finally:
        os.close(out)
    return hasher.hexdigest()


def _seal(partial: str) -> None:
    """Make every directory of a finished snapshot durable (files were fsync-ed)."""
    for current, _dirs, _files in os.walk(partial, topdown=False):
        fsync_directory(current)


def _make_writable(snapshot: str) -> None:
    # Read-only files in 0700 directories can be removed by their owner; directories
    # are made writable in case someone tightened them.
    for current, _dirs, _files in os.walk(snapshot):
        os.chmod(current, _DIR_MODE)
