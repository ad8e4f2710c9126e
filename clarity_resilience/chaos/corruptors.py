"""Reversible file corruptions: change a model file, then put back exactly what was there.

Every corruptor is a context manager that applies on entry and restores on exit, even
when the block raises; the same object works as a plain pair of calls::

    with bit_flip(model_path, seed=7) as flip:
        ...  # the file differs from the original in bit ``flip.bit`` of ``flip.offset``

    damage = truncate(model_path).apply()
    try:
        ...
    finally:
        damage.restore()

Restoring puts back the original bytes, permission bits and access/modification times.
Corruptors that write in place (``bit_flip``, ``truncate``, ``append``, ``zero_fill``,
``rewrite_while_reading``) keep the inode; those that replace the directory entry
(``replace_by_rename``, ``symlink_swap``, ``delete``) restore the bytes into a new inode
by an atomic rename, so a concurrent reader sees either the damage or the original. The
original bytes are held in memory while a corruption is applied: use small model files.

Corruptors refuse to follow a symlink (the damage would land outside the path named),
and randomness comes only from the ``seed``, so every run damages the same bytes.

Permission bits do not stop root (or a process with ``CAP_DAC_OVERRIDE``):
:class:`remove_permissions` still chmods the file to ``000``, but such a process reads it
anyway. :func:`permissions_enforced` tells a test whether denial can be expected.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import stat
import tempfile
import threading
import types
from collections.abc import Mapping
from typing import Protocol

from ._corruption import (
    Corruption,
    Snapshot,
    StrPath,
    atomic_write,
    inverted,
    open_for_write,
)

__all__ = [
    "CORRUPTORS",
    "Corruption",
    "CorruptorFactory",
    "append",
    "bit_flip",
    "delete",
    "permissions_enforced",
    "random_corruption",
    "remove_permissions",
    "replace_by_rename",
    "rewrite_while_reading",
    "symlink_swap",
    "truncate",
    "zero_fill",
]


class bit_flip(Corruption):
    """Flip one bit in place: same size, same inode, a different SHA-256.

    Args:
        path: The file to damage.
        offset: The byte to change; by default one chosen by ``seed``.
        seed: Chooses the offset (unless given) and the bit.

    Attributes:
        offset: The byte that was changed (set by :meth:`apply`).
        bit: The bit (0-7) that was flipped (set by :meth:`apply`).
    """

    def __init__(self, path: StrPath, *, offset: int | None = None, seed: int = 0) -> None:
        super().__init__(path)
        if offset is not None and offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self._rng = random.Random(seed)  # noqa: S311 - reproducible damage, not secrecy
        self._requested_offset = offset
        self.offset = -1
        self.bit = -1

    def _corrupt(self, original: Snapshot) -> None:
        size = len(original.data)
        if size == 0:
            raise ValueError(f"cannot flip a bit in the empty file {self.path}")
        offset = self._rng.randrange(size)
        if self._requested_offset is not None:
            offset = self._requested_offset
        if offset >= size:
            raise ValueError(f"offset {offset} is past the end of {self.path} ({size} bytes)")
        self.offset, self.bit = offset, self._rng.randrange(8)
        self._write_in_place(bytes([original.data[offset] ^ (1 << self.bit)]), offset)


class truncate(Corruption):
    """Cut the file short in place (by default to half its size).

    Args:
        path: The file to damage.
        size: The new size in bytes, smaller than the current size.
    """

    def __init__(self, path: StrPath, size: int | None = None) -> None:
        super().__init__(path)
        if size is not None and size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = size

    def _corrupt(self, original: Snapshot) -> None:
        current = len(original.data)
        size = current // 2 if self.size is None else self.size
        if size >= current:
            raise ValueError(f"cannot truncate {self.path} ({current} bytes) to {size} bytes")
        self._write_in_place(b"", size=size)


#: What :class:`append` adds when no data is given.
APPENDED = b"\nclarity-resilience chaos: appended bytes\n"


class append(Corruption):
    """Grow the file in place by appending bytes.

    Args:
        path: The file to damage.
        data: The bytes to append (not empty).
    """

    def __init__(self, path: StrPath, data: bytes = APPENDED) -> None:
        super().__init__(path)
        if not data:
            raise ValueError("append needs at least one byte")
        self.data = bytes(data)

    def _corrupt(self, original: Snapshot) -> None:
        self._write_in_place(self.data, len(original.data))


class zero_fill(Corruption):
    """Overwrite every byte with zero in place: same size, same inode."""

    def _corrupt(self, original: Snapshot) -> None:
        if not original.data:
            raise ValueError(f"cannot zero-fill the empty file {self.path}")
        self._write_in_place(bytes(len(original.data)))


class replace_by_rename(Corruption):
    """Atomically replace the file with a new inode, as a deployment tool would.

    The new file is written next to the original and renamed over it with
    :func:`os.replace`, keeping the original permission bits.

    Args:
        path: The file to replace.
        data: The new content; by default the original with every bit inverted
            (same size, different digest).
    """

    def __init__(self, path: StrPath, data: bytes | None = None) -> None:
        super().__init__(path)
        self.data = data

    def _corrupt(self, original: Snapshot) -> None:
        data = inverted(original.data) if self.data is None else self.data
        atomic_write(self.path, data, original.mode)


class symlink_swap(Corruption):
    """Replace the file with a symlink, atomically.

    Args:
        path: The file to replace.
        target: Where the symlink points. By default a decoy file is created next to
            the original (the original with every bit inverted, so same size) and
            removed again on restore.
    """

    def __init__(self, path: StrPath, target: StrPath | None = None) -> None:
        super().__init__(path)
        self.target = None if target is None else pathlib.Path(target)
        self._decoy: pathlib.Path | None = None

    def _corrupt(self, original: Snapshot) -> None:
        target = self.target
        if target is None:
            fd, decoy = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".decoy"
            )
            self._decoy = pathlib.Path(decoy)
            with os.fdopen(fd, "wb") as file:
                file.write(inverted(original.data))
            # Relative, so the link keeps working if the directory is moved.
            target = pathlib.Path(self._decoy.name)
        link = self.path.with_name(f".{self.path.name}.{os.urandom(6).hex()}.link")
        os.symlink(target, link)
        try:
            os.replace(link, self.path)
        except BaseException:
            os.unlink(link)
            raise

    def _cleanup(self) -> None:
        if self._decoy is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._decoy)
            self._decoy = None


class delete(Corruption):
    """Remove the file; restoring writes the original bytes back under the same name."""

    def _corrupt(self, original: Snapshot) -> None:
        os.unlink(self.path)


class remove_permissions(Corruption):
    """Chmod the file (or directory) to ``000``; restoring puts the mode back.

    Root ignores permission bits, so under root the file stays readable: check
    :func:`permissions_enforced` before expecting a denial.
    """

    def _take_snapshot(self) -> Snapshot:
        return Snapshot(self.path, content=False)

    def _corrupt(self, original: Snapshot) -> None:
        os.chmod(self.path, 0)


class rewrite_while_reading(Corruption):
    """Keep changing the file from a background thread until the block exits.

    Each cycle picks, with ``seed``, one in-place change (overwrite with random bytes
    of the original size, flip a byte, truncate to a random size, grow, or put the
    original back), so code reading the file concurrently meets torn, short, long and
    intact versions. The thread writes through one descriptor (the inode stays the
    same); exiting stops and joins it, then restores the file.

    Args:
        path: The file to keep changing.
        seed: Chooses the sequence of changes and their random bytes.
        pause: Seconds between changes, so the writer does not starve the readers.
        max_cycles: Stop changing after this many cycles (the last state stays until
            exit); by default keep going until the block exits.

    Attributes:
        history: The changes made, in order (the first 1024).
    """

    OPERATIONS = ("overwrite", "flip", "truncate", "grow", "original")

    def __init__(
        self,
        path: StrPath,
        *,
        seed: int = 0,
        pause: float = 0.0005,
        max_cycles: int | None = None,
    ) -> None:
        super().__init__(path)
        self._rng = random.Random(seed)  # noqa: S311 - reproducible damage, not secrecy
        self.pause = pause
        self.max_cycles = max_cycles
        self.history: list[str] = []
        self._cycles = 0
        self._progress = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def cycles(self) -> int:
        """Return how many changes the thread has made so far."""
        with self._progress:
            return self._cycles

    def wait_for_cycles(self, count: int, timeout: float = 5.0) -> bool:
        """Block until the thread has made ``count`` changes.

        Args:
            count: The number of changes to wait for.
            timeout: The most seconds to wait.

        Returns:
            Whether the count was reached (false on timeout or if the thread failed).
        """
        with self._progress:
            return (
                self._progress.wait_for(
                    lambda: self._cycles >= count or self._error is not None, timeout
                )
                and self._error is None
            )

    def _corrupt(self, original: Snapshot) -> None:
        fd = open_for_write(self.path)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run,
            args=(fd, original.data),
            name=f"clarity-chaos-rewrite-{self.path.name}",
            daemon=True,
        )
        try:
            self._thread.start()
        except BaseException:
            os.close(fd)
            self._thread = None
            raise

    def _run(self, fd: int, original: bytes) -> None:
        try:
            while not self._stop.is_set():
                if self.max_cycles is not None and self._cycles >= self.max_cycles:
                    self._stop.wait()
                    break
                operation = self._rng.choice(self.OPERATIONS)
                self._change(fd, operation, original)
                with self._progress:
                    self._cycles += 1
                    if len(self.history) < 1024:
                        self.history.append(operation)
                    self._progress.notify_all()
                self._stop.wait(self.pause)
        except BaseException as error:  # noqa: BLE001 - handed to the caller by restore()
            with self._progress:
                self._error = error
                self._progress.notify_all()
        finally:
            os.close(fd)

    def _change(self, fd: int, operation: str, original: bytes) -> None:
        size = len(original)
        data = original
        if operation == "overwrite":
            data = self._rng.randbytes(size)
        elif operation == "flip" and size:
            changed = bytearray(original)
            changed[self._rng.randrange(size)] ^= 1 << self._rng.randrange(8)
            data = bytes(changed)
        elif operation == "truncate":
            data = original[: self._rng.randrange(size)] if size else b""
        elif operation == "grow":
            data = original + self._rng.randbytes(self._rng.randint(1, 64))
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def restore(self) -> None:
        """Stop and join the thread, then put back the original file.

        Raises:
            RuntimeError: The thread failed while changing the file.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        super().restore()
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError(f"rewriting {self.path} failed in the background") from error


