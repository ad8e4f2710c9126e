"""Loaders: turn verified bytes into a model.

A loader is any callable that takes the verified bytes (a bytes-like object) and
returns a model; pass one to :func:`~clarity_resilience.load_verified` or
``ModelGuard(loader=...)``. The loaders here import their library on first use, so
importing ``clarity_resilience`` imports none of numpy, ml_dtypes, onnxruntime, torch
or joblib (and the safetensors loaders parse the format themselves, without the
safetensors package); a missing library raises :class:`ModelLoadError` naming the extra to
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
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, overload

from . import _npy, _safetensors, _sharded
from ._reasons import Reason
from .exceptions import ModelLoadError

if TYPE_CHECKING:
    import onnxruntime as ort
    from numpy.typing import NDArray

__all__ = [
    "ShardIndexError",
    "auto",
    "detect",
    "numpy",
    "onnx",
    "safetensors",
    "safetensors_sharded",
    "safetensors_sharded_torch",
    "safetensors_torch",
    "torch",
    "unsafe_joblib",
    "unsafe_pickle",
]

#: What every loader accepts: the verified bytes, or a view of them.
BytesLike: TypeAlias = bytes | bytearray | memoryview

#: What a multi-file loader accepts: relative path -> verified bytes.
Files: TypeAlias = Mapping[str, BytesLike]

ShardIndexError = _sharded.ShardIndexError

_T = TypeVar("_T")

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
    # onnxruntime accepts only bytes; copy only when given something else.
    return data if isinstance(data, bytes) else bytes(data)


def _bytes_view(data: BytesLike) -> memoryview:
    """Return a flat byte view of any contiguous buffer (no copy)."""
    try:
        return memoryview(data).cast("B")
    except (TypeError, ValueError) as e:  # not a buffer, or not contiguous
        raise ModelLoadError(f"a loader needs a contiguous bytes-like buffer: {e}") from None


def _header(view: memoryview) -> _safetensors.Header:
    try:
        return _safetensors.parse(view)
    except _safetensors.HeaderError as e:
        raise ModelLoadError(f"not a valid safetensors file: {e}") from e


def _copying(load: Callable[..., _T], name: str) -> Callable[[BytesLike], _T]:
    """Return ``load`` with ``copy=True`` bound, named for error messages."""

    def loader(data: BytesLike) -> _T:
        return load(data, copy=True)

    loader.__name__ = loader.__qualname__ = f"{name}(copy=True)"
    return loader


@overload
def safetensors(data: BytesLike, *, copy: bool = False) -> dict[str, NDArray[Any]]: ...
@overload
def safetensors(
    data: None = None, *, copy: bool
) -> Callable[[BytesLike], dict[str, NDArray[Any]]]: ...
def safetensors(
    data: BytesLike | None = None, *, copy: bool = False
) -> dict[str, NDArray[Any]] | Callable[[BytesLike], dict[str, NDArray[Any]]]:
    """Load a safetensors file into read-only numpy arrays that view the verified buffer.

    The header is validated exactly as strictly as safetensors itself does. Nothing is
    copied: each array views its bytes in ``data`` and keeps ``data`` alive, and writing
    to it raises ``ValueError``. Pass ``copy=True`` for private writable arrays, either
    directly or as ``loader=loaders.safetensors(copy=True)``. BF16 and F8 tensors need
    ``ml_dtypes``; F4/F6 tensors are refused. Requires the ``safetensors`` extra (numpy).

    Raises:
        ModelLoadError: For any file safetensors would refuse, or a dtype numpy lacks.
    """
    if data is None:
        return _copying(safetensors, "safetensors") if copy else safetensors
    np = _require("numpy", "safetensors")
    view = _bytes_view(data)
    buffer = data if isinstance(data, bytes) else view
    arrays: dict[str, NDArray[Any]] = {}
    dtypes: dict[str, Any] = {}
    for name, info in _header(view).tensors.items():
        if info.dtype not in dtypes:
            dtypes[info.dtype] = _safetensors.numpy_dtype(np, info.dtype)
        dtype = dtypes[info.dtype]
        count = (info.end - info.begin) // dtype.itemsize
        try:
            array = np.frombuffer(buffer, dtype=dtype, count=count, offset=info.begin)
            array = array.reshape(info.shape)
        except ValueError as e:  # e.g. a zero-size shape with a dimension numpy cannot hold
            raise ModelLoadError(f"tensor {name!r} cannot be viewed as {info.shape}: {e}") from e
        arrays[name] = _npy.freeze(array, copy)
    return arrays


@overload
def safetensors_torch(data: BytesLike, *, copy: bool = False) -> dict[str, Any]: ...
@overload
def safetensors_torch(
    data: None = None, *, copy: bool
) -> Callable[[BytesLike], dict[str, Any]]: ...
def safetensors_torch(
    data: BytesLike | None = None, *, copy: bool = False
) -> dict[str, Any] | Callable[[BytesLike], dict[str, Any]]:
    """Load a safetensors file into CPU ``torch.Tensor`` objects that view the buffer.

    Validated as :func:`safetensors`. torch has no read-only tensors: an in-place
    operation would write into the verified buffer, so code that mutates weights must
    pass ``copy=True`` (each tensor is then cloned). Requires the ``torch`` extra.

    Raises:
        ModelLoadError: For any file safetensors would refuse, or a dtype this torch lacks.
    """
    if data is None:
        return _copying(safetensors_torch, "safetensors_torch") if copy else safetensors_torch
    torch = _require("torch", "torch")
    view = _bytes_view(data)
    buffer = data if isinstance(data, bytes) else view
    tensors: dict[str, Any] = {}
    with warnings.catch_warnings():
        # frombuffer warns (once per process) that the buffer is not writable; the
        # contract above covers it, and a user's filterwarnings=error must not fail loads.
        warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning)
        for name, info in _header(view).tensors.items():
            dtype = getattr(torch, _safetensors.TORCH_DTYPES.get(info.dtype, "-"), None)
            if dtype is None:
                raise ModelLoadError(f"safetensors dtype {info.dtype} is not supported by torch")
            if info.end == info.begin:  # frombuffer refuses zero-size tensors
                tensor = torch.empty(info.shape, dtype=dtype)
            else:
                count = (info.end - info.begin) // dtype.itemsize
                tensor = torch.frombuffer(buffer, dtype=dtype, count=count, offset=info.begin)
                tensor = tensor.reshape(info.shape)
            tensors[name] = tensor.clone() if copy else tensor
    return tensors


def _copying_files(load: Callable[..., _T], name: str) -> Callable[[Files], _T]:
    """Return the multi-file ``load`` with ``copy=True`` bound, named for error messages."""

    def loader(files: Files) -> _T:
        return load(files, copy=True)

    loader.__name__ = loader.__qualname__ = f"{name}(copy=True)"
    return loader


@overload
def safetensors_sharded(files: Files, *, copy: bool = False) -> dict[str, NDArray[Any]]: ...
@overload
def safetensors_sharded(
    files: None = None, *, copy: bool
) -> Callable[[Files], dict[str, NDArray[Any]]]: ...
def safetensors_sharded(
    files: Files | None = None, *, copy: bool = False
) -> dict[str, NDArray[Any]] | Callable[[Files], dict[str, NDArray[Any]]]:
    """Load a sharded safetensors model (index + shards) into one dict of numpy arrays.

    ``files`` is the read-only mapping ``ModelGuard(entries=...)`` and
    :func:`~clarity_resilience.load_verified_files` hand a loader. The index is
    ``model.safetensors.index.json`` (else the only ``*.safetensors.index.json``); shard
    names in its ``weight_map`` are relative to the index's directory. Without an index,
    exactly one ``*.safetensors`` file is loaded as the whole model. Each shard is
    loaded as by :func:`safetensors` (read-only views; ``copy=True`` for private
    copies, directly or as ``loader=loaders.safetensors_sharded(copy=True)``).

    Raises:
        ShardIndexError: (a :class:`ModelLoadError`) a malformed index, a shard it names
            that is missing, a tensor its shard does not hold, a tensor in two shards, a
            tensor or ``*.safetensors`` file the index does not mention, or an invalid
            shard.
    """
    if files is None:
        return (
            _copying_files(safetensors_sharded, "safetensors_sharded")
            if copy
            else (safetensors_sharded)
        )
    return _sharded.join(files, lambda data: safetensors(data, copy=copy))


@overload
def safetensors_sharded_torch(files: Files, *, copy: bool = False) -> dict[str, Any]: ...
@overload
def safetensors_sharded_torch(
    files: None = None, *, copy: bool
) -> Callable[[Files], dict[str, Any]]: ...
def safetensors_sharded_torch(
    files: Files | None = None, *, copy: bool = False
) -> dict[str, Any] | Callable[[Files], dict[str, Any]]:
    """Load a sharded safetensors model into one dict of CPU ``torch.Tensor`` objects.

    Checked as :func:`safetensors_sharded`; each shard is loaded as by
    :func:`safetensors_torch` (views of the verified buffers; ``copy=True`` clones).
    Requires the ``torch`` extra.

    Raises:
        ShardIndexError: As :func:`safetensors_sharded`.
    """
    if files is None:
        return (
            _copying_files(safetensors_sharded_torch, "safetensors_sharded_torch")
            if copy
            else safetensors_sharded_torch
        )
    return _sharded.join(files, lambda data: safetensors_torch(data, copy=copy))


@overload
def numpy(data: BytesLike, *, copy: bool = False) -> NDArray[Any] | dict[str, NDArray[Any]]: ...
@overload
def numpy(
    data: None = None, *, copy: bool
) -> Callable[[BytesLike], NDArray[Any] | dict[str, NDArray[Any]]]: ...
def numpy(
    data: BytesLike | None = None, *, copy: bool = False
) -> (
    NDArray[Any]
    | dict[str, NDArray[Any]]
    | Callable[[BytesLike], NDArray[Any] | dict[str, NDArray[Any]]]
):
    """Load a ``.npy`` array, or every array of an ``.npz`` archive as a dict.

    Arrays are read-only views of the verified buffer (for ``.npz``, of uncompressed
    members; a compressed member is inflated once); ``copy=True`` gives writable copies.
    Pickled data is never loaded: an object array is refused. Requires the ``numpy`` extra.

    Raises:
        ModelLoadError: With ``reason=unsafe_format`` for an object array or an
            archive member that is not a ``.npy`` array; ``load_error`` if malformed.
    """
    if data is None:
        return _copying(numpy, "numpy") if copy else numpy
    np = _require("numpy", "numpy")
    view = _bytes_view(data)
    if bytes(view[:4]) == _ZIP_MAGIC:
        return _npy.read_npz(np, view, copy=copy)
    return _npy.read_npy(np, data if isinstance(data, bytes) else view, copy=copy)


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
        with zipfile.ZipFile(_npy.ViewReader(data)) as archive:
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
