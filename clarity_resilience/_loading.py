"""Verified loads: deserialize exactly the bytes a verified read returned.

A loader only ever sees bytes from :func:`~clarity_resilience.read_verified` (or a
manifest entry read the same way), and every load is reported as one outcome:
``ModelLoaded`` or ``ModelLoadFailed``.
"""

from __future__ import annotations

import math
import os
import pathlib
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload

from ._integrity import UNNAMED, _drop_frames, normalize_sha256, read_verified
from ._outcome import Attempt
from ._reasons import Reason
from .exceptions import ClarityResilienceError, ModelLoadError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._files import Entries
    from ._manifest import Manifest

__all__ = [
    "Payload",
    "VerifiedBytes",
    "Warmup",
    "deserialize_verified",
    "load_verified",
    "load_verified_files",
    "run_warmup",
]

#: What a loader is given: one file's verified bytes, several files' (a read-only
#: mapping), or the path of a verified private snapshot.
Payload = bytes | Mapping[str, bytes] | pathlib.Path

#: A check run on a freshly loaded model before it serves; it raises to refuse it.
Warmup = Callable[[Any], object]

T = TypeVar("T")


@overload
def load_verified(
    path: str | os.PathLike[str],
    *,
    sha256: str,
    loader: Callable[[bytes], T],
    size: int | None = None,
    model: str = UNNAMED,
    registry: CollectorRegistry | None = None,
) -> T: ...


@overload
def load_verified(
    path: str | os.PathLike[str],
    *,
    sha256: str,
    loader: None = None,
    size: int | None = None,
    model: str = UNNAMED,
    registry: CollectorRegistry | None = None,
) -> Any: ...


def load_verified(
    path: str | os.PathLike[str],
    *,
    sha256: str,
    loader: Callable[[bytes], Any] | None = None,
    size: int | None = None,
    model: str = UNNAMED,
    registry: CollectorRegistry | None = None,
) -> Any:
    """Verify a file and deserialize exactly the verified bytes.

    With a ``loader`` the result has the loader's return type; without one (``auto``,
    whose format is known only at run time) it is typed ``Any``.

    Args:
        path: The model file.
        sha256: The expected SHA-256 hex digest.
        loader: Turns verified bytes into a model; defaults to
            :func:`clarity_resilience.loaders.auto` (format from the leading bytes).
        size: The expected size in bytes.
        model: The ``model`` label for metrics and audit events.
        registry: The Prometheus registry to record into.

    Raises:
        IntegrityError: As :func:`read_verified`; the loader is never called.
        ModelLoadError: The loader rejected the verified bytes.
    """
    expected = normalize_sha256(sha256)

    def read() -> VerifiedBytes:
        data = read_verified(path, sha256=expected, size=size, model=model, registry=registry)
        return VerifiedBytes(data, expected)

    return deserialize_verified(read, loader=loader, model=model, registry=registry)[0]


class VerifiedBytes(NamedTuple):
    """Verified data for a loader, with the digest (version, signer) it matched.

    ``data`` is one file's bytes, a read-only mapping of several files' bytes, or the
    path of a verified snapshot; ``sha256`` is the file's digest, or for several files
    the digest of their sorted entry list.
    """

    data: Payload
    sha256: str
    version: str | None = None
    signer: str | None = None


def deserialize_verified(
    read: Callable[[], VerifiedBytes],
    *,
    loader: Callable[[Any], T] | None,
    model: str,
    registry: CollectorRegistry | None,
    warmup: Warmup | None = None,
    warmup_timeout: float | None = None,
) -> tuple[T, VerifiedBytes]:
    """Run ``loader`` on the data ``read()`` verified, and report the load as one outcome.

    ``read`` must return verified data (``read_verified``, ``Manifest.read_entry``,
    ``read_verified_files``, ``materialize``) and report its own check (see
    :mod:`._outcome`); its integrity errors pass through. With ``warmup``, the new model
    must pass it (see :func:`run_warmup`) before the load counts as a success. Reports
    the load once: ``ModelLoaded`` or ``ModelLoadFailed``.

    Returns:
        The model, and what its data was verified against (``data`` released).
    """
    if loader is None:
        from .loaders import auto

        loader = auto
    attempt = Attempt(model, registry)
    try:
        result, verified = _read_and_load(read, loader)
        if warmup is not None:
            run_warmup(warmup, result, warmup_timeout)
    except ClarityResilienceError as e:
        _drop_frames(e)
        attempt.load_failed(e)
        raise
    attempt.loaded(verified.sha256, verified.version, signer=verified.signer)
    return result, verified._replace(data=b"")


