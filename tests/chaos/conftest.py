"""Fixtures of the chaos suite (helpers live in tests/support/chaos_models.py)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
from chaos_models import ModelVersion, publish


@pytest.fixture
def publish_model(tmp_path: pathlib.Path) -> Callable[..., ModelVersion]:
    """Publish model versions into tmp_path: ``publish_model(value, name=...)``."""

    def _publish(value: float = 1.0, name: str = "model.safetensors") -> ModelVersion:
        return publish(tmp_path, value, name)

    return _publish
