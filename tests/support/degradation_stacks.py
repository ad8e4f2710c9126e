"""The web stacks the degradation adapters are tested on, each served over real HTTP.

Import with ``from degradation_stacks import ...`` (tests/support is on pytest's
pythonpath). Every :class:`Stack` builds the same small predict service around a
guard, with a request body limit of ``LIMIT`` bytes:

- ``POST /predict`` scores ``{"features": [[4 numbers], ...]}`` through the guard;
- ``GET /model`` lists the verified model's tensors (FastAPI: through
  ``model_dependency``; the others read ``guard.model``);
- ``GET /raise/<kind>`` raises ``raised(tmp_path)[kind]`` (see degradation_helpers);
- ``livez`` and ``readyz``, served by the stack's own adapter.

The hand-written apps add routes that only their protocol can show:
``/stream-then-raise`` (ASGI), ``/raise-lazily/<kind>`` and ``/start-then-raise``
(WSGI).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, NamedTuple

import httpx
from degradation_helpers import LIMIT, make_guard, raised, score, write_model
from fastapi import Depends, FastAPI
from flask import Flask
from http_servers import serve_asgi, serve_wsgi
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import clarity_resilience as cr
from clarity_resilience.degradation import asgi, wsgi
from clarity_resilience.degradation.fastapi import install, model_dependency
from clarity_resilience.degradation.flask import init_app, json_body


class Probes(NamedTuple):
    """Where an app serves its probes, and the guards its readyz waits for.

    The field names are the middlewares' keyword arguments.
    """

    guards: tuple[cr.ModelGuard[Any], ...]
    livez: str | None = "/livez"
    readyz: str | None = "/readyz"


#: ``build(guard, tmp_path, probes)``: the app serving ``guard``.
Builder = Callable[[cr.ModelGuard[Any], pathlib.Path, Probes], Any]


class Service(NamedTuple):
    """A loaded guard and a client of the app serving it."""

    guard: cr.ModelGuard[Any]
    client: httpx.Client


@dataclasses.dataclass(frozen=True)
class Stack:
    """One way to serve the predict service, and what its framework answers on its own.

    Attributes:
        name: The test id.
        build: Builds the app (see :data:`Builder`).
        server: ``serve_asgi`` or ``serve_wsgi``.
        malformed_status: The status for a body that is not JSON at all: 422 from
            FastAPI's validation and the hand-written apps' InvalidInputError, 400
            from Flask's BadRequest.
        unparsable_status: The status for JSON Python cannot parse (nested too deep,
            an integer of 5000 digits): FastAPI and Flask answer 400.
        server_error_type: The media type of the 500 for an exception not ours
            (Starlette's plain text, Flask's and werkzeug's HTML).
    """

    name: str
    build: Builder
    server: Callable[[Any], contextlib.AbstractContextManager[str]]
    malformed_status: int = 422
    unparsable_status: int = 422
    server_error_type: str = "text/plain"

    def __str__(self) -> str:
        return self.name

    def app(
        self,
        guard: cr.ModelGuard[Any],
        tmp_path: pathlib.Path,
        *,
        guards: Iterable[cr.ModelGuard[Any]] | None = None,
        livez: str | None = "/livez",
        readyz: str | None = "/readyz",
    ) -> Any:
        """Return the predict service for ``guard``; readyz waits for ``guards`` (default: it)."""
        waited = (guard,) if guards is None else tuple(guards)
        return self.build(guard, tmp_path, Probes(waited, livez, readyz))

    @contextlib.contextmanager
    def serve(self, app: Any) -> Iterator[httpx.Client]:
        """Serve ``app`` over real HTTP; yield a client for it."""
        with self.server(app) as url, httpx.Client(base_url=url, timeout=5.0) as client:
            yield client

    @contextlib.contextmanager
    def serving(self, guard: cr.ModelGuard[Any], tmp_path: pathlib.Path) -> Iterator[httpx.Client]:
        """Serve the predict service for ``guard``; yield a client."""
        with self.serve(self.app(guard, tmp_path)) as client:
            yield client

    @contextlib.contextmanager
    def serving_loaded(self, tmp_path: pathlib.Path) -> Iterator[Service]:
        """Write a model in ``tmp_path``, load a guard over it and serve it."""
        path = tmp_path / "ranker.safetensors"
        guard = make_guard(path, write_model(path), CollectorRegistry())
        guard.load()
        with self.serving(guard, tmp_path) as client:
            yield Service(guard, client)


# -- FastAPI: install() for the probes, the ASGI middleware for the body limit only ---


class PredictIn(BaseModel):
    """The predict request: rows of numbers."""

    features: list[list[float]]


def _fastapi_app(guard: cr.ModelGuard[Any], tmp_path: pathlib.Path, probes: Probes) -> FastAPI:
    app = FastAPI()
    install(app, *probes.guards, livez=probes.livez, readyz=probes.readyz)
    app.add_middleware(asgi.DegradationMiddleware, livez=None, max_body_size=LIMIT)
    errors = raised(tmp_path)

    @app.post("/predict")
    async def predict(payload: PredictIn) -> dict[str, Any]:
        return {"scores": await guard.predict_async(score, payload.features)}

    @app.get("/model")
    async def model_info(model: Any = Depends(model_dependency(guard))) -> dict[str, Any]:  # noqa: B008
        return {"tensors": sorted(model)}

    @app.get("/raise/{kind}")
    async def raise_error(kind: str) -> None:
        raise errors[kind]()

    return app


# -- Starlette and the ASGI middleware, in either placement ---------------------------


def starlette_routes(guard: cr.ModelGuard[Any], tmp_path: pathlib.Path) -> list[Route]:
    """Return the routes of a small hand-written Starlette predict service."""
    errors = raised(tmp_path)

    async def predict(request: Request) -> JSONResponse:
        try:
            payload = await request.json()
        except (ValueError, RecursionError) as e:
            raise cr.InvalidInputError("the body is not JSON") from e
        features = payload.get("features") if isinstance(payload, dict) else None
        return JSONResponse({"scores": await guard.predict_async(score, features)})

    async def model_info(request: Request) -> JSONResponse:
        return JSONResponse({"tensors": sorted(guard.model)})

    async def raise_error(request: Request) -> JSONResponse:
        raise errors[request.path_params["kind"]]()

    async def stream_then_raise(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"partial"
            raise cr.CircuitOpenError("ranker", 30.0)

        return StreamingResponse(chunks())

    return [
        Route("/predict", predict, methods=["POST"]),
        Route("/model", model_info),
        Route("/raise/{kind}", raise_error),
        Route("/stream-then-raise", stream_then_raise),
    ]


def _asgi_wrapped_outside(
    guard: cr.ModelGuard[Any], tmp_path: pathlib.Path, probes: Probes
) -> asgi.DegradationMiddleware:
    app = Starlette(routes=starlette_routes(guard, tmp_path))
    return asgi.DegradationMiddleware(app, **probes._asdict(), max_body_size=LIMIT)


def _asgi_added_inside(
    guard: cr.ModelGuard[Any], tmp_path: pathlib.Path, probes: Probes
) -> Starlette:
    middleware = [Middleware(asgi.DegradationMiddleware, **probes._asdict(), max_body_size=LIMIT)]
    return Starlette(routes=starlette_routes(guard, tmp_path), middleware=middleware)


# -- Flask: init_app() for the probes, the WSGI middleware for the body limit only ----


def _flask_app(guard: cr.ModelGuard[Any], tmp_path: pathlib.Path, probes: Probes) -> Flask:
    app = Flask("predict_service")
    init_app(app, *probes.guards, livez=probes.livez, readyz=probes.readyz)
    app.wsgi_app = wsgi.DegradationMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, livez=None, max_body_size=LIMIT
    )
    errors = raised(tmp_path)

    @app.post("/predict")
    def predict() -> dict[str, Any]:
        payload = json_body()
        features = payload.get("features") if isinstance(payload, dict) else None
        return {"scores": guard.predict(score, features)}

    @app.get("/model")
    def model_info() -> dict[str, Any]:
        return {"tensors": sorted(guard.model)}

    @app.get("/raise/<kind>")
    def raise_error(kind: str) -> None:
        raise errors[kind]()

    return app


# -- a bare WSGI app and the WSGI middleware ------------------------------------------


def read_body(environ: dict[str, Any]) -> bytes:
    """Read the request body as PEP 3333 allows (to EOF only when the server ends it)."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        data: bytes = stream.read()
        return data
    length = int(environ.get("CONTENT_LENGTH") or 0)
    data = stream.read(length) if length else b""
    return data


def _wsgi_app(
    guard: cr.ModelGuard[Any], tmp_path: pathlib.Path, probes: Probes
) -> wsgi.DegradationMiddleware:
    errors = raised(tmp_path)

    def respond(start_response: Any, document: object) -> list[bytes]:
        body = json.dumps(document).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    def lazily(kind: str, start_response: Any) -> Iterator[bytes]:
        if kind:
            raise errors[kind]()
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"never"

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if path == "/predict":
            try:
                payload = json.loads(read_body(environ))
            except (ValueError, RecursionError) as e:
                raise cr.InvalidInputError("the body is not JSON") from e
            features = payload.get("features") if isinstance(payload, dict) else None
            return respond(start_response, {"scores": guard.predict(score, features)})
        if path == "/model":
            return respond(start_response, {"tensors": sorted(guard.model)})
        if path.startswith("/raise/"):
            raise errors[path.removeprefix("/raise/")]()
        if path.startswith("/raise-lazily/"):
            return lazily(path.removeprefix("/raise-lazily/"), start_response)
        if path == "/start-then-raise":
            start_response("200 OK", [("Content-Type", "text/plain")])
            raise cr.CircuitOpenError("ranker", 30.0)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    return wsgi.DegradationMiddleware(app, **probes._asdict(), max_body_size=LIMIT)


FASTAPI = Stack("fastapi", _fastapi_app, serve_asgi, unparsable_status=400)
ASGI_WRAPPED_OUTSIDE = Stack("asgi-wrapped-outside", _asgi_wrapped_outside, serve_asgi)
ASGI_ADDED_INSIDE = Stack("asgi-added-inside", _asgi_added_inside, serve_asgi)
FLASK = Stack("flask", _flask_app, serve_wsgi, 400, 400, server_error_type="text/html")
WSGI = Stack("wsgi", _wsgi_app, serve_wsgi, server_error_type="text/html")

#: Every stack, in the order the contract tests run them.
STACKS = (FASTAPI, ASGI_WRAPPED_OUTSIDE, ASGI_ADDED_INSIDE, FLASK, WSGI)
#: The two placements of the ASGI middleware around a Starlette app.
ASGI_STACKS = (ASGI_WRAPPED_OUTSIDE, ASGI_ADDED_INSIDE)
