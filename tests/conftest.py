"""Fixtures shared by every test module."""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator

import hypothesis
import pytest
import requirements
from prometheus_client import CollectorRegistry
from store_testing import RetryLog

import clarity_resilience
from clarity_resilience.instrumentation import Event
from clarity_resilience.testing import capture_events

REPO = pathlib.Path(__file__).resolve().parent.parent


# Hypothesis fails an example that takes over 200 ms by default: a wall-clock bound that
# a busy machine breaks ("DeadlineExceeded"). Properties are about results, not speed.
hypothesis.settings.register_profile("clarity", deadline=None)
hypothesis.settings.load_profile("clarity")

#: Set by ``nox -s tests_no_extras``, which installs no optional dependency.
NO_EXTRAS = os.environ.get("CLARITY_TEST_NO_EXTRAS") == "1"


def pytest_configure(config: pytest.Config) -> None:
    """Under nox, refuse to run against the source tree instead of the installed wheel."""
    if os.environ.get("CLARITY_TEST_INSTALLED") == "1":
        source = pathlib.Path(clarity_resilience.__file__).resolve().parent
        if source == REPO / "clarity_resilience":
            raise pytest.UsageError(f"tests imported the checkout ({source}), not the wheel")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``no_extras`` tests where the extras are installed: their session runs them."""
    if NO_EXTRAS:
        return
    skip = pytest.mark.skip(reason="needs the extras absent; nox -s tests_no_extras runs it")
    for item in items:
        if item.get_closest_marker("no_extras") is not None:
            item.add_marker(skip)


@pytest.fixture
def registry() -> CollectorRegistry:
    """Return a fresh Prometheus registry, so sample values start from zero."""
    return CollectorRegistry()


@pytest.fixture
def events() -> Iterator[list[Event]]:
    """Record every event emitted during the test (default hooks stay active)."""
    with capture_events(keep_hooks=True) as recorded:
        yield recorded


@pytest.fixture
def in_ci() -> bool:
    """Return whether this is a CI run, where a missing service must fail, not skip."""
    return requirements.in_ci()


@pytest.fixture
def sha256sum() -> str:
    """Return GNU sha256sum's path (interop tests); a missing one fails in CI."""
    return requirements.require_binary("sha256sum", "GNU coreutils")


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> Iterator[str]:
    """Start a real redis-server on a Unix socket in tmp_path; yield the socket path."""
    socket_path = tmp_path / "redis.sock"
    # No TCP port (nothing to collide with), no persistence: a throwaway server.
    with _redis(["--port", "0", "--unixsocket", str(socket_path)], tmp_path):
        yield str(socket_path)


@pytest.fixture
def redis_tcp(tmp_path: pathlib.Path) -> Iterator[int]:
    """Start a real redis-server on a free 127.0.0.1 port (for FaultProxy); yield the port."""
    import socket

    with socket.socket() as probe:  # a free port; redis binds it right after
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with _redis(["--port", str(port), "--bind", "127.0.0.1"], tmp_path):
        yield port


@contextlib.contextmanager
def _redis(listen: list[str], tmp_path: pathlib.Path) -> Iterator[None]:
    import subprocess

    binary = requirements.require_binary("redis-server")
    args = [*listen, "--dir", str(tmp_path), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [binary, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # bounded: redis prints a few dozen lines, then this one
            if "ready to accept connections" in line.lower():
                break
        else:
            pytest.fail("redis-server exited before accepting connections")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def no_backoff() -> Iterator[None]:
    """Make stamina skip backoff sleeps, keeping each source's own ``attempts``."""
    import stamina

    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@pytest.fixture
def retries() -> Iterator[RetryLog]:
    """Record every retry stamina schedules (its default hooks are replaced meanwhile)."""
    import stamina

    log = RetryLog()
    previous = stamina.instrumentation.get_on_retry_hooks()
    stamina.instrumentation.set_on_retry_hooks([log])
    yield log
    stamina.instrumentation.set_on_retry_hooks(previous)


@pytest.fixture
def cache(tmp_path: pathlib.Path) -> pathlib.Path:
    """Return a (not yet created) cache directory for a source."""
    return tmp_path / "cache"
