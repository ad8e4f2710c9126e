"""FsspecSource against a real S3 endpoint (moto's server on 127.0.0.1, s3fs as client).

Also: a hand-built offline Hugging Face Hub cache (a tampered blob is refused), file://
URLs, and unit tests of URL, option and error handling (Azure's end-to-end tests, against
Azurite, are in test_fsspec_azure.py).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import pathlib
import random
import sys
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
from clarity_resilience.sources import FsspecSource, read_manifest

try:
    import s3fs  # noqa: F401
    from s3_server import SECRET_KEY, MotoS3, put
except ImportError:  # pragma: no cover - CI installs them
    MotoS3 = None  # type: ignore[assignment,misc]

DATA = random.Random(20261202).randbytes(256 * 1024)
SHA = hashlib.sha256(DATA).hexdigest()
OTHER = random.Random(7).randbytes(256 * 1024)
BUCKET = "models"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_backoff")]


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    """Run moto's S3 server in this process for the module, with a versioned bucket."""
    if MotoS3 is None:
        requirements.missing("moto[server] and s3fs")
    with MotoS3() as server:
        server.client.create_bucket(Bucket=BUCKET)
        server.client.put_bucket_versioning(
            Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"}
        )
        yield server


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """Return an object key of this test's own."""
    return hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16] + ".bin"


def need(module: str) -> None:
    """Fail in CI, skip elsewhere, when ``module`` is not installed."""
    try:
        importlib.import_module(module)
    except ImportError:
        requirements.missing(module)


def s3_source(s3: MotoS3, key: str, cache: pathlib.Path, **options: Any) -> FsspecSource:
    options.setdefault("sha256", SHA)
    port = options.pop("port", None)
    return FsspecSource(
        f"s3://{BUCKET}/{key}",
        cache_dir=cache,
        storage_options=s3.storage_options(port),
        **options,
    )


