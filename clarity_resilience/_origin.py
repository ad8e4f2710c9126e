"""Where a model version comes from, and how its bytes are read and verified.

An *origin* is a small object behind one protocol, :class:`Origin`: it yields verified
bytes and owns its own validation. ``ModelGuard`` serves from any origin and knows none
of them; a new kind (a signed manifest, several files, an object store) is a new class
here, not a new branch in the guard. Whatever the origin, the bytes handed to the loader
are read once and verified; nothing here deserializes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, ClassVar, Protocol, TypedDict, runtime_checkable

from ._integrity import normalize_sha256, read_verified
from ._loading import VerifiedBytes
from ._outcome import Attempt
from ._reasons import Reason
from .exceptions import IntegrityError, ManifestError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from cryptography.hazmat.primitives.asymmetric import ec
    from prometheus_client import CollectorRegistry

    from ._manifest import Manifest
    from ._signing import PemSource
    from .sources import CachedSource

__all__ = [
    "ManifestEntryOrigin",
    "Origin",
    "OriginKeywords",
    "PinnedFile",
    "SourceOrigin",
    "TrustKeywords",
    "origin_from",
]


@runtime_checkable
class Origin(Protocol):
    """Where one model version comes from: something that yields verified bytes."""

    #: A short name of the kind of origin, safe to show (no path, no digest).
    kind: ClassVar[str]

    def read(self, *, model: str, registry: CollectorRegistry | None) -> VerifiedBytes:
        """Return this version's verified bytes (one read, one hash), reporting the check.

        Raises:
            IntegrityError: The bytes (or what vouches for them) failed verification;
                reported once (``IntegrityCheckFailed``) before it is raised.
        """
        ...

    def replaced(
        self,
        *,
        path: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        size: int | None = None,
        entry: str | None = None,
        version: str | None = None,
    ) -> Origin:
        """Return this origin with some of its settings changed (a reload).

        Raises:
            ValueError: A setting this kind of origin does not have or fixes itself.
        """
        ...

    def describe(self) -> str:
        """Return a label safe for operators and logs: the kind, no path, a digest prefix."""
        ...


def _check_size(size: int | None) -> int | None:
    # type() rather than isinstance(): True is an int, but not a size.
    if size is not None and (type(size) is not int or size < 0):
        raise ValueError(f"size must be a non-negative int, got {size!r}")
    return size


def _refuse(kind: str, **given: object) -> None:
    """Raise ``ValueError`` naming the first setting given that ``kind`` does not take."""
    for name, value in given.items():
        if value is not None:
            raise ValueError(f"{name}= does not apply to a {kind} origin")


@dataclasses.dataclass(frozen=True, slots=True)
class PinnedFile:
    """A file whose digest (and optionally size) the serving code pins.

    Raises:
        ValueError: A malformed digest or size.
    """

    kind: ClassVar[str] = "file"

    path: str
    sha256: str
    size: int | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.fspath(self.path))
        object.__setattr__(self, "sha256", normalize_sha256(self.sha256))
        _check_size(self.size)

    def read(self, *, model: str, registry: CollectorRegistry | None) -> VerifiedBytes:
        """Return the file's verified bytes (``read_verified`` reports the check)."""
        data = read_verified(
            self.path, sha256=self.sha256, size=self.size, model=model, registry=registry
        )
        return VerifiedBytes(data, self.sha256, self.version)

    def replaced(
        self,
        *,
        path: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        size: int | None = None,
        entry: str | None = None,
        version: str | None = None,
    ) -> PinnedFile:
        """Return this file origin with a new path, digest, size or version.

        A new path or digest without a new size drops the old size: the new file's size
        is unknown, not the old one.
        """
        _refuse(self.kind, entry=entry)
        new_file = path is not None or sha256 is not None
        return PinnedFile(
            path=os.fspath(path) if path is not None else self.path,
            sha256=sha256 if sha256 is not None else self.sha256,
            size=size if size is not None or new_file else self.size,
            version=version if version is not None else self.version,
        )

    def describe(self) -> str:
        """Return ``file sha256=<12 hex digits>``."""
        return f"{self.kind} sha256={self.sha256[:12]}"


