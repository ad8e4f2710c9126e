"""FastAPI integration: problem handlers, ``/livez``, ``/readyz`` and a model dependency.

Requires the ``fastapi`` extra. Imported only when you import it::

    from clarity_resilience.degradation.fastapi import install, model_dependency
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from .._guard import ModelGuard
from ..exceptions import ClarityResilienceError
from ._problem import (
    HealthResponse,
    Problem,
    RequestBodyTooLarge,
    field_errors,
    invalid_input_problem,
    liveness,
)
from ._problem import problem_for as _problem_for
from ._problem import readiness as _readiness

__all__ = ["install", "model_dependency"]

M = TypeVar("M")


def install(
    app: FastAPI,
    *guards: ModelGuard[Any],
    livez: str | None = "/livez",
    readyz: str | None = "/readyz",
) -> None:
    """Answer this library's errors with problem responses and serve the probes.

    Call it before the app starts serving. It adds:

    - an exception handler for :class:`~clarity_resilience.ClarityResilienceError`
      (503 with ``Retry-After``, or 422; see
      :func:`~clarity_resilience.degradation.problem_for`);
    - a handler for :class:`fastapi.exceptions.RequestValidationError` (malformed JSON,
      wrong types, missing fields): 422 ``invalid_input`` whose ``errors`` list each
      field's location and error code, never the value sent;
    - a handler for every ``HTTPException`` with status 400 (FastAPI's answer to a body
      it cannot parse at all, such as JSON nested too deep): 400 ``invalid_input``
      with a fixed detail (an exception's own ``detail`` is not sent; raise
      :class:`~clarity_resilience.InvalidInputError` for your own client errors);
    - ``GET livez`` (always 200) and, when guards are given, ``GET readyz`` (200 once
      every guard serves a verified model), both left out of the OpenAPI schema.

    Args:
        app: The application.
        *guards: The models ``readyz`` waits for.
        livez: The liveness path, or None for none.
        readyz: The readiness path, or None for none.

    Raises:
        RuntimeError: The app has started serving (its handlers are fixed by then).
    """
    if app.middleware_stack is not None:
        raise RuntimeError("install() must be called before the app starts serving")
    app.add_exception_handler(ClarityResilienceError, _problem_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    # FastAPI answers a body it cannot parse but that is not a JSONDecodeError (JSON
    # nested too deep, an integer of 5000 digits) with HTTPException(400).
    app.add_exception_handler(400, _bad_request_handler)
    # Raised by asgi.DegradationMiddleware(max_body_size=...) when a route reads past it.
    app.add_exception_handler(RequestBodyTooLarge, _problem_handler)
    if livez is not None:

        async def live() -> Response:
            return _response(liveness())

        app.add_api_route(
            livez,
            live,
            methods=["GET", "HEAD"],
            include_in_schema=False,
            name="clarity_resilience_livez",
        )
    if readyz is not None and guards:

        async def ready() -> Response:
            return _response(_readiness(*guards))

        app.add_api_route(
            readyz,
            ready,
            methods=["GET", "HEAD"],
            include_in_schema=False,
            name="clarity_resilience_readyz",
        )


def model_dependency(guard: ModelGuard[M]) -> Callable[[], Awaitable[M]]:
    """Return a dependency that provides the verified model of ``guard``.

    Use it as ``model: Annotated[Model, Depends(model_dependency(guard))]``. While
    nothing verified is serving, it raises
    :class:`~clarity_resilience.ModelUnavailableError`, which :func:`install` answers
    with a 503.

    In an app factory whose module has ``from __future__ import annotations``, keep
    the dependency in a local variable and pass it as a default value
    (``model: Model = Depends(verified_model)``): FastAPI resolves annotation strings
    in the module's globals, so an ``Annotated[...]`` naming a local fails to resolve
    and the route answers every request with a 422.
    """

    async def verified_model() -> M:
        return guard.model

    return verified_model


async def _problem_handler(request: Request, exc: Exception) -> Response:
    problem = _problem_for(exc)
    if problem is None:  # only registered for exceptions that have a problem
        raise exc
    return _problem_response(problem)


async def _bad_request_handler(request: Request, exc: Exception) -> Response:
    return _problem_response(invalid_input_problem(400, situation="malformed"))


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problem = invalid_input_problem(situation="validation", errors=field_errors(exc.errors()))
    return _problem_response(problem)


def _problem_response(problem: Problem) -> Response:
    return Response(problem.body(), status_code=problem.status, headers=dict(problem.headers()))


def _response(health: HealthResponse) -> Response:
    return Response(health.body, status_code=health.status, headers=dict(health.headers))
