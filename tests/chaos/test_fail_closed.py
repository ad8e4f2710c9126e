"""The fail-closed guarantee, over every fault class of DESIGN.md.

For each fault: the call is denied (a typed exception, and a 4xx/503 over real HTTP,
never a 200), a structlog audit event carries the reason, and a counter that the
shipped alert rules watch is incremented.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import pathlib
import pickle
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import stamina
import structlog
import time_machine
from artifact_store import ArtifactStore
from chaos_models import Model, ModelVersion, publish, signature
from fastapi import FastAPI
from http_servers import serve_asgi
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience.chaos import corruptors
from clarity_resilience.degradation.fastapi import install
from clarity_resilience.sources import HttpSource

# A hang detector, not a speed bound: generous, so a busy machine never trips it.
pytestmark = [pytest.mark.chaos, pytest.mark.non_destructive, pytest.mark.timeout(120)]

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
REFUSED = "model_integrity_failures_total"
FAILED = "prediction_failure_total"


@dataclasses.dataclass
class Env:
    """What a fault needs: a directory, a published model, a registry, a fresh guard."""

    root: pathlib.Path
    version: ModelVersion
    registry: CollectorRegistry
    store: Callable[[], ArtifactStore]

    def guard(self, **kwargs: Any) -> cr.ModelGuard[Model]:
        return self.version.guard(self.registry, **kwargs)


@dataclasses.dataclass(frozen=True)
class Fault:
    """One fault class: how to cause it, and what it must be denied and audited as."""

    reason: cr.Reason
    metric: str
    http_status: int
    cause: Callable[[Env], Callable[[], object]]  # returns the attempt that must fail


def load_after(damage: Callable[[ModelVersion], object]) -> Callable[[Env], Callable[[], object]]:
    """Damage the published file, then attempt a cold load."""

    def cause(env: Env) -> Callable[[], object]:
        damage(env.version)
        return env.guard().load

    return cause


def directory_in_place(version: ModelVersion) -> None:
    version.path.unlink()
    version.path.mkdir()


def manifest_guard(text: str | None, **kwargs: Any) -> Callable[[Env], Callable[[], object]]:
    def cause(env: Env) -> Callable[[], object]:
        manifest = env.root / "manifest.txt"
        if text is not None:
            manifest.write_text(text.format(sha=env.version.sha256))
        guard = cr.ModelGuard(
            "m",
            path=env.root,
            manifest=manifest,
            entry=env.version.path.name,
            loader=cr.loaders.safetensors,
            registry=env.registry,
            **kwargs,
        )
        return guard.load

    return cause


def rewritten_with(data: bytes, loader: Callable[[bytes], Any] | None) -> Any:
    """Publish other bytes under a matching digest: they verify, then the loader refuses."""

    def cause(env: Env) -> Callable[[], object]:
        env.version.path.write_bytes(data)
        guard = cr.ModelGuard(
            "m",
            path=env.version.path,
            sha256=cr.sha256_file(env.version.path),
            loader=loader,
            registry=env.registry,
        )
        return guard.load

    return cause


def remote(mode: str | None) -> Callable[[Env], Callable[[], object]]:
    """Load through HttpSource from a stalled store (timeout) or a dead port (fetch_error)."""

    def cause(env: Env) -> Callable[[], object]:
        if mode is None:
            with socket.socket() as sock:  # a port nothing listens on
                sock.bind(("127.0.0.1", 0))
                url = f"http://127.0.0.1:{sock.getsockname()[1]}/model.safetensors"
        else:
            store = env.store()
            store.control(mode=mode, delay=5)
            url = store.url(env.version.path.name)
        source = HttpSource(
            url,
            sha256=env.version.sha256,
            cache_dir=env.root / "cache",
            timeout=0.3,
            attempts=1,
            model="m",
            registry=env.registry,
        )
        guard = cr.ModelGuard(
            "m", source=source, loader=cr.loaders.safetensors, registry=env.registry
        )
        return guard.load

    return cause


def predict_with(fn: Callable[..., object], *, load: bool = True, opened: bool = False) -> Any:
    def cause(env: Env) -> Callable[[], object]:
        guard = env.guard(invalid_input=[ValueError])
        if load:
            guard.load()
        if opened:
            for _ in range(5):
                with pytest.raises(RuntimeError):
                    guard.predict(crash)
        return lambda: guard.predict(fn)

    return cause


def crash(model: Model) -> float:
    raise RuntimeError("inference backend crashed")


def bad_input(model: Model) -> float:
    raise ValueError("features must be finite")


FAULTS = {
    "digest-mismatch": Fault(
        cr.Reason.CHECKSUM_MISMATCH,
        REFUSED,
        503,
        load_after(lambda v: corruptors.bit_flip(v.path).apply()),
    ),
    "size-mismatch": Fault(
        cr.Reason.SIZE_MISMATCH,
        REFUSED,
        503,
        load_after(lambda v: corruptors.truncate(v.path).apply()),
    ),
    "missing-file": Fault(cr.Reason.MISSING, REFUSED, 503, load_after(lambda v: v.path.unlink())),
    "symlink": Fault(
        cr.Reason.UNSAFE_PATH,
        REFUSED,
        503,
        load_after(lambda v: corruptors.symlink_swap(v.path).apply()),
    ),
    "directory": Fault(cr.Reason.UNSAFE_PATH, REFUSED, 503, load_after(directory_in_place)),
    "fifo": Fault(
        cr.Reason.UNSAFE_PATH,
        REFUSED,
        503,
        load_after(lambda v: (v.path.unlink(), os.mkfifo(v.path))),
    ),
    "missing-manifest": Fault(cr.Reason.MISSING, REFUSED, 503, manifest_guard(None)),
    "malformed-manifest": Fault(
        cr.Reason.MANIFEST_INVALID, REFUSED, 503, manifest_guard("this is not a manifest\n")
    ),
    "manifest-escape": Fault(
        cr.Reason.UNSAFE_PATH, REFUSED, 503, manifest_guard("{sha}  ../model.safetensors\n")
    ),
    "version-mismatch": Fault(
        cr.Reason.VERSION_MISMATCH,
        REFUSED,
        503,
        manifest_guard(
            '{{"format": "clarity-resilience-manifest", "format_version": 1, '
            '"model_version": "v1", "files": {{"model.safetensors": {{"sha256": "{sha}"}}}}}}',
            expected_version="v2",
        ),
    ),
    "unknown-format": Fault(
        cr.Reason.UNSAFE_FORMAT, REFUSED, 503, rewritten_with(b"\x7fELF not a model at all", None)
    ),
    "pickle-refused": Fault(
        cr.Reason.UNSAFE_FORMAT, REFUSED, 503, rewritten_with(pickle.dumps({"w": [1.0]}), None)
    ),
    "loader-rejects": Fault(
        cr.Reason.LOAD_ERROR, REFUSED, 503, rewritten_with(b"\x00" * 64, cr.loaders.safetensors)
    ),
    "timeout": Fault(cr.Reason.TIMEOUT, REFUSED, 503, remote("stall")),
    "service-dead": Fault(cr.Reason.FETCH_ERROR, REFUSED, 503, remote(None)),
    "breaker-open": Fault(
        cr.Reason.BREAKER_OPEN, FAILED, 503, predict_with(signature, opened=True)
    ),
    "nothing-loaded": Fault(
        cr.Reason.UNAVAILABLE, FAILED, 503, predict_with(signature, load=False)
    ),
    "invalid-input": Fault(cr.Reason.INVALID_INPUT, FAILED, 422, predict_with(bad_input)),
}


@pytest.fixture
def env(tmp_path: pathlib.Path, registry: CollectorRegistry) -> Iterator[Env]:
    stores: list[ArtifactStore] = []

    def store() -> ArtifactStore:
        started = ArtifactStore(tmp_path).start()
        stores.append(started)
        return started

    with stamina.set_testing(True, attempts=1):
        yield Env(tmp_path, publish(tmp_path, 1.0), registry, store)
    for started in stores:
        started.stop()


def http_answer(attempt: Callable[[], object]) -> httpx.Response:
    """Serve ``attempt`` behind the FastAPI adapter over real HTTP and call it once."""
    app = FastAPI()
    install(app)

    @app.post("/predict")
    def predict() -> dict[str, str]:
        attempt()
        return {"served": "a model"}

    with serve_asgi(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        return client.post("/predict")


class TestFailClosed:
    @pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in FAULTS])
    def test_every_fault_denies_audits_and_alerts(
        self, env: Env, registry: CollectorRegistry, name: str
    ) -> None:
        """Denied with a typed error and a non-200, audited with the reason, counted."""
        fault = FAULTS[name]
        with time_machine.travel(T0, tick=False):
            attempt = fault.cause(env)
            with structlog.testing.capture_logs() as logs:
                with pytest.raises(cr.ClarityResilienceError) as info:
                    attempt()
                response = http_answer(attempt)
        assert info.value.reason == fault.reason
        # Audited: an event at warning level or above names the reason.
        audited = [
            e for e in logs if e.get("reason") == fault.reason.value and e["log_level"] != "debug"
        ]
        assert audited, [e["event"] for e in logs]
        # Alerted: the counter the shipped alert rules watch went up (twice: raise + HTTP).
        labels = {"model": "m", "reason": fault.reason.value}
        assert registry.get_sample_value(fault.metric, labels) == 2.0
        # Never a 200: a problem document with the contract's status.
        assert response.status_code == fault.http_status
        assert response.headers["content-type"] == "application/problem+json"
        assert "served" not in response.text
