"""Two model versions on a real artifact store, and the HTTP sources that fetch them.

Import with ``from chaos_network import ...`` (tests/support is on pytest's pythonpath).
Shared by the chaos scenarios whose faults are on the network: the store dies
(test_service_death.py) or the link to it lags and breaks (test_network_latency.py).
Every source and guard here is for the model named ``"m"``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from types import TracebackType
from typing import Any

from chaos_models import Model, ModelVersion, publish
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience.sources import HttpSource


@dataclasses.dataclass(frozen=True)
class Versions:
    """Two published model versions, served by the store under their file names."""

    v1: ModelVersion
    v2: ModelVersion

    @classmethod
    def publish(cls, root: pathlib.Path) -> Versions:
        """Publish v1 (weights 1.0) and v2 (weights 2.0) into the store's ``root``."""
        return cls(publish(root, 1.0, "v1.safetensors"), publish(root, 2.0, "v2.safetensors"))


class SourceFactory:
    """Make ``HttpSource`` objects for published versions; close them all on exit.

    Call it as ``make_source(version, **options)``: the source fetches
    ``<base_url>/<the version's file name>`` (or ``name=`` another file) into
    ``cache_dir``, expects the version's digest and size unless ``options`` say
    otherwise, and counts into ``registry``.
    """

    def __init__(
        self, base_url: str, cache_dir: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        self.base_url = base_url
        self.cache_dir = cache_dir
        self.registry = registry
        self._created: list[HttpSource] = []

    def __call__(
        self, version: ModelVersion, *, name: str | None = None, **options: Any
    ) -> HttpSource:
        options.setdefault("sha256", version.sha256)
        options.setdefault("size", version.size)
        source = HttpSource(
            f"{self.base_url}/{name or version.path.name}",
            cache_dir=self.cache_dir,
            model="m",
            registry=self.registry,
            **options,
        )
        self._created.append(source)
        return source

    def __enter__(self) -> SourceFactory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for source in self._created:
            source.close()


def make_guard(source: HttpSource, registry: CollectorRegistry) -> cr.ModelGuard[Model]:
    """Return a guard for model ``"m"`` over ``source`` (not yet loaded)."""
    return cr.ModelGuard("m", source=source, loader=cr.loaders.safetensors, registry=registry)


def cache_listing(cache: pathlib.Path) -> list[str]:
    """Return the file names in the cache directory but its lock files (none if absent)."""
    names = os.listdir(cache) if cache.exists() else []
    return sorted(name for name in names if not name.endswith(".lock"))  # locks stay


def integrity_failures(registry: CollectorRegistry, reason: str) -> float:
    """Return how many integrity failures of model ``"m"`` were counted for ``reason``."""
    labels = {"model": "m", "reason": reason}
    return registry.get_sample_value("model_integrity_failures_total", labels) or 0.0
