"""Manifest.from_signature: OMS signatures made by model_signing itself, checked offline."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
from typing import Any, ClassVar

import pytest
from signing import (
    KeyPair,
    Pki,
    cli_verifies,
    edit_payload,
    fix_subject,
    new_key,
    new_pki,
    read_statement,
    require_model_signing,
    resign,
    resign_raw,
    sign_with_certificate,
    sign_with_key,
)

import clarity_resilience as cr
from clarity_resilience import ManifestError, Reason
from clarity_resilience import _signing as signing_module

FILES = {
    "model.safetensors": bytes(range(256)) * 64,
    "config.json": b'{"layers": 2}\n',
    "tokenizer/vocab.txt": b"a\nb\nc\n",
}


@pytest.fixture(autouse=True)
def _model_signing() -> None:
    require_model_signing()


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "model"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def key(tmp_path: pathlib.Path) -> KeyPair:
    return new_key(tmp_path / "keys")


@pytest.fixture
def signature(model_dir: pathlib.Path, key: KeyPair) -> pathlib.Path:
    path = model_dir / "model.sig"
    sign_with_key(model_dir, key, path)
    return path


def digests(root: pathlib.Path) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in FILES}


def refused(signature: pathlib.Path, **trust: Any) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        cr.Manifest.from_signature(signature, **trust)
    assert caught.value.reason is Reason.SIGNATURE_INVALID, caught.value
    return caught.value


def der_fingerprint(key: KeyPair) -> str:
    from cryptography.hazmat.primitives import serialization

    der = key.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


class TestAcceptKey:
    def test_lists_the_signed_digests(
        self, model_dir: pathlib.Path, key: KeyPair, signature: pathlib.Path
    ) -> None:
        """The manifest lists every signed file with its real SHA-256 and no size."""
        manifest = cr.Manifest.from_signature(signature, public_key=key.public_pem)
        assert {p: e.sha256 for p, e in manifest.entries.items()} == digests(model_dir)
        assert all(entry.size is None for entry in manifest.entries.values())
        assert manifest.version is None

    def test_signer_is_the_key_fingerprint(self, key: KeyPair, signature: pathlib.Path) -> None:
        """The signer is sha256:<hex> of the DER public key, for the audit log."""
        manifest = cr.Manifest.from_signature(signature, public_key=key.public_pem)
        assert manifest.signer == der_fingerprint(key)
        assert "sha256:" in repr(manifest)

    def test_verify_passes_and_ignores_the_signature_file(
        self, model_dir: pathlib.Path, key: KeyPair, signature: pathlib.Path
    ) -> None:
        """verify() passes; model.sig, ignored by the signer, is not an extra file."""
        manifest = cr.Manifest.from_signature(signature, public_key=key.public_pem)
        assert {"model.sig", ".git"} <= manifest.ignore_paths
        manifest.verify(model_dir)
        assert manifest.check(model_dir) == []
        # The same entries without the signer's ignore_paths see model.sig as extra.
        plain = cr.Manifest(manifest.entries.values())
        assert [p.path for p in plain.check(model_dir)] == [str(signature)]

    def test_ignored_files_may_change(
        self, model_dir: pathlib.Path, key: KeyPair, tmp_path: pathlib.Path
    ) -> None:
        """A file the signer ignored may be added or changed; the rest still verifies."""
        (model_dir / "README.md").write_text("v1")
        signature = tmp_path / "outside.sig"
        sign_with_key(model_dir, key, signature, ignore=["README.md"])
        manifest = cr.Manifest.from_signature(signature, public_key=key.public_pem)
        assert "README.md" not in manifest.entries
        assert "README.md" in manifest.ignore_paths
        (model_dir / "README.md").write_text("v2, edited after signing")
        manifest.verify(model_dir)

    def test_matches_the_model_signing_cli(
        self, model_dir: pathlib.Path, key: KeyPair, signature: pathlib.Path
    ) -> None:
        """The model_signing CLI accepts the same directory and signature."""
        cr.Manifest.from_signature(signature, public_key=key.public_pem).verify(model_dir)
        assert cli_verifies(model_dir, signature, "key", "--public_key", str(key.public_pem))

    @pytest.mark.parametrize(
        "form",
        [
            pytest.param(lambda k: str(k.public_pem), id="str"),
            pytest.param(lambda k: k.public_pem, id="path"),
            pytest.param(lambda k: k.public_pem.read_bytes(), id="pem-bytes"),
            pytest.param(lambda k: k.private_key.public_key(), id="key-object"),
        ],
    )
    def test_key_forms(self, key: KeyPair, signature: pathlib.Path, form: Any) -> None:
        """The key may be a path (str or path-like), PEM bytes or a key object."""
        manifest = cr.Manifest.from_signature(str(signature), public_key=form(key))
        assert manifest.signer == der_fingerprint(key)

    def test_p384_key(self, model_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
        """A P-384 key (signed with SHA-384) verifies too."""
        from cryptography.hazmat.primitives.asymmetric import ec

        key = new_key(tmp_path / "k384", curve=ec.SECP384R1())
        sign_with_key(model_dir, key, model_dir / "model.sig")
        manifest = cr.Manifest.from_signature(model_dir / "model.sig", public_key=key.public_pem)
        manifest.verify(model_dir)

    def test_bundle_without_key_hint_prints_nothing(
        self, key: KeyPair, signature: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An older bundle without a key hint verifies, and nothing is printed to stdout."""
        bundle = json.loads(signature.read_text())
        del bundle["verificationMaterial"]["publicKey"]["hint"]
        signature.write_text(json.dumps(bundle))
        cr.Manifest.from_signature(signature, public_key=key.public_pem)
        assert capsys.readouterr().out == ""

    def test_equality_includes_the_signer(
        self,
        model_dir: pathlib.Path,
        key: KeyPair,
        signature: pathlib.Path,
        tmp_path: pathlib.Path,
    ) -> None:
        """The same files signed by another key make an unequal signed manifest."""
        mine = cr.Manifest.from_signature(signature, public_key=key.public_pem)
        other_key = new_key(tmp_path / "other")
        other_signature = tmp_path / "other.sig"
        sign_with_key(model_dir, other_key, other_signature, ignore=["model.sig"])
        theirs = cr.Manifest.from_signature(other_signature, public_key=other_key.public_pem)
        assert dict(mine.entries) == dict(theirs.entries)
        assert mine != theirs
        assert mine == cr.Manifest.from_signature(signature, public_key=key.public_pem)
        assert mine == cr.Manifest(mine.entries.values())  # as a plain file list

    def test_repeated_verifications_share_one_trust(
        self, key: KeyPair, signature: pathlib.Path
    ) -> None:
        """A trust root built once verifies any number of signatures (what the guard keeps)."""
        trust = signing_module.trust_from(public_key=key.public_pem)
        assert trust.verify(signature) == trust.verify(signature)


