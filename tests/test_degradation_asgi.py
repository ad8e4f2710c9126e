"""Tests for degradation.asgi.DegradationMiddleware around a Starlette app, over real HTTP."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import pathlib
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import time_machine
from prometheus_client import CollectorRegistry
from safetensors.numpy import save_file
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import clarity_resilience as cr
from clarity_resilience import loaders
from clarity_resilience.degradation import problem_type
from clarity_resilience.degradation.asgi import DegradationMiddleware


def _load_support(name: str) -> ModuleType:
    """Import tests/support/<name>.py by path (tests is not a package)."""
    module_name = f"clarity_tests_support_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = pathlib.Path(__file__).parent / "support" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


http_servers = _load_support("http_servers")

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
LIMIT = 16 * 1024
PROBLEM_KEYS = {"type", "title", "status", "detail", "reason"}


# -- the model and the app ----------------------------------------------------------


@pytest.fixture
def model_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, str]:
    """Write a small real safetensors model; return its path and SHA-256."""
    path = tmp_path / "ranker.safetensors"
    save_file({"weight": np.arange(8, dtype=np.float32).reshape(4, 2)}, str(path))
    return path, cr.sha256_file(path)


def make_guard(
    path: pathlib.Path, sha256: str, registry: CollectorRegistry, **options: Any
) -> cr.ModelGuard[Any]:
    """Return a guard over the safetensors model, with its own breaker and registry."""
    return cr.ModelGuard(
        "ranker",
        path=path,
        sha256=sha256,
        loader=loaders.safetensors,
        breaker=cr.Breaker("ranker", registry=registry),
        registry=registry,
        invalid_input=(ValueError, TypeError),
        **options,
    )


@pytest.fixture
def guard(model_file: tuple[pathlib.Path, str], registry: CollectorRegistry) -> cr.ModelGuard[Any]:
    """Return a guard that has not loaded its model yet."""
    return make_guard(*model_file, registry)


def score(model: dict[str, Any], features: object) -> list[list[float]]:
    """Score rows of 4 finite numbers; raise ValueError/TypeError for anything else."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 4:
        raise ValueError("features must be rows of 4 numbers")
    if not np.isfinite(x).all():
        raise ValueError("features must be finite")
    result: list[list[float]] = (x @ model["weight"]).tolist()
    return result


def raised(tmp_path: pathlib.Path) -> dict[str, Callable[[], BaseException]]:
    """Return fresh exceptions by name; messages name a real path and a digest."""
    digest = hashlib.sha256(b"secret").hexdigest()
    where = tmp_path / "models" / "ranker.safetensors"
    return {
        "integrity": lambda: cr.ChecksumMismatchError(
            f"{where} has SHA-256 {digest}", path=where, expected=digest
        ),
        "load": lambda: cr.ModelLoadError(f"cannot load {where}"),
        "unavailable-now": lambda: cr.ModelUnavailableError(f"{where} gone", retry_after=0.0),
        "invalid": lambda: cr.InvalidInputError(f"bad row for {where}"),
        "root": lambda: cr.ClarityResilienceError(f"odd state at {where}"),
        "not-ours": lambda: RuntimeError(f"bug near {where}"),
    }


def build_routes(guard: cr.ModelGuard[Any], tmp_path: pathlib.Path) -> list[Route]:
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


def wrapped_outside(guard: cr.ModelGuard[Any], tmp_path: pathlib.Path) -> Any:
    """Return the middleware wrapped around a whole Starlette app."""
    app = Starlette(routes=build_routes(guard, tmp_path))
    return DegradationMiddleware(app, guards=[guard], max_body_size=LIMIT)


def added_inside(guard: cr.ModelGuard[Any], tmp_path: pathlib.Path) -> Any:
    """Return a Starlette app with the middleware in its middleware list."""
    middleware = [Middleware(DegradationMiddleware, guards=[guard], max_body_size=LIMIT)]
    return Starlette(routes=build_routes(guard, tmp_path), middleware=middleware)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[httpx.Client]:
    """Serve ``app`` over real HTTP; yield a client for it."""
    with (
        http_servers.serve_asgi(app) as url,
        httpx.Client(base_url=url, timeout=5.0) as client,
    ):
        yield client


