"""Tests for ModelGuard's trusted directories: OMS signatures and pinned manifests."""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from safetensors.numpy import save
from signing import (
    KeyPair,
    edit_payload,
    new_key,
    new_pki,
    require_model_signing,
    sign_with_certificate,
    sign_with_key,
)

import clarity_resilience as cr
from clarity_resilience.instrumentation import (
    Event,
    IntegrityCheckFailed,
    ModelLoaded,
    ModelLoadFailed,
    ReloadRefused,
)


def weights(value: float) -> bytes:
    """A real safetensors model whose every weight equals ``value``."""
    return save({"w": np.full((8, 8), value, np.float32)})


def mean(model: dict[str, np.ndarray]) -> float:
    return float(model["w"].mean())


def failures(registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value(
        "model_integrity_failures_total", {"model": "m", "reason": reason}
    )


def of_type(events: list[Event], kind: type[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def write_model(root: pathlib.Path, value: float) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.safetensors").write_bytes(weights(value))
    (root / "config.json").write_bytes(b'{"value": %d}' % int(value))


class TestSignedGuard:
    @pytest.fixture(autouse=True)
    def _model_signing(self) -> None:
        require_model_signing()

    @pytest.fixture
    def key(self, tmp_path: pathlib.Path) -> KeyPair:
        return new_key(tmp_path / "keys")

    @pytest.fixture
    def model_dir(self, tmp_path: pathlib.Path, key: KeyPair) -> pathlib.Path:
        root = tmp_path / "model"
        write_model(root, 1.0)
        sign_with_key(root, key, root / "model.sig")
        return root

    def guard(
        self, model_dir: pathlib.Path, key: KeyPair, registry: CollectorRegistry, **kw: Any
    ) -> cr.ModelGuard[dict[str, np.ndarray]]:
        return cr.ModelGuard(
            "m",
            path=model_dir,
            signature=model_dir / "model.sig",
            public_key=key.public_pem,
            entry="model.safetensors",
            loader=cr.loaders.safetensors,
            registry=registry,
            **kw,
        )

    def test_signed_directory_loads_with_signer_in_event_and_status(
        self,
        model_dir: pathlib.Path,
        key: KeyPair,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """A signed model serves; its signer is in model_loaded and status()."""
        from clarity_resilience._signing import key_fingerprint

        guard = self.guard(model_dir, key, registry)
        guard.load()
        signer = key_fingerprint(key.private_key.public_key())
        assert guard.predict(mean) == 1.0
        assert guard.status()["signer"] == signer
        (loaded,) = of_type(events, ModelLoaded)
        assert loaded.signer == signer
        digest = hashlib.sha256(weights(1.0)).hexdigest()
        assert loaded.sha256 == digest
        assert guard.status()["sha256"] == digest[:12]

    def test_certificate_signer_is_the_subject(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A certificate-signed model serves, trusted through the CA root; signer = subject."""
        pki = new_pki(tmp_path / "pki")
        root = tmp_path / "model"
        write_model(root, 2.0)
        sign_with_certificate(root, pki, root / "model.sig")
        guard = cr.ModelGuard(
            "m",
            path=root,
            signature=root / "model.sig",
            certificate_chain=[pki.root_pem],
            entry="model.safetensors",
            loader=cr.loaders.safetensors,
            registry=registry,
        )
        guard.load()
        assert guard.predict(mean) == 2.0
        assert guard.status()["signer"] == pki.leaf_subject

    def test_bad_trust_arguments_fail_at_construction(
        self, model_dir: pathlib.Path, key: KeyPair, tmp_path: pathlib.Path
    ) -> None:
        """Trust is built once: a missing key, two trust roots or a stray key fail now."""
        with pytest.raises(TypeError, match="exactly one"):
            cr.ModelGuard("m", path=model_dir, signature=model_dir / "model.sig")
        with pytest.raises(TypeError, match="exactly one"):
            cr.ModelGuard(
                "m",
                path=model_dir,
                signature=model_dir / "model.sig",
                public_key=key.public_pem,
                certificate_chain=[key.public_pem],
            )
        with pytest.raises(cr.ManifestError) as caught:
            cr.ModelGuard(
                "m",
                path=model_dir,
                signature=model_dir / "model.sig",
                public_key=tmp_path / "absent.pub",
            )
        assert caught.value.reason is cr.Reason.SIGNATURE_INVALID
        with pytest.raises(ValueError, match="signature="):
            cr.ModelGuard(
                "m",
                path=model_dir,
                manifest=cr.Manifest.build(model_dir),
                public_key=key.public_pem,
            )

    def test_the_key_file_is_read_once_at_construction(
        self, model_dir: pathlib.Path, key: KeyPair, registry: CollectorRegistry
    ) -> None:
        """Replacing the key file after construction changes nothing: trust is fixed."""
        guard = self.guard(model_dir, key, registry)
        attacker = new_key(model_dir.parent / "attacker")
        key.public_pem.write_bytes(attacker.public_pem.read_bytes())
        write_model(model_dir, 9.0)
        sign_with_key(model_dir, attacker, model_dir / "model.sig")
        with pytest.raises(cr.ManifestError) as caught:
            guard.load()
        assert caught.value.reason is cr.Reason.SIGNATURE_INVALID

    def test_new_signed_version_is_picked_up_on_reload(
        self, model_dir: pathlib.Path, key: KeyPair, registry: CollectorRegistry
    ) -> None:
        """The bundle is read at every load: a newly signed version is promoted."""
        guard = self.guard(model_dir, key, registry)
        guard.load()
        write_model(model_dir, 3.0)
        sign_with_key(model_dir, key, model_dir / "model.sig")
        guard.reload()
        assert guard.predict(mean) == 3.0

    @pytest.mark.parametrize(
        ("tamper", "reason"),
        [
            pytest.param("weights", "checksum_mismatch", id="weights-changed"),
            pytest.param("other-key", "signature_invalid", id="other-key"),
            pytest.param("edited-payload", "signature_invalid", id="edited-payload"),
            pytest.param("truncated", "signature_invalid", id="truncated-bundle"),
            pytest.param("deleted", "missing", id="deleted-bundle"),
        ],
    )
    def test_refused_version_is_audited_once_and_last_good_serves(
        self,
        model_dir: pathlib.Path,
        key: KeyPair,
        registry: CollectorRegistry,
        events: list[Event],
        tamper: str,
        reason: str,
    ) -> None:
        """A refused signed reload: one failure event, one count, old model keeps serving."""
        guard = self.guard(model_dir, key, registry)
        guard.load()
        bundle = model_dir / "model.sig"
        if tamper == "weights":
            (model_dir / "model.safetensors").write_bytes(weights(5.0))
        elif tamper == "other-key":
            write_model(model_dir, 5.0)
            sign_with_key(model_dir, new_key(model_dir.parent / "other"), bundle)
        elif tamper == "edited-payload":

            def drop_config(statement: dict[str, Any]) -> None:
                resources = statement["predicate"]["resources"]
                statement["predicate"]["resources"] = [
                    r for r in resources if r["name"] != "config.json"
                ]

            edit_payload(bundle, drop_config)
        elif tamper == "truncated":
            bundle.write_bytes(bundle.read_bytes()[:100])
        else:
            bundle.unlink()
        events.clear()
        with pytest.raises(cr.IntegrityError) as caught:
            guard.reload()
        assert caught.value.reason == reason
        assert failures(registry, reason) == 1.0
        assert len(of_type(events, IntegrityCheckFailed)) == 1
        assert len(of_type(events, ModelLoadFailed)) == 1
        assert len(of_type(events, ReloadRefused)) == 1
        assert guard.predict(mean) == 1.0
        assert guard.status()["last_error"] == reason

    def test_refused_first_load_serves_nothing(
        self, model_dir: pathlib.Path, registry: CollectorRegistry, tmp_path: pathlib.Path
    ) -> None:
        """A model signed by someone else never serves, and the reason is signature_invalid."""
        guard = self.guard(model_dir, new_key(tmp_path / "trusted"), registry)
        with pytest.raises(cr.ManifestError):
            guard.load()
        assert not guard.ready
        with pytest.raises(cr.ModelUnavailableError) as caught:
            guard.predict(mean)
        assert caught.value.reason is cr.Reason.SIGNATURE_INVALID
        assert failures(registry, "signature_invalid") == 1.0

    def test_unsigned_extra_file_refuses_a_multi_file_load(
        self, model_dir: pathlib.Path, key: KeyPair, registry: CollectorRegistry
    ) -> None:
        """entries='*' loads exactly the signed files; an unlisted extra is never handed over."""
        seen: list[list[str]] = []

        def load(files: Any) -> dict[str, np.ndarray]:
            seen.append(sorted(files))
            return cr.loaders.safetensors(files["model.safetensors"])

        (model_dir / "extra.bin").write_bytes(b"not signed")
        guard = cr.ModelGuard(
            "m",
            path=model_dir,
            signature=model_dir / "model.sig",
            public_key=key.public_pem,
            entries="*",
            loader=load,
            registry=registry,
        )
        guard.load()
        assert seen == [["config.json", "model.safetensors"]]
        assert guard.status()["signer"] is not None

    def test_signed_snapshot_for_a_path_loader(
        self,
        model_dir: pathlib.Path,
        key: KeyPair,
        registry: CollectorRegistry,
        tmp_path: pathlib.Path,
    ) -> None:
        """materialize_into= with a signature: the path loader sees only signed files."""

        def from_path(path: pathlib.Path) -> dict[str, np.ndarray]:
            assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
            return cr.loaders.safetensors((path / "model.safetensors").read_bytes())

        (model_dir / "unsigned.txt").write_bytes(b"never copied")
        guard = cr.ModelGuard(
            "m",
            path=model_dir,
            signature=model_dir / "model.sig",
            public_key=key.public_pem,
            materialize_into=tmp_path / "cache",
            loader=from_path,
            registry=registry,
        )
        guard.load()
        assert guard.predict(mean) == 1.0
        assert str(guard.status()["signer"]).startswith("sha256:")

    def test_keyless_trust_is_built_without_the_network(self, model_dir: pathlib.Path) -> None:
        """identity= and issuer= build a Sigstore trust root at construction, offline."""
        guard = cr.ModelGuard(
            "m",
            path=model_dir,
            signature=model_dir / "model.sig",
            identity="release@example.com",
            issuer="https://accounts.example.com",
            entry="model.safetensors",
        )
        assert guard.origin.describe() == "signed entry='model.safetensors'"
        with pytest.raises(TypeError, match="issuer"):
            cr.ModelGuard(
                "m",
                path=model_dir,
                signature=model_dir / "model.sig",
                identity="release@example.com",
            )


class TestPinnedManifest:
    @pytest.fixture
    def model_dir(self, tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, str]:
        root = tmp_path / "model"
        write_model(root, 1.0)
        manifest = tmp_path / "manifest.sha256"
        cr.Manifest.build(root).write(manifest)
        return root, manifest, hashlib.sha256(manifest.read_bytes()).hexdigest()

    def test_pinned_manifest_loads(
        self, model_dir: tuple[pathlib.Path, pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """A manifest whose bytes match the pinned digest is used like any manifest."""
        root, manifest, digest = model_dir
        guard = cr.ModelGuard(
            "m",
            path=root,
            manifest=manifest,
            manifest_sha256=digest.upper(),
            entry="model.safetensors",
            loader=cr.loaders.safetensors,
            registry=registry,
        )
        guard.load()
        assert guard.predict(mean) == 1.0
        assert guard.status()["signer"] is None
        assert "pinned manifest" in repr(guard)

    def test_rewritten_manifest_and_weights_are_refused(
        self,
        model_dir: tuple[pathlib.Path, pathlib.Path, str],
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """Whoever rewrites weights and manifest together is stopped by the pinned digest."""
        root, manifest, digest = model_dir
        guard = cr.ModelGuard(
            "m",
            path=root,
            manifest=manifest,
            manifest_sha256=digest,
            entry="model.safetensors",
            loader=cr.loaders.safetensors,
            registry=registry,
        )
        guard.load()
        write_model(root, 7.0)
        cr.Manifest.build(root).write(manifest)  # a consistent, but unpinned, manifest
        events.clear()
        with pytest.raises(cr.ChecksumMismatchError) as caught:
            guard.reload()
        assert caught.value.expected == digest
        assert failures(registry, "checksum_mismatch") == 1.0
        (failed,) = of_type(events, IntegrityCheckFailed)
        assert failed.path == str(manifest)
        assert len(of_type(events, ModelLoadFailed)) == 1
        assert guard.predict(mean) == 1.0

    def test_pin_needs_a_manifest_file(
        self, model_dir: tuple[pathlib.Path, pathlib.Path, str], tmp_path: pathlib.Path
    ) -> None:
        """manifest_sha256= pins a file: with an in-memory manifest or a digest it is refused."""
        built = cr.Manifest.build(model_dir[0])
        with pytest.raises(ValueError, match="manifest file"):
            cr.ModelGuard("m", path=tmp_path, manifest=built, manifest_sha256="0" * 64)
        with pytest.raises(ValueError, match="needs a model directory"):
            cr.ModelGuard("m", path=tmp_path, sha256="0" * 64, manifest_sha256="0" * 64)
        with pytest.raises(ValueError):
            cr.ModelGuard("m", path=tmp_path, manifest=tmp_path / "m", manifest_sha256="xyz")

    def test_missing_pinned_manifest_is_an_audited_refusal(
        self, model_dir: tuple[pathlib.Path, pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """A pinned manifest that disappeared is refused as missing, counted once."""
        root, manifest, digest = model_dir
        manifest.unlink()
        guard = cr.ModelGuard(
            "m", path=root, manifest=manifest, manifest_sha256=digest, entry="config.json"
        )
        with pytest.raises(cr.ManifestError) as caught:
            guard.load()
        assert caught.value.reason is cr.Reason.MISSING
