"""A FastAPI service that serves only a verified model and degrades to 503.

Run it::

    pip install "clarity-resilience[fastapi,safetensors]" uvicorn
    python examples/fastapi_app.py            # http://127.0.0.1:8000/docs

Endpoints (every answer is JSON; every error an ``application/problem+json`` body):

- ``POST /predict`` with ``{"features": [4 numbers]}``: 200 ``{"prediction": number}``.
  Input that is not exactly four numbers within float32's finite range (``NaN``,
  ``Infinity``, ``1e39``, a 400-digit integer, a string, a bool, another shape, an
  unknown key) is a 422 ``invalid_input``; a body that cannot be parsed (JSON nested
  too deep, an integer of thousands of digits) a 400; a body over 16 KiB a 413. None
  of these counts against the breaker. No verified model, a refused model or an open
  breaker: 503 with ``Retry-After``. A score that is not finite is a model failure: a
  503, counted by the breaker.
- ``GET /model``: the verified model's tensor shapes and status (503 while nothing
  verified is serving).
- ``POST /admin/reload``: verify the model and manifest on disk and promote them only
  if they pass (200); a refused version answers 409 and the last known good one keeps
  serving. Protect this route in a real service.
- ``GET /metrics`` (Prometheus), ``GET /livez`` (always 200), ``GET /readyz`` (200 once
  a verified model serves, else 503).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sys
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import linear_model

import clarity_resilience as cr
from clarity_resilience.degradation.asgi import DegradationMiddleware
from clarity_resilience.degradation.fastapi import install, model_dependency
from clarity_resilience.metrics import exposition

DEFAULT_DIR = pathlib.Path(os.environ.get("CLARITY_MODEL_DIR", ".demo/model"))
MAX_BODY_BYTES = 16 * 1024
log = logging.getLogger("fastapi_app")

Feature = Annotated[
    float,
    # strict: true/false and "1.5" are not numbers (ints still are). NaN, infinities
    # and numbers float32 cannot hold are refused before any model code runs.
    Field(
        strict=True,
        allow_inf_nan=False,
        ge=-linear_model.FLOAT32_MAX,
        le=linear_model.FLOAT32_MAX,
    ),
]


class PredictRequest(BaseModel):
    """One example to score."""

    model_config = ConfigDict(extra="forbid")
    features: Annotated[
        list[Feature],
        Field(min_length=linear_model.N_FEATURES, max_length=linear_model.N_FEATURES),
    ]


def create_app(
    model_dir: pathlib.Path = DEFAULT_DIR,
    *,
    registry: CollectorRegistry | None = None,
    breaker: cr.Breaker | None = None,
    predictor: linear_model.Predictor = linear_model.predict,
) -> FastAPI:
    """Build the app; the model is verified and loaded at startup (lifespan)."""
    registry = registry if registry is not None else CollectorRegistry()
    guard = linear_model.make_guard(model_dir, breaker=breaker, registry=registry)
    score = linear_model.checked(predictor)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await guard.load_async()
        except cr.ClarityResilienceError as e:
            # Audited by the guard too. The process still starts: /readyz and /predict
            # answer 503 until an operator fixes the files and reloads.
            log.warning("model refused at startup: %s", e.reason)
        yield

    app = FastAPI(title="clarity-resilience example", lifespan=lifespan)
    app.state.guard = guard
    install(app, guard)
    # Only for the body limit (install() serves the probes): 413 past 16 KiB, streamed
    # bodies included, before FastAPI buffers them.
    app.add_middleware(DegradationMiddleware, livez=None, max_body_size=MAX_BODY_BYTES)
    verified_model = model_dependency(guard)

    @app.post("/predict")
    async def predict(request: PredictRequest) -> dict[str, float]:
        # No model yet, a refused model, an open breaker: all become problem+json 503s.
        prediction = await guard.predict_async(score, request.features)
        return {"prediction": prediction}

    @app.get("/model")
    async def model_info(
        # A default, not Annotated[..., Depends(...)]: with postponed annotations
        # FastAPI resolves annotation strings in module globals, where the local
        # verified_model does not exist (the route would expect a query parameter).
        model: linear_model.Model = Depends(verified_model),  # noqa: B008
    ) -> dict[str, Any]:
        serving = linear_model.public_status(guard)
        return {"tensors": linear_model.shapes(model), "serving": serving}

    @app.post("/admin/reload")
    async def reload() -> Response:
        try:
            await guard.reload_async(**linear_model.origin(model_dir))
        except cr.ClarityResilienceError as e:
            # Refused: the last known good model keeps serving. 409, not 503: the
            # service is fine, the candidate is not.
            serving = linear_model.public_status(guard)
            body = {"promoted": False, "reason": str(e.reason), "serving": serving}
            return JSONResponse(body, status_code=409)
        return JSONResponse({"promoted": True, "serving": linear_model.public_status(guard)})

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        # Under uvicorn --workers with PROMETHEUS_MULTIPROC_DIR: every worker's samples.
        body, content_type = exposition(registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return app


def main() -> None:
    """Serve the example with uvicorn on 127.0.0.1 (port from argv, default 8000; 0: any)."""
    import uvicorn

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    uvicorn.run(create_app(), host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
