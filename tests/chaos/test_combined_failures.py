"""Combined failures (the PENIN document): corruption, latency and bad input at once.

A FastAPI service serves v1, fetched from a real artifact server through a fault
proxy. Then, all at the same time: the proxy adds latency, the store corrupts the v2
bytes it sends, the local cache copy of v1 is tampered with, and 16 clients send a
mix of good and malformed requests while an operator keeps asking for reloads.
Nothing corrupted is ever served, nothing good is lost, and every refusal is audited
and counted. When the faults clear, v2 is promoted.
"""

from __future__ import annotations

import hashlib
import pathlib
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import stamina
import structlog
from artifact_store import ArtifactStore
from fastapi import FastAPI
from http_servers import serve_asgi
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr
from clarity_resilience.chaos import ThreadedFaultProxy, bit_flip
from clarity_resilience.degradation.fastapi import install
from clarity_resilience.sources import HttpSource

# A hang detector, not a speed bound: generous, so a busy machine never trips it.
pytestmark = [pytest.mark.chaos, pytest.mark.non_destructive, pytest.mark.timeout(120)]

GOOD = [1.0, 1.0, 1.0, 1.0]


def weights(value: float) -> bytes:
    return save({"w": np.full(4, value, np.float32)})


def score(model: dict[str, np.ndarray], features: list[float]) -> float:
    if len(features) != 4:
        raise cr.InvalidInputError("expected 4 features")
    return float(np.asarray(features, np.float32) @ model["w"])


def build_app(guard: cr.ModelGuard[Any], make_source: Callable[[str], HttpSource]) -> FastAPI:
    app = FastAPI()
    install(app, guard)

    @app.post("/predict")
    async def predict(body: dict[str, list[float]]) -> dict[str, float]:
        return {"prediction": await guard.predict_async(score, body.get("features", []))}

    @app.post("/admin/reload/{name}")
    async def reload(name: str) -> dict[str, Any]:
        try:
            await guard.reload_async(source=make_source(name))
        except cr.ClarityResilienceError as e:
            return {"promoted": False, "reason": str(e.reason)}
        return {"promoted": True, "serving": guard.status()}

    return app


class TestCombinedFailures:
    def test_corruption_latency_and_bad_input_at_once(
        self,
        tmp_path: pathlib.Path,
        registry: CollectorRegistry,
        fault_proxy: Callable[..., ThreadedFaultProxy],
    ) -> None:
        """Under every fault at once: only v1 answers, bad input is 4xx, v2 only when clean."""
        root = tmp_path / "store"
        root.mkdir()
        versions = {"v1": weights(1.0), "v2": weights(2.0)}
        for name, data in versions.items():
            (root / name).write_bytes(data)
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in versions.items()}
        cache = tmp_path / "cache"

        with ArtifactStore(root) as store, stamina.set_testing(True, attempts=2):
            proxy = fault_proxy("127.0.0.1", store.port)

            def make_source(name: str) -> HttpSource:
                return HttpSource(
                    f"{proxy.url}/{name}",
                    sha256=digests[name],
                    cache_dir=cache,
                    timeout=2.0,
                    attempts=2,
                    model="m",
                    registry=registry,
                )

            guard = cr.ModelGuard(
                "m", source=make_source("v1"), loader=cr.loaders.safetensors, registry=registry
            )
            guard.load()
            app = build_app(guard, make_source)
            with serve_asgi(app) as url:
                # Every fault at once.
                proxy.latency(200, jitter=50)
                store.control(mode="corrupt")
                tamper = bit_flip(make_source("v1").path, seed=5).apply()
                stop = threading.Event()
                answers: Counter[tuple[str, int]] = Counter()
                values: set[float] = set()
                lock = threading.Lock()

                def client(i: int) -> None:
                    bad = i % 2 == 1
                    payload: Any = {"features": [1.0, "x"]} if bad else {"features": GOOD}
                    with httpx.Client(base_url=url, timeout=10) as c:
                        while not stop.is_set():
                            reply = c.post("/predict", json=payload)
                            with lock:
                                answers["bad" if bad else "good", reply.status_code] += 1
                                if reply.status_code == 200:
                                    values.add(reply.json()["prediction"])

                threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
                for t in threads:
                    t.start()
                with (
                    structlog.testing.capture_logs() as logs,
                    httpx.Client(base_url=url, timeout=20) as admin,
                ):
                    refused = [admin.post(f"/admin/reload/{n}").json() for n in ("v2", "v1", "v2")]
                    stop.set()
                    for t in threads:
                        t.join(timeout=20)
                    # Faults clear: the next reload of v2 is promoted.
                    proxy.clear()
                    store.control(mode="ok")
                    tamper.restore()
                    promoted = admin.post("/admin/reload/v2").json()
                    after = admin.post("/predict", json={"features": GOOD}).json()

        assert [r["promoted"] for r in refused] == [False, False, False]
        assert {r["reason"] for r in refused} == {"checksum_mismatch"}
        assert promoted["promoted"] is True
        assert after["prediction"] == pytest.approx(8.0)
        # Only v1 (4.0) ever answered while the faults lasted; every bad request was a 4xx.
        assert values <= {4.0}, values
        assert answers["good", 200] > 0
        assert {status for (kind, status) in answers if kind == "good"} == {200}, answers
        assert {status for (kind, status) in answers if kind == "bad"} <= {422}, answers
        assert guard.breaker.state == "closed"
        refusals = [e for e in logs if e["event"] == "clarity_resilience.reload_refused"]
        assert len(refusals) == 3
        assert (
            registry.get_sample_value(
                "model_integrity_failures_total", {"model": "m", "reason": "checksum_mismatch"}
            )
            or 0
        ) >= 3
