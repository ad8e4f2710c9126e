"""Parse and validate a safetensors header exactly as strictly as safetensors itself.

safetensors (``safetensors/src/tensor.rs``, ``SafeTensors::read_metadata`` and
``Metadata::validate``) reads an 8-byte little-endian header length (at most
100,000,000), a UTF-8 JSON header deserialized by serde_json, then checks that the
tensors, sorted by offsets, cover the data section from 0 contiguously and that the
file ends exactly where the last tensor does. serde has quirks that a plain
``json.loads`` does not share; each is mirrored here so that this parser accepts
exactly the files safetensors accepts (a Hypothesis test uses safetensors as the
oracle):

- nesting deeper than 127 containers is refused (serde_json's recursion limit);
- a number outside ``f64`` range is refused, ``-0`` is a float, and lone UTF-16
  surrogates in strings are refused, even inside ignored fields;
- a tensor entry may be an object (unknown keys ignored, a repeated known key refused)
  or a 3-element array ``[dtype, shape, data_offsets]``; a dtype may be ``"U8"`` or
  ``{"U8": null}``;
- a repeated tensor name keeps the last entry (every entry must still be well typed);
  a repeated ``__metadata__`` is refused; ``"__metadata__": null`` means none.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from typing import Any

from .exceptions import ModelLoadError

__all__ = [
    "DTYPE_BITS",
    "MAX_HEADER_SIZE",
    "TORCH_DTYPES",
    "Header",
    "HeaderError",
    "TensorInfo",
    "numpy_dtype",
    "parse",
]

#: safetensors' own bound on the header length (``MAX_HEADER_SIZE`` in tensor.rs).
MAX_HEADER_SIZE = 100_000_000
_LEN_BYTES = 8
# serde_json refuses the 128th nested container.
_MAX_DEPTH = 127
_U64 = 1 << 64
_I64_MIN = -(1 << 63)

#: Every dtype safetensors knows, with its width in bits (``Dtype::bitsize``).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
_FIELDS = ("dtype", "shape", "data_offsets")

# safetensors dtype -> numpy dtype; safetensors stores little-endian.
_NUMPY_DTYPES = {
    "BOOL": "?",
    "U8": "u1",
    "I8": "i1",
    "U16": "<u2",
    "I16": "<i2",
    "F16": "<f2",
    "U32": "<u4",
    "I32": "<i4",
    "F32": "<f4",
    "U64": "<u8",
    "I64": "<i8",
    "F64": "<f8",
    "C64": "<c8",
}
# dtypes numpy lacks, as ml_dtypes names them (F4/F6 are packed, so no view exists).
_ML_DTYPES = {
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}
#: safetensors dtype -> torch attribute (as safetensors.torch maps them).
TORCH_DTYPES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "F16": "float16",
    "BF16": "bfloat16",
    "U32": "uint32",
    "I32": "int32",
    "F32": "float32",
    "U64": "uint64",
    "I64": "int64",
    "F64": "float64",
    "C64": "complex64",
    **{name: attr for name, attr in _ML_DTYPES.items() if name != "BF16"},
}


class HeaderError(ValueError):
    """The buffer is not a safetensors file that safetensors would accept."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor: its dtype, shape and byte range, as offsets into the whole buffer."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class Header:
    """A validated header: tensors by name (in file order) and the optional metadata."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] | None


class _Object(list[tuple[str, Any]]):
    """A JSON object kept as its key/value pairs, so repeated keys stay visible."""


def _int(literal: str) -> int | float:
    # serde_json: u64 if it fits, else i64 if negative and it fits, else f64 ("-0" too).
    value = int(literal)
    if 0 <= value < _U64 and not literal.startswith("-"):
        return value
    if _I64_MIN <= value < 0:
        return value
    return _float(literal)


def _float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise HeaderError(f"number out of range: {literal[:40]}")
    return value


def _constant(literal: str) -> Any:
    raise HeaderError(f"not JSON: {literal}")


def _check_tree(root: Any) -> None:
    """Refuse nesting serde_json refuses and strings holding lone surrogates."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not node.isascii():
                node.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a surrogate
        elif isinstance(node, list):
            if depth > _MAX_DEPTH:
                raise HeaderError("header nested too deeply")
            if isinstance(node, _Object):
                for key, value in node:
                    stack.append((key, depth))
                    stack.append((value, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)


def _usize(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value < _U64:
        raise HeaderError(f"{what} must be an unsigned 64-bit integer, got {value!r:.40}")
    return value


def _dtype(value: Any) -> str:
    if isinstance(value, _Object):  # serde's externally tagged form: {"F32": null}
        if len(value) != 1 or value[0][1] is not None:
            raise HeaderError("dtype object must be a single key mapped to null")
        value = value[0][0]
    if type(value) is not str or value not in DTYPE_BITS:
        raise HeaderError(f"unknown dtype {value!r:.40}")
    return value


def _fields(entry: Any) -> list[Any]:
    if isinstance(entry, _Object):
        found: dict[str, Any] = {}
        for key, value in entry:
            if key in _FIELDS:
                if key in found:
                    raise HeaderError(f"duplicate field {key!r}")
                found[key] = value
        missing = [name for name in _FIELDS if name not in found]
        if missing:
            raise HeaderError(f"missing field {missing[0]!r}")
        return [found[name] for name in _FIELDS]
    if type(entry) is list and len(entry) == len(_FIELDS):
        return entry
    raise HeaderError("tensor entry must be an object with dtype, shape and data_offsets")


def _entry(entry: Any) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    raw_dtype, raw_shape, raw_offsets = _fields(entry)
    dtype = _dtype(raw_dtype)
    if type(raw_shape) is not list:
        raise HeaderError("shape must be an array")
    shape = tuple(_usize(dim, "a shape dimension") for dim in raw_shape)
    if type(raw_offsets) is not list or len(raw_offsets) != 2:
        raise HeaderError("data_offsets must be an array of two integers")
    begin, end = (_usize(offset, "a data offset") for offset in raw_offsets)
    return dtype, shape, (begin, end)


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, _Object) or any(type(v) is not str for _, v in value):
        raise HeaderError("__metadata__ must map strings to strings")
    return dict(value)


def _decode(header: bytes) -> _Object:
    try:
        tree = json.loads(
            header.decode("utf-8"),
            object_pairs_hook=_Object,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
        _check_tree(tree)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeError, digit limits
        raise HeaderError(f"header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(tree, _Object):
        raise HeaderError("header must be a JSON object")
    return tree


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Return the byte size of a tensor, overflowing where Rust's checked ``usize`` would."""
    elements = 1
    for dim in shape:
        elements *= dim
        if elements >= _U64:
            raise HeaderError("overflow computing the tensor size")
    bits = elements * DTYPE_BITS[dtype]
    if bits >= _U64:
        raise HeaderError("overflow computing the tensor size")
    if bits % 8:
        raise HeaderError("sub-byte tensor does not end on a byte boundary")
    return bits // 8


def parse(view: memoryview) -> Header:
    """Validate the safetensors file in ``view`` (a ``"B"``-format view of all of it).

    Raises:
        HeaderError: For anything safetensors itself would refuse.
    """
    if len(view) < _LEN_BYTES:
        raise HeaderError("file shorter than the 8-byte header length")
    length = int.from_bytes(view[:_LEN_BYTES], "little")
    if length > MAX_HEADER_SIZE:
        raise HeaderError(f"header length {length} exceeds {MAX_HEADER_SIZE}")
    data_start = _LEN_BYTES + length
    if data_start > len(view):
        raise HeaderError("header length runs past the end of the file")
    metadata: dict[str, str] | None = None
    seen_metadata = False
    entries: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]] = {}
    for name, value in _decode(bytes(view[_LEN_BYTES:data_start])):
        if name == "__metadata__":
            if seen_metadata:
                raise HeaderError("duplicate field '__metadata__'")
            seen_metadata = True
            metadata = _metadata(value)
        else:
            entries[name] = _entry(value)  # a repeated name keeps the last entry, as serde
    tensors: dict[str, TensorInfo] = {}
    position = 0
    for name, (dtype, shape, (begin, end)) in sorted(entries.items(), key=lambda kv: kv[1][2]):
        if begin != position or end < begin:
            raise HeaderError(f"tensor {name!r} is not contiguous with the one before it")
        position = end
        if end - begin != _nbytes(dtype, shape):
            raise HeaderError(f"tensor {name!r}: shape and dtype do not match its byte range")
        tensors[name] = TensorInfo(dtype, shape, data_start + begin, data_start + end)
    if data_start + position != len(view):
        raise HeaderError("the tensors do not cover the data section exactly")
    return Header(tensors, metadata)


def numpy_dtype(np: Any, dtype: str) -> Any:
    """Return the numpy dtype that views a safetensors ``dtype`` (ml_dtypes for BF16/F8).

    Raises:
        ModelLoadError: For F4/F6 (packed), or BF16/F8 without ml_dtypes installed.
    """
    if dtype in _NUMPY_DTYPES:
        return np.dtype(_NUMPY_DTYPES[dtype])
    if dtype in _ML_DTYPES:
        try:
            ml_dtypes = importlib.import_module("ml_dtypes")
        except ImportError:
            raise ModelLoadError(
                f"safetensors dtype {dtype} has no numpy equivalent; install ml_dtypes "
                "or load with loaders.safetensors_torch"
            ) from None
        return np.dtype(getattr(ml_dtypes, _ML_DTYPES[dtype]))
    raise ModelLoadError(
        f"safetensors dtype {dtype} packs several values per byte; numpy cannot view it"
    )
