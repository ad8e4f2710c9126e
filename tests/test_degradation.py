"""Tests for clarity_resilience.degradation: problem_for, Problem, liveness, readiness."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
import time_machine
from degradation_helpers import corrupt, frozen_clock, make_guard, write_model
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience import degradation
from clarity_resilience.degradation import (
    INTEGRITY_RETRY_AFTER,
    UNAVAILABLE_RETRY_AFTER,
    FieldError,
    Problem,
    liveness,
    problem_for,
    problem_type,
    readiness,
)


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    """Freeze time at T0 (pybreaker's clock)."""
    with frozen_clock() as traveller:
        yield traveller


@pytest.fixture
def model_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, str]:
    """Write a small real safetensors model; return its path and SHA-256."""
    path = tmp_path / "ranker.safetensors"
    return path, write_model(path)


# -- problem_for ----------------------------------------------------------------------


class TestProblemFor:
    @pytest.mark.parametrize(
        ("exc", "status", "reason", "retry_after"),
        [
            pytest.param(cr.CircuitOpenError("m", 39.6), 503, "breaker_open", 40, id="open"),
            pytest.param(cr.CircuitOpenError("m", 0.2), 503, "breaker_open", 1, id="open-soon"),
            pytest.param(cr.CircuitOpenError("m", 0.0), 503, "breaker_open", 1, id="open-zero"),
            pytest.param(
                cr.ModelUnavailableError("x", retry_after=300, reason=cr.Reason.CHECKSUM_MISMATCH),
                503,
                "integrity_failure",
                300,
                id="unavailable-integrity",
            ),
            pytest.param(
                cr.ModelUnavailableError("x", retry_after=7.1, reason=cr.Reason.MISSING),
                503,
                "integrity_failure",
                8,
                id="unavailable-missing",
            ),
            pytest.param(
                cr.ModelUnavailableError("x", retry_after=5), 503, "unavailable", 5, id="no-model"
            ),
            pytest.param(
                cr.ModelUnavailableError("x", retry_after=0), 503, "unavailable", 1, id="zero"
            ),
            pytest.param(
                cr.ModelUnavailableError("x", retry_after=float("inf")),
                503,
                "unavailable",
                UNAVAILABLE_RETRY_AFTER,
                id="infinite",
            ),
            pytest.param(
                cr.IntegrityError("x"), 503, "integrity_failure", INTEGRITY_RETRY_AFTER, id="integ"
            ),
            pytest.param(cr.ChecksumMismatchError("x"), 503, "integrity_failure", 300, id="sum"),
            pytest.param(cr.ManifestError("x"), 503, "integrity_failure", 300, id="manifest"),
            pytest.param(cr.ModelLoadError("x"), 503, "unavailable", 5, id="load"),
            pytest.param(cr.InvalidInputError("x"), 422, "invalid_input", None, id="invalid"),
            pytest.param(cr.ClarityResilienceError("x"), 503, "unavailable", 5, id="root"),
        ],
    )
    def test_contract_rows(
        self, exc: BaseException, status: int, reason: str, retry_after: int | None
    ) -> None:
        """Each library exception maps to its status, reason, type and Retry-After."""
        problem = problem_for(exc)
        assert problem is not None
        assert (problem.status, problem.reason, problem.retry_after) == (
            status,
            reason,
            retry_after,
        )
        assert problem.type == f"urn:clarity-resilience:problem:{reason}"

    def test_default_retry_afters_are_overridable(self) -> None:
        """Errors raised directly use the Retry-After given to problem_for, rounded up."""
        integrity = problem_for(cr.IntegrityError("x"), integrity_retry_after=120)
        load = problem_for(cr.ModelLoadError("x"), unavailable_retry_after=9.5)
        own = problem_for(cr.ModelUnavailableError("x", retry_after=2), unavailable_retry_after=60)
        assert integrity is not None
        assert integrity.retry_after == 120
        assert load is not None
        assert load.retry_after == 10
        assert own is not None
        assert own.retry_after == 2  # the exception's own hint wins

    def test_half_open_trial_in_flight(self, clock: time_machine.Traveller) -> None:
        """A call rejected while the half-open trial runs maps to breaker_open, Retry-After 1."""
        breaker = cr.Breaker("m", registry=CollectorRegistry())
        for _ in range(5):
            with pytest.raises(OSError, match="down"):
                breaker.call(_raise_os_error)
        clock.shift(61)
        # The guard's block is the trial in flight: the call inside it is rejected.
        with breaker.guard(), pytest.raises(cr.CircuitOpenError) as rejected:
            breaker.call(lambda: None)
        problem = problem_for(rejected.value)
        assert problem is not None
        assert (problem.status, problem.reason, problem.retry_after) == (503, "breaker_open", 1)

    @pytest.mark.parametrize(
        "exc",
        [
            pytest.param(RuntimeError("bug"), id="runtime-error"),
            pytest.param(ValueError("bad"), id="value-error"),
            pytest.param(KeyboardInterrupt(), id="keyboard-interrupt"),
        ],
    )
    def test_foreign_exceptions_have_no_problem(self, exc: BaseException) -> None:
        """Exceptions that are not the library's return None: the framework answers them."""
        assert problem_for(exc) is None


