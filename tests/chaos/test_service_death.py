"""Service death (the PENIN document): the artifact store dies, for real, and comes back.

The store is a real HTTP server process (``tests/support/artifact_server.py``) killed
with SIGKILL in the middle of a download and restarted on the same port, as a
supervisor would. The guard must fail closed (typed error, audit event, metric), keep
serving the last known good version, never leave a half-written file in its cache,
and promote the new version once the store is back. Predictions are checked by
content: each version's weights all equal one value, so a prediction tells which bytes
served it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import pytest
import stamina
import structlog
from artifact_store import ArtifactStore
from chaos_models import Model, ModelVersion, signature
from chaos_network import SourceFactory, Versions, cache_listing, integrity_failures, make_guard
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience.instrumentation import (
    Event,
    IntegrityCheckFailed,
    ModelLoadFailed,
    ReloadPromoted,
    ReloadRefused,
)
from clarity_resilience.sources import HttpSource

# A hang detector, not a speed bound: generous, so a busy machine never trips it.
pytestmark = [
    pytest.mark.chaos,
    pytest.mark.non_destructive,
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("no_backoff"),
]

T = TypeVar("T")

#: The slow stream: 4 KiB every 50 ms, so the 256 KiB model takes ~3 s to download and
#: the kill lands well inside it.
SLOW = {"mode": "slow", "chunk": 4096, "delay": 0.05}
POLL_INTERVAL = 0.005  # seconds between two looks at an observable condition


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture
def versions(tmp_path: pathlib.Path) -> Versions:
    """Publish v1 (weights 1.0) and v2 (weights 2.0) into the store's root directory."""
    root = tmp_path / "store"
    root.mkdir()
    return Versions.publish(root)


@pytest.fixture
def store(versions: Versions) -> Iterator[ArtifactStore]:
    """Run the artifact server process for this test; stop it whatever state it is in."""
    with ArtifactStore(versions.v1.path.parent) as running:
        yield running


@pytest.fixture
def make_source(
    store: ArtifactStore, cache: pathlib.Path, registry: CollectorRegistry
) -> Iterator[SourceFactory]:
    """Return ``make_source(version, **options)`` fetching from the store; closed after."""
    with SourceFactory(store.base, cache, registry) as factory:
        yield factory


