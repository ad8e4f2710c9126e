"""A FastAPI service that serves only a verified model and degrades to 503.

Run it::

    pip install "clarity-resilience[fastapi,safetensors]" uvicorn
    python examples/fastapi_app.py            # http://127.0.0.1:8000/docs

Endpoints: ``POST /predict`` (``{"features": [4 finite numbers]}``), ``GET /model``,
``POST /admin/reload`` (verify the model and manifest on disk, promote only if they pass),
``GET /metrics``, ``GET /livez``, ``GET /readyz``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import linear_model

import clarity_resilience as cr
from clarity_resilience.degradation.fastapi import install, model_dependency
from clarity_resilience.metrics import exposition

DEFAULT_DIR = pathlib.Path(os.environ.get("CLARITY_MODEL_DIR", ".demo/model"))
log = logging.getLogger("fastapi_app")

Predictor = Callable[[linear_model.Model, Sequence[object]], float]


class PredictRequest(BaseModel):
    """One example to score."""

    model_config = ConfigDict(extra="forbid")
    # NaN and infinities are refused by pydantic before any model code runs; strict:
    # true/false and "1.5" are not numbers (ints still are).
    features: Annotated[
        list[Annotated[float, Field(allow_inf_nan=False, strict=True)]],
        Field(min_length=linear_model.N_FEATURES, max_length=linear_model.N_FEATURES),
    ]


def create_app(
    model_dir: pathlib.Path = DEFAULT_DIR,
    *,
    registry: CollectorRegistry | None = None,
    breaker: cr.Breaker | None = None,
    predictor: Predictor = linear_model.predict,
) -> FastAPI:
    """Build the app; the model is verified and loaded at startup (lifespan)."""
    registry = registry if registry is not None else CollectorRegistry()
    guard = linear_model.make_guard(model_dir, breaker=breaker, registry=registry)

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
    verified_model = model_dependency(guard)

    @app.post("/predict")
    async def predict(request: PredictRequest) -> dict[str, float]:
        # No model yet, a refused model, an open breaker: all become problem+json 503s.
        prediction = await guard.predict_async(predictor, request.features)
        return {"prediction": prediction}

    @app.get("/model")
    def model_info(
        model: Annotated[linear_model.Model, Depends(verified_model)],
    ) -> dict[str, Any]:
        return {"tensors": {k: list(v.shape) for k, v in model.items()}, **guard.status()}

    @app.post("/admin/reload")
    async def reload() -> Response:
        try:
            await guard.reload_async(**linear_model.origin(model_dir))
        except cr.ClarityResilienceError as e:
            # Refused: the last known good model keeps serving. 409, not 503: the
            # service is fine, the candidate is not.
            return JSONResponse(
                {"promoted": False, "reason": str(e.reason), "serving": guard.status()},
                status_code=409,
            )
        return JSONResponse({"promoted": True, "serving": guard.status()})

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        # Under uvicorn --workers with PROMETHEUS_MULTIPROC_DIR: every worker's samples.
        body, content_type = exposition(registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return app


def main() -> None:
    """Serve the example with uvicorn on 127.0.0.1 (port from argv, default 8000)."""
    import uvicorn

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    uvicorn.run(create_app(), host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
