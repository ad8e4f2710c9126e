"""Serve ``/metrics`` correctly with one process or many (prometheus-client multiprocess mode).

Under gunicorn or ``uvicorn --workers`` with ``PROMETHEUS_MULTIPROC_DIR`` set, each
worker writes its samples to files in that directory, and a scrape must aggregate the
files of every worker (a fresh ``CollectorRegistry`` with a ``MultiProcessCollector``),
not read the one registry of whichever worker answered. Without the variable, the
process's own registry is served. Frameworks are not imported: the apps are plain WSGI
and ASGI callables, mountable in Flask, Django, Starlette or FastAPI.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "asgi_app",
    "child_exit",
    "exposition",
    "multiprocess_dir",
    "prune_dead_workers",
    "wsgi_app",
]

_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
# prometheus-client's file name for a live-mode gauge: gauge_liveall_<pid>.db.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live(?:all|max|min|sum|mostrecent)_(\d+)\.db")

_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def multiprocess_dir() -> str | None:
    """Return prometheus-client's multiprocess directory, or None in single-process mode."""
    for name in _ENV:
        value = os.environ.get(name)
        if value:
            return value
    return None


def exposition(
    registry: CollectorRegistry | None = None, accept: str | None = None
) -> tuple[bytes, str]:
    """Return the metrics text and its content type for one scrape.

    Args:
        registry: The registry served in single-process mode (the default registry if
            None). Ignored in multiprocess mode, where every worker's files are read.
        accept: The scrape's ``Accept`` header (OpenMetrics is served if asked for).

    Returns:
        The body and the ``Content-Type`` to answer with.
    """
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    directory = multiprocess_dir()
    if directory is not None:
        from prometheus_client import multiprocess

        prune_dead_workers(directory)
        # A fresh registry per scrape: the collector reads the files of all workers,
        # live and dead (counters and histograms sum; gauges follow their mode).
        served = CollectorRegistry()
        multiprocess.MultiProcessCollector(served)  # type: ignore[no-untyped-call]
    else:
        served = REGISTRY if registry is None else registry
    encoder, content_type = choose_encoder(accept or "")
    return encoder(served), content_type


def wsgi_app(
    registry: CollectorRegistry | None = None,
) -> Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]:
    """Return a WSGI app answering every GET with the metrics (see :func:`exposition`)."""

    def app(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        body, content_type = exposition(registry, environ.get("HTTP_ACCEPT"))
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        start_response("200 OK", headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    return app


def asgi_app(
    registry: CollectorRegistry | None = None,
) -> Callable[[MutableMapping[str, Any], _Receive, _Send], Awaitable[None]]:
    """Return an ASGI app answering every GET with the metrics (see :func:`exposition`)."""

    async def app(scope: MutableMapping[str, Any], receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets: nothing to serve
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await send(
                {"type": "http.response.start", "status": 405, "headers": [(b"allow", b"GET")]}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        accept = None
        for key, value in scope.get("headers", ()):
            if key.lower() == b"accept":
                accept = value.decode("latin-1")
        # Reading a few small files: cheap enough not to need a thread.
        body, content_type = exposition(registry, accept)
        headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body}
        )

    return app


def child_exit(server: object, worker: Any) -> None:
    """Forget a dead worker's live gauges: gunicorn's ``child_exit`` server hook.

    Use it from ``gunicorn.conf.py``: ``from clarity_resilience.metrics import
    child_exit``. Counters and histograms of the dead worker keep counting in the sums
    (what it served did happen); its ``circuit_breaker_state`` series vanish.
    """
    if multiprocess_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def prune_dead_workers(directory: str) -> list[int]:
    """Forget the live gauges of workers that no longer exist; return their pids.

    The safety net for servers without a ``child_exit`` hook (``uvicorn --workers``):
    run on every multiprocess scrape, it checks each pid that owns a live-mode gauge
    file with ``kill(pid, 0)``. Workers share the scraping process's pid namespace (one
    container), so a pid that does not exist is a dead worker. (A pid reused by a new
    process keeps the old series until that process exits.)
    """
    from prometheus_client import multiprocess

    try:
        names = os.listdir(directory)
    except OSError:
        return []  # prometheus-client reports a missing directory itself
    pids = {int(m.group(1)) for name in names if (m := _LIVE_GAUGE_FILE.fullmatch(name))}
    dead = [pid for pid in sorted(pids) if not _alive(pid)]
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    return dead


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # never signal a process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
