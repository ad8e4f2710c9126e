"""The machinery behind every corruptor: snapshot a file, damage it, put it back."""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat
import tempfile
import types
from typing import Self

__all__ = ["Corruption", "Snapshot", "StrPath", "atomic_write", "inverted", "open_for_write"]

StrPath = str | os.PathLike[str]

# Maps every byte to its complement: a same-size replacement that differs in every byte.
INVERT = bytes(255 - value for value in range(256))


def inverted(data: bytes) -> bytes:
    """Return ``data`` with every bit inverted (one ``0xff`` byte for empty data)."""
    return data.translate(INVERT) if data else b"\xff"


def open_for_write(path: pathlib.Path) -> int:
    """Open a regular file for in-place writing even if its mode denies writes.

    The mode is checked only at open time, so granting the owner write access for the
    ``open`` call and putting the mode straight back leaves the descriptor writable.
    """
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    if mode & stat.S_IWUSR:
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    os.chmod(path, mode | stat.S_IWUSR)
    try:
        return os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    finally:
        os.chmod(path, mode)


def atomic_write(path: pathlib.Path, data: bytes, mode: int, suffix: str = ".chaos") -> None:
    """Replace ``path`` with a new inode holding ``data``, via a sibling temp file."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            os.fchmod(file.fileno(), mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


class Snapshot:
    """What is needed to put a file back: bytes, mode, times and inode.

    With ``content=False`` only the mode is kept, which also works for directories.
    """

    def __init__(self, path: pathlib.Path, *, content: bool = True) -> None:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            raise ValueError(f"refusing to corrupt through the symlink {path}")
        if content and not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        self.path = path
        self.content = content
        self.data = b""
        if content:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as file:
                opened = os.fstat(file.fileno())
                if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                    raise RuntimeError(f"{path} was replaced while taking its snapshot")
                self.data = file.read()
        self.mode = stat.S_IMODE(info.st_mode)
        self.inode = (info.st_dev, info.st_ino)
        self.times_ns = (info.st_atime_ns, info.st_mtime_ns)

    def restore(self) -> None:
        if not self.content:
            os.chmod(self.path, self.mode)
            return
        try:
            info: os.stat_result | None = os.lstat(self.path)
        except FileNotFoundError:
            info = None
        if (
            info is not None
            and stat.S_ISREG(info.st_mode)
            and (info.st_dev, info.st_ino) == self.inode
        ):
            # Write back into the same inode: descriptors opened by the code under test
            # see the original bytes again, and the inode number stays what it was.
            fd = open_for_write(self.path)
            try:
                os.pwrite(fd, self.data, 0)
                os.ftruncate(fd, len(self.data))
            finally:
                os.close(fd)
        else:
            atomic_write(self.path, self.data, self.mode)
        os.chmod(self.path, self.mode)
        os.utime(self.path, ns=self.times_ns)


class Corruption:
    """A reversible change to one file: a context manager and an apply/restore pair.

    Attributes:
        path: The file this corruption damages.
    """

    def __init__(self, path: StrPath) -> None:
        self.path = pathlib.Path(path)
        self._snapshot: Snapshot | None = None

    @property
    def name(self) -> str:
        """Return the corruptor's name, as used in :data:`CORRUPTORS`."""
        return type(self).__name__

    @property
    def applied(self) -> bool:
        """Return whether the damage is in place (applied and not yet restored)."""
        return self._snapshot is not None

    def apply(self) -> Self:
        """Damage the file, first recording what is needed to restore it.

        Returns:
            This corruption, so ``c = bit_flip(p).apply()`` reads naturally.

        Raises:
            RuntimeError: The corruption is already applied.
            ValueError: The path is a symlink or not a regular file, or this
                corruptor cannot change this file (for example, it is empty).
            OSError: The file cannot be read or written.
        """
        if self._snapshot is not None:
            raise RuntimeError(f"{self.name} is already applied to {self.path}")
        self._snapshot = self._take_snapshot()
        try:
            self._corrupt(self._snapshot)
        except BaseException:
            self.restore()
            raise
        return self

    def restore(self) -> None:
        """Put back the original file and remove anything the corruption created.

        Calling it again, or without :meth:`apply`, does nothing.
        """
        snapshot = self._snapshot
        if snapshot is None:
            return
        try:
            snapshot.restore()
        finally:
            self._cleanup()
        self._snapshot = None

    def _take_snapshot(self) -> Snapshot:
        return Snapshot(self.path)

    def _corrupt(self, original: Snapshot) -> None:
        raise NotImplementedError

    def _cleanup(self) -> None:
        """Remove what :meth:`_corrupt` created besides the damage itself."""

    def _write_in_place(self, data: bytes, offset: int = 0, *, size: int | None = None) -> None:
        fd = open_for_write(self.path)
        try:
            if data:
                os.pwrite(fd, data, offset)
            if size is not None:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        return self.apply()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "applied" if self.applied else "not applied"
        return f"<{self.name} {str(self.path)!r} ({state})>"
