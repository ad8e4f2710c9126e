"""A real GCS JSON API endpoint on loopback (gcp-storage-emulator), for FsspecSource tests.

Two ways to run it, both on 127.0.0.1 with a free port::

    with FakeGcs() as gcs:                 # the emulator's handler, in this process
        gcs.create_bucket("models")
        gcs.upload("models", "model.bin", data)

    with FakeGcs(process=True) as gcs:     # ``python -m gcp_storage_emulator`` as a child
        gcs.kill()                         # SIGKILL: connections cut mid-transfer
        gcs.start()                        # same port; the in-memory store starts empty

Buckets and objects are made through the emulator's JSON API with urllib (never through
gcsfs, the client under test). :class:`TokenServer` is an OAuth token endpoint on loopback,
so a service-account credential can be refreshed without leaving the machine.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

#: The access token the token endpoint hands out: tests assert it never leaks.
ACCESS_TOKEN = "ya29.fake-gcs-access-token-that-must-never-be-logged"


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeGcs:
    """One gcp-storage-emulator on 127.0.0.1, started and stopped by a ``with`` block."""

    def __init__(self, *, process: bool = False) -> None:
        self.process = process
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._httpd: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Requests seen by the in-process server: (method, path without query) -> count.
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        #: The Authorization headers the in-process server received.
        self.authorizations: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """Return whether the server (thread or process) is running."""
        if self.process:
            return self._proc is not None and self._proc.poll() is None
        return self._httpd is not None

    def downloads(self, bucket: str, key: str) -> int:
        """Return how many media GETs (body bytes) of ``bucket/key`` were answered."""
        quoted = urllib.parse.quote(key, safe="")
        with self._lock:
            return sum(
                n
                for (method, path), n in self.requests.items()
                if method == "GET" and path.endswith(f"/b/{bucket}/o/{quoted}#media")
            )

    def object_requests(self, bucket: str, key: str) -> int:
        """Return how many requests (metadata or media) named ``bucket/key``."""
        quoted = urllib.parse.quote(key, safe="")
        with self._lock:
            return sum(
                n
                for (_, path), n in self.requests.items()
                if path.split("#")[0].endswith(f"/b/{bucket}/o/{quoted}")
            )

    def _count(self, method: str, raw_path: str, authorization: str | None) -> None:
        parts = urllib.parse.urlsplit(raw_path)
        media = "alt=media" in parts.query or parts.path.startswith("/download/")
        with self._lock:
            self.requests[method, parts.path + ("#media" if media else "")] += 1
            if authorization is not None:
                self.authorizations.append(authorization)

    def start(self) -> FakeGcs:
        """Start the server (again on the same port) and wait until it answers."""
        if self.process:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                 "--port", str(self.port), "--in-memory", "--quiet"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        else:
            self._httpd = _QuietServer(("127.0.0.1", self.port), _counting_handler(self))
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, name="fake-gcs", daemon=True
            )
            self._thread.start()
        self._wait_ready()
        return self

    def _wait_ready(self, deadline: float = 20.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError("the GCS emulator exited at start")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.endpoint}/", timeout=1.0) as response:
                    response.read()
                return
            time.sleep(0.05)  # sleep-ok: polling for a condition, bounded by a deadline
        raise RuntimeError("the GCS emulator did not answer")

    def kill(self) -> None:
        """SIGKILL the server process: no cleanup, transfers cut mid-body."""
        assert self._proc is not None, "kill() needs process=True"
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (terminate the process, or shut the thread down)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` through the JSON API."""
        body = json.dumps({"name": bucket}).encode()
        self._call("POST", "/storage/v1/b?project=test", body, "application/json")

    def upload(self, bucket: str, key: str, data: bytes) -> str:
        """Upload (or replace) ``bucket/key``; return the object's generation."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        answer = self._call(
            "POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data, "application/octet-stream"
        )
        return str(json.loads(answer)["generation"])

    def _call(self, method: str, path: str, body: bytes, content_type: str) -> bytes:
        request = urllib.request.Request(
            self.endpoint + path, data=body, method=method,
            headers={"Content-Type": content_type},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    def storage_options(self, port: int | None = None, **extra: Any) -> dict[str, Any]:
        """Return gcsfs options for this server, or for a proxy in front of it on ``port``."""
        return {
            "token": "anon",
            "project": "test",
            "endpoint_url": f"http://127.0.0.1:{port or self.port}",
            **extra,
        }

    def __enter__(self) -> FakeGcs:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _QuietServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that drops a client's hang-up silently (faults are the point)."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _counting_handler(owner: FakeGcs) -> Any:
    """Return the emulator's request handler, on one in-memory store, counting requests."""
    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    class CountingHandler(RequestHandler):  # type: ignore[misc]
        def parse_request(self) -> bool:
            # Counted once the request line and headers are parsed, before the handler runs.
            ok = bool(super().parse_request())
            if ok:
                owner._count(self.command, self.path, self.headers.get("Authorization"))
            return ok

    storage = Storage(use_memory_fs=True)
    return functools.partial(CountingHandler, storage)


class TokenServer:
    """An OAuth 2.0 token endpoint on loopback that grants :data:`ACCESS_TOKEN`.

    It records each grant request's form, so a test can see the credential was used.
    """

    def __init__(self) -> None:
        self.grants: list[dict[str, list[str]]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                owner.grants.append(urllib.parse.parse_qs(self.rfile.read(length).decode()))
                body = json.dumps(
                    {"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def service_account(token_uri: str) -> dict[str, str]:
    """Return service-account info with a fresh RSA key, refreshed at ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "test",
        "private_key_id": "fake-private-key-id-0001",
        "private_key": pem,
        "client_email": "model-reader@test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }


logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)  # warns on every request
# Keep environment credentials and emulator settings from reaching (or steering) gcsfs.
for _name in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "GCSFS_TOKEN"):
    os.environ.pop(_name, None)
