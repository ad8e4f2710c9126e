"""Data corruption (the PENIN document): malformed, mistyped, extreme and hostile input.

Sent over real HTTP to both example services (FastAPI under uvicorn, Flask under a
WSGI server). Every bad request is a 4xx problem document, never a 500 or a 200; the
system stays stable; the breaker never opens (promise 4); nothing sent is echoed back
or written to the audit log.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Iterator

import fastapi_app  # examples/ is on pytest's pythonpath
import flask_app
import httpx
import pytest
import structlog
from http_servers import serve_asgi, serve_wsgi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

# A hang detector, not a speed bound: generous, so a busy machine never trips it.
pytestmark = [pytest.mark.chaos, pytest.mark.non_destructive, pytest.mark.timeout(120)]


GOOD = {"features": [0.5, -1.0, 2.0, 0.25]}
JSON = {"content-type": "application/json"}
CLIENT_FAULTS = {400, 413, 422}

MALFORMED_JSON = [
    pytest.param(b'{"features": [1, 2,', id="truncated"),
    pytest.param(b'{"features": [1, 2, 3, 4]', id="unclosed-object"),
    pytest.param(b"{'features': [1, 2, 3, 4]}", id="single-quotes"),
    pytest.param(b'{"features": [1, 2, 3, 4],}', id="trailing-comma"),
    pytest.param(b"", id="empty-body"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    pytest.param(b"null", id="null"),
    pytest.param(b'"features"', id="bare-string"),
]
INVALID_TYPES = [
    pytest.param({"features": ["a", "b", "c", "d"]}, id="strings"),
    pytest.param({"features": [True, False, True, False]}, id="booleans"),
    pytest.param({"features": [[1], [2], [3], [4]]}, id="nested-lists"),
    pytest.param({"features": {"a": 1}}, id="object"),
    pytest.param({"features": "1,2,3,4"}, id="csv-string"),
    pytest.param({"features": None}, id="null-features"),
    pytest.param({"feature": [1, 2, 3, 4]}, id="misspelt-key"),
    pytest.param([1, 2, 3, 4], id="bare-array"),
]
BOUNDARY_BODIES = [
    pytest.param(b'{"features": [NaN, 1, 2, 3]}', id="nan"),
    pytest.param(b'{"features": [Infinity, 1, 2, 3]}', id="infinity"),
    pytest.param(b'{"features": [-Infinity, 1, 2, 3]}', id="minus-infinity"),
    pytest.param(b'{"features": [1e999, 1, 2, 3]}', id="overflow-to-inf"),
    pytest.param(b'{"features": []}', id="empty"),
    pytest.param(b'{"features": [1, 2, 3]}', id="too-short"),
    pytest.param(json.dumps({"features": list(range(100_000))}).encode(), id="huge-array"),
    pytest.param(b'{"features": ' + b"[" * 5000 + b"]" * 5000 + b"}", id="deeply-nested"),
    pytest.param(b'{"features": [' + b"9" * 5000 + b", 1, 2, 3]}", id="huge-number"),
]
INJECTIONS = [
    "'; DROP TABLE models; --",
    "$(rm -rf /)",
    "../../../../etc/passwd",
    "<script>alert(1)</script>",
    "{{7*7}}${7*7}",
    "\u0000\r\nX-Injected: 1",
    "%s%s%s%n",
    "\ud800",
]


@contextlib.contextmanager
def service(kind: str, tmp: pathlib.Path, registry: CollectorRegistry) -> Iterator[str]:
    if kind == "fastapi":
        with serve_asgi(fastapi_app.create_app(tmp / "model", registry=registry)) as url:
            yield url
    else:
        with serve_wsgi(flask_app.create_app(tmp / "model", registry=registry)) as url:
            yield url


@pytest.fixture(scope="module", params=["fastapi", "flask"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, CollectorRegistry]]:
    """One running example service (per framework) shared by this module's tests."""
    registry = CollectorRegistry()
    with (
        service(request.param, tmp_path_factory.mktemp(request.param), registry) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield client, registry
        # Stable afterwards: the breaker never opened and real requests still work.
        assert client.post("/predict", json=GOOD).status_code == 200
        assert (
            registry.get_sample_value(
                "circuit_breaker_transitions_total",
                {"breaker": "linear", "from_state": "closed", "to_state": "open"},
            )
            == 0.0
        )


def assert_problem(reply: httpx.Response) -> None:
    """A client fault: 4xx problem+json with a known reason, never a 500 or a 200."""
    assert reply.status_code in CLIENT_FAULTS, (reply.status_code, reply.text[:200])
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["reason"] == "invalid_input"


def assert_closed(registry: CollectorRegistry) -> None:
    state = {"breaker": "linear", "state": "closed"}
    assert registry.get_sample_value("circuit_breaker_state", state) == 1.0


class TestDataCorruption:
    @pytest.mark.parametrize("body", MALFORMED_JSON)
    def test_malformed_json(
        self, stack: tuple[httpx.Client, CollectorRegistry], body: bytes
    ) -> None:
        """Broken JSON is a 4xx problem and the breaker stays closed."""
        client, registry = stack
        assert_problem(client.post("/predict", content=body, headers=JSON))
        assert_closed(registry)

    @pytest.mark.parametrize("payload", INVALID_TYPES)
    def test_invalid_types(
        self, stack: tuple[httpx.Client, CollectorRegistry], payload: object
    ) -> None:
        """Valid JSON of the wrong shape or type is a 4xx problem."""
        client, registry = stack
        assert_problem(client.post("/predict", json=payload))
        assert_closed(registry)

    @pytest.mark.parametrize("body", BOUNDARY_BODIES)
    def test_boundary_values(
        self, stack: tuple[httpx.Client, CollectorRegistry], body: bytes
    ) -> None:
        """NaN, infinities, empty, huge and deeply nested input are 4xx problems."""
        client, registry = stack
        assert_problem(client.post("/predict", content=body, headers=JSON))
        assert_closed(registry)

    @pytest.mark.parametrize(
        "text", [pytest.param(t, id=f"injection-{i}") for i, t in enumerate(INJECTIONS)]
    )
    def test_injection_attempts_are_not_echoed_or_logged(
        self, stack: tuple[httpx.Client, CollectorRegistry], text: str
    ) -> None:
        """Hostile strings are refused, never reflected in the body, never written to logs."""
        client, registry = stack
        body = json.dumps({"features": [text, 1, 2, 3], "note": text}).encode(
            "utf-8", "surrogatepass"
        )
        with structlog.testing.capture_logs() as logs:
            reply = client.post("/predict", content=body, headers=JSON)
        assert_problem(reply)
        assert text not in reply.text
        assert "injected" not in {k.lower() for k in reply.headers}
        assert all(text not in repr(entry) for entry in logs)
        assert_closed(registry)

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,  # the same inputs every run (fixed seed)
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        payload=st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=6)
                | st.dictionaries(st.text(max_size=8), children, max_size=4)
            ),
            max_leaves=20,
        )
    )
    def test_fuzzed_json_never_breaks_the_service(
        self, stack: tuple[httpx.Client, CollectorRegistry], payload: object
    ) -> None:
        """Any JSON document (Hypothesis) is answered 200 or a 4xx problem, never a 5xx."""
        client, registry = stack
        body = json.dumps({"features": payload}, allow_nan=True).encode()
        reply = client.post("/predict", content=body, headers=JSON)
        if reply.status_code != 200:
            assert_problem(reply)
        assert_closed(registry)
