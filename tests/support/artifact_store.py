"""Run ``artifact_server.py`` as a real process: start, kill -9, restart on the same port.

Importable from any test (``pythonpath = ["tests/support"]`` in pyproject.toml)::

    from artifact_store import ArtifactStore

    with ArtifactStore(root) as store:
        store.control(mode="error500", count=2)
        store.kill()          # SIGKILL: the service dies mid-request
        store.restart()       # same port, as a supervisor would
"""

from __future__ import annotations

import pathlib
import selectors
import signal
import subprocess
import sys
from typing import IO, Any

import httpx

SERVER_SCRIPT = pathlib.Path(__file__).with_name("artifact_server.py")


class ArtifactStore:
    """A handle on one artifact server process serving the files under ``root``."""

    def __init__(self, root: pathlib.Path, *, log: pathlib.Path | None = None) -> None:
        self.root = root
        self.port = 0
        self._log_path = log or root.parent / f"{root.name}-server.log"
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ArtifactStore:
        """Start the process (on the previous port after a kill); wait until it listens."""
        if self.alive:
            raise RuntimeError("the artifact server is already running")
        if self._log is None:
            self._log = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(SERVER_SCRIPT),
                "--root",
                str(self.root),
                "--port",
                str(self.port),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._proc = proc
        self.port = _read_port(proc)
        return self

    def kill(self) -> None:
        """Kill the process with SIGKILL: no cleanup, connections cut mid-transfer."""
        proc = self._require()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self._close_pipe()

    def restart(self) -> None:
        """Start again on the same port (SO_REUSEADDR makes that immediate)."""
        self.start()

    def stop(self) -> None:
        """Terminate gracefully (SIGTERM), then kill if it lingers; close the log."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close_pipe()
        if self._log is not None:
            self._log.close()
            self._log = None

    def control(self, **settings: Any) -> None:
        """Switch faults (see artifact_server.py): mode, count, delay, reset, ..."""
        httpx.post(f"{self.base}/_control", json=settings, timeout=5).raise_for_status()

    def requests(self, name: str) -> int:
        """Return how many requests for ``name`` the server has seen since the last reset."""
        stats = httpx.get(f"{self.base}/_stats", timeout=5).raise_for_status().json()
        return int(stats["by_path"].get(f"/{name}", 0))

    def stats(self) -> dict[str, Any]:
        """Return the server's ``/_stats``: requests, by_path, accept_encoding, mode..."""
        result: dict[str, Any] = (
            httpx.get(f"{self.base}/_stats", timeout=5).raise_for_status().json()
        )
        return result

    def __enter__(self) -> ArtifactStore:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _require(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("the artifact server was never started")
        return self._proc

    def _close_pipe(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()


def _read_port(proc: subprocess.Popen[bytes], deadline: float = 10.0) -> int:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=deadline):
            proc.kill()
            proc.wait()
            raise RuntimeError("artifact server did not report its port")
    line = proc.stdout.readline().decode()
    if not line.startswith("PORT "):
        proc.wait(timeout=10)
        raise RuntimeError(f"artifact server failed to start: {line!r}")
    return int(line.split()[1])


# A fetch in a process of its own: prints READY, waits for a line on stdin, fetches, reads
# the copy back through read_verified and prints ``OK <digest>`` or ``ERROR <type> <reason>``.
_WORKER = """
import hashlib, json, sys
from clarity_resilience import read_verified
from clarity_resilience.sources import FsspecSource, HttpSource
spec = json.loads(sys.argv[1])
kind = spec.pop("kind")
source = (HttpSource if kind == "http" else FsspecSource)(spec.pop("url"), **spec)
print("READY", flush=True)
sys.stdin.readline()
try:
    path = source.fetch()
except Exception as e:  # reported on stdout; the test asserts on that line
    print("ERROR", type(e).__name__, getattr(e, "reason", ""), flush=True)
    sys.exit(3)
data = read_verified(path, sha256=source.sha256)
print("OK", hashlib.sha256(data).hexdigest(), flush=True)
"""


class FetchWorker:
    """A real process that fetches one artifact when told to (for one-download-per-host)."""

    def __init__(self, kind: str, url: str, **options: Any) -> None:
        import json

        spec = {"kind": kind, "url": url, **options}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, json.dumps(spec, default=str)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._lines: list[str] = []

    def wait_ready(self, deadline: float = 30.0) -> None:
        """Wait until the worker has imported everything and made its source."""
        self._read_until("READY", deadline)

    def go(self) -> None:
        """Tell the worker to fetch now."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def result(self, deadline: float = 60.0) -> str:
        """Return the worker's ``OK <digest>`` or ``ERROR <type> <reason>`` line."""
        line = self._read_until(("OK ", "ERROR "), deadline)
        self.proc.wait(timeout=deadline)
        return line

    def kill(self) -> None:
        """SIGKILL the worker: its lock is released by the kernel, its .part stays."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def _read_until(self, prefix: str | tuple[str, ...], deadline: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                if not selector.select(timeout=deadline):
                    raise RuntimeError(f"worker said nothing for {deadline} s: {self._lines}")
                line = self.proc.stdout.readline().decode(errors="replace").rstrip("\n")
                if not line and self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited: {self._lines}")
                self._lines.append(line)
                if line.startswith(prefix):
                    return line
