"""Use the public API as a user would: type-checked with mypy --strict, never run.

Placeholder: the typing helper replaces it with the full tour of the public API.
"""

from __future__ import annotations

from typing import assert_type

import clarity_resilience as cr


def read(path: str) -> None:
    data = cr.read_verified(path, sha256="0" * 64, size=3)
    assert_type(data, bytes)


def breaker() -> None:
    breaker = cr.Breaker("ranker")

    def score(features: list[float], *, bias: float) -> float:
        return sum(features) + bias

    assert_type(breaker.call(score, [1.0], bias=0.5), float)
    assert_type(breaker(score)([1.0], bias=0.5), float)
