"""A Flask service that serves only a verified model and degrades to 503.

Run it::

    pip install "clarity-resilience[flask,safetensors]"
    python examples/flask_app.py              # http://127.0.0.1:8001

The same endpoints and answers as the FastAPI example (every answer is JSON; every
error an ``application/problem+json`` body):

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

Flask's own answers to a wrong route, method or ``Content-Type`` (404, 405, 415) stay
as they are.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import linear_model

import clarity_resilience as cr
from clarity_resilience.degradation.flask import init_app, json_body
from clarity_resilience.degradation.wsgi import DegradationMiddleware
from clarity_resilience.metrics import exposition

DEFAULT_DIR = pathlib.Path(os.environ.get("CLARITY_MODEL_DIR", ".demo/model"))
MAX_BODY_BYTES = 16 * 1024
log = logging.getLogger("flask_app")


def create_app(
    model_dir: pathlib.Path = DEFAULT_DIR,
    *,
    registry: CollectorRegistry | None = None,
    breaker: cr.Breaker | None = None,
    predictor: linear_model.Predictor = linear_model.predict,
) -> Flask:
    """Build the app and verify and load the model (a refused model starts unready)."""
    registry = registry if registry is not None else CollectorRegistry()
    guard = linear_model.make_guard(model_dir, breaker=breaker, registry=registry)
    score = linear_model.checked(predictor)
    try:
        guard.load()
    except cr.ClarityResilienceError as e:
        # Audited by the guard too. The process still starts: /readyz and /predict
        # answer 503 until an operator fixes the files and reloads.
        log.warning("model refused at startup: %s", e.reason)

    app = Flask(__name__)
    # Bodies over 16 KiB: a 413 problem, also when streamed without a length (Flask's
    # MAX_CONTENT_LENGTH cuts those off silently: a 400 for the truncated JSON).
    # init_app serves the probes, so the middleware serves none.
    app.wsgi_app = DegradationMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, livez=None, max_body_size=MAX_BODY_BYTES
    )
    app.extensions["model_guard"] = guard
    init_app(app, guard)

    @app.post("/predict")
    def predict() -> Any:
        # Malformed or too deeply nested JSON: a 400 problem; NaN, Infinity and numbers
        # no float can hold: a 422 problem (json_body refuses them before any view code).
        payload = json_body()
        if not isinstance(payload, dict) or set(payload) != {"features"}:
            raise cr.InvalidInputError('expected a JSON object {"features": [...]}')
        # The predictor checks the features (linear_model.features_array): a 422.
        return jsonify(prediction=guard.predict(score, payload["features"]))

    @app.get("/model")
    def model_info() -> Any:
        # guard.model raises ModelUnavailableError (a 503 problem) while nothing serves.
        serving = linear_model.public_status(guard)
        return jsonify(tensors=linear_model.shapes(guard.model), serving=serving)

    @app.post("/admin/reload")
    def reload() -> Any:
        try:
            guard.reload(**linear_model.origin(model_dir))
        except cr.ClarityResilienceError as e:
            # Refused: the last known good model keeps serving. 409, not 503: the
            # service is fine, the candidate is not.
            serving = linear_model.public_status(guard)
            return jsonify(promoted=False, reason=str(e.reason), serving=serving), 409
        return jsonify(promoted=True, serving=linear_model.public_status(guard))

    @app.get("/metrics")
    def metrics() -> Response:
        # Under gunicorn with PROMETHEUS_MULTIPROC_DIR: every worker's samples.
        body, content_type = exposition(registry, request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    return app


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8001
    create_app().run(host="127.0.0.1", port=port)