@pytest.fixture(params=[wrapped_outside, added_inside], ids=["wrapped-outside", "added-inside"])
def client(
    request: pytest.FixtureRequest, guard: cr.ModelGuard[Any], tmp_path: pathlib.Path
) -> Iterator[httpx.Client]:
    """Serve the app with the middleware in either placement; yield a client."""
    with serve(request.param(guard, tmp_path)) as http:
        yield http


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    """Freeze time at T0 (pybreaker's clock); tests move it with ``clock.shift()``."""
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def open_breaker(breaker: cr.Breaker) -> None:
    """Open a real breaker with five real failures."""

    def boom() -> None:
        raise OSError("upstream failed")

    for _ in range(5):
        with pytest.raises(OSError, match="upstream"):
            breaker.call(boom)
    assert breaker.state == "open"


def assert_problem(
    response: httpx.Response, status: int, reason: str, retry_after: int | None
) -> dict[str, Any]:
    """Check a problem response's status, headers and body; return the body."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers.get("retry-after") == (
        None if retry_after is None else str(retry_after)
    )
    body: dict[str, Any] = response.json()
    assert set(body) - {"errors"} == PROBLEM_KEYS
    assert body["status"] == status
    assert body["reason"] == reason
    assert body["type"] == problem_type(reason)  # type: ignore[arg-type]
    return body


def assert_no_leak(response: httpx.Response, *secrets: str) -> None:
    """Check that no secret appears in the body or any header, and no traceback."""
    exposed = response.text + json.dumps(list(response.headers.multi_items()))
    for secret in secrets:
        assert secret not in exposed
    assert "Traceback" not in exposed
    assert ".py" not in exposed


GOOD = {"features": [[1.0, 2.0, 3.0, 4.0]]}


# -- the HTTP contract ----------------------------------------------------------------


class TestContract:
    def test_open_breaker_is_503_with_seconds_until_trial(
        self, client: httpx.Client, guard: cr.ModelGuard[Any], clock: time_machine.Traveller
    ) -> None:
        """An open breaker answers 503 breaker_open with Retry-After rounded up (39.6 -> 40)."""
        guard.load()
        open_breaker(guard.breaker)
        clock.shift(20.4)
        response = client.post("/predict", json=GOOD)
        assert_problem(response, 503, "breaker_open", 40)

    def test_half_open_trial_in_flight_is_503_retry_after_1(
        self, client: httpx.Client, guard: cr.ModelGuard[Any], clock: time_machine.Traveller
    ) -> None:
        """While the one half-open trial runs, other calls get 503 breaker_open, Retry-After 1."""
        guard.load()
        open_breaker(guard.breaker)
        clock.shift(61)
        entered, release = threading.Event(), threading.Event()

        def trial() -> None:
            entered.set()
            assert release.wait(10)

        thread = threading.Thread(target=guard.breaker.call, args=(trial,))
        thread.start()
        try:
            assert entered.wait(10)
            response = client.post("/predict", json=GOOD)
        finally:
            release.set()
            thread.join(10)
        assert_problem(response, 503, "breaker_open", 1)
        assert guard.breaker.state == "closed"  # the trial succeeded

    def test_no_model_loaded_is_503_unavailable(self, client: httpx.Client) -> None:
        """A guard that has not loaded answers 503 unavailable with its Retry-After (5 s)."""
        for path in ("/model", "/predict"):
            response = client.request("GET" if path == "/model" else "POST", path, json=GOOD)
            assert_problem(response, 503, "unavailable", 5)

    def test_integrity_failure_is_503_without_path_or_digest(
        self,
        model_file: tuple[pathlib.Path, str],
        registry: CollectorRegistry,
        tmp_path: pathlib.Path,
    ) -> None:
        """A model that failed its checksum answers 503 integrity_failure, leaking nothing."""
        path, sha256 = model_file
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        guard = make_guard(path, sha256, registry, integrity_retry_after=120)
        with pytest.raises(cr.ChecksumMismatchError):
            guard.load()
        with serve(wrapped_outside(guard, tmp_path)) as http:
            response = http.post("/predict", json=GOOD)
        assert_problem(response, 503, "integrity_failure", 120)
        assert_no_leak(response, str(tmp_path), sha256, hashlib.sha256(data).hexdigest())

    def test_invalid_input_is_422_without_retry_after(
        self, client: httpx.Client, guard: cr.ModelGuard[Any]
    ) -> None:
        """A wrong shape raised through guard.predict answers 422 invalid_input, no Retry-After."""
        guard.load()
        response = client.post("/predict", json={"features": [[1.0, 2.0]]})
        assert_problem(response, 422, "invalid_input", None)

    @pytest.mark.parametrize(
        ("kind", "status", "reason", "retry_after"),
        [
            pytest.param("integrity", 503, "integrity_failure", 300, id="integrity-error"),
            pytest.param("load", 503, "unavailable", 5, id="model-load-error"),
            pytest.param("unavailable-now", 503, "unavailable", 1, id="retry-after-0-sends-1"),
            pytest.param("invalid", 422, "invalid_input", None, id="invalid-input"),
            pytest.param("root", 503, "unavailable", 5, id="other-library-error"),
        ],
    )
    def test_library_errors_raised_directly(
        self,
        client: httpx.Client,
        tmp_path: pathlib.Path,
        kind: str,
        status: int,
        reason: str,
        retry_after: int | None,
    ) -> None:
        """Each library error raised by a route becomes its problem, without its message."""
        response = client.get(f"/raise/{kind}")
        assert_problem(response, status, reason, retry_after)
        assert_no_leak(response, str(tmp_path), hashlib.sha256(b"secret").hexdigest())

    def test_other_exceptions_stay_500(self, client: httpx.Client) -> None:
        """An exception that is not the library's is left to the app: a plain 500."""
        response = client.get("/raise/not-ours")
        assert response.status_code == 500
        assert response.headers["content-type"].startswith("text/plain")

    def test_error_after_response_started_is_not_rewritten(self, client: httpx.Client) -> None:
        """An error raised mid-stream cannot change the started 200: the stream breaks."""
        with client.stream("GET", "/stream-then-raise") as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()


