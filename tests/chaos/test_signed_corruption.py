"""Signed models under attack: files and signature rewritten while 32 threads predict.

A signed model directory (OMS bundle, trusted P-256 key) is served by a guard. An
attacker thread keeps rewriting it: other weights; other weights re-signed with the
attacker's key; a forged payload naming the new weights' digest; a truncated, deleted
or symlinked signature. Each attack is held while the workers make calls, then undone.
No answer may come from anything but the signed model, and every refused reload is
counted exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
import random
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from chaos_models import Resources, failure_total
from prometheus_client import CollectorRegistry
from safetensors.numpy import save
from signing import edit_payload, new_key, require_model_signing, sign_with_key

import clarity_resilience as cr
from clarity_resilience.chaos import Call, run_threads

pytestmark = [pytest.mark.chaos, pytest.mark.non_destructive, pytest.mark.timeout(60)]

SEED = 20261202
GOOD, BAD = 1.0, 666.0


def weights(value: float) -> bytes:
    return save({"w": np.full((32, 32), value, np.float32)})


def answer(model: dict[str, np.ndarray], *_: object) -> float:
    """The model's one weight value, or NaN if its weights are not all equal."""
    w = model["w"]
    return float(w.flat[0]) if (w == w.flat[0]).all() else float("nan")


class Attacker:
    """A thread that applies one attack at a time, holds it for ``hold`` calls, undoes it."""

    def __init__(self, root: pathlib.Path, attacks: dict[str, Callable[[], None]]) -> None:
        self.root = root
        self.attacks = attacks
        self.good = {
            name: (root / name).read_bytes() for name in ("model.safetensors", "model.sig")
        }
        self.rng = random.Random(SEED)
        self.applied: Counter[str] = Counter()
        self.hold = 20
        self._calls = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-attacker")

    def tick(self) -> None:
        with self._changed:
            self._calls += 1
            self._changed.notify_all()

    def restore(self) -> None:
        for name, data in self.good.items():
            path = self.root / name
            path.unlink(missing_ok=True)
            path.write_bytes(data)

    def _run(self) -> None:
        names = sorted(self.attacks)
        while not self._stop.is_set():
            name = self.rng.choice(names)
            self.attacks[name]()
            self.applied[name] += 1
            try:
                with self._changed:
                    target = self._calls + self.hold

                    def held(target: int = target) -> bool:
                        return self._calls >= target or self._stop.is_set()

                    self._changed.wait_for(held, timeout=5)
            finally:
                self.restore()

    @contextlib.contextmanager
    def running(self) -> Iterator[Attacker]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            with self._changed:
                self._changed.notify_all()
            self._thread.join(timeout=10)
            assert not self._thread.is_alive()


def attacks(tmp: pathlib.Path, root: pathlib.Path) -> dict[str, Callable[[], None]]:
    """Prepare every attack's bytes up front, so applying one is a few writes."""
    bad = weights(BAD)
    attacker_dir = tmp / "attacker-model"
    shutil.copytree(root, attacker_dir)
    (attacker_dir / "model.safetensors").write_bytes(bad)
    sign_with_key(attacker_dir, new_key(tmp / "attacker"), attacker_dir / "model.sig")
    resigned = (attacker_dir / "model.sig").read_bytes()

    forged_path = tmp / "forged.sig"
    shutil.copy(root / "model.sig", forged_path)

    def point_at_bad(statement: dict[str, Any]) -> None:
        for resource in statement["predicate"]["resources"]:
            if resource["name"] == "model.safetensors":
                resource["digest"] = hashlib.sha256(bad).hexdigest()

    edit_payload(forged_path, point_at_bad)
    forged = forged_path.read_bytes()
    good_sig = (root / "model.sig").read_bytes()
    weights_path, sig_path = root / "model.safetensors", root / "model.sig"

    def replace_signature(data: bytes) -> None:
        sig_path.unlink()
        sig_path.write_bytes(data)

    def other_weights() -> None:
        weights_path.write_bytes(bad)

    def resigned_by_attacker() -> None:
        weights_path.write_bytes(bad)
        replace_signature(resigned)

    def forged_payload() -> None:
        weights_path.write_bytes(bad)
        replace_signature(forged)

    def truncated() -> None:
        replace_signature(good_sig[: len(good_sig) // 2])

    def unsigned() -> None:
        sig_path.unlink()

    def symlinked() -> None:
        sig_path.unlink()
        sig_path.symlink_to(forged_path)

    return {
        "weights": other_weights,
        "resigned": resigned_by_attacker,
        "forged": forged_payload,
        "truncated": truncated,
        "unsigned": unsigned,
        "symlink": symlinked,
    }


class TestSignedCorruption:
    def test_threads_never_get_a_corrupted_or_unsigned_model(self, tmp_path: pathlib.Path) -> None:
        """32 threads x 25 calls while the attacker rewrites files and signature."""
        require_model_signing()
        before = Resources.now()
        root = tmp_path / "model"
        root.mkdir()
        (root / "model.safetensors").write_bytes(weights(GOOD))
        (root / "config.json").write_bytes(b"{}")
        key = new_key(tmp_path / "publisher")
        sign_with_key(root, key, root / "model.sig")
        registry = CollectorRegistry()
        guard = cr.ModelGuard(
            "m",
            path=root,
            signature=root / "model.sig",
            public_key=key.public_pem,
            entry="model.safetensors",
            loader=cr.loaders.safetensors,
            registry=registry,
        )
        guard.load()
        attacker = Attacker(root, attacks(tmp_path, root))
        kinds: dict[tuple[int, int], str] = {}

        def work(call: Call) -> float:
            kind = "reload" if call.rng.random() < 0.35 else "predict"
            kinds[(call.worker, call.index)] = kind
            try:
                if kind == "reload":
                    return answer(guard.reload())
                return guard.predict(answer)
            finally:
                attacker.tick()

        with attacker.running():
            result = run_threads(work, workers=32, iterations=25, seed=SEED)
        result.raise_for_untyped()
        assert {o.value for o in result.successes} == {GOOD}
        refused = Counter(o.exc_type for o in result.outcomes if not o.ok)
        predictions_failed = [
            o for o in result.outcomes if not o.ok and kinds[(o.worker, o.index)] == "predict"
        ]
        assert predictions_failed == []  # the signed model kept serving throughout
        reloads_refused = sum(
            1 for o in result.outcomes if not o.ok and kinds[(o.worker, o.index)] == "reload"
        )
        assert reloads_refused > 0, "the attacker never bit: the scenario proved nothing"
        assert len(attacker.applied) >= 4, attacker.applied
        # One refused reload = one integrity failure, whatever the attack.
        assert failure_total(registry, "model_integrity_failures_total") == reloads_refused
        assert set(refused) <= {
            "ManifestError",
            "ChecksumMismatchError",
            "SizeMismatchError",
            "IntegrityError",
        }, refused
        assert guard.predict(answer) == GOOD
        assert guard.status()["signer"] is not None
        assert Resources.now().leaked_since(before) == []
