"""Real OMS signatures for tests: fresh keys, a throwaway CA, model_signing's own signer.

Keys and certificates are made with ``cryptography``; directories are signed through
``model_signing``'s signing API, exactly as ``model_signing sign key|certificate``
does. :func:`resign` builds a DSSE signature by hand (PAE + ECDSA, from the DSSE spec)
so a test can sign a statement ``model_signing`` itself would never produce.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import pathlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from requirements import missing

PAYLOAD_TYPE = "application/vnd.in-toto+json"


def require_model_signing() -> None:
    """Skip locally / fail in CI when the ``signing`` extra is not installed."""
    try:
        import model_signing.signing  # noqa: F401
        import OpenSSL  # noqa: F401
    except ImportError:
        missing("model-signing and pyOpenSSL (the 'signing' extra)")


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A private key and its public half, written as PEM files."""

    private_key: Any
    private_pem: pathlib.Path
    public_pem: pathlib.Path


def new_key(directory: pathlib.Path, name: str = "key", curve: Any = None) -> KeyPair:
    """Generate a fresh EC key (P-256 by default) and write both halves under ``directory``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(curve or ec.SECP256R1())
    directory.mkdir(parents=True, exist_ok=True)
    private_pem = directory / f"{name}.pem"
    public_pem = directory / f"{name}.pub"
    private_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(key, private_pem, public_pem)


def _hashing_config(ignore: Sequence[str]) -> Any:
    import model_signing.hashing

    return model_signing.hashing.Config().set_ignored_paths(paths=list(ignore))


def sign_with_key(
    model: pathlib.Path, key: KeyPair, signature: pathlib.Path, ignore: Sequence[str] = ()
) -> None:
    """Sign ``model`` as ``model_signing sign key`` does (the signature file is ignored)."""
    import model_signing.signing

    ignored = [*ignore, *_inside(model, signature)]
    (
        model_signing.signing.Config()
        .use_elliptic_key_signer(private_key=key.private_pem)
        .set_hashing_config(_hashing_config(ignored))
        .sign(model, signature)
    )


def _inside(model: pathlib.Path, path: pathlib.Path) -> list[str]:
    # The CLI leaves the signature it writes out of the signed file list.
    return [str(path.relative_to(model))] if path.is_relative_to(model) else []


@dataclasses.dataclass(frozen=True)
class Pki:
    """A throwaway CA: root, intermediate, and a code-signing leaf with its key."""

    root_pem: pathlib.Path
    intermediate_pem: pathlib.Path
    leaf_pem: pathlib.Path
    leaf_key: KeyPair
    leaf_subject: str


def new_pki(directory: pathlib.Path, name: str = "Test") -> Pki:
    """Create a root CA, an intermediate CA and a signing certificate under ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    root_key = new_key(directory, f"{name}-root")
    intermediate_key = new_key(directory, f"{name}-intermediate")
    leaf_key = new_key(directory, f"{name}-leaf")

    def certificate(
        subject: str, key: KeyPair, issuer: str, issuer_key: KeyPair, ca: bool
    ) -> x509.Certificate:
        usage = x509.KeyUsage(
            digital_signature=not ca,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        )
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .sign(issuer_key.private_key, hashes.SHA256())
        )

    root_name, intermediate_name = f"{name} Root CA", f"{name} Intermediate CA"
    leaf_name = f"{name} model signer"
    certificates = {
        "root": certificate(root_name, root_key, root_name, root_key, ca=True),
        "intermediate": certificate(
            intermediate_name, intermediate_key, root_name, root_key, ca=True
        ),
        "leaf": certificate(leaf_name, leaf_key, intermediate_name, intermediate_key, ca=False),
    }
    paths = {}
    for role, cert in certificates.items():
        paths[role] = directory / f"{name}-{role}.crt"
        paths[role].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pki(paths["root"], paths["intermediate"], paths["leaf"], leaf_key, f"CN={leaf_name}")


def sign_with_certificate(model: pathlib.Path, pki: Pki, signature: pathlib.Path) -> None:
    """Sign ``model`` as ``model_signing sign certificate`` does (leaf + intermediate)."""
    import model_signing.signing

    (
        model_signing.signing.Config()
        .use_certificate_signer(
            private_key=pki.leaf_key.private_pem,
            signing_certificate=pki.leaf_pem,
            certificate_chain=[pki.intermediate_pem],
        )
        .set_hashing_config(_hashing_config(_inside(model, signature)))
        .sign(model, signature)
    )


def read_statement(signature: pathlib.Path) -> dict[str, Any]:
    """Return the in-toto statement inside a signature file (not verified)."""
    bundle = json.loads(signature.read_text())
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def edit_payload(signature: pathlib.Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change the signed statement in place and keep the old signature (a forgery)."""
    bundle = json.loads(signature.read_text())
    statement = read_statement(signature)
    edit(statement)
    payload = json.dumps(statement).encode()
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    signature.write_text(json.dumps(bundle))


def pae(payload: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """Return the DSSE v1 pre-authentication encoding of ``payload``."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def resign(
    signature: pathlib.Path,
    key: KeyPair,
    edit: Callable[[dict[str, Any]], None],
    payload_type: str = PAYLOAD_TYPE,
) -> None:
    """Change the signed statement and sign it again, by hand, with ``key`` (trusted)."""

    statement = read_statement(signature)
    edit(statement)
    resign_raw(signature, key, json.dumps(statement).encode(), payload_type)


def resign_raw(
    signature: pathlib.Path, key: KeyPair, payload: bytes, payload_type: str = PAYLOAD_TYPE
) -> None:
    """Replace the payload with ``payload`` (any bytes) signed, by hand, with ``key``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    bundle = json.loads(signature.read_text())
    signed = key.private_key.sign(pae(payload, payload_type), ec.ECDSA(hashes.SHA256()))
    envelope = bundle["dsseEnvelope"]
    envelope["payload"] = base64.b64encode(payload).decode()
    envelope["payloadType"] = payload_type
    envelope["signatures"] = [{"sig": base64.b64encode(signed).decode(), "keyid": ""}]
    signature.write_text(json.dumps(bundle))


def fix_subject(statement: dict[str, Any]) -> None:
    """Recompute the subject digest over the (edited) resources, as model_signing does."""
    import hashlib

    hasher = hashlib.sha256()
    for resource in statement["predicate"]["resources"]:
        hasher.update(bytes.fromhex(resource["digest"]))
    statement["subject"][0]["digest"]["sha256"] = hasher.hexdigest()


def cli_verifies(model: pathlib.Path, signature: pathlib.Path, *trust: str) -> bool:
    """Return whether ``model_signing verify`` (the CLI, the oracle) accepts the model.

    Args:
        trust: ``"key", "--public_key", path`` or ``"certificate", "--certificate_chain", ...``.
    """
    result = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", *trust, "--signature", signature, model],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode == 0
