"""What a test needs from the machine: skipped locally when missing, a failure in CI.

``.ci/run`` installs every system tool and package the tests use, so under ``CI=true`` a
missing one means the run proves less than it claims; it must fail, never skip.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Return whether this is a CI run (``CI=true``)."""
    return os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> NoReturn:
    """Fail the test in CI, skip it elsewhere, because ``what`` is not available."""
    message = f"{what} is not installed (.ci/run installs it)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_binary(name: str, hint: str = "") -> str:
    """Return the path of a system binary, or fail in CI / skip locally without it."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name}{f' ({hint})' if hint else ''}")
    return path
