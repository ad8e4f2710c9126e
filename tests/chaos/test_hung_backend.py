"""Hung backends and traffic spikes over real HTTP (issue 12): deadlines and shedding.

A predict service (Starlette under the ASGI degradation middleware served by uvicorn,
awaiting ``predict_async``; or a WSGI app under the WSGI middleware served by
werkzeug's threads, calling ``predict``; both on loopback) scores through a guard
whose prediction calls a real backend over HTTP (a werkzeug server on loopback) that
can be made to hang. Nothing is patched:

- hung backend: every caller is released at its deadline with 503 ``timeout``; five
  such calls open the breaker; after the reset timeout (the clock moved, never slept)
  one trial runs and closes it; the in-flight gauge falls back to 0 once the stuck
  backend calls end;
- spike: 64 concurrent clients against ``max_concurrency=4, max_queue=8``: exactly
  12 succeed, 52 are shed with 503 ``overloaded``, ``/livez`` answers meanwhile, and
  the breaker stays closed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import json
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import time_machine
from degradation_helpers import assert_problem, make_guard, write_model
from http_servers import serve_asgi, serve_wsgi
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import clarity_resilience as cr
from clarity_resilience.degradation import asgi, wsgi

pytestmark = [pytest.mark.chaos, pytest.mark.non_destructive, pytest.mark.timeout(60)]

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
DEADLINE = 0.5  # seconds a prediction may take
MARGIN = 1.0  # how late past the deadline a caller may be answered on a busy machine
SETTLE = 20.0  # bound on waiting for something observable
CLIENTS = 64
MAX_CONCURRENCY = 4
MAX_QUEUE = 8


class Backend:
    """A WSGI backend that answers at once, or hangs until released; counts requests."""

    def __init__(self) -> None:
        self.hang = True
        self.release = threading.Event()
        self.hits = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self._lock:
            self.hits += 1
            hang = self.hang
        if hang:
            self.release.wait(SETTLE * 3)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"score": 1.0}).encode()]


def call_backend(model: Any, url: str) -> float:
    """The prediction: ask the backend (blocking; a hung backend hangs this thread)."""
    score: float = httpx.get(url, timeout=SETTLE * 4).json()["score"]
    return score


def asgi_service(guard: cr.ModelGuard[Any], backend_url: str) -> asgi.DegradationMiddleware:
    """Return the async predict service: POST /predict awaits ``predict_async``."""

    async def predict(request: Request) -> JSONResponse:
        return JSONResponse({"score": await guard.predict_async(call_backend, backend_url)})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    return asgi.DegradationMiddleware(app, guards=(guard,), livez="/livez", readyz="/readyz")


def wsgi_service(guard: cr.ModelGuard[Any], backend_url: str) -> wsgi.DegradationMiddleware:
    """Return the threaded predict service: POST /predict calls the sync ``predict``."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] != "/predict":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        body = json.dumps({"score": guard.predict(call_backend, backend_url)}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return wsgi.DegradationMiddleware(app, guards=(guard,), livez="/livez", readyz="/readyz")


#: How the service is served: uvicorn + predict_async, or werkzeug threads + predict.
STACKS = {
    "asgi": (asgi_service, serve_asgi),
    "wsgi": (wsgi_service, serve_wsgi),
}


@pytest.fixture(params=sorted(STACKS))
def stack(request: pytest.FixtureRequest) -> str:
    """Run each scenario on the async and on the threaded stack."""
    name: str = request.param
    return name


@contextlib.contextmanager
def running(
    stack: str, tmp_path: pathlib.Path, registry: CollectorRegistry, **options: Any
) -> Iterator[tuple[cr.ModelGuard[Any], Backend, httpx.Client]]:
    """Serve a backend and the predict service; yield the guard, backend and a client."""
    build, serve = STACKS[stack]
    path = tmp_path / "ranker.safetensors"
    guard = make_guard(path, write_model(path), registry, **options)
    guard.load()
    backend = Backend()
    try:
        with (
            serve_wsgi(backend) as backend_url,
            serve(build(guard, backend_url)) as url,
            httpx.Client(base_url=url, timeout=SETTLE) as client,
        ):
            yield guard, backend, client
    finally:
        backend.release.set()