# -- probes ---------------------------------------------------------------------------


class TestProbes:
    def test_livez_200_while_readyz_and_predict_503_until_loaded(
        self, guard: cr.ModelGuard[Any], tmp_path: pathlib.Path
    ) -> None:
        """Livez stays 200 while readyz and predict are 503; after load() all are 200."""
        with serve(wrapped_outside(guard, tmp_path)) as http:
            live = http.get("/livez")
            ready = http.get("/readyz")
            predict = http.post("/predict", json=GOOD)
            assert live.status_code == 200
            assert live.json() == {"status": "ok"}
            assert ready.status_code == 503
            assert ready.headers["retry-after"] == "5"
            assert ready.headers["cache-control"] == "no-store"
            assert ready.json()["models"][0]["ready"] is False
            assert_problem(predict, 503, "unavailable", 5)

            guard.load()
            ready = http.get("/readyz")
            assert ready.status_code == 200
            assert "retry-after" not in ready.headers
            assert ready.json()["models"][0]["ready"] is True
            assert http.post("/predict", json=GOOD).json() == {"scores": [[40.0, 50.0]]}
            assert http.get("/livez").status_code == 200

    def test_readyz_body_has_no_path_or_digest(
        self,
        guard: cr.ModelGuard[Any],
        model_file: tuple[pathlib.Path, str],
        tmp_path: pathlib.Path,
    ) -> None:
        """The readiness body lists safe status fields only: no path, no digest prefix."""
        guard.load()
        with serve(wrapped_outside(guard, tmp_path)) as http:
            response = http.get("/readyz")
        assert set(response.json()["models"][0]) == {
            "model",
            "ready",
            "version",
            "breaker",
            "last_error",
        }
        assert_no_leak(response, str(tmp_path), model_file[1][:12])

    def test_readyz_is_not_served_without_guards(
        self, guard: cr.ModelGuard[Any], tmp_path: pathlib.Path
    ) -> None:
        """Without guards readyz is the app's own path (404 here) while livez is served."""
        app = DegradationMiddleware(Starlette(routes=build_routes(guard, tmp_path)))
        with serve(app) as http:
            assert http.get("/readyz").status_code == 404
            assert http.get("/livez").status_code == 200

    def test_probes_answer_only_get_and_head(self, client: httpx.Client) -> None:
        """A POST to a probe is 405; HEAD gets the headers without a body."""
        assert client.post("/livez").status_code == 405
        head = client.head("/readyz")
        assert head.status_code == 503
        assert head.content == b""

    def test_lifespan_passes_through(
        self, guard: cr.ModelGuard[Any], tmp_path: pathlib.Path
    ) -> None:
        """The app's lifespan runs through the middleware: a model loaded there is ready."""

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await guard.load_async()
            yield

        app = Starlette(routes=build_routes(guard, tmp_path), lifespan=lifespan)
        with (
            http_servers.serve_asgi(
                DegradationMiddleware(app, guards=[guard]), lifespan="on"
            ) as url,
            httpx.Client(base_url=url, timeout=5.0) as http,
        ):
            assert http.get("/readyz").status_code == 200


