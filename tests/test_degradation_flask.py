"""Tests for degradation.flask.init_app, over real HTTP (werkzeug's threaded server)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import pathlib
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import time_machine
from flask import Flask, request
from prometheus_client import CollectorRegistry
from safetensors.numpy import save_file

import clarity_resilience as cr
from clarity_resilience import loaders
from clarity_resilience.degradation import problem_type
from clarity_resilience.degradation.flask import init_app, json_body
from clarity_resilience.degradation.wsgi import DegradationMiddleware


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
GOOD = {"features": [[1.0, 2.0, 3.0, 4.0]]}


# -- the model and the app ----------------------------------------------------------


def write_model(path: pathlib.Path) -> str:
    """Write a small real safetensors model at ``path``; return its SHA-256."""
    save_file({"weight": np.arange(8, dtype=np.float32).reshape(4, 2)}, str(path))
    return cr.sha256_file(path)


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
def model_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, str]:
    """Write the model in tmp_path; return its path and SHA-256."""
    path = tmp_path / "ranker.safetensors"
    return path, write_model(path)


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


def build_app(guard: cr.ModelGuard[Any], tmp_path: pathlib.Path) -> Flask:
    """Return a Flask predict service with init_app() and a body limit."""
    app = Flask("predict_service")
    init_app(app, guard)
    app.wsgi_app = DegradationMiddleware(  # type: ignore[method-assign]
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


@contextlib.contextmanager
def serve(app: Any) -> Iterator[httpx.Client]:
    """Serve ``app`` over real HTTP; yield a client for it."""
    with (
        http_servers.serve_wsgi(app) as url,
        httpx.Client(base_url=url, timeout=5.0) as client,
    ):
        yield client


@pytest.fixture
def client(guard: cr.ModelGuard[Any], tmp_path: pathlib.Path) -> Iterator[httpx.Client]:
    """Serve the app for ``guard``; yield a client."""
    with serve(build_app(guard, tmp_path)) as http:
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


# -- the HTTP contract ----------------------------------------------------------------


class TestContract:
    def test_open_breaker_is_503_with_seconds_until_trial(
        self, client: httpx.Client, guard: cr.ModelGuard[Any], clock: time_machine.Traveller
    ) -> None:
        """An open breaker answers 503 breaker_open with Retry-After rounded up (39.6 -> 40)."""
        guard.load()
        open_breaker(guard.breaker)
        clock.shift(20.4)
        assert_problem(client.post("/predict", json=GOOD), 503, "breaker_open", 40)

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

    def test_no_model_loaded_is_503_unavailable(self, client: httpx.Client) -> None:
        """Before load(), predict and guard.model answer 503 unavailable, Retry-After 5."""
        assert_problem(client.post("/predict", json=GOOD), 503, "unavailable", 5)
        assert_problem(client.get("/model"), 503, "unavailable", 5)

    def test_guard_model_serves_the_verified_model(
        self, client: httpx.Client, guard: cr.ModelGuard[Any]
    ) -> None:
        """After load(), a view using guard.model gets the verified model."""
        guard.load()
        response = client.get("/model")
        assert response.status_code == 200
        assert response.json() == {"tensors": ["weight"]}

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
        with serve(build_app(guard, tmp_path)) as http:
            response = http.post("/predict", json=GOOD)
            ready = http.get("/readyz")
        assert_problem(response, 503, "integrity_failure", 120)
        assert_no_leak(response, str(tmp_path), sha256, hashlib.sha256(data).hexdigest())
        assert ready.status_code == 503
        assert ready.headers["retry-after"] == "120"
        assert ready.json()["reason"] == "integrity_failure"
        assert_no_leak(ready, str(tmp_path), sha256[:12], hashlib.sha256(data).hexdigest()[:12])

    def test_invalid_input_is_422_without_retry_after(
        self, client: httpx.Client, guard: cr.ModelGuard[Any]
    ) -> None:
        """A wrong shape raised through guard.predict answers 422 invalid_input, no Retry-After."""
        guard.load()
        assert_problem(
            client.post("/predict", json={"features": [[1.0, 2.0]]}), 422, "invalid_input", None
        )

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
        """An exception that is not the library's is left to Flask: its HTML 500."""
        response = client.get("/raise/not-ours")
        assert response.status_code == 500
        assert response.headers["content-type"].startswith("text/html")

    @pytest.mark.parametrize(
        ("method", "path", "headers", "status"),
        [
            pytest.param("GET", "/nowhere", {}, 404, id="not-found"),
            pytest.param("GET", "/predict", {}, 405, id="method-not-allowed"),
            pytest.param("POST", "/predict", {"content-type": "text/plain"}, 415, id="not-json"),
        ],
    )
    def test_other_http_errors_keep_flask_answers(
        self, client: httpx.Client, method: str, path: str, headers: dict[str, str], status: int
    ) -> None:
        """HTTP errors other than 400 and 413 keep Flask's own HTML answers."""
        response = client.request(method, path, content=b"{}", headers=headers)
        assert response.status_code == status
        assert response.headers["content-type"].startswith("text/html")