class TestProblem:
    def test_headers(self) -> None:
        """Headers are problem+json, no-store and Retry-After when set."""
        problem = problem_for(cr.CircuitOpenError("m", 12.0))
        assert problem is not None
        assert problem.headers() == [
            ("Content-Type", "application/problem+json"),
            ("Cache-Control", "no-store"),
            ("Retry-After", "12"),
        ]
        invalid = problem_for(cr.InvalidInputError("x"))
        assert invalid is not None
        assert [name for name, _ in invalid.headers()] == ["Content-Type", "Cache-Control"]

    def test_body_has_exactly_the_five_members(self) -> None:
        """The body holds type, title, status, detail and reason, and nothing else."""
        problem = problem_for(cr.ModelUnavailableError("x", retry_after=3))
        assert problem is not None
        assert json.loads(problem.body()) == {
            "type": "urn:clarity-resilience:problem:unavailable",
            "title": "Model unavailable",
            "status": 503,
            "detail": "No verified model is serving yet; retry after Retry-After seconds.",
            "reason": "unavailable",
        }

    def test_errors_member_only_when_given(self) -> None:
        """Field errors add an errors member of locations and codes."""
        problem = Problem(
            status=422,
            title="Invalid input",
            detail="d",
            reason="invalid_input",
            type=problem_type("invalid_input"),
            errors=(FieldError(loc=("body", "features", 0), type="float_parsing"),),
        )
        assert json.loads(problem.body())["errors"] == [
            {"loc": ["body", "features", 0], "type": "float_parsing"}
        ]

    @pytest.mark.parametrize("seconds", [pytest.param(0, id="zero"), pytest.param(-1, id="neg")])
    def test_retry_after_below_one_is_refused(self, seconds: int) -> None:
        """A Retry-After below 1 second cannot be built."""
        with pytest.raises(ValueError, match="at least 1"):
            Problem(503, "t", "d", "unavailable", "about:blank", retry_after=seconds)

    def test_detail_never_copies_the_message(
        self, model_file: tuple[pathlib.Path, str], tmp_path: pathlib.Path
    ) -> None:
        """A real checksum failure naming a path and digests leaves both out of the response."""
        path, sha256 = model_file
        corrupt(path)
        with pytest.raises(cr.ChecksumMismatchError) as failed:
            cr.read_verified(path, sha256=sha256)
        assert str(tmp_path) in str(failed.value)  # the audit message does name them
        assert sha256 in str(failed.value)
        problem = problem_for(failed.value)
        assert problem is not None
        exposed = problem.body().decode() + repr(problem.headers())
        assert str(tmp_path) not in exposed
        assert sha256 not in exposed
        assert cr.sha256_file(path) not in exposed
        assert "Traceback" not in exposed


# -- probes ---------------------------------------------------------------------------


class TestLiveness:
    def test_always_200(self) -> None:
        """Liveness is 200 ok with no-store, and takes no guard at all."""
        status, headers, body = liveness()
        assert status == 200
        assert ("Cache-Control", "no-store") in headers
        assert json.loads(body) == {"status": "ok"}


