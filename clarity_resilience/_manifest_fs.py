"""The filesystem side of manifests: walking, resolving and hashing without following symlinks.

The directory a manifest describes may itself be reached through a symlink (a
``current -> v3`` deployment switch); nothing below it may be one. A symlinked
directory on the way to a listed file is refused outright rather than resolved and
judged, which is simpler and leaves no "does it stay inside?" question to get wrong.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor

from ._hashing import hash_fd, hash_fd_chunks, open_below, read_small
from ._reasons import Reason
from .exceptions import IntegrityError, ManifestError

__all__ = [
    "check_root",
    "find_extras",
    "hash_file",
    "list_files",
    "read_manifest_text",
    "resolve",
    "walk",
    "worker_pool",
]

# A manifest larger than this is not a manifest (someone passed the model file itself).
_MAX_MANIFEST_BYTES = 64 * 1024 * 1024

#: Called with (relative path, path, error) when a directory cannot be listed.
WalkErrorHandler = Callable[[str, str, OSError], None]


def check_root(root: str) -> IntegrityError | None:
    """Return why ``root`` is not a usable model directory, or ``None`` if it is."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return IntegrityError(f"{root} does not exist", path=root, reason=Reason.MISSING)
    except OSError as e:
        return IntegrityError(
            f"{root} cannot be read: {e.strerror}", path=root, reason=Reason.IO_ERROR
        )
    if not stat.S_ISDIR(st.st_mode):
        return IntegrityError(f"{root} is not a directory", path=root, reason=Reason.MISSING)
    return None


