"""HttpSource against a real artifact server process on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import os
import pathlib
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import stamina
from artifact_store import ArtifactStore
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


@pytest.fixture(autouse=True)
def no_backoff() -> Iterator[None]:
    """Make stamina skip backoff sleeps, keeping each source's own ``attempts``."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def cache(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "cache"


def make_source(server: ArtifactServer, cache: pathlib.Path, **kwargs: Any) -> HttpSource:
    kwargs.setdefault("sha256", SHA)
    return HttpSource(kwargs.pop("url", server.url()), cache_dir=cache, **kwargs)


def cache_entries(cache: pathlib.Path) -> list[str]:
    return sorted(os.listdir(cache)) if cache.exists() else []


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
