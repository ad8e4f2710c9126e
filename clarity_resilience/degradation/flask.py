"""Flask integration: problem handlers, ``/livez`` and ``/readyz``.

Requires the ``flask`` extra. Imported only when you import it::

    from clarity_resilience.degradation.flask import init_app

In a view, use ``guard.model`` (or ``guard.predict(...)``) directly: while nothing
verified is serving it raises :class:`~clarity_resilience.ModelUnavailableError`,
which the handler installed here answers with a 503. Read JSON with :func:`json_body`.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from .._guard import ModelGuard
from ..exceptions import ClarityResilienceError, InvalidInputError
from ._problem import (
    HealthResponse,
    Problem,
    RequestBodyTooLarge,
    body_too_large_problem,
    invalid_input_problem,
    liveness,
    problem_for,
    readiness,
)

__all__ = ["init_app", "json_body"]


def init_app(
    app: Flask,
    *guards: ModelGuard[Any],
    livez: str | None = "/livez",
    readyz: str | None = "/readyz",
) -> None:
    """Answer this library's errors and bad requests with problems, and serve the probes.

    It registers error handlers for:

    - :class:`~clarity_resilience.ClarityResilienceError`: 503 with ``Retry-After``,
      or 422 (see :func:`~clarity_resilience.degradation.problem_for`);
    - :class:`werkzeug.exceptions.BadRequest` and its subclasses (malformed JSON from
      ``request.get_json()``, a missing form key): 400 ``invalid_input``;
    - :class:`werkzeug.exceptions.RequestEntityTooLarge` (a ``Content-Length`` over
      ``app.config["MAX_CONTENT_LENGTH"]``), and a body read past the
      ``max_body_size`` of :class:`~clarity_resilience.degradation.wsgi.DegradationMiddleware`:
      413 ``invalid_input``.

    Other HTTP errors (404, 405, 415...) keep Flask's own answers. It also adds
    ``GET livez`` (always 200) and, when guards are given, ``GET readyz`` (200 once
    every guard serves a verified model).

    Args:
        app: The application.
        *guards: The models ``readyz`` waits for.
        livez: The liveness path, or None for none.
        readyz: The readiness path, or None for none.
    """
    app.register_error_handler(ClarityResilienceError, _problem_handler)
    app.register_error_handler(BadRequest, _bad_request_handler)
    app.register_error_handler(RequestEntityTooLarge, _too_large_handler)
    # Raised by wsgi.DegradationMiddleware(max_body_size=...) when a view reads past it.
    app.register_error_handler(RequestBodyTooLarge, _too_large_handler)
    if livez is not None:

        def live() -> Response:
            return _response(liveness())

        app.add_url_rule(livez, endpoint="clarity_resilience_livez", view_func=live)
    if readyz is not None and guards:

        def ready() -> Response:
            return _response(readiness(*guards))

        app.add_url_rule(readyz, endpoint="clarity_resilience_readyz", view_func=ready)


def json_body() -> Any:
    """Return the current request's JSON body; a body that cannot be parsed is a 400.

    Like ``request.get_json()`` (malformed JSON raises ``BadRequest``, a non-JSON
    ``Content-Type`` ``UnsupportedMediaType``), and JSON nested too deeply for Python's
    parser raises ``BadRequest`` too, where Flask lets its ``RecursionError`` through
    as a 500. With :func:`init_app`, both are 400 ``invalid_input`` problems.

    Numbers no float can hold are refused too: ``NaN``, ``Infinity`` and
    ``-Infinity`` (which Python's parser accepts although JSON has no such values), a
    number that overflows to an infinity (``1e999``), and an integer beyond float range
    (a 400-digit integer, whose ``float()`` raises ``OverflowError``). They raise
    :class:`~clarity_resilience.InvalidInputError`: with :func:`init_app`, a 422
    ``invalid_input`` problem, never a 500, and breakers ignore it.

    Raises:
        BadRequest: The body is not JSON, or is nested too deeply to parse.
        UnsupportedMediaType: The ``Content-Type`` is not JSON.
        InvalidInputError: The body holds a number that is not a finite float.
    """
    try:
        document = request.get_json()
    except RecursionError as e:
        raise BadRequest() from e
    _refuse_non_finite(document)
    return document


def _refuse_non_finite(document: Any) -> None:
    """Raise InvalidInputError if ``document`` holds a number that is not a finite float."""
    pending = [document]
    while pending:  # a loop, not recursion: the nesting depth is the client's choice
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError("the JSON body holds a number that is not finite")
        elif isinstance(value, int) and not -sys.float_info.max <= value <= sys.float_info.max:
            raise InvalidInputError("the JSON body holds an integer beyond float range")


def _problem_handler(exc: ClarityResilienceError) -> Response:
    problem = problem_for(exc)
    assert problem is not None  # every ClarityResilienceError has a problem
    return _problem_response(problem)


def _bad_request_handler(exc: BadRequest) -> Response:
    return _problem_response(invalid_input_problem(400, situation="malformed"))


def _too_large_handler(exc: Exception) -> Response:
    return _problem_response(body_too_large_problem())


def _problem_response(problem: Problem) -> Response:
    return Response(problem.body(), status=problem.status, headers=problem.headers())


def _response(health: HealthResponse) -> Response:
    return Response(health.body, status=health.status, headers=health.headers)
