"""Manifests: the expected SHA-256 (and size) of every file in a model directory.

A :class:`Manifest` is read from ``sha256sum`` output (GNU or BSD ``--tag``) or from
this library's JSON form, built from a directory, written atomically, and checked
against a directory in parallel. Checking reports every problem at once (mismatch,
missing, extra, symlink, version) and never follows a symlink inside the directory.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Literal

from ._atomic import write_atomic
from ._integrity import read_verified_entry, verify_entry
from ._manifest_format import (
    Record,
    dump_json,
    dump_sha256sum,
    excerpt,
    is_utf8,
    normalize_digest,
    normalize_path,
    parse_text,
)
from ._manifest_fs import (
    check_root,
    find_extras,
    hash_file,
    list_files,
    read_manifest_text,
    resolve,
    worker_pool,
)
from ._outcome import Attempt
from ._reasons import Reason
from .exceptions import IntegrityError, ManifestError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec
    from prometheus_client import CollectorRegistry

    from ._signing import PemSource, SignedManifest

__all__ = ["Manifest", "ManifestEntry", "ManifestFormat"]

#: The text formats :meth:`Manifest.dumps` and :meth:`Manifest.write` produce.
ManifestFormat = Literal["sha256sum", "json"]

# How many problem names the summary of a multi-problem failure spells out.
_SUMMARY_NAMES = 3


@dataclasses.dataclass(frozen=True, slots=True)
class ManifestEntry:
    """The expected digest (and size) of one file.

    Attributes:
        path: A relative POSIX path, normalized (no leading ``./``).
        sha256: The SHA-256 digest as 64 lower-case hex digits.
        size: The size in bytes, or ``None`` when the format does not record it.

    Raises:
        ManifestError: The path is unsafe, the digest is not 64 hex digits, or the size
            is not a non-negative integer.
    """

    path: str
    sha256: str
    size: int | None = None
    chunk_size: int | None = None
    chunks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", normalize_path(self.path))
        object.__setattr__(self, "sha256", normalize_digest(self.sha256))
        object.__setattr__(self, "chunks", tuple(normalize_digest(d) for d in self.chunks))
        if self.chunk_size is not None and (
            type(self.chunk_size) is not int
            or self.chunk_size < 1
            or self.size is None
            or len(self.chunks) != max(1, -(-self.size // self.chunk_size))
        ):
            raise ManifestError(
                f"chunks of {self.path!r} need a size, a positive chunk size and one digest "
                "per chunk",
                reason=Reason.MANIFEST_INVALID,
            )
        if self.size is not None and (type(self.size) is not int or self.size < 0):
            raise ManifestError(
                f"size of {self.path!r} must be a non-negative int, got {excerpt(self.size)}",
                reason=Reason.MANIFEST_INVALID,
            )


class Manifest:
    """The files a model directory must contain, with their digests.

    Args:
        entries: One :class:`ManifestEntry` per file; at least one.
        version: The model version (kept by the JSON form only).

    Raises:
        ManifestError: No entries, or two entries with the same path.
    """

    __slots__ = ("_entries", "_version")

    def __init__(self, entries: Iterable[ManifestEntry], *, version: str | None = None) -> None:
        if version is not None and not isinstance(version, str):
            raise TypeError(f"version must be a str or None, not {type(version).__name__}")
        if version is not None and not is_utf8(version):
            raise ManifestError(f"model version {excerpt(version)} is not valid UTF-8")
        by_path: dict[str, ManifestEntry] = {}
        for entry in entries:
            if not isinstance(entry, ManifestEntry):
                raise TypeError(f"entries must be ManifestEntry, not {type(entry).__name__}")
            if entry.path in by_path:
                raise ManifestError(
                    f"path {excerpt(entry.path)} is listed twice", reason=Reason.MANIFEST_INVALID
                )
            by_path[entry.path] = entry
        if not by_path:
            # An empty manifest would "verify" anything: refuse it rather than pass vacuously.
            raise ManifestError("a manifest must list at least one file")
        self._entries = types.MappingProxyType(dict(sorted(by_path.items())))
        self._version = version

    @property
    def entries(self) -> Mapping[str, ManifestEntry]:
        """The entries by path, sorted by path (read-only)."""
        return self._entries

    @property
    def version(self) -> str | None:
        """The model version the manifest records, if any."""
        return self._version

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return dict(self._entries) == dict(other._entries) and self._version == other._version

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Manifest({len(self._entries)} files, version={self._version!r})"

    @classmethod
    def parse(cls, text: str, *, source: str | None = None) -> Manifest:
        """Parse manifest text, detecting its format.

        Args:
            text: GNU ``sha256sum`` lines, BSD ``--tag`` lines (the two may mix), or a
                JSON manifest (first non-blank character ``{``).
            source: Where the text came from, named in error messages.

        Raises:
            ManifestError: The text is malformed or names an unsafe path; ``line`` says
                where.
        """
        records, version = parse_text(text, source)
        return cls(
            (ManifestEntry(r.path, r.sha256, r.size, r.chunk_size, r.chunks) for r in records),
            version=version,
        )

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read and parse a manifest file (UTF-8, any supported format).

        Raises:
            ManifestError: The file is missing (``MISSING``), unreadable or too large
                (``IO_ERROR``), or malformed.
        """
        name = os.fspath(path)
        return cls.parse(read_manifest_text(name), source=name)

    @classmethod
    def from_signature(
        cls,
        signature: str | os.PathLike[str],
        *,
        public_key: PemSource | ec.EllipticCurvePublicKey | None = None,
        certificate_chain: PemSource | Iterable[PemSource] | None = None,
        identity: str | None = None,
        issuer: str | None = None,
    ) -> SignedManifest:
        """Authenticate an OMS signature (``model.sig``) and return the manifest it signs.

        The signature is checked against the one trust root given; the model files
        are not read (check them with :meth:`verify` or :meth:`read_entry`). Needs
        the ``signing`` extra (``model-signing`` 1.1.x).

        Args:
            signature: The signature file (a Sigstore bundle), as ``model_signing`` writes.
            public_key: The signer's EC public key: a PEM file path, PEM bytes or a key.
            certificate_chain: The root (and intermediate) certificates the signing
                certificate must chain to: PEM file paths or PEM bytes, one or several.
            identity: The Sigstore keyless signer identity (needs ``issuer``; online).
            issuer: The OIDC issuer that vouched for ``identity``.

        Returns:
            A ``SignedManifest`` (a :class:`Manifest`): its ``signer`` says who signed,
            its ``ignore_paths`` are never reported as extra files.

        Raises:
            TypeError: Not exactly one of ``public_key``, ``certificate_chain``, or
                ``identity`` with ``issuer``.
            ManifestError: The signature file is missing (``MISSING``); or it is not
                a regular file, too large, malformed, not signed by the trusted signer,
                edited, of an unsupported type or method, or names an unsafe path
                (``SIGNATURE_INVALID``); or Sigstore's trusted root cannot be fetched
                (``FETCH_ERROR``).
        """
        from ._signing import trust_from

        trust = trust_from(
            public_key=public_key,
            certificate_chain=certificate_chain,
            identity=identity,
            issuer=issuer,
        )
        return trust.verify(signature)

    @classmethod
    def build(
        cls,
        directory: str | os.PathLike[str],
        *,
        version: str | None = None,
        exclude: Iterable[str] = (),
        workers: int | None = None,
        progress: Callable[[int], None] | None = None,
        chunk_size: int | None = None,
    ) -> Manifest:
        """Hash every regular file below ``directory`` (in parallel threads).

        Args:
            directory: The model directory. It may itself be a symlink (as in
                ``current -> v3``); nothing below it may be.
            version: The model version to record.
            exclude: Relative paths (files or directories) to leave out, e.g. the
                manifest file itself.
            workers: Hashing threads (default: ``os.cpu_count()``).
            progress: Called (from the hashing threads) with each file's size once it
                is hashed, e.g. to show progress.
            chunk_size: Also record the digest of every ``chunk_size`` bytes of files
                larger than that (JSON form only), so one large file can later be read
                and verified on every core. Computed in the same pass.

        Raises:
            ManifestError: A symlink or special file below ``directory``
                (``UNSAFE_PATH``), an unreadable file, or no file at all.
        """
        if chunk_size is not None and (type(chunk_size) is not int or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        root = os.fspath(directory)
        names = list_files(root, frozenset(normalize_path(name) for name in exclude))
        with worker_pool(workers) as pool:
            hashed = list(
                pool.map(lambda name: _hash_one(root, name, progress, chunk_size), names)
            )
        return cls(
            (
                ManifestEntry(name, digest, size, *_chunks_worth_keeping(size, chunk_size, chunks))
                for name, (digest, size, chunks) in zip(names, hashed, strict=True)
            ),
            version=version,
        )

    def dumps(self, format: ManifestFormat = "sha256sum") -> str:
        """Return the manifest as text.

        Args:
            format: ``"sha256sum"`` (GNU lines, accepted by ``sha256sum -c``; sizes and
                version are not kept) or ``"json"`` (keeps both).

        Raises:
            ValueError: Unknown format.
            ManifestError: ``"json"`` for a path holding a backslash.
        """
        if format == "sha256sum":
            return dump_sha256sum((e.path, e.sha256) for e in self._entries.values())
        if format == "json":
            return dump_json(
                (
                    Record(e.path, e.sha256, e.size, e.chunk_size, e.chunks)
                    for e in self._entries.values()
                ),
                self._version,
            )
        raise ValueError(f"format must be 'sha256sum' or 'json', not {format!r}")

    def write(self, path: str | os.PathLike[str], format: ManifestFormat = "sha256sum") -> None:
        """Write the manifest atomically: a temporary file, fsync, then rename over ``path``.

        Raises:
            OSError: The file could not be written; ``path`` is left as it was.
        """
        write_atomic(os.fspath(path), self.dumps(format).encode("utf-8"))

    def path_of(self, directory: str | os.PathLike[str], name: str) -> str:
        """Return the checked path of the entry ``name`` inside ``directory``.

        Raises:
            ManifestError: ``name`` is unsafe or not listed.
            IntegrityError: A directory on the way is a symlink (``UNSAFE_PATH``) or
                missing (``MISSING``).
        """
        return resolve(os.fspath(directory), self._entry(name).path)

    def read_entry(
        self,
        directory: str | os.PathLike[str],
        name: str,
        *,
        symlink_root: str | os.PathLike[str] | None = None,
        model: str = "unnamed",
        registry: CollectorRegistry | None = None,
    ) -> bytes:
        """Read one listed file and return its bytes only if they match the manifest.

        Args:
            directory: The model directory.
            name: The entry's path, as listed.
            symlink_root: Allow a listed file to be a symlink whose target lies inside
                this directory (the Hugging Face cache: ``snapshots/<rev>/`` files link
                into the repository's ``blobs/``). The target is opened without following
                any further link.
            model: The ``model`` label for metrics and audit events.
            registry: The Prometheus registry to record into.

        Raises:
            ManifestError: ``name`` is not listed or unsafe.
            IntegrityError: As :func:`~clarity_resilience.read_verified`, or a symlinked
                directory on the way.
        """
        with Attempt(model, registry).checking(os.fspath(directory)):
            entry = self._entry(name)
        return read_verified_entry(
            os.fspath(directory),
            entry.path,
            sha256=entry.sha256,
            size=entry.size,
            symlink_root=_optional_path(symlink_root),
            chunks=(entry.chunk_size, entry.chunks) if entry.chunk_size else None,
            model=model,
            registry=registry,
        )

    def check(
        self,
        directory: str | os.PathLike[str],
        *,
        allow_extra: bool = False,
        expected_version: str | None = None,
        exclude: Iterable[str] = (),
        workers: int | None = None,
        symlink_root: str | os.PathLike[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[IntegrityError]:
        """Verify ``directory`` against the manifest and return every problem found.

        Listed files are hashed in parallel threads, each opened once without
        following a symlink. Nothing is raised for a problem found: it is returned.

        Args:
            directory: The model directory.
            allow_extra: Accept files the manifest does not list.
            expected_version: Also require the manifest's model version to equal this.
            exclude: Relative paths never reported as extra (e.g. the manifest itself).
            workers: Hashing threads (default: ``os.cpu_count()``).
            symlink_root: As :meth:`read_entry`.
            progress: Called (from the hashing threads) with the bytes of each listed
                file once it is checked (0 for a file that could not be read).

        Returns:
            The problems, a version mismatch first, then by path; empty if all is well.
        """
        return self._check(
            directory,
            allow_extra,
            expected_version,
            exclude,
            workers,
            symlink_root=symlink_root,
            progress=progress,
        )[0]

    def verify(
        self,
        directory: str | os.PathLike[str],
        *,
        allow_extra: bool = False,
        expected_version: str | None = None,
        exclude: Iterable[str] = (),
        model: str = "unnamed",
        registry: CollectorRegistry | None = None,
        workers: int | None = None,
        symlink_root: str | os.PathLike[str] | None = None,
    ) -> None:
        """Verify ``directory`` like :meth:`check`, report the outcome, raise on any problem.

        Emits one ``IntegrityCheckPassed`` for the directory, or one
        ``IntegrityCheckFailed`` per problem (each counted in
        ``model_integrity_failures_total``).

        Raises:
            IntegrityError: The only problem, as found.
            ManifestError: Several problems, all in ``problems``; ``reason`` is the
                first one's.
        """
        root = os.fspath(directory)
        attempt = Attempt(model, registry)
        problems, total = self._check(
            root, allow_extra, expected_version, exclude, workers, symlink_root=symlink_root
        )
        if not problems:
            attempt.check_passed(root, total)
            return
        for problem in problems:
            attempt.check_failed(root, problem)
        if len(problems) == 1:
            raise problems[0]
        names = [os.path.relpath(p.path, root) if p.path else "manifest" for p in problems]
        listed = ", ".join(names[:_SUMMARY_NAMES])
        more = f" and {len(names) - _SUMMARY_NAMES} more" if len(names) > _SUMMARY_NAMES else ""
        raise ManifestError(
            f"{len(problems)} problems verifying {root}: {listed}{more}",
            path=root,
            reason=problems[0].reason,
            problems=tuple(problems),
        )

    def _entry(self, name: str) -> ManifestEntry:
        entry = self._entries.get(normalize_path(name))
        if entry is None:
            raise ManifestError(
                f"{excerpt(name)} is not listed in the manifest",
                path=name,
                reason=Reason.MANIFEST_INVALID,
            )
        return entry

    def _check(
        self,
        directory: str | os.PathLike[str],
        allow_extra: bool,
        expected_version: str | None,
        exclude: Iterable[str],
        workers: int | None,
        *,
        symlink_root: str | os.PathLike[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list[IntegrityError], int]:
        root = os.fspath(directory)
        links = _optional_path(symlink_root)
        found: list[tuple[tuple[int, str], IntegrityError]] = []
        if expected_version is not None and expected_version != self._version:
            mismatch = ManifestError(
                f"manifest model version is {excerpt(self._version)}, "
                f"expected {excerpt(expected_version)}",
                expected=expected_version,
                actual=self._version,
                reason=Reason.VERSION_MISMATCH,
            )
            found.append(((0, ""), mismatch))
        problem = check_root(root)
        if problem is not None:
            return [e for _, e in found] + [problem], 0
        if not allow_extra:
            skip = frozenset(normalize_path(name) for name in exclude)
            found.extend(((1, rel), e) for rel, e in find_extras(root, self._entries, skip))
        with worker_pool(workers) as pool:
            results = list(
                pool.map(lambda e: _check_entry(root, e, links, progress), self._entries.values())
            )
        total = 0
        for entry, (size, error) in zip(self._entries.values(), results, strict=True):
            total += size
            if error is not None:
                found.append(((1, entry.path), error))
        found.sort(key=lambda item: item[0])
        return [e for _, e in found], total


def _optional_path(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


def _hash_one(
    root: str, name: str, progress: Callable[[int], None] | None, chunk_size: int | None
) -> tuple[str, int, tuple[str, ...]]:
    # hash_file is looked up at call time so tests can observe the worker threads.
    digest, size, chunks = hash_file(root, name, chunk_size)
    if progress is not None:
        progress(size)
    return digest, size, chunks


def _chunks_worth_keeping(
    size: int, chunk_size: int | None, chunks: tuple[str, ...]
) -> tuple[int | None, tuple[str, ...]]:
    """Keep chunk digests only for files that have more than one chunk."""
    if chunk_size is None or size <= chunk_size:
        return None, ()
    return chunk_size, chunks


def _check_entry(
    root: str,
    entry: ManifestEntry,
    symlink_root: str | None,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, IntegrityError | None]:
    error: IntegrityError | None = None
    try:
        # verify_entry is looked up at call time so tests can observe the worker threads.
        size = verify_entry(
            root, entry.path, sha256=entry.sha256, size=entry.size, symlink_root=symlink_root
        )
    except IntegrityError as e:
        size, error = 0, e
    if progress is not None:
        progress(size)
    return size, error
