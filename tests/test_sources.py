"""HttpSource against a real artifact server process on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import email.utils
import errno
import gzip
import hashlib
import os
import pathlib
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import filelock
import httpx
import pytest
import stamina
from artifact_store import ArtifactStore, FetchWorker
from prometheus_client import CollectorRegistry

from clarity_resilience import (
    ChecksumMismatchError,
    ClarityResilienceError,
    IntegrityError,
    Reason,
    SizeMismatchError,
    read_verified,
)
from clarity_resilience.instrumentation import Event, IntegrityCheckFailed, IntegrityCheckPassed
from clarity_resilience.sources import HttpSource

pytestmark = pytest.mark.usefixtures("no_backoff")

ARTIFACT = "model.bin"
DATA = random.Random(20240601).randbytes(256 * 1024)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(scope="module")
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArtifactServer]:
    """Run the artifact server for this module; always terminate it."""
    root = tmp_path_factory.mktemp("artifacts")
    (root / ARTIFACT).write_bytes(DATA)
    with ArtifactStore(root) as store:
        yield ArtifactServer(store)


@dataclasses.dataclass
class ArtifactServer:
    """The store, with this module's artifact as the default name."""

    store: ArtifactStore

    @property
    def root(self) -> pathlib.Path:
        return self.store.root

    @property
    def port(self) -> int:
        return self.store.port

    @property
    def base(self) -> str:
        return self.store.base

    def url(self, name: str = ARTIFACT) -> str:
        return self.store.url(name)

    def control(self, **settings: Any) -> None:
        self.store.control(**settings)

    def requests(self, name: str = ARTIFACT) -> int:
        return self.store.requests(name)


@pytest.fixture
def server(server_process: ArtifactServer) -> ArtifactServer:
    """Return the server with faults off and request counters at zero."""
    server_process.control(mode="ok", reset=True)
    return server_process


def make_source(server: ArtifactServer, cache: pathlib.Path, **kwargs: Any) -> HttpSource:
    kwargs.setdefault("sha256", SHA)
    return HttpSource(kwargs.pop("url", server.url()), cache_dir=cache, **kwargs)


def cache_entries(cache: pathlib.Path) -> list[str]:
    """Return the cache's entries but the (empty, hidden) per-artifact lock files."""
    names = os.listdir(cache) if cache.exists() else []
    return sorted(name for name in names if not name.endswith(".lock"))


