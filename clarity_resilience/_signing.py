"""Signed manifests: authenticate an OMS signature (``model.sig``) and read its file list.

The adapter between this library and ``model-signing`` (OpenSSF Model Signing) 1.1.x.
``model_signing``'s public ``verify`` hashes the model directory itself; this library
must not (the bytes are hashed once, while they are read for loading). So only the
signature over the DSSE payload is checked here, with ``model_signing``'s own verifiers
for keys and certificates (a private API, hence the pinned version range and the
tests against the ``model_signing verify`` CLI) and ``sigstore``'s public API for
keyless signatures. The signed statement is then read strictly by
:mod:`._signing_statement`. Nothing from ``model_signing`` is imported before use.
"""

from __future__ import annotations

import abc
import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._hashing import open_regular, read_small
from ._manifest import Manifest, ManifestEntry
from ._manifest_format import normalize_path
from ._reasons import Reason
from ._signing_statement import load_json, parse_statement, refuse
from .exceptions import IntegrityError, ManifestError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["MAX_SIGNATURE_SIZE", "SignatureTrust", "SignedManifest", "trust_from"]

#: The largest signature file read (about 80 000 listed files).
MAX_SIGNATURE_SIZE = 16 * 1024 * 1024
# Keys and certificate chains are a few KiB; anything near this is not one.
_MAX_PEM_SIZE = 1024 * 1024
_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})  # as model_signing accepts

#: A file named by a path, as the ``model_signing`` CLI takes it, or PEM bytes.
PemSource = str | os.PathLike[str] | bytes


