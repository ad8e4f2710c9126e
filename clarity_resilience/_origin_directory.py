"""Directory origins: a trusted manifest, and what the loader gets from the files it lists.

A model directory is trusted through its manifest, read again at every load so a new
version can be dropped in. :class:`TrustedManifest` says where that manifest comes from
and why it is trusted: a ``Manifest`` in memory, a file (optionally pinned by its
digest), or an OMS signature checked against a trust root built once from the serving
code's configuration. :class:`DirectoryOrigin` then hands the loader one of three
things, always read once and verified against that manifest:

- one entry's bytes (``entry=``);
- several entries as a read-only ``Mapping[str, bytes]`` (``entries=``), all or nothing;
- the path of a verified private snapshot (``materialize_into=``), for frameworks that
  load from a path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from typing import TYPE_CHECKING, Any, ClassVar

from ._files import as_mapping, read_verified_files, select_entries
from ._hashing import read_small
from ._integrity import normalize_sha256
from ._loading import VerifiedBytes
from ._manifest import Manifest
from ._manifest_fs import _MAX_MANIFEST_BYTES
from ._outcome import Attempt
from ._reasons import Reason
from ._signing import SignedManifest
from .exceptions import ChecksumMismatchError, IntegrityError, ManifestError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._signing import SignatureTrust

__all__ = ["DirectoryOrigin", "TrustedManifest", "directory_origin", "selection_sha256"]


def selection_sha256(manifest: Manifest, names: list[str]) -> str:
    """Return the digest that names a multi-file version: its sorted entry list."""
    hasher = hashlib.sha256()
    for name in sorted(names):
        entry = manifest.entries[name]
        hasher.update(f"{entry.sha256} {entry.size} {name}\0".encode())
    return hasher.hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class TrustedManifest:
    """Where a directory's manifest comes from, and what makes it trusted.

    Exactly one of ``manifest`` (a ``Manifest``, or a path read at every load; with
    ``sha256`` the file's bytes must hash to it) or ``signature`` (a signature file read
    and authenticated by ``trust`` at every load).

    Raises:
        ValueError: Not exactly one of ``manifest`` and ``signature``, ``sha256``
            without a manifest path, or ``signature`` without ``trust``.
    """

    manifest: Manifest | str | None = None
    sha256: str | None = None
    signature: str | None = None
    trust: SignatureTrust | None = None

    def __post_init__(self) -> None:
        if (self.manifest is None) == (self.signature is None):
            raise ValueError("give exactly one of manifest= and signature=")
        if self.signature is not None:
            object.__setattr__(self, "signature", os.fspath(self.signature))
            if self.trust is None:
                raise ValueError("signature= needs a trust root (public_key=, ...)")
        if self.sha256 is not None:
            if not isinstance(self.manifest, str):
                raise ValueError("manifest_sha256= pins a manifest file; pass manifest=<path>")
            object.__setattr__(self, "sha256", normalize_sha256(self.sha256))

    @property
    def label(self) -> str:
        """Return the file this manifest is read from (for audit events, not clients)."""
        if self.signature is not None:
            return self.signature
        return self.manifest if isinstance(self.manifest, str) else "<manifest>"

    def read(self, attempt: Attempt) -> Manifest:
        """Return the manifest as it is now, authenticated; report a refusal once.

        Raises:
            ChecksumMismatchError: A pinned manifest file's bytes changed.
            ManifestError: Missing, malformed, or a signature that does not verify
                (``signature_invalid``).
        """
        with attempt.checking(self.label):
            if self.signature is not None:
                assert self.trust is not None
                return self.trust.verify(self.signature)
            if not isinstance(self.manifest, str):
                assert self.manifest is not None
                return self.manifest
            if self.sha256 is None:
                return Manifest.read(self.manifest)
            return self._read_pinned(self.manifest, self.sha256)

    @staticmethod
    def _read_pinned(path: str, sha256: str) -> Manifest:
        # One read: the bytes that were hashed are the bytes that are parsed.
        try:
            data = read_small(path, max_size=_MAX_MANIFEST_BYTES)
        except IntegrityError as e:
            raise ManifestError(f"manifest {e}", path=path, reason=e.reason) from e
        actual = hashlib.sha256(data).hexdigest()
        if not hmac.compare_digest(actual, sha256):
            raise ChecksumMismatchError(
                f"manifest {path} does not match its pinned digest",
                path=path,
                expected=sha256,
                actual=actual,
            )
        return Manifest.parse(data.decode("utf-8", "surrogateescape"), source=path)

    def describe(self) -> str:
        """Return ``signed``, ``pinned manifest sha256=<12 hex>`` or ``manifest``."""
        if self.signature is not None:
            return "signed"
        if self.sha256 is not None:
            return f"pinned manifest sha256={self.sha256[:12]}"
        return "manifest"


@dataclasses.dataclass(frozen=True, slots=True)
class DirectoryOrigin:
    """Files of one directory, verified against a :class:`TrustedManifest`.

    Args:
        directory: The model directory.
        trusted: Where the manifest comes from (read at every load).
        entry: One file to load; the loader gets its bytes. May be omitted (with no
            ``entries``) only if the manifest lists one file.
        entries: Several files (``"*"``, a glob, or names); the loader gets a read-only
            ``Mapping[str, bytes]`` of exactly those, and only if every one matched.
        materialize_into: A private cache directory; the loader gets the path of a
            verified snapshot of the selected files (``entries``, or ``entry``, or all).
        symlink_root: Allow listed files that are symlinks into this directory (the
            Hugging Face cache layout).
        expected_version: Refuse (``version_mismatch``) a manifest of another version.
        version: The version to report (default: the manifest's).

    Raises:
        ValueError: ``entry`` with ``entries``.
    """

    kind: ClassVar[str] = "directory"

    directory: str
    trusted: TrustedManifest
    entry: str | None = None
    entries: str | tuple[str, ...] | None = None
    materialize_into: str | None = None
    symlink_root: str | None = None
    expected_version: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", os.fspath(self.directory))
        if self.entry is not None and self.entries is not None:
            raise ValueError("give entry= (one file) or entries= (several), not both")
        if self.entries is not None and not isinstance(self.entries, str):
            object.__setattr__(self, "entries", tuple(self.entries))
        for name in ("materialize_into", "symlink_root"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))

    def read(self, *, model: str, registry: CollectorRegistry | None) -> VerifiedBytes:
        """Read the manifest now, then the selected files once, verified; report refusals."""
        attempt = Attempt(model, registry)
        manifest = self.trusted.read(attempt)
        signer = manifest.signer if isinstance(manifest, SignedManifest) else None
        version = self.version or manifest.version
        with attempt.checking(self.trusted.label):
            self._check_version(manifest)
            names = self._select(manifest)
        links = self.symlink_root
        if self.materialize_into is not None:
            from ._materialize import materialize

            path = materialize(
                self.directory,
                manifest=manifest,
                into=self.materialize_into,
                entries=names,
                symlink_root=links,
                model=model,
                registry=registry,
            )
            return VerifiedBytes(path, selection_sha256(manifest, names), version, signer)
        if self.entries is None:
            (name,) = names
            data = manifest.read_entry(
                self.directory, name, symlink_root=links, model=model, registry=registry
            )
            return VerifiedBytes(data, manifest.entries[name].sha256, version, signer)
        files = read_verified_files(
            self.directory, manifest, names, symlink_root=links, model=model, registry=registry
        )
        return VerifiedBytes(as_mapping(files), selection_sha256(manifest, names), version, signer)

    def _select(self, manifest: Manifest) -> list[str]:
        if self.entries is not None:
            return select_entries(manifest, self.entries)
        if self.entry is not None:
            return select_entries(manifest, [self.entry])
        if self.materialize_into is not None:
            return select_entries(manifest, None)
        if len(manifest.entries) != 1:
            raise ManifestError(
                f"the manifest lists {len(manifest.entries)} files; pass entry= or entries=",
                reason=Reason.MANIFEST_INVALID,
            )
        return list(manifest.entries)

    def _check_version(self, manifest: Manifest) -> None:
        if self.expected_version is not None and manifest.version != self.expected_version:
            raise ManifestError(
                f"the manifest is for version {manifest.version!r}, "
                f"expected {self.expected_version!r}",
                expected=self.expected_version,
                actual=manifest.version,
                reason=Reason.VERSION_MISMATCH,
            )

    def replaced(
        self,
        *,
        path: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        size: int | None = None,
        entry: str | None = None,
        version: str | None = None,
    ) -> DirectoryOrigin:
        """Return this origin with a new directory, entry or version.

        Raises:
            ValueError: ``sha256`` or ``size`` (the manifest fixes them), or ``entry``
                for an origin that selects ``entries``.
        """
        if sha256 is not None or size is not None:
            raise ValueError("a manifest fixes the digest and size; pass manifest= instead")
        if entry is not None and self.entries is not None:
            raise ValueError("this origin selects entries=; pass origin= to change them")
        return dataclasses.replace(
            self,
            directory=os.fspath(path) if path is not None else self.directory,
            entry=entry if entry is not None else self.entry,
            version=version if version is not None else self.version,
        )

    def selection(self) -> dict[str, object]:
        """Return the keywords that say what the loader gets (kept when the manifest changes)."""
        kept = {
            "entries": self.entries,
            "materialize_into": self.materialize_into,
            "symlink_root": self.symlink_root,
        }
        return {name: value for name, value in kept.items() if value is not None}

    def describe(self) -> str:
        """Return the trust and the selection (entry names, never a directory)."""
        trust = self.trusted.describe()
        if self.entries is not None:
            picked = self.entries if isinstance(self.entries, str) else list(self.entries)
            trust += f" entries={picked!r}"
        elif self.entry is not None:
            trust += f" entry={self.entry!r}"
        return trust + (" materialized" if self.materialize_into is not None else "")


_KEYWORDS = frozenset(
    {
        "manifest_sha256",
        "signature",
        "public_key",
        "certificate_chain",
        "identity",
        "issuer",
        "entries",
        "materialize_into",
        "symlink_root",
    }
)
_TRUST = ("public_key", "certificate_chain", "identity", "issuer")


def directory_origin(
    *,
    path: str | os.PathLike[str] | None,
    manifest: Manifest | str | os.PathLike[str] | None,
    entry: str | None,
    version: str | None,
    expected_version: str | None,
    **settings: Any,
) -> DirectoryOrigin:
    """Return the :class:`DirectoryOrigin` that ``ModelGuard``'s keywords describe.

    The trust root (``public_key=``, ``certificate_chain=`` or ``identity=`` with
    ``issuer=``) is built here, once: bad trust arguments fail now, not at a load.

    Raises:
        ValueError: No directory, not exactly one of ``manifest=`` and ``signature=``,
            trust keywords without ``signature=``, or an unknown keyword.
        TypeError: Not exactly one way to name the signer.
        ManifestError: The key or chain cannot be read or used (``signature_invalid``).
    """
    unknown = set(settings) - _KEYWORDS
    if unknown:
        raise TypeError(f"unexpected origin keywords: {', '.join(sorted(unknown))}")
    if path is None:
        raise ValueError("path= (the model directory) is required with manifest= or signature=")
    signature = settings.get("signature")
    trust_keywords = {name: settings.get(name) for name in _TRUST}
    trust: SignatureTrust | None = None
    if signature is None:
        given = [name for name, value in trust_keywords.items() if value is not None]
        if given:
            raise ValueError(f"{given[0]}= is a signature's trust root; pass signature= too")
    else:
        if manifest is not None:
            raise ValueError("give manifest= or signature=, not both")
        if expected_version is not None:
            raise ValueError("expected_version= applies to manifests; a signature has none")
        from ._signing import trust_from

        trust = trust_from(**trust_keywords)
    trusted = TrustedManifest(
        manifest=os.fspath(manifest) if isinstance(manifest, str | os.PathLike) else manifest,
        sha256=settings.get("manifest_sha256"),
        signature=None if signature is None else os.fspath(signature),
        trust=trust,
    )
    return DirectoryOrigin(
        os.fspath(path),
        trusted,
        entry=entry,
        entries=settings.get("entries"),
        materialize_into=settings.get("materialize_into"),
        symlink_root=settings.get("symlink_root"),
        expected_version=expected_version,
        version=version,
    )
