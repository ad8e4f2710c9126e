"""The FastAPI app the overload benchmark drives, run in its own process by bench_overload.py.

``python _overload_app.py PORT`` serves on 127.0.0.1:PORT with uvicorn (one worker):

- ``GET /ok``: a trivial 200 (the baseline);
- ``GET /predict``: a guarded prediction whose only concurrency slot is held by a stuck
  call and whose queue is 0, so every call is shed: the 503 ``overloaded`` path (shed,
  audit event sampled, metric, problem+json with Retry-After).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading

import numpy as np
import structlog
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr
from clarity_resilience.degradation.fastapi import install


def build() -> FastAPI:
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
    directory = tempfile.mkdtemp(prefix="clarity-bench-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = os.path.join(directory, "model.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    guard = cr.ModelGuard(
        "bench",
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        loader=cr.loaders.safetensors,
        registry=registry,
        max_concurrency=1,
    )
    guard.load()
    held = threading.Event()
    never = threading.Event()

    def stuck(model: object) -> None:
        held.set()
        never.wait()

    # Holds the only slot for the life of the process (a daemon: exit never waits for it).
    threading.Thread(target=guard.predict, args=(stuck,), daemon=True).start()
    held.wait(30)

    app = FastAPI()
    install(app, guard)

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
    uvicorn.run(build(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)  # fmt: skip
