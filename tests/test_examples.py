"""The examples, exercised over real HTTP: FastAPI (uvicorn) and Flask (a WSGI server)."""

from __future__ import annotations

import contextlib
import pathlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

# examples/ and tests/support are on pytest's pythonpath (pyproject.toml).
import demo
import fastapi_app
import flask_app
import httpx
import linear_model
import numpy as np
import pytest
from http_servers import serve_asgi, serve_wsgi
from prometheus_client import CollectorRegistry
from safetensors.numpy import load_file

import clarity_resilience as cr

FEATURES = [0.5, -1.0, 2.0, 0.25]

Server = Callable[[pathlib.Path, CollectorRegistry], contextlib.AbstractContextManager[str]]


@contextlib.contextmanager
def run_fastapi(model_dir: pathlib.Path, registry: CollectorRegistry) -> Iterator[str]:
    with serve_asgi(fastapi_app.create_app(model_dir, registry=registry)) as url:
        yield url


@contextlib.contextmanager
def run_flask(model_dir: pathlib.Path, registry: CollectorRegistry) -> Iterator[str]:
    with serve_wsgi(flask_app.create_app(model_dir, registry=registry)) as url:
        yield url


SERVERS = [pytest.param(run_fastapi, id="fastapi"), pytest.param(run_flask, id="flask")]


def expected(model_dir: pathlib.Path, features: list[float]) -> float:
    """The prediction computed straight from the weights file, without the library."""
    weights = load_file(str(model_dir / "weights" / linear_model.WEIGHTS_FILE))
    return float(np.asarray(features, np.float32) @ weights["w"] + weights["b"][0])


def tamper(model_dir: pathlib.Path) -> None:
    weights = model_dir / "weights" / linear_model.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(data)


@pytest.mark.parametrize("server", SERVERS)
class TestExampleService:
    def test_serves_verified_predictions_and_probes(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """The example predicts from the verified weights and answers its probes."""
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            reply = c.post("/predict", json={"features": FEATURES})
            assert reply.status_code == 200
            assert reply.json()["prediction"] == pytest.approx(expected(model_dir, FEATURES))
            assert c.get("/livez").status_code == 200
            assert c.get("/readyz").status_code == 200
            metrics = c.get("/metrics").text
        assert 'prediction_success_total{model="linear"} 1.0' in metrics

    def test_corrupt_model_at_startup_is_503_but_alive(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """With a tampered model the service starts, livez 200, readyz and predict 503."""
        model_dir = tmp_path / "model"
        linear_model.ensure_model(model_dir)
        tamper(model_dir)
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/livez").status_code == 200
            ready = c.get("/readyz")
            reply = c.post("/predict", json={"features": FEATURES})
        assert ready.status_code == 503
        assert reply.status_code == 503
        assert reply.headers["content-type"] == "application/problem+json"
        assert reply.json()["reason"] == "integrity_failure"
        assert reply.headers["retry-after"] == "300"
        assert str(model_dir) not in reply.text

    def test_reload_refused_then_promoted(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A tampered file is refused (409, still serving); a new version is promoted."""
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            v1 = expected(model_dir, FEATURES)
            tamper(model_dir)
            refused = c.post("/admin/reload")
            assert refused.status_code == 409
            assert refused.json()["reason"] == "checksum_mismatch"
            assert c.post("/predict", json={"features": FEATURES}).json()[
                "prediction"
            ] == pytest.approx(v1)
            linear_model.write_model(model_dir, version="v2", seed=11)
            promoted = c.post("/admin/reload")
            assert promoted.status_code == 200
            assert promoted.json()["serving"]["version"] == "v2"
            v2 = c.post("/predict", json={"features": FEATURES}).json()["prediction"]
        assert v2 == pytest.approx(expected(model_dir, FEATURES))
        assert v2 != pytest.approx(v1)

    def test_reload_under_32_concurrent_clients(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """32 clients keep getting 200s through a refused and then a promoted reload."""
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url:
            v1 = expected(model_dir, FEATURES)
            stop = threading.Event()
            statuses: Counter[int] = Counter()
            values: set[float] = set()
            lock = threading.Lock()

            def client() -> None:
                with httpx.Client(base_url=url, timeout=10) as c:
                    while not stop.is_set():
                        reply = c.post("/predict", json={"features": FEATURES})
                        with lock:
                            statuses[reply.status_code] += 1
                            if reply.status_code == 200:
                                values.add(round(reply.json()["prediction"], 5))

            threads = [threading.Thread(target=client) for _ in range(32)]
            for t in threads:
                t.start()
            with httpx.Client(base_url=url, timeout=30) as admin:
                tamper(model_dir)
                refused = admin.post("/admin/reload").status_code
                linear_model.write_model(model_dir, version="v2", seed=11)
                promoted = admin.post("/admin/reload").status_code
                # Keep the clients going until they have seen the new version.
                for _ in range(200):
                    reply = admin.post("/predict", json={"features": FEATURES})
                    if round(reply.json()["prediction"], 5) != round(v1, 5):
                        break
            stop.set()
            for t in threads:
                t.join(timeout=30)
        v2 = expected(model_dir, FEATURES)
        assert (refused, promoted) == (409, 200)
        assert set(statuses) == {200}, statuses
        assert sum(statuses.values()) >= 32
        assert values <= {round(v1, 5), round(v2, 5)}

    def test_bad_input_is_4xx_and_never_trips_the_breaker(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """100 malformed requests get 4xx problems; predictions still work afterwards."""
        bodies: list[Any] = [
            b'{"features": [1, 2,',
            b'{"features": [NaN, 1, 2, 3]}',
            b'{"features": [1e999, 1, 2, 3]}',
            b'{"features": ["a", "b", "c", "d"]}',
            b'{"features": [1, 2, 3]}',
            b'{"features": null}',
            b"[]",
            b"\xff\xfe not utf-8",
        ]
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            answers = Counter(
                c.post(
                    "/predict",
                    content=bodies[i % len(bodies)],
                    headers={"content-type": "application/json"},
                ).status_code
                for i in range(100)
            )
            after = c.post("/predict", json={"features": FEATURES})
        assert set(answers) <= {400, 413, 422}, answers
        assert after.status_code == 200
        closed = registry.get_sample_value(
            "circuit_breaker_state", {"breaker": "linear", "state": "closed"}
        )
        assert closed == 1.0
        assert (
            registry.get_sample_value(
                "circuit_breaker_transitions_total",
                {"breaker": "linear", "from_state": "closed", "to_state": "open"},
            )
            == 0.0
        )


class TestDemo:
    def test_demo_walks_through_every_step(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The README's main job runs end to end and tells the story it promises."""
        monkeypatch.setattr(demo, "DEMO_RESET_TIMEOUT", 0.2)
        try:
            assert demo.main() == 0
        finally:
            cr.instrumentation.set_on_event_hooks(None)
        out = capsys.readouterr().out
        assert "POST /admin/reload -> 409 checksum_mismatch: refused" in out
        assert "20 x POST /predict -> 20 x 200 (last known good)" in out
        assert "100 bad requests -> " in out
        assert "breaker still 'closed'" in out
        assert "Retry-After: 1" in out  # 0.2 s rounds up to the 1 s minimum
        assert '"reason":"breaker_open"' in out
        assert "breaker 'closed'" in out
        assert "promoted=True" in out
        assert "model_integrity_failures_total" in out