def walk(
    root: str, skip: frozenset[str], *, on_error: WalkErrorHandler
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Yield ``(relative path, entry)`` for everything below ``root`` that is not a directory.

    Symlinks are yielded, never followed; ``skip`` paths (and what is below them) are
    left out; directories that cannot be listed go to ``on_error``.
    """
    stack = [("", root)]
    while stack:
        prefix, path = stack.pop()
        try:
            with os.scandir(path) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as e:
            on_error(prefix.rstrip("/") or ".", path, e)
            continue
        for entry in entries:
            rel = prefix + entry.name
            if rel in skip:
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append((rel + "/", entry.path))
            else:
                yield rel, entry


def _raise_walk_error(rel: str, path: str, error: OSError) -> None:
    raise ManifestError(
        f"{path} cannot be listed: {error.strerror}", path=path, reason=Reason.IO_ERROR
    ) from error


def list_files(root: str, skip: frozenset[str]) -> list[str]:
    """Return the relative path of every regular file below ``root``, sorted.

    Raises:
        ManifestError: ``root`` is not a directory, something below it is a symlink or
            a special file (``UNSAFE_PATH``), a directory cannot be listed, or there is
            no file at all.
    """
    problem = check_root(root)
    if problem is not None:
        raise ManifestError(str(problem), path=root, reason=problem.reason)
    names: list[str] = []
    for rel, entry in walk(root, skip, on_error=_raise_walk_error):
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            kind = "a symbolic link" if entry.is_symlink() else "not a regular file"
            raise ManifestError(
                f"{entry.path} is {kind}; a manifest covers regular files only",
                path=entry.path,
                reason=Reason.UNSAFE_PATH,
            )
        names.append(rel)
    if not names:
        raise ManifestError(f"{root} contains no files to list", path=root)
    return sorted(names)


def read_manifest_text(path: str) -> str:
    """Return the text of a manifest file, undecodable bytes kept as surrogates.

    The manifest is opened like a model file: never blocking (a FIFO is refused, not
    waited on), no symlink in its last component, a regular file no larger than 64 MiB.

    Raises:
        ManifestError: Missing (``MISSING``), a symlink or special file
            (``UNSAFE_PATH``), unreadable or too large (``IO_ERROR``).
    """
    try:
        data = read_small(path, max_size=_MAX_MANIFEST_BYTES)
    except IntegrityError as e:
        raise ManifestError(f"manifest {e}", path=path, reason=e.reason) from e
    # surrogateescape keeps a bad byte on its own line, so the error can name the line.
    return data.decode("utf-8", "surrogateescape")


def find_extras(
    root: str, listed: Collection[str], skip: frozenset[str]
) -> list[tuple[str, IntegrityError]]:
    """Return ``(relative path, problem)`` for everything below ``root`` that is not listed.

    A directory that cannot be listed is a problem too (its contents are unknown).
    """
    # A symlink in place of a listed file's directory is reported by that file, not here.
    parents = {path[:i] for path in listed for i, char in enumerate(path) if char == "/"}
    found: list[tuple[str, IntegrityError]] = []

    def unreadable(rel: str, path: str, error: OSError) -> None:
        message = f"{path} cannot be listed: {error.strerror}"
        found.append((rel, IntegrityError(message, path=path, reason=Reason.IO_ERROR)))

    for rel, entry in walk(root, skip, on_error=unreadable):
        if rel not in listed and rel not in parents:
            message = f"{entry.path} is not listed in the manifest"
            found.append(
                (rel, IntegrityError(message, path=entry.path, reason=Reason.MANIFEST_INVALID))
            )
    return found


def worker_pool(workers: int | None) -> ThreadPoolExecutor:
    """Return the thread pool that hashes files (``workers`` threads, default one per CPU).

    Raises:
        ValueError: ``workers`` is less than 1.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    # Threads suffice: hashlib releases the GIL while hashing large buffers.
    return ThreadPoolExecutor(
        max_workers=workers or os.cpu_count() or 1, thread_name_prefix="clarity-manifest"
    )


def resolve(root: str, rel: str) -> str:
    """Return ``root/rel`` after checking that no directory on the way is a symlink.

    The last component is left to the opener, which refuses a symlink there itself.

    Raises:
        IntegrityError: A directory on the way is a symlink (``UNSAFE_PATH``), missing
            or not a directory (``MISSING``), or cannot be examined (``IO_ERROR``).
    """
    parts = rel.split("/")
    full = os.path.join(root, *parts)
    current = root
    for part in parts[:-1]:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise IntegrityError(
                f"{full} does not exist", path=full, reason=Reason.MISSING
            ) from None
        except OSError as e:
            raise IntegrityError(
                f"{full} cannot be reached: {e.strerror}", path=full, reason=Reason.IO_ERROR
            ) from e
        if stat.S_ISLNK(st.st_mode):
            raise IntegrityError(
                f"{full} lies below the symbolic link {current}; listed paths must not "
                "pass through symlinks",
                path=full,
                reason=Reason.UNSAFE_PATH,
            )
        if not stat.S_ISDIR(st.st_mode):
            raise IntegrityError(
                f"{full} does not exist ({current} is not a directory)",
                path=full,
                reason=Reason.MISSING,
            )
    return full


def hash_file(
    root: str, rel: str, chunk_size: int | None = None
) -> tuple[str, int, tuple[str, ...]]:
    """Return the SHA-256 digest, size and chunk digests of the file ``rel`` below ``root``.

    Opened component by component without following a symlink (like a verified read).
    With ``chunk_size``, the per-chunk digests are computed in the same pass (else the
    tuple is empty).

    Raises:
        ManifestError: A symlink or special file (``UNSAFE_PATH``), an unreadable file
            (``IO_ERROR``), or one whose size changed while it was hashed.
    """
    try:
        opened = open_below(root, rel)
        try:
            size = opened.st.st_size
            if chunk_size is None:
                return hash_fd(opened, size), size, ()
            digest, chunks = hash_fd_chunks(opened, size, chunk_size)
            return digest, size, chunks
        finally:
            opened.close()
    except ManifestError:
        raise
    except IntegrityError as e:
        raise ManifestError(
            str(e), path=e.path, expected=e.expected, actual=e.actual, reason=e.reason
        ) from e
