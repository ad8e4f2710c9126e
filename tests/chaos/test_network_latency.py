"""Network latency (the PENIN document): timeouts, retries with backoff, no cascading.

Every byte goes through the chaos kit's fault proxy (Toxiproxy's toxics, on loopback)
in front of a real artifact server process; nothing is patched. The scenarios:

- timeout: a response slower than the read timeout fails with reason ``timeout`` in
  bounded time, never a hang, and the last known good model keeps serving;
- retry logic: transient faults (connection reset, proxy down) are retried with a
  real backoff schedule until the link heals; non-transient faults are not retried;
- cascading: a FastAPI app served by uvicorn keeps answering predictions and probes
  while reloads hang on the slow upstream.

No assertion bounds how fast a request must be: on a busy machine anything can take a
second. The tests assert ordering instead (every request was answered while the reloads
were still hanging) and give the faults margins far beyond scheduling noise.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import stamina
from artifact_store import ArtifactStore
from chaos_models import Model, signature
from chaos_network import SourceFactory, Versions, cache_listing, integrity_failures, make_guard
from http_servers import serve_asgi
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience.chaos import LoadResult, ThreadedFaultProxy, run_tasks
from clarity_resilience.instrumentation import Event, ReloadRefused
from clarity_resilience.sources import HttpSource

# A hang detector, not a speed bound: generous, so a busy machine never trips it.
pytestmark = [pytest.mark.chaos, pytest.mark.non_destructive, pytest.mark.timeout(120)]

SEED = 20240601
POLL_INTERVAL = 0.01  # seconds between two looks at an observable condition
# The slow upstream of the cascading scenario holds every response this long, i.e. until
# the test removes the toxic (which releases the held bytes at once) or gives up.
HANG_MS = 600_000
# Seconds: traffic blocked behind a hung reload never ends; traffic that is merely slow
# (100 requests took over 15 s on a 2-core machine busy with CPU hogs) does.
TRAFFIC_DEADLINE = 60.0
# Read timeout of reloads that must time out. The guard runs reloads one at a time, so
# five of them hang for about 5 x 1 s: some traffic is answered in that window.
RELOAD_TIMEOUT_REFUSED = 1.0
RELOAD_TIMEOUT_PROMOTED = 90.0  # beyond the traffic deadline: the test releases them first
CASCADE_TEST_TIMEOUT = 180  # pytest-timeout for one cascading test, deadlines included
RetryDetails = stamina.instrumentation.RetryDetails


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    """Publish v1 (weights 1.0) and v2 (weights 2.0) into the store's root directory."""
    return Versions.publish(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def store_process(versions: Versions) -> Iterator[ArtifactStore]:
    """Run one artifact server process for the module; always terminate it."""
    with ArtifactStore(versions.v1.path.parent) as store:
        yield store


@pytest.fixture
def store(store_process: ArtifactStore) -> ArtifactStore:
    """Return the store with faults off and its request counters at zero."""
    store_process.control(mode="ok", reset=True)
    return store_process


@pytest.fixture
def proxy(store: ArtifactStore) -> Iterator[ThreadedFaultProxy]:
    """Put a fresh fault proxy (no toxics, counters at zero) in front of the store."""
    with ThreadedFaultProxy("127.0.0.1", store.port, seed=SEED) as running:
        yield running


@pytest.fixture
def make_source(
    proxy: ThreadedFaultProxy, cache: pathlib.Path, registry: CollectorRegistry
) -> Iterator[SourceFactory]:
    """Return ``make_source(version, **options)`` fetching through the proxy; closed after."""
    with SourceFactory(proxy.url, cache, registry) as factory:
        yield factory


@dataclasses.dataclass
class RetryLog:
    """Every retry stamina scheduled, and actions to run on each one."""

    details: list[RetryDetails] = dataclasses.field(default_factory=list)
    actions: list[Callable[[RetryDetails], None]] = dataclasses.field(default_factory=list)

    def __call__(self, details: RetryDetails) -> None:
        self.details.append(details)
        for action in self.actions:
            action(details)

    def also(self, action: Callable[[RetryDetails], None]) -> None:
        """Run ``action`` on every retry from now on (e.g. heal the link)."""
        self.actions.append(action)


@pytest.fixture
def retries() -> Iterator[RetryLog]:
    """Record every retry stamina schedules (its default hooks are replaced meanwhile)."""
    log = RetryLog()
    previous = stamina.instrumentation.get_on_retry_hooks()
    stamina.instrumentation.set_on_retry_hooks([log])
    yield log
    stamina.instrumentation.set_on_retry_hooks(previous)


# -- scenario 1: timeout --------------------------------------------------------------


class TestTimeout:
    @pytest.mark.parametrize(
        ("latency", "timeout", "attempts"),
        [
            pytest.param(
                12.0, None, 2, marks=pytest.mark.slow, id="12s-latency-vs-default-5s-timeout"
            ),
            # The latency is far above the timeout, so "gave up before the response came"
            # holds even when a busy machine stretches every attempt.
            pytest.param(10.0, 0.5, 1, id="10s-latency-vs-0.5s-timeout"),
        ],
    )
    def test_response_slower_than_the_timeout_fails_closed_in_bounded_time(
        self,
        store: ArtifactStore,
        proxy: ThreadedFaultProxy,
        versions: Versions,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        make_source: SourceFactory,
        no_backoff: None,
        latency: float,
        timeout: float | None,
        attempts: int,
    ) -> None:
        """A reload whose responses lag past the read timeout fails with timeout, not a hang."""
        v1, v2 = versions.v1, versions.v2
        guard = make_guard(make_source(v1), registry)
        guard.load()
        options: dict[str, Any] = {"attempts": attempts}
        if timeout is not None:
            options["timeout"] = timeout
        source = make_source(v2, **options)
        proxy.latency(latency * 1000)

        started = time.perf_counter()
        with pytest.raises(cr.IntegrityError) as info:
            guard.reload(source=source)
        elapsed = time.perf_counter() - started

        read_timeout = 5.0 if timeout is None else timeout  # None: HttpSource's default
        assert info.value.reason is cr.Reason.TIMEOUT
        assert isinstance(info.value.__cause__, httpx.ReadTimeout)
        # Every attempt gave up at the read timeout; none waited for the slow response.
        assert attempts * read_timeout <= elapsed < attempts * latency
        assert store.requests(v2.path.name) == attempts
        assert proxy.connections_total == 1 + attempts  # v1's load, then one per attempt
        assert guard.predict(signature) == v1.signature
        assert [e.reason for e in events if isinstance(e, ReloadRefused)] == [cr.Reason.TIMEOUT]
        assert integrity_failures(registry, "timeout") == 1
        assert cache_listing(cache) == [v1.sha256]  # no partial file, nothing for v2

    def test_latency_under_the_timeout_is_tolerated(
        self,
        proxy: ThreadedFaultProxy,
        versions: Versions,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        make_source: SourceFactory,
        no_backoff: None,
    ) -> None:
        """A response that lags but stays under the read timeout is downloaded, once."""
        v1 = versions.v1
        proxy.latency(300)
        started = time.perf_counter()
        # A read timeout ten times the latency: a busy machine cannot push it over.
        path = make_source(v1, timeout=3.0, attempts=1).fetch()
        elapsed = time.perf_counter() - started
        assert elapsed >= 0.3  # the toxic really delayed the response
        assert cr.read_verified(path, sha256=v1.sha256) == v1.data
        assert proxy.connections_total == 1


# -- scenario 2: retry logic ----------------------------------------------------------


class TestRetries:
    @pytest.mark.parametrize("failures", [pytest.param(n, id=f"{n}-resets") for n in (1, 2)])
    def test_connection_resets_are_retried_until_the_link_heals(
        self,
        store: ArtifactStore,
        proxy: ThreadedFaultProxy,
        versions: Versions,
        make_source: SourceFactory,
        no_backoff: None,
        retries: RetryLog,
        failures: int,
    ) -> None:
        """Each reset connection is retried; the attempt after the link heals succeeds."""
        v2 = versions.v2
        toxic = proxy.reset_peer()

        def heal(details: RetryDetails) -> None:
            if details.retry_num == failures:
                proxy.remove_toxic(toxic)

        retries.also(heal)
        path = make_source(v2, attempts=3).fetch()

        assert cr.read_verified(path, sha256=v2.sha256, size=v2.size) == v2.data
        assert [type(d.caused_by) for d in retries.details] == [httpx.ReadError] * failures
        assert store.requests(v2.path.name) == failures + 1
        assert proxy.connections_total == failures + 1

    def test_proxy_down_is_retried_until_it_is_up(
        self,
        store: ArtifactStore,
        proxy: ThreadedFaultProxy,
        versions: Versions,
        make_source: SourceFactory,
        no_backoff: None,
        retries: RetryLog,
    ) -> None:
        """A refused connection is retried; the store is reached once the link is back up."""
        v2 = versions.v2
        proxy.down()
        retries.also(lambda details: proxy.up())
        path = make_source(v2, attempts=3).fetch()

        assert cr.read_verified(path, sha256=v2.sha256, size=v2.size) == v2.data
        assert [type(d.caused_by) for d in retries.details] == [httpx.ConnectError]
        assert store.requests(v2.path.name) == 1
        assert proxy.connections_total == 1

    def test_backoff_between_attempts_is_real_and_exponential(
        self,
        store: ArtifactStore,
        proxy: ThreadedFaultProxy,
        versions: Versions,
        make_source: SourceFactory,
        retries: RetryLog,
    ) -> None:
        """Without testing mode, stamina really waits 50, 100, then 200 ms between attempts."""
        v2 = versions.v2
        toxic = proxy.reset_peer()
        scheduled_at: list[float] = []

        def heal(details: RetryDetails) -> None:
            scheduled_at.append(time.perf_counter())
            if details.retry_num == 3:
                proxy.remove_toxic(toxic)

        retries.also(heal)
        source = make_source(v2, attempts=4, wait_initial=0.05, wait_max=1.0, wait_jitter=0.0)
        with stamina.set_testing(False):
            source.fetch()
        done_at = time.perf_counter()

        waits = [d.wait_for for d in retries.details]
        assert waits == pytest.approx([0.05, 0.1, 0.2])
        # Each wait really elapsed before the next attempt (one attempt takes ~10 ms).
        gaps = [b - a for a, b in zip(scheduled_at, [*scheduled_at[1:], done_at], strict=True)]
        assert all(gap >= wait for gap, wait in zip(gaps, waits, strict=True)), gaps
        assert store.requests(v2.path.name) == 4

    def test_persistent_resets_give_up_after_the_attempts(
        self,
        store: ArtifactStore,
        proxy: ThreadedFaultProxy,
        versions: Versions,
        cache: pathlib.Path,
        registry: CollectorRegistry,
        make_source: SourceFactory,
        no_backoff: None,
        retries: RetryLog,
    ) -> None:
        """A link that never heals gets exactly ``attempts`` tries, then fetch_error."""
        v2 = versions.v2
        proxy.reset_peer()
        with pytest.raises(cr.IntegrityError) as info:
            make_source(v2, attempts=3).fetch()
        assert info.value.reason is cr.Reason.FETCH_ERROR
        assert isinstance(info.value.__cause__, httpx.ReadError)
        assert len(retries.details) == 2
        assert store.requests(v2.path.name) == 3
        assert proxy.connections_total == 3
        assert cache_listing(cache) == []
        assert integrity_failures(registry, "fetch_error") == 1

    @pytest.mark.parametrize(
        ("options", "error", "reason"),
        [
            pytest.param(
                {"name": "missing.safetensors"}, cr.IntegrityError, cr.Reason.FETCH_ERROR, id="404"
            ),
            pytest.param(
                {"sha256": "0" * 64, "size": None},
                cr.ChecksumMismatchError,
                cr.Reason.CHECKSUM_MISMATCH,
                id="digest-mismatch",
            ),
            pytest.param(
                {"size": 1000}, cr.SizeMismatchError, cr.Reason.SIZE_MISMATCH, id="size-mismatch"
            ),
        ],
    )
    def test_non_transient_faults_are_not_retried(
        self,
        store: ArtifactStore,
        proxy: ThreadedFaultProxy,
        versions: Versions,
        cache: pathlib.Path,
        make_source: SourceFactory,
        no_backoff: None,
        retries: RetryLog,
        options: dict[str, Any],
        error: type[cr.IntegrityError],
        reason: cr.Reason,
    ) -> None:
        """A 404 or bytes that fail verification are refused after exactly one request."""
        v2 = versions.v2
        name = options.get("name", v2.path.name)
        with pytest.raises(error) as info:
            make_source(v2, attempts=3, **options).fetch()
        assert info.value.reason is reason
        assert retries.details == []
        assert store.requests(name) == 1
        assert proxy.connections_total == 1
        assert cache_listing(cache) == []


# -- scenario 3: cascading ------------------------------------------------------------


@dataclasses.dataclass
class ReloadCounter:
    """How many ``/admin/reload`` requests the app has started and finished."""

    started: int = 0
    finished: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def start(self) -> None:
        with self.lock:
            self.started += 1

    def finish(self) -> None:
        with self.lock:
            self.finished += 1


def serving_app(
    guard: cr.ModelGuard[Model], new_source: Callable[[], HttpSource], counter: ReloadCounter
) -> Any:
    """Build the FastAPI app under test: predictions, probes and an admin reload."""
    from fastapi import FastAPI

    from clarity_resilience.degradation.fastapi import install

    app = FastAPI()
    install(app, guard)

    @app.post("/predict")
    async def predict() -> dict[str, float]:
        return {"value": await guard.predict_async(signature)}

    @app.post("/admin/reload")
    async def reload() -> dict[str, str]:
        counter.start()
        try:
            with new_source() as source:
                await guard.reload_async(source=source)
        finally:
            counter.finish()
        return {"status": "promoted"}

    return app


async def wait_until(condition: Callable[[], bool], *, what: str, timeout: float = 10.0) -> None:
    """Return once ``condition()`` holds, polled on the event loop until ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL)  # sleep-ok: poll interval; the condition synchronizes


@dataclasses.dataclass(frozen=True)
class CascadeRun:
    """What happened while the reloads hung on the slow upstream."""

    predictions: LoadResult[tuple[int, float]]  # (status, predicted value) per request
    probes: LoadResult[int]  # status per /livez request
    reloads: int  # reload requests sent
    in_flight_after: int  # reload requests still unanswered when the traffic ended
    # Predictions and probes answered while some reload was still unanswered.
    answered_during_hang: collections.Counter[str]
    reload_statuses: list[int]


async def send_traffic(
    client: httpx.AsyncClient, requests: int, hanging: Callable[[], bool]
) -> tuple[LoadResult[tuple[int, float]], LoadResult[int], collections.Counter[str]]:
    """Send ``requests`` predictions and as many probes, 5 at a time each.

    Also count the answers that arrived while ``hanging()`` held.
    """
    during_hang: collections.Counter[str] = collections.Counter()

    async def predict(call: Any) -> tuple[int, float]:
        response = await client.post("/predict")
        during_hang["predict"] += hanging()
        return response.status_code, response.json().get("value")

    async def probe(call: Any) -> int:
        response = await client.get("/livez")
        during_hang["probe"] += hanging()
        return response.status_code

    try:
        async with asyncio.timeout(TRAFFIC_DEADLINE):
            predictions, probes = await asyncio.gather(
                run_tasks(predict, tasks=5, iterations=requests // 5, seed=SEED),
                run_tasks(probe, tasks=5, iterations=requests // 5, seed=SEED),
            )
            return predictions, probes, during_hang
    except TimeoutError:
        pytest.fail(
            f"predictions and probes were still unanswered after {TRAFFIC_DEADLINE} s: "
            "they are blocked behind the hanging reloads"
        )


async def run_cascade(
    proxy: ThreadedFaultProxy,
    guard: cr.ModelGuard[Model],
    new_source: Callable[[], HttpSource],
    *,
    reloads: int,
    requests: int,
    release: bool,
) -> CascadeRun:
    """Serve the app, start ``reloads`` hanging reloads, then send predictions and probes.

    With ``release``, the upstream lets the held bytes through once the traffic has been
    answered, so the reloads can succeed; without it, they run into their own timeout.
    """
    counter = ReloadCounter()
    app = serving_app(guard, new_source, counter)
    hang: str | None = proxy.latency(HANG_MS)
    sent_before = proxy.bytes_upstream
    with serve_asgi(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=2 * RELOAD_TIMEOUT_PROMOTED) as client:
            pending = [asyncio.create_task(client.post("/admin/reload")) for _ in range(reloads)]
            try:
                # Every reload request is inside the app, and the first download's request
                # has reached the store (the upstream direction carries no toxic).
                await wait_until(
                    lambda: counter.started == reloads and proxy.bytes_upstream > sent_before,
                    what="every reload to be in flight",
                )
                predictions, probes, during_hang = await send_traffic(
                    client, requests, lambda: counter.finished < reloads
                )
                in_flight_after = reloads - counter.finished
                if release:
                    proxy.remove_toxic(hang)
                    hang = None
                statuses = [response.status_code for response in await asyncio.gather(*pending)]
            finally:
                if hang is not None:  # a failed run: let the reloads end, so the server can
                    proxy.remove_toxic(hang)
                await asyncio.gather(*pending, return_exceptions=True)
    return CascadeRun(predictions, probes, reloads, in_flight_after, during_hang, statuses)


@pytest.mark.timeout(CASCADE_TEST_TIMEOUT)
class TestCascading:
    @pytest.mark.parametrize(
        ("reload_timeout", "outcome"),
        [
            pytest.param(RELOAD_TIMEOUT_REFUSED, "refused", id="reloads-time-out"),
            pytest.param(RELOAD_TIMEOUT_PROMOTED, "promoted", id="reloads-succeed"),
        ],
    )
    @pytest.mark.asyncio
    async def test_slow_reloads_do_not_block_predictions_or_probes(
        self,
        store: ArtifactStore,
        proxy: ThreadedFaultProxy,
        versions: Versions,
        registry: CollectorRegistry,
        make_source: SourceFactory,
        reload_timeout: float,
        outcome: str,
    ) -> None:
        """While 5 reloads hang on the upstream, 50 predictions and 50 probes are answered."""
        v1, v2 = versions.v1, versions.v2
        guard = make_guard(make_source(v1), registry)
        await guard.load_async()

        run = await run_cascade(
            proxy,
            guard,
            lambda: make_source(v2, timeout=reload_timeout, attempts=1),
            reloads=5,
            requests=50,
            release=outcome == "promoted",
        )

        if outcome == "refused":
            # The reloads time out one after the other, while traffic is being answered.
            assert_served_while_reloads_hung(run, allowed={v1.signature}, all_hung=False)
            assert run.reload_statuses == [503] * 5
            assert guard.predict(signature) == v1.signature
            assert integrity_failures(registry, "timeout") == 5
        else:
            # Nothing could finish a reload before the release, which came after the traffic.
            assert_served_while_reloads_hung(run, allowed={v1.signature}, all_hung=True)
            assert run.reload_statuses == [200] * 5
            assert guard.predict(signature) == v2.signature
            assert store.requests(v2.path.name) == 1  # the others found it verified in cache

    @pytest.mark.asyncio
    async def test_reload_burst_larger_than_the_thread_pool_does_not_starve_predictions(
        self,
        store: ArtifactStore,
        proxy: ThreadedFaultProxy,
        versions: Versions,
        registry: CollectorRegistry,
        make_source: SourceFactory,
    ) -> None:
        """More concurrent reloads than asyncio's worker threads still let predictions in."""
        v1, v2 = versions.v1, versions.v2
        guard = make_guard(make_source(v1), registry)
        await guard.load_async()
        # asyncio's default executor (which asyncio.to_thread uses) has this many threads.
        workers = min(32, (getattr(os, "process_cpu_count", os.cpu_count)() or 1) + 4)

        run = await run_cascade(
            proxy,
            guard,
            lambda: make_source(v2, timeout=RELOAD_TIMEOUT_PROMOTED, attempts=1),
            reloads=workers + 2,
            requests=50,
            release=True,
        )

        assert_served_while_reloads_hung(run, allowed={v1.signature}, all_hung=True)
        assert run.reload_statuses == [200] * (workers + 2)


def assert_served_while_reloads_hung(
    run: CascadeRun, *, allowed: set[float], all_hung: bool
) -> None:
    """Assert every prediction and probe answered 200 while reloads still hung.

    Ordering, not speed: a request stuck behind a reload could only be answered after
    that reload ended, so the traffic would outlast the hang.
    """
    run.predictions.raise_for_untyped()
    run.probes.raise_for_untyped()
    assert run.predictions.counts() == {"ok": len(run.predictions.outcomes)}
    assert run.probes.counts() == {"ok": len(run.probes.outcomes)}
    answers = [o.value for o in run.predictions.outcomes if o.value is not None]
    assert len(answers) == len(run.predictions.outcomes)
    assert {status for status, _ in answers} == {200}
    assert {value for _, value in answers} <= allowed
    assert {o.value for o in run.probes.outcomes} == {200}
    if all_hung:
        assert run.in_flight_after == run.reloads
        assert run.answered_during_hang == {
            "predict": len(run.predictions.outcomes),
            "probe": len(run.probes.outcomes),
        }
    else:
        assert run.answered_during_hang["predict"] >= 1, run.answered_during_hang
        assert run.answered_during_hang["probe"] >= 1, run.answered_during_hang
