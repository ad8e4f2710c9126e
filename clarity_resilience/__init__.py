"""Serve only verified models; degrade to an audited HTTP 503 when you cannot.

Importing this package configures no logging, registers no metric, starts no thread
and imports no web framework or optional model loader.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from . import instrumentation, loaders
from ._breaker import Breaker
from ._files import read_verified_files
from ._guard import ModelGuard
from ._integrity import DEFAULT_MAX_SIZE, read_verified, sha256_file
from ._loading import load_verified, load_verified_files
from ._manifest import Manifest, ManifestEntry
from ._materialize import materialize
from ._reasons import Reason
from ._redis_storage import RedisStorage
from ._signing import SignedManifest
from .exceptions import (
    ChecksumMismatchError,
    CircuitOpenError,
    ClarityResilienceError,
    IntegrityError,
    InvalidInputError,
    ManifestError,
    ModelLoadError,
    ModelUnavailableError,
    OverloadedError,
    PredictionTimeoutError,
    SizeMismatchError,
)

# One version string: pyproject.toml's, as installed.
__version__ = _metadata.version("clarity-resilience")

__all__ = [
    "Breaker",
    "ChecksumMismatchError",
    "CircuitOpenError",
    "ClarityResilienceError",
    "DEFAULT_MAX_SIZE",
    "IntegrityError",
    "InvalidInputError",
    "Manifest",
    "ManifestEntry",
    "ManifestError",
    "ModelGuard",
    "ModelLoadError",
    "ModelUnavailableError",
    "OverloadedError",
    "PredictionTimeoutError",
    "Reason",
    "RedisStorage",
    "SignedManifest",
    "SizeMismatchError",
    "__version__",
    "instrumentation",
    "load_verified",
    "load_verified_files",
    "loaders",
    "materialize",
    "read_verified",
    "read_verified_files",
    "sha256_file",
]
