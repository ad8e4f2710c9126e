"""Verified loads: deserialize exactly the bytes a verified read returned.

A loader only ever sees bytes from :func:`~clarity_resilience.read_verified` (or a
manifest entry read the same way), and every load is reported as one outcome:
``ModelLoaded`` or ``ModelLoadFailed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, overload

from ._integrity import UNNAMED, _drop_frames, normalize_sha256, read_verified
from ._outcome import Attempt
from .exceptions import ClarityResilienceError, ModelLoadError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["VerifiedBytes", "deserialize_verified", "load_verified"]

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
    """Bytes that matched a digest, with the digest (and version) they matched."""

    data: bytes
    sha256: str
    version: str | None = None


def deserialize_verified(
    read: Callable[[], VerifiedBytes],
    *,
    loader: Callable[[bytes], T] | None,
    model: str,
    registry: CollectorRegistry | None,
) -> tuple[T, VerifiedBytes]:
    """Run ``loader`` on the bytes ``read()`` verified, and report the load as one outcome.

    ``read`` must return verified bytes (``read_verified``, ``Manifest.read_entry``) and
    report its own check (see :mod:`._outcome`); its integrity errors pass through.
    Reports the load once: ``ModelLoaded`` or ``ModelLoadFailed``.

    Returns:
        The model, and what its bytes were verified against (``data`` released).
    """
    if loader is None:
        from .loaders import auto

        loader = auto
    attempt = Attempt(model, registry)
    try:
        result, verified = _read_and_load(read, loader)
    except ClarityResilienceError as e:
        _drop_frames(e)
        attempt.load_failed(e)
        raise
    attempt.loaded(verified.sha256, verified.version)
    return result, verified._replace(data=b"")


def _read_and_load(
    read: Callable[[], VerifiedBytes], loader: Callable[[bytes], T]
) -> tuple[T, VerifiedBytes]:
    # A frame of its own: on failure, _drop_frames can clear it (an executing frame
    # cannot be cleared), so nothing keeps the bytes alive.
    verified = read()
    return _call_loader(loader, verified.data), verified


def _call_loader(loader: Callable[[bytes], T], data: bytes) -> T:
    try:
        return loader(data)
    except ClarityResilienceError:
        raise
    except Exception as e:  # any loader failure on verified bytes is a typed load error
        name = getattr(loader, "__name__", type(loader).__name__)
        raise ModelLoadError(
            f"loader {name} rejected the verified bytes: {type(e).__name__}: {e}"
        ) from e