@dataclasses.dataclass(frozen=True, slots=True)
class ManifestEntryOrigin:
    """One entry of a manifest: a ``Manifest`` in memory, or a path read at every load.

    Args:
        directory: The model directory the manifest describes.
        manifest: A :class:`~clarity_resilience.Manifest`, or the path of one.
        entry: The file to load; may be omitted only if the manifest lists one file.
        expected_version: Refuse (``version_mismatch``) a manifest of another version.
        version: The version to report (default: the manifest's).

    Raises:
        ValueError: An in-memory manifest does not list ``entry``, or lists several
            files and no ``entry`` is given (a manifest path is checked at each load).
    """

    kind: ClassVar[str] = "manifest"

    directory: str
    manifest: Manifest | str
    entry: str | None = None
    expected_version: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", os.fspath(self.directory))
        if isinstance(self.manifest, str | os.PathLike):
            object.__setattr__(self, "manifest", os.fspath(self.manifest))
            return
        names = self.manifest.entries  # in memory: check the entry now
        if self.entry is None and len(names) != 1:
            raise ValueError(f"the manifest lists {len(names)} files; pass entry=")
        if self.entry is not None and self.entry not in names:
            raise ValueError(f"entry {self.entry!r} is not in the manifest")

    def read(self, *, model: str, registry: CollectorRegistry | None) -> VerifiedBytes:
        """Read the manifest (if a path) now, pick the entry, and return its verified bytes."""
        manifest, entry = self._open(Attempt(model, registry))
        data = manifest.read_entry(self.directory, entry, model=model, registry=registry)
        return VerifiedBytes(
            data, manifest.entries[entry].sha256, self.version or manifest.version
        )

    def replaced(
        self,
        *,
        path: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        size: int | None = None,
        entry: str | None = None,
        version: str | None = None,
    ) -> ManifestEntryOrigin:
        """Return this origin with a new directory, entry or version.

        Raises:
            ValueError: ``sha256`` or ``size``: the manifest fixes them (pass ``manifest=``).
        """
        if sha256 is not None or size is not None:
            raise ValueError("a manifest fixes the digest and size; pass manifest= instead")
        return dataclasses.replace(
            self,
            directory=os.fspath(path) if path is not None else self.directory,
            entry=entry if entry is not None else self.entry,
            version=version if version is not None else self.version,
        )

    def describe(self) -> str:
        """Return ``manifest entry=<name>`` (an entry name, never a directory)."""
        return f"{self.kind} entry={self.entry!r}" if self.entry else self.kind

    def _open(self, attempt: Attempt) -> tuple[Manifest, str]:
        """Read the manifest now (so every load sees the current one) and pick the entry."""
        from ._manifest import Manifest

        source = self.manifest
        label = source if isinstance(source, str) else "<manifest>"
        with attempt.checking(label):
            # A missing or malformed manifest is an integrity failure like a bad digest.
            manifest = source if isinstance(source, Manifest) else Manifest.read(source)
            path = source if isinstance(source, str) else None
            entry = self.entry
            if entry is None:
                if len(manifest.entries) != 1:
                    raise ManifestError(
                        f"the manifest lists {len(manifest.entries)} files; pass entry=",
                        path=path,
                    )
                entry = next(iter(manifest.entries))
            if entry not in manifest.entries:
                raise ManifestError(
                    f"the manifest does not list {entry!r}", path=path, expected=entry
                )
            if self.expected_version is not None and manifest.version != self.expected_version:
                raise ManifestError(
                    f"the manifest is for version {manifest.version!r}, "
                    f"expected {self.expected_version!r}",
                    path=path,
                    expected=self.expected_version,
                    actual=manifest.version,
                    reason=Reason.VERSION_MISMATCH,
                )
        return manifest, entry


@dataclasses.dataclass(frozen=True, slots=True)
class SourceOrigin:
    """A remote artifact (:class:`~clarity_resilience.sources.HttpSource`) and its cache."""

    kind: ClassVar[str] = "source"

    source: CachedSource
    version: str | None = None

    def read(self, *, model: str, registry: CollectorRegistry | None) -> VerifiedBytes:
        """Read the source's cached copy, fetching (or re-fetching) it when needed.

        A cached copy is read and verified once. If it is missing, or fails (a tampered
        cache: reported once, then evicted), the source downloads it again (verified while
        it streams) and the bytes are read and verified once more on their way in.
        """
        source = self.source

        def verified_copy(path: str | os.PathLike[str]) -> VerifiedBytes:
            data = read_verified(
                path, sha256=source.sha256, size=source.size, model=model, registry=registry
            )
            return VerifiedBytes(data, source.sha256, self.version)

        if os.path.isfile(source.path):
            try:
                return verified_copy(source.path)
            except IntegrityError:
                # Reported by read_verified. The source is the truth, not the cache: drop
                # the bad copy so fetch downloads afresh (without hashing it again). A copy
                # that cannot be dropped is a refusal of its own, reported here.
                with Attempt(model, registry).checking(str(source.path)):
                    source.evict()
        return verified_copy(source.fetch(model=model, registry=registry))

    def replaced(
        self,
        *,
        path: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        size: int | None = None,
        entry: str | None = None,
        version: str | None = None,
    ) -> SourceOrigin:
        """Return this origin with a new version label.

        Raises:
            ValueError: ``path``, ``sha256``, ``size`` or ``entry``: the source fixes
                them (pass ``source=`` instead).
        """
        if any(x is not None for x in (path, sha256, size, entry)):
            raise ValueError("a source fixes its path, digest and size; pass source= instead")
        return dataclasses.replace(self, version=version if version is not None else self.version)

    def describe(self) -> str:
        """Return ``source sha256=<12 hex digits>`` (never the URL: it may hold a token)."""
        return f"{self.kind} sha256={self.source.sha256[:12]}"


