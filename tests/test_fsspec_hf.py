"""FsspecSource over the Hugging Face Hub protocol: a fake Hub on 127.0.0.1 and its cache.

The Hub (tests/support/hub_server.py) serves repositories from a local directory, LFS
files through a redirect to a "CDN" on another port, and huggingface_hub is the client.
No connection may leave loopback (a guard refuses any other address), and no Xet header
is ever sent, so hf_xet is never used.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requirements
from prometheus_client import CollectorRegistry, generate_latest
from store_testing import RetryLog, audited, cache_entries, failures

import clarity_resilience as cr
from clarity_resilience import ChecksumMismatchError, IntegrityError, Reason, SizeMismatchError
from clarity_resilience.chaos import ThreadedFaultProxy
from clarity_resilience.instrumentation import Event
from clarity_resilience.sources import FsspecSource

try:
    import huggingface_hub
    import huggingface_hub.constants
    from hub_server import COMMIT, FakeHub
except ImportError:  # pragma: no cover - CI installs it
    huggingface_hub = None  # type: ignore[assignment]

DATA = random.Random(20261203).randbytes(300 * 1024)
SHA = hashlib.sha256(DATA).hexdigest()
OTHER = random.Random(11).randbytes(300 * 1024)
REPO = "org/model"
TOKEN = "hf_secretTokenValue0123456789"

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_backoff", "loopback_only")]


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse, and fail the test on, any connection to a non-loopback address."""
    real = socket.create_connection
    refused: list[str] = []

    def guarded(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        if address[0] not in ("127.0.0.1", "localhost", "::1"):
            refused.append(f"{address}" + "".join(__import__("traceback").format_stack(limit=25)))
            raise ConnectionRefusedError(f"a test tried to reach {address[0]}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    yield
    assert refused == [], f"a test tried to leave loopback: {refused}"


@pytest.fixture
def hub(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """Run a fake Hub serving repositories from tmp_path/repos, telemetry off."""
    if huggingface_hub is None:
        requirements.missing("huggingface_hub")
    # What HF_HUB_DISABLE_TELEMETRY=1 sets at import: without it, huggingface_hub's
    # first request headers of a process fetch {HF_ENDPOINT}/api/agent-harnesses.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    with FakeHub(tmp_path / "repos") as server:
        yield server


def hf_source(
    hub: FakeHub, cache: pathlib.Path, path: str = "model.bin", **options: Any
) -> FsspecSource:
    """Return a source of ``repo`` (REPO)'s ``path`` at the pinned commit, through ``hub``."""
    storage = {"endpoint": options.pop("endpoint", hub.url)} | options.pop("storage", {})
    options.setdefault("sha256", SHA)
    repo = options.pop("repo", REPO)
    return FsspecSource(
        f"hf://{repo}@{options.pop('revision', COMMIT)}/{path}",
        cache_dir=cache,
        storage_options=storage,
        **options,
    )


class TestHubDownload:
    def test_accepts_caches_and_serves_the_copy_without_a_request(
        self, hub: FakeHub, cache: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """An LFS file is checked by HEAD, streamed by one GET, verified, then served cached."""
        hub.publish(REPO, "model.bin", DATA)
        with hf_source(hub, cache, model="m", registry=registry) as source:
            path = source.fetch()
            assert (hub.count("HEAD"), hub.count("GET", "cdn"), hub.count("GET", "hub")) == (
                1,
                1,
                0,
            )
            assert source.fetch() == path
        assert len(hub.requests) == 2  # the second fetch asked nothing
        assert cr.read_verified(path, sha256=SHA) == DATA
        assert cache_entries(cache) == [SHA]
        assert failures(registry) == {}

    def test_body_is_asked_for_unencoded(self, hub: FakeHub, cache: pathlib.Path) -> None:
        """The GET asks for the published bytes (identity), so nothing decoded is hashed."""
        hub.publish(REPO, "model.bin", DATA)
        with hf_source(hub, cache) as source:
            source.fetch()
        encodings = [
            h.get("accept-encoding")
            for (_, _, _), h in zip(hub.requests, hub.headers, strict=True)
        ]
        assert encodings == ["identity", "identity"]

    def test_answer_without_a_commit_is_refused(
        self, hub: FakeHub, cache: pathlib.Path, events: list[Event]
    ) -> None:
        """An endpoint that names no X-Repo-Commit is not a Hub: fetch_error, no GET."""
        hub.publish(REPO, "model.bin", DATA)
        hub.announced_commit = ""
        with hf_source(hub, cache) as source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert "X-Repo-Commit" in str(info.value)
        assert (hub.count("HEAD"), hub.count("GET")) == (1, 0)
        assert [r for _, r in audited(events)] == [Reason.FETCH_ERROR]

    def test_git_file_is_verified_by_the_streamed_digest(
        self, hub: FakeHub, cache: pathlib.Path
    ) -> None:
        """A non-LFS file (git SHA-1 etag) has no SHA-256 to compare: the stream decides."""
        hub.publish(REPO, "config.json", DATA, lfs=False)
        with hf_source(hub, cache, "config.json") as source:
            path = source.fetch()
        assert cr.read_verified(path, sha256=SHA) == DATA
        assert hub.count("GET", "hub") == 1

    def test_git_file_with_other_bytes_is_refused(
        self, hub: FakeHub, cache: pathlib.Path, events: list[Event]
    ) -> None:
        """A non-LFS file whose bytes are not the pinned ones is refused after streaming."""
        hub.publish(REPO, "config.json", OTHER, lfs=False)
        with hf_source(hub, cache, "config.json") as source, pytest.raises(ChecksumMismatchError):
            source.fetch()
        assert cache_entries(cache) == []
        assert [r for _, r in audited(events)] == [Reason.CHECKSUM_MISMATCH]

    def test_bytes_tampered_at_the_origin_are_refused(
        self, hub: FakeHub, cache: pathlib.Path, events: list[Event]
    ) -> None:
        """Storage serving other bytes than its LFS pointer claims: the stream is refused."""
        hub.publish(REPO, "model.bin", DATA)
        hub.tamper(REPO, "model.bin", OTHER)
        with hf_source(hub, cache) as source, pytest.raises(ChecksumMismatchError) as info:
            source.fetch()
        assert info.value.actual == hashlib.sha256(OTHER).hexdigest()
        assert hub.count("GET", "cdn") == 1
        assert cache_entries(cache) == []
        assert [r for _, r in audited(events)] == [Reason.CHECKSUM_MISMATCH]

    def test_lfs_digest_other_than_the_pin_is_refused_before_any_get(
        self, hub: FakeHub, cache: pathlib.Path, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """The Hub's LFS SHA-256 differs from the pinned digest: refused after the HEAD alone."""
        hub.publish(REPO, "model.bin", OTHER)
        source = hf_source(hub, cache, model="m", registry=registry)
        with source, pytest.raises(ChecksumMismatchError, match="before downloading") as info:
            source.fetch()
        assert info.value.actual == hashlib.sha256(OTHER).hexdigest()
        assert (hub.count("HEAD"), hub.count("GET")) == (1, 0)
        assert failures(registry) == {Reason.CHECKSUM_MISMATCH: 1.0}
        assert [r for _, r in audited(events)] == [Reason.CHECKSUM_MISMATCH]

    @pytest.mark.parametrize(
        "limits",
        [
            pytest.param({"max_size": len(DATA) - 1}, id="max_size"),
            pytest.param({"size": len(DATA) - 1}, id="size"),
        ],
    )
    def test_announced_size_over_the_cap_is_refused_before_any_get(
        self, hub: FakeHub, cache: pathlib.Path, events: list[Event], limits: dict[str, int]
    ) -> None:
        """An LFS size over ``size`` or ``max_size`` is refused with no body requested."""
        hub.publish(REPO, "model.bin", DATA)
        with hf_source(hub, cache, **limits) as source, pytest.raises(SizeMismatchError) as info:
            source.fetch()
        assert info.value.actual == len(DATA)
        assert (hub.count("HEAD"), hub.count("GET")) == (1, 0)
        assert [r for _, r in audited(events)] == [Reason.SIZE_MISMATCH]

    @pytest.mark.parametrize("other", ["f" * 40, "\u00e9" * 40], ids=["hex", "non-ascii"])
    def test_other_commit_for_the_pinned_one_is_refused(
        self,
        hub: FakeHub,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        retries: RetryLog,
        other: str,
    ) -> None:
        """A Hub answering the pinned commit from another one: version_mismatch, no GET."""
        hub.publish(REPO, "model.bin", DATA)
        hub.announced_commit = other  # a hostile header may be any Latin-1 text
        source = hf_source(hub, cache, model="m", registry=registry, attempts=3)
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.VERSION_MISMATCH
        assert (info.value.expected, info.value.actual) == (COMMIT, other)
        assert (hub.count("HEAD"), hub.count("GET"), len(retries)) == (1, 0, 0)
        assert failures(registry) == {Reason.VERSION_MISMATCH: 1.0}

    def test_dataset_file_is_fetched_from_the_dataset_repo(
        self, hub: FakeHub, cache: pathlib.Path
    ) -> None:
        """hf://datasets/... asks the Hub under /datasets/ and verifies the file."""
        hub.publish(REPO, "train.bin", DATA)
        with FsspecSource(
            f"hf://datasets/{REPO}@{COMMIT}/train.bin",
            sha256=SHA,
            cache_dir=cache,
            storage_options={"endpoint": hub.url},
        ) as source:
            assert cr.read_verified(source.fetch(), sha256=SHA) == DATA
        assert hub.requests[0][1:] == ("HEAD", f"/datasets/{REPO}/resolve/{COMMIT}/train.bin")

    def test_opted_in_branch_follows_the_hub_and_still_verifies(
        self, hub: FakeHub, cache: pathlib.Path
    ) -> None:
        """With allow_unpinned_revision, ``main`` resolves to its commit; the digest decides."""
        hub.publish(REPO, "model.bin", DATA)
        source = hf_source(hub, cache, revision="main", allow_unpinned_revision=True)
        with source:
            assert cr.read_verified(source.fetch(), sha256=SHA) == DATA

    @pytest.mark.parametrize(
        ("repo", "path", "revision", "status"),
        [
            pytest.param(REPO, "missing.bin", COMMIT, 404, id="entry"),
            pytest.param(REPO, "model.bin", "e" * 40, 404, id="revision"),
            pytest.param("org/nothing", "model.bin", COMMIT, 401, id="repo"),
        ],
    )
    def test_missing_repo_file_or_revision_is_permanent(
        self, hub: FakeHub, cache: pathlib.Path, retries: RetryLog, events: list[Event],
        repo: str, path: str, revision: str, status: int,
    ) -> None:  # fmt: skip
        """A 404 or 401 from the Hub is tried once: fetch_error, the status as ``actual``."""
        hub.publish(REPO, "model.bin", DATA)
        source = hf_source(hub, cache, path, repo=repo, revision=revision, attempts=3)
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert (info.value.reason, info.value.actual) == (Reason.FETCH_ERROR, status)
        assert "after 1 attempt(s)" in str(info.value)
        assert (len(retries), hub.count("HEAD")) == (0, 1)
        assert [r for _, r in audited(events)] == [Reason.FETCH_ERROR]


class TestHubNetwork:
    def test_stalled_body_fails_with_timeout(
        self, hub: FakeHub, cache: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Headers, then silence: the read gives up after ``timeout``, reason timeout."""
        hub.publish(REPO, "model.bin", DATA)
        hub.stall = threading.Event()
        source = hf_source(hub, cache, timeout=1.0, attempts=2, model="m", registry=registry)
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.TIMEOUT
        assert "after 2 attempt(s)" in str(info.value)
        # One GET per attempt: huggingface_hub retried (and resumed) nothing by itself.
        assert 1 <= hub.count("GET", "cdn") <= 2
        assert failures(registry) == {Reason.TIMEOUT: 1.0}
        assert cache_entries(cache) == []

    def test_a_trickle_is_abandoned_at_the_deadline(
        self, hub: FakeHub, cache: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Bytes that keep coming, too slowly: the GET is given up at the deadline, mid-body."""
        hub.publish(REPO, "model.bin", DATA)
        with ThreadedFaultProxy("127.0.0.1", hub.cdn_port, seed=8) as proxy:
            hub.cdn_url = f"http://127.0.0.1:{proxy.port}"
            proxy.bandwidth(16)  # 16 KB/s: the 300 KiB file would take ~19 s
            source = hf_source(hub, cache, deadline=1.0, attempts=1, model="m", registry=registry)
            with source, pytest.raises(IntegrityError) as info:
                source.fetch()
            assert info.value.reason is Reason.TIMEOUT
            assert "deadline" in str(info.value)
            end = time.monotonic() + 30
            while proxy.active_connections:
                assert time.monotonic() < end, "the abandoned connection stayed open"
                time.sleep(0.01)  # sleep-ok: polling for a condition, bounded by a deadline
            assert proxy.bytes_downstream < len(DATA) // 2
        assert failures(registry) == {Reason.TIMEOUT: 1.0}
        assert cache_entries(cache) == []

    def test_resets_are_retried_until_the_link_heals(
        self, hub: FakeHub, cache: pathlib.Path, retries: RetryLog
    ) -> None:
        """A reset connection to the CDN is transient: retried, and the healed link verifies."""
        hub.publish(REPO, "model.bin", DATA)
        with ThreadedFaultProxy("127.0.0.1", hub.cdn_port, seed=4) as proxy:
            hub.cdn_url = f"http://127.0.0.1:{proxy.port}"
            toxic = proxy.reset_peer()
            retries.actions.append(lambda details: proxy.remove_toxic(toxic))
            with hf_source(hub, cache, attempts=3) as source:
                path = source.fetch()
        assert cr.read_verified(path, sha256=SHA) == DATA
        assert len(retries) == 1
        assert hub.count("HEAD") == 2

    def test_body_cut_short_is_retried(
        self, hub: FakeHub, cache: pathlib.Path, retries: RetryLog
    ) -> None:
        """A CDN closing the connection mid-body (no socket error) is transient: retried."""
        hub.publish(REPO, "model.bin", DATA)
        hub.cut_after = len(DATA) // 3
        retries.actions.append(lambda details: setattr(hub, "cut_after", None))
        with hf_source(hub, cache, attempts=2) as source:
            path = source.fetch()
        assert cr.read_verified(path, sha256=SHA) == DATA
        assert (len(retries), hub.count("GET", "cdn")) == (1, 2)

    def test_unavailable_hub_is_retried_until_it_recovers(
        self, hub: FakeHub, cache: pathlib.Path, retries: RetryLog
    ) -> None:
        """A 503 from the Hub is transient: retried by the core, then the file verifies."""
        hub.publish(REPO, "model.bin", DATA)
        hub.fail_status = 503
        retries.actions.append(lambda details: setattr(hub, "fail_status", None))
        with hf_source(hub, cache, attempts=3) as source:
            path = source.fetch()
        assert cr.read_verified(path, sha256=SHA) == DATA
        # One HEAD per attempt: huggingface_hub did not retry the 503 by itself.
        assert (len(retries), hub.count("HEAD")) == (1, 2)

    def test_persistent_resets_give_up_after_the_attempts(
        self, hub: FakeHub, cache: pathlib.Path, retries: RetryLog
    ) -> None:
        """A Hub whose connections always reset gets exactly ``attempts`` tries."""
        hub.publish(REPO, "model.bin", DATA)
        with ThreadedFaultProxy("127.0.0.1", hub.port, seed=5) as proxy:
            proxy.reset_peer()
            source = hf_source(hub, cache, endpoint=f"http://127.0.0.1:{proxy.port}", attempts=3)
            with source, pytest.raises(IntegrityError) as info:
                source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert len(retries) == 2
        assert cache_entries(cache) == []


class TestHubToken:
    def test_token_reaches_the_hub_only_and_is_never_reported(
        self, hub: FakeHub, cache: pathlib.Path, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """The token authorises the HEAD; the CDN never sees it; no report carries it."""
        hub.publish(REPO, "model.bin", DATA)
        hub.token = TOKEN
        good = hf_source(hub, cache, storage={"token": TOKEN}, model="m", registry=registry)
        with good:
            good.fetch()
        sent = [(server, h.get("authorization")) for (server, _, _), h in zip(
            hub.requests, hub.headers, strict=True
        )]  # fmt: skip
        assert sent == [("hub", f"Bearer {TOKEN}"), ("cdn", None)]
        # A wrong token: the Hub echoes what it got in its error message.
        hub.token = "hf_theRightOne"
        bad = hf_source(
            hub, cache / "2", storage={"token": TOKEN}, model="m", registry=registry, attempts=1
        )
        with bad, pytest.raises(IntegrityError) as info:
            bad.fetch()
        assert info.value.actual == 401
        reported = "\n".join(
            [
                str(info.value),
                repr(info.value),
                *(repr(e) for e in events),
                repr(good),
                repr(bad),
                generate_latest(registry).decode(),
            ]
        )
        assert TOKEN not in reported
        assert "***" in str(info.value)  # the echoed token was there, and scrubbed
        assert len(events) >= 2


class TestHubCache:
    def build(self, root: pathlib.Path, data: bytes) -> pathlib.Path:
        """Lay out huggingface_hub's cache for REPO at COMMIT; return the blob path."""
        repo = root / "models--org--model"
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True)
        blob.write_bytes(data)
        snapshot = repo / "snapshots" / COMMIT
        snapshot.mkdir(parents=True)
        (snapshot / "model.bin").symlink_to(blob)
        return blob

    def test_offline_mode_reads_the_hub_cache_and_sends_nothing(
        self, hub: FakeHub, tmp_path: pathlib.Path, cache: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        """HF_HUB_OFFLINE: the file comes from the Hub cache, re-hashed, with no request."""
        self.build(tmp_path / "hub", DATA)
        hub.publish(REPO, "model.bin", DATA)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        source = hf_source(hub, cache, storage={"cache_dir": str(tmp_path / "hub")})
        with source:
            assert cr.read_verified(source.fetch(), sha256=SHA) == DATA
        assert hub.requests == []

    def offline_source(self, root: pathlib.Path, cache: pathlib.Path) -> FsspecSource:
        """Return a source reading REPO's model.bin from the Hub cache at ``root`` only."""
        if huggingface_hub is None:
            requirements.missing("huggingface_hub")
        return FsspecSource(
            f"hf://{REPO}@{COMMIT}/model.bin",
            sha256=SHA,
            cache_dir=cache,
            storage_options={"cache_dir": str(root), "local_files_only": True},
        )

    def fetch_in_thread(self, source: FsspecSource, fifo: pathlib.Path) -> BaseException:
        """Fetch in a worker thread; fail the test if it hangs; return what it raised."""
        outcome: list[BaseException] = []

        def fetch() -> None:
            try:
                source.fetch()
            except BaseException as e:  # handed to the test thread, asserted there
                outcome.append(e)

        worker = threading.Thread(target=fetch, daemon=True)
        worker.start()
        worker.join(20)
        if worker.is_alive():  # unblock the reader so the thread ends, then fail
            with open(fifo, "wb"):
                pass
            pytest.fail("fetching a FIFO from the Hub cache hung")
        assert len(outcome) == 1
        return outcome[0]

    def test_cold_hub_cache_is_permanent_and_sends_nothing(
        self, tmp_path: pathlib.Path, cache: pathlib.Path, retries: RetryLog,
        events: list[Event],
    ) -> None:  # fmt: skip
        """local_files_only with the file not cached: fetch_error at once, no connection."""
        source = self.offline_source(tmp_path / "hub", cache)
        with source, pytest.raises(IntegrityError) as info:
            source.fetch()
        assert info.value.reason is Reason.FETCH_ERROR
        assert "no request" in str(info.value)
        assert len(retries) == 0
        assert [r for _, r in audited(events)] == [Reason.FETCH_ERROR]

    def test_fifo_planted_in_the_hub_cache_is_refused_without_hanging(
        self, tmp_path: pathlib.Path, cache: pathlib.Path, events: list[Event]
    ) -> None:
        """A FIFO as the blob is never read: typed and audited at once, nothing cached."""
        blob = self.build(tmp_path / "hub", DATA)
        blob.unlink()
        os.mkfifo(blob)
        error = self.fetch_in_thread(self.offline_source(tmp_path / "hub", cache), blob)
        assert isinstance(error, IntegrityError)
        assert error.reason is Reason.FETCH_ERROR
        assert "not a regular file" in str(error)
        assert [r for _, r in audited(events)] == [Reason.FETCH_ERROR]
        assert cache_entries(cache) == []

    def test_blob_swapped_for_a_fifo_after_the_lookup_is_unsafe_path(
        self, tmp_path: pathlib.Path, cache: pathlib.Path, events: list[Event],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        """A blob replaced by a FIFO between huggingface_hub's look and the open: unsafe_path."""
        blob = self.build(tmp_path / "hub", DATA)
        real = huggingface_hub.try_to_load_from_cache

        def then_swap(*args: Any, **kwargs: Any) -> Any:
            found = real(*args, **kwargs)
            blob.unlink()
            os.mkfifo(blob)
            return found

        monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", then_swap)
        error = self.fetch_in_thread(self.offline_source(tmp_path / "hub", cache), blob)
        assert isinstance(error, IntegrityError)
        assert error.reason is Reason.UNSAFE_PATH
        assert [r for _, r in audited(events)] == [Reason.UNSAFE_PATH]
        assert cache_entries(cache) == []


class TestHubErrorStatus:
    @pytest.mark.parametrize(
        ("status", "code", "transient"),
        [
            pytest.param(404, "EntryNotFound", False, id="entry"),
            pytest.param(404, "RevisionNotFound", False, id="revision"),
            pytest.param(401, "RepoNotFound", False, id="repo"),
            pytest.param(403, "GatedRepo", False, id="gated"),
            pytest.param(429, None, True, id="throttled"),
            pytest.param(503, None, True, id="unavailable"),
        ],
    )
    def test_hub_http_errors_keep_their_status(
        self, cache: pathlib.Path, status: int, code: str | None, transient: bool
    ) -> None:
        """huggingface_hub's typed errors: the httpx status decides, and is the ``actual``."""
        if huggingface_hub is None:
            requirements.missing("huggingface_hub")
        import httpx2
        from huggingface_hub.utils import hf_raise_for_status

        source = FsspecSource(f"hf://{REPO}@{COMMIT}/model.bin", sha256=SHA, cache_dir=cache)
        request = httpx2.Request("HEAD", "http://127.0.0.1/org/model/resolve/x/model.bin")
        headers = {"X-Error-Code": code} if code else {}
        response = httpx2.Response(status, headers=headers, request=request)
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as info:
            hf_raise_for_status(response)
        assert bool(source._transient(info.value)) is transient
        _, reason, actual = source._failure(info.value)
        assert (reason, actual) == (Reason.FETCH_ERROR, status)

    @pytest.mark.parametrize(
        ("name", "timed_out"),
        [("ReadTimeout", True), ("ConnectTimeout", True), ("ConnectError", False),
         ("ReadError", False), ("RemoteProtocolError", False)],
    )  # fmt: skip
    def test_httpx_transport_errors_are_transient(
        self, cache: pathlib.Path, name: str, timed_out: bool
    ) -> None:
        """httpx's timeouts, connect and read errors are retried; timeouts say timeout."""
        if huggingface_hub is None:
            requirements.missing("huggingface_hub")
        import httpx2

        source = FsspecSource(f"hf://{REPO}@{COMMIT}/model.bin", sha256=SHA, cache_dir=cache)
        error = getattr(httpx2, name)("boom")
        assert source._transient(error) is True
        _, reason, _ = source._failure(error)
        assert reason is (Reason.TIMEOUT if timed_out else Reason.FETCH_ERROR)
