"""FsspecSource against a real GCS JSON API endpoint (gcp-storage-emulator), gcsfs as client.

The emulator runs on 127.0.0.1 (in this process, or as a child process that can be
killed); faults are injected with ThreadedFaultProxy between gcsfs and the emulator.
Real GCS authentication is not exercised: a service-account credential is refreshed
against a loopback token endpoint, and the emulator accepts any bearer token.
"""

from __future__ import annotations

import hashlib
import pathlib
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requirements
from artifact_store import FetchWorker
from prometheus_client import CollectorRegistry, generate_latest
from store_testing import RetryLog, audited, cache_entries, failures, kill_mid_download

import clarity_resilience as cr
from clarity_resilience import ChecksumMismatchError, IntegrityError, Reason, SizeMismatchError
from clarity_resilience.chaos import ThreadedFaultProxy
from clarity_resilience.instrumentation import Event, IntegrityCheckPassed
from clarity_resilience.sources import FsspecSource

try:
    import gcp_storage_emulator  # noqa: F401
    import gcsfs  # noqa: F401
    from gcs_server import ACCESS_TOKEN, FakeGcs, TokenServer, service_account
except ImportError:  # pragma: no cover - CI installs them
    FakeGcs = None  # type: ignore[assignment,misc]

DATA = random.Random(20261202).randbytes(256 * 1024)
SHA = hashlib.sha256(DATA).hexdigest()
OTHER = random.Random(7).randbytes(256 * 1024)
BUCKET = "models"

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_backoff")]


def need_emulator() -> None:
    """Fail in CI, skip elsewhere, without gcp-storage-emulator and gcsfs."""
    if FakeGcs is None:
        requirements.missing("gcp-storage-emulator and gcsfs")


@pytest.fixture(scope="module")
def gcs() -> Iterator[FakeGcs]:
    """Run the GCS emulator in this process for the module, with one bucket."""
    need_emulator()
    with FakeGcs() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """Return an object key of this test's own."""
    return "dir/" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16] + ".bin"


def gcs_source(gcs: FakeGcs, key: str, cache: pathlib.Path, **options: Any) -> FsspecSource:
    options.setdefault("sha256", SHA)
    port = options.pop("port", None)
    storage_options = options.pop("storage_options", None) or gcs.storage_options(port)
    return FsspecSource(
        f"gs://{BUCKET}/{key}", cache_dir=cache, storage_options=storage_options, **options
    )


