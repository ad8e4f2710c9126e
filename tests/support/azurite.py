"""Azurite, Microsoft's Azure Storage emulator (npm), serving Blob storage on 127.0.0.1.

A real Blob REST endpoint for adlfs and the Azure SDK, run as its own process (so a test
can kill it mid-download), in memory and without telemetry (no traffic off loopback).
``.ci/run`` installs it with npm into ``.ci/node``; elsewhere ``azurite-blob`` on PATH
is used, and a test that needs it is skipped when it is missing (failed in CI).
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

import requirements

#: Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
# Where .ci/run installs the npm package (next to the tests, outside the package).
_CI_COPY = pathlib.Path(__file__).resolve().parents[2] / ".ci" / "node" / "node_modules" / ".bin"


def binary() -> str:
    """Return the ``azurite-blob`` executable; skip locally, fail in CI, without one."""
    found = shutil.which("azurite-blob") or shutil.which("azurite-blob", path=str(_CI_COPY))
    if found is None:
        requirements.missing("azurite-blob (npm install azurite)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Azurite:
    """One Azurite Blob server on 127.0.0.1, started and stopped by a ``with`` block."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.binary = binary()
        self.port = free_port()
        self.workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Azurite:
        """Start the server (again on the same port, empty) and wait until it answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "azurite.log", "ab") as log:
            self._proc = subprocess.Popen(
                [
                    self.binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                    "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck",
                    "--loose", "--silent",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )  # fmt: skip
        end = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None:
                text = (self.workdir / "azurite.log").read_text(errors="replace")
                raise RuntimeError(f"azurite exited at start: {text[-2000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return self
            if time.monotonic() > end:
                raise RuntimeError("azurite did not answer within 30 s")
            time.sleep(0.05)  # sleep-ok: polling for a condition, bounded by a deadline

    def kill(self) -> None:
        """SIGKILL the server: no cleanup, transfers cut mid-body, every blob lost."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def connection_string(self, port: int | None = None, *, key: str = ACCOUNT_KEY) -> str:
        """Return a connection string for this server, or for a proxy on ``port``."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{port or self.port}/{ACCOUNT};"
        )

    def storage_options(self, port: int | None = None, **more: Any) -> dict[str, Any]:
        """Return adlfs options for this server, or for a proxy in front of it on ``port``."""
        return {"connection_string": self.connection_string(port), **more}

    def put(self, container: str, name: str, data: bytes) -> None:
        """Upload ``data`` as a block blob (creating the container if needed)."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(self.connection_string()) as service:
            with contextlib.suppress(ResourceExistsError):
                service.create_container(container)
            service.get_blob_client(container, name).upload_blob(data, overwrite=True)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
