"""Signing benchmark: a signed directory verified and loaded in one pass, or in two.

A directory of 4 safetensors files of 128 MiB each (``--quick``: 4 x 8 MiB) is signed
with a fresh P-256 key through ``model_signing``'s own signing API (as
``model_signing sign key`` does), then:

(a) ``ModelGuard(signature=..., public_key=..., entries="*", loader=...)``.load(): the
    signature is authenticated, every file is read once, hashed while read, and the
    loader parses the verified bytes with ``loaders.safetensors``; against
    ``model_signing.verifying.Config().use_elliptic_key_verifier(...).verify(...)``
    (which reads and hashes every file) followed by ``safetensors.numpy.load_file`` of
    every file (which reads them again). Target: <= 0.6 x (one pass instead of two).
    The same load without the guard (``Manifest.from_signature`` +
    ``load_verified_files``) is reported too, without a target.
(b) the signature check alone: ``Manifest.from_signature`` on the bundle (no model file
    is read). Target: < 5 ms (issue 9); also reported as a share of the whole load.

Timings are medians of N interleaved runs after one untimed warm-up run (page cache
warm); see ``_common.measure``.
"""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy
from _common import log, measure, target
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience import Manifest, instrumentation, loaders

MIB = 1024 * 1024
FILES = 4
TENSORS = 8


def write_shards(directory: pathlib.Path, files: int, file_bytes: int) -> list[pathlib.Path]:
    """Write ``files`` safetensors files of about ``file_bytes`` each (float32, random)."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(2)
    count = file_bytes // 4 // TENSORS
    paths = []
    for i in range(files):
        path = directory / f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        tensors = {
            f"layer{i}.{j}.weight": rng.random(count, dtype=np.float32) for j in range(TENSORS)
        }
        safetensors.numpy.save_file(tensors, str(path))
        paths.append(path)
    return paths


def new_key(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Write a fresh P-256 key pair as PEM files; return (private, public) paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private_pem, public_pem = directory / "signer.pem", directory / "signer.pub"
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
    return private_pem, public_pem


def load_all(files: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    """Parse every verified shard (no copy: the arrays view the verified buffers)."""
    return {name: loaders.safetensors(data) for name, data in files.items()}


def bench_signed_load(workdir: pathlib.Path, file_bytes: int, repeat: int) -> dict[str, Any]:
    import model_signing.signing
    import model_signing.verifying

    model = workdir / "model"
    log(f"signing: writing {FILES} x {file_bytes // MIB} MiB safetensors")
    paths = write_shards(model, FILES, file_bytes)
    private_pem, public_pem = new_key(workdir)
    signature = workdir / "model.sig"  # outside the model: not a signed file
    log("signing: signing with model_signing (elliptic key)")
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private_pem).sign(
        model, signature
    )
    registry = CollectorRegistry()
    verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_pem)

    def guard_load() -> object:
        guard = cr.ModelGuard(
            "bench-signed",
            path=model,
            signature=signature,
            public_key=public_pem,
            entries="*",
            loader=load_all,
            registry=registry,
        )
        loaded = guard.load()
        assert len(loaded) == FILES
        return loaded

    def manifest_load() -> object:
        manifest = Manifest.from_signature(signature, public_key=public_pem)
        loaded = cr.load_verified_files(
            model, manifest, loader=load_all, entries="*", registry=registry
        )
        assert len(loaded) == FILES
        return loaded

    def model_signing_then_load_file() -> object:
        verifier.verify(model, signature)  # raises ValueError if anything is off
        return {path.name: safetensors.numpy.load_file(str(path)) for path in paths}

    log("signing: timing the loads")
    t = measure(
        {
            "guard_signed_load": guard_load,
            "from_signature_then_load_verified_files": manifest_load,
            "model_signing_verify_then_load_file": model_signing_then_load_file,
            "model_signing_verify_only": lambda: verifier.verify(model, signature),
            "load_file_only_unverified": lambda: [
                safetensors.numpy.load_file(str(p)) for p in paths
            ],
        },
        repeat,
    )
    log("signing: timing the signature check alone")
    check = measure(
        {"from_signature": lambda: Manifest.from_signature(signature, public_key=public_pem)},
        max(21, repeat),
    )["from_signature"]
    ours, theirs = t["guard_signed_load"], t["model_signing_verify_then_load_file"]
    total_mib = sum(p.stat().st_size for p in paths) / MIB
    return {
        "files": FILES,
        "total_mib": round(total_mib, 1),
        "seconds": {name: timing.as_dict() for name, timing in t.items()},
        "throughput_mib_s": {
            name: round(total_mib / timing.median, 1) for name, timing in t.items()
        },
        "guard_vs_model_signing_then_load_file": target(ours.median / theirs.median, "<=", 0.6),
        "guard_vs_model_signing_then_load_file_best": round(ours.best / theirs.best, 3),
        "load_verified_files_vs_model_signing_then_load_file": round(
            t["from_signature_then_load_verified_files"].median / theirs.median, 3
        ),
        "guard_vs_load_file_only_unverified": round(
            ours.median / t["load_file_only_unverified"].median, 3
        ),
        "signature_check": {
            **check.as_dict(),
            "median_ms": round(check.median * 1000, 3),
            "under_5_ms": target(check.median * 1000, "<=", 5.0),
            "share_of_guard_load": round(check.median / ours.median, 4),
        },
    }


def run(quick: bool) -> dict[str, Any]:
    """Sign a directory, then time a one-pass signed load against model_signing's two passes."""
    file_bytes = (8 if quick else 128) * MIB
    repeat = 5 if quick else 7
    previous = instrumentation.get_on_event_hooks()
    # Metrics as in production (into a private registry); no structlog output on stdout.
    instrumentation.set_on_event_hooks([instrumentation.PrometheusOnEventHook])
    try:
        with tempfile.TemporaryDirectory(prefix="clarity-bench-signing-") as tmp:
            return {
                "method": "medians of N interleaved runs after one untimed warm-up run "
                "(page cache warm); best runs reported alongside",
                "load": bench_signed_load(pathlib.Path(tmp), file_bytes, repeat),
            }
    finally:
        instrumentation.set_on_event_hooks(previous)
