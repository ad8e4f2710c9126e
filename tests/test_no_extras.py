"""What a user who installed no optional dependency gets (``nox -s tests_no_extras``).

These tests need the extras really absent, so elsewhere they are skipped (see
tests/conftest.py); tests/test_loaders.py and tests/test_sources.py cover the same
errors by hiding installed packages.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience import loaders

pytestmark = pytest.mark.no_extras

#: The import names behind every extra in pyproject.toml.
OPTIONAL = (
    "fastapi",
    "flask",
    "httpx",
    "joblib",
    "numpy",
    "onnxruntime",
    "redis",
    "safetensors",
    "stamina",
    "starlette",
    "torch",
)


class TestEnvironment:
    def test_no_optional_package_is_installed(self) -> None:
        """The session runs without any extra; with one installed it would prove less."""
        assert [name for name in OPTIONAL if importlib.util.find_spec(name)] == []


class TestCoreWorks:
    def test_guarded_load_and_predict_with_a_custom_loader(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A verified load and a prediction need nothing beyond the core dependencies."""
        data = b"core weights"
        path = tmp_path / "model.bin"
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        assert cr.read_verified(path, sha256=digest, size=len(data)) == data

        guard = cr.ModelGuard("m", path=path, sha256=digest, loader=bytes, registry=registry)
        guard.load()
        assert guard.predict(len) == len(data)


class TestMissingExtras:
    @pytest.mark.parametrize(
        ("loader", "extra"),
        [
            pytest.param(loaders.safetensors, "safetensors", id="safetensors"),
            pytest.param(loaders.safetensors_torch, "torch", id="safetensors_torch"),
            pytest.param(loaders.numpy, "numpy", id="numpy"),
            pytest.param(loaders.onnx, "onnx", id="onnx"),
            pytest.param(loaders.torch, "torch", id="torch"),
            pytest.param(loaders.unsafe_joblib, "joblib", id="joblib"),
        ],
    )
    def test_loader_names_the_extra_to_install(
        self, loader: Callable[[bytes], Any], extra: str
    ) -> None:
        """A loader whose library is not installed raises ModelLoadError naming the extra."""
        with pytest.raises(cr.ModelLoadError, match=rf"clarity-resilience\[{extra}\]") as info:
            loader(b"any bytes")
        assert info.value.reason == cr.Reason.LOAD_ERROR
        assert isinstance(info.value.__cause__, ImportError)

    def test_http_source_names_the_extra_to_install(self, tmp_path: pathlib.Path) -> None:
        """HttpSource without httpx and stamina raises a library error naming [http]."""
        from clarity_resilience.sources import HttpSource

        with pytest.raises(cr.ClarityResilienceError, match=r"clarity-resilience\[http\]") as e:
            HttpSource("https://example.com/m.bin", sha256="0" * 64, cache_dir=tmp_path)
        assert isinstance(e.value, ImportError)