class SignedManifest(Manifest):
    """A manifest whose file list comes from an authenticated signature.

    It checks a directory like any :class:`Manifest`, except that the paths the
    signer chose to leave out (``ignore_paths``, such as ``model.sig`` and ``.git``)
    are never reported as extra files.
    """

    __slots__ = ("_ignore_paths", "_signer")

    def __init__(
        self, entries: Iterable[ManifestEntry], *, signer: str, ignore_paths: Iterable[str] = ()
    ) -> None:
        super().__init__(entries)
        self._signer = signer
        self._ignore_paths = frozenset(normalize_path(path) for path in ignore_paths)

    @property
    def signer(self) -> str:
        """Who signed: ``sha256:<hex>`` of the key (DER), the certificate subject, or identity."""
        return self._signer

    @property
    def ignore_paths(self) -> frozenset[str]:
        """The relative paths the signature does not cover (never reported as extra)."""
        return self._ignore_paths

    def __eq__(self, other: object) -> bool:
        # Equal files signed by someone else, or ignoring other paths, are another trust.
        if isinstance(other, SignedManifest) and (
            self._signer != other._signer or self._ignore_paths != other._ignore_paths
        ):
            return False
        return super().__eq__(other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"SignedManifest({len(self)} files, signer={self._signer!r})"

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
        # check() and verify() both come here: the signer's exclusions join the caller's.
        skip = (*exclude, *self._ignore_paths)
        return super()._check(
            directory,
            allow_extra,
            expected_version,
            skip,
            workers,
            symlink_root=symlink_root,
            progress=progress,
        )


class SignatureTrust(abc.ABC):
    """A trust root: whose signatures are accepted. Build one with :func:`trust_from`."""

    def verify(self, signature: str | os.PathLike[str]) -> SignedManifest:
        """Authenticate the signature file and return the manifest it signs.

        Raises:
            ManifestError: The file is missing (``MISSING``), or the signature is not
                trusted, not valid or not usable (``SIGNATURE_INVALID``).
        """
        source = os.fspath(signature)
        return self.verify_bytes(_read(source, MAX_SIGNATURE_SIZE, "signature"), source)

    def verify_bytes(self, raw: bytes, source: str) -> SignedManifest:
        """Authenticate a signature given as bytes (``source`` names it in errors).

        Raises:
            ManifestError: As for :meth:`verify` (``SIGNATURE_INVALID``).
        """
        if len(raw) > MAX_SIGNATURE_SIZE:
            raise refuse(
                f"the signature is {len(raw)} bytes, over the {MAX_SIGNATURE_SIZE}-byte cap",
                source,
            )
        payload_type, payload, signer = self._authenticate(raw, source)
        statement = parse_statement(payload_type, payload, source)
        try:
            entries = [ManifestEntry(path, digest) for path, digest in statement.resources]
            return SignedManifest(entries, signer=signer, ignore_paths=statement.ignore_paths)
        except ManifestError as e:  # a path listed twice
            raise refuse(str(e), source) from None

    @abc.abstractmethod
    def _authenticate(self, raw: bytes, source: str) -> tuple[str, bytes, str]:
        """Return the payload type, payload and signer of a signature that verifies."""


def trust_from(
    *,
    public_key: PemSource | ec.EllipticCurvePublicKey | None = None,
    certificate_chain: PemSource | Iterable[PemSource] | None = None,
    identity: str | None = None,
    issuer: str | None = None,
) -> SignatureTrust:
    """Return the trust root given by exactly one of the three ways to name a signer.

    Raises:
        TypeError: None or several ways given, or ``identity`` without ``issuer``.
        ManifestError: The key or chain cannot be read or used (``SIGNATURE_INVALID``),
            or ``model-signing`` is not installed.
    """
    given = [public_key is not None, certificate_chain is not None, identity is not None]
    if sum(given) != 1:
        raise TypeError("give exactly one of public_key=, certificate_chain= or identity=")
    if (identity is None) != (issuer is None):
        raise TypeError("identity= and issuer= go together (Sigstore keyless signing)")
    if public_key is not None:
        from ._signing_keys import KeyTrust

        return KeyTrust(public_key)
    if certificate_chain is not None:
        from ._signing_keys import CertificateTrust

        return CertificateTrust(certificate_chain)
    if identity is None or issuer is None:
        raise TypeError("identity= and issuer= go together (Sigstore keyless signing)")
    return SigstoreTrust(identity, issuer)


class SigstoreTrust(SignatureTrust):
    """Sigstore keyless signatures by ``identity``, as vouched for by ``issuer``.

    Building it touches no network. The first verification fetches Sigstore's trusted
    root (TUF) over the network; offline, it fails with ``FETCH_ERROR``.
    """

    def __init__(self, identity: str, issuer: str) -> None:
        if not identity or not issuer:
            raise TypeError("identity= and issuer= must be non-empty strings")
        sigstore_verify = _import("sigstore.verify")
        self._identity = identity
        self._policy = sigstore_verify.policy.Identity(identity=identity, issuer=issuer)
        self._verifier: Any = None
        self._lock = threading.Lock()

    def _authenticate(self, raw: bytes, source: str) -> tuple[str, bytes, str]:
        models = _import("sigstore.models")
        load_json(raw, "bundle", source)  # the same JSON rules as the other bundles
        try:
            bundle = models.Bundle.from_json(raw)
        except Exception as e:  # noqa: BLE001  # sigstore raises many types for a bad bundle
            raise refuse(f"the bundle is malformed: {e}", source) from None
        verifier = self._sigstore_verifier(source)
        try:
            payload_type, payload = verifier.verify_dsse(bundle=bundle, policy=self._policy)
        except Exception as e:  # noqa: BLE001  # sigstore's errors, and anything else: refuse
            raise refuse(f"the signature does not verify: {e}", source) from None
        return str(payload_type), bytes(payload), self._identity

    def _sigstore_verifier(self, source: str) -> Any:
        with self._lock:
            if self._verifier is None:
                verifier_class = _import("sigstore.verify").Verifier
                try:
                    self._verifier = verifier_class.production()
                except Exception as e:  # TUF and HTTP errors of every kind
                    raise ManifestError(
                        f"signature {source}: Sigstore's trusted root cannot be fetched: {e}",
                        path=source,
                        reason=Reason.FETCH_ERROR,
                    ) from e
            return self._verifier


def _import(module: str) -> Any:
    """Import an optional module of the ``signing`` extra, or refuse to verify."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ManifestError(
            f"verifying signatures needs {module.partition('.')[0]}, which is not installed; "
            "install it with: pip install 'clarity-resilience[signing]'",
            reason=Reason.SIGNATURE_INVALID,
        ) from e


def _read(source: str, max_size: int, what: str) -> bytes:
    """Read a signature, key or chain file safely (no symlink, FIFO or oversize file)."""
    try:
        return read_small(source, max_size=max_size)
    except IntegrityError as e:
        if e.reason is Reason.MISSING:
            raise ManifestError(f"{what} {source} is missing", path=source, reason=e.reason) from e
        raise refuse(f"the {what} file cannot be used: {e}", source) from e


def _read_trust_file(path: str, what: str) -> bytes:
    """Read a key or certificate file: bounded, never blocking, a regular file.

    Unlike a signature, it may be a symlink: configuration mounts (Kubernetes
    ConfigMaps and Secrets) are symlinks, and the trust root is configuration.
    """
    try:
        opened = open_regular(path, follow=True)
    except IntegrityError as e:
        raise refuse(f"the {what} file cannot be used: {e}", None) from e
    chunks: list[bytes] = []
    total = 0
    try:
        while chunk := os.read(opened.fd, _MAX_PEM_SIZE + 1 - total):
            chunks.append(chunk)
            total += len(chunk)
            if total > _MAX_PEM_SIZE:
                raise refuse(f"the {what} file {path} is larger than {_MAX_PEM_SIZE} bytes", None)
    except OSError as e:
        raise refuse(f"the {what} file {path} cannot be read: {e.strerror}", None) from e
    finally:
        opened.close()
    return b"".join(chunks)


def read_pem(value: PemSource, what: str) -> bytes:
    """Return PEM bytes given as such or named by a path."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str | os.PathLike):
        return _read_trust_file(os.fspath(value), what)
    raise TypeError(f"{what} must be a path or PEM bytes, not {type(value).__name__}")


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """Return ``sha256:<hex>`` of the DER SubjectPublicKeyInfo of ``key``."""
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def check_curve(key: object, what: str) -> ec.EllipticCurvePublicKey:
    """Return ``key`` if it is an EC public key on a curve model_signing supports."""
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise refuse(f"the {what} must be an EC P-256, P-384 or P-521 public key", None)
    return key