def run_warmup(warmup: Warmup, model: object, timeout: float | None) -> None:
    """Run ``warmup(model)``; refuse the model if it raises or outlasts ``timeout`` seconds.

    With a finite timeout the warm-up runs in a daemon thread and the caller stops
    waiting when the time is up (``None`` or ``math.inf``: it runs here, unbounded).
    Python cannot stop a thread: a warm-up that hangs keeps running in the background
    (holding the refused model) until it returns on its own.

    Raises:
        ModelLoadError: ``warmup_failed``: the warm-up raised or timed out.
    """
    name = getattr(warmup, "__name__", type(warmup).__name__)
    if timeout is None or math.isinf(timeout):
        try:
            warmup(model)
        except Exception as e:  # any warm-up failure refuses the version
            raise _warmup_failed(f"warm-up {name} failed: {type(e).__name__}: {e}") from e
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            warmup(model)
        except BaseException as e:  # noqa: BLE001  # handed to the waiting thread
            failure.append(e)

    thread = threading.Thread(target=run, name=f"clarity-warmup-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _warmup_failed(f"warm-up {name} did not finish within {timeout} s")
    if failure:
        error = failure.pop()
        raise _warmup_failed(f"warm-up {name} failed: {type(error).__name__}: {error}") from error


def _warmup_failed(message: str) -> ModelLoadError:
    return ModelLoadError(message, reason=Reason.WARMUP_FAILED)


def load_verified_files(
    directory: str | os.PathLike[str],
    manifest: Manifest,
    *,
    loader: Callable[[Mapping[str, bytes]], T],
    entries: Entries = None,
    symlink_root: str | os.PathLike[str] | None = None,
    model: str = UNNAMED,
    registry: CollectorRegistry | None = None,
) -> T:
    """Verify several listed files in parallel and load them together, all or nothing.

    Args:
        directory: The model directory.
        manifest: The trusted manifest (pinned, or from an authenticated signature).
        loader: Turns a read-only ``Mapping[str, bytes]`` (listed path -> verified
            bytes) into the model; called only if every selected file matched.
        entries: Which files: ``None``/``"*"`` (all), a name, a glob or a list of names.
        symlink_root: Allow listed files that are symlinks into this directory.
        model: The ``model`` label for metrics and audit events.
        registry: The Prometheus registry to record into.

    Raises:
        IntegrityError: A file failed (as :func:`read_verified_files`); the loader is
            never called.
        ModelLoadError: The loader rejected the verified files.
    """
    from ._files import as_mapping, read_verified_files, select_entries
    from ._origin_directory import selection_sha256

    def read() -> VerifiedBytes:
        attempt = Attempt(model, registry)
        with attempt.checking(os.fspath(directory)):
            names = select_entries(manifest, entries)
        files = read_verified_files(
            directory,
            manifest,
            names,
            symlink_root=symlink_root,
            model=model,
            registry=registry,
        )
        return VerifiedBytes(
            as_mapping(files), selection_sha256(manifest, names), manifest.version
        )

    return deserialize_verified(read, loader=loader, model=model, registry=registry)[0]


def _read_and_load(
    read: Callable[[], VerifiedBytes], loader: Callable[[Any], T]
) -> tuple[T, VerifiedBytes]:
    # A frame of its own: on failure, _drop_frames can clear it (an executing frame
    # cannot be cleared), so nothing keeps the bytes alive.
    verified = read()
    return _call_loader(loader, verified.data), verified


def _call_loader(loader: Callable[[Any], T], data: Payload) -> T:
    try:
        return loader(data)
    except ClarityResilienceError:
        raise
    except Exception as e:  # any loader failure on verified bytes is a typed load error
        name = getattr(loader, "__name__", type(loader).__name__)
        raise ModelLoadError(
            f"loader {name} rejected the verified bytes: {type(e).__name__}: {e}"
        ) from e
