"""The examples, exercised over real HTTP: FastAPI (uvicorn) and Flask (a WSGI server).

Every endpoint the examples document is called here: ``POST /predict`` (good and
hostile input), ``GET /model``, ``GET /livez``, ``GET /readyz``, ``GET /metrics`` and
``POST /admin/reload``. The FastAPI example also runs as its users start it, as a
process (``python examples/fastapi_app.py``), so that startup and SIGTERM are real.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# examples/ and tests/support are on pytest's pythonpath (pyproject.toml).
import demo
import fastapi_app
import flask_app
import httpx
import linear_model
import numpy as np
import pytest
from http_servers import serve_asgi, serve_wsgi
from prometheus_client import CollectorRegistry
from safetensors.numpy import load_file, save_file

import clarity_resilience as cr

REPO = pathlib.Path(__file__).resolve().parent.parent
FEATURES = [0.5, -1.0, 2.0, 0.25]
JSON = {"content-type": "application/json"}

#: ``server(model_dir, registry, **create_app_options)``: serve an example, yield its URL.
Server = Callable[..., contextlib.AbstractContextManager[str]]


@contextlib.contextmanager
def run_fastapi(
    model_dir: pathlib.Path, registry: CollectorRegistry, **options: Any
) -> Iterator[str]:
    with serve_asgi(fastapi_app.create_app(model_dir, registry=registry, **options)) as url:
        yield url


@contextlib.contextmanager
def run_flask(
    model_dir: pathlib.Path, registry: CollectorRegistry, **options: Any
) -> Iterator[str]:
    with serve_wsgi(flask_app.create_app(model_dir, registry=registry, **options)) as url:
        yield url


SERVERS = [pytest.param(run_fastapi, id="fastapi"), pytest.param(run_flask, id="flask")]

_PAD = b"x" * fastapi_app.MAX_BODY_BYTES
#: Hostile /predict bodies and the status each example answers (FastAPI, Flask). All
#: are invalid_input problems; none may count against the breaker.
_NESTED = b"[" * 2000 + b"]" * 2000


def _nested_status(body: bytes) -> int:
    """Return 400 if this interpreter's json refuses ``body`` for its depth, else 422."""
    try:
        json.loads(body)
    except RecursionError:
        return 400
    return 422


HOSTILE: dict[str, tuple[bytes, tuple[int, int]]] = {
    "400-digit-int": (b'{"features": [' + b"9" * 400 + b", 1, 2, 3]}", (422, 422)),
    "negative-400-digit-int": (b'{"features": [-' + b"9" * 400 + b", 1, 2, 3]}", (422, 422)),
    # Beyond Python's 4300-digit limit for int(): the body cannot be parsed at all.
    "5000-digit-int": (b'{"features": [' + b"9" * 5000 + b", 1, 2, 3]}", (400, 400)),
    "1e39-beyond-float32": (b'{"features": [1e39, 1, 2, 3]}', (422, 422)),
    "-3.5e38-beyond-float32": (b'{"features": [1, -3.5e38, 2, 3]}', (422, 422)),
    "NaN": (b'{"features": [NaN, 1, 2, 3]}', (422, 422)),
    "Infinity": (b'{"features": [1, Infinity, 2, 3]}', (422, 422)),
    "-Infinity": (b'{"features": [1, 2, -Infinity, 3]}', (422, 422)),
    "1e999": (b'{"features": [1, 2, 3, 1e999]}', (422, 422)),
    "-1e309": (b'{"features": [-1e309, 1, 2, 3]}', (422, 422)),
    "string": (b'{"features": ["1", 2, 3, 4]}', (422, 422)),
    "bool": (b'{"features": [true, 2, 3, 4]}', (422, 422)),
    "null-feature": (b'{"features": [null, 2, 3, 4]}', (422, 422)),
    "null": (b'{"features": null}', (422, 422)),
    "object": (b'{"features": {"0": 1, "1": 2, "2": 3, "3": 4}}', (422, 422)),
    "matrix": (b'{"features": [[1, 2], [3, 4]]}', (422, 422)),
    "too-few": (b'{"features": [1, 2, 3]}', (422, 422)),
    "too-many": (b'{"features": [1, 2, 3, 4, 5]}', (422, 422)),
    "extra-key": (b'{"features": [1, 2, 3, 4], "admin": true}', (422, 422)),
    "top-level-array": (b"[1, 2, 3, 4]", (422, 422)),
    # 2000 levels in 4 KB, far below the body limit: past the json module's recursion
    # limit on some interpreters (unparsable: 400), parsed into invalid features on
    # others (422). Either way a problem, never a 500.
    "deeply-nested": (_NESTED, (_nested_status(_NESTED),) * 2),
    "deeply-nested-in-features": (
        b'{"features": ' + _NESTED + b"}",
        (_nested_status(b'{"features": ' + _NESTED + b"}"),) * 2,
    ),
    # FastAPI answers JSON it cannot decode with its validation error (422).
    "truncated": (b'{"features": [1, 2,', (422, 400)),
    "not-utf-8": (b'"\xff\xfe"', (400, 400)),
    "oversized": (b'{"features": [1, 2, 3, 4], "pad": "' + _PAD + b'"}', (413, 413)),
}


