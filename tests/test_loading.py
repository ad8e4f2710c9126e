"""Tests for verified loads (load_verified, deserialize_verified) and load outcome reporting."""

from __future__ import annotations

import hashlib
import math
import pathlib
import threading
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from safetensors.numpy import save

import clarity_resilience as cr
from clarity_resilience._loading import VerifiedBytes, deserialize_verified, run_warmup
from clarity_resilience._outcome import Attempt, was_reported
from clarity_resilience.instrumentation import (
    Event,
    IntegrityCheckFailed,
    IntegrityCheckPassed,
    ModelLoaded,
    ModelLoadFailed,
)

MODEL = save({"w": np.full((4, 4), 1.0, np.float32)})


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def failures(registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value(
        "model_integrity_failures_total", {"model": "m", "reason": reason}
    )


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


class TestLoadVerified:
    def test_without_a_loader_the_format_is_detected(self, tmp_path: pathlib.Path) -> None:
        """With no loader, auto detects safetensors from the verified bytes."""
        path = tmp_path / "m.safetensors"
        path.write_bytes(MODEL)
        model = cr.load_verified(path, sha256=digest(MODEL))
        assert model["w"].shape == (4, 4)

    def test_the_loader_gets_exactly_the_verified_bytes(self, tmp_path: pathlib.Path) -> None:
        """The loader's argument is the verified content, and its result is returned."""
        path = tmp_path / "m.bin"
        path.write_bytes(b"payload")
        seen: list[bytes] = []

        def loader(data: bytes) -> str:
            seen.append(bytes(data))
            return "model"

        assert cr.load_verified(path, sha256=digest(b"payload"), loader=loader) == "model"
        assert seen == [b"payload"]

    def test_checksum_refusal_never_calls_the_loader_and_counts_once(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """A mismatch is one integrity event, one load-failed event, one count; no loader call."""
        path = tmp_path / "m.bin"
        path.write_bytes(b"payload")
        calls: list[object] = []
        with pytest.raises(cr.ChecksumMismatchError):
            cr.load_verified(
                path,
                sha256=digest(b"payloaD"),
                loader=calls.append,
                model="m",
                registry=registry,
            )
        assert calls == []
        assert kinds(events) == ["IntegrityCheckFailed", "ModelLoadFailed"]
        assert failures(registry, "checksum_mismatch") == 1.0

    def test_size_is_passed_through(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """size= is checked before the digest."""
        path = tmp_path / "m.bin"
        path.write_bytes(b"payload")
        with pytest.raises(cr.SizeMismatchError):
            cr.load_verified(
                path, sha256=digest(b"payload"), size=8, loader=bytes, model="m", registry=registry
            )
        assert failures(registry, "size_mismatch") == 1.0

    def test_loader_error_is_typed_and_counted_once(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """A loader exception becomes ModelLoadError (cause kept), counted once as load_error."""
        path = tmp_path / "m.bin"
        path.write_bytes(b"payload")

        def picky(data: bytes) -> None:
            raise KeyError("no tensors")

        with pytest.raises(cr.ModelLoadError, match="loader picky rejected") as info:
            cr.load_verified(
                path, sha256=digest(b"payload"), loader=picky, model="m", registry=registry
            )
        assert isinstance(info.value.__cause__, KeyError)
        assert info.value.reason == cr.Reason.LOAD_ERROR
        assert kinds(events) == ["IntegrityCheckPassed", "ModelLoadFailed"]
        assert failures(registry, "load_error") == 1.0

    def test_library_errors_from_a_loader_keep_their_reason(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A loader raising a library error (a refused format) is not re-wrapped."""
        path = tmp_path / "m.bin"
        path.write_bytes(b"payload")
        refusal = cr.ModelLoadError("pickle is refused", reason=cr.Reason.UNSAFE_FORMAT)

        def refuse(data: bytes) -> None:
            raise refusal

        with pytest.raises(cr.ModelLoadError) as info:
            cr.load_verified(
                path, sha256=digest(b"payload"), loader=refuse, model="m", registry=registry
            )
        assert info.value is refusal
        assert failures(registry, "unsafe_format") == 1.0
        assert failures(registry, "load_error") == 0.0


class TestDeserializeVerified:
    def test_reports_the_version_and_releases_the_bytes(self, events: list[Event]) -> None:
        """ModelLoaded carries the digest and version; the returned record holds no bytes."""

        def read() -> VerifiedBytes:
            return VerifiedBytes(b"abc", "d" * 64, "v3")

        model, verified = deserialize_verified(
            read, loader=bytes, model="m", registry=CollectorRegistry()
        )
        assert model == b"abc"
        assert verified == VerifiedBytes(b"", "d" * 64, "v3")
        loaded = [e for e in events if isinstance(e, ModelLoaded)]
        assert [(e.model, e.sha256, e.version) for e in loaded] == [("m", "d" * 64, "v3")]

    def test_an_unreported_read_failure_is_reported_as_a_load_failure_once(
        self, events: list[Event]
    ) -> None:
        """The read's error passes through; the load reports it once (ModelLoadFailed)."""
        error = cr.IntegrityError("gone", reason=cr.Reason.MISSING)

        def read() -> VerifiedBytes:
            raise error

        for _ in range(2):  # the same error seen twice (a retry wrapper) is reported once
            with pytest.raises(cr.IntegrityError) as info:
                deserialize_verified(read, loader=bytes, model="m", registry=CollectorRegistry())
            assert info.value is error
        assert [
            (type(e).__name__, e.reason) for e in events if isinstance(e, ModelLoadFailed)
        ] == [("ModelLoadFailed", cr.Reason.MISSING)]

    def test_other_exceptions_are_not_reported_as_load_outcomes(self, events: list[Event]) -> None:
        """A bug in the read (not a library error) propagates without a ModelLoadFailed."""

        def read() -> VerifiedBytes:
            raise RuntimeError("bug")

        with pytest.raises(RuntimeError):
            deserialize_verified(read, loader=bytes, model="m", registry=CollectorRegistry())
        assert not [e for e in events if isinstance(e, ModelLoadFailed | ModelLoaded)]


class TestAttempt:
    def test_a_check_failure_is_reported_once_however_many_layers_see_it(
        self, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """check_failed emits once per error; the second layer's report is a no-op."""
        attempt = Attempt("m", registry)
        error = cr.ChecksumMismatchError("bad", path="/models/m.bin")
        assert not was_reported(error)
        assert attempt.check_failed("/fallback", error) is True
        assert was_reported(error)
        assert attempt.check_failed("/fallback", error) is False
        assert Attempt("m", registry).check_failed("/other", error) is False
        failed = [e for e in events if isinstance(e, IntegrityCheckFailed)]
        assert [(e.model, e.path, e.reason, e.error_type, e.detail) for e in failed] == [
            ("m", "/models/m.bin", cr.Reason.CHECKSUM_MISMATCH, "ChecksumMismatchError", "bad")
        ]
        assert failures(registry, "checksum_mismatch") == 1.0

    def test_a_check_failure_without_a_path_uses_the_label(self, events: list[Event]) -> None:
        """An error that names no file is reported under the attempt's label."""
        Attempt("m", CollectorRegistry()).check_failed("<manifest>", cr.ManifestError("bad"))
        assert [e.path for e in events if isinstance(e, IntegrityCheckFailed)] == ["<manifest>"]

    def test_checking_reports_integrity_errors_only(self, events: list[Event]) -> None:
        """checking() reports and re-raises an IntegrityError; other errors pass unreported."""
        attempt = Attempt("m", CollectorRegistry())
        with pytest.raises(cr.ManifestError), attempt.checking("label"):
            raise cr.ManifestError("bad manifest")
        with pytest.raises(ValueError, match="x"), attempt.checking("label"):
            raise ValueError("x")
        with attempt.checking("label"):
            pass
        assert kinds(events) == ["IntegrityCheckFailed"]

    def test_passed_and_loaded_events_carry_their_fields(self, events: list[Event]) -> None:
        """check_passed and loaded report path, size, digest and version."""
        attempt = Attempt("m", CollectorRegistry())
        attempt.check_passed("/p", 12)
        attempt.loaded("e" * 64, None)
        passed = [e for e in events if isinstance(e, IntegrityCheckPassed)]
        loaded = [e for e in events if isinstance(e, ModelLoaded)]
        assert [(e.model, e.path, e.size) for e in passed] == [("m", "/p", 12)]
        assert [(e.sha256, e.version) for e in loaded] == [("e" * 64, None)]
        assert all(e.duration >= 0 for e in [*passed, *loaded])

    def test_load_failed_is_reported_once_per_error(
        self, registry: CollectorRegistry, events: list[Event]
    ) -> None:
        """A loader refusal reported twice still counts once."""
        error = cr.ModelLoadError("nope")
        attempt = Attempt("m", registry)
        assert attempt.load_failed(error) is True
        assert attempt.load_failed(error) is False
        assert kinds(events) == ["ModelLoadFailed"]
        assert failures(registry, "load_error") == 1.0

    def test_an_emitter_can_be_shared(self) -> None:
        """emitter= reuses an emitter (and its registry) instead of making one."""
        from clarity_resilience.instrumentation import Emitter

        registry = CollectorRegistry()
        emitter = Emitter(registry)
        attempt: Any = Attempt("m", CollectorRegistry(), emitter=emitter)
        assert attempt.emitter is emitter
        attempt.load_failed(cr.ModelLoadError("x"))
        assert failures(registry, "load_error") == 1.0


class TestRefusedBytesAreReleased:
    def test_a_kept_error_holds_no_frame_with_the_refused_bytes(
        self, tmp_path: pathlib.Path
    ) -> None:
        """The frames a loader error keeps are cleared: a kept error pins no model bytes."""
        payload = b"refused-model-bytes" * 10
        path = tmp_path / "m.bin"
        path.write_bytes(payload)

        def picky(data: bytes) -> None:
            raise ValueError("bad")

        with pytest.raises(cr.ModelLoadError) as info:
            cr.load_verified(path, sha256=digest(payload), loader=picky)
        held = []
        error: BaseException | None = info.value
        while error is not None:
            tb = error.__traceback__
            while tb is not None:
                if tb.tb_frame.f_code.co_name in {"_call_loader", "_read_and_load", "picky"}:
                    held += [v for v in tb.tb_frame.f_locals.values() if v == payload]
                tb = tb.tb_next
            error = error.__cause__
        assert held == []


class TestRunWarmup:
    def test_passing_warmup_returns(self) -> None:
        """A warm-up that returns lets the model through, with or without a timeout."""
        seen: list[object] = []
        run_warmup(seen.append, "model", None)
        run_warmup(seen.append, "model", 30.0)
        assert seen == ["model", "model"]

    @pytest.mark.parametrize("timeout", [None, 30.0])
    def test_raising_warmup_is_warmup_failed(self, timeout: float | None) -> None:
        """Any exception from the warm-up becomes ModelLoadError(warmup_failed), chained."""

        def broken(model: object) -> None:
            raise FloatingPointError("nan in output")

        with pytest.raises(cr.ModelLoadError, match="nan in output") as caught:
            run_warmup(broken, "model", timeout)
        assert caught.value.reason is cr.Reason.WARMUP_FAILED
        assert isinstance(caught.value.__cause__, FloatingPointError)

    def test_infinite_timeout_runs_in_the_calling_thread(self) -> None:
        """math.inf runs the warm-up inline; a finite timeout runs it in another thread."""
        threads: list[threading.Thread] = []

        def where(model: object) -> None:
            threads.append(threading.current_thread())

        run_warmup(where, "model", math.inf)
        run_warmup(where, "model", 30.0)
        assert threads[0] is threading.current_thread()
        assert threads[1] is not threading.current_thread()
