"""Serve only verified models; degrade to an audited HTTP 503 when you cannot.

Importing this package configures no logging, registers no metric, starts no thread
and imports no web framework or optional model loader.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from . import instrumentation, loaders
from ._breaker import Breaker
from ._guard import ModelGuard
from ._integrity import read_verified, sha256_file
from ._loading import load_verified
from ._manifest import Manifest, ManifestEntry
from ._reasons import Reason
from .exceptions import (
    ChecksumMismatchError,
    CircuitOpenError,
    ClarityResilienceError,
    IntegrityError,
    InvalidInputError,
    ManifestError,
    ModelLoadError,
    ModelUnavailableError,
    SizeMismatchError,
)

# One version string: pyproject.toml's, as installed.
__version__ = _metadata.version("clarity-resilience")

__all__ = [
    "Breaker",
    "ChecksumMismatchError",
    "CircuitOpenError",
    "ClarityResilienceError",
    "IntegrityError",
    "InvalidInputError",
    "Manifest",
    "ManifestEntry",
    "ManifestError",
    "ModelGuard",
    "ModelLoadError",
    "ModelUnavailableError",
    "Reason",
    "SizeMismatchError",
    "__version__",
    "instrumentation",
    "load_verified",
    "loaders",
    "read_verified",
    "sha256_file",
]
