"""Trust a public key or a certificate chain: ``model_signing``'s own verifiers, kept private.

``model_signing`` 1.1.x has no public call that checks a signature without hashing the
model, so its key and certificate verifiers (``model_signing._signing``) are used
directly. They are built from key material this library read itself (safely, from
the path or bytes given) instead of from paths they would open. This is the one place
that touches ``model_signing`` internals; the ``signing`` extra pins ``>=1.1,<1.2``
and the tests compare every outcome with the ``model_signing verify`` CLI.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._signing import (
    PemSource,
    SignatureTrust,
    _import,
    check_curve,
    key_fingerprint,
    read_pem,
)
from ._signing_statement import load_json, refuse

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["CertificateTrust", "KeyTrust"]


def _bundle(raw: bytes, source: str, hint: str | None) -> Any:
    """Parse a key- or certificate-signed bundle as ``model_signing`` reads it."""
    data = load_json(raw, "bundle", source)
    sigstore_pb = _import("model_signing._signing.sign_sigstore_pb")
    bundle_pb = _import("sigstore_models.bundle.v1")
    try:
        # The same adjustments as model_signing's Signature.read (older bundle layouts).
        material = data["verificationMaterial"]
        material.setdefault("tlogEntries", [])
        key = material.get("publicKey")
        if key is not None:
            for legacy in ("rawBytes", "keyDetails"):
                key.pop(legacy, None)
            if not key.get("hint") and hint is not None:
                # Pre-1.1 bundles carry no key hint and model_signing would print a warning
                # to stdout; the hint is advisory (a wrong one is still refused), the
                # signature is what gets checked.
                key["hint"] = hint
        return sigstore_pb.Signature(bundle_pb.Bundle.from_dict(data))
    except Exception as e:  # noqa: BLE001  # KeyError, TypeError, pydantic errors...
        raise refuse(f"the bundle is malformed: {type(e).__name__}: {e}", source) from None


def _verified(verifier: Any, signature: Any, source: str) -> tuple[str, bytes]:
    try:
        payload_type, payload = verifier._verify_signed_content(signature)
    except Exception as e:  # noqa: BLE001  # InvalidSignature, ValueError, OpenSSL errors...
        detail = str(e) or type(e).__name__
        message = f"the signature does not verify with the trusted signer: {detail}"
        raise refuse(message, source) from None
    if not isinstance(payload_type, str) or not isinstance(payload, bytes):
        raise refuse("the bundle holds no DSSE envelope", source)
    return payload_type, payload


class KeyTrust(SignatureTrust):
    """Signatures made with the private half of one EC public key (``sign key``)."""

    def __init__(self, public_key: PemSource | ec.EllipticCurvePublicKey) -> None:
        from cryptography.hazmat.primitives import serialization

        sign_ec_key = _import("model_signing._signing.sign_ec_key")
        key: object = public_key
        if isinstance(public_key, str | os.PathLike | bytes):
            pem = read_pem(public_key, "public key")
            try:
                key = serialization.load_pem_public_key(pem)
            except (ValueError, TypeError) as e:
                raise refuse(f"the public key is not a PEM public key: {e}", None) from None
        elif not hasattr(public_key, "public_bytes"):
            kind = type(public_key).__name__
            raise TypeError(f"public_key must be a path, PEM bytes or a public key, not {kind}")
        self._key = check_curve(key, "public key")
        self._signer = key_fingerprint(self._key)
        pem_spki = self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._hint = hashlib.sha256(pem_spki).hexdigest()  # what model_signing records
        # Verifier.__init__ only reads a key file into _public_key; we read it ourselves.
        self._verifier = sign_ec_key.Verifier.__new__(sign_ec_key.Verifier)
        self._verifier._public_key = self._key

    def _authenticate(self, raw: bytes, source: str) -> tuple[str, bytes, str]:
        signature = _bundle(raw, source, self._hint)
        payload_type, payload = _verified(self._verifier, signature, source)
        return payload_type, payload, self._signer


class CertificateTrust(SignatureTrust):
    """Signatures by a certificate that chains to the given roots (``sign certificate``).

    As in ``model_signing``, the chain is checked at the signing certificate's
    not-before time, its key usage must allow signing, and the signature is checked
    with its key. Never the operating system's roots: the chain must be given.
    """

    def __init__(self, certificate_chain: PemSource | Iterable[PemSource]) -> None:
        from cryptography import x509

        crypto = _import("OpenSSL.crypto")
        sign_certificate = _import("model_signing._signing.sign_certificate")
        sources: list[PemSource]
        if isinstance(certificate_chain, str | bytes | os.PathLike):
            sources = [certificate_chain]
        else:
            sources = list(certificate_chain)
        pem = b"".join(read_pem(source, "certificate chain") for source in sources)
        try:
            certificates = x509.load_pem_x509_certificates(pem)
        except ValueError as e:
            raise refuse(f"the certificate chain is not PEM certificates: {e}", None) from None
        store = crypto.X509Store()
        for certificate in certificates:
            store.add_cert(crypto.X509.from_cryptography(certificate))
        # Verifier.__init__ only builds this store from files; we read them ourselves.
        self._verifier = sign_certificate.Verifier.__new__(sign_certificate.Verifier)
        self._verifier._log_fingerprints = False
        self._verifier._store = store
        # The verifier sets the store's time per signature: one verification at a time.
        self._lock = threading.Lock()

    def _authenticate(self, raw: bytes, source: str) -> tuple[str, bytes, str]:
        from cryptography import x509

        signature = _bundle(raw, source, None)
        with self._lock:
            payload_type, payload = _verified(self._verifier, signature, source)
        chain = signature.bundle.verification_material.x509_certificate_chain
        leaf = x509.load_der_x509_certificate(chain.certificates[0].raw_bytes)
        return payload_type, payload, leaf.subject.rfc4514_string()
