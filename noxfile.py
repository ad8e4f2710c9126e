"""Every job of the project: `nox -s demo`, `nox -s tests`, `nox -s chaos`, ...

Sessions install the package itself (not an editable checkout), so tests exercise what
users get from a wheel. Dependencies come from `[dependency-groups]` in pyproject.toml,
and the Python versions the tests run on from its classifiers.

pytest's exit code 5 (no test collected or selected) fails every session: a `-k` typo
must never turn into a green run. No session here selects tests by a marker that may
legitimately match nothing.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests", "tests_no_extras", "docs"]
# A supported version whose interpreter is missing fails the run instead of being
# skipped, so "tests passed" always means "passed on every supported version".
nox.options.error_on_missing_interpreters = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
# ["3.11", "3.12", "3.13"]: the versions the classifiers claim are the versions tested.
ALL_SUPPORTED = nox.project.python_versions(PYPROJECT)
PYTHON = None  # the interpreter running nox, for jobs that do not depend on the version


def _expose_pyenv_versions() -> None:
    """Let pyenv's shims run every supported version, not only the selected ones.

    With pyenv, `python3.12` is a shim that refuses to run unless a 3.12 is among the
    selected versions (PYENV_VERSION, which pyenv's `python3` shim sets to itself).
    Append the newest installed patch of each supported version that is not selected
    yet; the first selected version stays `python3`. Without pyenv nothing changes.
    """
    if shutil.which("pyenv") is None:
        return
    listing = subprocess.run(
        ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False
    ).stdout.split()
    installed = [v for v in listing if re.fullmatch(r"\d+\.\d+\.\d+", v)]
    selected = [v for v in os.environ.get("PYENV_VERSION", "").split(":") if v]
    if not selected:
        running = "{}.{}.{}".format(*sys.version_info[:3])
        selected = [running] if running in installed else []
    for minor in ALL_SUPPORTED:
        found = [v for v in installed if v.startswith(f"{minor}.")]
        if found and not any(v.startswith(f"{minor}.") for v in selected):
            selected.append(max(found, key=lambda v: int(v.rsplit(".", 1)[1])))
    if selected:
        os.environ["PYENV_VERSION"] = ":".join(selected)


_expose_pyenv_versions()

# Test modules that import no optional dependency, plus the tests of what a missing
# extra does: `tests_no_extras` runs them with only the core dependencies installed. A
# module listed here that starts importing an extra fails that session loudly.
NO_EXTRAS_TESTS = (
    "tests/test_alerts.py",
    "tests/test_breaker.py",
    "tests/test_chaos_corruptors.py",
    "tests/test_chaos_load.py",
    "tests/test_chaos_plugin.py",
    "tests/test_cli.py",
    "tests/test_exported_members.py",
    "tests/test_instrumentation.py",
    "tests/test_no_extras.py",
)
# Tests inside those modules that need an extra after all (redis, for a real server).
NEEDS_EXTRAS = (
    "tests/test_breaker.py::TestRedisStorage::test_state_is_shared_through_a_real_redis",
)


def _groups(*names: str) -> tuple[str, ...]:
    return nox.project.dependency_groups(PYPROJECT, *names)


def _install(session: nox.Session, *groups: str, extras: str = "") -> None:
    session.install(*_groups(*groups))
    session.install(f".{extras}")


def _test_env(session: nox.Session, **extra: str) -> dict[str, str]:
    # PYTHONSAFEPATH keeps the checkout off sys.path: the installed wheel is tested. Each
    # session keeps its coverage data in its own virtualenv, so sessions never mix it.
    assert session.virtualenv.location is not None
    coverage_file = pathlib.Path(session.virtualenv.location) / ".coverage"
    return {
        "PYTHONSAFEPATH": "1",
        "CLARITY_TEST_INSTALLED": "1",
        "COVERAGE_FILE": str(coverage_file),
        # huggingface_hub 2.x would otherwise call huggingface.co the first time it
        # builds request headers; tests talk to loopback only.
        "HF_HUB_DISABLE_TELEMETRY": "1",
        **extra,
    }


@nox.session(python=ALL_SUPPORTED)
def tests(session: nox.Session) -> None:
    """Run the quick suite (`-m "not slow"`) on every supported Python, with coverage."""
    _install(session, "tests")
    env = _test_env(session)
    session.run("coverage", "erase", env=env)
    session.run(
        "coverage", "run", "-m", "pytest", "-m", "not slow", "tests", *session.posargs, env=env
    )
    session.run("coverage", "combine", "--quiet", env=env)
    # The gate (fail_under) lives in [tool.coverage.report] in pyproject.toml.
    session.run("coverage", "report", env=env)


@nox.session(python=PYTHON)
def tests_no_extras(session: nox.Session) -> None:
    """Run the tests that need no extra with only the core dependencies installed."""
    _install(session, "test-tools")
    deselect = [f"--deselect={node}" for node in NEEDS_EXTRAS]
    session.run(
        "python",
        "-m",
        "pytest",
        "-m",
        "not slow",
        *deselect,
        *NO_EXTRAS_TESTS,
        *session.posargs,
        env=_test_env(session, CLARITY_TEST_NO_EXTRAS="1"),
    )


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """Run the whole chaos suite, slow scenarios included."""
    _install(session, "tests")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/chaos",
        "--junit-xml=chaos-test-results.xml",
        *session.posargs,
        env=_test_env(session),
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff (.pre-commit-config.yaml runs the same)."""
    session.install(*_groups("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the package, the examples and the public API as users see it (strict)."""
    _install(session, "typecheck")
    session.run("mypy", "clarity_resilience", "examples")
    # A never-run file using the public API as a user would: a signature that reveals
    # Any or Never fails here (stamina's mypy_api).
    if pathlib.Path("tests/typing").is_dir():
        session.run("mypy", "--strict", "tests/typing")


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
    _install(session, "bench", extras="[safetensors,fastapi,http,redis]")
    if shutil.which("sha256sum") is None:
        session.warn("sha256sum not found: the directory benchmark skips its comparison")
    session.run("python", "benchmarks/run.py", *session.posargs, env={"PYTHONSAFEPATH": "1"})


@nox.session(python=False)
def ci(session: nox.Session) -> None:
    """Run what CI runs (tests on every version, then the other checks) in one go."""
    for name in (*(f"tests-{v}" for v in ALL_SUPPORTED), "tests_no_extras"):
        session.notify(name)
    for name in ("lint", "typecheck", "docs"):
        session.notify(name)
    if os.environ.get("CI") != "true":
        session.log("CI is not 'true': missing services will be skipped, not failed")
