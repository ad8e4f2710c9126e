"""A Flask service that serves only a verified model and degrades to 503.

Run it::

    pip install "clarity-resilience[flask,safetensors]"
    python examples/flask_app.py              # http://127.0.0.1:8001

Same endpoints as the FastAPI example: ``POST /predict``, ``POST /admin/reload``,
``GET /metrics``, ``GET /livez``, ``GET /readyz``.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import linear_model

import clarity_resilience as cr
from clarity_resilience.degradation.flask import init_app, json_body
from clarity_resilience.metrics import exposition

DEFAULT_DIR = pathlib.Path(os.environ.get("CLARITY_MODEL_DIR", ".demo/model"))
MAX_BODY_BYTES = 16 * 1024
log = logging.getLogger("flask_app")

Predictor = Callable[[linear_model.Model, Sequence[object]], float]


def create_app(
    model_dir: pathlib.Path = DEFAULT_DIR,
    *,
    registry: CollectorRegistry | None = None,
    breaker: cr.Breaker | None = None,
    predictor: Predictor = linear_model.predict,
) -> Flask:
    """Build the app and verify and load the model (a refused model starts unready)."""
    registry = registry if registry is not None else CollectorRegistry()
    guard = linear_model.make_guard(model_dir, breaker=breaker, registry=registry)
    try:
        guard.load()
    except cr.ClarityResilienceError as e:
        # Audited by the guard too. The process still starts: /readyz and /predict
        # answer 503 until an operator fixes the files and reloads.
        log.warning("model refused at startup: %s", e.reason)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # oversized bodies: 413 problem
    app.extensions["model_guard"] = guard
    init_app(app, guard)

    @app.post("/predict")
    def predict() -> Any:
        payload = json_body()  # malformed or too deeply nested JSON: a 400 problem
        if not isinstance(payload, dict) or set(payload) != {"features"}:
            raise cr.InvalidInputError('expected a JSON object {"features": [...]}')
        features = payload["features"]
        if not isinstance(features, list):
            raise cr.InvalidInputError("features must be a list of numbers")
        return jsonify(prediction=guard.predict(predictor, features))

    @app.post("/admin/reload")
    def reload() -> Any:
        try:
            guard.reload(**linear_model.origin(model_dir))
        except cr.ClarityResilienceError as e:
            body = {"promoted": False, "reason": str(e.reason), "serving": guard.status()}
            return jsonify(body), 409
        return jsonify(promoted=True, serving=guard.status())

    @app.get("/metrics")
    def metrics() -> Response:
        # Under gunicorn with PROMETHEUS_MULTIPROC_DIR: every worker's samples.
        body, content_type = exposition(registry, request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    return app


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8001
    create_app().run(host="127.0.0.1", port=port)
