"""A fresh ``bytes`` object filled in place: the one use of ctypes, contained here.

Some loaders (``onnxruntime``) and the public ``read_verified() -> bytes`` need a real
``bytes``. Reading into a ``bytearray`` and converting would hold the file twice (peak
memory 2x the model). CPython's own ``FileIO.readall`` avoids that by allocating an
uninitialised bytes object (``PyBytes_FromStringAndSize(NULL, n)``) and reading into
its payload before anyone else can see it; this module does the same through ctypes.

It is used only where it is known to be right:

- a version gate: CPython 3.11 to 3.13, whose ``PyBytesObject`` layout (payload at
  ``bytes.__basicsize__ - 1``) is the one checked here;
- an import-time self-test: a small object is allocated and filled, and must then read
  back exactly, keep its trailing NUL, and hash like an ordinary bytes object;
- a safe fallback: anywhere else (another interpreter, another version, a failed
  self-test, no ctypes), :func:`new_buffer` hands out a ``bytearray`` instead and the
  caller copies it into ``bytes`` only if it needs ``bytes`` (one extra copy, never
  wrong bytes).

The memory is owned by the returned object; whoever fills it through the view must
keep a reference to that object for as long as it writes (the writable view below
does not keep it alive on its own).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["IN_PLACE", "new_buffer"]

_SUPPORTED = ((3, 11), (3, 12), (3, 13))
# Objects this small may be shared singletons in CPython: never fill those in place.
_MIN_IN_PLACE = 2


def _load_allocator() -> Any:
    """Return ctypes' ``PyBytes_FromStringAndSize`` if this interpreter passes the gate."""
    if sys.implementation.name != "cpython" or sys.version_info[:2] not in _SUPPORTED:
        return None
    try:
        import ctypes

        alloc = ctypes.pythonapi.PyBytes_FromStringAndSize
        alloc.restype = ctypes.py_object
        alloc.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
    except (ImportError, AttributeError, OSError):  # pragma: no cover - no ctypes here
        return None
    return alloc


_ALLOC = _load_allocator()


def _fill_view(data: bytes, size: int) -> memoryview:
    import ctypes

    offset = bytes.__basicsize__ - 1  # ob_sval: the payload after the object header
    return memoryview((ctypes.c_char * size).from_address(id(data) + offset)).cast("B")


def _self_test() -> bool:
    """Fill a small object in place and check that it reads back as ordinary bytes."""
    if _ALLOC is None:
        return False
    pattern = bytes(range(7, 7 + 61))
    try:
        data: bytes = _ALLOC(None, len(pattern))
        view = _fill_view(data, len(pattern))
        view[:] = pattern
        view.release()
        # The terminating NUL CPython keeps after the payload must still be there.
        nul = _fill_view(data, len(pattern) + 1)
        terminated = nul[len(pattern)] == 0
        nul.release()
    except Exception:  # noqa: BLE001 - any surprise means: do not use it  # pragma: no cover
        return False
    return (
        terminated
        and type(data) is bytes
        and len(data) == len(pattern)
        and data == pattern
        and hash(data) == hash(bytes(pattern))
        and sys.getsizeof(data) == sys.getsizeof(pattern)
    )


#: Whether :func:`new_buffer` fills real ``bytes`` in place on this interpreter.
IN_PLACE: bool = _self_test()


def new_buffer(size: int) -> tuple[bytes | bytearray, memoryview]:
    """Return a new object of ``size`` bytes to read into, and a writable view of it.

    The object is an uninitialised ``bytes`` where :data:`IN_PLACE` holds (and ``size``
    is at least 2), else a zeroed ``bytearray``. Keep a reference to it while writing.

    Raises:
        MemoryError: ``size`` bytes cannot be allocated.
    """
    if not IN_PLACE or size < _MIN_IN_PLACE:
        owner = bytearray(size)
        return owner, memoryview(owner)
    data: bytes = _ALLOC(None, size)
    return data, _fill_view(data, size)
