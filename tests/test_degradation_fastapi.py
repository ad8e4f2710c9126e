"""Tests for what only degradation.fastapi does: OpenAPI, install() timing, pydantic errors.

The HTTP contract every stack shares is in test_degradation_contract.py.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import httpx
import pytest
from degradation_helpers import assert_problem
from degradation_stacks import FASTAPI
from fastapi import FastAPI

from clarity_resilience.degradation.fastapi import install


@pytest.fixture
def client(tmp_path: pathlib.Path) -> Iterator[httpx.Client]:
    """Serve the FastAPI predict service for a loaded model; yield a client."""
    with FASTAPI.serving_loaded(tmp_path) as service:
        yield service.client


class TestProbes:
    def test_probes_are_not_in_the_openapi_schema(self, client: httpx.Client) -> None:
        """The probe routes are served but left out of the OpenAPI schema."""
        paths = client.get("/openapi.json").json()["paths"]
        assert "/predict" in paths
        assert "/livez" not in paths
        assert "/readyz" not in paths


class TestInstall:
    def test_install_after_start_is_refused(self) -> None:
        """Installing on an app that already serves raises instead of silently doing nothing."""
        app = FastAPI()
        with FASTAPI.serve(app) as http:
            assert http.get("/livez").status_code == 404
        with pytest.raises(RuntimeError, match="before the app starts"):
            install(app)


class TestBadInput:
    def test_validation_errors_name_fields_not_values(self, client: httpx.Client) -> None:
        """A schema error lists each field's location and code, never the value sent."""
        response = client.post("/predict", json={"features": [[1, 2, "SECRET-VALUE", 4]]})
        body = assert_problem(response, 422, "invalid_input", None)
        assert body["errors"] == [{"loc": ["body", "features", 0, 2], "type": "float_parsing"}]
        assert "SECRET-VALUE" not in response.text

    def test_malformed_json_error_names_the_body(self, client: httpx.Client) -> None:
        """Malformed JSON is a 422 whose error is json_invalid at a body position."""
        response = client.post(
            "/predict",
            content=b'{"features": SECRET',
            headers={"content-type": "application/json"},
        )
        body = assert_problem(response, 422, "invalid_input", None)
        assert [e["type"] for e in body["errors"]] == ["json_invalid"]
        assert body["errors"][0]["loc"][0] == "body"
        assert "SECRET" not in response.text