def wait_until(condition: Callable[[], T | None], *, what: str, timeout: float = 10.0) -> T:
    """Return the first truthy value of ``condition()``, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL_INTERVAL)  # sleep-ok: poll interval; the condition synchronizes
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def part_files(cache: pathlib.Path) -> list[pathlib.Path]:
    """Return the temporary (partial) downloads in the cache directory."""
    return sorted(cache.glob(".*.part")) if cache.exists() else []


def growing_part(cache: pathlib.Path) -> int | None:
    """Return the size of the partial download once it holds bytes on disk."""
    parts = part_files(cache)
    if len(parts) != 1:
        return None
    try:
        return parts[0].stat().st_size or None
    except FileNotFoundError:  # renamed or removed between the glob and the stat
        return None


def assert_cache_holds(cache: pathlib.Path, *versions: ModelVersion) -> None:
    """Assert the cache holds exactly ``versions``, each complete, and no partial file."""
    assert part_files(cache) == []
    assert cache_listing(cache) == sorted(version.sha256 for version in versions)
    for version in versions:
        assert hashlib.sha256((cache / version.sha256).read_bytes()).hexdigest() == version.sha256


def kill_during_reload(
    store: ArtifactStore,
    guard: cr.ModelGuard[Model],
    source: HttpSource,
    cache: pathlib.Path,
    serving: ModelVersion,
) -> tuple[cr.IntegrityError, int]:
    """Reload ``source`` while the store streams slowly; SIGKILL the store mid-download.

    Returns the error the reload raised and the partial size seen just before the kill.
    """
    store.control(**SLOW)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reload") as pool:
        reload = pool.submit(guard.reload, source=source)
        partial = wait_until(lambda: growing_part(cache), what="the partial download")
        # The reload is under way and predictions still use the serving version.
        assert not reload.done()
        assert guard.predict(signature) == serving.signature
        store.kill()
        with pytest.raises(cr.IntegrityError) as info:
            reload.result(timeout=20)
    assert not store.alive
    return info.value, partial


# -- scenarios ------------------------------------------------------------------------


class TestStoreKilledDuringReload:
    def test_reload_fails_closed_and_last_known_good_keeps_serving(
        self,
        store: ArtifactStore,
        versions: Versions,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        make_source: SourceFactory,
    ) -> None:
        """A store killed mid-download refuses the reload with fetch_error and v1 serves on."""
        v1, v2 = versions.v1, versions.v2
        guard = make_guard(make_source(v1), registry)
        assert signature(guard.load()) == v1.signature
        events.clear()

        with structlog.testing.capture_logs() as logs:
            error, partial = kill_during_reload(store, guard, make_source(v2), cache, v1)

        # Fail closed: a typed denial naming the cause, after every attempt was spent.
        assert type(error) is cr.IntegrityError
        assert error.reason is cr.Reason.FETCH_ERROR
        assert error.path == store.url(v2.path.name)
        assert "after 3 attempt(s)" in str(error)
        assert isinstance(error.__cause__, httpx.ConnectError)  # the store stayed dead
        assert 0 < partial < v2.size  # the kill really landed mid-download

        # Last known good: the very bytes of v1 keep answering.
        assert guard.ready
        assert guard.predict(signature) == v1.signature
        status = guard.status()
        assert (status["sha256"], status["last_error"]) == (v1.sha256[:12], "fetch_error")

        # Audited: the refusal and the failed check, with the reason, in events and logs.
        refused = [e for e in events if isinstance(e, ReloadRefused)]
        assert [(e.model, e.reason, e.serving_sha256) for e in refused] == [
            ("m", cr.Reason.FETCH_ERROR, v1.sha256)
        ]
        failed = [e for e in events if isinstance(e, IntegrityCheckFailed)]
        assert [(e.model, e.reason, e.path) for e in failed] == [
            ("m", cr.Reason.FETCH_ERROR, store.url(v2.path.name))
        ]
        logged = {(e["event"], e.get("reason")) for e in logs}
        assert ("clarity_resilience.reload_refused", "fetch_error") in logged
        assert ("clarity_resilience.integrity_check_failed", "fetch_error") in logged

        # Alerted: counted once under its reason, nothing else.
        for reason in cr.Reason:
            expected = 1.0 if reason is cr.Reason.FETCH_ERROR else 0.0
            assert integrity_failures(registry, reason) == expected, reason

        # Nothing half-written: no v2 under its final name, no partial file, v1 intact.
        assert_cache_holds(cache, v1)

    def test_refusal_is_counted_in_the_guards_registry_without_source_options(
        self,
        store: ArtifactStore,
        versions: Versions,
        cache: pathlib.Path,
        registry: CollectorRegistry,
    ) -> None:
        """A source built without model=/registry= still alerts in the guard's registry."""
        v1, v2 = versions.v1, versions.v2
        plain_v1 = HttpSource(store.url(v1.path.name), sha256=v1.sha256, cache_dir=cache)
        plain_v2 = HttpSource(store.url(v2.path.name), sha256=v2.sha256, cache_dir=cache)
        with plain_v1, plain_v2:
            guard = make_guard(plain_v1, registry)
            guard.load()
            error, _ = kill_during_reload(store, guard, plain_v2, cache, v1)
        assert error.reason is cr.Reason.FETCH_ERROR
        assert guard.predict(signature) == v1.signature
        # The guard was given this registry and this model name: its alert must fire.
        assert integrity_failures(registry, "fetch_error") == 1.0


