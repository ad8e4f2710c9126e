"""Tests for the clarity-resilience command line (in process and as `python -m`)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator

import pytest
from trees import make_tree

from clarity_resilience import _cli
from clarity_resilience._cli import main
from clarity_resilience._manifest import Manifest
from clarity_resilience.instrumentation import get_on_event_hooks, set_on_event_hooks

REPO = pathlib.Path(__file__).resolve().parent.parent
FILES = {
    "weights.bin": b"\x00\x01" * 5000,
    "config.json": b'{"layers": 2}',
    "sub/tokenizer.txt": b"hello tokens",
}


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_tree(tmp_path / "model", FILES)


@pytest.fixture
def manifest_file(model_dir: pathlib.Path) -> pathlib.Path:
    """Return a sha256sum manifest of model_dir, stored inside it (as users often do)."""
    path = model_dir / "MANIFEST.sha256"
    assert main(["manifest", "create", str(model_dir), "-o", str(path)]) == 0
    return path


def cli_env(*first: pathlib.Path) -> dict[str, str]:
    """Return an environment that imports the checkout (or the installed wheel).

    Directories in ``first`` go to the front of ``PYTHONPATH``.
    """
    env = dict(os.environ)
    path = [str(p) for p in first]
    if os.environ.get("CLARITY_TEST_INSTALLED") != "1":
        path.append(str(REPO))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*path, env.get("PYTHONPATH")]))
    return env


def run_module(
    *args: str, cwd: pathlib.Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m clarity_resilience` against the checkout, or the installed wheel."""
    return subprocess.run(
        [sys.executable, "-m", "clarity_resilience", *args],
        capture_output=True, text=True, env=cli_env(), cwd=cwd, check=False, timeout=timeout,
    )  # fmt: skip


