"""Pytest fixtures for chaos tests: fault proxies, file corruptors and seeded load.

Opt in from your root ``conftest.py`` (the plugin is never loaded automatically)::

    pytest_plugins = ["clarity_resilience.chaos.pytest_plugin"]

Fixtures:

- ``fault_proxy``: a factory, ``fault_proxy(host, port)`` returns a started
  :class:`~clarity_resilience.chaos.ThreadedFaultProxy`; all are stopped at teardown.
- ``async_fault_proxy``: the same for async tests, ``await async_fault_proxy(host,
  port)`` returns a started :class:`~clarity_resilience.chaos.FaultProxy` (needs
  pytest-asyncio).
- ``corrupt``: ``corrupt.bit_flip(path)``, ``corrupt.named("truncate", path)``, ...;
  every corruption is restored at teardown, whether the test passed or not.
- ``chaos_seed`` / ``chaos_rng``: a per-test seed (and a :class:`random.Random` seeded
  with it) derived from the session seed and the test id.
- ``run_threads`` / ``run_tasks``: the load drivers with ``seed`` defaulting to
  ``chaos_seed``.

The session seed comes from ``--chaos-seed``, else the ``CLARITY_CHAOS_SEED``
environment variable, else the ``clarity_chaos_seed`` ini option, else 0; it is shown
in the report header so a failing run can be repeated. The markers ``chaos``, ``slow``
and ``non_destructive`` are registered unless the project already registers them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Protocol, TypeVar

import pytest

from . import corruptors, load
from ._corruption import Corruption, StrPath
from .load import Call, LoadResult
from .proxy import FaultProxy, ThreadedFaultProxy

__all__ = [
    "AsyncFaultProxyFactory",
    "CorruptFixture",
    "FaultProxyFactory",
    "RunTasks",
    "RunThreads",
    "chaos_rng",
    "chaos_seed",
    "corrupt",
    "fault_proxy",
    "run_tasks",
    "run_threads",
    "session_seed",
]

T = TypeVar("T")
C = TypeVar("C", bound=Corruption)

SEED_ENV = "CLARITY_CHAOS_SEED"
MARKERS = {
    "chaos": "a fault-injection scenario",
    "slow": "long-running; deselect with -m 'not slow'",
    "non_destructive": "touches only temporary directories and loopback",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--chaos-seed`` and the ``clarity_chaos_seed`` ini option."""
    parser.addini("clarity_chaos_seed", f"session seed for chaos fixtures (${SEED_ENV} wins)")
    parser.getgroup("clarity-chaos").addoption(
        "--chaos-seed", type=int, default=None, help="session seed for chaos fixtures"
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the chaos markers that the project has not registered itself."""
    registered = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    for name, description in MARKERS.items():
        if name not in registered:
            config.addinivalue_line("markers", f"{name}: {description}")


def pytest_report_header(config: pytest.Config) -> str:
    """Show the session seed, so a failing chaos run can be repeated exactly."""
    return f"clarity chaos seed: {session_seed(config)} (set {SEED_ENV} to repeat a run)"


def session_seed(config: pytest.Config) -> int:
    """Return the session seed: ``--chaos-seed``, ``$CLARITY_CHAOS_SEED``, ini, or 0.

    Raises:
        pytest.UsageError: The environment variable or ini option is not an integer.
    """
    option = config.getoption("--chaos-seed")
    if option is not None:
        return int(option)
    for source, value in ((SEED_ENV, os.environ.get(SEED_ENV)), ("ini", _ini_seed(config))):
        if value:
            try:
                return int(value)
            except ValueError:
                raise pytest.UsageError(
                    f"chaos seed from {source} is not an integer: {value!r}"
                ) from None
    return 0


def _ini_seed(config: pytest.Config) -> str:
    value = config.getini("clarity_chaos_seed")
    return value if isinstance(value, str) else ""


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    """Return this test's seed, derived from the session seed and the test id."""
    text = f"{session_seed(request.config)}:{request.node.nodeid}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


@pytest.fixture
def chaos_rng(chaos_seed: int) -> random.Random:
    """Return a generator seeded with ``chaos_seed``: reproducible, different per test."""
    return random.Random(chaos_seed)  # noqa: S311 - reproducible chaos, not secrecy


class FaultProxyFactory(Protocol):
    """Start a threaded fault proxy to ``upstream_host:upstream_port``."""

    def __call__(
        self, upstream_host: str, upstream_port: int, *, seed: int | None = None
    ) -> ThreadedFaultProxy:
        """Return a started proxy, stopped at teardown (``seed`` defaults to chaos_seed)."""
        ...


@pytest.fixture
def fault_proxy(chaos_seed: int) -> Iterator[FaultProxyFactory]:
    """Return a factory of started threaded proxies; every one is stopped at teardown."""
    proxies: list[ThreadedFaultProxy] = []

    def start(
        upstream_host: str, upstream_port: int, *, seed: int | None = None
    ) -> ThreadedFaultProxy:
        proxy = FaultProxy.threaded(
            upstream_host, upstream_port, seed=chaos_seed if seed is None else seed
        )
        proxies.append(proxy.start())
        return proxy

    yield start
    _stop_all([proxy.stop for proxy in reversed(proxies)])


def _stop_all(stoppers: list[Callable[[], None]]) -> None:
    """Call every stopper, then raise the first failure (so none is skipped)."""
    failures: list[Exception] = []
    for stop in stoppers:
        try:
            stop()
        except Exception as error:  # noqa: BLE001 - raised below, after the rest ran
            failures.append(error)
    if failures:
        raise failures[0]


class AsyncFaultProxyFactory(Protocol):
    """Start a fault proxy on the running loop to ``upstream_host:upstream_port``."""

    def __call__(
        self, upstream_host: str, upstream_port: int, *, seed: int | None = None
    ) -> Awaitable[FaultProxy]:
        """Return (awaitably) a started proxy, stopped at teardown."""
        ...


if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def async_fault_proxy(chaos_seed: int) -> AsyncIterator[AsyncFaultProxyFactory]:
        """Return an async factory of started proxies; all are stopped at teardown."""
        proxies: list[FaultProxy] = []

        async def start(
            upstream_host: str, upstream_port: int, *, seed: int | None = None
        ) -> FaultProxy:
            proxy = FaultProxy(
                upstream_host, upstream_port, seed=chaos_seed if seed is None else seed
            )
            proxies.append(await proxy.start())
            return proxy

        yield start
        failures: list[Exception] = []
        for proxy in reversed(proxies):
            try:
                await proxy.stop()
            except Exception as error:  # noqa: BLE001 - raised below, after the rest ran
                failures.append(error)
        if failures:
            raise failures[0]

    __all__ += ["async_fault_proxy"]


class CorruptFixture:
    """Apply corruptions that are all restored when the test ends.

    Seeds default to the test's ``chaos_seed``; every method returns the applied
    :class:`~clarity_resilience.chaos.Corruption`.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - reproducible chaos, not secrecy
        self._applied: list[Corruption] = []

    def __call__(self, corruption: C) -> C:
        """Apply ``corruption`` now and restore it at teardown."""
        corruption.apply()
        self._applied.append(corruption)
        return corruption

    def named(self, name: str, path: StrPath) -> Corruption:
        """Apply the corruption called ``name`` in :data:`~.corruptors.CORRUPTORS`."""
        return self(corruptors.CORRUPTORS[name](path, seed=self.seed))

    def random(self, path: StrPath) -> Corruption:
        """Apply a corruption picked by the test's generator."""
        return self(corruptors.random_corruption(path, self.rng))

    def bit_flip(self, path: StrPath, *, offset: int | None = None) -> corruptors.bit_flip:
        """Flip one bit (see :class:`~.corruptors.bit_flip`)."""
        return self(corruptors.bit_flip(path, offset=offset, seed=self.seed))

    def truncate(self, path: StrPath, size: int | None = None) -> corruptors.truncate:
        """Cut the file short (see :class:`~.corruptors.truncate`)."""
        return self(corruptors.truncate(path, size))

    def append(self, path: StrPath, data: bytes = corruptors.APPENDED) -> corruptors.append:
        """Append bytes (see :class:`~.corruptors.append`)."""
        return self(corruptors.append(path, data))

    def zero_fill(self, path: StrPath) -> corruptors.zero_fill:
        """Zero every byte (see :class:`~.corruptors.zero_fill`)."""
        return self(corruptors.zero_fill(path))

    def replace_by_rename(
        self, path: StrPath, data: bytes | None = None
    ) -> corruptors.replace_by_rename:
        """Replace the file with a new inode (see :class:`~.corruptors.replace_by_rename`)."""
        return self(corruptors.replace_by_rename(path, data))

    def symlink_swap(
        self, path: StrPath, target: StrPath | None = None
    ) -> corruptors.symlink_swap:
        """Replace the file with a symlink (see :class:`~.corruptors.symlink_swap`)."""
        return self(corruptors.symlink_swap(path, target))

    def delete(self, path: StrPath) -> corruptors.delete:
        """Remove the file (see :class:`~.corruptors.delete`)."""
        return self(corruptors.delete(path))

    def remove_permissions(self, path: StrPath) -> corruptors.remove_permissions:
        """Chmod to 000 (see :class:`~.corruptors.remove_permissions`)."""
        return self(corruptors.remove_permissions(path))

    def rewrite_while_reading(
        self, path: StrPath, *, pause: float = 0.0005
    ) -> corruptors.rewrite_while_reading:
        """Keep rewriting the file (see :class:`~.corruptors.rewrite_while_reading`)."""
        return self(corruptors.rewrite_while_reading(path, seed=self.seed, pause=pause))

    def restore_all(self) -> None:
        """Restore every corruption, newest first; raise the first failure after all ran."""
        applied, self._applied = self._applied, []
        _stop_all([corruption.restore for corruption in reversed(applied)])


@pytest.fixture
def corrupt(chaos_seed: int) -> Iterator[CorruptFixture]:
    """Return a :class:`CorruptFixture`; its corruptions are restored at teardown."""
    fixture = CorruptFixture(chaos_seed)
    yield fixture
    fixture.restore_all()


class RunThreads(Protocol):
    """:func:`~clarity_resilience.chaos.run_threads` with the test's seed by default."""

    def __call__(
        self,
        fn: Callable[[Call], T],
        *,
        workers: int,
        iterations: int,
        seed: int | None = None,
        expected: tuple[type[BaseException], ...] = load.EXPECTED,
    ) -> LoadResult[T]:
        """Run ``fn`` in threads and return every outcome."""
        ...


class RunTasks(Protocol):
    """:func:`~clarity_resilience.chaos.run_tasks` with the test's seed by default."""

    def __call__(
        self,
        fn: Callable[[Call], Awaitable[T]],
        *,
        tasks: int,
        iterations: int,
        seed: int | None = None,
        expected: tuple[type[BaseException], ...] = load.EXPECTED,
    ) -> Awaitable[LoadResult[T]]:
        """Run ``fn`` in tasks and return (awaitably) every outcome."""
        ...


@pytest.fixture
def run_threads(chaos_seed: int) -> RunThreads:
    """Return :func:`~clarity_resilience.chaos.run_threads` seeded with ``chaos_seed``."""

    def run(
        fn: Callable[[Call], T],
        *,
        workers: int,
        iterations: int,
        seed: int | None = None,
        expected: tuple[type[BaseException], ...] = load.EXPECTED,
    ) -> LoadResult[T]:
        chosen = chaos_seed if seed is None else seed
        return load.run_threads(
            fn, workers=workers, iterations=iterations, seed=chosen, expected=expected
        )

    return run


@pytest.fixture
def run_tasks(chaos_seed: int) -> RunTasks:
    """Return :func:`~clarity_resilience.chaos.run_tasks` seeded with ``chaos_seed``."""

    def run(
        fn: Callable[[Call], Awaitable[T]],
        *,
        tasks: int,
        iterations: int,
        seed: int | None = None,
        expected: tuple[type[BaseException], ...] = load.EXPECTED,
    ) -> Awaitable[LoadResult[T]]:
        chosen = chaos_seed if seed is None else seed
        return load.run_tasks(
            fn, tasks=tasks, iterations=iterations, seed=chosen, expected=expected
        )

    return run