class OriginKeywords(TypedDict, total=False):
    """The keywords of ``ModelGuard`` and ``reload`` that describe (or change) an origin."""

    path: str | os.PathLike[str] | None
    sha256: str | None
    size: int | None
    manifest: Manifest | str | os.PathLike[str] | None
    entry: str | None
    source: CachedSource | None
    origin: Origin | None
    version: str | None
    manifest_sha256: str | None


class TrustKeywords(OriginKeywords, total=False):
    """The keywords of ``ModelGuard`` that say how a model directory is trusted."""

    signature: str | os.PathLike[str] | None
    public_key: PemSource | ec.EllipticCurvePublicKey | None
    certificate_chain: PemSource | Iterable[PemSource] | None
    identity: str | None
    issuer: str | None
    symlink_root: str | os.PathLike[str] | None


def origin_from(
    *,
    path: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    size: int | None = None,
    manifest: Manifest | str | os.PathLike[str] | None = None,
    entry: str | None = None,
    source: CachedSource | None = None,
    origin: Origin | None = None,
    version: str | None = None,
    expected_version: str | None = None,
    **directory: object,
) -> Origin:
    """Return the origin that ``ModelGuard``'s keywords describe.

    ``sha256=`` selects a :class:`PinnedFile`, ``manifest=`` a :class:`ManifestEntryOrigin`
    and ``source=`` a :class:`SourceOrigin`; each validates its own settings. A
    ``signature=`` (with its trust keywords), a pinned manifest (``manifest_sha256=``),
    ``entries=``, ``materialize_into=`` or ``symlink_root=`` select a
    :class:`~._origin_directory.DirectoryOrigin` (see :func:`directory_origin`).
    ``origin=`` is any :class:`Origin`, taken as it is. ``expected_version`` is the
    guard's policy: it applies to manifests only.

    Raises:
        ValueError: Not exactly one origin, an incomplete one, or a setting it does not take.
        TypeError: ``origin`` does not implement :class:`Origin`, or bad trust keywords.
        ManifestError: A key or certificate chain that cannot be used.
    """
    given = {name: value for name, value in directory.items() if value is not None}
    if origin is not None:
        if given or any(
            x is not None for x in (path, sha256, size, manifest, entry, source, version)
        ):
            raise ValueError("origin= describes the whole origin; pass no other origin keyword")
        if not isinstance(origin, Origin):
            raise TypeError(f"origin must implement Origin, not {type(origin).__name__}")
        return origin
    if given:
        from ._origin_directory import directory_origin

        if sha256 is not None or source is not None or size is not None:
            raise ValueError(
                f"{', '.join(f'{name}=' for name in sorted(given))} needs a model directory: "
                "path= with manifest= or signature=, not sha256=, size= or source="
            )
        return directory_origin(
            path=path,
            manifest=manifest,
            entry=entry,
            version=version,
            expected_version=expected_version,
            **given,
        )
    if sum(x is not None for x in (sha256, manifest, source)) != 1:
        raise ValueError("give exactly one of sha256= (with path=), manifest= or source=")
    if source is not None:
        if path is not None:
            raise ValueError("source= brings its own path; do not pass path=")
        _refuse(SourceOrigin.kind, size=size, entry=entry)
        return SourceOrigin(source, version)
    if path is None:
        raise ValueError("path= is required with sha256= (the file) or manifest= (the directory)")
    if sha256 is not None:
        _refuse(PinnedFile.kind, entry=entry)
        return PinnedFile(os.fspath(path), sha256, _check_size(size), version)
    assert manifest is not None
    _refuse(ManifestEntryOrigin.kind, size=size)
    return ManifestEntryOrigin(
        os.fspath(path),
        os.fspath(manifest) if isinstance(manifest, str | os.PathLike) else manifest,
        entry,
        expected_version=expected_version,
        version=version,
    )