class TestStoreRestart:
    @pytest.mark.parametrize(
        "same_source",
        [
            pytest.param(True, id="same-source-object"),
            pytest.param(False, id="new-source-object"),
        ],
    )
    def test_next_reload_after_restart_promotes_v2(
        self,
        store: ArtifactStore,
        versions: Versions,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        make_source: SourceFactory,
        same_source: bool,
    ) -> None:
        """After a restart on the same port, the next reload verifies and promotes v2."""
        v1, v2 = versions.v1, versions.v2
        guard = make_guard(make_source(v1), registry)
        guard.load()
        source_v2 = make_source(v2)
        kill_during_reload(store, guard, source_v2, cache, v1)
        port = store.port

        store.restart()
        assert store.port == port
        events.clear()
        promoted = guard.reload(source=source_v2 if same_source else make_source(v2))

        assert signature(promoted) == v2.signature
        assert guard.predict(signature) == v2.signature
        assert guard.status()["last_error"] is None
        assert [(e.old_sha256, e.new_sha256) for e in events if isinstance(e, ReloadPromoted)] == [
            (v1.sha256, v2.sha256)
        ]
        assert store.requests(v2.path.name) == 1  # one clean download after the restart
        # Nothing lost or half-written: exactly one complete v2 file, v1 untouched.
        assert_cache_holds(cache, v1, v2)
        # The earlier failure stays counted; the recovery added none.
        assert integrity_failures(registry, "fetch_error") == 1.0

    def test_restart_within_the_retry_budget_rides_through(
        self,
        store: ArtifactStore,
        versions: Versions,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        make_source: SourceFactory,
    ) -> None:
        """A store restarted before the retries run out lets the same reload succeed."""
        v1, v2 = versions.v1, versions.v2
        guard = make_guard(make_source(v1), registry)
        guard.load()
        retries: list[stamina.instrumentation.RetryDetails] = []
        killed = threading.Event()  # kill() has returned: the handle is free to restart

        def supervisor(details: stamina.instrumentation.RetryDetails) -> None:
            """Restart the dead store when the first attempt has failed, like systemd."""
            retries.append(details)
            # Until kill() has returned, Popen.poll() in this thread cannot see the death.
            assert killed.wait(10)
            if not store.alive:
                store.restart()

        previous = stamina.instrumentation.get_on_retry_hooks()
        stamina.instrumentation.set_on_retry_hooks([supervisor])
        try:
            store.control(**SLOW)
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reload") as pool:
                reload = pool.submit(guard.reload, source=make_source(v2))
                wait_until(lambda: growing_part(cache), what="the partial download")
                store.kill()
                killed.set()
                promoted = reload.result(timeout=20)
        finally:
            stamina.instrumentation.set_on_retry_hooks(previous)

        assert signature(promoted) == v2.signature
        assert guard.predict(signature) == v2.signature
        # One retry, caused by the body cut short when the process died.
        assert [type(d.caused_by) for d in retries] == [httpx.RemoteProtocolError]
        assert store.requests(v2.path.name) == 1  # the restarted process served it once
        assert [e for e in events if isinstance(e, ReloadRefused)] == []
        assert_cache_holds(cache, v1, v2)


class TestColdStartWithStoreDown:
    def test_load_fails_closed_until_the_store_starts(
        self,
        store: ArtifactStore,
        versions: Versions,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        make_source: SourceFactory,
    ) -> None:
        """With the store dead and nothing cached, load fails closed and predictions get 503s."""
        v1 = versions.v1
        store.kill()
        guard = make_guard(make_source(v1), registry)

        with pytest.raises(cr.IntegrityError) as info:
            guard.load()
        assert info.value.reason is cr.Reason.FETCH_ERROR
        assert isinstance(info.value.__cause__, httpx.ConnectError)
        assert not guard.ready
        with pytest.raises(cr.ModelUnavailableError) as unavailable:
            guard.predict(signature)
        assert unavailable.value.retry_after > 0
        assert [
            type(e) for e in events if isinstance(e, IntegrityCheckFailed | ModelLoadFailed)
        ] == [
            IntegrityCheckFailed,
            ModelLoadFailed,
        ]
        assert integrity_failures(registry, "fetch_error") == 1.0
        assert_cache_holds(cache)

        store.restart()
        assert signature(guard.load()) == v1.signature
        assert guard.status()["ready"]
        assert guard.predict(signature) == v1.signature
        assert store.requests(v1.path.name) == 1
        assert_cache_holds(cache, v1)
