"""Tests for clarity_resilience.chaos.corruptors: real files in tmp_path."""

from __future__ import annotations

import hashlib
import os
import pathlib
import random
import stat
import threading
from collections.abc import Callable
from typing import NamedTuple

import pytest

from clarity_resilience.chaos import (
    CORRUPTORS,
    Corruption,
    append,
    bit_flip,
    delete,
    permissions_enforced,
    random_corruption,
    remove_permissions,
    replace_by_rename,
    rewrite_while_reading,
    symlink_swap,
    truncate,
    zero_fill,
)

pytestmark = pytest.mark.timeout(30)

ORIGINAL = random.Random(0).randbytes(4096)
MTIME_NS = 1_600_000_000_123_456_789


class FileState(NamedTuple):
    data: bytes
    mode: int
    inode: int
    mtime_ns: int


def state(path: pathlib.Path) -> FileState:
    info = os.lstat(path)
    return FileState(path.read_bytes(), stat.S_IMODE(info.st_mode), info.st_ino, info.st_mtime_ns)


def listing(directory: pathlib.Path) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture
def model(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(ORIGINAL)
    path.chmod(0o640)
    os.utime(path, ns=(MTIME_NS, MTIME_NS))
    return path


def make(name: str) -> Callable[[pathlib.Path], Corruption]:
    """Build a corruptor by name, including the two the registry leaves out."""
    extra: dict[str, Callable[[pathlib.Path], Corruption]] = {
        "remove_permissions": remove_permissions,
        "rewrite_while_reading": rewrite_while_reading,
    }
    return extra.get(name) or (lambda path: CORRUPTORS[name](path, seed=5))


ALL = [
    pytest.param(name, id=name)
    for name in [*sorted(CORRUPTORS), "remove_permissions", "rewrite_while_reading"]
]
IN_PLACE = ["append", "bit_flip", "truncate", "zero_fill", "rewrite_while_reading"]


class TestBitFlip:
    def test_flips_exactly_one_bit_in_place(self, model: pathlib.Path) -> None:
        """One bit changes at the reported offset; size and inode stay the same."""
        before = state(model)
        with bit_flip(model, seed=3) as flip:
            damaged = state(model)
            assert damaged.inode == before.inode
            assert len(damaged.data) == len(ORIGINAL)
            diff = [
                i for i, (a, b) in enumerate(zip(ORIGINAL, damaged.data, strict=True)) if a != b
            ]
            assert diff == [flip.offset]
            assert ORIGINAL[flip.offset] ^ damaged.data[flip.offset] == 1 << flip.bit
        assert state(model) == before

    def test_same_seed_same_damage(self, model: pathlib.Path) -> None:
        """A seed always picks the same offset and bit; other seeds pick others."""
        picks = []
        for seed in (1, 1, 2, 3, 4):
            with bit_flip(model, seed=seed) as flip:
                picks.append((flip.offset, flip.bit))
        assert picks[0] == picks[1]
        assert len(set(picks)) >= 3

    def test_explicit_offset(self, model: pathlib.Path) -> None:
        """An explicit offset is the byte that changes."""
        with bit_flip(model, offset=10) as flip:
            assert flip.offset == 10
            assert model.read_bytes()[10] != ORIGINAL[10]

    @pytest.mark.parametrize(
        ("content", "offset"),
        [pytest.param(b"", None, id="empty"), pytest.param(b"ab", 2, id="past-end")],
    )
    def test_impossible_flip_leaves_file_alone(
        self, tmp_path: pathlib.Path, content: bytes, offset: int | None
    ) -> None:
        """A flip that cannot happen raises and leaves the file as it was."""
        path = tmp_path / "small"
        path.write_bytes(content)
        with pytest.raises(ValueError), bit_flip(path, offset=offset):
            pass
        assert path.read_bytes() == content


class TestTruncate:
    @pytest.mark.parametrize(
        ("size", "expected"),
        [pytest.param(None, 2048, id="default-half"), pytest.param(7, 7, id="explicit")],
    )
    def test_cuts_in_place(self, model: pathlib.Path, size: int | None, expected: int) -> None:
        """The file keeps its inode and loses its tail."""
        before = state(model)
        with truncate(model, size):
            assert model.read_bytes() == ORIGINAL[:expected]
            assert state(model).inode == before.inode
        assert state(model) == before

    def test_cannot_grow(self, model: pathlib.Path) -> None:
        """Truncating to the current size or more is refused."""
        with pytest.raises(ValueError, match="cannot truncate"):
            truncate(model, len(ORIGINAL)).apply()
        assert model.read_bytes() == ORIGINAL


class TestAppend:
    def test_appends_given_bytes(self, model: pathlib.Path) -> None:
        """The original stays a prefix and the given bytes follow it."""
        with append(model, b"tail"):
            assert model.read_bytes() == ORIGINAL + b"tail"
        assert model.read_bytes() == ORIGINAL

    def test_refuses_nothing(self, model: pathlib.Path) -> None:
        """Appending no bytes would not corrupt anything, so it is refused."""
        with pytest.raises(ValueError):
            append(model, b"")


class TestZeroFill:
    def test_zeroes_every_byte(self, model: pathlib.Path) -> None:
        """Same size, every byte zero, same inode."""
        before = state(model)
        with zero_fill(model):
            assert model.read_bytes() == bytes(len(ORIGINAL))
            assert state(model).inode == before.inode
        assert state(model) == before


class TestReplaceByRename:
    def test_new_inode_same_size_same_mode(self, model: pathlib.Path) -> None:
        """The path gets a new inode with different bytes of the same size and mode."""
        before = state(model)
        names = listing(model.parent)
        with replace_by_rename(model):
            damaged = state(model)
            assert damaged.inode != before.inode
            assert damaged.mode == before.mode
            assert len(damaged.data) == len(ORIGINAL)
            assert damaged.data != ORIGINAL
            assert listing(model.parent) == names
        restored = state(model)
        assert (restored.data, restored.mode, restored.mtime_ns) == (
            ORIGINAL,
            0o640,
            MTIME_NS,
        )
        assert listing(model.parent) == names

    def test_custom_content(self, model: pathlib.Path) -> None:
        """Given data is what the new inode holds."""
        with replace_by_rename(model, b"attacker"):
            assert model.read_bytes() == b"attacker"


class TestSymlinkSwap:
    def test_default_decoy_is_removed(self, model: pathlib.Path) -> None:
        """The path becomes a symlink to a same-size decoy that restore deletes."""
        names = listing(model.parent)
        with symlink_swap(model):
            assert model.is_symlink()
            assert len(model.read_bytes()) == len(ORIGINAL)
            assert model.read_bytes() != ORIGINAL
        assert not model.is_symlink()
        assert model.read_bytes() == ORIGINAL
        assert listing(model.parent) == names

    def test_custom_target_is_left_alone(
        self, model: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """A given target is linked to and never modified or deleted."""
        target = tmp_path / "elsewhere"
        target.write_bytes(b"other")
        with symlink_swap(model, target):
            assert os.readlink(model) == str(target)
            assert model.read_bytes() == b"other"
        assert target.read_bytes() == b"other"
        assert state(model).data == ORIGINAL


class TestDelete:
    def test_missing_then_back(self, model: pathlib.Path) -> None:
        """The file is gone inside the block and back, mode and times included, after."""
        with delete(model):
            assert not model.exists()
        restored = state(model)
        assert (restored.data, restored.mode, restored.mtime_ns) == (ORIGINAL, 0o640, MTIME_NS)


class TestRemovePermissions:
    def test_mode_000_then_restored(self, model: pathlib.Path) -> None:
        """The mode is 000 inside the block and the original after it."""
        with remove_permissions(model):
            assert stat.S_IMODE(os.lstat(model).st_mode) == 0
        assert stat.S_IMODE(os.lstat(model).st_mode) == 0o640

    def test_directory(self, tmp_path: pathlib.Path) -> None:
        """A model directory can be made unreadable too."""
        directory = tmp_path / "models"
        directory.mkdir(mode=0o750)
        with remove_permissions(directory):
            assert stat.S_IMODE(os.lstat(directory).st_mode) == 0
        assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o750

    def test_enforcement_matches_what_reading_does(self, model: pathlib.Path) -> None:
        """permissions_enforced() predicts whether a 000 file can be read (root can)."""
        enforced = permissions_enforced(model.parent)
        assert enforced is not (os.geteuid() == 0)
        with remove_permissions(model):
            if enforced:
                with pytest.raises(PermissionError):
                    model.read_bytes()
            else:
                assert model.read_bytes() == ORIGINAL


class TestRestoreGuarantees:
    @pytest.mark.parametrize("name", ALL)
    def test_restored_exactly_even_when_the_block_raises(
        self, model: pathlib.Path, name: str
    ) -> None:
        """An exception in the block still restores bytes, mode, times and listing."""
        before = state(model)
        names = listing(model.parent)
        with pytest.raises(ZeroDivisionError), make(name)(model):
            _ = 1 / 0
        after = state(model)
        assert (after.data, after.mode, after.mtime_ns) == (ORIGINAL, 0o640, MTIME_NS)
        if name in IN_PLACE or name == "remove_permissions":
            assert after.inode == before.inode
        assert listing(model.parent) == names

    @pytest.mark.parametrize("name", ALL)
    def test_apply_restore_pair(self, model: pathlib.Path, name: str) -> None:
        """apply() and restore() work without with; restore is idempotent."""
        corruption = make(name)(model)
        assert not corruption.applied
        assert corruption.apply() is corruption
        assert corruption.applied
        with pytest.raises(RuntimeError, match="already applied"):
            corruption.apply()
        corruption.restore()
        corruption.restore()
        assert not corruption.applied
        assert state(model).data == ORIGINAL

    @pytest.mark.parametrize("name", sorted(CORRUPTORS))
    def test_read_only_file_is_corrupted_and_restored(
        self, model: pathlib.Path, name: str
    ) -> None:
        """A 0444 model (as deployed) is damaged and restored with its mode intact."""
        model.chmod(0o444)
        with CORRUPTORS[name](model):
            pass
        assert state(model)[:2] == (ORIGINAL, 0o444)

    @pytest.mark.parametrize("name", [*sorted(CORRUPTORS), "remove_permissions"])
    def test_symlink_is_refused(self, model: pathlib.Path, name: str) -> None:
        """A corruptor never follows a symlink to damage what it points to."""
        link = model.with_name("link")
        link.symlink_to(model)
        with pytest.raises(ValueError, match="symlink"):
            make(name)(link).apply()
        assert link.is_symlink()
        assert state(model).data == ORIGINAL

    def test_directory_is_refused_for_content(self, tmp_path: pathlib.Path) -> None:
        """Content corruptors only accept regular files."""
        with pytest.raises(ValueError, match="not a regular file"):
            bit_flip(tmp_path).apply()

    def test_nested_corruptions_unwind(self, model: pathlib.Path) -> None:
        """Stacked corruptions restore in reverse order to the original."""
        before = state(model)
        with truncate(model), bit_flip(model), append(model):
            assert model.read_bytes() != ORIGINAL
        assert state(model) == before

    def test_repr_shows_state(self, model: pathlib.Path) -> None:
        """The repr names the corruptor and whether it is applied."""
        flip = bit_flip(model)
        assert "bit_flip" in repr(flip)
        assert "not applied" in repr(flip)


class TestRegistry:
    @pytest.mark.parametrize("name", sorted(CORRUPTORS))
    def test_every_registered_corruption_breaks_the_digest(
        self, model: pathlib.Path, name: str
    ) -> None:
        """Each registered corruption leaves a file that no longer has its digest."""
        digest = hashlib.sha256(ORIGINAL).hexdigest()
        with CORRUPTORS[name](model, seed=1) as corruption:
            assert corruption.name == name
            if model.exists():
                assert hashlib.sha256(model.read_bytes()).hexdigest() != digest
        assert hashlib.sha256(model.read_bytes()).hexdigest() == digest

    def test_random_corruption_is_reproducible(self, model: pathlib.Path) -> None:
        """The same generator state picks the same sequence of corruptions."""
        rng_a, rng_b = random.Random(9), random.Random(9)
        names_a = [random_corruption(model, rng_a).name for _ in range(30)]
        names_b = [random_corruption(model, rng_b).name for _ in range(30)]
        assert names_a == names_b
        assert len(set(names_a)) >= 4
        assert set(names_a) <= set(CORRUPTORS)


class TestRewriteWhileReading:
    def test_readers_see_many_versions_then_the_original(self, model: pathlib.Path) -> None:
        """Concurrent reads meet changing content; exit joins the thread and restores."""
        before = state(model)
        seen: set[bytes] = set()
        with rewrite_while_reading(model, seed=2) as rewriter:
            assert rewriter.wait_for_cycles(1)
            for _ in range(5000):
                seen.add(model.read_bytes())
                if len(seen) >= 3:
                    break
            assert rewriter.cycles >= 1
        assert len(seen) >= 3
        assert state(model) == before
        assert not [t for t in threading.enumerate() if t.name.startswith("clarity-chaos-rewrite")]

    def test_sequence_is_reproducible(self, model: pathlib.Path) -> None:
        """A seed fixes the sequence of changes; another seed gives another."""
        histories = []
        for seed in (4, 4, 5):
            with rewrite_while_reading(model, seed=seed, max_cycles=25, pause=0) as rewriter:
                assert rewriter.wait_for_cycles(25)
                histories.append(list(rewriter.history))
            assert model.read_bytes() == ORIGINAL
        assert histories[0] == histories[1]
        assert histories[0] != histories[2]
        assert set(histories[0]) <= set(rewrite_while_reading.OPERATIONS)

    def test_max_cycles_stops_changes(self, model: pathlib.Path) -> None:
        """After max_cycles the thread makes no further change."""
        with rewrite_while_reading(model, max_cycles=3, pause=0) as rewriter:
            assert rewriter.wait_for_cycles(3)
            assert not rewriter.wait_for_cycles(4, timeout=0.05)
            assert rewriter.cycles == 3
