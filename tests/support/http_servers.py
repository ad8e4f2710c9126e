"""Run a real ASGI or WSGI app on 127.0.0.1 in a background thread, for tests.

Import with ``from http_servers import serve_asgi, serve_wsgi`` (tests/support is on
pytest's pythonpath).

Both helpers are context managers that yield the base URL (``http://127.0.0.1:PORT``,
an ephemeral port) once the server accepts connections, and stop the server, join its
thread and close its sockets on exit, so ``filterwarnings = error`` never sees a
``ResourceWarning``::

    with serve_asgi(app) as url, httpx.Client(base_url=url, timeout=5) as client:
        assert client.get("/livez").status_code == 200

- :func:`serve_asgi` runs uvicorn (logging left unconfigured, no access log). The
  app's lifespan runs (``lifespan="auto"``): startup completes before the URL is
  yielded, and a failed startup raises here instead of hanging the test.
- :func:`serve_wsgi` runs werkzeug's threaded development server (HTTP/1.1, chunked
  request bodies supported), with its access log silenced.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["serve_asgi", "serve_wsgi"]

#: Seconds to wait for a server to start or stop before failing the test.
STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0


@contextlib.contextmanager
def serve_asgi(app: Any, **config: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on an ephemeral loopback port; yield its base URL.

    Args:
        app: The ASGI application.
        **config: Extra ``uvicorn.Config`` options (e.g. ``lifespan="on"``).

    Raises:
        RuntimeError: The server did not start (e.g. the app's lifespan startup
            failed) or did not stop in time.
    """
    import uvicorn

    started = threading.Event()

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            started.set()

    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "log_config": None,  # never touch the test process's logging configuration
        "access_log": False,
        "lifespan": "auto",
        "timeout_graceful_shutdown": SHUTDOWN_TIMEOUT,
    }
    options.update(config)
    server = _Server(uvicorn.Config(app, **options))

    def run() -> None:
        try:
            server.run()
        finally:
            started.set()  # also on failure: the waiting test must not hang

    thread = threading.Thread(target=run, name="uvicorn-test-server", daemon=True)
    thread.start()
    try:
        if not started.wait(STARTUP_TIMEOUT) or not server.started:
            raise RuntimeError("uvicorn did not start; see the captured log output")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(SHUTDOWN_TIMEOUT)
            raise RuntimeError("uvicorn did not stop in time")


@contextlib.contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Serve a WSGI app with werkzeug's threaded server on an ephemeral port; yield its URL.

    The socket is bound and listening before this yields, so no wait is needed.

    Raises:
        RuntimeError: The server did not stop in time.
    """
    from werkzeug.serving import WSGIRequestHandler, make_server

    class _QuietHandler(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            """Drop the access log line (errors are still logged)."""

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    # A short poll interval makes shutdown() return quickly.
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="werkzeug-test-server",
        daemon=True,
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(SHUTDOWN_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("the WSGI server did not stop in time")
