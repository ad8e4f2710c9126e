"""The main job, live: a FastAPI model service through tampering, failure and recovery.

Run it with ``python3 -m nox -s demo``. It starts ``examples/fastapi_app.py`` on
127.0.0.1 (an ephemeral port), sends real HTTP traffic, and narrates what the service
answers while its model file is tampered with and its inference backend fails.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import httpx
import uvicorn
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import fastapi_app
import linear_model

import clarity_resilience as cr
from clarity_resilience.instrumentation import (
    PrometheusOnEventHook,
    set_on_event_hooks,
)

# The default is 60 s; a demo should not make you wait a minute for the trial call.
DEMO_RESET_TIMEOUT = 3.0
GOOD = [0.5, -1.0, 2.0, 0.25]
JSON = {"content-type": "application/json"}
BAD_BODIES = (
    b'{"features": [NaN, NaN, NaN, NaN]}',
    b'{"features": [1e999, 0, 0, 0]}',
    b'{"features": [1.0]}',
    b'{"features": ["a", "b", "c", "d"]}',
    b'{"features": null}',
    b'{"features": [1, 2, 3, 4, 5], "admin": true}',
    b'{"features": [1, 2,',
    b"[]",
)
METRICS = (
    "prediction_success_total",
    "prediction_failure_total",
    "circuit_breaker_state",
    "circuit_breaker_transitions_total",
    "circuit_breaker_rejections_total",
    "model_integrity_failures_total",
    "model_load_duration_seconds_count",
)


class Backend:
    """The inference backend, with a switch that makes it crash (say, a GPU fault)."""

    def __init__(self) -> None:
        self.failing = False

    def __call__(self, model: linear_model.Model, features: Sequence[object]) -> float:
        """Predict, or crash while ``failing`` is set."""
        if self.failing:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return linear_model.predict(model, features)


@contextlib.contextmanager
def serve(app: object) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on 127.0.0.1:<ephemeral>; yield its URL."""
    # The injected backend crash makes uvicorn log a traceback per failing request; the
    # demo narrates those failures itself (and the audit events record them).
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the example server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def step(text: str) -> None:
    print(f"\n{text}")


def say(text: str) -> None:
    print(f"   {text}")


def tally(responses: list[httpx.Response]) -> str:
    counts = Counter(r.status_code for r in responses)
    return ", ".join(f"{n} x {status}" for status, n in sorted(counts.items()))


def predict_many(client: httpx.Client, n: int, features: object = GOOD) -> list[httpx.Response]:
    return [client.post("/predict", json={"features": features}) for _ in range(n)]


def show_metrics(client: httpx.Client) -> None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(METRICS) and not line.endswith(" 0.0"):
            say(line)


def main() -> int:
    # The service's audit log would go to stdout; the demo narrates instead. Metrics stay.
    set_on_event_hooks([PrometheusOnEventHook])
    backend = Backend()
    registry = CollectorRegistry()
    breaker = cr.Breaker("linear", reset_timeout=DEMO_RESET_TIMEOUT, registry=registry)
    with tempfile.TemporaryDirectory(prefix="clarity-demo-") as tmp:
        model_dir = pathlib.Path(tmp) / "model"
        app = fastapi_app.create_app(
            model_dir, registry=registry, breaker=breaker, predictor=backend
        )
        guard: cr.ModelGuard[linear_model.Model] = app.state.guard
        with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
            print("clarity-resilience demo: a FastAPI model service under failure")
            say(f"service {url}  model {model_dir} (safetensors + manifest.json)")

            step("1. Healthy: the model was verified against its manifest at startup")
            say(f"20 x POST /predict -> {tally(predict_many(client, 20))}")
            say(f"GET /readyz -> {client.get('/readyz').status_code}, serving {guard.status()}")

            step("2. Someone flips one bit of the weights on disk, then a reload is asked for")
            weights = model_dir / "weights" / linear_model.WEIGHTS_FILE
            tampered = bytearray(weights.read_bytes())
            tampered[-1] ^= 0x01
            weights.write_bytes(tampered)
            reply = client.post("/admin/reload")
            say(f"POST /admin/reload -> {reply.status_code} {reply.json()['reason']}: refused")
            say(f"20 x POST /predict -> {tally(predict_many(client, 20))} (last known good)")

            step("3. Clients send garbage: NaN, wrong shapes, strings, broken JSON")
            answers = [
                client.post("/predict", content=BAD_BODIES[i % len(BAD_BODIES)], headers=JSON)
                for i in range(100)
            ]
            say(f"100 bad requests -> {tally(answers)}; breaker still {breaker.state!r}")

            step("4. The inference backend starts crashing")
            backend.failing = True
            # uvicorn closes the connection of a request whose handler raised: use fresh ones.
            failing = [
                httpx.post(f"{url}/predict", json={"features": GOOD}, timeout=10) for _ in range(5)
            ]
            say(f"5 x POST /predict -> {tally(failing)} (each counted by the breaker)")
            rejected = client.post("/predict", json={"features": GOOD})
            say(
                f"next POST /predict -> {rejected.status_code} "
                f"Retry-After: {rejected.headers.get('retry-after')} "
                f"Content-Type: {rejected.headers.get('content-type')}"
            )
            say(f"body: {rejected.text}")
            say(
                f"GET /livez -> {client.get('/livez').status_code}, "
                f"GET /readyz -> {client.get('/readyz').status_code} (a verified model is loaded)"
            )

            step(
                f"5. Backend fixed; after {DEMO_RESET_TIMEOUT:.0f} s one trial call is let through"
            )
            backend.failing = False
            time.sleep(breaker.retry_after())  # a demo waits in real time; tests move the clock
            trial = client.post("/predict", json={"features": GOOD})
            say(f"trial POST /predict -> {trial.status_code}; breaker {breaker.state!r}")
            say(f"20 x POST /predict -> {tally(predict_many(client, 20))}")

            step("6. A new version (v2) is published with its manifest and promoted")
            before = client.post("/predict", json={"features": GOOD}).json()["prediction"]
            linear_model.write_model(model_dir, version="v2", seed=11)
            reply = client.post("/admin/reload")
            after = client.post("/predict", json={"features": GOOD}).json()["prediction"]
            say(f"POST /admin/reload -> {reply.status_code} promoted={reply.json()['promoted']}")
            say(f"prediction {before:.4f} -> {after:.4f}, serving {guard.status()['version']}")

            step("7. What operators see (GET /metrics, non-zero series)")
            show_metrics(client)
    print(
        "\nNothing unverified was served; every denial was a typed 4xx/503, counted and audited."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
