"""Every public module's ``__all__`` is complete and sorted (as httpx checks its own).

A curated package ``__init__`` exports everything it binds; a plain module exports
everything it defines. Submodules may be listed (``clarity_resilience.loaders``) but
need not be: ``from .exceptions import ...`` binds ``exceptions`` as a side effect.
"""

from __future__ import annotations
import __future__

import importlib
import subprocess
import sys
import types
from importlib.metadata import version

import pytest

MODULES = [
    "clarity_resilience",
    "clarity_resilience.degradation",
    "clarity_resilience.exceptions",
    "clarity_resilience.instrumentation",
    "clarity_resilience.sources",
]


def exportable(module: types.ModuleType) -> set[str]:
    """Return the public names ``module`` binds that belong in its ``__all__``."""
    is_package = hasattr(module, "__path__")
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if isinstance(value, __future__._Feature):  # from __future__ import annotations
            continue
        if is_package or getattr(value, "__module__", None) == module.__name__:
            names.add(name)
    return names


def listed(module: types.ModuleType) -> set[str]:
    """Return ``__all__`` without its submodules and dunders (``__version__``)."""
    return {
        name
        for name in module.__all__
        if not name.startswith("__") and not isinstance(getattr(module, name), types.ModuleType)
    }


@pytest.fixture(params=MODULES)
def module(request: pytest.FixtureRequest) -> types.ModuleType:
    return importlib.import_module(request.param)


class TestAll:
    def test_is_sorted(self, module: types.ModuleType) -> None:
        """``__all__`` is sorted, so a diff shows exactly what was added or removed."""
        assert module.__all__ == sorted(module.__all__)

    def test_has_no_duplicates(self, module: types.ModuleType) -> None:
        """Each name is exported once."""
        assert len(module.__all__) == len(set(module.__all__))

    def test_every_listed_name_exists(self, module: types.ModuleType) -> None:
        """``from module import *`` cannot fail on a stale name."""
        assert [name for name in module.__all__ if not hasattr(module, name)] == []

    def test_is_complete(self, module: types.ModuleType) -> None:
        """Every public name the module defines is exported, and every export exists.

        A plain module may also re-export names defined in its private modules (and
        constants, which carry no ``__module__``); a package exports what it binds.
        """
        assert exportable(module) <= listed(module)
        if hasattr(module, "__path__"):
            assert listed(module) == exportable(module)
        assert all(hasattr(module, name) for name in module.__all__)

    def test_listed_submodules_are_the_packages_own(self, module: types.ModuleType) -> None:
        """A module in ``__all__`` is a public submodule, never an imported library."""
        submodules = [
            getattr(module, name)
            for name in module.__all__
            if isinstance(getattr(module, name), types.ModuleType)
        ]
        for submodule in submodules:
            assert submodule.__name__.startswith(f"{module.__name__}.")
            assert not submodule.__name__.rpartition(".")[2].startswith("_")


class TestVersion:
    def test_version_is_the_installed_metadata(self) -> None:
        """``__version__`` is the installed distribution's version."""
        import clarity_resilience

        assert clarity_resilience.__version__ == version("clarity-resilience")
        assert "__version__" in clarity_resilience.__all__

    def test_version_is_read_not_hard_coded(self) -> None:
        """``__version__`` follows the metadata: there is no second copy to forget."""
        code = (
            "import importlib.metadata as m\n"
            "m.version = lambda name: f'{name} 9.9.9'\n"
            "import clarity_resilience\n"
            "print(clarity_resilience.__version__)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == "clarity-resilience 9.9.9"
