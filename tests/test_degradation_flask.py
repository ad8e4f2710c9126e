"""Tests for what only degradation.flask does: Flask's own HTTP errors and body limits.

The HTTP contract every stack shares is in test_degradation_contract.py.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from degradation_helpers import LIMIT, assert_problem
from degradation_stacks import FLASK
from flask import Flask, request

from clarity_resilience.degradation.flask import init_app, json_body


@pytest.fixture
def client(tmp_path: pathlib.Path) -> Iterator[httpx.Client]:
    """Serve the Flask predict service for a loaded model; yield a client."""
    with FLASK.serving_loaded(tmp_path) as service:
        yield service.client


class TestContract:
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


class TestBadInput:
    def test_malformed_json_is_a_generic_400(self, client: httpx.Client) -> None:
        """Malformed JSON is a 400 with a fixed detail: the parser's message is not echoed."""
        response = client.post(
            "/predict",
            content=b'{"features": SECRET',
            headers={"content-type": "application/json"},
        )
        body = assert_problem(response, 400, "invalid_input", None)
        assert body["detail"] == "The request body could not be parsed."
        assert "SECRET" not in response.text
        assert "decode" not in response.text

    def test_max_content_length_is_a_413_problem(self) -> None:
        """Without the middleware, Flask's own MAX_CONTENT_LENGTH also answers a 413 problem."""
        app = Flask("max_content_length")
        app.config["MAX_CONTENT_LENGTH"] = LIMIT
        init_app(app)

        @app.post("/echo")
        def echo() -> dict[str, Any]:
            return {"size": len(request.get_data())}

        with FLASK.serve(app) as http:
            assert http.post("/echo", content=b"x" * LIMIT).json() == {"size": LIMIT}
            response = http.post("/echo", content=b"x" * (LIMIT + 1))
        assert_problem(response, 413, "invalid_input", None)


class TestJsonBody:
    @pytest.fixture
    def echo(self) -> Iterator[httpx.Client]:
        """Serve an app whose view returns what json_body() parsed; yield a client."""
        app = Flask("json_body")
        init_app(app)

        @app.post("/echo")
        def echo() -> Any:
            return {"parsed": json_body()}

        with FLASK.serve(app) as http:
            yield http

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(b"[NaN]", id="nan"),
            pytest.param(b'{"a": {"b": [1, Infinity]}}', id="nested-infinity"),
            pytest.param(b"[-Infinity]", id="minus-infinity"),
            pytest.param(b"[1e999]", id="overflows-to-infinity"),
            pytest.param(b"[1, [2, [-1e309]]]", id="nested-minus-1e309"),
            pytest.param(b"[" + b"9" * 400 + b"]", id="400-digit-int"),
            pytest.param(b'{"x": -' + b"9" * 309 + b"}", id="int-just-beyond-float"),
        ],
    )
    def test_numbers_no_float_holds_are_a_422(self, echo: httpx.Client, body: bytes) -> None:
        """NaN, infinities and integers beyond float range are invalid input, never a 500."""
        response = echo.post("/echo", content=body, headers={"content-type": "application/json"})
        assert_problem(response, 422, "invalid_input", None)

    def test_finite_numbers_pass_through(self, echo: httpx.Client) -> None:
        """Large but finite numbers and the largest float-sized integer are returned as parsed."""
        body = b'{"a": [1.5e308, -2, true, null, "NaN"], "b": ' + b"9" * 308 + b"}"
        response = echo.post("/echo", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 200
        assert response.json() == {
            "parsed": {"a": [1.5e308, -2, True, None, "NaN"], "b": 10**308 - 1}
        }
