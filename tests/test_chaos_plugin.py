"""Tests for clarity_resilience.chaos.pytest_plugin, run inside pytester sessions."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(60)

ORIGINAL = bytes(range(256)) * 8

CONFTEST = """
pytest_plugins = ["clarity_resilience.chaos.pytest_plugin"]
"""

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

ECHO = """
import socketserver, threading
import pytest

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)

@pytest.fixture
def echo_port():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()
"""


@pytest.fixture
def chaos_pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Return a pytester project that opts in to the chaos plugin."""
    monkeypatch.delenv("CLARITY_CHAOS_SEED", raising=False)
    pytester.makeconftest(CONFTEST + ECHO)
    pytester.makeini(INI)
    return pytester


# Hypothesis's plugin re-imports hypothesis after every in-process run (~1 s each). The
# plugin module may already be imported by this process (then pytest cannot rewrite its
# asserts, and says so in a warning that the inner ``filterwarnings = error`` would raise).
FAST = (
    "-p",
    "no:hypothesispytest",
    "-p",
    "no:cacheprovider",
    "-W",
    "ignore::pytest.PytestAssertRewriteWarning",
)


def values(result: pytest.RunResult, prefix: str) -> list[str]:
    return [line.split(prefix, 1)[1] for line in result.outlines if line.startswith(prefix)]


class TestFaultProxyFixtures:
    def test_threaded_proxy_works_and_is_stopped(self, chaos_pytester: pytest.Pytester) -> None:
        """fault_proxy returns a started proxy that forwards, and teardown stops it."""
        chaos_pytester.makepyfile(
            """
            import socket
            import pytest

            def test_proxy(fault_proxy, echo_port):
                proxy = fault_proxy("127.0.0.1", echo_port)
                with socket.create_connection((proxy.host, proxy.port), timeout=5) as client:
                    client.sendall(b"ping")
                    assert client.recv(10) == b"ping"
                    proxy.timeout(0)
                    client.sendall(b"lost")
                    client.settimeout(0.3)
                    with pytest.raises(TimeoutError):
                        client.recv(10)
                print("PORT:" + str(proxy.port))
            """
        )
        result = chaos_pytester.runpytest(*FAST, "-rP")
        result.assert_outcomes(passed=1)
        (port,) = values(result, "PORT:")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()

    def test_async_proxy_fixture(self, chaos_pytester: pytest.Pytester) -> None:
        """async_fault_proxy starts proxies on the test's loop and stops them after."""
        chaos_pytester.makepyfile(
            """
            import asyncio
            import pytest

            @pytest.mark.asyncio
            async def test_proxy(async_fault_proxy, echo_port):
                proxy = await async_fault_proxy("127.0.0.1", echo_port)
                proxy.latency(100)
                reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
                loop = asyncio.get_running_loop()
                started = loop.time()
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                assert loop.time() - started >= 0.099
                writer.close()
                await writer.wait_closed()
            """
        )
        chaos_pytester.runpytest(*FAST).assert_outcomes(passed=1)