# -- bad input never trips the breaker ------------------------------------------------

BAD_INPUTS = [
    pytest.param(b"{not json", 422, id="malformed-json"),
    pytest.param(b'{"features": "abc"}', 422, id="wrong-type"),
    pytest.param(b'{"features": [["a", "b", "c", "d"]]}', 422, id="wrong-item-type"),
    pytest.param(b'{"features": [[NaN, 1, 2, 3]]}', 422, id="nan"),
    pytest.param(b'{"features": [[Infinity, 1, 2, 3]]}', 422, id="inf"),
    pytest.param(b'{"features": [[1, 2, 3]]}', 422, id="wrong-shape"),
    pytest.param(b'{"features": [[1, 2, 3, 4], [1]]}', 422, id="ragged"),
    pytest.param(b'{"features": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422, id="deeply-nested"),
    pytest.param(b'{"features": [[' + b"9" * 5000 + b", 1, 2, 3]]}", 422, id="huge-integer"),
    pytest.param(b'{"features": [[1, 2, 3, 4]], "pad": "' + b"x" * LIMIT + b'"}', 413, id="large"),
]


@pytest.fixture(scope="class")
def service(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[cr.ModelGuard[Any], httpx.Client]]:
    """Serve one loaded model for a whole class (bad input never changes its state)."""
    tmp_path = tmp_path_factory.mktemp("service")
    path = tmp_path / "ranker.safetensors"
    save_file({"weight": np.arange(8, dtype=np.float32).reshape(4, 2)}, str(path))
    guard = make_guard(path, cr.sha256_file(path), CollectorRegistry())
    guard.load()
    with serve(wrapped_outside(guard, tmp_path)) as http:
        yield guard, http


class TestBadInput:
    @pytest.mark.parametrize(("body", "status"), BAD_INPUTS)
    def test_bad_input_is_4xx_problem(
        self, service: tuple[cr.ModelGuard[Any], httpx.Client], body: bytes, status: int
    ) -> None:
        """Each kind of bad input is answered with a 4xx invalid_input problem, never a 500."""
        _, client = service
        response = client.post(
            "/predict", content=body, headers={"content-type": "application/json"}
        )
        assert_problem(response, status, "invalid_input", None)

    def test_streamed_body_over_the_limit_is_413(
        self, service: tuple[cr.ModelGuard[Any], httpx.Client]
    ) -> None:
        """A chunked body (no Content-Length) is cut off at the limit and answered 413."""
        _, client = service

        def chunks() -> Iterator[bytes]:
            yield b'{"features": [[1, 2, 3, 4]], "pad": "'
            for _ in range(LIMIT // 256):
                yield b"x" * 256
            yield b'"}'

        response = client.post("/predict", content=chunks())
        assert "content-length" not in response.request.headers
        assert_problem(response, 413, "invalid_input", None)

    def test_hundred_bad_requests_leave_the_breaker_closed(
        self, service: tuple[cr.ModelGuard[Any], httpx.Client]
    ) -> None:
        """After 100 bad requests the breaker is closed with no failure counted; good ones pass."""
        guard, client = service
        bodies = [param.values[0] for param in BAD_INPUTS]
        for i in range(100):
            response = client.post(
                "/predict",
                content=bodies[i % len(bodies)],
                headers={"content-type": "application/json"},
            )
            assert 400 <= response.status_code < 500
        assert guard.breaker.state == "closed"
        assert guard.breaker.fail_counter == 0
        assert client.post("/predict", json=GOOD).status_code == 200


# -- non-HTTP scopes ------------------------------------------------------------------


class TestPassThrough:
    async def _call(self, scope_type: str) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append({"type": scope["type"], "receive": receive, "send": send})

        async def receive() -> dict[str, Any]:
            return {"type": f"{scope_type}.connect"}

        async def send(message: Any) -> None:
            raise AssertionError("the middleware must not send for non-HTTP scopes")

        middleware = DegradationMiddleware(app, guards=[], max_body_size=0)
        await middleware({"type": scope_type, "path": "/livez"}, receive, send)
        assert seen[0]["receive"] is receive
        assert seen[0]["send"] is send
        return seen

    @pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
    @pytest.mark.asyncio
    async def test_non_http_scopes_reach_the_app_untouched(self, scope_type: str) -> None:
        """Websocket and lifespan scopes reach the app with the original receive and send."""
        seen = await self._call(scope_type)
        assert [s["type"] for s in seen] == [scope_type]