def permissions_enforced(directory: StrPath | None = None) -> bool:
    """Return whether permission bits stop this process from reading a file.

    It is false for root and for processes with ``CAP_DAC_OVERRIDE``, which read a
    ``000`` file anyway. The answer comes from a probe file, not from the user id.

    Args:
        directory: Where to create the probe file (default: the temp directory).
    """
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        probe = pathlib.Path(scratch, "probe")
        probe.write_bytes(b"probe")
        probe.chmod(0)
        try:
            with probe.open("rb"):
                return False
        except PermissionError:
            return True
        finally:
            probe.chmod(stat.S_IRUSR | stat.S_IWUSR)


class CorruptorFactory(Protocol):
    """Build a corruption of ``path``; ``seed`` drives any random choice it makes."""

    def __call__(self, path: StrPath, /, *, seed: int = 0) -> Corruption:
        """Return the (not yet applied) corruption of ``path``."""
        ...


def _bit_flip(path: StrPath, /, *, seed: int = 0) -> Corruption:
    return bit_flip(path, seed=seed)


def _unseeded(kind: type[Corruption]) -> CorruptorFactory:
    def factory(path: StrPath, /, *, seed: int = 0) -> Corruption:
        return kind(path)

    return factory


#: Every corruption that makes a regular file fail SHA-256 verification whoever reads
#: it, by name, for ``pytest.mark.parametrize``. ``remove_permissions`` is left out
#: (root reads through it) and so is ``rewrite_while_reading`` (a race, not a state).
CORRUPTORS: Mapping[str, CorruptorFactory] = types.MappingProxyType(
    {
        "append": _unseeded(append),
        "bit_flip": _bit_flip,
        "delete": _unseeded(delete),
        "replace_by_rename": _unseeded(replace_by_rename),
        "symlink_swap": _unseeded(symlink_swap),
        "truncate": _unseeded(truncate),
        "zero_fill": _unseeded(zero_fill),
    }
)


def random_corruption(path: StrPath, rng: random.Random) -> Corruption:
    """Pick a corruption from :data:`CORRUPTORS` with ``rng``; it is not yet applied.

    Args:
        path: The file to damage (a non-empty regular file).
        rng: The source of the choice, so a seeded generator repeats the sequence.

    Returns:
        The corruption; apply it with ``with`` or :meth:`Corruption.apply`.
    """
    name = rng.choice(sorted(CORRUPTORS))
    return CORRUPTORS[name](path, seed=rng.randrange(2**32))