def expected(model_dir: pathlib.Path, features: list[float]) -> float:
    """The prediction computed straight from the weights file, without the library."""
    weights = load_file(str(model_dir / "weights" / linear_model.WEIGHTS_FILE))
    return float(np.asarray(features, np.float32) @ weights["w"] + weights["b"][0])


def tamper(model_dir: pathlib.Path) -> None:
    weights = model_dir / "weights" / linear_model.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(data)


def publish(model_dir: pathlib.Path, w: Sequence[float], b: float, version: str) -> None:
    """Publish weights with a manifest that lists them: they pass integrity checks."""
    weights = model_dir / "weights"
    tensors = {"w": np.asarray(w, np.float32), "b": np.asarray([b], np.float32)}
    save_file(tensors, str(weights / linear_model.WEIGHTS_FILE))
    manifest = cr.Manifest.build(weights, version=version)
    manifest.write(model_dir / linear_model.MANIFEST_FILE, format="json")


def strict_json(response: httpx.Response) -> Any:
    """Parse a body as RFC 8259 JSON: Python's NaN and Infinity extensions fail."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON: {response.text[:200]!r}")

    return json.loads(response.text, parse_constant=refuse)


def assert_problem(response: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    """Check a problem+json answer's status and reason; return its body."""
    assert (response.status_code, response.headers["content-type"]) == (
        status,
        "application/problem+json",
    ), response.text[:300]
    body: dict[str, Any] = strict_json(response)
    assert body["status"] == status
    assert body["reason"] == reason
    return body


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def breaker_opened(registry: CollectorRegistry) -> float | None:
    return sample(
        registry,
        "circuit_breaker_transitions_total",
        breaker="linear",
        from_state="closed",
        to_state="open",
    )


