"""Multi-file models: several files of one directory, verified in parallel, as one unit.

Real models are directories (sharded safetensors with an index, ``config.json``,
tokenizer files). :func:`read_verified_files` reads the files a manifest lists, each
opened and hashed like :func:`~clarity_resilience.read_verified`, in parallel threads,
and returns them only if *every* one matched: one bad shard refuses the whole version.
"""

from __future__ import annotations

import fnmatch
import os
import types
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, TypeVar

from ._integrity import UNNAMED, _drop_frames, read_verified_entry
from ._manifest import Manifest
from ._manifest_format import normalize_path
from ._reasons import Reason
from .exceptions import ManifestError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Entries", "as_mapping", "read_verified_files", "select_entries"]

T = TypeVar("T")

#: Which files of a manifest to load: ``None`` or ``"*"`` (all), one name, a glob
#: (``"*.safetensors"``), or a list of names.
Entries = str | Iterable[str] | None

_GLOB = frozenset("*?[")


def select_entries(manifest: Manifest, entries: Entries) -> list[str]:
    """Return the listed names ``entries`` selects, sorted; refuse an empty or unknown pick.

    Raises:
        ManifestError: A named file is not listed, or the selection is empty
            (``MANIFEST_INVALID``).
        TypeError: ``entries`` is not a str, an iterable of str, or None.
    """
    listed = manifest.entries
    if entries is None or entries == "*":
        return sorted(listed)
    if isinstance(entries, str):
        if _GLOB.intersection(entries):
            chosen = [name for name in listed if fnmatch.fnmatchcase(name, entries)]
            if not chosen:
                raise ManifestError(
                    f"no file the manifest lists matches {entries!r}",
                    expected=entries,
                    reason=Reason.MANIFEST_INVALID,
                )
            return sorted(chosen)
        entries = [entries]
    names = list(entries)
    if not all(isinstance(name, str) for name in names):
        raise TypeError("entries must be None, '*', a glob, a name, or a list of names")
    if not names:
        raise ManifestError("entries selects no file", reason=Reason.MANIFEST_INVALID)
    chosen = []
    for name in names:
        path = normalize_path(name)
        if path not in listed:
            raise ManifestError(
                f"{name!r} is not listed in the manifest",
                path=name,
                expected=name,
                reason=Reason.MANIFEST_INVALID,
            )
        chosen.append(path)
    return sorted(set(chosen))


def read_verified_files(
    directory: str | os.PathLike[str],
    manifest: Manifest,
    entries: Entries = None,
    *,
    symlink_root: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    model: str = UNNAMED,
    registry: CollectorRegistry | None = None,
) -> dict[str, bytes]:
    """Read and verify several listed files in parallel; return them only if all match.

    Args:
        directory: The model directory.
        manifest: The trusted manifest (pinned, or from an authenticated signature).
        entries: Which files: ``None``/``"*"`` (every listed file), a name, a glob, or a
            list of names.
        symlink_root: Allow listed files that are symlinks into this directory (the
            Hugging Face cache layout; see :meth:`Manifest.read_entry`).
        workers: Reading threads (default: one per CPU, at most one per file).
        model: The ``model`` label for metrics and audit events.
        registry: The Prometheus registry to record into.

    Returns:
        Relative path (as listed) -> verified bytes, for exactly the selected files.

    Raises:
        IntegrityError: The first file that failed (each failure is audited and counted
            on its own); nothing is returned, and no bytes are kept.
        ManifestError: ``entries`` names a file the manifest does not list.
    """
    root = os.fspath(directory)
    names = select_entries(manifest, entries)
    links = None if symlink_root is None else os.fspath(symlink_root)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    count = min(len(names), workers or os.cpu_count() or 1)

    def read(name: str) -> bytes:
        entry = manifest.entries[name]
        return read_verified_entry(
            root,
            name,
            sha256=entry.sha256,
            size=entry.size,
            symlink_root=links,
            chunks=(entry.chunk_size, entry.chunks) if entry.chunk_size else None,
            model=model,
            registry=registry,
        )

    if count == 1:
        return {name: read(name) for name in names}
    return _read_in_parallel(names, read, count)


def _read_in_parallel(
    names: list[str], read: Callable[[str], bytes], count: int
) -> dict[str, bytes]:
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="clarity-files") as pool:
        futures: dict[Future[bytes], str] = {pool.submit(read, name): name for name in names}
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            for future in pending:
                future.cancel()  # all-or-nothing: do not read what cannot be used
            wait(pending)
            # Of every read that ended in an error (those running at the first failure
            # included), report the first file by name: the same error whichever
            # thread happened to fail first.
            failed = [f for f in futures if not f.cancelled() and f.exception() is not None]
            first = min(failed, key=lambda f: futures[f])
            error = first.exception()
            # Keep none of the bytes that were read: the version is refused as a whole.
            futures.clear()
            done.clear()
            pending.clear()
            assert error is not None
            _drop_frames(error)
            raise error
        return {futures[f]: f.result() for f in sorted(done, key=lambda f: futures[f])}


def as_mapping(files: dict[str, bytes]) -> Mapping[str, bytes]:
    """Return a read-only view of ``files`` for a loader."""
    return types.MappingProxyType(files)
