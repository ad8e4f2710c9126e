"""Service death and network latency, re-run against an S3 object store.

The store is moto's real S3 REST server on loopback (a child process that is SIGKILLed
and restarted, or a server thread behind the chaos kit's fault proxy); the client is
s3fs through ``FsspecSource``. As with the HTTP store, the guard must fail closed
(typed error, audit event, metric), keep serving the last known good version, never
leave a half-written file in its cache, and promote the new version once the store is
reachable again. Predictions are checked by content (each version's weights all equal
one value).
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requirements
import stamina
from chaos_models import Model, ModelVersion, publish, signature
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience.chaos import ThreadedFaultProxy
from clarity_resilience.instrumentation import Event, ReloadRefused
from clarity_resilience.sources import FsspecSource

try:
    import s3fs  # noqa: F401
    from s3_server import MotoS3, put
except ImportError:  # pragma: no cover - CI installs them
    MotoS3 = None  # type: ignore[assignment,misc]

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.non_destructive,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("no_backoff"),
]

BUCKET = "chaos-models"


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelVersion, ModelVersion]:
    """Two model versions (weights 1.0 and 2.0)."""
    root = tmp_path_factory.mktemp("versions")
    return publish(root, 1.0, "v1.safetensors"), publish(root, 2.0, "v2.safetensors")


def upload(s3: MotoS3, *versions: ModelVersion) -> None:
    """Create the bucket (if needed) and upload each version under its file name."""
    s3.client.create_bucket(Bucket=BUCKET)
    for version in versions:
        put(s3, BUCKET, version.path.name, version.data)


@pytest.fixture(scope="module")
def s3_thread(versions: tuple[ModelVersion, ModelVersion]) -> Iterator[MotoS3]:
    """moto's S3 server in a thread of this process, holding both versions."""
    if MotoS3 is None:
        requirements.missing("moto[server] and s3fs")
    with MotoS3() as server:
        upload(server, *versions)
        yield server


def source_for(
    s3: MotoS3,
    version: ModelVersion,
    cache: pathlib.Path,
    registry: CollectorRegistry,
    *,
    port: int | None = None,
    **options: Any,
) -> FsspecSource:
    return FsspecSource(
        f"s3://{BUCKET}/{version.path.name}",
        sha256=version.sha256,
        size=version.size,
        cache_dir=cache,
        storage_options=s3.storage_options(port),
        model="m",
        registry=registry,
        **options,
    )


def guard_for(source: FsspecSource, registry: CollectorRegistry) -> cr.ModelGuard[Model]:
    return cr.ModelGuard("m", source=source, loader=cr.loaders.safetensors, registry=registry)


def failures(registry: CollectorRegistry, reason: cr.Reason) -> float:
    labels = {"model": "m", "reason": reason.value}
    return registry.get_sample_value("model_integrity_failures_total", labels) or 0.0


def no_partial_files(cache: pathlib.Path) -> bool:
    return not list(cache.glob(".*.part"))


class TestServiceDeath:
    @pytest.mark.slow  # starts a moto process twice: ~10-15 s on a busy machine
    def test_store_killed_keeps_last_known_good_then_promotes(
        self,
        versions: tuple[ModelVersion, ModelVersion],
        tmp_path: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """S3 killed: the reload is refused (fetch_error), v1 serves; restarted: v2 promoted."""
        if MotoS3 is None:
            requirements.missing("moto[server] and s3fs")
        v1, v2 = versions
        cache = tmp_path / "cache"
        with MotoS3(process=True) as store:
            upload(store, v1, v2)
            guard = guard_for(source_for(store, v1, cache, registry), registry)
            guard.load()
            store.kill()

            with pytest.raises(cr.IntegrityError) as info:
                guard.reload(source=source_for(store, v2, cache, registry, attempts=2))
            assert info.value.reason is cr.Reason.FETCH_ERROR
            assert guard.predict(signature) == v1.signature
            assert failures(registry, cr.Reason.FETCH_ERROR) == 1.0
            assert [e for e in events if isinstance(e, ReloadRefused)]
            assert no_partial_files(cache)

            store.start()
            upload(store, v1, v2)
            guard.reload(source=source_for(store, v2, cache, registry))
            assert guard.predict(signature) == v2.signature


class TestNetworkLatency:
    def test_slow_link_fails_the_reload_with_timeout_while_v1_serves(
        self,
        s3_thread: MotoS3,
        versions: tuple[ModelVersion, ModelVersion],
        tmp_path: pathlib.Path,
        registry: CollectorRegistry,
    ) -> None:
        """Latency over the timeout: the reload fails typed and bounded; predictions go on."""
        v1, v2 = versions
        cache = tmp_path / "cache"
        guard = guard_for(source_for(s3_thread, v1, cache, registry), registry)
        guard.load()
        with ThreadedFaultProxy("127.0.0.1", s3_thread.port, seed=1) as proxy:
            proxy.latency(1500)
            source = source_for(
                s3_thread, v2, cache, registry, port=proxy.port, timeout=0.3, attempts=2
            )
            outcome: list[BaseException] = []

            def reload() -> None:
                try:
                    guard.reload(source=source)
                except cr.IntegrityError as e:
                    outcome.append(e)

            thread = threading.Thread(target=reload)
            start = time.monotonic()
            thread.start()
            answered = 0
            while thread.is_alive():
                # Predictions are answered by v1 all along: no cascading stall.
                assert guard.predict(signature) == v1.signature
                answered += 1
                time.sleep(0.01)  # sleep-ok: polling for a condition, bounded by a deadline
            thread.join()
        assert time.monotonic() - start < 20
        assert answered > 0
        assert len(outcome) == 1
        assert isinstance(outcome[0], cr.IntegrityError)
        assert outcome[0].reason is cr.Reason.TIMEOUT
        assert failures(registry, cr.Reason.TIMEOUT) == 1.0
        assert no_partial_files(cache)

    def test_resets_during_the_reload_are_retried_and_v2_promoted(
        self,
        s3_thread: MotoS3,
        versions: tuple[ModelVersion, ModelVersion],
        tmp_path: pathlib.Path,
        registry: CollectorRegistry,
    ) -> None:
        """A reset link heals after the first retry; the reload promotes v2."""
        v1, v2 = versions
        cache = tmp_path / "cache"
        guard = guard_for(source_for(s3_thread, v1, cache, registry), registry)
        guard.load()
        with ThreadedFaultProxy("127.0.0.1", s3_thread.port, seed=2) as proxy:
            toxic = proxy.reset_peer()
            retried: list[Any] = []

            def heal(details: Any) -> None:
                retried.append(details)
                proxy.remove_toxic(toxic)

            previous = stamina.instrumentation.get_on_retry_hooks()
            stamina.instrumentation.set_on_retry_hooks([heal])
            try:
                guard.reload(source=source_for(s3_thread, v2, cache, registry, port=proxy.port))
            finally:
                stamina.instrumentation.set_on_retry_hooks(previous)
        assert len(retried) == 1
        assert guard.predict(signature) == v2.signature
        assert no_partial_files(cache)
