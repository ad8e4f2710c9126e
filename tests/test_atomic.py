"""The one atomic-write helper: all or nothing under the final name, no temp file left."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest

from clarity_resilience._atomic import DEFAULT_MODE, atomic_writer, write_atomic

OLD = b"old contents\n"
NEW = b"new contents, longer than the old ones\n" * 100


def listing(directory: pathlib.Path) -> list[str]:
    return sorted(os.listdir(directory))


def write_then_fail(target: pathlib.Path, error: BaseException) -> None:
    with atomic_writer(target) as f:
        f.write(NEW[:100])
        raise error


def mode_of(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """Run with umask 077, so a mode that survives it was set explicitly."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


class TestWriteAtomic:
    def test_creates_a_new_file_with_the_default_mode(
        self, tmp_path: pathlib.Path, strict_umask: None
    ) -> None:
        """A new file holds the data, has mode 0644 whatever the umask, and no temp is left."""
        target = tmp_path / "model.bin"
        write_atomic(target, NEW)
        assert target.read_bytes() == NEW
        assert mode_of(target) == DEFAULT_MODE == 0o644
        assert listing(tmp_path) == ["model.bin"]

    def test_keeps_the_mode_of_the_file_it_replaces(self, tmp_path: pathlib.Path) -> None:
        """Replacing a file keeps its permission bits unless a mode is given."""
        target = tmp_path / "model.bin"
        target.write_bytes(OLD)
        target.chmod(0o600)
        write_atomic(target, NEW)
        assert (target.read_bytes(), mode_of(target)) == (NEW, 0o600)
        write_atomic(target, OLD, mode=0o640)
        assert (target.read_bytes(), mode_of(target)) == (OLD, 0o640)

    def test_replaces_the_target_atomically(self, tmp_path: pathlib.Path) -> None:
        """A reader of the old file keeps reading old bytes; the name moves to a new inode."""
        target = tmp_path / "model.bin"
        target.write_bytes(OLD)
        old_inode = target.stat().st_ino
        with open(target, "rb") as reader:
            write_atomic(target, memoryview(NEW))
            assert reader.read() == OLD
        assert target.read_bytes() == NEW
        assert target.stat().st_ino != old_inode
        assert listing(tmp_path) == ["model.bin"]

    def test_a_symlink_at_the_target_is_replaced_not_followed(
        self, tmp_path: pathlib.Path
    ) -> None:
        """Writing to a symlink replaces the link itself and leaves what it pointed at alone."""
        elsewhere = tmp_path / "elsewhere.bin"
        elsewhere.write_bytes(OLD)
        target = tmp_path / "model.bin"
        target.symlink_to(elsewhere)
        write_atomic(target, NEW)
        assert not target.is_symlink()
        assert (target.read_bytes(), elsewhere.read_bytes()) == (NEW, OLD)


class TestAtomicWriter:
    def test_nothing_appears_under_the_final_name_before_the_commit(
        self, tmp_path: pathlib.Path
    ) -> None:
        """While the block runs, the target holds the old bytes and a hidden temp the new."""
        target = tmp_path / "model.bin"
        target.write_bytes(OLD)
        with atomic_writer(target, suffix=".part") as f:
            f.write(NEW)
            f.flush()
            assert target.read_bytes() == OLD
            (temporary,) = [name for name in listing(tmp_path) if name != "model.bin"]
            assert re.fullmatch(r"\.model\.bin\.[0-9a-f]{16}\.part", temporary)
            assert (tmp_path / temporary).read_bytes() == NEW
        assert target.read_bytes() == NEW
        assert listing(tmp_path) == ["model.bin"]

    @pytest.mark.parametrize(
        "error",
        [
            pytest.param(ValueError("refused"), id="error"),
            pytest.param(KeyboardInterrupt(), id="keyboard-interrupt"),
        ],
    )
    @pytest.mark.parametrize("existing", [pytest.param(True, id="replacing"), False])
    def test_failure_in_the_block_leaves_the_target_and_no_temp_file(
        self, tmp_path: pathlib.Path, error: BaseException, existing: bool
    ) -> None:
        """An exception (Ctrl-C included) mid-write removes the temp file and changes nothing."""
        target = tmp_path / "model.bin"
        if existing:
            target.write_bytes(OLD)
        with pytest.raises(type(error)):
            write_then_fail(target, error)
        assert listing(tmp_path) == (["model.bin"] if existing else [])
        if existing:
            assert target.read_bytes() == OLD

    def test_a_failed_commit_removes_the_temp_file(self, tmp_path: pathlib.Path) -> None:
        """A failed rename (a directory holds the name) raises and leaves no temp file."""
        target = tmp_path / "model.bin"
        target.mkdir()
        (target / "inside").write_bytes(OLD)
        with pytest.raises(OSError):
            write_atomic(target, NEW)
        assert listing(tmp_path) == ["model.bin"]
        assert target.is_dir()

    def test_a_missing_directory_fails_before_the_block_runs(self, tmp_path: pathlib.Path) -> None:
        """The temp file is created on entry: a missing directory raises before any write."""
        ran = False
        with pytest.raises(FileNotFoundError), atomic_writer(tmp_path / "gone" / "model.bin"):
            ran = True
        assert not ran

    def test_a_process_killed_mid_write_leaves_no_complete_looking_file(
        self, tmp_path: pathlib.Path
    ) -> None:
        """SIGKILL mid-write leaves the old target intact and only a hidden temp file."""
        target = tmp_path / "model.bin"
        target.write_bytes(OLD)
        code = (
            "import os, signal, sys\n"
            "from clarity_resilience._atomic import atomic_writer\n"
            "with atomic_writer(sys.argv[1]) as f:\n"
            "    f.write(b'x' * 100_000)\n"
            "    f.flush()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
        )
        result = subprocess.run([sys.executable, "-c", code, str(target)], check=False)
        assert result.returncode == -signal.SIGKILL
        assert target.read_bytes() == OLD
        leftovers = [name for name in listing(tmp_path) if name != "model.bin"]
        assert len(leftovers) == 1
        assert re.fullmatch(r"\.model\.bin\.[0-9a-f]{16}\.tmp", leftovers[0])
        assert (tmp_path / leftovers[0]).stat().st_size == 100_000
