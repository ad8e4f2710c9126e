"""Tests for clarity_resilience.ModelGuard: verified loads, last known good, predictions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import pathlib
import threading
from typing import Any

import numpy as np
import pytest
import structlog
import time_machine
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr
from clarity_resilience.instrumentation import Event, IntegrityCheckPassed, set_on_event_hooks

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)


def model_bytes(value: float, n: int = 64) -> bytes:
    """A real safetensors model whose every weight equals ``value``."""
    return save({"w": np.full((n, n), value, np.float32), "b": np.full(n, value, np.float32)})


def write(path: pathlib.Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def total(model: dict[str, np.ndarray]) -> float:
    """A prediction that depends on every weight: a half-swapped model would show."""
    return float(sum(float(t.sum()) for t in model.values()))


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def model_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, str]:
    path = tmp_path / "model.safetensors"
    return path, write(path, model_bytes(1.0))


def make_guard(
    path: pathlib.Path, sha256: str, registry: CollectorRegistry, **kwargs: Any
) -> cr.ModelGuard[dict[str, np.ndarray]]:
    return cr.ModelGuard(
        "m", path=path, sha256=sha256, loader=cr.loaders.safetensors, registry=registry, **kwargs
    )


class TestLoad:
    def test_nothing_serves_before_load(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """Before a verified load, model raises ModelUnavailableError with a short retry."""
        guard = make_guard(*model_file, registry)
        assert not guard.ready
        with pytest.raises(cr.ModelUnavailableError) as info:
            _ = guard.model
        assert info.value.reason == cr.Reason.UNAVAILABLE
        assert info.value.retry_after == 5.0

    def test_load_serves_the_verified_model(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """A verified load serves the model and records load and check durations."""
        guard = make_guard(*model_file, registry)
        guard.load()
        assert guard.ready
        assert total(guard.model) == 64 * 64 + 64
        assert sample(registry, "model_load_duration_seconds_count", model="m") == 1.0
        assert sample(registry, "checksum_verification_duration_seconds_count", model="m") == 1.0

    def test_corrupted_file_is_refused_and_nothing_serves(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """A tampered file never loads; the guard reports the integrity reason and a long retry."""
        path, digest = model_file
        data = bytearray(path.read_bytes())
        data[100] ^= 0x01
        path.write_bytes(data)
        guard = make_guard(path, digest, registry)
        with pytest.raises(cr.ChecksumMismatchError):
            guard.load()
        with pytest.raises(cr.ModelUnavailableError) as info:
            _ = guard.model
        assert info.value.reason == cr.Reason.CHECKSUM_MISMATCH
        assert info.value.retry_after == 300.0
        assert guard.status()["last_error"] == "checksum_mismatch"
        assert (
            sample(
                registry, "model_integrity_failures_total", model="m", reason="checksum_mismatch"
            )
            == 1.0
        )

    def test_loader_failure_is_a_model_load_error(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Verified bytes the loader rejects raise ModelLoadError; nothing serves."""
        path = tmp_path / "not-a-model.bin"
        digest = write(path, b"\x00" * 32)
        guard = make_guard(path, digest, registry)
        with pytest.raises(cr.ModelLoadError):
            guard.load()
        assert not guard.ready

    def test_repeated_load_failures_open_the_breaker(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """While nothing serves, five failed loads open the breaker and the sixth is rejected."""
        path, digest = model_file
        path.unlink()
        guard = make_guard(path, digest, registry)
        with time_machine.travel(T0, tick=False):
            for _ in range(5):
                with pytest.raises(cr.IntegrityError):
                    guard.load()
            with pytest.raises(cr.CircuitOpenError) as info:
                guard.load()
        assert info.value.retry_after == pytest.approx(60.0)

    def test_load_async_hashes_off_the_event_loop(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """load_async verifies in a worker thread, never on the event loop's thread."""
        guard = make_guard(*model_file, registry)
        threads: list[str] = []

        def hook(event: Event) -> None:
            if isinstance(event, IntegrityCheckPassed):
                threads.append(threading.current_thread().name)

        async def main() -> str:
            await guard.load_async()
            return threading.current_thread().name

        set_on_event_hooks([hook])
        try:
            loop_thread = asyncio.run(main())
        finally:
            set_on_event_hooks(None)
        assert guard.ready
        assert threads
        assert loop_thread not in threads


class TestReload:
    def test_refused_reload_keeps_last_known_good(
        self,
        model_file: tuple[pathlib.Path, str],
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """A file rewritten in place is refused; the same model object keeps serving."""
        path, digest = model_file
        guard = make_guard(path, digest, registry)
        guard.load()
        serving = guard.model
        path.write_bytes(model_bytes(2.0))
        with pytest.raises(cr.ChecksumMismatchError):
            guard.reload()
        assert guard.model is serving
        refused = [e for e in events if isinstance(e, cr.instrumentation.ReloadRefused)]
        assert len(refused) == 1
        assert refused[0].reason == cr.Reason.CHECKSUM_MISMATCH
        assert refused[0].serving_sha256 == digest

    def test_refused_reloads_do_not_open_the_breaker(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """Ten refused reloads leave a healthy model's breaker closed and predictions flowing."""
        path, digest = model_file
        guard = make_guard(path, digest, registry)
        guard.load()
        path.write_bytes(b"garbage")
        for _ in range(10):
            with pytest.raises(cr.IntegrityError):
                guard.reload()
        assert guard.breaker.state == "closed"
        assert guard.predict(total) == 64 * 64 + 64

    def test_good_reload_promotes(
        self,
        model_file: tuple[pathlib.Path, str],
        tmp_path: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
    ) -> None:
        """A verified new version replaces the old one and is audited as promoted."""
        guard = make_guard(*model_file, registry)
        guard.load()
        new = tmp_path / "v2.safetensors"
        new_digest = write(new, model_bytes(2.0))
        guard.reload(path=new, sha256=new_digest, version="v2")
        assert guard.predict(total) == 2 * (64 * 64 + 64)
        assert guard.status()["version"] == "v2"
        assert guard.status()["sha256"] == new_digest[:12]
        promoted = [e for e in events if isinstance(e, cr.instrumentation.ReloadPromoted)]
        assert promoted[0].new_sha256 == new_digest

    def test_reload_under_concurrent_predictions(
        self, model_file: tuple[pathlib.Path, str], tmp_path: pathlib.Path
    ) -> None:
        """8 threads predict through 20 reloads: no failure, each answer from one whole model."""
        guard = make_guard(*model_file, CollectorRegistry())
        guard.load()
        versions = []
        for i in range(2, 6):
            path = tmp_path / f"v{i}.safetensors"
            versions.append((path, write(path, model_bytes(float(i)))))
        allowed = {float(i) * (64 * 64 + 64) for i in range(1, 6)}
        stop = threading.Event()
        seen_values: set[float] = set()
        answered = threading.Condition()
        ready = threading.Barrier(9, timeout=10)

        def client() -> list[float]:
            seen = [guard.predict(total)]  # v1, before any reload
            ready.wait()
            while not stop.is_set():
                seen.append(value := guard.predict(total))
                with answered:
                    seen_values.add(value)
                    answered.notify_all()
            return seen

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(client) for _ in range(8)]
            ready.wait()
            try:
                for i in range(20):
                    path, digest = versions[i % len(versions)]
                    guard.reload(path=path, sha256=digest)
                    expected = float(2 + i % len(versions)) * (64 * 64 + 64)
                    with answered:  # clients are answering from the version just promoted
                        assert answered.wait_for(lambda e=expected: e in seen_values, 10)
                        seen_values.clear()
            finally:
                stop.set()
            # result() re-raises any failure a client met: zero failed predictions.
            answers = [a for future in futures for a in future.result(timeout=30)]
        assert set(answers) <= allowed  # every answer from one complete, verified model
        assert len(set(answers)) == len(allowed)  # v1 and all four new versions served

    def test_reload_argument_checks(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """A manifest-backed guard refuses a bare sha256 on reload."""
        path, _ = model_file
        manifest = cr.Manifest.build(path.parent)
        guard = cr.ModelGuard(
            "m", path=path.parent, manifest=manifest, loader=cr.loaders.safetensors
        )
        with pytest.raises(ValueError, match="manifest"):
            guard.reload(sha256="0" * 64)


class TestOrigins:
    def test_manifest_entry(self, tmp_path: pathlib.Path, registry: CollectorRegistry) -> None:
        """A manifest entry loads through the manifest's digest and size; tampering is refused."""
        directory = tmp_path / "model"
        directory.mkdir()
        write(directory / "weights.safetensors", model_bytes(3.0))
        (directory / "config.json").write_text("{}")
        manifest_path = tmp_path / "SHA256SUMS"
        cr.Manifest.build(directory).write(manifest_path, format="json")
        guard = cr.ModelGuard(
            "m",
            path=directory,
            manifest=manifest_path,
            entry="weights.safetensors",
            loader=cr.loaders.safetensors,
            registry=registry,
        )
        guard.load()
        assert guard.predict(total) == 3 * (64 * 64 + 64)
        (directory / "weights.safetensors").write_bytes(model_bytes(4.0))
        with pytest.raises(cr.ChecksumMismatchError):
            guard.reload()
        assert guard.predict(total) == 3 * (64 * 64 + 64)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            pytest.param({}, "exactly one", id="no-origin"),
            pytest.param({"sha256": "0" * 64}, "path", id="digest-without-path"),
            pytest.param(
                {"sha256": "0" * 64, "manifest": "x", "path": "p"}, "exactly one", id="two"
            ),
            pytest.param({"sha256": "xyz", "path": "p"}, "64 hex", id="bad-digest"),
        ],
    )
    def test_bad_origins_are_refused(self, kwargs: dict[str, Any], match: str) -> None:
        """The guard needs exactly one complete origin."""
        with pytest.raises(ValueError, match=match):
            cr.ModelGuard("m", **kwargs)

    def test_manifest_with_several_files_needs_entry(self, tmp_path: pathlib.Path) -> None:
        """Which file to load is never guessed."""
        (tmp_path / "a").write_bytes(b"a")
        (tmp_path / "b").write_bytes(b"b")
        with pytest.raises(ValueError, match="entry="):
            cr.ModelGuard("m", path=tmp_path, manifest=cr.Manifest.build(tmp_path))

    @pytest.mark.parametrize(
        ("manifest_text", "reason"),
        [
            pytest.param(None, cr.Reason.MISSING, id="missing"),
            pytest.param("not a manifest\n", cr.Reason.MANIFEST_INVALID, id="malformed"),
            pytest.param(f"{'0' * 64}  other.bin\n", cr.Reason.MANIFEST_INVALID, id="no-entry"),
        ],
    )
    def test_bad_manifest_file_is_an_audited_refusal(
        self,
        model_file: tuple[pathlib.Path, str],
        registry: CollectorRegistry,
        events: list[Event],
        manifest_text: str | None,
        reason: cr.Reason,
    ) -> None:
        """A missing or malformed manifest is read at load, refused, counted and audited."""
        path, _ = model_file
        manifest = path.parent / "SHA256SUMS"
        if manifest_text is not None:
            manifest.write_text(manifest_text)
        guard = cr.ModelGuard(
            "m", path=path.parent, manifest=manifest, entry=path.name, registry=registry
        )
        with pytest.raises(cr.ManifestError) as info:
            guard.load()
        assert info.value.reason == reason
        assert not guard.ready
        failed = [e for e in events if isinstance(e, cr.instrumentation.IntegrityCheckFailed)]
        assert [e.reason for e in failed] == [reason]
        assert (
            sample(registry, "model_integrity_failures_total", model="m", reason=reason.value)
            == 1.0
        )


class TestPredict:
    def test_success_and_failure_are_counted(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """Predictions count successes and failures by reason."""
        guard = make_guard(*model_file, registry)
        guard.load()
        guard.predict(total)

        def broken(model: object) -> None:
            raise RuntimeError("kernel crashed")

        with pytest.raises(RuntimeError):
            guard.predict(broken)
        assert sample(registry, "prediction_success_total", model="m") == 1.0
        assert sample(registry, "prediction_failure_total", model="m", reason="internal") == 1.0

    def test_unavailable_prediction_is_counted(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """A prediction with nothing loaded is denied and counted as unavailable."""
        guard = make_guard(*model_file, registry)
        with pytest.raises(cr.ModelUnavailableError):
            guard.predict(total)
        assert sample(registry, "prediction_failure_total", model="m", reason="unavailable") == 1

    def test_failures_open_the_breaker(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """Five failing predictions open the breaker; later ones are denied as breaker_open."""
        guard = make_guard(*model_file, registry)
        guard.load()

        def broken(model: object) -> None:
            raise RuntimeError

        with time_machine.travel(T0, tick=False) as clock:
            for _ in range(5):
                with pytest.raises(RuntimeError):
                    guard.predict(broken)
            with pytest.raises(cr.CircuitOpenError):
                guard.predict(total)
            assert (
                sample(registry, "prediction_failure_total", model="m", reason="breaker_open")
                == 1.0
            )
            clock.shift(60)
            assert guard.predict(total) == 64 * 64 + 64
        assert guard.breaker.state == "closed"

    def test_rejected_predictions_are_counted_each_and_audited_once(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """50 denials by an open breaker: 50 counted; sampled audit lines carry the reason."""
        guard = make_guard(*model_file, registry, breaker=cr.Breaker("m", fail_max=1))
        guard.load()

        def broken(model: object) -> None:
            raise RuntimeError

        with pytest.raises(RuntimeError):
            guard.predict(broken)
        with structlog.testing.capture_logs() as logs:
            for _ in range(50):
                with pytest.raises(cr.CircuitOpenError):
                    guard.predict(total)
        denials = [e for e in logs if e.get("reason") == "breaker_open"]
        assert [(e["event"], e["rejected_since_open"]) for e in denials] == [
            ("clarity_resilience.call_rejected", 1),
            ("clarity_resilience.call_rejected", 10),
        ]
        assert sample(registry, "prediction_failure_total", model="m", reason="breaker_open") == 50

    @pytest.mark.parametrize(
        "error",
        [
            pytest.param(cr.InvalidInputError("wrong shape"), id="invalid-input-error"),
            pytest.param(ValueError("not finite"), id="configured-value-error"),
        ],
    )
    def test_bad_input_never_trips_the_breaker(
        self,
        model_file: tuple[pathlib.Path, str],
        registry: CollectorRegistry,
        error: Exception,
    ) -> None:
        """100 bad inputs raise InvalidInputError, count as invalid_input, trip nothing."""
        guard = make_guard(*model_file, registry, invalid_input=[ValueError])
        guard.load()

        def reject(model: object) -> None:
            raise error

        for _ in range(100):
            with pytest.raises(cr.InvalidInputError):
                guard.predict(reject)
        assert guard.breaker.state == "closed"
        assert guard.breaker.fail_counter == 0
        assert (
            sample(registry, "prediction_failure_total", model="m", reason="invalid_input")
            == 100.0
        )

    def test_predict_async_runs_sync_functions_in_a_thread(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """A plain function given to predict_async runs off the event loop thread."""
        guard = make_guard(*model_file, registry)
        guard.load()

        def where(model: object) -> str:
            return threading.current_thread().name

        async def how(model: dict[str, np.ndarray], scale: float) -> float:
            await asyncio.sleep(0)
            return total(model) * scale

        async def main() -> tuple[str, str, float]:
            worker = await guard.predict_async(where)
            scaled = await guard.predict_async(how, 2.0)
            return threading.current_thread().name, worker, scaled

        loop_thread, worker_thread, scaled = asyncio.run(main())
        assert worker_thread != loop_thread
        assert scaled == 2 * (64 * 64 + 64)
        assert sample(registry, "prediction_success_total", model="m") == 2.0

    def test_status_is_safe_to_show(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """status() carries no path and only a digest prefix."""
        path, digest = model_file
        guard = make_guard(path, digest, registry)
        guard.load()
        status = guard.status()
        assert status == {
            "model": "m",
            "ready": True,
            "sha256": digest[:12],
            "version": None,
            "signer": None,
            "breaker": "closed",
            "last_error": None,
        }
        assert str(path) not in repr(status)


class TestTransientRefusals:
    def test_store_outage_asks_for_a_quick_retry(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """An unreachable store is unavailable (short retry), not an integrity failure."""
        import socket

        from clarity_resilience.degradation import problem_for
        from clarity_resilience.sources import HttpSource

        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/model.safetensors"
        source = HttpSource(url, sha256="0" * 64, cache_dir=tmp_path, attempts=1, timeout=1)
        guard = cr.ModelGuard("m", source=source, registry=registry)
        with pytest.raises(cr.IntegrityError):
            guard.load()
        with pytest.raises(cr.ModelUnavailableError) as info:
            _ = guard.model
        assert info.value.reason == cr.Reason.FETCH_ERROR
        assert info.value.retry_after == 5.0
        problem = problem_for(info.value)
        assert problem is not None
        assert (problem.reason, problem.retry_after) == ("unavailable", 5)
        # Counted under the guard's own name and registry, not the source's defaults.
        assert (
            sample(registry, "model_integrity_failures_total", model="m", reason="fetch_error")
            == 1.0
        )


class TestSourceCache:
    def test_tampered_cache_is_counted_once_and_downloaded_again(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A tampered cached copy is refused, counted once, evicted and fetched afresh."""
        from artifact_store import ArtifactStore

        from clarity_resilience.sources import HttpSource

        root = tmp_path / "store"
        root.mkdir()
        digest = write(root / "model.safetensors", model_bytes(1.0))
        with ArtifactStore(root) as store:
            source = HttpSource(
                store.url("model.safetensors"),
                sha256=digest,
                cache_dir=tmp_path / "cache",
                attempts=1,
            )
            guard = cr.ModelGuard(
                "m", source=source, loader=cr.loaders.safetensors, registry=registry
            )
            guard.load()
            source.path.write_bytes(model_bytes(666.0))  # the cache is tampered with
            guard.reload()
            requests = store.requests("model.safetensors")
        assert guard.predict(total) == 64 * 64 + 64  # the real model, downloaded again
        assert requests == 2
        assert (
            sample(
                registry, "model_integrity_failures_total", model="m", reason="checksum_mismatch"
            )
            == 1.0
        )
        assert cr.sha256_file(source.path) == digest


class TestReloadOrigin:
    def test_reload_is_keyword_only(self, model_file: tuple[pathlib.Path, str]) -> None:
        """reload() and reload_async() take keywords only, like the constructor."""
        path, digest = model_file
        guard = make_guard(path, digest, CollectorRegistry())
        with pytest.raises(TypeError):
            guard.reload(path, digest)  # type: ignore[misc]
        with pytest.raises(TypeError):
            asyncio.run(guard.reload_async(path, digest))  # type: ignore[misc]

    def test_reload_async_passes_every_keyword(
        self, model_file: tuple[pathlib.Path, str], tmp_path: pathlib.Path
    ) -> None:
        """reload_async(path=, sha256=, size=, version=) promotes exactly that version."""
        guard = make_guard(*model_file, CollectorRegistry())
        guard.load()
        new = tmp_path / "v2.safetensors"
        data = model_bytes(2.0)
        new_digest = write(new, data)
        asyncio.run(guard.reload_async(path=new, sha256=new_digest, size=len(data), version="v2"))
        assert guard.predict(total) == 2 * (64 * 64 + 64)
        assert guard.status()["version"] == "v2"
        assert guard.origin == cr._origin.PinnedFile(str(new), new_digest, len(data), "v2")
        with pytest.raises(cr.SizeMismatchError):
            asyncio.run(guard.reload_async(size=len(data) + 1))

    def test_refused_reload_does_not_become_the_origin(
        self,
        model_file: tuple[pathlib.Path, str],
        tmp_path: pathlib.Path,
        registry: CollectorRegistry,
    ) -> None:
        """After a refused reload, load() and a bare reload() read the last good origin."""
        path, digest = model_file
        guard = make_guard(path, digest, registry)
        guard.load()
        good = guard.origin
        bad = tmp_path / "bad.safetensors"
        bad_digest = write(bad, model_bytes(9.0))
        bad.write_bytes(model_bytes(8.0))  # tampered after its digest was published
        with pytest.raises(cr.ChecksumMismatchError):
            guard.reload(path=bad, sha256=bad_digest)
        assert guard.origin is good
        assert total(guard.reload()) == 64 * 64 + 64
        assert total(guard.load()) == 64 * 64 + 64
        assert sample(registry, "model_integrity_failures_total", model="m",
                      reason="checksum_mismatch") == 1.0  # fmt: skip

    def test_refused_first_reload_keeps_the_configured_origin(
        self, model_file: tuple[pathlib.Path, str], tmp_path: pathlib.Path
    ) -> None:
        """With nothing serving, a refused reload leaves load() reading the configured origin."""
        guard = make_guard(*model_file, CollectorRegistry())
        configured = guard.origin
        with pytest.raises(cr.IntegrityError):
            guard.reload(path=tmp_path / "absent", sha256="0" * 64)
        assert guard.origin is configured
        assert total(guard.load()) == 64 * 64 + 64

    def test_promoted_reload_becomes_the_origin(
        self, model_file: tuple[pathlib.Path, str], tmp_path: pathlib.Path
    ) -> None:
        """A promoted version is what the next bare reload() reads (and refuses if tampered)."""
        guard = make_guard(*model_file, CollectorRegistry())
        guard.load()
        new = tmp_path / "v2.safetensors"
        new_digest = write(new, model_bytes(2.0))
        guard.reload(path=new, sha256=new_digest)
        new.write_bytes(model_bytes(3.0))
        with pytest.raises(cr.ChecksumMismatchError) as info:
            guard.reload()
        assert info.value.path == str(new)

    def test_new_file_without_size_does_not_inherit_the_old_size(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """reload(path=, sha256=) of a file of another size loads: the old size is not checked."""
        old = tmp_path / "v1.safetensors"
        old_data = model_bytes(1.0, n=8)
        guard = make_guard(old, write(old, old_data), registry, size=len(old_data))
        guard.load()
        new = tmp_path / "v2.safetensors"
        new_data = model_bytes(2.0, n=16)
        assert len(new_data) != len(old_data)
        guard.reload(path=new, sha256=write(new, new_data))
        assert guard.predict(total) == 2 * (16 * 16 + 16)
        assert guard.origin.size is None  # type: ignore[attr-defined]
        assert sample(registry, "model_integrity_failures_total", model="m",
                      reason="size_mismatch") == 0.0  # fmt: skip

    def test_new_digest_for_the_same_path_drops_the_old_size(self, tmp_path: pathlib.Path) -> None:
        """A file rewritten with a new published digest and size loads with sha256= alone."""
        path = tmp_path / "m.safetensors"
        data = model_bytes(1.0, n=8)
        guard = make_guard(path, write(path, data), CollectorRegistry(), size=len(data))
        guard.load()
        new_digest = write(path, model_bytes(2.0, n=16))
        guard.reload(sha256=new_digest)
        assert guard.predict(total) == 2 * (16 * 16 + 16)

    def test_version_only_reload_keeps_the_pinned_size(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """reload(version=) keeps path, digest and size: a grown file is refused for its size."""
        path, digest = model_file
        guard = make_guard(path, digest, registry, size=path.stat().st_size)
        guard.load()
        path.write_bytes(path.read_bytes() + b"\x00")
        with pytest.raises(cr.SizeMismatchError):
            guard.reload(version="v2")
        assert guard.status()["version"] is None

    def test_manifest_guard_reloads_another_entry(self, tmp_path: pathlib.Path) -> None:
        """reload(entry=) on a manifest origin switches the entry instead of ignoring it."""
        (tmp_path / "a.safetensors").write_bytes(model_bytes(1.0))
        (tmp_path / "b.safetensors").write_bytes(model_bytes(2.0))
        guard = cr.ModelGuard(
            "m",
            path=tmp_path,
            manifest=cr.Manifest.build(tmp_path),
            entry="a.safetensors",
            loader=cr.loaders.safetensors,
        )
        assert total(guard.load()) == 64 * 64 + 64
        assert total(guard.reload(entry="b.safetensors")) == 2 * (64 * 64 + 64)
        assert total(asyncio.run(guard.reload_async(entry="a.safetensors"))) == 64 * 64 + 64
        with pytest.raises(ValueError, match="entry="):
            make_guard(tmp_path / "a.safetensors", "0" * 64, CollectorRegistry()).reload(
                entry="b.safetensors"
            )

    def test_repr_names_the_origin_kind_not_its_path(
        self, model_file: tuple[pathlib.Path, str]
    ) -> None:
        """repr shows state, origin kind, a digest prefix and the breaker; never the path."""
        path, digest = model_file
        guard = make_guard(path, digest, CollectorRegistry())
        assert repr(guard) == (
            f"<ModelGuard 'm' unavailable origin='file sha256={digest[:12]}' breaker='closed'>"
        )
        guard.load()
        assert repr(guard).startswith("<ModelGuard 'm' ready ")
        assert str(path) not in repr(guard)


class TestLoadOutcomes:
    def test_first_load_is_neither_promoted_nor_refused(
        self,
        model_file: tuple[pathlib.Path, str],
        tmp_path: pathlib.Path,
        events: list[Event],
    ) -> None:
        """Reload events are about replacing a serving model: a first load emits none."""
        path, digest = model_file
        failing = make_guard(tmp_path / "absent", digest, CollectorRegistry())
        with pytest.raises(cr.IntegrityError):
            failing.load()
        make_guard(path, digest, CollectorRegistry()).load()
        names = {e.name for e in events}
        assert "clarity_resilience.reload_refused" not in names
        assert "clarity_resilience.reload_promoted" not in names
        assert "clarity_resilience.model_loaded" in names

    def test_promotion_reports_old_and_new_digest_and_version(
        self,
        model_file: tuple[pathlib.Path, str],
        tmp_path: pathlib.Path,
        events: list[Event],
    ) -> None:
        """ReloadPromoted names the digest replaced, the new one and the new version."""
        path, digest = model_file
        guard = make_guard(path, digest, CollectorRegistry())
        guard.load()
        new = tmp_path / "v2.safetensors"
        new_digest = write(new, model_bytes(2.0))
        guard.reload(path=new, sha256=new_digest, version="v2")
        promoted = [e for e in events if isinstance(e, cr.instrumentation.ReloadPromoted)]
        assert [(e.old_sha256, e.new_sha256, e.version) for e in promoted] == [
            (digest, new_digest, "v2")
        ]

    def test_success_clears_the_last_error(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """A load that succeeds after a refusal reports no last error."""
        path, digest = model_file
        data = path.read_bytes()
        path.write_bytes(b"tampered")
        guard = make_guard(path, digest, registry)
        with pytest.raises(cr.IntegrityError):
            guard.load()
        assert guard.status()["last_error"] == "checksum_mismatch"
        path.write_bytes(data)
        guard.load()
        assert guard.status()["last_error"] is None
        assert guard.ready

    def test_loader_refusal_asks_for_a_quick_retry(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Nothing serving after a loader error: unavailable_retry_after, reason load_error."""
        path = tmp_path / "junk.bin"
        guard = make_guard(
            path,
            write(path, b"\x00" * 32),
            registry,
            unavailable_retry_after=7,
            integrity_retry_after=70,
        )
        with pytest.raises(cr.ModelLoadError):
            guard.load()
        with pytest.raises(cr.ModelUnavailableError) as info:
            _ = guard.model
        assert (info.value.reason, info.value.retry_after) == (cr.Reason.LOAD_ERROR, 7.0)
        assert isinstance(info.value.__cause__, cr.ModelLoadError)

    def test_integrity_refusal_uses_the_configured_long_retry(
        self, tmp_path: pathlib.Path
    ) -> None:
        """Nothing serving after a digest mismatch: integrity_retry_after is the hint."""
        path = tmp_path / "m.bin"
        path.write_bytes(b"x")
        guard = make_guard(path, "0" * 64, CollectorRegistry(), integrity_retry_after=70)
        with pytest.raises(cr.ChecksumMismatchError):
            guard.load()
        with pytest.raises(cr.ModelUnavailableError) as info:
            guard.predict(total)
        assert info.value.retry_after == 70.0

    @pytest.mark.parametrize("name", ["", None, 3])
    def test_name_must_be_a_non_empty_string(self, name: Any) -> None:
        """The name is a metric label and a breaker name: it must be a non-empty str."""
        with pytest.raises(ValueError, match="name must be a non-empty str"):
            cr.ModelGuard(name, path="p", sha256="0" * 64)
        with pytest.raises(ValueError, match="name must be a non-empty str"):  # own breaker
            cr.ModelGuard(name, path="p", sha256="0" * 64, breaker=cr.Breaker("b"))

    def test_a_new_guard_is_registered_before_any_load(
        self, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """Construction emits model_registered, so alerts see the model from the start."""
        cr.ModelGuard("m", path="p", sha256="0" * 64, registry=registry)
        assert [e.name for e in events if isinstance(e, cr.instrumentation.ModelRegistered)] == [
            "clarity_resilience.model_registered"
        ]
        assert sample(registry, "model_integrity_failures_total", model="m",
                      reason="checksum_mismatch") == 0.0  # fmt: skip


class TestPredictMore:
    def test_arguments_reach_the_function(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """predict and predict_async call fn(model, *args, **kwargs) with the serving model."""
        guard = make_guard(*model_file, registry)
        guard.load()

        def scaled(model: dict[str, np.ndarray], a: float, *, b: float) -> float:
            return total(model) * a + b

        async def ascaled(model: dict[str, np.ndarray], a: float, *, b: float) -> float:
            return scaled(model, a, b=b)

        expected = (64 * 64 + 64) * 2.0 + 1.0
        assert guard.predict(scaled, 2.0, b=1.0) == expected
        assert asyncio.run(guard.predict_async(scaled, 2.0, b=1.0)) == expected
        assert asyncio.run(guard.predict_async(ascaled, 2.0, b=1.0)) == expected

    def test_timeout_is_counted_as_timeout(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """A TimeoutError from fn is re-raised and counted under reason timeout."""
        guard = make_guard(*model_file, registry)
        guard.load()

        def slow(model: object) -> None:
            raise TimeoutError

        with pytest.raises(TimeoutError):
            guard.predict(slow)
        assert sample(registry, "prediction_failure_total", model="m", reason="timeout") == 1.0
        assert sample(registry, "prediction_failure_total", model="m", reason="internal") == 0.0

    @pytest.mark.parametrize("kind", ["async-def", "plain", "plain-returning-awaitable"])
    def test_async_bad_input_never_trips_the_breaker(
        self,
        model_file: tuple[pathlib.Path, str],
        registry: CollectorRegistry,
        kind: str,
    ) -> None:
        """predict_async maps a configured invalid_input type for every kind of function."""
        guard = make_guard(
            *model_file, registry, invalid_input=[ValueError], breaker=cr.Breaker("m", fail_max=2)
        )
        guard.load()

        async def areject(model: object) -> None:
            raise ValueError("NaN in features")

        def reject(model: object) -> None:
            raise ValueError("NaN in features")

        def returns_awaitable(model: object) -> Any:
            return areject(model)

        fn = {
            "async-def": areject,
            "plain": reject,
            "plain-returning-awaitable": returns_awaitable,
        }

        async def main() -> None:
            for _ in range(5):
                with pytest.raises(cr.InvalidInputError, match="NaN") as info:
                    await guard.predict_async(fn[kind])
                assert isinstance(info.value.__cause__, ValueError)

        asyncio.run(main())
        assert guard.breaker.state == "closed"
        assert guard.breaker.fail_counter == 0
        assert (
            sample(registry, "prediction_failure_total", model="m", reason="invalid_input") == 5.0
        )

    def test_unconfigured_async_errors_do_trip_the_breaker(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """An async fn raising a type not in invalid_input counts toward the breaker."""
        guard = make_guard(
            *model_file, registry, invalid_input=[KeyError], breaker=cr.Breaker("m", fail_max=2)
        )
        guard.load()

        async def broken(model: object) -> None:
            raise ValueError("kernel crashed")

        async def main() -> None:
            for _ in range(2):
                with pytest.raises(ValueError, match="kernel"):
                    await guard.predict_async(broken)

        with time_machine.travel(T0, tick=False):
            asyncio.run(main())
            assert guard.breaker.state == "open"

    def test_plain_function_returning_an_awaitable_is_awaited(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """predict_async always returns the awaited result, as its type says."""
        guard = make_guard(*model_file, registry)
        guard.load()

        async def later(model: dict[str, np.ndarray]) -> float:
            return total(model)

        def wrapper(model: dict[str, np.ndarray]) -> Any:
            return later(model)

        assert asyncio.run(guard.predict_async(wrapper)) == 64 * 64 + 64
