"""A real model, a guard over it, and the checks of the degradation tests.

Import with ``from degradation_helpers import ...`` (tests/support is on pytest's
pythonpath). Nothing here imports a web framework: the apps are in
``degradation_stacks.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import time_machine
from prometheus_client import CollectorRegistry
from safetensors.numpy import save_file

import clarity_resilience as cr
from clarity_resilience import loaders
from clarity_resilience.degradation import problem_type

#: When the frozen clock starts (pybreaker reads the wall clock).
T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
#: The request body limit every test app is served with.
LIMIT = 16 * 1024
#: The members of every problem body (``errors`` is added for field errors only).
PROBLEM_KEYS = {"type", "title", "status", "detail", "reason"}
#: A valid predict request, and what the model scores for it.
GOOD = {"features": [[1.0, 2.0, 3.0, 4.0]]}
GOOD_SCORES = {"scores": [[40.0, 50.0]]}
#: The digest named in the messages of :func:`raised`: it must never reach a response.
SECRET_DIGEST = hashlib.sha256(b"secret").hexdigest()


# -- the model and its guard ----------------------------------------------------------


def write_model(path: pathlib.Path) -> str:
    """Write a small real safetensors model at ``path``; return its SHA-256."""
    save_file({"weight": np.arange(8, dtype=np.float32).reshape(4, 2)}, str(path))
    return cr.sha256_file(path)


def corrupt(path: pathlib.Path) -> bytes:
    """Flip the last byte of ``path`` (same size, different digest); return the new bytes."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def make_guard(
    path: pathlib.Path,
    sha256: str,
    registry: CollectorRegistry,
    *,
    name: str = "ranker",
    **options: Any,
) -> cr.ModelGuard[Any]:
    """Return a guard over the safetensors model, with its own breaker and registry.

    ``ValueError`` and ``TypeError`` from the predict function are invalid input.
    """
    options.setdefault("loader", loaders.safetensors)
    options.setdefault("invalid_input", (ValueError, TypeError))
    return cr.ModelGuard(
        name,
        path=path,
        sha256=sha256,
        breaker=cr.Breaker(name, registry=registry),
        registry=registry,
        **options,
    )


def score(model: dict[str, Any], features: object) -> list[list[float]]:
    """Score rows of 4 finite numbers; raise ValueError/TypeError for anything else."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 4:
        raise ValueError("features must be rows of 4 numbers")
    if not np.isfinite(x).all():
        raise ValueError("features must be finite")
    result: list[list[float]] = (x @ model["weight"]).tolist()
    return result


def raised(tmp_path: pathlib.Path) -> dict[str, Callable[[], BaseException]]:
    """Return fresh exceptions by name; messages name a real path and :data:`SECRET_DIGEST`."""
    where = tmp_path / "models" / "ranker.safetensors"
    return {
        "integrity": lambda: cr.ChecksumMismatchError(
            f"{where} has SHA-256 {SECRET_DIGEST}", path=where, expected=SECRET_DIGEST
        ),
        "load": lambda: cr.ModelLoadError(f"cannot load {where}"),
        "unavailable-now": lambda: cr.ModelUnavailableError(f"{where} gone", retry_after=0.0),
        "invalid": lambda: cr.InvalidInputError(f"bad row for {where}"),
        "root": lambda: cr.ClarityResilienceError(f"odd state at {where}"),
        "not-ours": lambda: RuntimeError(f"bug near {where}"),
    }


# -- time and the breaker -------------------------------------------------------------


def frozen_clock() -> time_machine.travel:
    """Return a time-machine context that freezes time at :data:`T0` (``tick=False``)."""
    return time_machine.travel(T0, tick=False)


def open_breaker(breaker: cr.Breaker) -> None:
    """Open a real breaker with five real failures."""

    def boom() -> None:
        raise OSError("upstream failed")

    for _ in range(5):
        with pytest.raises(OSError, match="upstream"):
            breaker.call(boom)
    assert breaker.state == "open"


# -- requests and checks --------------------------------------------------------------


def chunked_body_over_the_limit() -> Iterator[bytes]:
    """Yield a valid predict body padded past :data:`LIMIT`, in chunks (no length)."""
    yield b'{"features": [[1, 2, 3, 4]], "pad": "'
    for _ in range(LIMIT // 256):
        yield b"x" * 256
    yield b'"}'


def assert_problem(
    response: httpx.Response, status: int, reason: str, retry_after: int | None
) -> dict[str, Any]:
    """Check a problem response's status, headers and body; return the body."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers.get("retry-after") == (
        None if retry_after is None else str(retry_after)
    )
    body: dict[str, Any] = response.json()
    assert set(body) - {"errors"} == PROBLEM_KEYS
    assert body["status"] == status
    assert body["reason"] == reason
    assert body["type"] == problem_type(reason)  # type: ignore[arg-type]
    return body


def assert_no_leak(response: httpx.Response, *secrets: str) -> None:
    """Check that no secret appears in the body or any header, and no traceback."""
    exposed = response.text + json.dumps(list(response.headers.multi_items()))
    for secret in secrets:
        assert secret not in exposed
    assert "Traceback" not in exposed
    assert ".py" not in exposed
