"""A fake Hugging Face Hub on 127.0.0.1, serving repositories from a local directory.

Import with ``from hub_server import FakeHub`` (tests/support is on pytest's pythonpath).

It speaks the part of the Hub protocol that ``huggingface_hub.get_hf_file_metadata`` and
a download use (see huggingface_hub's ``file_download.py``)::

    HEAD|GET /[datasets/|spaces/]{owner}/{name}/resolve/{revision}/{path}

- a regular ("git") file: ``200`` with ``X-Repo-Commit``, ``ETag: "<git blob sha1>"``
  and ``Content-Length``;
- an LFS file: ``302`` to a second server on another port (the "CDN", another origin,
  so the client sends it no token) with ``X-Repo-Commit``, ``ETag`` and
  ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size``; the CDN answers ``GET /blobs/{key}``;
- a missing file: ``404`` with ``X-Error-Code: EntryNotFound``; a missing revision:
  ``404`` with ``X-Error-Code: RevisionNotFound``; a missing repository: ``401`` with
  ``X-Error-Code: RepoNotFound``.

A repository is a directory ``root/{owner}/{name}/{commit}/`` holding the files; the LFS
digest and size are recorded when a file is published, so :meth:`FakeHub.tamper` models
storage whose bytes no longer match the LFS pointer. No ``X-Xet-*`` header is ever sent,
so a client never turns to Xet storage. Every request is logged as ``(server, method,
path)``, with its headers. Faults: :attr:`FakeHub.stall` holds each body until released
(a stalled origin), :attr:`FakeHub.cut_after` closes the connection mid-body,
:attr:`FakeHub.fail_status` answers every Hub request with an error status,
:attr:`FakeHub.announced_commit` names another commit (or none), and
:attr:`FakeHub.token` makes the Hub (not the CDN) require ``Authorization: Bearer``
(a wrong one is echoed in ``X-Error-Message``, as a careless server might).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import pathlib
import threading
import urllib.parse
from typing import Any

__all__ = ["COMMIT", "FakeHub", "git_blob_sha1"]

#: The commit every published file belongs to unless told otherwise.
COMMIT = "0123456789abcdef0123456789abcdef01234567"
_SHUTDOWN_TIMEOUT = 10.0


def git_blob_sha1(data: bytes) -> str:
    """Return git's object id of a blob: the ETag the Hub gives a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class FakeHub:
    """A Hub and its CDN, two threaded HTTP servers on loopback (a context manager)."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.refs: dict[tuple[str, str], str] = {}  # (repo, branch) -> commit
        self.lfs: dict[tuple[str, str, str], tuple[str, int]] = {}  # -> (sha256, size)
        self.requests: list[tuple[str, str, str]] = []
        #: The headers of every request (names in lower case), in the order of :attr:`requests`.
        self.headers: list[dict[str, str]] = []
        self.token: str | None = None
        #: Answer every resolve with this X-Repo-Commit instead of the true one ("": none).
        self.announced_commit: str | None = None
        #: While set and not released, every body is held after the headers are sent.
        self.stall: threading.Event | None = None
        #: While set, the Hub answers every request with this HTTP status (and no body).
        self.fail_status: int | None = None
        #: While set, every body is cut off (the connection closed) after this many bytes.
        self.cut_after: int | None = None
        self._lock = threading.Lock()
        self._servers: list[http.server.ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.url = ""
        #: Where LFS redirects point (a test may put a FaultProxy in front of the CDN).
        self.cdn_url = ""

    # -- content ---------------------------------------------------------------------

    def publish(
        self, repo: str, path: str, data: bytes, *, commit: str = COMMIT, lfs: bool = True
    ) -> pathlib.Path:
        """Add a file to ``repo`` at ``commit`` (and point ``main`` there); return it."""
        file = self.root / repo / commit / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        with self._lock:
            self.refs[(repo, "main")] = commit
            if lfs:
                self.lfs[(repo, commit, path)] = (hashlib.sha256(data).hexdigest(), len(data))
        return file

    def tamper(self, repo: str, path: str, data: bytes, *, commit: str = COMMIT) -> None:
        """Replace the stored bytes of a published file, keeping its LFS digest and size."""
        (self.root / repo / commit / path).write_bytes(data)

    def count(self, method: str, server: str | None = None) -> int:
        """Return how many ``method`` requests were made (to ``server``: hub or cdn)."""
        with self._lock:
            return sum(1 for s, m, _ in self.requests if m == method and server in (None, s))

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> FakeHub:
        for name in ("hub", "cdn"):
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, name))
            server.daemon_threads = True
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-{name}",
                daemon=True,
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.url = f"http://127.0.0.1:{self._servers[0].server_port}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_port}"
        return self

    @property
    def cdn_port(self) -> int:
        """Return the CDN server's port."""
        return self._servers[1].server_port

    @property
    def port(self) -> int:
        """Return the Hub server's port."""
        return self._servers[0].server_port

    def __exit__(self, *exc_info: object) -> None:
        if self.stall is not None:
            self.stall.set()  # release held handlers, so they end
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(_SHUTDOWN_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError("the fake Hub did not stop in time")

    # -- protocol --------------------------------------------------------------------

    def resolve(self, path: str) -> tuple[int, dict[str, str], pathlib.Path | None]:
        """Answer ``/{repo}/resolve/{revision}/{file}``: (status, headers, file to send)."""
        parts = path.lstrip("/").split("/")
        if parts and parts[0] in ("datasets", "spaces"):
            parts = parts[1:]
        if len(parts) < 5 or parts[2] != "resolve":
            return 404, {"X-Error-Code": "RepoNotFound"}, None
        repo = f"{parts[0]}/{parts[1]}"
        revision = urllib.parse.unquote(parts[3])
        file = urllib.parse.unquote("/".join(parts[4:]))
        if not (self.root / repo).is_dir():
            return 401, {"X-Error-Code": "RepoNotFound"}, None
        with self._lock:
            commit = self.refs.get((repo, revision), revision)
            lfs = self.lfs.get((repo, commit, file))
        if not (self.root / repo / commit).is_dir():
            return 404, {"X-Error-Code": "RevisionNotFound"}, None
        stored = self.root / repo / commit / file
        announced = commit if self.announced_commit is None else self.announced_commit
        headers = {"X-Repo-Commit": announced} if announced else {}
        if not stored.is_file():
            return 404, headers | {"X-Error-Code": "EntryNotFound"}, None
        if lfs is None:
            etag = git_blob_sha1(stored.read_bytes())
            return 200, headers | {"ETag": f'"{etag}"'}, stored
        sha256, size = lfs
        key = urllib.parse.quote(f"{repo}/{commit}/{file}", safe="")
        return (
            302,
            headers
            | {
                "ETag": f'"{git_blob_sha1(b"lfs pointer " + sha256.encode())}"',
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(size),
                "Location": f"{self.cdn_url}/blobs/{key}",
            },
            None,
        )


def _handler(hub: FakeHub, name: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Drop the access log."""

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, *, body: bool) -> None:
            with hub._lock:
                hub.requests.append((name, self.command, self.path))
                hub.headers.append({k.lower(): v for k, v in self.headers.items()})
            if name == "hub" and hub.fail_status is not None:
                status, headers, file = hub.fail_status, {}, None
            elif name == "cdn":
                status, headers, file = self._cdn()
            elif hub.token is not None and (
                self.headers.get("Authorization") != f"Bearer {hub.token}"
            ):
                # Echo what was sent, as a careless server might: it must not travel on.
                sent = self.headers.get("Authorization", "")
                status, headers, file = (
                    401,
                    {
                        "X-Error-Code": "RepoNotFound",
                        "X-Error-Message": f"Invalid credentials in Authorization header {sent}",
                    },
                    None,
                )
            else:
                status, headers, file = hub.resolve(self.path)
            data = file.read_bytes() if file is not None else b""
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body and data:
                stall = hub.stall
                if stall is not None:
                    self.wfile.flush()
                    stall.wait(_SHUTDOWN_TIMEOUT)
                cut = hub.cut_after
                if cut is not None:
                    data = data[:cut]
                    self.close_connection = True
                with contextlib.suppress(OSError):  # the client may have given up
                    self.wfile.write(data)

        def _cdn(self) -> tuple[int, dict[str, str], pathlib.Path | None]:
            prefix = "/blobs/"
            if not self.path.startswith(prefix):
                return 404, {}, None
            file = hub.root / urllib.parse.unquote(self.path[len(prefix) :])
            return (200, {}, file) if file.is_file() else (404, {}, None)

    return Handler
