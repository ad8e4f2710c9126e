"""A real HTTP artifact server with fault switches, for tests and the chaos suite.

Run it as a separate process (stdlib only)::

    python tests/support/artifact_server.py --root DIR [--host 127.0.0.1] [--port 0]

It prints ``PORT <n>`` on stdout once it is listening, serves the files under ``--root``
with ``GET /<relative path>``, and stops cleanly on SIGTERM or SIGINT. ``SO_REUSEADDR``
is set, so after a ``kill -9`` it can be restarted on the same ``--port`` at once.

Faults are switched at run time over HTTP, with a JSON body or query parameters::

    POST /_control {"mode": "error500", "count": 2}

``mode`` is one of:

- ``ok``: serve the file.
- ``errorNNN`` (``error500``, ``error503``, ``error429``, ``error404``...): answer with that
  status; ``retry_after`` (string) adds a ``Retry-After`` header.
- ``truncate``: send the full ``Content-Length``, then only ``truncate_at`` bytes (default:
  half the file), then close the connection.
- ``corrupt``: send the file with one byte flipped (same length).
- ``stall``: send the headers, then nothing for ``delay`` seconds (default 60).
- ``slow``: send the body in ``chunk``-byte pieces (default 1024), ``delay`` seconds apart
  (default 0.05), so a download can be interrupted halfway.
- ``chunked``: send the body with ``Transfer-Encoding: chunked`` (no ``Content-Length``)
  in ``chunk``-byte pieces (default 4096), so its size is known only at the end.
- ``gzip``: compress the file on the fly and send it with ``Content-Encoding: gzip``,
  whatever the request's ``Accept-Encoding`` says (a misbehaving server or proxy).

``content_encoding`` (string, with any mode) adds a ``Content-Encoding`` header to the
file sent as stored: a pre-compressed artifact published with that encoding (as object
stores do for objects uploaded with ``Content-Encoding`` metadata).

``count`` is how many artifact requests get the fault before the mode reverts to ``ok``
(absent or null: until the next control request). ``"reset": true`` zeroes the request
counters. ``GET /_stats`` returns ``{"requests": n, "by_path": {...}, "mode": ...}``,
counting every artifact request whatever its outcome, and ``"accept_encoding"``: the
``Accept-Encoding`` header of the last artifact request (null if absent).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.server
import json
import os
import signal
import socket
import sys
import threading
import urllib.parse
from typing import Any

_STOP = threading.Event()  # wakes stalled handlers on shutdown


class _State:
    """The fault switches and request counters, shared by every handler thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.settings: dict[str, Any] = {"mode": "ok", "count": None}
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.accept_encoding: str | None = None

    def configure(self, settings: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if settings.pop("reset", False) in (True, "1", "true"):
                self.requests = 0
                self.by_path = {}
            if settings:
                self.settings = {"mode": "ok", "count": None, **settings}
            return self.snapshot()

    def take(self, path: str, accept_encoding: str | None) -> dict[str, Any]:
        """Count one artifact request and return the fault settings that apply to it."""
        with self.lock:
            self.requests += 1
            self.accept_encoding = accept_encoding
            self.by_path[path] = self.by_path.get(path, 0) + 1
            current = dict(self.settings)
            count = current.get("count")
            if count is not None:
                if int(count) <= 1:  # this was the last faulty request
                    self.settings = {"mode": "ok", "count": None}
                else:
                    self.settings["count"] = int(count) - 1
                if int(count) <= 0:
                    return {"mode": "ok"}
            return current

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "accept_encoding": self.accept_encoding,
            **self.settings,
        }


class ArtifactHandler(http.server.BaseHTTPRequestHandler):
    """Serve files from the root directory, with the faults the state asks for."""

    protocol_version = "HTTP/1.1"  # keep-alive, like real artifact stores
    server: ArtifactServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send_json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if url.path != "/_control":
            self._send_json(404, {"error": "not found"})
            return
        try:
            settings = json.loads(raw) if raw.strip() else {}
            settings.update(dict(urllib.parse.parse_qsl(url.query)))
        except (ValueError, AttributeError) as e:
            self._send_json(400, {"error": str(e)})
            return
        self._send_json(200, self.server.state.configure(settings))

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/_stats":
            with self.server.state.lock:
                stats = self.server.state.snapshot()
            self._send_json(200, stats)
            return
        fault = self.server.state.take(url.path, self.headers.get("Accept-Encoding"))
        mode = str(fault.get("mode", "ok"))
        if mode.startswith("error"):
            self._send_error(int(mode.removeprefix("error")), fault.get("retry_after"))
            return
        data = self._read_file(url.path)
        if data is None:
            self._send_json(404, {"error": "not found"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if mode == "gzip":
            data = gzip.compress(data)
            self.send_header("Content-Encoding", "gzip")
        elif fault.get("content_encoding"):
            self.send_header("Content-Encoding", str(fault["content_encoding"]))
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = int(fault.get("chunk", 4096))
            for start in range(0, len(data), chunk):
                piece = data[start : start + chunk]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode == "corrupt" and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        elif mode == "truncate":
            self.wfile.write(data[: int(fault.get("truncate_at", len(data) // 2))])
            self._hang_up()
            return
        elif mode == "stall":
            self.wfile.flush()
            _STOP.wait(float(fault.get("delay", 60)))
            self._hang_up()
            return
        elif mode == "slow":
            chunk, delay = int(fault.get("chunk", 1024)), float(fault.get("delay", 0.05))
            for start in range(0, len(data), chunk):
                self.wfile.write(data[start : start + chunk])
                self.wfile.flush()
                if _STOP.wait(delay):
                    break
            return
        self.wfile.write(data)

    def _send_error(self, status: int, retry_after: object) -> None:
        body = json.dumps({"error": f"injected {status}"}).encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _hang_up(self) -> None:
        """Close the connection now, in the middle of the promised body."""
        self.close_connection = True
        self.wfile.flush()
        with contextlib.suppress(OSError):  # the client may already be gone
            self.connection.shutdown(socket.SHUT_RDWR)

    def _read_file(self, url_path: str) -> bytes | None:
        root = self.server.root
        relative = urllib.parse.unquote(url_path).lstrip("/")
        target = os.path.realpath(os.path.join(root, relative))
        # Refuse traversal out of the root (../, symlinks pointing elsewhere).
        if os.path.commonpath([root, target]) != root or not os.path.isfile(target):
            return None
        with open(target, "rb") as f:
            return f.read()


class ArtifactServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that can be restarted on the same port at once."""

    allow_reuse_address = True
    daemon_threads = True  # a stalled handler must never block shutdown

    def __init__(self, address: tuple[str, int], root: str, *, verbose: bool = False) -> None:
        super().__init__(address, ArtifactHandler)
        self.root = os.path.realpath(root)
        self.state = _State()
        self.verbose = verbose


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", required=True, help="directory whose files are served")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)

    server = ArtifactServer((args.host, args.port), args.root, verbose=args.verbose)

    def stop(_signum: int, _frame: object) -> None:
        _STOP.set()
        # shutdown() waits for serve_forever() to return: call it off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
