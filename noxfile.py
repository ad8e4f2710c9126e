"""Every job of the project: `nox -s demo`, `nox -s tests`, `nox -s chaos`, ...

Sessions install the package itself (not an editable checkout), so tests exercise what
users get from a wheel. Dependencies come from `[dependency-groups]` in pyproject.toml.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHON = None  # the interpreter running nox (3.11+)
# pytest exits 5 when a marker expression selects no test: an empty selection is not a
# failure of the product, but is reported loudly so it is never mistaken for a pass.
NO_TESTS_COLLECTED = 5


def _groups(*names: str) -> tuple[str, ...]:
    return nox.project.dependency_groups(PYPROJECT, *names)


def _install(session: nox.Session, *groups: str, extras: str = "") -> None:
    session.install(*_groups(*groups))
    session.install(f".{extras}")


def _pytest(session: nox.Session, *args: str) -> None:
    # PYTHONSAFEPATH keeps the checkout off sys.path: the installed wheel is tested.
    env = {"PYTHONSAFEPATH": "1", "CLARITY_TEST_INSTALLED": "1"}
    session.run(
        "coverage",
        "run",
        "-m",
        "pytest",
        *args,
        *session.posargs,
        env=env,
        success_codes=[0, NO_TESTS_COLLECTED],
    )


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run unit and integration tests plus the quick chaos suite (`-m "not slow"`)."""
    _install(session, "tests")
    session.run("coverage", "erase")
    _pytest(session, "-m", "not slow", "tests")
    session.run("coverage", "combine", success_codes=[0, 1])
    session.run("coverage", "report", "--fail-under=85")


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """Run the whole chaos suite, slow scenarios included."""
    _install(session, "tests")
    _pytest(session, "tests/chaos", "--junit-xml=chaos-test-results.xml")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install(*_groups("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the package and the examples with mypy --strict."""
    _install(session, "typecheck")
    session.run("mypy", "clarity_resilience", "examples")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation strictly (warnings are errors)."""
    _install(session, "docs")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"}
    )


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run the main job: a live walk through verification, refusal, 503 and recovery."""
    _install(session, "bench", extras="[safetensors,fastapi,http]")
    session.run("python", "examples/demo.py", *session.posargs, env={"PYTHONSAFEPATH": "1"})


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Run the benchmarks and print their ratios as JSON (not a test; never gates CI)."""
    _install(session, "bench", extras="[safetensors,fastapi,http]")
    if shutil.which("sha256sum") is None:
        session.warn("sha256sum not found: the directory benchmark skips its comparison")
    session.run("python", "benchmarks/run.py", *session.posargs, env={"PYTHONSAFEPATH": "1"})


@nox.session(python=False)
def ci(session: nox.Session) -> None:
    """Run what CI runs (lint, typecheck, tests, docs) in one go."""
    for name in ("lint", "typecheck", "tests", "docs"):
        session.notify(name)
    if os.environ.get("CI") != "true":
        session.log("CI is not 'true': missing services will be skipped, not failed")