def gauge(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"model": "ranker", **labels})


def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll (bounded) for a condition that another thread makes true."""
    limit = time.monotonic() + SETTLE
    while not predicate():
        assert time.monotonic() < limit, "condition not reached in time"
        time.sleep(0.01)  # sleep-ok: polling for a condition, bounded by a deadline


class TestHungBackend:
    def test_deadline_breaker_trial_and_in_flight(
        self, stack: str, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Released at the deadline, five timeouts open it, one trial closes it, gauge to 0."""
        with (
            time_machine.travel(T0, tick=True) as traveller,
            running(stack, tmp_path, registry, timeout=DEADLINE) as (guard, backend, client),
        ):
            for _ in range(5):
                start = time.monotonic()
                response = client.post("/predict")
                elapsed = time.monotonic() - start
                assert_problem(response, 503, "timeout", 1)
                assert DEADLINE <= elapsed < DEADLINE + MARGIN
            assert guard.breaker.state == "open"
            assert backend.hits == 5
            assert gauge(registry, "prediction_in_flight") == 5  # abandoned, still stuck
            assert gauge(registry, "prediction_failure_total", reason="timeout") == 5

            response = client.post("/predict")
            assert_problem(response, 503, "breaker_open", 60)
            assert backend.hits == 5  # rejected without calling the backend

            backend.hang = False
            traveller.shift(guard.breaker.reset_timeout + 1)
            assert guard.breaker.state == "half-open"
            response = client.post("/predict")
            assert response.status_code == 200
            assert response.json() == {"score": 1.0}
            assert backend.hits == 6  # exactly one trial
            assert guard.breaker.state == "closed"

            backend.release.set()  # the stuck backend calls end now
            wait_until(lambda: gauge(registry, "prediction_in_flight") == 0)


class TestSpike:
    def test_exactly_the_admitted_calls_succeed(
        self, stack: str, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """4 run, 8 wait, 52 are shed with 503 overloaded; /livez answers; breaker closed."""
        with running(
            stack, tmp_path, registry, max_concurrency=MAX_CONCURRENCY, max_queue=MAX_QUEUE
        ) as (
            guard,
            backend,
            client,
        ):
            limit = guard._overload.limit
            assert limit is not None
            shed_expected = CLIENTS - MAX_CONCURRENCY - MAX_QUEUE
            responses: list[httpx.Response] = []
            lock = threading.Lock()

            def one() -> None:
                response = client.post("/predict")
                with lock:
                    responses.append(response)

            with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
                futures = [pool.submit(one) for _ in range(CLIENTS)]
                try:
                    # Every client has arrived: 4 hang at the backend, 8 wait, the rest
                    # were answered already.
                    wait_until(lambda: len(responses) == shed_expected)
                    wait_until(lambda: backend.hits == MAX_CONCURRENCY)
                    assert limit.waiting == MAX_QUEUE
                    for _ in range(3):  # the probe never queues behind predictions
                        start = time.monotonic()
                        assert client.get("/livez").status_code == 200
                        assert time.monotonic() - start < MARGIN
                    shed = list(responses)
                finally:
                    backend.release.set()
                for future in futures:
                    future.result(SETTLE)

            for response in shed:
                assert_problem(response, 503, "overloaded", 1)
            ok = [r for r in responses if r.status_code == 200]
            assert len(ok) == MAX_CONCURRENCY + MAX_QUEUE
            assert len(responses) == CLIENTS
            assert backend.hits == MAX_CONCURRENCY + MAX_QUEUE
            assert guard.breaker.state == "closed"
            assert guard.breaker.fail_counter == 0
            assert (
                gauge(registry, "prediction_failure_total", reason="overloaded") == shed_expected
            )
            assert gauge(registry, "prediction_success_total") == MAX_CONCURRENCY + MAX_QUEUE
            assert gauge(registry, "prediction_in_flight") == 0