class TestSeed:
    SEED_TEST = """
        def test_a(chaos_seed, chaos_rng):
            print(f"SEED:{chaos_seed}:{chaos_rng.random()}")

        def test_b(chaos_seed):
            print(f"SEED:{chaos_seed}")
        """

    def test_seed_is_reproducible_and_per_test(
        self, chaos_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The same session seed repeats every test's seed; tests differ from each other."""
        chaos_pytester.makepyfile(self.SEED_TEST)
        monkeypatch.setenv("CLARITY_CHAOS_SEED", "5")
        first = chaos_pytester.runpytest(*FAST, "-rP")
        second = chaos_pytester.runpytest(*FAST, "-rP")
        monkeypatch.setenv("CLARITY_CHAOS_SEED", "6")
        other = chaos_pytester.runpytest(*FAST, "-rP")
        first.stdout.fnmatch_lines(["clarity chaos seed: 5*"])
        assert values(first, "SEED:") == values(second, "SEED:")
        assert values(first, "SEED:") != values(other, "SEED:")
        seed_a, seed_b = (line.split(":")[0] for line in values(first, "SEED:"))
        assert seed_a != seed_b

    @pytest.mark.parametrize(
        ("args", "env", "ini", "shown"),
        [
            pytest.param([], None, None, "0", id="default"),
            pytest.param([], None, "7", "7", id="ini"),
            pytest.param([], "8", "7", "8", id="env-beats-ini"),
            pytest.param(["--chaos-seed=9"], "8", "7", "9", id="option-beats-env"),
        ],
    )
    def test_seed_sources(
        self,
        chaos_pytester: pytest.Pytester,
        monkeypatch: pytest.MonkeyPatch,
        args: list[str],
        env: str | None,
        ini: str | None,
        shown: str,
    ) -> None:
        """The session seed comes from the option, then the environment, then the ini."""
        if ini is not None:
            chaos_pytester.makeini(INI + f"clarity_chaos_seed = {ini}\n")
        if env is not None:
            monkeypatch.setenv("CLARITY_CHAOS_SEED", env)
        chaos_pytester.makepyfile(self.SEED_TEST)
        result = chaos_pytester.runpytest(*FAST, *args)
        result.stdout.fnmatch_lines([f"clarity chaos seed: {shown} *"])

    def test_invalid_seed_is_a_usage_error(
        self, chaos_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A seed that is not an integer stops the run with a clear message."""
        monkeypatch.setenv("CLARITY_CHAOS_SEED", "banana")
        chaos_pytester.makepyfile(self.SEED_TEST)
        result = chaos_pytester.runpytest(*FAST)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*chaos seed from CLARITY_CHAOS_SEED*banana*"])


class TestCorruptFixture:
    def test_everything_is_restored_even_when_the_test_fails(
        self, chaos_pytester: pytest.Pytester
    ) -> None:
        """Corruptions applied through the fixture are undone at teardown, pass or fail."""
        model = chaos_pytester.path / "model.bin"
        model.write_bytes(ORIGINAL)
        model.chmod(0o640)
        chaos_pytester.makepyfile(
            """
            import pathlib

            def test_breaks_things(corrupt):
                path = pathlib.Path("model.bin")
                flip = corrupt.bit_flip(path)
                corrupt.truncate(path)
                corrupt.remove_permissions(path)
                assert flip.applied
                assert path.stat().st_mode & 0o777 == 0
                assert False, "failing on purpose"

            def test_races(corrupt):
                rewriter = corrupt.rewrite_while_reading(pathlib.Path("model.bin"))
                assert rewriter.wait_for_cycles(5)

            def test_named_and_random(corrupt):
                path = pathlib.Path("model.bin")
                corrupt.named("symlink_swap", path)
                assert path.is_symlink()
                corrupt.restore_all()
                assert not path.is_symlink()
                corrupt.random(path)
            """
        )
        result = chaos_pytester.runpytest(*FAST)
        result.assert_outcomes(passed=2, failed=1)
        assert model.read_bytes() == ORIGINAL
        assert model.stat().st_mode & 0o777 == 0o640
        assert sorted(p.name for p in chaos_pytester.path.iterdir() if "model" in p.name) == [
            "model.bin"
        ]
        assert not [t for t in threading.enumerate() if t.name.startswith("clarity-chaos")]


class TestCorruptFixtureMethods:
    def test_every_shortcut_applies_and_restore_all_undoes(self, tmp_path: Path) -> None:
        """Each shortcut applies its corruptor; restore_all undoes them newest first."""
        from clarity_resilience.chaos.pytest_plugin import CorruptFixture

        model = tmp_path / "model.bin"
        model.write_bytes(ORIGINAL)
        kit = CorruptFixture(seed=3)
        assert kit.bit_flip(model).name == "bit_flip"
        assert kit.truncate(model, 100).applied
        kit.append(model, b"!")
        assert model.read_bytes()[-1:] == b"!"
        kit.zero_fill(model)
        assert model.read_bytes() == bytes(101)
        kit.replace_by_rename(model, b"new")
        kit.symlink_swap(model)
        assert model.is_symlink()
        kit.restore_all()
        assert model.read_bytes() == ORIGINAL
        kit.delete(model)
        assert not model.exists()
        kit.restore_all()
        kit.remove_permissions(model)
        assert model.stat().st_mode & 0o777 == 0
        kit.restore_all()
        assert model.read_bytes() == ORIGINAL
        assert model.stat().st_mode & 0o777 == 0o644


class TestLoadFixtures:
    def test_load_fixtures_use_the_test_seed(self, chaos_pytester: pytest.Pytester) -> None:
        """run_threads and run_tasks default their seed to chaos_seed."""
        chaos_pytester.makepyfile(
            """
            import pytest
            from clarity_resilience.chaos import load

            def draw(call):
                return call.rng.random()

            async def adraw(call):
                return call.rng.random()

            def test_threads(run_threads, chaos_seed):
                got = run_threads(draw, workers=2, iterations=3)
                want = load.run_threads(draw, workers=2, iterations=3, seed=chaos_seed)
                assert [o.value for o in got.outcomes] == [o.value for o in want.outcomes]
                other = run_threads(draw, workers=2, iterations=3, seed=chaos_seed + 1)
                assert [o.value for o in got.outcomes] != [o.value for o in other.outcomes]

            @pytest.mark.asyncio
            async def test_tasks(run_tasks, chaos_seed):
                got = await run_tasks(adraw, tasks=2, iterations=3)
                want = await load.run_tasks(adraw, tasks=2, iterations=3, seed=chaos_seed)
                assert [o.value for o in got.outcomes] == [o.value for o in want.outcomes]
            """
        )
        chaos_pytester.runpytest(*FAST).assert_outcomes(passed=2)


class TestMarkers:
    MARKED = """
        import pytest

        @pytest.mark.chaos
        @pytest.mark.slow
        @pytest.mark.non_destructive
        def test_marked():
            pass
        """

    def test_markers_are_registered(self, chaos_pytester: pytest.Pytester) -> None:
        """The chaos markers pass --strict-markers once the plugin is enabled."""
        chaos_pytester.makepyfile(self.MARKED)
        chaos_pytester.runpytest_subprocess(*FAST, "--strict-markers").assert_outcomes(passed=1)

    def test_markers_fail_without_the_plugin(self, pytester: pytest.Pytester) -> None:
        """Without the plugin the same file fails --strict-markers (the plugin is opt-in)."""
        pytester.makeini(INI)
        pytester.makepyfile(self.MARKED)
        # A subprocess: in-process runs share pytest.mark's cache of known markers.
        result = pytester.runpytest_subprocess(*FAST, "--strict-markers")
        result.stdout.fnmatch_lines(["*'chaos' not found in `markers` configuration option*"])

    def test_project_markers_are_kept(self, chaos_pytester: pytest.Pytester) -> None:
        """A marker the project registers keeps its description and is not duplicated."""
        chaos_pytester.makeini(INI + "markers =\n    chaos: our own scenarios\n")
        result = chaos_pytester.runpytest(*FAST, "--markers")
        result.stdout.fnmatch_lines(["@pytest.mark.chaos: our own scenarios"])
        assert sum("@pytest.mark.chaos:" in line for line in result.outlines) == 1
        result.stdout.fnmatch_lines(["@pytest.mark.slow: long-running*"])
        result.stdout.fnmatch_lines(["@pytest.mark.non_destructive: touches only*"])


class TestPackageSurface:
    def test_all_is_sorted_and_complete(self) -> None:
        """chaos.__all__ lists every public name, sorted, and nothing that is missing."""
        import types

        import clarity_resilience.chaos as chaos

        public = {
            name
            for name, value in vars(chaos).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        } - {"annotations"}
        assert chaos.__all__ == sorted(chaos.__all__)
        assert set(chaos.__all__) == public

    def test_imports_stay_opt_in(self, pytester: pytest.Pytester) -> None:
        """The core never imports the chaos kit, and the kit never imports pytest."""
        script = (
            "import sys\n"
            "import clarity_resilience\n"
            "assert 'clarity_resilience.chaos' not in sys.modules\n"
            "import clarity_resilience.chaos\n"
            "assert 'pytest' not in sys.modules, 'chaos imported pytest'\n"
            "print('CLEAN')\n"
        )
        result = pytester.run(sys.executable, "-c", script)
        assert result.ret == 0, result.errlines
        assert result.outlines == ["CLEAN"]
