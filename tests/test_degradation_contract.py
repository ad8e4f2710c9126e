"""The HTTP contract of the degradation adapters, on every stack, over real HTTP.

Each test runs once per stack of ``degradation_stacks.STACKS``: FastAPI with
``install()``, a Starlette app with ``asgi.DegradationMiddleware`` wrapped outside it
or in its middleware list, Flask with ``init_app()``, and a bare WSGI app with
``wsgi.DegradationMiddleware``. What only one stack does is tested in its own module
(``test_degradation_<stack>.py``).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import time_machine
from degradation_helpers import (
    GOOD,
    GOOD_SCORES,
    LIMIT,
    SECRET_DIGEST,
    assert_no_leak,
    assert_problem,
    chunked_body_over_the_limit,
    corrupt,
    frozen_clock,
    make_guard,
    open_breaker,
    write_model,
)
from degradation_stacks import STACKS, Service, Stack
from prometheus_client import CollectorRegistry

import clarity_resilience as cr


@pytest.fixture(scope="module", params=STACKS, ids=str)
def stack(request: pytest.FixtureRequest) -> Stack:
    """Return each stack in turn."""
    stack: Stack = request.param
    return stack


@pytest.fixture
def model_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, str]:
    """Write the model in tmp_path; return its path and SHA-256."""
    path = tmp_path / "ranker.safetensors"
    return path, write_model(path)


@pytest.fixture
def guard(model_file: tuple[pathlib.Path, str], registry: CollectorRegistry) -> cr.ModelGuard[Any]:
    """Return a guard that has not loaded its model yet."""
    return make_guard(*model_file, registry)


@pytest.fixture
def client(
    stack: Stack, guard: cr.ModelGuard[Any], tmp_path: pathlib.Path
) -> Iterator[httpx.Client]:
    """Serve the stack's app for ``guard``; yield a client."""
    with stack.serving(guard, tmp_path) as http:
        yield http


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    """Freeze time at T0 (pybreaker's clock); tests move it with ``clock.shift()``."""
    with frozen_clock() as traveller:
        yield traveller


# -- errors become problems -----------------------------------------------------------


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
        assert guard.breaker.state == "closed"  # the trial succeeded

    def test_no_model_loaded_is_503_unavailable(self, client: httpx.Client) -> None:
        """Before load(), predict and the model route answer 503 unavailable, Retry-After 5."""
        assert_problem(client.post("/predict", json=GOOD), 503, "unavailable", 5)
        assert_problem(client.get("/model"), 503, "unavailable", 5)

    def test_model_route_gets_the_verified_model(
        self, client: httpx.Client, guard: cr.ModelGuard[Any]
    ) -> None:
        """After load(), guard.model (FastAPI: model_dependency) hands the route the model."""
        guard.load()
        response = client.get("/model")
        assert response.status_code == 200
        assert response.json() == {"tensors": ["weight"]}

    def test_integrity_failure_is_503_without_path_or_digest(
        self,
        stack: Stack,
        model_file: tuple[pathlib.Path, str],
        registry: CollectorRegistry,
        tmp_path: pathlib.Path,
    ) -> None:
        """A model that failed its checksum answers 503 integrity_failure, leaking nothing."""
        path, sha256 = model_file
        actual = hashlib.sha256(corrupt(path)).hexdigest()
        guard = make_guard(path, sha256, registry, integrity_retry_after=120)
        with pytest.raises(cr.ChecksumMismatchError):
            guard.load()
        with stack.serving(guard, tmp_path) as http:
            response = http.post("/predict", json=GOOD)
            ready = http.get("/readyz")
        assert_problem(response, 503, "integrity_failure", 120)
        assert_no_leak(response, str(tmp_path), sha256, actual)
        assert ready.status_code == 503
        assert ready.headers["retry-after"] == "120"
        assert ready.json()["reason"] == "integrity_failure"
        assert_no_leak(ready, str(tmp_path), sha256[:12], actual[:12])

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
        assert_no_leak(response, str(tmp_path), SECRET_DIGEST)

    def test_other_exceptions_stay_500(self, stack: Stack, client: httpx.Client) -> None:
        """An exception that is not the library's is left to the framework or server: its 500."""
        response = client.get("/raise/not-ours")
        assert response.status_code == 500
        assert response.headers["content-type"].startswith(stack.server_error_type)


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
        assert live.json() == {"status": "ok"}
        assert ready.status_code == 503
        assert ready.headers["retry-after"] == "5"
        assert ready.headers["cache-control"] == "no-store"
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
        assert "retry-after" not in ready.headers
        assert ready.json()["status"] == "ready"
        assert ready.json()["models"][0]["ready"] is True
        assert client.post("/predict", json=GOOD).json() == GOOD_SCORES
        assert client.get("/livez").status_code == 200

    def test_readyz_body_has_no_path_or_digest(
        self,
        client: httpx.Client,
        guard: cr.ModelGuard[Any],
        model_file: tuple[pathlib.Path, str],
        tmp_path: pathlib.Path,
    ) -> None:
        """The readiness body lists safe status fields only: no path, no digest prefix."""
        guard.load()
        response = client.get("/readyz")
        assert set(response.json()["models"][0]) == {
            "model",
            "ready",
            "version",
            "breaker",
            "last_error",
        }
        assert_no_leak(response, str(tmp_path), model_file[1][:12])

    def test_custom_probe_paths(
        self, stack: Stack, guard: cr.ModelGuard[Any], tmp_path: pathlib.Path
    ) -> None:
        """The probe paths are configurable, and readyz is only served for guards."""
        custom = stack.app(guard, tmp_path, livez="/healthz", readyz="/ready")
        bare = stack.app(guard, tmp_path, guards=())
        with stack.serve(custom) as http, stack.serve(bare) as bare_http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/ready").status_code == 503
            assert http.get("/livez").status_code == 404
            assert bare_http.get("/livez").status_code == 200
            assert bare_http.get("/readyz").status_code == 404

    def test_probes_answer_only_get_and_head(self, client: httpx.Client) -> None:
        """A POST to a probe is 405; HEAD gets the headers without a body."""
        assert client.post("/livez").status_code == 405
        head = client.head("/readyz")
        assert head.status_code == 503
        assert head.headers["retry-after"] == "5"
        assert head.content == b""