class TestGcs:
    def test_accepts_and_serves_the_cached_copy_without_a_request(
        self, gcs: FakeGcs, key: str, cache: pathlib.Path, events: list[Event]
    ) -> None:
        """A matching object is downloaded once, then served from the verified cache."""
        gcs.upload(BUCKET, key, DATA)
        with gcs_source(gcs, key, cache, size=len(DATA)) as source:
            first = source.fetch()
            seen = gcs.object_requests(BUCKET, key)
            second = source.fetch()
        assert first == second == cache / SHA
        assert cr.read_verified(first, sha256=SHA, size=len(DATA)) == DATA
        assert gcs.downloads(BUCKET, key) == 1
        assert gcs.object_requests(BUCKET, key) == seen  # the second fetch sent nothing
        passed = [e.path for e in events if isinstance(e, IntegrityCheckPassed)]
        assert passed[:2] == [f"gs://{BUCKET}/{key}", str(cache / SHA)]

    def test_model_guard_loads_from_the_store(
        self, gcs: FakeGcs, key: str, cache: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """ModelGuard(source=FsspecSource) fetches, verifies and loads a gs:// object."""
        gcs.upload(BUCKET, key, DATA)
        source = gcs_source(gcs, key, cache)
        guard = cr.ModelGuard("m", source=source, loader=bytes, registry=registry)
        assert guard.load() == DATA
        assert guard.model == DATA

    def test_replaced_object_is_refused(
        self,
        gcs: FakeGcs,
        key: str,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        retries: RetryLog,
    ) -> None:
        """An object overwritten with other bytes is refused, not retried, not cached."""
        gcs.upload(BUCKET, key, DATA)
        gcs.upload(BUCKET, key, OTHER)
        source = gcs_source(gcs, key, cache, model="m", registry=registry, attempts=3)
        with source, pytest.raises(ChecksumMismatchError) as info:
            source.fetch()
        assert info.value.actual == hashlib.sha256(OTHER).hexdigest()
        assert gcs.downloads(BUCKET, key) == 1
        assert retries == []
        assert cache_entries(cache) == []
        assert audited(events) == [(f"gs://{BUCKET}/{key}", Reason.CHECKSUM_MISMATCH)]
        assert failures(registry) == {Reason.CHECKSUM_MISMATCH: 1.0}

    def test_missing_object_is_permanent(
        self,
        gcs: FakeGcs,
        key: str,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        retries: RetryLog,
    ) -> None:
        """A 404 is fetch_error after one attempt: never retried."""
        source = gcs_source(gcs, key, cache, model="m", registry=registry, attempts=3)
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert isinstance(info.value.__cause__, FileNotFoundError)
        assert "after 1 attempt(s)" in str(info.value)
        assert retries == []
        assert gcs.object_requests(BUCKET, key) == 1
        assert audited(events) == [(f"gs://{BUCKET}/{key}", Reason.FETCH_ERROR)]
        assert failures(registry) == {Reason.FETCH_ERROR: 1.0}

    @pytest.mark.parametrize(
        "cap",
        [
            pytest.param({"size": len(DATA) - 1}, id="size"),
            pytest.param({"max_size": len(DATA) // 2}, id="max_size"),
        ],
    )
    def test_object_over_the_cap_is_refused_before_the_body(
        self,
        gcs: FakeGcs,
        key: str,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        cap: dict[str, int],
    ) -> None:
        """An object larger than the cap is refused on its metadata: no media GET."""
        gcs.upload(BUCKET, key, DATA)
        source = gcs_source(gcs, key, cache, model="m", registry=registry, **cap)
        with source, pytest.raises(SizeMismatchError) as info:
            source.fetch()
        assert info.value.actual == len(DATA)
        assert gcs.downloads(BUCKET, key) == 0
        assert cache_entries(cache) == []
        assert failures(registry) == {Reason.SIZE_MISMATCH: 1.0}

    def test_credentials_never_reach_events_errors_or_metrics(
        self,
        gcs: FakeGcs,
        key: str,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """A service-account key, its access token and URL user info appear nowhere reported."""
        gcs.upload(BUCKET, key, DATA)
        with TokenServer() as tokens:
            account = service_account(tokens.url)
            options = gcs.storage_options(token=account)
            good = gcs_source(gcs, key, cache, model="m", registry=registry,
                              storage_options=options)  # fmt: skip
            good.fetch()
            missing = gcs_source(gcs, "absent.bin", cache / "x", model="m", registry=registry,
                                 storage_options=options)  # fmt: skip
            userinfo = FsspecSource(
                f"gs://reader:url-password-secret@{BUCKET}/{key}?token=query-secret",
                sha256=SHA,
                cache_dir=cache / "y",
                storage_options=options,
                model="m",
                registry=registry,
                attempts=1,
            )
            errors = []
            for source in (missing, userinfo):
                with pytest.raises(IntegrityError) as info:
                    source.fetch()
                errors.append(info.value)
        # The credential was really used: refreshed at the token endpoint, sent to the store.
        assert tokens.grants
        assert f"Bearer {ACCESS_TOKEN}" in gcs.authorizations
        reported = " ".join(
            [
                *(f"{e!s} {e!r} {e.path}" for e in errors),
                *(repr(e) for e in events),
                repr(good),
                repr(userinfo),
                generate_latest(registry).decode(),
            ]
        )
        key_body = account["private_key"].splitlines()[1]
        for secret in (key_body, ACCESS_TOKEN, "url-password-secret", "query-secret"):
            assert secret not in reported
        assert len(events) >= 3


def http_error(status: int) -> Exception:
    from gcsfs.retry import HttpError

    return HttpError({"code": status, "message": "from the store"})


class TestGcsErrorClassification:
    @pytest.fixture
    def source(self, cache: pathlib.Path) -> FsspecSource:
        need_emulator()
        return FsspecSource(
            "gs://bucket/model.bin",
            sha256=SHA,
            cache_dir=cache,
            storage_options={"token": {"private_key": "hidden-private-key-value"}},
        )

    @pytest.mark.parametrize(
        ("status", "transient"),
        [(503, True), (500, True), (504, True), (429, True), (408, True),
         (401, False), (400, False), (409, False)],
    )  # fmt: skip
    def test_gcsfs_http_errors_by_status(
        self, source: FsspecSource, status: int, transient: bool
    ) -> None:
        """gcsfs's HttpError is retried for 5xx, 408 and 429 only, by its status code."""
        assert bool(source._transient(http_error(status))) is transient

    def test_failure_reports_the_gcs_status(self, source: FsspecSource) -> None:
        """A GCS 503 is a fetch_error whose ``actual`` is the status."""
        _, reason, actual = source._failure(http_error(503))
        assert (reason, actual) == (Reason.FETCH_ERROR, 503)

    def test_gcsfs_mapped_errors(self, source: FsspecSource) -> None:
        """gcsfs's 404 and 403 mappings are permanent; its 502 mapping is transient."""
        import requests

        assert source._transient(FileNotFoundError("b/bucket/o/model.bin")) is False
        assert source._transient(OSError("Forbidden: b/bucket/o/model.bin")) is False
        assert source._transient(requests.exceptions.ProxyError()) is True

    def test_failure_text_is_scrubbed_of_secrets(self, source: FsspecSource) -> None:
        """A transport message quoting a secret inside ``token`` never carries it on."""
        problem, _, _ = source._failure(RuntimeError("bad key hidden-private-key-value"))
        assert "hidden-private-key-value" not in problem
        assert "***" in problem

    def test_quoted_and_query_secrets_are_scrubbed(self, cache: pathlib.Path) -> None:
        """A secret as a URL path quotes it, and a URL query value, are scrubbed too."""
        need_emulator()
        source = FsspecSource(
            "gs://bucket/model.bin?sig=query-signature-value",
            sha256=SHA,
            cache_dir=cache,
            storage_options={"token": {"private_key": "key/with+special=chars"}},
        )
        error = FileNotFoundError(
            "b/bucket/o/model.bin%3Fsig%3Dquery-signature-value key%2Fwith%2Bspecial%3Dchars"
        )
        problem, _, _ = source._failure(error)
        assert "query-signature-value" not in problem
        assert "special" not in problem
        assert problem.count("***") == 2


class TestGcsNetwork:
    def test_latency_is_tolerated(self, gcs: FakeGcs, key: str, cache: pathlib.Path) -> None:
        """100 ms of latency on every chunk slows the fetch but it verifies."""
        gcs.upload(BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", gcs.port, seed=2) as proxy:
            proxy.latency(100)
            with gcs_source(gcs, key, cache, port=proxy.port, timeout=5.0) as source:
                path = source.fetch()
        assert cr.read_verified(path, sha256=SHA) == DATA

    def test_latency_over_the_timeout_fails_with_timeout(
        self,
        gcs: FakeGcs,
        key: str,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        retries: RetryLog,
    ) -> None:
        """A link slower than ``timeout`` fails each attempt once: reason timeout."""
        gcs.upload(BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", gcs.port, seed=3) as proxy:
            proxy.latency(1500)
            source = gcs_source(
                gcs, key, cache, port=proxy.port, timeout=0.3, attempts=2, model="m",
                registry=registry,
            )  # fmt: skip
            start = time.monotonic()
            with source, pytest.raises(IntegrityError) as info:
                source.fetch()
            elapsed = time.monotonic() - start
            connections = proxy.connections_total
        assert info.value.reason is Reason.TIMEOUT
        assert "after 2 attempt(s)" in str(info.value)
        assert len(retries) == 1
        assert connections == 2  # one request per attempt: gcsfs retried nothing itself
        assert elapsed < 20
        assert failures(registry) == {Reason.TIMEOUT: 1.0}
        assert cache_entries(cache) == []

    def test_a_trickle_is_abandoned_at_the_deadline(
        self, gcs: FakeGcs, key: str, cache: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Bytes that keep coming, too slowly: the read in flight is given up at the deadline.

        No socket wait is long (each piece arrives within ``timeout``), so only the
        attempt's deadline ends it: mid-read, with the connection closed, not after the
        whole object has trickled in.
        """
        gcs.upload(BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", gcs.port, seed=8) as proxy:
            proxy.bandwidth(16)  # 16 KB/s: the 256 KiB object would take 16 s
            source = gcs_source(
                gcs, key, cache, port=proxy.port, deadline=1.0, attempts=1, model="m",
                registry=registry,
            )  # fmt: skip
            with source, pytest.raises(IntegrityError) as info:
                source.fetch()
            assert info.value.reason is Reason.TIMEOUT
            assert "deadline" in str(info.value)
            # The rest of the object is never sent: the abandoned connection is closed.
            end = time.monotonic() + 30
            while proxy.active_connections:
                assert time.monotonic() < end, "the abandoned connection stayed open"
                time.sleep(0.01)  # sleep-ok: polling for a condition, bounded by a deadline
            assert proxy.bytes_downstream < len(DATA) // 2
        assert failures(registry) == {Reason.TIMEOUT: 1.0}
        assert cache_entries(cache) == []

    def test_resets_are_retried_until_the_link_heals(
        self, gcs: FakeGcs, key: str, cache: pathlib.Path, retries: RetryLog
    ) -> None:
        """A connection reset is transient: retried by the source, and verifies after healing."""
        gcs.upload(BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", gcs.port, seed=4) as proxy:
            toxic = proxy.reset_peer()
            at_retry: list[int] = []

            def heal(details: Any) -> None:
                at_retry.append(proxy.connections_total)
                proxy.remove_toxic(toxic)

            retries.actions.append(heal)
            with gcs_source(gcs, key, cache, port=proxy.port, attempts=3) as source:
                path = source.fetch()
        assert cr.read_verified(path, sha256=SHA) == DATA
        assert len(retries) == 1
        # aiohttp resends a reset idempotent GET once (RFC 9112): 2 connections, never
        # gcsfs's 6 tries of each.
        assert at_retry == [2]

    def test_persistent_resets_give_up_after_the_attempts(
        self, gcs: FakeGcs, key: str, cache: pathlib.Path, retries: RetryLog
    ) -> None:
        """A link that never heals gets exactly ``attempts`` requests, then fetch_error."""
        gcs.upload(BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", gcs.port, seed=5) as proxy:
            proxy.reset_peer()
            source = gcs_source(gcs, key, cache, port=proxy.port, attempts=3)
            with source, pytest.raises(IntegrityError) as info:
                source.fetch()
            connections = proxy.connections_total
        assert info.value.reason is Reason.FETCH_ERROR
        assert "after 3 attempt(s)" in str(info.value)
        assert len(retries) == 2
        assert connections == 3 * 2  # aiohttp's one resend per attempt, not gcsfs's 6 tries
        assert cache_entries(cache) == []

    @pytest.mark.slow  # an emulator process start, twice, and a 24 MiB object
    def test_store_killed_mid_download_and_restarted(
        self, key: str, cache: pathlib.Path, retries: RetryLog
    ) -> None:
        """The emulator SIGKILLed mid-download: a retry after its restart verifies."""
        need_emulator()
        # Ranged reads of 1, 2, 4... MiB through an 8 MB/s link: the kill lands mid-body.
        big = random.Random(11).randbytes(24 << 20)
        digest = hashlib.sha256(big).hexdigest()
        with FakeGcs(process=True) as store:

            def publish() -> None:
                store.create_bucket(BUCKET)
                store.upload(BUCKET, key, big)

            publish()
            # The first retry finds the store dead: start it again, as a supervisor would
            # (the emulator keeps its objects in memory: publish them again).
            retries.actions.append(
                lambda details: None if store.alive else (store.start(), publish())
            )
            with ThreadedFaultProxy("127.0.0.1", store.port, seed=6) as proxy:
                proxy.bandwidth(8000)
                source = gcs_source(store, key, cache, port=proxy.port, sha256=digest)
                path = kill_mid_download(proxy, store.kill, source)
                partial = [n for n in cache_entries(cache) if n.endswith(".part")]
        assert path == cache / digest
        assert cr.read_verified(path, sha256=digest) == big
        assert len(retries) >= 1
        assert partial == []

    @pytest.mark.slow  # four interpreter starts
    def test_four_processes_download_once(
        self, gcs: FakeGcs, key: str, cache: pathlib.Path
    ) -> None:
        """Four processes fetching one gs:// object into one cache make exactly one download."""
        gcs.upload(BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", gcs.port, seed=7) as proxy:
            proxy.bandwidth(400)  # ~0.7 s: the others find the download under way
            workers = [
                FetchWorker(
                    "fsspec",
                    f"gs://{BUCKET}/{key}",
                    sha256=SHA,
                    cache_dir=cache,
                    storage_options=gcs.storage_options(proxy.port),
                    deadline=60,
                )
                for _ in range(4)
            ]
            try:
                for worker in workers:
                    worker.wait_ready()
                for worker in workers:
                    worker.go()
                results = [worker.result() for worker in workers]
            finally:
                for worker in workers:
                    worker.close()
        assert results == [f"OK {SHA}"] * 4
        assert gcs.downloads(BUCKET, key) == 1
