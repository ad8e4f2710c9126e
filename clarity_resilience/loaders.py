"""Loaders: turn verified bytes into a model.

A loader is any callable that takes the verified bytes (a bytes-like object) and
returns a model; pass one to :func:`~clarity_resilience.load_verified` or
``ModelGuard(loader=...)``. The loaders here import their library on first use, so
importing ``clarity_resilience`` imports none of numpy, safetensors, onnxruntime,
torch or joblib; a missing library raises :class:`ModelLoadError` naming the extra to
install (``pip install 'clarity-resilience[safetensors]'``).

Formats that can execute code while loading (pickle, joblib) are never chosen
automatically: :func:`auto` refuses them, and only :func:`unsafe_pickle` and
:func:`unsafe_joblib`, passed explicitly, load them. A matching SHA-256 proves the
bytes are the ones that were published, not that the publisher is harmless.
"""

from __future__ import annotations

import importlib
import io
import struct
import zipfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from ._reasons import Reason
from .exceptions import ModelLoadError

if TYPE_CHECKING:
    import onnxruntime as ort
    from numpy.typing import NDArray

__all__ = [
    "auto",
    "detect",
    "numpy",
    "onnx",
    "safetensors",
    "safetensors_torch",
    "torch",
    "unsafe_joblib",
    "unsafe_pickle",
]

#: What every loader accepts: the verified bytes, or a view of them.
BytesLike: TypeAlias = bytes | bytearray | memoryview

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
# ModelProto fields (onnx.proto3) and their protobuf wire types: 0 varint, 2 length-delimited.
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_ONNX_IR_VERSION, _ONNX_GRAPH = 1, 7


