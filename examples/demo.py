"""The main job, end to end: verify a model directory, then watch a tampered file refused.

Run it with ``python3 -m nox -s demo`` (or ``python examples/demo.py`` with the package
and the ``safetensors`` extra installed).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import clarity_resilience as cr
from clarity_resilience.instrumentation import set_on_event_hooks


def step(title: str) -> None:
    print(f"\n== {title}")


def cli(*args: str) -> int:
    """Run the real command line, as an operator would, and echo it."""
    print("$ clarity-resilience", " ".join(args))
    done = subprocess.run(
        [sys.executable, "-m", "clarity_resilience", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in (done.stdout + done.stderr).splitlines():
        print("  ", line)
    print(f"   (exit {done.returncode})")
    return done.returncode


def main() -> int:
    set_on_event_hooks([])  # this script narrates for itself
    with tempfile.TemporaryDirectory(prefix="clarity-demo-") as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        rng = np.random.default_rng(7)
        save_file(
            {"weight": rng.standard_normal((4, 3)).astype(np.float32)},
            str(model_dir / "model.safetensors"),
        )
        (model_dir / "config.json").write_text('{"inputs": 4, "outputs": 3}\n')
        manifest_path = Path(tmp) / "SHA256SUMS"

        step("1. Record what the model directory should contain")
        assert cli("manifest", "create", str(model_dir), "-o", str(manifest_path)) == 0
        print(manifest_path.read_text().rstrip())

        step("2. Verify it: every file, in parallel, sizes and digests")
        assert cli("verify", str(model_dir), "--manifest", str(manifest_path)) == 0

        step("3. Flip one bit in the weights (same size)")
        weights = model_dir / "model.safetensors"
        good = weights.read_bytes()
        tampered = bytearray(good)
        tampered[len(good) // 2] ^= 0x01
        weights.write_bytes(tampered)
        assert cli("verify", str(model_dir), "--manifest", str(manifest_path)) == 1

        step("4. Loading it is refused before any deserializer runs")
        entry = cr.Manifest.read(manifest_path).entries["model.safetensors"]
        try:
            cr.load_verified(weights, sha256=entry.sha256, loader=cr.loaders.safetensors)
        except cr.ChecksumMismatchError as e:
            print(f"   refused: {type(e).__name__} (reason={e.reason})")
        else:
            raise SystemExit("a tampered model was loaded: this must never happen")

        step("5. Restored: the same bytes verify and load again")
        weights.write_bytes(good)
        model = cr.load_verified(weights, sha256=entry.sha256, loader=cr.loaders.safetensors)
        print(f"   loaded tensors: {sorted(model)} shape={model['weight'].shape}")
    print("\nDone: nothing unverified was ever deserialized.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