class TestRefuseSignature:
    def test_another_key(
        self, model_dir: pathlib.Path, signature: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """A signature by another key is refused, as by the CLI."""
        other = new_key(tmp_path / "other")
        error = refused(signature, public_key=other.public_pem)
        assert error.path == str(signature)
        assert not cli_verifies(model_dir, signature, "key", "--public_key", str(other.public_pem))

    def test_wrong_hint_but_other_key(
        self, signature: pathlib.Path, key: KeyPair, tmp_path: pathlib.Path
    ) -> None:
        """Another key is refused even when the bundle claims its hint."""
        other = new_key(tmp_path / "other")
        bundle = json.loads(signature.read_text())
        del bundle["verificationMaterial"]["publicKey"]["hint"]
        signature.write_text(json.dumps(bundle))
        refused(signature, public_key=other.public_pem)

    def test_edited_payload(
        self, model_dir: pathlib.Path, key: KeyPair, signature: pathlib.Path
    ) -> None:
        """One digest changed in the payload, old signature kept: refused, as by the CLI."""
        (model_dir / "config.json").write_bytes(b'{"layers": 3}\n')
        forged = hashlib.sha256(b'{"layers": 3}\n').hexdigest()

        def edit(statement: dict[str, Any]) -> None:
            for resource in statement["predicate"]["resources"]:
                if resource["name"] == "config.json":
                    resource["digest"] = forged
            fix_subject(statement)

        edit_payload(signature, edit)
        assert forged in json.dumps(read_statement(signature))
        refused(signature, public_key=key.public_pem)
        assert not cli_verifies(model_dir, signature, "key", "--public_key", str(key.public_pem))

    def test_resigned_control_is_accepted(self, key: KeyPair, signature: pathlib.Path) -> None:
        """A hand-made DSSE signature of the same statement is accepted (the harness works)."""
        resign(signature, key, lambda statement: None)
        cr.Manifest.from_signature(signature, public_key=key.public_pem)

    def test_wrong_predicate_type(
        self, model_dir: pathlib.Path, key: KeyPair, signature: pathlib.Path
    ) -> None:
        """A validly signed statement of another predicateType is refused, as by the CLI."""
        resign(signature, key, lambda s: s.update(predicateType="https://example.com/other/v1"))
        error = refused(signature, public_key=key.public_pem)
        assert "https://model_signing/signature/v1.0" in str(error)
        assert not cli_verifies(model_dir, signature, "key", "--public_key", str(key.public_pem))

    @pytest.mark.parametrize(
        ("edit", "says"),
        [
            pytest.param(
                lambda s: s.update(predicateType="https://model_signing/Digests/v0.1"),
                "predicateType",
                id="v0.2-predicate",
            ),
            pytest.param(
                lambda s: s["predicate"]["serialization"].update(method="shards"),
                "'shards'",
                id="shards",
            ),
            pytest.param(
                lambda s: s["predicate"]["serialization"].update(hash_type="blake2"),
                "'blake2'",
                id="blake2",
            ),
            pytest.param(
                lambda s: s["predicate"]["resources"][0].update(algorithm="sha512"),
                "'sha512'",
                id="resource-algorithm",
            ),
            pytest.param(lambda s: s.update(_type="https://x/y"), "statement type", id="type"),
        ],
    )
    def test_unsupported_statement(
        self, key: KeyPair, signature: pathlib.Path, edit: Any, says: str
    ) -> None:
        """An unsupported type or serialization is refused with a message saying what is."""
        resign(signature, key, edit)
        error = refused(signature, public_key=key.public_pem)
        assert says in str(error)
        assert "'files'" in str(error)

    def test_unsupported_payload_type(self, key: KeyPair, signature: pathlib.Path) -> None:
        """A DSSE payload that is not in-toto JSON is refused, even when validly signed."""
        resign(signature, key, lambda s: None, payload_type="text/plain")
        refused(signature, public_key=key.public_pem)

    @pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "a//b", ""])
    def test_unsafe_resource_name(self, key: KeyPair, signature: pathlib.Path, name: str) -> None:
        """A validly signed resource name outside the directory is refused."""

        def edit(statement: dict[str, Any]) -> None:
            statement["predicate"]["resources"][0]["name"] = name

        resign(signature, key, edit)
        error = refused(signature, public_key=key.public_pem)
        assert "resource" in str(error)

    def test_single_file_signature(
        self, model_dir: pathlib.Path, key: KeyPair, tmp_path: pathlib.Path
    ) -> None:
        """A signature of one file (not a directory) is refused with a message saying so."""
        signature = tmp_path / "single.sig"
        sign_with_key(model_dir / "config.json", key, signature)
        assert read_statement(signature)["predicate"]["resources"][0]["name"] == "."
        assert "single file" in str(refused(signature, public_key=key.public_pem))

    @pytest.mark.parametrize("name", ["../model.sig", "/etc"])
    def test_unsafe_ignore_path(self, key: KeyPair, signature: pathlib.Path, name: str) -> None:
        """A validly signed ignore path outside the directory is refused."""
        resign(
            signature, key, lambda s: s["predicate"]["serialization"]["ignore_paths"].append(name)
        )
        assert "ignored path" in str(refused(signature, public_key=key.public_pem))

    @pytest.mark.parametrize(
        ("edit", "says"),
        [
            pytest.param(
                lambda s: s["predicate"]["resources"].append(s["predicate"]["resources"][0]),
                "listed twice",
                id="duplicate-name",
            ),
            pytest.param(
                lambda s: s["predicate"]["resources"][0].update(digest="ab" * 31),
                "64 hexadecimal",
                id="short-digest",
            ),
            pytest.param(
                lambda s: s["predicate"].update(resources=[]), "no files", id="no-resources"
            ),
            pytest.param(
                lambda s: s["predicate"]["serialization"].update(ignore_paths="model.sig"),
                "ignore_paths",
                id="ignore-paths-not-a-list",
            ),
            pytest.param(lambda s: s.update(subject=[]), "one subject", id="no-subject"),
        ],
    )
    def test_malformed_statement(
        self, key: KeyPair, signature: pathlib.Path, edit: Any, says: str
    ) -> None:
        """A validly signed but malformed statement is refused, never half-read."""

        def edit_and_fix(statement: dict[str, Any]) -> None:
            edit(statement)
            if statement["subject"] and statement["predicate"]["resources"]:
                fix_subject(statement)

        resign(signature, key, edit_and_fix)
        assert says in str(refused(signature, public_key=key.public_pem))

    def test_duplicate_key_in_signed_statement(
        self, key: KeyPair, signature: pathlib.Path
    ) -> None:
        """A signed statement with a key twice is refused (readers could disagree on it)."""
        payload = json.dumps(read_statement(signature))
        doubled = '{"predicateType": "https://example.com/other", ' + payload[1:]
        resign_raw(signature, key, doubled.encode())
        assert "appears twice" in str(refused(signature, public_key=key.public_pem))

    def test_duplicate_key_in_bundle(self, key: KeyPair, signature: pathlib.Path) -> None:
        """A bundle with a key twice is refused, even when the last copy is the valid one."""
        text = signature.read_text()
        signature.write_text('{"dsseEnvelope": {}, ' + text.lstrip()[1:])
        assert "appears twice" in str(refused(signature, public_key=key.public_pem))

    def test_subject_digest_out_of_step(self, key: KeyPair, signature: pathlib.Path) -> None:
        """A statement whose subject digest does not cover its resources is refused."""

        def edit(statement: dict[str, Any]) -> None:
            statement["predicate"]["resources"][0]["digest"] = "0" * 64

        resign(signature, key, edit)
        assert "subject digest" in str(refused(signature, public_key=key.public_pem))

    @pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.99])
    def test_truncated_bundle(self, key: KeyPair, signature: pathlib.Path, keep: float) -> None:
        """A bundle cut short anywhere is refused with a typed error."""
        data = signature.read_bytes()
        signature.write_bytes(data[: int(len(data) * keep)])
        refused(signature, public_key=key.public_pem)

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param(b"\xff\xfe not utf-8", id="not-utf8"),
            pytest.param(b"[]", id="json-list"),
            pytest.param(b'{"mediaType": 1, "mediaType": 2}', id="duplicate-key"),
            pytest.param(b"[" * 100_000, id="deep-nesting"),
            pytest.param(b"{}", id="empty-object"),
        ],
    )
    def test_malformed_bundle(self, key: KeyPair, signature: pathlib.Path, content: bytes) -> None:
        """A bundle that is not a well-formed JSON bundle is refused with a typed error."""
        signature.write_bytes(content)
        refused(signature, public_key=key.public_pem)

    @pytest.mark.parametrize(
        "edit",
        [
            pytest.param(lambda b: b["dsseEnvelope"].update(signatures=[]), id="no-signature"),
            pytest.param(lambda b: b["dsseEnvelope"].update(payload="%%%"), id="bad-base64"),
            pytest.param(lambda b: b.pop("dsseEnvelope"), id="no-envelope"),
            pytest.param(lambda b: b.update(mediaType="application/x"), id="media-type"),
            pytest.param(
                lambda b: b["dsseEnvelope"].update(signatures=[{"sig": 5}]), id="sig-type"
            ),
        ],
    )
    def test_malformed_envelope(self, key: KeyPair, signature: pathlib.Path, edit: Any) -> None:
        """A bundle with a broken DSSE envelope is refused with a typed error."""
        bundle = json.loads(signature.read_text())
        edit(bundle)
        signature.write_text(json.dumps(bundle))
        refused(signature, public_key=key.public_pem)

    def test_fifo_bundle_does_not_hang(self, key: KeyPair, tmp_path: pathlib.Path) -> None:
        """A FIFO in place of the bundle is refused at once (no writer, no hang)."""
        fifo = tmp_path / "model.sig"
        os.mkfifo(fifo)
        refused(fifo, public_key=key.public_pem)

    def test_symlinked_bundle(
        self, key: KeyPair, signature: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """A symlink to a valid bundle is refused: the bundle is opened without following it."""
        link = tmp_path / "link.sig"
        link.symlink_to(signature)
        refused(link, public_key=key.public_pem)

    def test_oversize_bundle(
        self, key: KeyPair, signature: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bundle larger than the cap is refused before it is parsed."""
        monkeypatch.setattr(signing_module, "MAX_SIGNATURE_SIZE", 100)
        assert "larger than 100 bytes" in str(refused(signature, public_key=key.public_pem))

    def test_missing_bundle(self, key: KeyPair, tmp_path: pathlib.Path) -> None:
        """A missing bundle is a ManifestError with reason MISSING (deploy out of step)."""
        with pytest.raises(ManifestError) as caught:
            cr.Manifest.from_signature(tmp_path / "absent.sig", public_key=key.public_pem)
        assert caught.value.reason is Reason.MISSING


class TestTrustArguments:
    @pytest.mark.parametrize(
        "kwargs",
        [
            pytest.param({}, id="none"),
            pytest.param({"public_key": b"k", "certificate_chain": b"c"}, id="two"),
            pytest.param({"identity": "me@example.com"}, id="identity-without-issuer"),
            pytest.param({"issuer": "https://issuer"}, id="issuer-alone"),
            pytest.param({"public_key": b"k", "issuer": "https://issuer"}, id="key-and-issuer"),
        ],
    )
    def test_exactly_one_trust_root(self, signature: pathlib.Path, kwargs: Any) -> None:
        """Not exactly one trust root is a programming error (TypeError), not a refusal."""
        with pytest.raises(TypeError):
            cr.Manifest.from_signature(signature, **kwargs)

    @pytest.mark.parametrize(
        "public_key",
        [
            pytest.param(b"not a key", id="garbage"),
            pytest.param("keys/key.pem", id="private-key-file"),
        ],
    )
    def test_unusable_key(
        self, signature: pathlib.Path, tmp_path: pathlib.Path, public_key: Any
    ) -> None:
        """A key that is not an EC public key is refused as SIGNATURE_INVALID."""
        if isinstance(public_key, str):
            public_key = tmp_path / public_key
        refused(signature, public_key=public_key)

    def test_symlinked_key_file(
        self, key: KeyPair, signature: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """A key file reached through a symlink (a Kubernetes ConfigMap mount) is accepted."""
        link = tmp_path / "mounted.pub"
        link.symlink_to(key.public_pem)
        manifest = cr.Manifest.from_signature(signature, public_key=link)
        assert manifest.signer == der_fingerprint(key)

    @pytest.mark.parametrize("kind", ["fifo", "directory", "missing", "oversize"])
    def test_unusable_key_file(
        self, signature: pathlib.Path, tmp_path: pathlib.Path, kind: str
    ) -> None:
        """A key path that is a FIFO, a directory, absent or huge is refused at once."""
        path = tmp_path / "key.pub"
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "directory":
            path.mkdir()
        elif kind == "oversize":
            path.write_bytes(b"x" * (1024 * 1024 + 1))
        refused(signature, public_key=path)

    @pytest.mark.parametrize("kind", ["rsa", "p224"])
    def test_unsupported_key_type(self, kind: str) -> None:
        """An RSA or P-224 key is refused when the trust is built (OMS: P-256/384/521)."""
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        if kind == "rsa":
            public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        else:
            public = ec.generate_private_key(ec.SECP224R1()).public_key()
        with pytest.raises(ManifestError) as caught:
            signing_module.trust_from(public_key=public)  # type: ignore[arg-type]
        assert caught.value.reason is Reason.SIGNATURE_INVALID
        assert "P-256" in str(caught.value)

    def test_key_given_as_number(self, signature: pathlib.Path) -> None:
        """A key of a wrong type is a TypeError."""
        with pytest.raises(TypeError):
            cr.Manifest.from_signature(signature, public_key=42)  # type: ignore[arg-type]


class TestDirectoryAgainstSignature:
    """The signed manifest catches tampering of the directory, as the CLI does."""

    def test_one_byte_changed(
        self, model_dir: pathlib.Path, key: KeyPair, signature: pathlib.Path
    ) -> None:
        """One byte of one file changed: checksum_mismatch, by verify and read_entry."""
        manifest = cr.Manifest.from_signature(signature, public_key=key.public_pem)
        data = bytearray((model_dir / "model.safetensors").read_bytes())
        data[1000] ^= 1
        (model_dir / "model.safetensors").write_bytes(bytes(data))
        with pytest.raises(cr.ChecksumMismatchError):
            manifest.verify(model_dir)
        with pytest.raises(cr.ChecksumMismatchError):
            manifest.read_entry(model_dir, "model.safetensors")
        assert manifest.read_entry(model_dir, "config.json") == FILES["config.json"]
        assert not cli_verifies(model_dir, signature, "key", "--public_key", str(key.public_pem))

    def test_two_names_swapped(
        self, model_dir: pathlib.Path, key: KeyPair, signature: pathlib.Path
    ) -> None:
        """Two files' names swapped: both are refused (checksum_mismatch)."""
        manifest = cr.Manifest.from_signature(signature, public_key=key.public_pem)
        a, b = model_dir / "config.json", model_dir / "tokenizer/vocab.txt"
        swap = model_dir / "swap"
        a.rename(swap)
        b.rename(a)
        swap.rename(b)
        with pytest.raises(ManifestError) as caught:
            manifest.verify(model_dir)
        assert caught.value.reason is Reason.CHECKSUM_MISMATCH
        assert len(caught.value.problems) == 2
        assert not cli_verifies(model_dir, signature, "key", "--public_key", str(key.public_pem))

    def test_extra_unsigned_file(
        self, model_dir: pathlib.Path, key: KeyPair, signature: pathlib.Path
    ) -> None:
        """An extra file nobody signed is refused (manifest_invalid), as by the CLI."""
        manifest = cr.Manifest.from_signature(signature, public_key=key.public_pem)
        (model_dir / "extra.py").write_text("import os\n")
        with pytest.raises(cr.IntegrityError) as caught:
            manifest.verify(model_dir)
        assert caught.value.reason is Reason.MANIFEST_INVALID
        assert caught.value.path == str(model_dir / "extra.py")
        assert not cli_verifies(model_dir, signature, "key", "--public_key", str(key.public_pem))

    def test_deleted_file(
        self, model_dir: pathlib.Path, key: KeyPair, signature: pathlib.Path
    ) -> None:
        """A signed file deleted: missing."""
        manifest = cr.Manifest.from_signature(signature, public_key=key.public_pem)
        (model_dir / "config.json").unlink()
        with pytest.raises(cr.IntegrityError) as caught:
            manifest.verify(model_dir)
        assert caught.value.reason is Reason.MISSING
        assert not cli_verifies(model_dir, signature, "key", "--public_key", str(key.public_pem))


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return new_pki(tmp_path / "pki")


class TestCertificate:
    def test_accepts_a_chain_to_the_root(self, model_dir: pathlib.Path, pki: Pki) -> None:
        """A certificate-signed model verifies against the root; the signer is its subject."""
        signature = model_dir / "model.sig"
        sign_with_certificate(model_dir, pki, signature)
        manifest = cr.Manifest.from_signature(signature, certificate_chain=pki.root_pem)
        assert manifest.signer == pki.leaf_subject
        assert {p: e.sha256 for p, e in manifest.entries.items()} == digests(model_dir)
        manifest.verify(model_dir)
        chain = ("certificate", "--certificate_chain", str(pki.root_pem))
        assert cli_verifies(model_dir, signature, *chain)

    @pytest.mark.parametrize(
        "form",
        [
            pytest.param(lambda p: [p.root_pem, p.intermediate_pem], id="list-of-paths"),
            pytest.param(lambda p: p.root_pem.read_bytes(), id="pem-bytes"),
            pytest.param(lambda p: [str(p.root_pem)], id="list-of-str"),
        ],
    )
    def test_chain_forms(self, model_dir: pathlib.Path, pki: Pki, form: Any) -> None:
        """The chain may be one or several paths or PEM bytes."""
        signature = model_dir / "model.sig"
        sign_with_certificate(model_dir, pki, signature)
        manifest = cr.Manifest.from_signature(signature, certificate_chain=form(pki))
        assert manifest.signer == pki.leaf_subject

    def test_another_root(self, model_dir: pathlib.Path, pki: Pki, tmp_path: pathlib.Path) -> None:
        """A certificate from another CA is refused, as by the CLI."""
        signature = model_dir / "model.sig"
        sign_with_certificate(model_dir, pki, signature)
        other = new_pki(tmp_path / "other", name="Other")
        refused(signature, certificate_chain=other.root_pem)
        chain = ("certificate", "--certificate_chain", str(other.root_pem))
        assert not cli_verifies(model_dir, signature, *chain)

    def test_edited_payload(self, model_dir: pathlib.Path, pki: Pki) -> None:
        """A certificate-signed payload edited after signing is refused."""
        signature = model_dir / "model.sig"
        sign_with_certificate(model_dir, pki, signature)
        edit_payload(signature, lambda s: s["predicate"]["resources"].pop())
        refused(signature, certificate_chain=pki.root_pem)

    @pytest.mark.parametrize(
        "chain", [pytest.param([], id="empty-list"), pytest.param(b"", id="empty-bytes")]
    )
    def test_no_roots(self, model_dir: pathlib.Path, pki: Pki, chain: Any) -> None:
        """No certificate given is refused: the operating system's roots are never trusted."""
        signature = model_dir / "model.sig"
        sign_with_certificate(model_dir, pki, signature)
        refused(signature, certificate_chain=chain)

    def test_certificate_bundle_is_not_key_signed(self, model_dir: pathlib.Path, pki: Pki) -> None:
        """A certificate-signed bundle is refused by a key trust, even the leaf's own key."""
        signature = model_dir / "model.sig"
        sign_with_certificate(model_dir, pki, signature)
        refused(signature, public_key=pki.leaf_key.public_pem)

    def test_key_signed_bundle_is_not_certificate_signed(
        self, pki: Pki, signature: pathlib.Path
    ) -> None:
        """A key-signed bundle (no certificate in it) is refused by a certificate trust."""
        refused(signature, certificate_chain=pki.root_pem)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> list[object]:
    """Refuse every DNS lookup and connection, recording the attempts."""
    attempts: list[object] = []

    def refuse_lookup(*args: object, **kwargs: object) -> Any:
        attempts.append(args[0] if args else kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "network disabled by the test")

    def refuse_connect(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    # sigstore's TUF cache goes under these: keep it out of the user's home.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return attempts


class TestSigstoreKeyless:
    """Keyless Sigstore needs the network; offline we test up to that boundary."""

    IDENTITY: ClassVar[dict[str, str]] = {
        "identity": "release@example.com",
        "issuer": "https://accounts.example.com",
    }

    def test_building_the_trust_touches_no_network(self, no_network: list[object]) -> None:
        """Building a keyless trust root makes no DNS lookup or connection."""
        trust = signing_module.trust_from(**self.IDENTITY)
        assert isinstance(trust, signing_module.SigstoreTrust)
        assert no_network == []

    def test_a_key_bundle_is_refused_before_the_network(
        self, signature: pathlib.Path, no_network: list[object]
    ) -> None:
        """A bundle that cannot be a keyless one is refused without going online."""
        refused(signature, **self.IDENTITY)
        assert no_network == []

    def test_offline_fetch_of_the_trusted_root_fails_typed(self, no_network: list[object]) -> None:
        """Offline, fetching Sigstore's trusted root fails with FETCH_ERROR, not a crash."""
        trust = signing_module.SigstoreTrust(**self.IDENTITY)
        with pytest.raises(ManifestError) as caught:
            trust._sigstore_verifier("model.sig")
        assert caught.value.reason is Reason.FETCH_ERROR
        assert no_network, "the trusted root fetch never reached the network boundary"

    def test_empty_identity(self) -> None:
        """An empty identity or issuer is a TypeError."""
        with pytest.raises(TypeError):
            signing_module.trust_from(identity="", issuer="https://accounts.example.com")


class TestImports:
    def test_import_loads_no_signing_library(self) -> None:
        """Importing the package (or the adapter) imports no model_signing, sigstore or OpenSSL."""
        code = (
            "import sys, clarity_resilience, clarity_resilience._signing\n"
            "heavy = ('model_signing', 'sigstore', 'sigstore_models', 'OpenSSL', 'cryptography')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ.copy(),
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]"


class TestReason:
    def test_signature_invalid_is_an_integrity_reason(self) -> None:
        """signature_invalid alerts like the other integrity reasons and waits for an operator."""
        from clarity_resilience._reasons import INTEGRITY_REASONS, REFUSAL_REASONS, bytes_refused

        assert Reason.SIGNATURE_INVALID.value == "signature_invalid"
        assert Reason.SIGNATURE_INVALID in INTEGRITY_REASONS
        assert Reason.SIGNATURE_INVALID in REFUSAL_REASONS
        assert bytes_refused(Reason.SIGNATURE_INVALID)

    def test_metric_is_pre_initialised(self, registry: Any) -> None:
        """The signature_invalid integrity-failure series exists at 0 from the start."""
        from clarity_resilience.instrumentation import Emitter, IntegrityCheckPassed

        Emitter(registry).emit(IntegrityCheckPassed(model="m", path="p", size=0, duration=0.0))
        value = registry.get_sample_value(
            "model_integrity_failures_total", {"model": "m", "reason": "signature_invalid"}
        )
        assert value == 0.0

    def test_refusal_answers_integrity_failure_without_details(
        self, signature: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """A refused signature is HTTP 503 integrity_failure; the body names no path or signer."""
        from clarity_resilience.degradation import problem_for

        other = new_key(tmp_path / "other")
        problem = problem_for(refused(signature, public_key=other.public_pem))
        assert problem is not None
        assert (problem.status, problem.reason) == (503, "integrity_failure")
        assert str(signature) not in problem.body().decode()

    def test_payload_is_base64_of_the_statement(self, signature: pathlib.Path) -> None:
        """The harness reads the statement model_signing wrote (sanity for the helpers)."""
        bundle = json.loads(signature.read_text())
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        assert statement["predicateType"] == "https://model_signing/signature/v1.0"