def _require(module: str, extra: str) -> Any:
    """Import an optional library, or explain which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModelLoadError(
            f"this loader needs {module.partition('.')[0]}, which is not installed; "
            f"install it with: pip install 'clarity-resilience[{extra}]'"
        ) from e


def _as_bytes(data: BytesLike) -> bytes:
    # safetensors and onnxruntime accept only bytes; copy only when given something else.
    return data if isinstance(data, bytes) else bytes(data)


def safetensors(data: BytesLike) -> dict[str, NDArray[Any]]:
    """Load a safetensors file into numpy arrays (``safetensors.numpy.load``).

    Requires the ``safetensors`` extra.
    """
    backend = _require("safetensors.numpy", "safetensors")
    tensors: dict[str, NDArray[Any]] = backend.load(_as_bytes(data))
    return tensors


def safetensors_torch(data: BytesLike) -> dict[str, Any]:
    """Load a safetensors file into CPU ``torch.Tensor`` objects (``safetensors.torch.load``).

    Requires the ``torch`` and ``safetensors`` extras.
    """
    _require("torch", "torch")
    backend = _require("safetensors.torch", "safetensors")
    tensors: dict[str, Any] = backend.load(_as_bytes(data))
    return tensors


def numpy(data: BytesLike) -> NDArray[Any] | dict[str, NDArray[Any]]:
    """Load a ``.npy`` array, or every array of an ``.npz`` archive as a dict.

    Pickled data is never loaded (``allow_pickle=False``): an object array is refused.
    Requires the ``numpy`` extra.

    Raises:
        ModelLoadError: With ``reason=unsafe_format`` for an object array or an
            archive member that is not a ``.npy`` array.
    """
    np = _require("numpy", "numpy")
    if bytes(data[:4]) == _ZIP_MAGIC:
        arrays: dict[str, NDArray[Any]] = {}
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise ModelLoadError(
                        f"npz member {info.filename!r} is not a .npy array; refused",
                        reason=Reason.UNSAFE_FORMAT,
                    )
                with archive.open(info) as member:
                    arrays[info.filename.removesuffix(".npy")] = _read_npy(np, member)
        return arrays
    return _read_npy(np, io.BytesIO(data))


def _read_npy(np: Any, stream: Any) -> NDArray[Any]:
    fmt = np.lib.format
    version = fmt.read_magic(stream)
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    _shape, _fortran_order, dtype = read_header(stream)
    if dtype.hasobject:
        raise ModelLoadError(
            f"numpy object arrays ({dtype}) need pickle to load; refused",
            reason=Reason.UNSAFE_FORMAT,
        )
    stream.seek(0)
    array: NDArray[Any] = fmt.read_array(stream, allow_pickle=False)
    return array


def onnx(data: BytesLike) -> ort.InferenceSession:
    """Create an ``onnxruntime.InferenceSession`` (CPU) from ONNX model bytes.

    Requires the ``onnx`` extra. Models with external data files are not supported:
    their tensors would come from files that were never verified.
    """
    runtime = _require("onnxruntime", "onnx")
    return runtime.InferenceSession(_as_bytes(data), providers=["CPUExecutionProvider"])


def torch(data: BytesLike) -> Any:
    """Load a ``torch.save`` file with ``weights_only=True`` onto the CPU.

    Only tensors and plain containers are accepted; there is no fallback to
    ``weights_only=False`` (which would run arbitrary pickled code). Requires the
    ``torch`` extra (torch >= 2.4).
    """
    backend = _require("torch", "torch")
    return backend.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def unsafe_pickle(data: BytesLike) -> Any:
    """Unpickle the bytes. UNSAFE: unpickling runs arbitrary code chosen by the publisher.

    A matching digest proves only that these are the published bytes. Use this only
    for artifacts your own pipeline produced, and prefer safetensors, numpy or ONNX.
    """
    import pickle

    return pickle.loads(data)  # noqa: S301 - the caller opted in by name


def unsafe_joblib(data: BytesLike) -> Any:
    """Load a ``joblib.dump`` file. UNSAFE: joblib unpickles, running arbitrary code.

    As :func:`unsafe_pickle`: use only for artifacts your own pipeline produced.
    Requires the ``joblib`` extra.
    """
    backend = _require("joblib", "joblib")
    return backend.load(io.BytesIO(data))


def detect(data: BytesLike) -> str:
    """Name the format of model bytes from their leading bytes (never from a file name).

    Returns:
        One of ``"safetensors"``, ``"numpy"``, ``"npz"``, ``"onnx"``, ``"torch"``,
        ``"pickle"`` or ``"unknown"``.
    """
    view = memoryview(data).cast("B")
    head = bytes(view[:8])
    if head.startswith(_NPY_MAGIC):
        return "numpy"
    if head.startswith(_ZIP_MAGIC):
        return _zip_format(data)
    if len(head) == 8 and bytes(view[8:9]) == b"{":
        (header_length,) = struct.unpack("<Q", head)
        if 0 < header_length <= len(view) - 8:
            return "safetensors"
    if head[:1] == bytes([_PICKLE_PROTO]):
        return "pickle"
    if _is_onnx_model(view):
        return "onnx"
    return "unknown"


def _zip_format(data: BytesLike) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, EOFError):
        return "unknown"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return "torch"
    return "unknown"


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if pos >= len(view):
            raise ValueError("truncated varint")
        byte = view[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("varint too long")


def _is_onnx_model(view: memoryview) -> bool:
    """Walk the top-level protobuf fields; True if they form a plausible ONNX ModelProto.

    Every field must have the wire type ONNX gives it and the fields must cover the
    buffer exactly; ``ir_version`` and ``graph`` must be present. Cheap (it skips
    over the graph) and needs neither onnx nor onnxruntime.
    """
    seen: set[int] = set()
    pos = 0
    try:
        while pos < len(view):
            key, pos = _varint(view, pos)
            field, wire_type = key >> 3, key & 7
            if _ONNX_FIELDS.get(field) != wire_type:
                return False
            value, pos = _varint(view, pos)
            if field == _ONNX_IR_VERSION and not 1 <= value <= 255:
                return False
            if wire_type == 2:
                pos += value
            seen.add(field)
    except ValueError:
        return False
    return pos == len(view) and {_ONNX_IR_VERSION, _ONNX_GRAPH} <= seen


_BY_FORMAT: dict[str, Callable[[BytesLike], Any]] = {
    "safetensors": safetensors,
    "numpy": numpy,
    "npz": numpy,
    "onnx": onnx,
    "torch": torch,
}


def auto(data: BytesLike) -> Any:
    """Load model bytes with the loader their leading bytes call for (see :func:`detect`).

    safetensors -> :func:`safetensors`, ``.npy``/``.npz`` -> :func:`numpy`, ONNX ->
    :func:`onnx`, a ``torch.save`` zip archive -> :func:`torch` (``weights_only``).

    Raises:
        ModelLoadError: With ``reason=unsafe_format`` for pickle/joblib data (pass
            ``loader=loaders.unsafe_pickle`` or ``loaders.unsafe_joblib`` explicitly if
            you trust the publisher) and for any unrecognised format.
    """
    kind = detect(data)
    loader = _BY_FORMAT.get(kind)
    if loader is not None:
        return loader(data)
    if kind == "pickle":
        raise ModelLoadError(
            "refusing to load pickle data automatically: unpickling runs arbitrary code; "
            "if you trust the publisher, pass loader=loaders.unsafe_pickle "
            "(or loaders.unsafe_joblib) explicitly",
            reason=Reason.UNSAFE_FORMAT,
        )
    raise ModelLoadError(
        "unrecognised model format (not safetensors, numpy, ONNX or a torch archive); "
        "pass an explicit loader",
        reason=Reason.UNSAFE_FORMAT,
    )