class TestCreate:
    def test_prints_sha256sum_lines(
        self, model_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without -o the manifest goes to stdout in sha256sum form."""
        assert main(["manifest", "create", str(model_dir)]) == 0
        out, err = capsys.readouterr()
        assert out == Manifest.build(model_dir).dumps("sha256sum")
        assert err == ""

    def test_output_inside_directory_excludes_itself(
        self, model_dir: pathlib.Path, manifest_file: pathlib.Path
    ) -> None:
        """A manifest written into the directory does not list itself."""
        listed = Manifest.read(manifest_file).entries
        assert sorted(listed) == sorted(FILES)

    def test_json_with_model_version(
        self, model_dir: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """--format json --model-version writes sizes and the version."""
        out = tmp_path / "manifest.json"
        argv = ["manifest", "create", str(model_dir), "-o", str(out), "--format", "json"]
        assert main([*argv, "--model-version", "2024-06"]) == 0
        document = json.loads(out.read_text())
        assert document["model_version"] == "2024-06"
        assert document["files"]["weights.bin"]["size"] == len(FILES["weights.bin"])

    def test_model_version_needs_json(
        self, model_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--model-version with the sha256sum form is a usage error, not silently dropped."""
        assert main(["manifest", "create", str(model_dir), "--model-version", "3"]) == 2
        assert "--model-version is recorded only by --format json" in capsys.readouterr().err

    def test_unwritable_output_names_the_file(
        self, model_dir: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A manifest that cannot be written fails with one line naming the requested file."""
        target = tmp_path / "no" / "such" / "MANIFEST"
        assert main(["manifest", "create", str(model_dir), "-o", str(target)]) == 1
        assert capsys.readouterr().err == (
            f"clarity-resilience: {target}: cannot write the manifest: No such file or directory\n"
        )

    def test_symlink_in_directory_fails(
        self, model_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A symlink in the directory stops create with one line and exit 1."""
        (model_dir / "link").symlink_to(model_dir / "weights.bin")
        assert main(["manifest", "create", str(model_dir)]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err.count("\n") == 1
        assert err.startswith("clarity-resilience: ")
        assert "symbolic link" in err


class TestVerify:
    def test_clean_directory(
        self,
        model_dir: pathlib.Path,
        manifest_file: pathlib.Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A clean directory exits 0 and says OK."""
        assert main(["verify", str(model_dir), "--manifest", str(manifest_file)]) == 0
        out, err = capsys.readouterr()
        assert out == f"{model_dir}: OK (3 files verified)\n"
        assert err == ""

    def test_checksum_mismatch(
        self,
        model_dir: pathlib.Path,
        manifest_file: pathlib.Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A changed file exits 1 with one short line naming it."""
        (model_dir / "config.json").write_bytes(b'{"layers": 9}')
        assert main(["verify", str(model_dir), "--manifest", str(manifest_file)]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == "clarity-resilience: config.json: checksum mismatch\n"

    def test_one_line_per_problem(
        self,
        model_dir: pathlib.Path,
        tmp_path: pathlib.Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Each problem gets exactly one line, in a stable order."""
        manifest = tmp_path / "m.json"
        argv = ["manifest", "create", str(model_dir), "-o", str(manifest), "--format", "json"]
        assert main([*argv, "--model-version", "1"]) == 0
        (model_dir / "weights.bin").write_bytes(b"short")
        (model_dir / "sub" / "tokenizer.txt").unlink()
        (model_dir / "evil\nname.py").write_text("x")
        argv = ["verify", str(model_dir), "--manifest", str(manifest)]
        assert main([*argv, "--expected-version", "2"]) == 1
        assert capsys.readouterr().err.splitlines() == [
            "clarity-resilience: model version mismatch: expected '2', manifest has '1'",
            "clarity-resilience: evil\\nname.py: is not listed in the manifest",
            "clarity-resilience: sub/tokenizer.txt: does not exist",
            "clarity-resilience: weights.bin: size mismatch (expected 10000 bytes, found 5)",
        ]

    def test_allow_extra(self, model_dir: pathlib.Path, manifest_file: pathlib.Path) -> None:
        """An unlisted file fails verify unless --allow-extra is given."""
        (model_dir / "README").write_text("hi")
        argv = ["verify", str(model_dir), "--manifest", str(manifest_file)]
        assert main(argv) == 1
        assert main([*argv, "--allow-extra"]) == 0

    def test_allow_extra_still_fails_a_checksum_mismatch(
        self,
        model_dir: pathlib.Path,
        manifest_file: pathlib.Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """--allow-extra accepts only the extra file: a changed listed file still exits 1."""
        (model_dir / "README").write_text("hi")
        argv = ["verify", str(model_dir), "--manifest", str(manifest_file), "--allow-extra"]
        assert main(argv) == 0
        assert capsys.readouterr() == (f"{model_dir}: OK (3 files verified)\n", "")
        # Same size, last digit of the content changed: only the digest tells.
        (model_dir / "config.json").write_bytes(b'{"layers": 3}')
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == "clarity-resilience: config.json: checksum mismatch\n"

    def test_allow_extra_still_fails_a_missing_file(
        self,
        model_dir: pathlib.Path,
        manifest_file: pathlib.Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """--allow-extra does not excuse a listed file that is gone."""
        (model_dir / "README").write_text("hi")
        (model_dir / "sub" / "tokenizer.txt").unlink()
        argv = ["verify", str(model_dir), "--manifest", str(manifest_file), "--allow-extra"]
        assert main(argv) == 1
        assert capsys.readouterr().err == "clarity-resilience: sub/tokenizer.txt: does not exist\n"

    def test_malformed_manifest_fails_closed(
        self, model_dir: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A malformed manifest exits 1 with one bounded line naming the line number."""
        manifest = tmp_path / "bad.sha256"
        digest = hashlib.sha256(FILES["config.json"]).hexdigest()
        manifest.write_text(f"{digest}  config.json\n" + "x" * 100_000 + "\n")
        assert main(["verify", str(model_dir), "--manifest", str(manifest)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"clarity-resilience: line 2 of {manifest}: ")
        assert err.count("\n") == 1
        assert len(err) < 300 + len(str(manifest))

    def test_fifo_manifest_fails_in_one_line(
        self, model_dir: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """A FIFO as the manifest exits 1 with one line instead of blocking forever.

        Needs the manifest reader to refuse non-regular files (issue 8, item 2); it runs
        as a process, so that a hang is a timeout and a failure, not a stuck suite.
        """
        fifo = tmp_path / "MANIFEST.sha256"
        os.mkfifo(fifo)
        try:
            done = run_module("verify", str(model_dir), "--manifest", str(fifo), timeout=60)
        except subprocess.TimeoutExpired:  # run() has killed the process
            pytest.fail("verify blocked on a FIFO manifest for 60 s")
        assert done.returncode == 1
        assert done.stdout == ""
        assert done.stderr.startswith("clarity-resilience: ")
        assert done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr

    def test_missing_manifest(
        self, model_dir: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing manifest exits 1 (fail closed), not 0 and not a traceback."""
        assert main(["verify", str(model_dir), "--manifest", str(tmp_path / "nope")]) == 1
        assert "does not exist" in capsys.readouterr().err

    def test_event_hooks_are_off_while_running_and_restored(
        self, model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The command turns library event hooks off while it runs and restores them after."""

        def record(event: object) -> None:
            pass

        seen: list[object] = []

        def spy(args: argparse.Namespace) -> int:
            seen.append(get_on_event_hooks())
            return 0

        monkeypatch.setattr(_cli, "verify", spy)
        before = get_on_event_hooks()
        set_on_event_hooks([record])
        try:
            assert main(["verify", str(model_dir), "--manifest", "m"]) == 0
            assert get_on_event_hooks() == (record,)
        finally:
            set_on_event_hooks(before)
        assert seen == [()]


class TestUnexpectedErrors:
    def test_internal_error_is_one_line(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bug surfaces as exit 1 and one line, never a traceback."""

        def broken(args: argparse.Namespace) -> int:
            raise RuntimeError("bug")

        monkeypatch.setattr(_cli, "verify", broken)
        assert main(["verify", "d", "--manifest", "m"]) == 1
        assert capsys.readouterr().err == "clarity-resilience: internal error: RuntimeError: bug\n"


class TestInterruptedInProcess:
    def test_keyboard_interrupt_returns_130_in_one_line(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """main() reports a KeyboardInterrupt in one line and returns 130."""

        def interrupted(args: argparse.Namespace) -> int:
            raise KeyboardInterrupt

        monkeypatch.setattr(_cli, "verify", interrupted)
        assert main(["verify", "d", "--manifest", "m"]) == 130
        assert capsys.readouterr() == ("", "clarity-resilience: interrupted\n")


class TestHash:
    def test_matches_sha256sum(
        self,
        tmp_path: pathlib.Path,
        sha256sum: str,
        capsysbinary: pytest.CaptureFixture[bytes],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """`hash` prints exactly what sha256sum prints, escapes included."""
        names = ["plain.bin", "with space.bin", "back\\slash.bin", "new\nline.bin"]
        make_tree(tmp_path, {name: name.encode() for name in names})
        monkeypatch.chdir(tmp_path)
        assert main(["hash", *names]) == 0
        expected = subprocess.run([sha256sum, *names], capture_output=True, check=True).stdout
        assert capsysbinary.readouterr().out == expected

    def test_unreadable_file_is_reported_and_others_hashed(
        self, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing file gives exit 1 and one line; the other files are still hashed."""
        (tmp_path / "a").write_bytes(b"a")
        assert main(["hash", str(tmp_path / "nope"), str(tmp_path / "a")]) == 1
        out, err = capsys.readouterr()
        assert out == f"{hashlib.sha256(b'a').hexdigest()}  {tmp_path / 'a'}\n"
        assert err == f"clarity-resilience: {tmp_path / 'nope'}: No such file or directory\n"


class TestUsage:
    @pytest.mark.parametrize(
        "argv",
        [
            pytest.param([], id="no-command"),
            pytest.param(["frobnicate"], id="unknown-command"),
            pytest.param(["manifest"], id="no-action"),
            pytest.param(["verify", "dir"], id="no-manifest"),
            pytest.param(["manifest", "create", "d", "--workers", "0"], id="zero-workers"),
            pytest.param(["manifest", "create", "d", "--format", "yaml"], id="bad-format"),
        ],
    )
    def test_usage_errors_exit_2(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Usage errors exit 2 with argparse's usage on stderr."""
        assert main(argv) == 2
        assert "usage: clarity-resilience" in capsys.readouterr().err

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--version prints the program and its version and exits 0."""
        from clarity_resilience import __version__

        assert main(["--version"]) == 0
        assert capsys.readouterr().out == f"clarity-resilience {__version__}\n"


class TestModule:
    def test_verify_ok_and_failing(
        self, model_dir: pathlib.Path, manifest_file: pathlib.Path
    ) -> None:
        """`python -m clarity_resilience verify` exits 0, then 1 once a file changes."""
        ok = run_module("verify", str(model_dir), "--manifest", str(manifest_file))
        assert (ok.returncode, ok.stderr) == (0, "")
        (model_dir / "weights.bin").write_bytes(b"\x01\x00" * 5000)
        bad = run_module("verify", str(model_dir), "--manifest", str(manifest_file))
        assert bad.returncode == 1
        assert bad.stderr == "clarity-resilience: weights.bin: checksum mismatch\n"
        assert bad.stdout == ""

    @pytest.mark.parametrize(
        ("args", "code"),
        [
            pytest.param((), 2, id="no-args"),
            pytest.param(("verify", "/no/dir", "--manifest", "/no/m"), 1, id="missing"),
            pytest.param(("manifest", "create", "/nonexistent"), 1, id="missing-dir"),
        ],
    )
    def test_never_a_traceback(self, args: tuple[str, ...], code: int) -> None:
        """Failures exit with their code and one message, never a traceback."""
        done = run_module(*args)
        assert done.returncode == code
        assert "Traceback" not in done.stderr + done.stdout
        assert done.stderr.strip()


# -- Ctrl-C, for real: SIGINT to a running command ------------------------------------

#: Seconds a command gets to show it has started, and then to exit after SIGINT. Both
#: are generous for a busy machine; an interrupted command exits at once.
START_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0
#: Sparse files: instant to create, and hashing them takes minutes.
HUGE = 256 * 1024**3

# The child restores SIGINT's default before it becomes the command: a shell starts
# background jobs with SIGINT ignored, and an ignored signal would stay ignored.
_TRAMPOLINE = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def entry_point(entry: str) -> list[str]:
    """Return the Python arguments that start the command as ``entry`` does.

    ``script`` is what the installed ``clarity-resilience`` script runs: the function
    pyproject.toml names, imported at the top and called (as pip's wrapper does).
    """
    if entry == "module":
        return ["-m", "clarity_resilience"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    module, function = pyproject["project"]["scripts"]["clarity-resilience"].split(":")
    return ["-c", f"import sys\nfrom {module} import {function}\nsys.exit({function}())"]


ENTRIES = [pytest.param("module", id="python-m"), pytest.param("script", id="console-script")]


@contextlib.contextmanager
def started(
    entry: str, *args: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Start the command as a process; it is always killed and reaped at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _TRAMPOLINE, sys.executable, *entry_point(entry), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env if env is not None else cli_env(),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# A stand-in module whose import says it started, then waits there for the test's SIGINT:
# a real-time wait in the child process (the signal is what ends it, never the clock).
WAITING_IMPORT = (
    "import os, time\n"
    "open(os.environ['CLARITY_TEST_IMPORTING'], 'w').close()\n"
    "deadline = time.monotonic() + 120\n"
    "while time.monotonic() < deadline:\n"
    "    time.sleep(0.01)  # sleep-ok: waiting for SIGINT, bounded by a deadline\n"
    "raise ImportError('no SIGINT came')\n"
)


def wait_until(proc: subprocess.Popen[str], ready: Callable[[], bool], what: str) -> None:
    """Poll ``ready`` until it is true; fail if the process exits or time runs out first."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the command exited ({proc.returncode}) before {what}: {err!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"the command did not start {what} in {START_TIMEOUT} s")
        time.sleep(0.02)  # sleep-ok: polling for a condition, bounded by a deadline


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Send SIGINT; return the exit status, stdout and stderr (fail if it does not exit)."""
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the command was still running {EXIT_TIMEOUT} s after SIGINT")
    return proc.returncode, out, err


def open_files(pid: int) -> set[str]:
    """Return the paths the process has open (from /proc)."""
    paths = set()
    with contextlib.suppress(FileNotFoundError):  # the process has exited
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):  # closed while we looked
                paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return paths


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
class TestInterrupt:
    @pytest.mark.parametrize("entry", ENTRIES)
    def test_ctrl_c_during_a_long_verify(self, entry: str, tmp_path: pathlib.Path) -> None:
        """SIGINT while threads hash huge files: exit 130 at once, one line, no traceback."""
        directory = tmp_path / "model"
        make_tree(directory, {"a.bin": b"a", "b.bin": b"b"})
        manifest = tmp_path / "manifest.json"
        Manifest.build(directory).write(manifest, format="json")
        document = json.loads(manifest.read_text())
        for name in ("a.bin", "b.bin"):
            os.truncate(directory / name, HUGE)  # same digest listed: a mismatch, minutes away
            document["files"][name]["size"] = HUGE
        manifest.write_text(json.dumps(document))
        huge = {str(directory / "a.bin"), str(directory / "b.bin")}
        with started(entry, "verify", str(directory), "--manifest", str(manifest)) as proc:
            wait_until(proc, lambda: bool(open_files(proc.pid) & huge), "hashing")
            status, out, err = interrupt(proc)
        assert (status, out, err) == (130, "", "clarity-resilience: interrupted\n")

    def test_ctrl_c_while_the_package_imports(
        self, model_dir: pathlib.Path, manifest_file: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """SIGINT while the console script imports the package itself: 130, one line.

        A stand-in for the standard ``fnmatch`` module (imported by the package, not by
        the entry point) waits for the signal, so the interrupt lands while the package
        imports.
        """
        stand_ins = tmp_path / "stand-ins"
        stand_ins.mkdir()
        importing = tmp_path / "importing"
        (stand_ins / "fnmatch.py").write_text(WAITING_IMPORT)
        env = cli_env(stand_ins) | {"CLARITY_TEST_IMPORTING": str(importing)}
        argv = ["verify", str(model_dir), "--manifest", str(manifest_file)]
        with started("script", *argv, env=env) as proc:
            wait_until(proc, importing.exists, "importing the package")
            status, out, err = interrupt(proc)
        assert "Traceback" not in err
        assert (status, out, err) == (130, "", "clarity-resilience: interrupted\n")

    @pytest.mark.parametrize("entry", ENTRIES)
    def test_ctrl_c_while_the_command_imports(
        self,
        entry: str,
        model_dir: pathlib.Path,
        manifest_file: pathlib.Path,
        tmp_path: pathlib.Path,
    ) -> None:
        """SIGINT while the command imports its parts: exit 130, one line, no traceback.

        A stand-in for the standard ``argparse`` module (which only the command uses)
        says when it is being imported, then waits there for the signal.
        """
        stand_ins = tmp_path / "stand-ins"
        stand_ins.mkdir()
        importing = tmp_path / "importing"
        (stand_ins / "argparse.py").write_text(WAITING_IMPORT)
        env = cli_env(stand_ins) | {"CLARITY_TEST_IMPORTING": str(importing)}
        argv = ["verify", str(model_dir), "--manifest", str(manifest_file)]
        with started(entry, *argv, env=env) as proc:
            wait_until(proc, importing.exists, "importing argparse")
            status, out, err = interrupt(proc)
        assert "Traceback" not in err
        assert (status, out, err) == (130, "", "clarity-resilience: interrupted\n")