# -- bad input never trips the breaker ------------------------------------------------

# Each body, and what is wrong with it: "malformed" (not JSON at all) and "unparsable"
# (JSON Python's parser refuses) get the stack's own status, "invalid" bodies are 422.
BAD_INPUTS = [
    pytest.param(b"{not json", "malformed", id="malformed-json"),
    pytest.param(b"", "malformed", id="empty-body"),
    pytest.param(b"{}", "invalid", id="missing-field"),
    pytest.param(b'{"features": "abc"}', "invalid", id="wrong-type"),
    pytest.param(b'{"features": [["a", "b", "c", "d"]]}', "invalid", id="wrong-item-type"),
    pytest.param(b'{"features": [[NaN, 1, 2, 3]]}', "invalid", id="nan"),
    pytest.param(b'{"features": [[Infinity, 1, 2, 3]]}', "invalid", id="inf"),
    pytest.param(b'{"features": [[1, 2, 3]]}', "invalid", id="wrong-shape"),
    pytest.param(b'{"features": [[1, 2, 3, 4], [1]]}', "invalid", id="ragged"),
    pytest.param(
        b'{"features": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested", id="deeply-nested"
    ),
    pytest.param(
        b'{"features": [[' + b"9" * 5000 + b", 1, 2, 3]]}", "unparsable", id="huge-integer"
    ),
    pytest.param(
        b'{"features": [[1, 2, 3, 4]], "pad": "' + b"x" * LIMIT + b'"}', "large", id="large"
    ),
]


@pytest.fixture(scope="class")
def service(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Serve one loaded model for a whole class (bad input never changes its state)."""
    with stack.serving_loaded(tmp_path_factory.mktemp("service")) as running:
        yield running


def _too_deep(body: bytes) -> bool:
    """Return whether this interpreter's json module refuses ``body`` for its nesting."""
    try:
        json.loads(body)
    except RecursionError:
        return True
    return False


class TestBadInput:
    @pytest.mark.parametrize(("body", "problem"), BAD_INPUTS)
    def test_bad_input_is_4xx_problem(
        self, stack: Stack, service: Service, body: bytes, problem: str
    ) -> None:
        """Each kind of bad input is answered with a 4xx invalid_input problem, never a 500."""
        if problem == "nested":
            # CPython 3.11's json gives up on 5000 levels (unparsable); 3.12+ parses them,
            # and the nested lists are then invalid features. Either way: a 4xx problem.
            problem = "unparsable" if _too_deep(body) else "invalid"
        status = {
            "malformed": stack.malformed_status,
            "unparsable": stack.unparsable_status,
            "invalid": 422,
            "large": 413,
        }[problem]
        response = service.client.post(
            "/predict", content=body, headers={"content-type": "application/json"}
        )
        assert_problem(response, status, "invalid_input", None)

    def test_streamed_body_over_the_limit_is_413(self, service: Service) -> None:
        """A chunked body (no Content-Length) read past the limit is answered 413."""
        response = service.client.post(
            "/predict",
            content=chunked_body_over_the_limit(),
            headers={"content-type": "application/json"},
        )
        assert "content-length" not in response.request.headers
        assert_problem(response, 413, "invalid_input", None)

    def test_hundred_bad_requests_leave_the_breaker_closed(self, service: Service) -> None:
        """After 100 bad requests the breaker is closed with no failure counted; good ones pass."""
        bodies = [param.values[0] for param in BAD_INPUTS]
        for i in range(100):
            response = service.client.post(
                "/predict",
                content=bodies[i % len(bodies)],
                headers={"content-type": "application/json"},
            )
            assert 400 <= response.status_code < 500
        assert service.guard.breaker.state == "closed"
        assert service.guard.breaker.fail_counter == 0
        assert service.client.post("/predict", json=GOOD).status_code == 200