class TestReadiness:
    def test_no_guards_is_ready(self) -> None:
        """With nothing to wait for, readiness is 200."""
        status, headers, body = readiness()
        assert status == 200
        assert json.loads(body) == {"status": "ready", "models": []}
        assert "Retry-After" not in dict(headers)

    def test_unloaded_then_loaded(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """An unloaded guard is 503 with its unavailable Retry-After; loaded it is 200."""
        guard = make_guard(*model_file, registry, unavailable_retry_after=7)
        status, headers, body = readiness(guard)
        assert status == 503
        assert dict(headers)["Retry-After"] == "7"
        assert json.loads(body)["reason"] == "unavailable"
        guard.load()
        status, headers, body = readiness(guard)
        assert status == 200
        assert json.loads(body)["models"] == [
            {
                "model": "ranker",
                "ready": True,
                "version": None,
                "breaker": "closed",
                "last_error": None,
            }
        ]

    def test_integrity_failure(
        self, model_file: tuple[pathlib.Path, str], registry: CollectorRegistry
    ) -> None:
        """A guard whose load failed integrity is 503 integrity_failure, with no digest shown."""
        path, sha256 = model_file
        corrupt(path)
        guard = make_guard(path, sha256, registry)
        with pytest.raises(cr.ChecksumMismatchError):
            guard.load()
        status, headers, body = readiness(guard)
        assert status == 503
        assert dict(headers)["Retry-After"] == "300"
        document = json.loads(body)
        assert document["reason"] == "integrity_failure"
        assert document["models"][0]["last_error"] == "checksum_mismatch"
        assert sha256[:12] not in body.decode()
        assert str(path) not in body.decode()

    def test_open_load_breaker_sets_the_wait(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry, clock: time_machine.Traveller
    ) -> None:
        """Loads failing until the breaker opens give breaker_open and its remaining seconds."""
        path = tmp_path / "model.bin"
        path.write_bytes(b"not a model")

        def refuse(data: bytes) -> object:
            raise cr.ModelLoadError("the loader refused the bytes")

        guard = make_guard(path, cr.sha256_file(path), registry, loader=refuse)
        for _ in range(5):
            with pytest.raises(cr.ModelLoadError):
                guard.load()
        clock.shift(15.5)
        status, headers, body = readiness(guard)
        assert status == 503
        assert dict(headers)["Retry-After"] == "45"
        assert json.loads(body)["reason"] == "breaker_open"

    def test_every_guard_must_be_ready(
        self,
        model_file: tuple[pathlib.Path, str],
        registry: CollectorRegistry,
    ) -> None:
        """One guard not ready keeps readiness at 503, and every guard is listed."""
        ready = make_guard(*model_file, registry)
        ready.load()
        waiting = make_guard(*model_file, registry, name="embedder")
        status, _, body = readiness(ready, waiting)
        assert status == 503
        assert [m["model"] for m in json.loads(body)["models"]] == ["ranker", "embedder"]


# -- packaging ------------------------------------------------------------------------


class TestImports:
    def test_importing_degradation_imports_no_framework(self) -> None:
        """Neither the package root nor clarity_resilience.degradation imports a framework."""
        code = (
            "import sys, clarity_resilience\n"
            "assert 'clarity_resilience.degradation' not in sys.modules\n"
            "import clarity_resilience.degradation\n"
            "frameworks = ('fastapi', 'starlette', 'flask', 'werkzeug', 'uvicorn', 'pydantic')\n"
            "print(sorted(m for m in frameworks if m in sys.modules))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ.copy(),
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]"

    def test_all_is_sorted_and_complete(self) -> None:
        """__all__ is sorted and names every public attribute of the package."""
        public = {
            name
            for name, value in vars(degradation).items()
            if not name.startswith("_") and getattr(value, "__module__", None) != "__future__"
        } - {"annotations"}
        modules = {
            name for name in public if type(getattr(degradation, name)).__name__ == "module"
        }
        assert degradation.__all__ == sorted(degradation.__all__)
        assert set(degradation.__all__) == public - modules


def _raise_os_error() -> None:
    raise OSError("down")