class TestFetch:
    @pytest.mark.parametrize(
        ("filename", "expected_name"),
        [
            pytest.param(None, SHA, id="digest-only"),
            pytest.param("model.onnx", f"{SHA}-model.onnx", id="digest-and-filename"),
        ],
    )
    def test_downloads_verified_bytes_under_digest_name(
        self, server: ArtifactServer, cache: pathlib.Path, filename: str | None, expected_name: str
    ) -> None:
        """A download returns a cache file named after the digest holding the served bytes."""
        with make_source(server, cache, filename=filename) as source:
            path = source.fetch()
        assert path == cache / expected_name
        assert read_verified(path, sha256=SHA, size=len(DATA)) == DATA
        assert cache_entries(cache) == [expected_name]
        assert server.requests() == 1

    def test_cached_copy_is_served_without_a_request(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """A verified cached copy is returned without touching the network, across instances."""
        with make_source(server, cache) as source:
            first = source.fetch()
            assert source.fetch() == first
        with make_source(server, cache, size=len(DATA)) as fresh:
            assert fresh.fetch() == first
        assert server.requests() == 1

    @pytest.mark.parametrize(
        ("damage", "reason"),
        [
            pytest.param("flip", Reason.CHECKSUM_MISMATCH, id="flipped-byte"),
            pytest.param("truncate", Reason.SIZE_MISMATCH, id="truncated"),
            pytest.param("symlink", Reason.UNSAFE_PATH, id="symlink"),
        ],
    )
    def test_bad_cached_copy_is_reported_and_downloaded_again(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        events: list[Event],
        damage: str,
        reason: Reason,
    ) -> None:
        """A cached file that fails verification is never served: it is audited and replaced."""
        source = make_source(server, cache, size=len(DATA))
        path = source.fetch()
        if damage == "flip":
            path.write_bytes(DATA[:10] + bytes([DATA[10] ^ 1]) + DATA[11:])
        elif damage == "truncate":
            path.write_bytes(DATA[:-1])
        else:
            elsewhere = cache.parent / "elsewhere.bin"
            elsewhere.write_bytes(DATA)
            path.unlink()
            path.symlink_to(elsewhere)
        events.clear()

        assert source.fetch() == path
        source.close()

        assert not path.is_symlink()
        assert path.read_bytes() == DATA
        assert server.requests() == 2
        failed = [e for e in events if isinstance(e, IntegrityCheckFailed)]
        assert [(e.path, e.reason) for e in failed] == [(str(path), reason)]

    @pytest.mark.asyncio
    async def test_fetch_async_downloads_in_a_thread(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """fetch_async returns the same verified file as fetch."""
        with make_source(server, cache) as source:
            path = await source.fetch_async()
        assert path.read_bytes() == DATA


class TestRefusals:
    @pytest.mark.parametrize(
        ("mode", "sha256"),
        [
            pytest.param("corrupt", SHA, id="corrupted-in-transit"),
            pytest.param("ok", "0" * 64, id="unexpected-digest"),
        ],
    )
    def test_digest_mismatch_is_refused_and_not_retried(
        self, server: ArtifactServer, cache: pathlib.Path, mode: str, sha256: str
    ) -> None:
        """Bytes with another digest raise ChecksumMismatchError and leave no file at all."""
        server.control(mode=mode)
        with (
            make_source(server, cache, sha256=sha256) as source,
            pytest.raises(ChecksumMismatchError) as info,
        ):
            source.fetch()
        assert info.value.expected == sha256
        assert info.value.actual != sha256
        assert info.value.path == server.url()
        assert cache_entries(cache) == []
        assert server.requests() == 1

    @pytest.mark.parametrize(
        "limits",
        [
            pytest.param({"max_size": len(DATA) - 1}, id="over-max-size"),
            pytest.param({"size": len(DATA) + 1}, id="not-the-expected-size"),
        ],
    )
    def test_announced_length_is_refused_before_the_body(
        self, server: ArtifactServer, cache: pathlib.Path, limits: dict[str, int]
    ) -> None:
        """A Content-Length that breaks the cap is refused before any body byte is awaited."""
        # The server sends headers and then stalls: reading the body would time out.
        server.control(mode="stall", delay=30)
        with (
            make_source(server, cache, timeout=5.0, **limits) as source,
            pytest.raises(SizeMismatchError) as info,
        ):
            source.fetch()
        assert info.value.actual == len(DATA)
        assert cache_entries(cache) == []
        assert server.requests() == 1

    def test_stream_beyond_the_cap_is_aborted(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """Without Content-Length, the download stops as soon as it passes max_size."""
        server.control(mode="chunked", chunk=4096)
        cap = 10_000
        with (
            make_source(server, cache, max_size=cap) as source,
            pytest.raises(SizeMismatchError) as info,
        ):
            source.fetch()
        assert isinstance(info.value.actual, int)
        assert cap < info.value.actual < len(DATA)
        assert cache_entries(cache) == []

    def test_short_stream_with_expected_size_is_refused(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """A body of unknown length that ends short of ``size`` is a size mismatch."""
        server.control(mode="chunked")
        with (
            make_source(server, cache, size=len(DATA) + 1) as source,
            pytest.raises(SizeMismatchError) as info,
        ):
            source.fetch()
        assert (info.value.expected, info.value.actual) == (len(DATA) + 1, len(DATA))
        assert cache_entries(cache) == []

    @pytest.mark.parametrize("status", [pytest.param(s, id=str(s)) for s in (400, 403, 404, 410)])
    def test_client_errors_are_not_retried(
        self, server: ArtifactServer, cache: pathlib.Path, status: int
    ) -> None:
        """A 4xx other than 429 fails at once with reason fetch_error and the status."""
        server.control(mode=f"error{status}")
        with make_source(server, cache) as source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert info.value.actual == status
        assert f"HTTP {status}" in str(info.value)
        assert server.requests() == 1


class TestRetries:
    @pytest.mark.parametrize(
        "fault",
        [
            pytest.param({"mode": "error500"}, id="500"),
            pytest.param({"mode": "error503"}, id="503"),
            pytest.param({"mode": "error429"}, id="429"),
            pytest.param({"mode": "truncate"}, id="truncated-body"),
        ],
    )
    def test_two_transient_failures_then_success(
        self, server: ArtifactServer, cache: pathlib.Path, fault: dict[str, str]
    ) -> None:
        """Two transient failures are retried and the third attempt succeeds."""
        server.control(**fault, count=2)
        with make_source(server, cache, attempts=3) as source:
            assert source.fetch().read_bytes() == DATA
        assert server.requests() == 3

    def test_stall_once_then_success(self, server: ArtifactServer, cache: pathlib.Path) -> None:
        """A read timeout is retried like any transient failure."""
        server.control(mode="stall", delay=30, count=1)
        with make_source(server, cache, timeout=0.3) as source:
            assert source.fetch().read_bytes() == DATA
        assert server.requests() == 2

    @pytest.mark.parametrize("attempts", [pytest.param(n, id=f"{n}-attempts") for n in (1, 3)])
    def test_persistent_server_error_gives_up_after_attempts(
        self, server: ArtifactServer, cache: pathlib.Path, attempts: int
    ) -> None:
        """A server that keeps failing gets exactly ``attempts`` requests, then fetch_error."""
        server.control(mode="error500")
        with (
            make_source(server, cache, attempts=attempts) as source,
            pytest.raises(IntegrityError) as info,
        ):
            source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert info.value.actual == 500
        assert server.requests() == attempts

    def test_truncated_body_every_time_leaves_nothing(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """A body cut short on every attempt fails with no final file and no temporary file."""
        server.control(mode="truncate")
        with make_source(server, cache) as source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
        assert cache.exists()
        assert cache_entries(cache) == []
        assert server.requests() == 3

    def test_read_timeout_fails_with_reason_timeout_in_bounded_time(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """A stalling server yields reason timeout after the attempts, never a hang."""
        server.control(mode="stall", delay=60)
        start = time.monotonic()
        with (
            make_source(server, cache, timeout=0.3, attempts=2) as source,
            pytest.raises(IntegrityError) as info,
        ):
            source.fetch()
        assert time.monotonic() - start < 30  # far below the 60 s stall: no attempt waited it
        assert info.value.reason is Reason.TIMEOUT
        assert isinstance(info.value.__cause__, httpx.ReadTimeout)
        assert server.requests() == 2
        assert cache_entries(cache) == []

    def test_connection_refused_is_fetch_error_after_retries(self, cache: pathlib.Path) -> None:
        """Nothing listening on the port gives fetch_error once every attempt was refused."""
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
            url = f"http://127.0.0.1:{placeholder.getsockname()[1]}/{ARTIFACT}"
            with (
                HttpSource(url, sha256=SHA, cache_dir=cache) as source,
                pytest.raises(IntegrityError) as info,
            ):
                source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert isinstance(info.value.__cause__, httpx.ConnectError)
        assert "after 3 attempt(s)" in str(info.value)


@pytest.fixture
def retry_waits() -> Iterator[list[float]]:
    """Turn real backoff on (seeded jitter) and record every wait stamina schedules."""
    waits: list[float] = []
    previous_hooks = stamina.instrumentation.get_on_retry_hooks()
    stamina.instrumentation.set_on_retry_hooks([lambda details: waits.append(details.wait_for)])
    state = random.getstate()
    random.seed(7)
    try:
        with stamina.set_testing(False):
            yield waits
    finally:
        random.setstate(state)
        stamina.instrumentation.set_on_retry_hooks(previous_hooks)


class TestBackoff:
    def test_backoff_grows_exponentially_with_jitter(
        self, server: ArtifactServer, cache: pathlib.Path, retry_waits: list[float]
    ) -> None:
        """Real retries wait wait_initial * 2**n plus a random jitter, capped at wait_max."""
        server.control(mode="error503", count=3)
        with make_source(
            server, cache, attempts=4, wait_initial=0.01, wait_max=0.03, wait_jitter=0.01
        ) as source:
            source.fetch()
        assert len(retry_waits) == 3
        # stamina reports waits as differences of a running total: allow float noise.
        jitters = [wait - 0.01 * 2**n for n, wait in enumerate(retry_waits[:2])]
        assert all(-1e-9 <= jitter <= 0.01 + 1e-9 for jitter in jitters)
        assert all(jitter > 1e-4 for jitter in jitters)  # random, not a fixed schedule
        assert retry_waits[2] == pytest.approx(0.03)  # 0.04 + jitter, capped at wait_max

    @pytest.mark.parametrize(
        ("retry_after", "waits", "expected"),
        [
            pytest.param("0", {"wait_initial": 0.2, "wait_max": 1.0}, 0.0, id="zero-seconds"),
            pytest.param("3600", {"wait_initial": 0.0, "wait_max": 0.05}, 0.05, id="capped"),
            pytest.param(
                email.utils.formatdate(time.time() - 60, usegmt=True),
                {"wait_initial": 0.2, "wait_max": 1.0},
                0.0,
                id="http-date-in-the-past",
            ),
        ],
    )
    def test_retry_after_replaces_the_backoff(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        retry_waits: list[float],
        retry_after: str,
        waits: dict[str, float],
        expected: float,
    ) -> None:
        """A 429's Retry-After sets the wait (clamped to wait_max) instead of the backoff."""
        server.control(mode="error429", count=1, retry_after=retry_after)
        with make_source(server, cache, wait_jitter=0.0, **waits) as source:
            source.fetch()
        assert retry_waits == [pytest.approx(expected)]


class TestInstrumentation:
    def test_download_and_cache_hit_pass_with_duration(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """A download and a cache hit each emit IntegrityCheckPassed and observe a duration."""
        with make_source(server, cache, model="m", registry=registry) as source:
            source.fetch()
            source.fetch()
        passed = [(e.path, e.size) for e in events if isinstance(e, IntegrityCheckPassed)]
        assert passed == [(server.url(), len(DATA)), (str(source.path), len(DATA))]
        count = registry.get_sample_value(
            "checksum_verification_duration_seconds_count", {"model": "m"}
        )
        assert count == 2

    @pytest.mark.parametrize(
        ("fault", "options", "reason"),
        [
            pytest.param({"mode": "corrupt"}, {}, Reason.CHECKSUM_MISMATCH, id="checksum"),
            pytest.param({}, {"max_size": 10}, Reason.SIZE_MISMATCH, id="size"),
            pytest.param({"mode": "error404"}, {}, Reason.FETCH_ERROR, id="http-404"),
            pytest.param(
                {"mode": "stall", "delay": 30},
                {"timeout": 0.3, "attempts": 1},
                Reason.TIMEOUT,
                id="timeout",
            ),
        ],
    )
    def test_refused_fetch_emits_failure_and_counts_reason(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        fault: dict[str, Any],
        options: dict[str, Any],
        reason: Reason,
    ) -> None:
        """Every refused fetch emits IntegrityCheckFailed and counts its reason once."""
        if fault:
            server.control(**fault)
        source = make_source(server, cache, model="m", registry=registry, **options)
        with source, pytest.raises(IntegrityError):
            source.fetch()
        failed = [e for e in events if isinstance(e, IntegrityCheckFailed)]
        assert [(e.path, e.reason, e.model) for e in failed] == [(server.url(), reason, "m")]
        for candidate in (Reason.CHECKSUM_MISMATCH, Reason.TIMEOUT, Reason.FETCH_ERROR):
            value = registry.get_sample_value(
                "model_integrity_failures_total", {"model": "m", "reason": candidate.value}
            )
            assert value == (1.0 if candidate is reason else 0.0)

    def test_credentials_in_url_never_reach_events_or_errors(
        self, server: ArtifactServer, cache: pathlib.Path, events: list[Event]
    ) -> None:
        """User info and the query (presigned signatures) are stripped from audit paths."""
        server.control(mode="corrupt")
        url = f"http://user:hunter2@127.0.0.1:{server.port}/{ARTIFACT}?X-Amz-Signature=s3cr3t"
        with (
            make_source(server, cache, url=url) as source,
            pytest.raises(ChecksumMismatchError) as info,
        ):
            source.fetch()
        texts = [str(info.value), str(info.value.path), repr(source)]
        texts += [str(e.fields()) for e in events]
        assert not [t for t in texts if "hunter2" in t or "s3cr3t" in t]
        assert info.value.path == server.url()


class TestConstruction:
    @pytest.mark.parametrize(
        "url",
        [
            pytest.param("ftp://example.com/model.bin", id="ftp"),
            pytest.param("file:///etc/passwd", id="file"),
            pytest.param("s3://bucket/model.bin", id="s3"),
            pytest.param("/local/model.bin", id="no-scheme"),
            pytest.param("http:///model.bin", id="no-host"),
        ],
    )
    def test_non_http_url_is_refused(self, cache: pathlib.Path, url: str) -> None:
        """Only http:// and https:// URLs are accepted."""
        with pytest.raises(ValueError, match="http"):
            HttpSource(url, sha256=SHA, cache_dir=cache)

    @pytest.mark.parametrize(
        "kwargs",
        [
            pytest.param({"sha256": "abc"}, id="short-digest"),
            pytest.param({"size": 10, "max_size": 5}, id="size-over-max"),
            pytest.param({"size": -1}, id="negative-size"),
            pytest.param({"attempts": 0}, id="no-attempts"),
            pytest.param({"timeout": 0}, id="zero-timeout"),
            pytest.param({"filename": "../model.bin"}, id="filename-traversal"),
            pytest.param({"filename": "a/b"}, id="filename-with-slash"),
        ],
    )
    def test_bad_arguments_are_refused(self, cache: pathlib.Path, kwargs: dict[str, Any]) -> None:
        """Arguments that cannot work raise ValueError at construction."""
        kwargs.setdefault("sha256", SHA)
        with pytest.raises(ValueError):
            HttpSource("https://example.com/m.bin", cache_dir=cache, **kwargs)

    @pytest.mark.parametrize("module", [pytest.param(m, id=m) for m in ("httpx", "stamina")])
    def test_missing_http_extra_names_the_install_command(
        self, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch, module: str
    ) -> None:
        """Without httpx or stamina the error is a library error and an ImportError."""
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(ClarityResilienceError, match=r"clarity-resilience\[http\]") as info:
            HttpSource("https://example.com/m.bin", sha256=SHA, cache_dir=cache)
        assert isinstance(info.value, ImportError)

    def test_importing_the_package_imports_no_http_stack(self) -> None:
        """Importing clarity_resilience.sources imports neither httpx nor stamina."""
        code = (
            "import sys, clarity_resilience, clarity_resilience.sources\n"
            "print(sorted({'httpx', 'stamina'} & set(sys.modules)))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == "[]"


class TestClientOwnership:
    def test_created_client_is_closed_with_the_source(
        self, server: ArtifactServer, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The client a source creates is closed on exit; a closed source cannot download."""
        created: list[httpx.Client] = []

        class RecordingClient(httpx.Client):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                created.append(self)

        monkeypatch.setattr(httpx, "Client", RecordingClient)
        with make_source(server, cache) as source:
            source.fetch()
        assert [c.is_closed for c in created] == [True]
        (cache / SHA).unlink()
        with pytest.raises(RuntimeError, match="closed"):
            source.fetch()

    def test_given_client_is_used_and_left_open(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """A client passed in makes the requests and stays open after the source closes."""
        seen: list[httpx.Request] = []
        with httpx.Client(event_hooks={"request": [seen.append]}) as client:
            with make_source(server, cache, client=client) as source:
                source.fetch()
            assert not client.is_closed
            assert [str(r.url) for r in seen] == [server.url()]


def near_miss(digest: str, position: int) -> str:
    """Return ``digest`` with only the hex digit at ``position`` changed."""
    changed = "0" if digest[position] != "0" else "1"
    return digest[:position] + changed + digest[position + 1 :]


def failures(registry: CollectorRegistry, model: str = "m") -> dict[Reason, float]:
    """Return the non-zero ``model_integrity_failures_total`` counts by reason."""
    counts = {
        reason: registry.get_sample_value(
            "model_integrity_failures_total", {"model": model, "reason": reason.value}
        )
        for reason in Reason
    }
    return {reason: value for reason, value in counts.items() if value}


def audited(events: list[Event]) -> list[tuple[str, Reason]]:
    return [(e.path, e.reason) for e in events if isinstance(e, IntegrityCheckFailed)]


@pytest.mark.parametrize(
    "position", [pytest.param(0, id="first-digit"), pytest.param(63, id="last-digit")]
)
class TestNearMissDigests:
    def test_download_with_a_near_miss_digest_is_refused(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        position: int,
    ) -> None:
        """Downloaded bytes whose digest differs from the expected one in one digit are refused."""
        expected = near_miss(SHA, position)
        source = make_source(server, cache, sha256=expected, model="m", registry=registry)
        with source, pytest.raises(ChecksumMismatchError) as info:
            source.fetch()
        assert (info.value.expected, info.value.actual) == (expected, SHA)
        assert cache_entries(cache) == []
        assert audited(events) == [(server.url(), Reason.CHECKSUM_MISMATCH)]
        assert failures(registry) == {Reason.CHECKSUM_MISMATCH: 1.0}

    def test_cached_copy_with_a_near_miss_digest_is_refused(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        position: int,
    ) -> None:
        """A cached copy one digit off its name's digest is audited and removed, never served."""
        expected = near_miss(SHA, position)
        cache.mkdir()
        (cache / expected).write_bytes(DATA)  # right size, digest one digit off
        server.control(mode="error404")  # isolates the cache check from the download's
        source = make_source(
            server, cache, sha256=expected, size=len(DATA), model="m", registry=registry
        )
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert cache_entries(cache) == []
        assert audited(events) == [
            (str(cache / expected), Reason.CHECKSUM_MISMATCH),
            (server.url(), Reason.FETCH_ERROR),
        ]
        assert failures(registry) == {Reason.CHECKSUM_MISMATCH: 1.0, Reason.FETCH_ERROR: 1.0}


class TestDeadline:
    def test_trickling_server_fails_with_timeout_after_the_deadline(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """A server sending a byte at a time is cut off at the deadline on every attempt."""
        # 256 KiB at one byte per 20 ms would take about 90 minutes.
        server.control(mode="slow", chunk=1, delay=0.02)
        deadline = 0.5
        start = time.monotonic()
        source = make_source(
            server, cache, deadline=deadline, timeout=5.0, attempts=2, model="m", registry=registry
        )
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        elapsed = time.monotonic() - start
        # Bound: 2 attempts x (deadline + one socket wait); generous for a busy machine.
        assert elapsed < 30
        assert info.value.reason is Reason.TIMEOUT
        assert info.value.expected == deadline
        assert "deadline" in str(info.value)
        assert server.requests() == 2
        assert cache_entries(cache) == []
        assert audited(events) == [(server.url(), Reason.TIMEOUT)]
        assert failures(registry) == {Reason.TIMEOUT: 1.0}

    def test_deadline_caps_each_socket_wait(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """A deadline shorter than ``timeout`` also ends a stalled read at the deadline."""
        server.control(mode="stall", delay=60)
        start = time.monotonic()
        source = make_source(server, cache, deadline=0.3, timeout=60.0, attempts=1)
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert time.monotonic() - start < 30  # the 60 s read timeout never ran out
        assert info.value.reason is Reason.TIMEOUT
        assert isinstance(info.value.__cause__, httpx.ReadTimeout)

    def test_download_within_the_deadline_succeeds(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """A slow but steady download that ends before the deadline is verified and kept."""
        server.control(mode="slow", chunk=64 * 1024, delay=0.01)
        with make_source(server, cache, deadline=60.0) as source:
            assert source.fetch().read_bytes() == DATA
        assert source.deadline == 60.0

    @pytest.mark.parametrize(
        "deadline",
        [
            pytest.param(0, id="zero"),
            pytest.param(-1.0, id="negative"),
            pytest.param(float("inf"), id="infinite"),
            pytest.param(float("nan"), id="nan"),
            pytest.param(None, id="none"),
            pytest.param("60", id="string"),
            pytest.param(True, id="bool"),
        ],
    )
    def test_bad_deadline_is_refused(self, cache: pathlib.Path, deadline: object) -> None:
        """A deadline that is not a finite positive number raises ValueError."""
        with pytest.raises(ValueError, match="deadline"):
            HttpSource("https://example.com/m.bin", sha256=SHA, cache_dir=cache, deadline=deadline)  # type: ignore[arg-type]

    def test_default_deadline_is_a_few_minutes(self, cache: pathlib.Path) -> None:
        """Without ``deadline`` an attempt may take five minutes, no more."""
        assert (
            HttpSource("https://example.com/m.bin", sha256=SHA, cache_dir=cache).deadline == 300.0
        )


@pytest.fixture
def bomb(server: ArtifactServer) -> Iterator[tuple[str, bytes, bytes]]:
    """Publish a gzip file that decodes to 32 MiB of zeros; yield (name, raw, decoded)."""
    decoded = bytes(32 * 1024 * 1024)
    raw = gzip.compress(decoded, mtime=0)
    name = "bomb.bin.gz"
    (server.root / name).write_bytes(raw)
    yield name, raw, decoded
    (server.root / name).unlink()


class TestContentEncoding:
    def test_requests_ask_for_the_identity_encoding(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """Every download sends ``Accept-Encoding: identity``."""
        with make_source(server, cache) as source:
            source.fetch()
        assert server.store.stats()["accept_encoding"] == "identity"

    @pytest.mark.parametrize("encoding", ["gzip", "deflate"])
    def test_encoded_artifact_is_hashed_and_stored_as_published(
        self, server: ArtifactServer, cache: pathlib.Path, events: list[Event], encoding: str
    ) -> None:
        """A body sent with Content-Encoding is never decoded: its raw bytes are hashed, kept."""
        decoded = bytes(32 * 1024 * 1024)
        raw = gzip.compress(decoded, mtime=0) if encoding == "gzip" else zlib.compress(decoded)
        name = f"published.{encoding}"
        (server.root / name).write_bytes(raw)
        server.control(content_encoding=encoding)
        # The cap admits the raw body only: a decoded body would be refused for its size.
        source = make_source(
            server, cache, url=server.url(name), sha256=hashlib.sha256(raw).hexdigest(),
            max_size=len(raw),
        )  # fmt: skip
        with source:
            path = source.fetch()
        assert path.read_bytes() == raw
        passed = [e.size for e in events if isinstance(e, IntegrityCheckPassed)]
        assert passed == [len(raw)]

    def test_decompression_bomb_is_not_expanded_without_a_cap(
        self, server: ArtifactServer, cache: pathlib.Path, bomb: tuple[str, bytes, bytes]
    ) -> None:
        """With no size or max_size, a gzip bomb is stored compressed, never decoded."""
        name, raw, _ = bomb
        server.control(content_encoding="gzip")
        source = make_source(
            server, cache, url=server.url(name), sha256=hashlib.sha256(raw).hexdigest()
        )
        with source:
            path = source.fetch()
        assert path.stat().st_size == len(raw) < 100_000

    def test_cap_counts_raw_bytes_and_refuses_before_the_body(
        self, server: ArtifactServer, cache: pathlib.Path, bomb: tuple[str, bytes, bytes]
    ) -> None:
        """An encoded body's Content-Length over the cap is refused before any body byte."""
        name, raw, _ = bomb
        # Headers, then a stalled body: awaiting the body would end in a read timeout.
        server.control(mode="stall", delay=30, content_encoding="gzip")
        source = make_source(
            server, cache, url=server.url(name), sha256=hashlib.sha256(raw).hexdigest(),
            max_size=len(raw) - 1, timeout=5.0,
        )  # fmt: skip
        with source, pytest.raises(SizeMismatchError) as info:
            source.fetch()
        assert (info.value.expected, info.value.actual) == (len(raw) - 1, len(raw))
        assert cache_entries(cache) == []

    def test_digest_of_the_decoded_content_is_refused(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        bomb: tuple[str, bytes, bytes],
    ) -> None:
        """Expecting the digest of the decoded bytes fails: the published bytes are the gzip."""
        name, raw, decoded = bomb
        server.control(content_encoding="gzip")
        source = make_source(
            server, cache, url=server.url(name), sha256=hashlib.sha256(decoded).hexdigest(),
            model="m", registry=registry,
        )  # fmt: skip
        with source, pytest.raises(ChecksumMismatchError) as info:
            source.fetch()
        assert info.value.actual == hashlib.sha256(raw).hexdigest()
        assert cache_entries(cache) == []
        assert audited(events) == [(server.url(name), Reason.CHECKSUM_MISMATCH)]
        assert failures(registry) == {Reason.CHECKSUM_MISMATCH: 1.0}

    def test_server_that_compresses_anyway_is_refused(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """A server that gzips the artifact in transit sends other bytes than were published."""
        server.control(mode="gzip")
        with make_source(server, cache) as source, pytest.raises(ChecksumMismatchError) as info:
            source.fetch()
        assert info.value.actual != SHA
        assert cache_entries(cache) == []


@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """Make writes past 64 KiB fail with EFBIG (a full disk, for this process only)."""
    limit = 64 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


class TestCacheFailures:
    @pytest.mark.parametrize(
        "where", [pytest.param("is-a-file", id="cache-dir-is-a-file"), "below-a-file"]
    )
    def test_unusable_cache_dir_is_io_error_before_any_request(
        self,
        server: ArtifactServer,
        tmp_path: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        where: str,
    ) -> None:
        """A cache_dir that is (or lies below) a file fails typed, audited and counted."""
        blocker = tmp_path / "blocker"
        blocker.write_bytes(b"not a directory")
        cache_dir = blocker if where == "is-a-file" else blocker / "cache"
        source = make_source(server, cache_dir, model="m", registry=registry)
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.IO_ERROR
        assert info.value.path == str(source.path)
        assert "cannot be removed" in str(info.value)
        assert isinstance(info.value.__cause__, NotADirectoryError)
        assert server.requests() == 0
        assert blocker.read_bytes() == b"not a directory"
        assert audited(events) == [(str(source.path), Reason.IO_ERROR)]
        assert failures(registry) == {Reason.IO_ERROR: 1.0}

    def test_write_failure_is_io_error_not_fetch_error(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        file_size_limit: int,
    ) -> None:
        """A disk that fills up mid-download is a local io_error, not retried, no temp left."""
        assert len(DATA) > file_size_limit
        source = make_source(server, cache, model="m", registry=registry)
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.IO_ERROR
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.EFBIG
        assert server.requests() == 1
        assert cache_entries(cache) == []
        assert audited(events) == [(str(source.path), Reason.IO_ERROR)]
        assert failures(registry) == {Reason.IO_ERROR: 1.0}

    @pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() == 0,
        reason="permission bits do not stop root (the disk-full test covers the same path)",
    )
    def test_read_only_cache_dir_is_io_error_before_any_request(
        self, server: ArtifactServer, cache: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A cache_dir the process cannot write fails with io_error and sends no request."""
        cache.mkdir()
        cache.chmod(0o500)
        try:
            source = make_source(server, cache, model="m", registry=registry)
            with source, pytest.raises(IntegrityError) as info:
                source.fetch()
        finally:
            cache.chmod(0o700)
        assert info.value.reason is Reason.IO_ERROR
        assert isinstance(info.value.__cause__, PermissionError)
        assert server.requests() == 0
        assert failures(registry) == {Reason.IO_ERROR: 1.0}

    def test_network_failure_is_fetch_error_not_io_error(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """A connection cut mid-body is fetch_error against the URL, after the retries."""
        server.control(mode="truncate")
        source = make_source(server, cache, model="m", registry=registry)
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert audited(events) == [(server.url(), Reason.FETCH_ERROR)]
        assert failures(registry) == {Reason.FETCH_ERROR: 1.0}

    def test_fifo_at_the_cache_path_is_audited_removed_and_replaced(
        self, server: ArtifactServer, cache: pathlib.Path, events: list[Event]
    ) -> None:
        """A FIFO planted under the cache name never blocks: it is refused, removed, refetched."""
        cache.mkdir()
        os.mkfifo(cache / SHA)
        with make_source(server, cache) as source:
            path = source.fetch()
        assert path.read_bytes() == DATA
        assert audited(events) == [(str(path), Reason.UNSAFE_PATH)]

    def test_directory_at_the_cache_path_fails_typed_without_a_request(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """A directory under the cache name cannot be removed: unsafe_path, once, no download."""
        (cache / SHA).mkdir(parents=True)
        source = make_source(server, cache, model="m", registry=registry)
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.UNSAFE_PATH
        assert "cannot be removed" in str(info.value)
        assert isinstance(info.value.__cause__, IsADirectoryError)
        assert (cache / SHA).is_dir()
        assert server.requests() == 0
        assert audited(events) == [(str(source.path), Reason.UNSAFE_PATH)]
        assert failures(registry) == {Reason.UNSAFE_PATH: 1.0}

    def test_evict_that_cannot_remove_the_copy_is_typed(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """evict() raises an io_error IntegrityError, never a bare OSError."""
        (cache / SHA).mkdir(parents=True)
        with make_source(server, cache) as source, pytest.raises(IntegrityError) as info:
            source.evict()
        assert info.value.reason is Reason.IO_ERROR
        assert isinstance(info.value.__cause__, IsADirectoryError)

    def test_interrupted_download_leaves_no_temporary_file(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """Ctrl-C in the middle of the body removes the .part file; nothing looks complete."""
        chunks_seen = 0

        class InterruptingStream(httpx.SyncByteStream):
            def __init__(self, inner: httpx.SyncByteStream) -> None:
                self.inner = inner

            def __iter__(self) -> Iterator[bytes]:
                nonlocal chunks_seen
                for chunk in self.inner:
                    chunks_seen += 1
                    assert any(n.endswith(".part") for n in cache_entries(cache))
                    yield chunk
                    raise KeyboardInterrupt

            def close(self) -> None:
                self.inner.close()

        class InterruptingTransport(httpx.HTTPTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                response = super().handle_request(request)
                assert isinstance(response.stream, httpx.SyncByteStream)
                response.stream = InterruptingStream(response.stream)
                return response

        with (
            httpx.Client(transport=InterruptingTransport()) as client,
            make_source(server, cache, client=client) as source,
            pytest.raises(KeyboardInterrupt),
        ):
            source.fetch()
        assert chunks_seen == 1
        assert cache_entries(cache) == []


def start_workers(server: ArtifactServer, cache: pathlib.Path, count: int) -> list[FetchWorker]:
    """Start ``count`` processes that fetch the artifact into ``cache``; wait until ready."""
    workers = [
        FetchWorker("http", server.url(), sha256=SHA, cache_dir=cache, deadline=60)
        for _ in range(count)
    ]
    for worker in workers:
        worker.wait_ready()
    return workers


class TestOneDownloadPerHost:
    def test_four_processes_download_once(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """Four processes fetching one artifact into one cache make exactly one GET."""
        # Slow enough (~0.8 s) that every other process finds the download under way.
        server.control(mode="slow", chunk=16384, delay=0.05)
        workers = start_workers(server, cache, 4)
        try:
            for worker in workers:
                worker.go()
            results = [worker.result() for worker in workers]
        finally:
            for worker in workers:
                worker.close()
        assert results == [f"OK {SHA}"] * 4
        assert server.requests() == 1
        assert cache_entries(cache) == [SHA]

    def test_holder_killed_mid_download_another_process_completes(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """SIGKILL of the downloading process frees its lock; a waiter downloads and verifies."""
        server.control(mode="slow", chunk=8192, delay=0.1)  # ~3 s: killed long before the end
        holder, waiter = start_workers(server, cache, 2)
        try:
            holder.go()
            deadline = time.monotonic() + 30
            # Mid-download: the holder's GET reached the server and its .part file exists.
            while not (
                server.requests() == 1 and any(n.endswith(".part") for n in cache_entries(cache))
            ):
                assert time.monotonic() < deadline, "the holder never started its download"
                time.sleep(0.01)  # sleep-ok: polling for a condition, bounded by a deadline
            waiter.go()  # blocks on the holder's lock
            holder.kill()
            server.control(mode="ok")
            result = waiter.result()
        finally:
            holder.close()
            waiter.close()
        assert result == f"OK {SHA}"
        assert server.requests() == 2
        assert read_verified(cache / SHA, sha256=SHA, size=len(DATA)) == DATA
        # The killed holder's temporary file is all it left: hidden, never the final name.
        assert [n for n in cache_entries(cache) if n != SHA] == [
            n for n in cache_entries(cache) if n.startswith(f".{SHA}.") and n.endswith(".part")
        ]

    def test_waiter_times_out_typed_without_a_request(
        self,
        server: ArtifactServer,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """A fetch that cannot get the lock in lock_timeout fails with timeout, audited."""
        source = make_source(server, cache, model="m", registry=registry, lock_timeout=0.2)
        cache.mkdir()
        holder = filelock.FileLock(source.lock_path, thread_local=False)
        with holder, source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.TIMEOUT
        assert info.value.expected == 0.2
        assert server.requests() == 0
        assert cache_entries(cache) == []
        assert audited(events) == [(server.url(), Reason.TIMEOUT)]
        assert failures(registry) == {Reason.TIMEOUT: 1.0}

    def test_lock_wait_defaults_to_the_deadline(
        self, server: ArtifactServer, cache: pathlib.Path
    ) -> None:
        """Without lock_timeout a waiter waits as long as one attempt's deadline."""
        with make_source(server, cache, deadline=42.0) as source:
            assert source.lock_timeout == 42.0
            assert source.lock_path == cache / f".{SHA}.lock"

    def test_copy_completed_while_waiting_is_served_without_a_request(
        self, server: ArtifactServer, cache: pathlib.Path, events: list[Event]
    ) -> None:
        """After getting the lock the cache is checked again: no second download."""
        source = make_source(server, cache)
        cache.mkdir()
        holder = filelock.FileLock(source.lock_path, thread_local=False)
        holder.acquire()
        done: list[pathlib.Path] = []
        thread = threading.Thread(target=lambda: done.append(source.fetch()))
        thread.start()
        try:
            # The waiter is blocked on the lock; "another process" completes the copy.
            (cache / SHA).write_bytes(DATA)
        finally:
            holder.release()
        thread.join(timeout=30)
        source.close()
        assert done == [cache / SHA]
        assert server.requests() == 0
        assert not audited(events)
