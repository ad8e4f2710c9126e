"""The FastAPI app the HTTP benchmark drives, run in its own process by bench_http.py.

``python _http_app.py PORT DIRECTORY`` serves on 127.0.0.1:PORT with uvicorn (one
worker), writing its model into DIRECTORY (which the caller removes):

- ``GET /ok``: a trivial 200 (the baseline);
- ``GET /predict``: a guarded prediction whose breaker is open, so every call is the
  503 problem path (rejection, audit event, metric, problem+json with Retry-After).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys

import numpy as np
import structlog
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr
from clarity_resilience.degradation.fastapi import install


def build(directory: str) -> FastAPI:
    # Instrumentation on, as in production: metrics and JSON audit events (to /dev/null).
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=open(os.devnull, "w")),  # noqa: SIM115
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
    )
    registry = CollectorRegistry()
    data = save({"w": np.ones(4, np.float32)})
    path = os.path.join(directory, "model.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    breaker = cr.Breaker("bench", fail_max=1, reset_timeout=1e9, registry=registry)
    guard = cr.ModelGuard(
        "bench",
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        loader=cr.loaders.safetensors,
        breaker=breaker,
        registry=registry,
    )
    guard.load()

    def crash(model: object) -> float:
        raise RuntimeError("open the breaker")

    try:
        guard.predict(crash)
    except RuntimeError:
        assert breaker.state == "open"

    app = FastAPI()
    install(app, guard)

    # Both endpoints async (no thread pool hop), as a FastAPI model service would be.
    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    async def score(model: dict[str, np.ndarray]) -> float:
        return float(model["w"].sum())

    @app.get("/predict")
    async def predict() -> dict[str, float]:
        return {"prediction": await guard.predict_async(score)}

    return app


if __name__ == "__main__":
    uvicorn.run(build(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)  # fmt: skip
