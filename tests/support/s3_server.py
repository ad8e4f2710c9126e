"""A real S3 REST endpoint on loopback (moto's server), for FsspecSource tests.

Two ways to run it, both on 127.0.0.1 with a free port::

    with MotoS3() as s3:                 # moto's ThreadedMotoServer, in this process
        s3.client.create_bucket(Bucket="models")

    with MotoS3(process=True) as s3:     # ``python -m moto.server`` as a child process
        s3.kill()                        # SIGKILL: connections cut mid-transfer
        s3.start()                       # same port; moto's state starts empty again

``storage_options()`` returns what ``FsspecSource`` needs to reach it through s3fs
(dummy credentials, path-style addressing), optionally through a proxy's port.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

#: Dummy credentials: moto accepts any; tests assert they never leak.
ACCESS_KEY = "AKIAFAKEACCESSKEY0001"
SECRET_KEY = "fake-secret-key-that-must-never-be-logged"
REGION = "us-east-1"


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoS3:
    """One moto S3 server on 127.0.0.1, started and stopped by a ``with`` block."""

    def __init__(self, *, process: bool = False) -> None:
        self.process = process
        self.port = free_port()
        self._server: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        #: Object requests seen by the in-process server: (method, path) -> count.
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()

    def gets(self, bucket: str, key: str) -> int:
        """Return how many GETs (body downloads) of ``bucket/key`` the server answered."""
        with self._lock:
            return self.requests["GET", f"/{bucket}/{key}"]

    def count(self, method: str, path: str) -> None:
        with self._lock:
            self.requests[method, path] += 1

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """Return whether the server (thread or process) is running."""
        if self.process:
            return self._proc is not None and self._proc.poll() is None
        return self._server is not None

    def start(self) -> MotoS3:
        """Start the server (again on the same port) and wait until it answers."""
        if self.process:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        else:
            self._server = _CountingMotoServer(self, port=self.port)
            self._server.start()
        self._wait_ready()
        return self

    def _wait_ready(self, deadline: float = 20.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError("the moto server exited at start")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1.0)
                return
            time.sleep(0.05)  # sleep-ok: polling for a condition, bounded by a deadline
        raise RuntimeError("the moto server did not answer")

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
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def client(self) -> Any:
        """A boto3 S3 client on this server (for setting up buckets and objects)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def storage_options(self, port: int | None = None) -> dict[str, Any]:
        """Return s3fs options for this server, or for a proxy in front of it on ``port``."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "anon": False,
            "endpoint_url": f"http://127.0.0.1:{port or self.port}",
            "client_kwargs": {"region_name": REGION},
            "config_kwargs": {"s3": {"addressing_style": "path"}},
        }

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def put(s3: MotoS3, bucket: str, key: str, data: bytes, *, checksum: bool = False) -> str | None:
    """Upload ``data`` (with S3's own SHA-256 checksum if asked); return the version id."""
    extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"} if checksum else {}
    response = s3.client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
    version = response.get("VersionId")
    return str(version) if version else None


def _counting_server_class() -> type[Any]:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class CountingMotoServer(ThreadedMotoServer):  # type: ignore[misc]
        """moto's ThreadedMotoServer, counting requests per method and path."""

        def __init__(self, owner: MotoS3, *, port: int) -> None:
            super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
            self._owner = owner

        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)

            def counting(environ: dict[str, Any], start_response: Any) -> Any:
                self._owner.count(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
                return app(environ, start_response)

            self._server = make_server(
                self._ip_address, self._port, counting, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return CountingMotoServer


def _CountingMotoServer(owner: MotoS3, *, port: int) -> Any:
    return _counting_server_class()(owner, port=port)


logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
# Keep environment credentials from leaking into (or being needed by) the tests.
for _name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)
