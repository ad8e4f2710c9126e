"""Where a model version comes from, and how its bytes are read and verified.

A ``ModelGuard`` serves versions from one of three origins: a file with a pinned digest,
an entry of a manifest (read again at every load), or a remote source with a local
cache. Whatever the origin, the bytes handed to the loader are read once and verified
(``read_verified``); nothing here deserializes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING

from ._integrity import normalize_sha256, read_verified
from ._loading import VerifiedBytes
from ._reasons import Reason
from .exceptions import IntegrityError, ManifestError
from .instrumentation import Emitter, IntegrityCheckFailed

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._manifest import Manifest
    from .sources import CachedSource

__all__ = ["Origin", "make_origin"]


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    """One model version's origin and what its bytes must hash to."""

    path: str | None
    sha256: str | None  # None: the manifest names it, read at load time
    size: int | None
    version: str | None
    manifest: Manifest | str | None = None
    entry: str | None = None
    source: CachedSource | None = None
    expected_version: str | None = None

    def read(self, *, model: str, registry: CollectorRegistry | None) -> VerifiedBytes:
        """Return the verified bytes of this version (one read, one hash)."""
        if self.manifest is not None:
            return self._read_manifest_entry(model, registry)
        if self.source is not None:
            return self._read_from_source(self.source, model, registry)
        assert self.path is not None
        assert self.sha256 is not None
        data = read_verified(
            self.path, sha256=self.sha256, size=self.size, model=model, registry=registry
        )
        return VerifiedBytes(data, self.sha256, self.version)

    def replaced(
        self,
        path: str | os.PathLike[str] | None,
        sha256: str | None,
        size: int | None,
        version: str | None,
    ) -> Origin:
        """Return this origin with a new path, digest, size or version (a reload).

        Raises:
            ValueError: A digest or size for an origin whose manifest or source fixes it.
        """
        if (self.manifest is not None or self.source is not None) and (
            sha256 is not None or size is not None
        ):
            raise ValueError("a manifest or source fixes the digest; pass manifest= or source=")
        changed = path is not None or sha256 is not None
        return dataclasses.replace(
            self,
            path=os.fspath(path) if path is not None else self.path,
            sha256=normalize_sha256(sha256) if sha256 is not None else self.sha256,
            # A new file without a new size: its size is unknown, not the old one.
            size=size if size is not None or not changed else None,
            version=version if version is not None else self.version,
        )

    def _read_manifest_entry(
        self, model: str, registry: CollectorRegistry | None
    ) -> VerifiedBytes:
        assert self.path is not None
        manifest, entry = self._open_manifest(model, registry)
        item = manifest.entries[entry]
        data = manifest.read_entry(self.path, entry, model=model, registry=registry)
        return VerifiedBytes(data, item.sha256, self.version or manifest.version)

    def _read_from_source(
        self, source: CachedSource, model: str, registry: CollectorRegistry | None
    ) -> VerifiedBytes:
        """Read the source's cached copy, fetching (or re-fetching) it when needed.

        A cached copy is read and verified once. If it is missing, or fails (a tampered
        cache: audited once, then evicted), the source downloads it again (verified while
        it streams) and the bytes are read and verified once more on their way in.
        """

        def verified_copy(path: str | os.PathLike[str]) -> VerifiedBytes:
            data = read_verified(
                path, sha256=source.sha256, size=source.size, model=model, registry=registry
            )
            return VerifiedBytes(data, source.sha256, self.version)

        if os.path.isfile(source.path):
            try:
                return verified_copy(source.path)
            except IntegrityError:
                # Audited by read_verified. The source is the truth, not the cache: drop
                # the bad copy so fetch downloads afresh (without hashing it again).
                source.evict()
        return verified_copy(source.fetch(model=model, registry=registry))

    def _open_manifest(
        self, model: str, registry: CollectorRegistry | None
    ) -> tuple[Manifest, str]:
        """Read the manifest now (so every load sees the current one) and pick the entry."""
        from ._manifest import Manifest

        start = time.perf_counter()
        source = self.manifest
        try:
            manifest = source if isinstance(source, Manifest) else Manifest.read(str(source))
            entry = self.entry
            if entry is None:
                if len(manifest.entries) != 1:
                    raise ManifestError(
                        f"the manifest lists {len(manifest.entries)} files; pass entry=",
                        path=str(source),
                    )
                entry = next(iter(manifest.entries))
            if entry not in manifest.entries:
                raise ManifestError(
                    f"the manifest does not list {entry!r}", path=str(source), expected=entry
                )
            if self.expected_version is not None and manifest.version != self.expected_version:
                raise ManifestError(
                    f"the manifest is for version {manifest.version!r}, "
                    f"expected {self.expected_version!r}",
                    path=str(source),
                    expected=self.expected_version,
                    actual=manifest.version,
                    reason=Reason.VERSION_MISMATCH,
                )
        except ManifestError as e:
            # A missing or malformed manifest is an integrity failure like a bad digest.
            Emitter(registry).emit(
                IntegrityCheckFailed(
                    model=model,
                    path=str(source) if not isinstance(source, Manifest) else "<manifest>",
                    reason=e.reason,
                    error_type=type(e).__name__,
                    detail=str(e),
                    duration=time.perf_counter() - start,
                )
            )
            raise
        return manifest, entry


def make_origin(  # noqa: PLR0917 - private; mirrors ModelGuard's keywords
    path: str | os.PathLike[str] | None,
    sha256: str | None,
    size: int | None,
    manifest: Manifest | str | os.PathLike[str] | None,
    entry: str | None,
    source: CachedSource | None,
    version: str | None,
    expected_version: str | None = None,
) -> Origin:
    """Return the origin described by ModelGuard's keywords.

    Raises:
        ValueError: Not exactly one origin, or an incomplete one.
    """
    origins = sum(x is not None for x in (sha256, manifest, source))
    if origins != 1:
        raise ValueError("give exactly one of sha256= (with path=), manifest= or source=")
    if source is not None:
        if path is not None:
            raise ValueError("source= brings its own path; do not pass path=")
        return Origin(None, source.sha256, source.size, version, source=source)
    if path is None:
        raise ValueError("path= is required with sha256= (the file) or manifest= (the directory)")
    if sha256 is not None:
        return Origin(os.fspath(path), normalize_sha256(sha256), size, version)
    assert manifest is not None
    if not isinstance(manifest, str | os.PathLike):  # in memory: check the entry now
        names = manifest.entries
        if entry is None and len(names) != 1:
            raise ValueError(f"the manifest lists {len(names)} files; pass entry=")
        if entry is not None and entry not in names:
            raise ValueError(f"entry {entry!r} is not in the manifest")
    return Origin(
        os.fspath(path),
        None,
        None,
        version,
        manifest=manifest if not isinstance(manifest, str | os.PathLike) else os.fspath(manifest),
        entry=entry,
        expected_version=expected_version,
    )