# -- probes ---------------------------------------------------------------------------


class TestProbes:
    def test_livez_200_while_readyz_and_predict_503_until_loaded(
        self, client: httpx.Client, guard: cr.ModelGuard[Any]
    ) -> None:
        """Livez stays 200 while readyz and predict are 503; after load() all are 200."""
        live = client.get("/livez")
        ready = client.get("/readyz")
        assert live.status_code == 200
        assert live.headers["cache-control"] == "no-store"
        assert ready.status_code == 503
        assert ready.headers["retry-after"] == "5"
        assert ready.json()["models"] == [
            {
                "model": "ranker",
                "ready": False,
                "version": None,
                "breaker": "closed",
                "last_error": None,
            }
        ]
        assert_problem(client.post("/predict", json=GOOD), 503, "unavailable", 5)

        guard.load()
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert client.post("/predict", json=GOOD).json() == {"scores": [[40.0, 50.0]]}
        assert client.get("/livez").status_code == 200

    def test_custom_probe_paths(self, guard: cr.ModelGuard[Any]) -> None:
        """The probe paths are configurable, and readyz is only added for guards."""
        app = Flask("custom_paths")
        init_app(app, guard, livez="/healthz", readyz="/ready")
        bare = Flask("bare")
        init_app(bare)
        with serve(app) as http, serve(bare) as bare_http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/ready").status_code == 503
            assert http.get("/livez").status_code == 404
            assert bare_http.get("/livez").status_code == 200
            assert bare_http.get("/readyz").status_code == 404


# -- bad input never trips the breaker ------------------------------------------------

BAD_INPUTS = [
    pytest.param(b"{not json", 400, id="malformed-json"),
    pytest.param(b"", 400, id="empty-body"),
    pytest.param(b"{}", 422, id="missing-field"),
    pytest.param(b'{"features": "abc"}', 422, id="wrong-type"),
    pytest.param(b'{"features": [["a", "b", "c", "d"]]}', 422, id="wrong-item-type"),
    pytest.param(b'{"features": [[NaN, 1, 2, 3]]}', 422, id="nan"),
    pytest.param(b'{"features": [[Infinity, 1, 2, 3]]}', 422, id="inf"),
    pytest.param(b'{"features": [[1, 2, 3]]}', 422, id="wrong-shape"),
    pytest.param(b'{"features": [[1, 2, 3, 4], [1]]}', 422, id="ragged"),
    pytest.param(b'{"features": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, id="deeply-nested"),
    pytest.param(b'{"features": [[' + b"9" * 5000 + b", 1, 2, 3]]}", 400, id="huge-integer"),
    pytest.param(b'{"features": [[1, 2, 3, 4]], "pad": "' + b"x" * LIMIT + b'"}', 413, id="large"),
]


@pytest.fixture(scope="class")
def service(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[cr.ModelGuard[Any], httpx.Client]]:
    """Serve one loaded model for a whole class (bad input never changes its state)."""
    tmp_path = tmp_path_factory.mktemp("service")
    path = tmp_path / "ranker.safetensors"
    guard = make_guard(path, write_model(path), CollectorRegistry())
    guard.load()
    with serve(build_app(guard, tmp_path)) as http:
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

    def test_malformed_json_is_a_generic_400(
        self, service: tuple[cr.ModelGuard[Any], httpx.Client]
    ) -> None:
        """Malformed JSON is a 400 with a fixed detail: the parser's message is not echoed."""
        _, client = service
        response = client.post(
            "/predict",
            content=b'{"features": SECRET',
            headers={"content-type": "application/json"},
        )
        body = assert_problem(response, 400, "invalid_input", None)
        assert body["detail"] == "The request body could not be parsed."
        assert "SECRET" not in response.text
        assert "decode" not in response.text

    def test_streamed_body_over_the_limit_is_413(
        self, service: tuple[cr.ModelGuard[Any], httpx.Client]
    ) -> None:
        """A chunked body read past max_body_size by the view is a 413 problem."""
        _, client = service

        def chunks() -> Iterator[bytes]:
            yield b'{"features": [[1, 2, 3, 4]], "pad": "'
            for _ in range(LIMIT // 256):
                yield b"x" * 256
            yield b'"}'

        response = client.post(
            "/predict", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert_problem(response, 413, "invalid_input", None)

    def test_max_content_length_is_a_413_problem(self, tmp_path: pathlib.Path) -> None:
        """Without the middleware, Flask's own MAX_CONTENT_LENGTH also answers a 413 problem."""
        app = Flask("max_content_length")
        app.config["MAX_CONTENT_LENGTH"] = LIMIT
        init_app(app)

        @app.post("/echo")
        def echo() -> dict[str, Any]:
            return {"size": len(request.get_data())}

        with serve(app) as http:
            assert http.post("/echo", content=b"x" * LIMIT).json() == {"size": LIMIT}
            response = http.post("/echo", content=b"x" * (LIMIT + 1))
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