@pytest.mark.parametrize("server", SERVERS)
class TestExampleService:
    def test_serves_verified_predictions_and_probes(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """The example predicts from the verified weights and answers its probes."""
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            reply = c.post("/predict", json={"features": FEATURES})
            assert reply.status_code == 200
            assert reply.json()["prediction"] == pytest.approx(expected(model_dir, FEATURES))
            assert c.get("/livez").status_code == 200
            assert c.get("/readyz").status_code == 200
            metrics = c.get("/metrics").text
        assert 'prediction_success_total{model="linear"} 1.0' in metrics

    def test_every_probe_and_metrics_answer(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """livez, readyz and metrics answer with their documented bodies and types."""
        with server(tmp_path / "model", registry) as url, httpx.Client(base_url=url) as c:
            live = c.get("/livez")
            ready = c.get("/readyz")
            metrics = c.get("/metrics")
        assert (live.status_code, strict_json(live)) == (200, {"status": "ok"})
        assert ready.status_code == 200
        assert strict_json(ready) == {
            "status": "ready",
            "models": [
                {
                    "model": "linear",
                    "ready": True,
                    "version": "v1",
                    "breaker": "closed",
                    "last_error": None,
                }
            ],
        }
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=")
        assert "# TYPE prediction_success_total counter" in metrics.text
        assert 'circuit_breaker_state{breaker="linear",state="closed"} 1.0' in metrics.text

    def test_model_endpoint_shows_tensors_and_no_digest(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """GET /model lists the verified tensors and status, never the digest or a path."""
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            reply = c.get("/model")
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/json"
        assert strict_json(reply) == {
            "tensors": {"b": [1], "w": [4]},
            "serving": {
                "model": "linear",
                "ready": True,
                "version": "v1",
                "breaker": "closed",
                "last_error": None,
                "signer": None,
            },
        }
        digest = cr.sha256_file(model_dir / "weights" / linear_model.WEIGHTS_FILE)
        assert digest[:8] not in reply.text
        assert str(tmp_path) not in reply.text

    def test_corrupt_model_at_startup_is_503_but_alive(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """With a tampered model the service starts, livez 200, readyz and predict 503."""
        model_dir = tmp_path / "model"
        linear_model.ensure_model(model_dir)
        tamper(model_dir)
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/livez").status_code == 200
            ready = c.get("/readyz")
            reply = c.post("/predict", json={"features": FEATURES})
            model = c.get("/model")
        assert ready.status_code == 503
        assert strict_json(ready)["reason"] == "integrity_failure"
        assert_problem(model, 503, "integrity_failure")
        assert reply.status_code == 503
        assert reply.headers["content-type"] == "application/problem+json"
        assert reply.json()["reason"] == "integrity_failure"
        assert reply.headers["retry-after"] == "300"
        assert str(model_dir) not in reply.text

    def test_reload_refused_then_promoted(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A tampered file is refused (409, still serving); a new version is promoted."""
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            v1 = expected(model_dir, FEATURES)
            tamper(model_dir)
            refused = c.post("/admin/reload")
            assert refused.status_code == 409
            assert refused.json()["reason"] == "checksum_mismatch"
            assert c.post("/predict", json={"features": FEATURES}).json()[
                "prediction"
            ] == pytest.approx(v1)
            linear_model.write_model(model_dir, version="v2", seed=11)
            promoted = c.post("/admin/reload")
            assert promoted.status_code == 200
            assert promoted.json()["promoted"] is True
            assert promoted.json()["serving"]["version"] == "v2"
            assert "sha256" not in promoted.json()["serving"]
            v2 = c.post("/predict", json={"features": FEATURES}).json()["prediction"]
        assert v2 == pytest.approx(expected(model_dir, FEATURES))
        assert v2 != pytest.approx(v1)

    def test_reload_under_32_concurrent_clients(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """32 clients keep getting 200s through a refused and then a promoted reload."""
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url:
            v1 = expected(model_dir, FEATURES)
            stop = threading.Event()
            statuses: Counter[int] = Counter()
            values: set[float] = set()
            lock = threading.Lock()

            def client() -> None:
                with httpx.Client(base_url=url, timeout=10) as c:
                    while not stop.is_set():
                        reply = c.post("/predict", json={"features": FEATURES})
                        with lock:
                            statuses[reply.status_code] += 1
                            if reply.status_code == 200:
                                values.add(round(reply.json()["prediction"], 5))

            threads = [threading.Thread(target=client) for _ in range(32)]
            for t in threads:
                t.start()
            with httpx.Client(base_url=url, timeout=30) as admin:
                tamper(model_dir)
                refused = admin.post("/admin/reload").status_code
                linear_model.write_model(model_dir, version="v2", seed=11)
                promoted = admin.post("/admin/reload").status_code
                # Keep the clients going until they have seen the new version.
                for _ in range(200):
                    reply = admin.post("/predict", json={"features": FEATURES})
                    if round(reply.json()["prediction"], 5) != round(v1, 5):
                        break
            stop.set()
            for t in threads:
                t.join(timeout=30)
        v2 = expected(model_dir, FEATURES)
        assert (refused, promoted) == (409, 200)
        assert set(statuses) == {200}, statuses
        assert sum(statuses.values()) >= 32
        assert values <= {round(v1, 5), round(v2, 5)}

    def test_bad_input_is_4xx_and_never_trips_the_breaker(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """100 malformed requests get 4xx problems; predictions still work afterwards."""
        bodies: list[Any] = [
            b'{"features": [1, 2,',
            b'{"features": [NaN, 1, 2, 3]}',
            b'{"features": [1e999, 1, 2, 3]}',
            b'{"features": ["a", "b", "c", "d"]}',
            b'{"features": [1, 2, 3]}',
            b'{"features": null}',
            b"[]",
            b"\xff\xfe not utf-8",
        ]
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            answers = Counter(
                c.post(
                    "/predict",
                    content=bodies[i % len(bodies)],
                    headers={"content-type": "application/json"},
                ).status_code
                for i in range(100)
            )
            after = c.post("/predict", json={"features": FEATURES})
        assert set(answers) <= {400, 413, 422}, answers
        assert after.status_code == 200
        closed = registry.get_sample_value(
            "circuit_breaker_state", {"breaker": "linear", "state": "closed"}
        )
        assert closed == 1.0
        assert (
            registry.get_sample_value(
                "circuit_breaker_transitions_total",
                {"breaker": "linear", "from_state": "closed", "to_state": "open"},
            )
            == 0.0
        )

    def test_hostile_input_is_a_4xx_problem_and_never_trips_the_breaker(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Each hostile body gets its invalid_input problem; the breaker stays closed."""
        column = 0 if server is run_fastapi else 1
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            answers = {}
            for name, (body, _) in HOSTILE.items():
                reply = c.post("/predict", content=body, headers=JSON)
                kind = reply.headers["content-type"]
                is_problem = kind == "application/problem+json"
                answers[name] = (
                    reply.status_code,
                    kind,
                    strict_json(reply)["reason"] if is_problem else reply.text[:100],
                    reply.headers.get("retry-after"),
                )
            after = c.post("/predict", json={"features": FEATURES})
            ready = c.get("/readyz")
        expected_answers = {
            name: (statuses[column], "application/problem+json", "invalid_input", None)
            for name, (_, statuses) in HOSTILE.items()
        }
        assert answers == expected_answers
        assert after.status_code == 200
        assert strict_json(after)["prediction"] == pytest.approx(expected(model_dir, FEATURES))
        assert strict_json(ready)["models"][0]["breaker"] == "closed"
        assert breaker_opened(registry) == 0.0
        assert sample(registry, "prediction_failure_total", model="linear", reason="internal") == 0

    def test_wrong_method_or_media_type_is_a_4xx(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A wrong method or Content-Type gets the framework's documented 4xx, never a 500."""
        fastapi = server is run_fastapi
        body = json.dumps({"features": FEATURES}).encode()
        with server(tmp_path / "model", registry) as url, httpx.Client(base_url=url) as c:
            plain = c.post("/predict", content=body, headers={"content-type": "text/plain"})
            bare = c.post("/predict", content=body)
            wrong_method = c.get("/predict")
            after = c.post("/predict", json={"features": FEATURES})
        # FastAPI validates any body as JSON (a 422 problem); Flask answers 415 itself.
        if fastapi:
            assert_problem(plain, 422, "invalid_input")
            assert_problem(bare, 422, "invalid_input")
        else:
            assert (plain.status_code, bare.status_code) == (415, 415)
        assert wrong_method.status_code == 405
        assert after.status_code == 200
        assert breaker_opened(registry) == 0.0

    def test_chunked_oversized_body_is_a_413(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A body streamed without a length is cut off at the limit: 413, breaker closed."""

        def chunks() -> Iterator[bytes]:
            yield b'{"features": [1, 2, 3, 4], "pad": "'
            for _ in range(fastapi_app.MAX_BODY_BYTES // 1024 + 1):
                yield b"x" * 1024
            yield b'"}'

        with server(tmp_path / "model", registry) as url, httpx.Client(base_url=url) as c:
            reply = c.post("/predict", content=chunks(), headers=JSON)
            after = httpx.post(f"{url}/predict", json={"features": FEATURES})
        assert_problem(reply, 413, "invalid_input")
        assert after.status_code == 200

    def test_extreme_but_valid_features_score_finitely(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Features at float32's limit, aligned with the weights, still give a finite score."""
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            weights = load_file(str(model_dir / "weights" / linear_model.WEIGHTS_FILE))
            # In float32 this sum overflows to an infinity.
            features = [linear_model.FLOAT32_MAX * float(np.sign(w)) for w in weights["w"]]
            largest = [-f for f in features]
            replies = [c.post("/predict", json={"features": f}) for f in (features, largest)]
        exact = float(np.asarray(features) @ weights["w"].astype(np.float64) + weights["b"][0])
        assert [r.status_code for r in replies] == [200, 200]
        scores = [strict_json(r)["prediction"] for r in replies]
        assert scores[0] == pytest.approx(exact)
        assert scores[1] == pytest.approx(-exact + 2 * float(weights["b"][0]))

    @pytest.mark.parametrize("score", [float("nan"), float("inf"), float("-inf")])
    def test_non_finite_score_is_a_model_failure(
        self, server: Server, score: float, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A score that is not finite is a 503 problem counted by the breaker, not a 200."""

        def broken(model: linear_model.Model, features: Sequence[object]) -> float:
            return score

        model_dir = tmp_path / "model"
        with (
            server(model_dir, registry, predictor=broken) as url,
            httpx.Client(base_url=url, timeout=10) as c,
        ):
            reply = c.post("/predict", json={"features": FEATURES})
        assert_problem(reply, 503, "unavailable")
        assert reply.headers["retry-after"] == "5"
        assert sample(registry, "prediction_failure_total", model="linear", reason="internal") == 1

    def test_non_finite_weights_are_refused_at_reload(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A published version with NaN weights passes its digest but is refused: 409."""
        model_dir = tmp_path / "model"
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            v1 = expected(model_dir, FEATURES)
            publish(model_dir, [1.0, float("nan"), 0.0, 0.0], 0.5, version="v2")
            refused = c.post("/admin/reload")
            still = c.post("/predict", json={"features": FEATURES})
        assert refused.status_code == 409
        assert strict_json(refused)["reason"] == "load_error"
        assert strict_json(refused)["serving"]["version"] == "v1"
        assert strict_json(still)["prediction"] == pytest.approx(v1)

    def test_non_finite_weights_at_startup_are_503(
        self, server: Server, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Infinite weights at startup: the service is alive, unready, and predicts 503."""
        model_dir = tmp_path / "model"
        linear_model.ensure_model(model_dir)
        publish(model_dir, [1.0, 2.0, float("inf"), 0.0], 0.5, version="v1")
        with server(model_dir, registry) as url, httpx.Client(base_url=url, timeout=10) as c:
            live = c.get("/livez")
            ready = c.get("/readyz")
            reply = c.post("/predict", json={"features": FEATURES})
            model = c.get("/model")
        assert live.status_code == 200
        assert ready.status_code == 503
        assert_problem(reply, 503, "unavailable")
        assert_problem(model, 503, "unavailable")


#: Seconds a started example gets to serve, and a stopped one to exit: generous, for a
#: busy 2-core machine (it takes about a second when idle).
PROCESS_TIMEOUT = 60.0


class ExampleProcess:
    """The FastAPI example run as its users run it: ``python examples/fastapi_app.py 0``."""

    def __init__(self, model_dir: pathlib.Path) -> None:
        env = dict(os.environ, CLARITY_MODEL_DIR=str(model_dir))
        if os.environ.get("CLARITY_TEST_INSTALLED") != "1":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "examples" / "fastapi_app.py"), "0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        # A thread reads stderr, so that waiting for a line can time out.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def url(self) -> str:
        """Wait until uvicorn says where it serves (after startup); return the URL."""
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"the example exited ({self.proc.wait()}): {self.log}")
            self.log.append(line)
            if found := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line):
                return found[1]
        pytest.fail(f"the example did not start serving in {PROCESS_TIMEOUT} s: {self.log}")

    def terminate(self) -> None:
        """Send SIGTERM; fail unless the server shuts down gracefully and exits in time."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout=PROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the example ignored SIGTERM for {PROCESS_TIMEOUT} s")
        self._reader.join(timeout=PROCESS_TIMEOUT)
        while (line := self._lines.get_nowait()) is not None:
            self.log.append(line)
        # uvicorn re-raises the signal once it has shut down: exit status -SIGTERM.
        assert status in (0, -signal.SIGTERM), self.log
        assert any("Finished server process" in line for line in self.log), self.log

    def close(self) -> None:
        """Kill the process if it still runs, and release its pipe and reader thread."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=PROCESS_TIMEOUT)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@contextlib.contextmanager
def example_process(model_dir: pathlib.Path) -> Iterator[ExampleProcess]:
    """Start the FastAPI example as a process; it is always killed at the end."""
    process = ExampleProcess(model_dir)
    try:
        yield process
    finally:
        process.close()


class TestExampleProcess:
    def test_serves_and_stops_on_sigterm(self, tmp_path: pathlib.Path) -> None:
        """Started as users start it, the example serves predictions and exits 0 on SIGTERM."""
        model_dir = tmp_path / "model"
        with example_process(model_dir) as example:
            with httpx.Client(base_url=example.url(), timeout=10) as c:
                live = c.get("/livez")
                ready = c.get("/readyz")
                reply = c.post("/predict", json={"features": FEATURES})
            example.terminate()
        assert (live.status_code, ready.status_code, reply.status_code) == (200, 200, 200)
        assert strict_json(reply)["prediction"] == pytest.approx(expected(model_dir, FEATURES))

    def test_fifo_manifest_starts_unready_and_stops_on_sigterm(
        self, tmp_path: pathlib.Path
    ) -> None:
        """A FIFO in place of the manifest: the example starts, is alive, unready, 503s.

        It used to block in its startup forever (no /livez, SIGTERM ignored); it needs the
        manifest reader to refuse non-regular files (issue 8, item 2).
        """
        model_dir = tmp_path / "model"
        manifest = linear_model.ensure_model(model_dir)
        manifest.unlink()
        os.mkfifo(manifest)
        with example_process(model_dir) as example:
            with httpx.Client(base_url=example.url(), timeout=10) as c:
                live = c.get("/livez")
                ready = c.get("/readyz")
                reply = c.post("/predict", json={"features": FEATURES})
            example.terminate()
        assert live.status_code == 200
        assert ready.status_code == 503
        assert_problem(reply, 503, strict_json(ready)["reason"])


#: Seconds create_app() gets to load (or refuse) a model: generous, it takes milliseconds.
LOAD_TIMEOUT = 30.0


class TestFlaskFifoManifest:
    def test_fifo_manifest_starts_unready(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A FIFO in place of the manifest: create_app returns; livez 200, readyz/predict 503.

        The Flask example loads in create_app(), which used to block on the FIFO
        forever; it needs the manifest reader to refuse non-regular files (issue 8,
        item 2). A blocked reader is released at the end by opening the FIFO for writing.
        """
        model_dir = tmp_path / "model"
        manifest = linear_model.ensure_model(model_dir)
        manifest.unlink()
        os.mkfifo(manifest)
        apps: list[Any] = []
        builder = threading.Thread(
            target=lambda: apps.append(flask_app.create_app(model_dir, registry=registry)),
            daemon=True,
        )
        builder.start()
        try:
            builder.join(LOAD_TIMEOUT)
            assert apps, f"create_app() blocked on a FIFO manifest for {LOAD_TIMEOUT} s"
            with serve_wsgi(apps[0]) as url, httpx.Client(base_url=url, timeout=10) as c:
                live = c.get("/livez")
                ready = c.get("/readyz")
                reply = c.post("/predict", json={"features": FEATURES})
        finally:
            if builder.is_alive():
                # A writer that opens and closes gives the blocked reader its EOF.
                os.close(os.open(manifest, os.O_WRONLY | os.O_NONBLOCK))
                builder.join(LOAD_TIMEOUT)
        assert live.status_code == 200
        assert ready.status_code == 503
        assert_problem(reply, 503, strict_json(ready)["reason"])


class TestDemo:
    def test_demo_walks_through_every_step(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The README's main job runs end to end and tells the story it promises."""
        monkeypatch.setattr(demo, "DEMO_RESET_TIMEOUT", 0.2)
        try:
            assert demo.main() == 0
        finally:
            cr.instrumentation.set_on_event_hooks(None)
        out = capsys.readouterr().out
        assert "POST /admin/reload -> 409 checksum_mismatch: refused" in out
        assert "20 x POST /predict -> 20 x 200 (last known good)" in out
        assert "100 bad requests -> " in out
        assert "breaker still 'closed'" in out
        assert "Retry-After: 1" in out  # 0.2 s rounds up to the 1 s minimum
        assert '"reason":"breaker_open"' in out
        assert "breaker 'closed'" in out
        assert "promoted=True" in out
        assert "model_integrity_failures_total" in out
