"""WSGI middleware: problem responses, health probes and a request body limit.

A plain PEP 3333 middleware (no framework imported), shaped like werkzeug's
``ProxyFix``: ``app.wsgi_app = DegradationMiddleware(app.wsgi_app, ...)`` for Flask,
or wrap any WSGI callable.
"""

from __future__ import annotations

import http
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._middleware import DegradationMiddlewareBase
from ._problem import Problem, RequestBodyTooLarge, body_too_large_problem, problem_for

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["DegradationMiddleware"]


class DegradationMiddleware(DegradationMiddlewareBase["WSGIApplication"]):
    """Answer this library's exceptions with problem responses, and serve probes.

    - ``livez`` answers 200 always; ``readyz`` (only when ``guards`` are given) answers
      200 once every guard serves a verified model, else 503 (see
      :func:`~clarity_resilience.degradation.readiness`). Either may be None.
    - An exception of this library raised by the app call, or by the first iteration
      of its response before ``start_response`` was called, becomes the problem
      response of :func:`~clarity_resilience.degradation.problem_for`. Later ones,
      and every other exception, propagate to the server untouched. (Flask answers
      exceptions itself: use :func:`clarity_resilience.degradation.flask.init_app`.)
    - With ``max_body_size``, a ``CONTENT_LENGTH`` above it is answered 413 without
      calling the app or reading the body. A body without a length (chunked) is
      counted as the app reads it; past the limit the read fails and the answer is
      413, whatever the app makes of it.

    Args:
        app: The WSGI app to wrap.
        guards: The models ``readyz`` waits for.
        livez: The liveness path, or None for none.
        readyz: The readiness path, or None for none.
        max_body_size: The largest request body in bytes, or None for no limit.

    Raises:
        ValueError: ``max_body_size`` is negative.
    """

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve a probe, refuse an oversized body, or run the app and answer its errors."""
        probe = self._probe(environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET"))
        if probe is not None:
            return _send(probe.status, probe.headers, probe.body, environ, start_response)
        exchange = _Exchange(environ, start_response)
        if self.max_body_size is not None:
            length = _content_length(environ)
            if length is not None and length > self.max_body_size:
                return _respond(body_too_large_problem(), environ, start_response)
            if length is None:
                exchange.limit_input(self.max_body_size)
        return exchange.run(self.app)


class _Exchange:
    """One request/response through the wrapped app (per-request state)."""

    def __init__(self, environ: WSGIEnvironment, start_response: StartResponse) -> None:
        self.environ = environ
        self.start_response = start_response
        self.started = False
        self.replaced = False
        self.input: _LimitedInput | None = None

    def limit_input(self, limit: int) -> None:
        self.input = _LimitedInput(self.environ["wsgi.input"], limit)
        self.environ["wsgi.input"] = self.input

    def run(self, app: WSGIApplication) -> Iterable[bytes]:
        try:
            iterable = app(self.environ, self._start_response)
            if not self.started and not self.replaced:
                iterable = _prefetch(iterable)
        except Exception as exc:  # noqa: BLE001 - _recover re-raises what is not ours
            return self._recover(exc)
        if self.replaced:
            _close(iterable)
            return [body_too_large_problem().body()]
        return iterable

    def _start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> Any:
        if self.input is not None and self.input.exceeded and not self.started:
            # The app answered a body we cut off: the client gets the 413 instead.
            self.replaced = True
            problem = body_too_large_problem()
            self.start_response(_status_line(problem.status), problem.headers(), exc_info)
            return _discard
        self.started = True
        return self.start_response(status, headers, exc_info)

    def _recover(self, exc: Exception) -> Iterable[bytes]:
        if self.started or self.replaced:
            raise exc
        if self.input is not None and self.input.exceeded:
            problem: Problem | None = body_too_large_problem()
        else:
            problem = problem_for(exc)
        if problem is None:
            raise exc
        return _respond(problem, self.environ, self.start_response)


class _LimitedInput:
    """A ``wsgi.input`` that fails once more than ``limit`` bytes have been read."""

    def __init__(self, stream: Any, limit: int) -> None:
        self._stream = stream
        self._remaining = limit
        self.exceeded = False

    def _cap(self, size: int | None) -> int:
        # Never ask for more than one byte past the limit: memory stays bounded.
        allowed = self._remaining + 1
        return allowed if size is None or size < 0 else min(size, allowed)

    def _count(self, data: bytes) -> bytes:
        self._remaining -= len(data)
        if self._remaining < 0:
            self.exceeded = True
            raise RequestBodyTooLarge("the request body exceeds max_body_size")
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size >= 0:
            return self._count(self._stream.read(self._cap(size)))
        # read() means "until EOF", but a dechunking stream may return one chunk per
        # read: keep reading, and stop one byte past the limit at the latest.
        parts = []
        while data := self._count(self._stream.read(self._cap(size))):
            parts.append(data)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        return self._count(self._stream.readline(self._cap(size)))

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def _prefetch(iterable: Iterable[bytes]) -> Iterable[bytes]:
    """Take the first item now: a generator app calls ``start_response`` only then.

    An exception raised here can still become a problem response; one raised later,
    while the server iterates, cannot.
    """
    iterator = iter(iterable)
    try:
        first = next(iterator)
    except StopIteration:
        return iterable
    except BaseException:
        _close(iterable)
        raise
    return _Prefetched(first, iterator, iterable)


class _Prefetched:
    """The app's response iterable with its first item already taken (``close`` kept)."""

    def __init__(self, first: bytes, rest: Iterator[bytes], iterable: Iterable[bytes]) -> None:
        self._first = first
        self._rest = rest
        self._iterable = iterable

    def __iter__(self) -> Iterator[bytes]:
        yield self._first
        yield from self._rest

    def close(self) -> None:
        _close(self._iterable)


def _discard(data: bytes) -> None:
    """The ``write`` callable of a replaced response: the app's bytes are dropped."""


def _close(iterable: Iterable[bytes]) -> None:
    close = getattr(iterable, "close", None)
    if close is not None:
        close()


def _content_length(environ: WSGIEnvironment) -> int | None:
    try:
        return int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _status_line(status: int) -> str:
    return f"{status} {http.HTTPStatus(status).phrase}"


def _respond(
    problem: Problem, environ: WSGIEnvironment, start_response: StartResponse
) -> list[bytes]:
    return _send(problem.status, problem.headers(), problem.body(), environ, start_response)


def _send(
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    environ: WSGIEnvironment,
    start_response: StartResponse,
) -> list[bytes]:
    start_response(_status_line(status), [*headers, ("Content-Length", str(len(body)))])
    return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
