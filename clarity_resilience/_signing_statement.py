"""Read the parts of an OMS signature (OpenSSF Model Signing) that carry no trust themselves.

Two strict parsers live here: one for the Sigstore bundle JSON (before its signature
is checked) and one for the in-toto statement the signature covers (after). Both
refuse rather than guess: an OMS statement this library cannot read exactly is a
model it will not serve. Every refusal is a ``ManifestError`` with reason
``SIGNATURE_INVALID``, raised by :func:`refuse`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from ._manifest_format import excerpt, normalize_digest, normalize_path
from ._reasons import Reason
from .exceptions import ManifestError

__all__ = [
    "IN_TOTO_PAYLOAD_TYPE",
    "IN_TOTO_STATEMENT_TYPE",
    "PREDICATE_TYPE",
    "SUPPORTED",
    "Statement",
    "load_json",
    "parse_statement",
    "refuse",
]

#: The DSSE ``payloadType`` of an OMS signature.
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: The in-toto statement ``_type`` model_signing 1.x writes.
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
#: The only OMS predicate type read (model_signing 1.x); the v0.2 one is refused.
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
#: What is supported, spelled out in every refusal of an unsupported statement.
SUPPORTED = f"predicateType {PREDICATE_TYPE!r} with serialization method 'files' and sha256"


def refuse(problem: str, source: str | None) -> ManifestError:
    """Return the error for a signature that cannot be trusted or used."""
    where = f"signature {source}" if source else "signature"
    return ManifestError(f"{where}: {problem}", path=source, reason=Reason.SIGNATURE_INVALID)


class _DuplicateKeyError(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two equal keys would let two readers of the same signed bytes disagree: refuse them.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(f"key {excerpt(key)} appears twice")
        result[key] = value
    return result


def load_json(raw: bytes, what: str, source: str | None) -> dict[str, Any]:
    """Return the JSON object in ``raw`` (UTF-8), refusing anything else.

    Raises:
        ManifestError: Not UTF-8, not JSON, a duplicate key, or not an object
            (``SIGNATURE_INVALID``).
    """
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_object)
    except UnicodeDecodeError:
        raise refuse(f"the {what} is not UTF-8 text", source) from None
    except json.JSONDecodeError as e:
        raise refuse(f"the {what} is not valid JSON ({e.msg}, offset {e.pos})", source) from None
    except (ValueError, RecursionError) as e:  # duplicate keys, huge integers, deep nesting
        raise refuse(f"the {what} is not usable JSON: {excerpt(str(e))}", source) from None
    if not isinstance(data, dict):
        raise refuse(f"the {what} must be a JSON object", source)
    return data


class Statement:
    """What an authenticated OMS statement says: the files, their digests, what to ignore.

    Attributes:
        resources: ``(path, sha256)`` pairs, paths normalized and checked as in a manifest.
        ignore_paths: Relative paths the signer left out of the signature.
    """

    __slots__ = ("ignore_paths", "resources")

    def __init__(self, resources: list[tuple[str, str]], ignore_paths: frozenset[str]) -> None:
        self.resources = resources
        self.ignore_paths = ignore_paths


def _field(data: dict[str, Any], key: str, kind: type, where: str, source: str | None) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise refuse(f"{where}{key!r} must be a JSON {kind.__name__}", source)
    return value


def parse_statement(payload_type: str, payload: bytes, source: str | None) -> Statement:
    """Read the in-toto statement of an authenticated DSSE envelope.

    Only call this on a payload whose signature was verified: nothing here is proof.

    Raises:
        ManifestError: The statement is malformed, of an unsupported type or
            serialization, or names an unsafe path (``SIGNATURE_INVALID``).
    """
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise refuse(f"payload type {excerpt(payload_type)} is not supported; {SUPPORTED}", source)
    data = load_json(payload, "signed statement", source)
    if data.get("_type") != IN_TOTO_STATEMENT_TYPE:
        statement_type = excerpt(data.get("_type"))
        raise refuse(f"statement type {statement_type} is not supported; {SUPPORTED}", source)
    predicate_type = data.get("predicateType")
    if predicate_type != PREDICATE_TYPE:
        raise refuse(
            f"predicateType {excerpt(predicate_type)} is not supported; {SUPPORTED}", source
        )
    predicate = _field(data, "predicate", dict, "", source)
    serialization = _field(predicate, "serialization", dict, "predicate ", source)
    method, hash_type = serialization.get("method"), serialization.get("hash_type")
    if method != "files" or hash_type != "sha256":
        raise refuse(
            f"serialization method {excerpt(method)} with hash_type {excerpt(hash_type)} "
            f"is not supported; {SUPPORTED}",
            source,
        )
    ignored = serialization.get("ignore_paths", [])
    if not isinstance(ignored, list) or not all(isinstance(p, str) for p in ignored):
        raise refuse("serialization 'ignore_paths' must be a list of strings", source)
    resources = _field(predicate, "resources", list, "predicate ", source)
    if not resources:
        raise refuse("the statement lists no files", source)
    pairs = list(_resources(resources, source))
    _check_subject(data.get("subject"), pairs, source)
    return Statement(pairs, frozenset(_safe_path(p, "ignored path", source) for p in ignored))


def _resources(resources: list[Any], source: str | None) -> Iterator[tuple[str, str]]:
    for resource in resources:
        if not isinstance(resource, dict):
            raise refuse("every resource must be a JSON object", source)
        name = resource.get("name")
        if name == ".":
            # model_signing names the only resource "." when it signs one file, not a directory.
            raise refuse(
                "it signs a single file (resource '.'), not a directory; sign the model's "
                "directory, or pin the file's sha256",
                source,
            )
        algorithm = resource.get("algorithm")
        if algorithm != "sha256":
            problem = f"resource {excerpt(name)} uses algorithm {excerpt(algorithm)}; {SUPPORTED}"
            raise refuse(problem, source)
        try:
            digest = normalize_digest(resource.get("digest"))
        except ManifestError as e:
            raise refuse(f"resource {excerpt(name)}: {e}", source) from None
        yield _safe_path(name, "resource", source), digest


def _safe_path(name: object, what: str, source: str | None) -> str:
    try:
        return normalize_path(name)
    except ManifestError as e:
        # The same rules as a manifest's paths; the signer vouching for a name does not
        # make "../x" or "/etc/passwd" a file inside the model directory.
        raise refuse(f"{what} {e}", source) from None


def _check_subject(subject: object, pairs: list[tuple[str, str]], source: str | None) -> None:
    # model_signing's subject digest is SHA-256 over the raw resource digests, in order;
    # checking it keeps us from accepting a statement model_signing would refuse.
    if not (isinstance(subject, list) and len(subject) == 1 and isinstance(subject[0], dict)):
        raise refuse("the statement must have exactly one subject", source)
    digest = subject[0].get("digest")
    expected = digest.get("sha256") if isinstance(digest, dict) else None
    hasher = hashlib.sha256()
    for _, hex_digest in pairs:
        hasher.update(bytes.fromhex(hex_digest))
    if not isinstance(expected, str) or expected.lower() != hasher.hexdigest():
        raise refuse("the subject digest does not match the listed resources", source)
