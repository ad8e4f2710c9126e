"""sources.read_signed_manifest: an OMS signature fetched through a source, then trusted."""

from __future__ import annotations

import hashlib
import pathlib

import pytest
from prometheus_client import CollectorRegistry
from signing import KeyPair, new_key, require_model_signing, sign_with_key
from store_testing import failures

import clarity_resilience as cr
from clarity_resilience import ChecksumMismatchError, ManifestError, Reason
from clarity_resilience import _signing as signing_module
from clarity_resilience.sources import FsspecSource, read_signed_manifest

FILES = {
    "model.safetensors": bytes(range(256)) * 64,
    "config.json": b'{"layers": 2}\n',
}


@pytest.fixture(autouse=True)
def _model_signing() -> None:
    require_model_signing()


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "model"
    root.mkdir()
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def key(tmp_path: pathlib.Path) -> KeyPair:
    return new_key(tmp_path / "keys")


@pytest.fixture
def published(tmp_path: pathlib.Path, model_dir: pathlib.Path, key: KeyPair) -> pathlib.Path:
    """Sign the model and publish the signature in a "store" directory."""
    store = tmp_path / "store"
    store.mkdir()
    sign_with_key(model_dir, key, store / "model.sig")
    return store / "model.sig"


def source_of(path: pathlib.Path, cache: pathlib.Path, **options: object) -> FsspecSource:
    options.setdefault("sha256", hashlib.sha256(path.read_bytes()).hexdigest())
    return FsspecSource(f"file://{path}", cache_dir=cache, **options)  # type: ignore[arg-type]


class TestReadSignedManifest:
    def test_signature_from_a_source_lists_the_model_and_its_signer(
        self, published: pathlib.Path, model_dir: pathlib.Path, key: KeyPair, cache: pathlib.Path
    ) -> None:
        """The fetched signature authenticates; its manifest verifies the directory."""
        manifest = read_signed_manifest(source_of(published, cache), public_key=key.public_pem)
        local = cr.Manifest.from_signature(published, public_key=key.public_pem)
        assert manifest == local
        assert manifest.signer == local.signer
        assert sorted(manifest.entries) == sorted(FILES)
        manifest.verify(model_dir)

    def test_bytes_other_than_the_pinned_ones_are_never_parsed(
        self,
        published: pathlib.Path,
        key: KeyPair,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A signature replaced in the store is refused by digest before any check."""
        pinned = hashlib.sha256(published.read_bytes()).hexdigest()
        published.write_bytes(published.read_bytes().replace(b"{", b" {", 1))
        checked: list[bytes] = []
        monkeypatch.setattr(
            signing_module.SignatureTrust,
            "verify_bytes",
            lambda self, raw, src: checked.append(raw),
        )
        source = source_of(published, cache, sha256=pinned, model="m", registry=registry)
        with pytest.raises(ChecksumMismatchError):
            read_signed_manifest(source, public_key=key.public_pem)
        assert checked == []
        assert failures(registry) == {Reason.CHECKSUM_MISMATCH: 1.0}

    def test_authenticates_the_bytes_that_were_hashed(
        self, published: pathlib.Path, key: KeyPair, cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        """The signature checked is the fetched, verified bytes, named by the source URL."""
        seen: list[tuple[bytes, str]] = []
        real = signing_module.SignatureTrust.verify_bytes

        def spy(self: signing_module.SignatureTrust, raw: bytes, src: str) -> object:
            seen.append((raw, src))
            return real(self, raw, src)

        monkeypatch.setattr(signing_module.SignatureTrust, "verify_bytes", spy)
        read_signed_manifest(source_of(published, cache), public_key=key.public_pem)
        assert seen == [(published.read_bytes(), f"file://{published}")]

    def test_another_signer_is_refused(
        self, published: pathlib.Path, tmp_path: pathlib.Path, cache: pathlib.Path
    ) -> None:
        """A pinned signature made with another key than the trusted one is refused."""
        other = new_key(tmp_path / "other")
        with pytest.raises(ManifestError) as caught:
            read_signed_manifest(source_of(published, cache), public_key=other.public_pem)
        assert caught.value.reason is Reason.SIGNATURE_INVALID
        assert caught.value.path == f"file://{published}"

    def test_no_trust_root_is_a_usage_error_before_any_fetch(
        self, published: pathlib.Path, cache: pathlib.Path
    ) -> None:
        """Without exactly one trust root nothing is downloaded."""
        with pytest.raises(TypeError):
            read_signed_manifest(source_of(published, cache))
        assert not cache.exists()

    @pytest.mark.parametrize(("sized", "says"), [(False, "too large"), (True, "byte cap")])
    def test_a_pinned_signature_over_the_cap_is_unusable(
        self, tmp_path: pathlib.Path, key: KeyPair, cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch, sized: bool, says: str,
    ) -> None:  # fmt: skip
        """A pinned file larger than any signature may be (size pinned or not) is refused."""
        monkeypatch.setattr(signing_module, "MAX_SIGNATURE_SIZE", 1024)
        big = tmp_path / "big.sig"
        big.write_bytes(b"{" + b" " * 2048 + b"}")
        source = source_of(big, cache, size=2050) if sized else source_of(big, cache)
        with pytest.raises(ManifestError) as caught:
            read_signed_manifest(source, public_key=key.public_pem)
        assert caught.value.reason is Reason.SIGNATURE_INVALID
        assert says in str(caught.value)
