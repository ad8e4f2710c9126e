"""Tests for what only degradation.wsgi does: lazy responses, start_response, unread bodies.

The HTTP contract every stack shares, run on a bare WSGI app wrapped in the
middleware among others, is in test_degradation_contract.py.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from degradation_helpers import LIMIT, SECRET_DIGEST, assert_no_leak, assert_problem
from degradation_stacks import WSGI

from clarity_resilience.degradation.wsgi import DegradationMiddleware


@pytest.fixture
def client(tmp_path: pathlib.Path) -> Iterator[httpx.Client]:
    """Serve the bare WSGI predict service for a loaded model; yield a client."""
    with WSGI.serving_loaded(tmp_path) as service:
        yield service.client


class TestContract:
    def test_raised_in_first_iteration_before_start_response(
        self, client: httpx.Client, tmp_path: pathlib.Path
    ) -> None:
        """A generator app that raises before start_response still gets its problem response."""
        response = client.get("/raise-lazily/integrity")
        assert_problem(response, 503, "integrity_failure", 300)
        assert_no_leak(response, str(tmp_path), SECRET_DIGEST)

    def test_other_exceptions_raised_lazily_stay_500(self, client: httpx.Client) -> None:
        """An exception not the library's, raised by the first iteration, reaches the server."""
        response = client.get("/raise-lazily/not-ours")
        assert response.status_code == 500
        assert response.headers["content-type"].startswith(WSGI.server_error_type)

    def test_error_after_start_response_is_not_rewritten(self, client: httpx.Client) -> None:
        """After start_response the app's error reaches the server instead of a problem."""
        response = client.get("/start-then-raise")
        assert response.status_code == 500
        assert "problem" not in response.headers["content-type"]


class TestBadInput:
    def test_content_length_over_the_limit_is_refused_unread(self) -> None:
        """A Content-Length over the limit is a 413 before the app runs or the body is read."""
        calls: list[str] = []

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            calls.append(environ["PATH_INFO"])
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        with WSGI.serve(DegradationMiddleware(app, max_body_size=LIMIT)) as http:
            assert http.post("/echo", content=b"x" * LIMIT).status_code == 200
            response = http.post("/echo", content=b"x" * (LIMIT + 1))
        assert_problem(response, 413, "invalid_input", None)
        assert calls == ["/echo"]
