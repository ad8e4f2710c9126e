"""Read ``.npy`` arrays and ``.npz`` archives as read-only views of the verified buffer."""

from __future__ import annotations

import io
import math
import struct
import zipfile
import zlib
from typing import TYPE_CHECKING, Any

from ._reasons import Reason
from .exceptions import ModelLoadError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer
    from numpy.typing import NDArray

__all__ = ["ViewReader", "freeze", "read_npy", "read_npz"]

# numpy refuses .npy headers over 10,000 bytes by default; magic, version and length
# take at most 12 bytes, so the header never needs more than this prefix of the file.
_NPY_PREFIX = 12 + 10_000
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"
_ENCRYPTED = 0x1


class ViewReader(io.RawIOBase):
    """A seekable read-only file over a buffer, without the copy ``io.BytesIO`` makes."""

    def __init__(self, data: ReadableBuffer) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}
        position = base[whence] + offset
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def readinto(self, buffer: WriteableBuffer) -> int:
        target = memoryview(buffer).cast("B")
        chunk = self._view[self._position : self._position + len(target)]
        target[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)


def freeze(array: NDArray[Any], copy: bool) -> NDArray[Any]:
    """Return a writable copy of ``array``, or ``array`` itself made read-only."""
    if copy:
        return array.copy()
    array.flags.writeable = False
    return array


def read_npy(np: Any, data: ReadableBuffer, *, copy: bool = False) -> NDArray[Any]:
    """Return the array of a ``.npy`` file as a read-only view of ``data`` (or a copy).

    Raises:
        ModelLoadError: For an object array (``unsafe_format``) or a malformed file.
    """
    view = memoryview(data).cast("B")
    fmt = np.lib.format
    stream = io.BytesIO(view[:_NPY_PREFIX])
    try:
        version = fmt.read_magic(stream)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
    except Exception as e:  # numpy's header parser raises ValueError, TokenError, ...
        raise ModelLoadError(f"not a valid .npy file: {type(e).__name__}: {e}") from e
    if dtype.hasobject:
        raise ModelLoadError(
            f"numpy object arrays ({dtype}) need pickle to load; refused",
            reason=Reason.UNSAFE_FORMAT,
        )
    offset = stream.tell()
    count = math.prod(shape)
    if count * dtype.itemsize > len(view) - offset:
        raise ModelLoadError(
            f".npy data is shorter than its header says ({count} x {dtype.itemsize} bytes)"
        )
    if dtype.itemsize == 0:  # nothing to view (e.g. "V0"); numpy.load builds it the same way
        empty: NDArray[Any] = np.zeros(shape, dtype=dtype, order="F" if fortran_order else "C")
        return freeze(empty, copy)
    try:
        flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        # A Fortran-order file stores the transpose's C order.
        array = flat.reshape(shape[::-1]).T if fortran_order else flat.reshape(shape)
    except ValueError as e:
        raise ModelLoadError(f"cannot view the .npy data as {dtype} {shape}: {e}") from None
    return freeze(array, copy)


def _stored_member(view: memoryview, info: zipfile.ZipInfo) -> memoryview | None:
    """Return the bytes of an uncompressed, unencrypted member in place, CRC-checked."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & _ENCRYPTED:
        return None
    local = view[info.header_offset : info.header_offset + _LOCAL_HEADER.size]
    if len(local) != _LOCAL_HEADER.size:
        raise ModelLoadError(f"npz member {info.filename!r} lies outside the archive")
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(local)
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    member = view[start : start + info.file_size]
    if signature != _LOCAL_SIGNATURE or len(member) != info.file_size:
        raise ModelLoadError(f"npz member {info.filename!r} is malformed")
    if zlib.crc32(member) != info.CRC:
        raise ModelLoadError(f"npz member {info.filename!r} fails its CRC-32 check")
    return member


def read_npz(np: Any, data: ReadableBuffer, *, copy: bool = False) -> dict[str, NDArray[Any]]:
    """Return every array of an ``.npz`` archive; stored members are views of ``data``.

    Compressed members have to be inflated, so their arrays view a private copy.

    Raises:
        ModelLoadError: ``unsafe_format`` for a member that is not a ``.npy`` array or
            holds objects; ``load_error`` for a malformed archive.
    """
    view = memoryview(data).cast("B")
    arrays: dict[str, NDArray[Any]] = {}
    try:
        with zipfile.ZipFile(ViewReader(view)) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise ModelLoadError(
                        f"npz member {info.filename!r} is not a .npy array; refused",
                        reason=Reason.UNSAFE_FORMAT,
                    )
                member = _stored_member(view, info)
                content = archive.read(info) if member is None else member
                arrays[info.filename.removesuffix(".npy")] = read_npy(np, content, copy=copy)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError,
            RuntimeError, EOFError, ValueError) as e:  # fmt: skip
        # RuntimeError: an encrypted member; ValueError: offsets before the start.
        raise ModelLoadError(f"not a valid .npz archive: {type(e).__name__}: {e}") from e
    return arrays