class TestS3:
    def test_accepts_and_serves_the_cached_copy_without_a_request(
        self, s3: MotoS3, key: str, cache: pathlib.Path, events: list[Event]
    ) -> None:
        """A matching object is downloaded once, then served from the verified cache."""
        put(s3, BUCKET, key, DATA)
        with s3_source(s3, key, cache, size=len(DATA)) as source:
            first = source.fetch()
            second = source.fetch()
        assert first == second == cache / SHA
        assert cr.read_verified(first, sha256=SHA, size=len(DATA)) == DATA
        assert s3.gets(BUCKET, key) == 1
        passed = [e.path for e in events if isinstance(e, IntegrityCheckPassed)]
        assert passed[:2] == [f"s3://{BUCKET}/{key}", str(cache / SHA)]

    def test_model_guard_loads_from_the_store(
        self, s3: MotoS3, key: str, cache: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """ModelGuard(source=FsspecSource) fetches, verifies and loads like HttpSource."""
        put(s3, BUCKET, key, DATA)
        source = s3_source(s3, key, cache)
        guard = cr.ModelGuard("m", source=source, loader=bytes, registry=registry)
        assert guard.load() == DATA
        assert guard.model == DATA

    def test_replaced_object_is_refused(
        self,
        s3: MotoS3,
        key: str,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """An object overwritten with other bytes is refused, not retried, not cached."""
        put(s3, BUCKET, key, DATA)
        put(s3, BUCKET, key, OTHER)
        source = s3_source(s3, key, cache, model="m", registry=registry, attempts=3)
        with source, pytest.raises(ChecksumMismatchError) as info:
            source.fetch()
        assert info.value.actual == hashlib.sha256(OTHER).hexdigest()
        assert s3.gets(BUCKET, key) == 1
        assert cache_entries(cache) == []
        assert audited(events) == [(f"s3://{BUCKET}/{key}", Reason.CHECKSUM_MISMATCH)]
        assert failures(registry) == {Reason.CHECKSUM_MISMATCH: 1.0}

    def test_pinned_older_version_is_served(
        self, s3: MotoS3, key: str, cache: pathlib.Path
    ) -> None:
        """version_id fetches that version even after the key was overwritten."""
        version = put(s3, BUCKET, key, DATA)
        put(s3, BUCKET, key, OTHER)
        assert version is not None
        with s3_source(s3, key, cache, version_id=version) as source:
            path = source.fetch()
        assert cr.read_verified(path, sha256=SHA) == DATA

    def test_store_checksum_mismatch_is_refused_before_any_body_byte(
        self,
        s3: MotoS3,
        key: str,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """S3's own ChecksumSHA256 of another object refuses it without a GET."""
        put(s3, BUCKET, key, OTHER, checksum=True)
        with ThreadedFaultProxy("127.0.0.1", s3.port, seed=1) as proxy:
            source = s3_source(s3, key, cache, port=proxy.port, model="m", registry=registry)
            with source, pytest.raises(ChecksumMismatchError) as info:
                source.fetch()
            downstream = proxy.bytes_downstream
        assert "before downloading" in str(info.value)
        assert info.value.actual == hashlib.sha256(OTHER).hexdigest()
        assert s3.gets(BUCKET, key) == 0
        assert downstream < 16 * 1024  # headers only, never the 256 KiB body
        assert cache_entries(cache) == []
        assert audited(events) == [(f"s3://{BUCKET}/{key}", Reason.CHECKSUM_MISMATCH)]
        assert failures(registry) == {Reason.CHECKSUM_MISMATCH: 1.0}

    def test_matching_store_checksum_is_accepted(
        self, s3: MotoS3, key: str, cache: pathlib.Path
    ) -> None:
        """An object whose ChecksumSHA256 is the pinned digest downloads normally."""
        put(s3, BUCKET, key, DATA, checksum=True)
        head = s3.client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
        assert base64.b64decode(head["ChecksumSHA256"]).hex() == SHA
        with s3_source(s3, key, cache) as source:
            assert cr.read_verified(source.fetch(), sha256=SHA) == DATA

    def test_missing_object_is_permanent(
        self, s3: MotoS3, key: str, cache: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A 404 is fetch_error after one attempt: never retried."""
        source = s3_source(s3, key, cache, model="m", registry=registry, attempts=3)
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert isinstance(info.value.__cause__, FileNotFoundError)
        assert "after 1 attempt(s)" in str(info.value)
        assert failures(registry) == {Reason.FETCH_ERROR: 1.0}

    def test_announced_size_over_the_cap_is_refused_before_the_body(
        self, s3: MotoS3, key: str, cache: pathlib.Path
    ) -> None:
        """An object larger than ``size`` is refused on its HEAD: no GET."""
        put(s3, BUCKET, key, DATA)
        source = s3_source(s3, key, cache, size=len(DATA) - 1)
        with source, pytest.raises(SizeMismatchError) as info:
            source.fetch()
        assert info.value.actual == len(DATA)
        assert s3.gets(BUCKET, key) == 0

    def test_one_get_streams_an_object_of_many_chunks(
        self, s3: MotoS3, key: str, cache: pathlib.Path
    ) -> None:
        """A multi-chunk object comes through one GET, not a ranged GET per read."""
        big = random.Random(12).randbytes((5 << 20) + 123)  # 6 reads of at most 1 MiB
        digest = hashlib.sha256(big).hexdigest()
        put(s3, BUCKET, key, big)
        with s3_source(s3, key, cache, sha256=digest, size=len(big)) as source:
            path = source.fetch()
        assert cr.read_verified(path, sha256=digest) == big
        assert s3.gets(BUCKET, key) == 1

    def test_credentials_never_reach_events_errors_or_metrics(
        self,
        s3: MotoS3,
        key: str,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """Neither the secret key nor URL user info appears anywhere a fetch reports."""
        put(s3, BUCKET, key, DATA)
        good = s3_source(s3, key, cache, model="m", registry=registry)
        good.fetch()
        missing = s3_source(s3, "absent.bin", cache / "x", model="m", registry=registry)
        userinfo = FsspecSource(
            f"s3://AKIAUSER:url-password-secret@{BUCKET}/{key}?token=query-secret",
            sha256=SHA,
            cache_dir=cache / "y",
            storage_options=s3.storage_options(),
            model="m",
            registry=registry,
            attempts=1,
        )
        errors = []
        for source in (missing, userinfo):
            with pytest.raises(IntegrityError) as info:
                source.fetch()
            errors.append(info.value)
        reported = " ".join(
            [
                *(f"{e!s} {e!r} {e.path}" for e in errors),
                *(repr(e) for e in events),
                repr(good),
                repr(userinfo),
                generate_latest(registry).decode(),
            ]
        )
        for secret in (SECRET_KEY, "url-password-secret", "query-secret"):
            assert secret not in reported
        assert len(events) >= 3


class TestS3Network:
    def test_latency_is_tolerated(self, s3: MotoS3, key: str, cache: pathlib.Path) -> None:
        """100 ms of latency on every chunk slows the fetch but it verifies."""
        put(s3, BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", s3.port, seed=2) as proxy:
            proxy.latency(100)
            with s3_source(s3, key, cache, port=proxy.port, timeout=5.0) as source:
                path = source.fetch()
        assert cr.read_verified(path, sha256=SHA) == DATA

    def test_latency_over_the_timeout_fails_with_timeout(
        self, s3: MotoS3, key: str, cache: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A link slower than ``timeout`` on every attempt fails typed: reason timeout."""
        put(s3, BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", s3.port, seed=3) as proxy:
            proxy.latency(1500)
            source = s3_source(
                s3, key, cache, port=proxy.port, timeout=0.3, attempts=2, model="m",
                registry=registry,
            )  # fmt: skip
            start = time.monotonic()
            with source, pytest.raises(IntegrityError) as info:
                source.fetch()
        assert info.value.reason is Reason.TIMEOUT
        assert time.monotonic() - start < 20
        assert failures(registry) == {Reason.TIMEOUT: 1.0}
        assert cache_entries(cache) == []

    def test_a_trickle_is_abandoned_at_the_deadline(
        self, s3: MotoS3, key: str, cache: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Bytes that keep coming, too slowly: the read in flight is given up at the deadline.

        No socket wait is long (each piece arrives within ``timeout``), so only the
        attempt's deadline ends it: mid-read, with the connection closed, not after the
        whole object has trickled in.
        """
        put(s3, BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", s3.port, seed=8) as proxy:
            proxy.bandwidth(16)  # 16 KB/s: the 256 KiB object would take 16 s
            source = s3_source(
                s3, key, cache, port=proxy.port, deadline=1.0, attempts=1, model="m",
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
        self, s3: MotoS3, key: str, cache: pathlib.Path, retries: RetryLog
    ) -> None:
        """A connection reset is transient: retried, and the attempt after healing verifies."""
        put(s3, BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", s3.port, seed=4) as proxy:
            toxic = proxy.reset_peer()
            retries.actions.append(lambda details: proxy.remove_toxic(toxic))
            with s3_source(s3, key, cache, port=proxy.port, attempts=3) as source:
                path = source.fetch()
        assert cr.read_verified(path, sha256=SHA) == DATA
        assert len(retries) == 1

    def test_persistent_resets_give_up_after_the_attempts(
        self, s3: MotoS3, key: str, cache: pathlib.Path, retries: RetryLog
    ) -> None:
        """A link that never heals gets exactly ``attempts`` tries, then fetch_error."""
        put(s3, BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", s3.port, seed=5) as proxy:
            proxy.reset_peer()
            source = s3_source(s3, key, cache, port=proxy.port, attempts=3)
            with source, pytest.raises(IntegrityError) as info:
                source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert len(retries) == 2
        assert cache_entries(cache) == []

    @pytest.mark.slow  # two moto process starts: ~10 s
    def test_store_killed_mid_download_and_restarted(
        self, key: str, cache: pathlib.Path, retries: RetryLog
    ) -> None:
        """moto SIGKILLed mid-download: the attempt fails, the store restarts, a retry verifies."""
        if MotoS3 is None:
            requirements.missing("moto[server] and s3fs")
        # One streamed GET of 24 MiB through an 8 MB/s link: the kill lands mid-body, with
        # more left than the socket buffers and the proxy's read-ahead can hold (~10 MiB).
        big = random.Random(11).randbytes(24 << 20)
        digest = hashlib.sha256(big).hexdigest()
        with MotoS3(process=True) as store:

            def publish() -> None:
                store.client.create_bucket(Bucket=BUCKET)
                put(store, BUCKET, key, big)

            publish()
            # The first retry finds the store dead: start it again, as a supervisor would
            # (moto keeps its objects in memory: publish them again).
            retries.actions.append(
                lambda details: None if store.alive else (store.start(), publish())
            )
            with ThreadedFaultProxy("127.0.0.1", store.port, seed=6) as proxy:
                proxy.bandwidth(8000)  # ~3 s for the object
                source = s3_source(store, key, cache, port=proxy.port, sha256=digest)
                # Killed once the first MiB is through, seconds before the end.
                path = kill_mid_download(proxy, store.kill, source)
                partial = [n for n in cache_entries(cache) if n.endswith(".part")]
        assert path == cache / digest
        assert cr.read_verified(path, sha256=digest) == big
        assert len(retries) >= 1
        assert partial == []  # the failed attempt's temporary file was removed

    @pytest.mark.slow
    def test_four_processes_download_once(self, s3: MotoS3, key: str, cache: pathlib.Path) -> None:
        """Four processes fetching one object into one cache make exactly one GET."""
        put(s3, BUCKET, key, DATA)
        with ThreadedFaultProxy("127.0.0.1", s3.port, seed=7) as proxy:
            proxy.bandwidth(400)  # ~0.7 s: the others find the download under way
            workers = [
                FetchWorker(
                    "fsspec",
                    f"s3://{BUCKET}/{key}",
                    sha256=SHA,
                    cache_dir=cache,
                    storage_options=s3.storage_options(proxy.port),
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
        assert s3.gets(BUCKET, key) == 1


class TestRemoteManifest:
    def test_manifest_is_fetched_verified_and_parsed(
        self, s3: MotoS3, cache: pathlib.Path
    ) -> None:
        """read_manifest fetches a pinned manifest through a source and parses it."""
        text = f"{SHA}  model.bin\n".encode()
        put(s3, BUCKET, "manifest.sha256", text)
        source = s3_source(s3, "manifest.sha256", cache, sha256=hashlib.sha256(text).hexdigest())
        manifest = read_manifest(source)
        assert {name: e.sha256 for name, e in manifest.entries.items()} == {"model.bin": SHA}

    def test_tampered_manifest_is_refused(self, s3: MotoS3, cache: pathlib.Path) -> None:
        """A manifest whose bytes are not the pinned ones is never parsed."""
        text = f"{SHA}  model.bin\n".encode()
        put(s3, BUCKET, "manifest2.sha256", text.replace(b"model", b"other"))
        source = s3_source(s3, "manifest2.sha256", cache, sha256=hashlib.sha256(text).hexdigest())
        with pytest.raises(ChecksumMismatchError):
            read_manifest(source)


def build_hub_cache(root: pathlib.Path, data: bytes, *, commit: str = COMMIT) -> pathlib.Path:
    """Lay out a Hugging Face Hub cache for org/model at ``commit``; return the blob."""
    repo = root / "models--org--model"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.bin").symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return blob


class TestHuggingFaceHub:
    @pytest.fixture
    def hub(self, tmp_path: pathlib.Path) -> pathlib.Path:
        need("huggingface_hub")
        return tmp_path / "hub"

    def hf_source(self, hub: pathlib.Path, cache: pathlib.Path, **options: Any) -> FsspecSource:
        return FsspecSource(
            f"hf://org/model@{options.pop('revision', COMMIT)}/model.bin",
            sha256=SHA,
            cache_dir=cache,
            storage_options={"cache_dir": str(hub), "local_files_only": True},
            **options,
        )

    def test_file_from_an_offline_hub_cache_is_verified(
        self, hub: pathlib.Path, cache: pathlib.Path
    ) -> None:
        """A pinned file is read from the Hub cache and re-hashed into ours."""
        build_hub_cache(hub, DATA)
        with self.hf_source(hub, cache) as source:
            path = source.fetch()
        assert path == cache / SHA
        assert cr.read_verified(path, sha256=SHA) == DATA

    def test_tampered_blob_in_the_hub_cache_is_refused(
        self, hub: pathlib.Path, cache: pathlib.Path, events: list[Event]
    ) -> None:
        """huggingface_hub serves a tampered blob without complaint; the source refuses it."""
        blob = build_hub_cache(hub, DATA)
        blob.write_bytes(OTHER)
        with self.hf_source(hub, cache) as source, pytest.raises(ChecksumMismatchError):
            source.fetch()
        assert cache_entries(cache) == []
        assert [r for _, r in audited(events)] == [Reason.CHECKSUM_MISMATCH]

    @pytest.mark.parametrize("revision", ["main", "v1.0", "0123abc", COMMIT.upper()])
    def test_unpinned_revision_is_refused(
        self, hub: pathlib.Path, cache: pathlib.Path, revision: str
    ) -> None:
        """A branch, tag or short hash can move: refused unless the caller opts in."""
        with pytest.raises(ValueError, match="40-hex commit"):
            self.hf_source(hub, cache, revision=revision)

    def test_missing_revision_is_refused(self, cache: pathlib.Path) -> None:
        """An hf:// URL without @revision would follow main: refused."""
        with pytest.raises(ValueError, match="40-hex commit"):
            FsspecSource("hf://org/model/model.bin", sha256=SHA, cache_dir=cache)

    def test_opt_in_accepts_a_branch_and_still_verifies(
        self, hub: pathlib.Path, cache: pathlib.Path
    ) -> None:
        """allow_unpinned_revision=True follows the branch; the digest still decides."""
        build_hub_cache(hub, DATA)
        source = self.hf_source(hub, cache, revision="main", allow_unpinned_revision=True)
        assert source.revision == "main"
        assert cr.read_verified(source.fetch(), sha256=SHA) == DATA


class TestUrlsAndOptions:
    @pytest.mark.parametrize(
        ("url", "extra", "module"),
        [
            ("gs://bucket/model.bin", "gcs", "gcsfs"),
            ("gcs://bucket/model.bin", "gcs", "gcsfs"),
            ("az://container/model.bin", "azure", "adlfs"),
            ("abfs://container/model.bin", "azure", "adlfs"),
            ("s3://bucket/model.bin", "s3", "s3fs"),
            (f"hf://org/model@{COMMIT}/model.bin", "hf", "huggingface_hub"),
        ],
    )
    def test_missing_implementation_names_the_extra(
        self, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch, url: str, extra: str,
        module: str,
    ) -> None:  # fmt: skip
        """Without the store's package, creating a source says which extra to install."""
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(cr.ClarityResilienceError) as info:
            FsspecSource(url, sha256=SHA, cache_dir=cache)
        assert isinstance(info.value, ImportError)
        assert f"clarity-resilience[{extra}]" in str(info.value)

    @pytest.mark.parametrize(
        ("url", "kwargs", "match"),
        [
            ("https://host/model.bin", {}, "HttpSource"),
            ("simplecache::s3://bucket/model.bin", {}, "plain fsspec URL"),
            ("model.bin", {}, "plain fsspec URL"),
            ("gs://bucket/model.bin", {"version_id": "3"}, "s3:// URLs only"),
            ("s3://bucket/model.bin", {"version_id": ""}, "s3:// URLs only"),
            ("nosuchproto://x/model.bin", {}, "unknown protocol"),
            ("s3://bucket/model.bin", {"deadline": float("inf")}, "deadline"),
            ("s3://bucket/model.bin", {"lock_timeout": float("nan")}, "lock_timeout"),
        ],
    )
    def test_bad_urls_and_options_are_refused(
        self, cache: pathlib.Path, url: str, kwargs: dict[str, Any], match: str
    ) -> None:
        """Each unsupported URL or option raises ValueError naming the problem."""
        with pytest.raises(ValueError, match=match):
            FsspecSource(url, sha256=SHA, cache_dir=cache, **kwargs)

    def test_display_url_has_no_credentials(self, cache: pathlib.Path) -> None:
        """User info and query strings are dropped from the reported URL."""
        source = FsspecSource(
            "s3://user:pass@bucket/model.bin?x=secret", sha256=SHA, cache_dir=cache
        )
        assert source.display_url == "s3://bucket/model.bin"
        assert "pass" not in repr(source)

    def test_file_url_is_fetched_and_verified(
        self, tmp_path: pathlib.Path, cache: pathlib.Path
    ) -> None:
        """A file:// URL goes through the same verified cache."""
        (tmp_path / "model.bin").write_bytes(DATA)
        with FsspecSource(f"file://{tmp_path}/model.bin", sha256=SHA, cache_dir=cache) as s:
            assert cr.read_verified(s.fetch(), sha256=SHA) == DATA
        (tmp_path / "model.bin").write_bytes(OTHER)
        with (
            FsspecSource(
                f"file://{tmp_path}/model.bin", sha256=SHA, cache_dir=cache / "2"
            ) as source,
            pytest.raises(ChecksumMismatchError),
        ):
            source.fetch()


def client_error(status: int, code: str) -> Exception:
    from botocore.exceptions import ClientError

    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


class TestErrorClassification:
    @pytest.fixture
    def source(self, cache: pathlib.Path) -> FsspecSource:
        need("botocore")
        return FsspecSource(
            "s3://bucket/model.bin",
            sha256=SHA,
            cache_dir=cache,
            storage_options={"key": "AKIA", "secret": "hidden-secret-value"},
        )

    @pytest.mark.parametrize(
        ("make", "transient"),
        [
            (lambda: client_error(503, "ServiceUnavailable"), True),
            (lambda: client_error(500, "InternalError"), True),
            (lambda: client_error(503, "SlowDown"), True),
            (lambda: client_error(400, "ThrottlingException"), True),
            (lambda: client_error(429, "TooManyRequests"), True),
            (lambda: client_error(403, "AccessDenied"), False),
            (lambda: client_error(404, "NoSuchKey"), False),
            (lambda: client_error(400, "InvalidArgument"), False),
            (lambda: ConnectionResetError(104, "reset"), True),
            (lambda: TimeoutError("slow"), True),
            (lambda: PermissionError("denied"), False),
            (lambda: FileNotFoundError("gone"), False),
            (lambda: ValueError("bug"), False),
        ],
    )
    def test_transient_and_permanent_failures(
        self, source: FsspecSource, make: Any, transient: bool
    ) -> None:
        """Throttling, 5xx, resets and timeouts are retried; 403, 404 and the rest are not."""
        assert bool(source._transient(make())) is transient

    def test_botocore_connection_errors_are_transient(self, source: FsspecSource) -> None:
        """botocore's endpoint, read-timeout and closed-connection errors are transient."""
        from botocore.exceptions import (
            ConnectionClosedError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        for error in (
            EndpointConnectionError(endpoint_url="http://x"),
            ReadTimeoutError(endpoint_url="http://x"),
            ConnectionClosedError(endpoint_url="http://x"),
        ):
            assert source._transient(error) is True

    def test_translated_error_keeps_its_status(self, source: FsspecSource) -> None:
        """s3fs's OSError for a 503 is transient through its ClientError cause."""
        error = OSError(5, "Service Unavailable")
        error.__cause__ = client_error(503, "ServiceUnavailable")
        assert source._transient(error) is True
        _, reason, actual = source._failure(error)
        assert (reason, actual) == (Reason.FETCH_ERROR, 503)

    def test_failure_text_is_scrubbed_of_secrets(self, source: FsspecSource) -> None:
        """A transport message quoting a secret option never carries it on."""
        problem, _, _ = source._failure(RuntimeError("bad key hidden-secret-value"))
        assert "hidden-secret-value" not in problem
        assert "***" in problem
