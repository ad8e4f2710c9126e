"""Serve only verified models; degrade to an audited HTTP 503 when you cannot.

Importing this package configures no logging, registers no metric, starts no thread
and imports no web framework or optional model loader.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

__version__ = "0.1.0"

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

# Where each public name lives. They are imported on first use (PEP 562), so that
# ``import clarity_resilience._cli`` stays cheap: the command line imports the rest
# once its Ctrl-C handler is in place (exit 130 and one line, never a traceback).
_HOMES: dict[str, str] = {
    "Breaker": "._breaker",
    "ModelGuard": "._guard",
    "read_verified": "._integrity",
    "sha256_file": "._integrity",
    "load_verified": "._loading",
    "Manifest": "._manifest",
    "ManifestEntry": "._manifest",
    "Reason": "._reasons",
    **dict.fromkeys(
        (
            "ChecksumMismatchError",
            "CircuitOpenError",
            "ClarityResilienceError",
            "IntegrityError",
            "InvalidInputError",
            "ManifestError",
            "ModelLoadError",
            "ModelUnavailableError",
            "SizeMismatchError",
        ),
        ".exceptions",
    ),
}
_SUBMODULES = frozenset({"instrumentation", "loaders"})

if not TYPE_CHECKING:  # type checkers see the imports above instead

    def __getattr__(name: str) -> object:
        if name in _SUBMODULES:
            return importlib.import_module(f".{name}", __name__)
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, __name__), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
