"""ASGI middleware: problem responses, health probes and a request body limit.

A plain ASGI class (no framework imported): wrap any ASGI app, or add it to a
Starlette or FastAPI app with ``app.add_middleware(DegradationMiddleware, ...)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._middleware import DegradationMiddlewareBase
from ._problem import Problem, RequestBodyTooLarge, body_too_large_problem, problem_for

__all__ = ["DegradationMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Starlette's ServerErrorMiddleware (the outermost layer of every Starlette and FastAPI
# app) sends its 500 *before* re-raising. A 500 is held back up to this size so that
# the exception following it can still be answered with a problem instead.
_HELD_500_LIMIT = 64 * 1024


class DegradationMiddleware(DegradationMiddlewareBase[ASGIApp]):
    """Answer this library's exceptions with problem responses, and serve probes.

    For HTTP requests:

    - ``livez`` answers 200 always; ``readyz`` (only when ``guards`` are given) answers
      200 once every guard serves a verified model, else 503 (see
      :func:`~clarity_resilience.degradation.readiness`). Either may be None.
    - An exception of this library raised by the app before its response started
      becomes the problem response of
      :func:`~clarity_resilience.degradation.problem_for` (a 503 with
      ``Retry-After``, or a 422); once a response has started it is re-raised.
      Other exceptions are re-raised untouched.
    - With ``max_body_size``, a ``Content-Length`` above it is answered 413 without
      calling the app, and a streamed body is counted as the app reads it: past the
      limit the read fails and the answer is 413, whatever the app makes of it.
      Nothing is buffered.

    Websocket and lifespan scopes pass through untouched.

    Args:
        app: The ASGI app to wrap.
        guards: The models ``readyz`` waits for.
        livez: The liveness path, or None for none.
        readyz: The readiness path, or None for none.
        max_body_size: The largest request body in bytes, or None for no limit.

    Raises:
        ValueError: ``max_body_size`` is negative.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a probe, refuse an oversized body, or run the app and answer its errors."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        probe = self._probe(scope["path"], scope.get("method", "GET"))
        if probe is not None:
            await _send(probe.status, probe.headers, probe.body, scope, send)
            return
        limit = self.max_body_size
        if limit is not None:
            length = _content_length(scope)
            if length is not None and length > limit:
                await _send_problem(body_too_large_problem(), scope, send)
                return
        await _Exchange(self.app, limit)(scope, receive, send)


class _Exchange:
    """One request/response through the wrapped app (per-request state)."""

    def __init__(self, app: ASGIApp, limit: int | None) -> None:
        self.app = app
        self.limit = limit
        self.received = 0
        self.too_large: RequestBodyTooLarge | None = None
        self.started = False  # a response start was forwarded to the server
        self.replaced = False  # our own response was sent instead of the app's
        self.held: list[Message] = []
        self.held_size = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_receive() -> Message:
            message = await receive()
            if self.limit is not None and message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.too_large = RequestBodyTooLarge()
                    raise self.too_large
            return message

        async def guarded_send(message: Message) -> None:
            if self.replaced:
                return  # the app's answer to a request already answered with ours
            kind = message["type"]
            if kind == "http.response.start" and not self.started and not self.held:
                if self.too_large is not None:
                    self.replaced = True
                    await _send_problem(body_too_large_problem(), scope, send)
                    return
                if message.get("status") == 500:
                    self.held.append(message)
                    return
            if self.held:
                # Hold the whole 500 (ServerErrorMiddleware raises only after its last
                # body message) unless it grows too large to keep.
                self.held.append(message)
                self.held_size += len(message.get("body", b""))
                if kind != "http.response.body" or self.held_size > _HELD_500_LIMIT:
                    await self._flush(send)
                return
            if kind == "http.response.start":
                self.started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception as exc:
            if self.replaced and _caused_by(exc, self.too_large):
                return  # the failed read we caused; the 413 is already sent
            problem = self._problem_for(exc)
            if problem is None or self.started or self.replaced:
                await self._flush(send)
                raise
            self.held.clear()
            await _send_problem(problem, scope, send)
            return
        await self._flush(send)

    def _problem_for(self, exc: BaseException) -> Problem | None:
        if self.too_large is not None and _caused_by(exc, self.too_large):
            return body_too_large_problem()
        return problem_for(_unwrap(exc))

    async def _flush(self, send: Send) -> None:
        held, self.held = self.held, []
        for message in held:
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)


def _unwrap(exc: BaseException) -> BaseException:
    """Return the only exception of (nested) single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _caused_by(exc: BaseException, cause: BaseException | None) -> bool:
    """Return whether ``cause`` is ``exc`` or in its cause/context chain or group."""
    if cause is None:
        return False
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if current is cause:
            return True
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects it; the streamed count still applies
    return None


async def _send_problem(problem: Problem, scope: Scope, send: Send) -> None:
    await _send(problem.status, problem.headers(), problem.body(), scope, send)


async def _send(
    status: int, headers: list[tuple[str, str]], body: bytes, scope: Scope, send: Send
) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    head = scope.get("method") == "HEAD"
    await send({"type": "http.response.body", "body": b"" if head else body})
