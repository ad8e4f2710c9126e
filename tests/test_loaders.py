"""Tests for clarity_resilience.loaders: real models in, real models out; pickle only by name."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import os
import pathlib
import pickle
import random
import subprocess
import sys
import types
import warnings
import weakref
import zipfile
from collections.abc import Callable
from typing import Any

import joblib
import numpy as np
import onnx
import onnxruntime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save as save_safetensors

import clarity_resilience as cr
from clarity_resilience import loaders
from clarity_resilience.instrumentation import Event, ModelLoadFailed

# --- real model bytes ---------------------------------------------------------------------

TENSORS = {
    "embedding": np.arange(24, dtype=np.float32).reshape(4, 6) / 7,
    "bias": np.array([0.5, -1.0], dtype=np.float16),
    "ids": np.array([1, 2**40, -3], dtype=np.int64),
    "mask": np.array([0, 255, 7], dtype=np.uint8),
}
WEIGHT = np.array([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]], dtype=np.float32)
BIAS = np.array([0.25, -0.75], dtype=np.float32)


def safetensors_bytes(metadata: dict[str, str] | None = None) -> bytes:
    return save_safetensors(TENSORS, metadata=metadata)


def safetensors_with_header_length_byte_0x80() -> bytes:
    """Return a safetensors file whose first byte (header length) is 0x80, like a pickle."""
    for pad in range(200):
        data = safetensors_bytes({"pad": "x" * pad})
        if data[0] == 0x80:
            return data
    raise AssertionError("no padding gives a 0x80 header length byte")


def npy_bytes(array: np.ndarray | None = None, **kwargs: Any) -> bytes:
    stream = io.BytesIO()
    np.save(stream, TENSORS["embedding"] if array is None else array, **kwargs)
    return stream.getvalue()


def npz_bytes(compressed: bool = False) -> bytes:
    stream = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(stream, **TENSORS)
    return stream.getvalue()


def object_array_npy() -> bytes:
    return npy_bytes(np.array([1, "two", None], dtype=object), allow_pickle=True)


def linear_onnx() -> bytes:
    """Return an ONNX model computing ``y = x @ WEIGHT + BIAS`` (MatMul + Add)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [x],
        [y],
        [numpy_helper.from_array(WEIGHT, "W"), numpy_helper.from_array(BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every supported onnxruntime reads
    onnx.checker.check_model(model)
    return model.SerializeToString()


def torch_zip() -> bytes:
    """Return the layout of a ``torch.save`` archive (torch itself is not installed here)."""
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": 1}, protocol=2))
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/data/0", b"\x00" * 16)
    return stream.getvalue()


def zip_of(**members: bytes) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return stream.getvalue()


def joblib_bytes() -> bytes:
    stream = io.BytesIO()
    joblib.dump({"coef": np.arange(5.0), "name": "linear"}, stream)
    return stream.getvalue()


class Payload:
    """Unpickling this creates a directory: proof that a pickle ran code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def write(tmp_path: pathlib.Path, data: bytes) -> tuple[pathlib.Path, str]:
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def assert_same_tensors(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype
        assert actual[name].shape == array.shape
        np.testing.assert_array_equal(actual[name], array)


def buffer_owner(array: np.ndarray) -> Any:
    """Follow ``array.base`` to the object that owns the memory."""
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) and base.obj is not None else base


class WeakBytes(bytearray):
    """A buffer owner a weakref can watch (bytes and bytearray themselves cannot)."""


def hide(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``package`` (and every imported submodule) unimportable, as if not installed."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


# --- loaders ------------------------------------------------------------------------------


class TestSafetensors:
    def test_round_trip_through_load_verified(self, tmp_path: pathlib.Path) -> None:
        """A verified safetensors file loads into numpy arrays of the saved dtypes and values."""
        path, sha256 = write(tmp_path, safetensors_bytes())

        tensors = cr.load_verified(path, sha256=sha256, loader=loaders.safetensors)

        assert_same_tensors(tensors, TENSORS)

    @pytest.mark.parametrize(
        "wrap",
        [pytest.param(bytearray, id="bytearray"), pytest.param(memoryview, id="memoryview")],
    )
    def test_accepts_any_bytes_like(self, wrap: Callable[[bytes], Any]) -> None:
        """A bytearray or memoryview of the bytes loads like bytes."""
        assert_same_tensors(loaders.safetensors(wrap(safetensors_bytes())), TENSORS)

    def test_malformed_file_fails_to_load(self, tmp_path: pathlib.Path) -> None:
        """Verified but malformed safetensors bytes surface as ModelLoadError."""
        data = safetensors_bytes()[:-3]
        path, sha256 = write(tmp_path, data)

        with pytest.raises(cr.ModelLoadError) as info:
            cr.load_verified(path, sha256=sha256, loader=loaders.safetensors)

        assert info.value.reason == cr.Reason.LOAD_ERROR
        assert info.value.__cause__ is not None

    def test_arrays_view_the_verified_buffer(self, tmp_path: pathlib.Path) -> None:
        """load_verified's arrays view the verified buffer itself: no second copy is made."""
        data = safetensors_bytes()
        path, sha256 = write(tmp_path, data)

        tensors = cr.load_verified(path, sha256=sha256, loader=loaders.safetensors)

        for array in tensors.values():
            owner = buffer_owner(array)
            assert isinstance(owner, bytes | memoryview)
            assert len(owner) == len(data)  # the whole verified file, not a per-tensor copy
            assert array.base is not None

    @pytest.mark.parametrize(
        "wrap",
        [
            pytest.param(lambda b: b, id="bytes"),
            pytest.param(memoryview, id="memoryview"),
            pytest.param(lambda b: memoryview(bytearray(b)).toreadonly(), id="readonly-view"),
            pytest.param(bytearray, id="bytearray"),
        ],
    )
    def test_arrays_are_read_only_views(self, wrap: Callable[[bytes], Any]) -> None:
        """Each array shares memory with the buffer it was given, and writing to it raises."""
        data = wrap(safetensors_bytes())
        whole = np.frombuffer(data, dtype=np.uint8)

        tensors = loaders.safetensors(data)

        for array in tensors.values():
            assert np.shares_memory(array, whole)
            assert not array.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                array[...] = 0
        assert_same_tensors(tensors, TENSORS)

    def test_a_kept_tensor_keeps_the_buffer_alive(self) -> None:
        """Dropping everything but one tensor keeps its buffer alive until that tensor goes."""
        owner = WeakBytes(safetensors_bytes())
        alive = weakref.ref(owner)
        tensors = loaders.safetensors(memoryview(owner).toreadonly())
        kept = tensors["embedding"]
        del owner, tensors
        gc.collect()

        assert alive() is not None
        np.testing.assert_array_equal(kept, TENSORS["embedding"])
        del kept
        gc.collect()
        assert alive() is None

    def test_copy_gives_private_writable_arrays(self) -> None:
        """copy=True returns writable arrays that share nothing with the buffer."""
        data = safetensors_bytes()

        tensors = loaders.safetensors(data, copy=True)

        assert_same_tensors(tensors, TENSORS)
        for array in tensors.values():
            assert array.flags.writeable
            assert not np.shares_memory(array, np.frombuffer(data, dtype=np.uint8))
        tensors["embedding"][0, 0] = 42.0
        assert tensors["embedding"][0, 0] == 42.0

    def test_copy_factory_works_as_a_loader(self, tmp_path: pathlib.Path) -> None:
        """loaders.safetensors(copy=True) is a loader for load_verified, named in errors."""
        path, sha256 = write(tmp_path, safetensors_bytes())
        copying = loaders.safetensors(copy=True)

        tensors = cr.load_verified(path, sha256=sha256, loader=copying)

        assert all(array.flags.writeable for array in tensors.values())
        assert loaders.safetensors(copy=False) is loaders.safetensors
        assert copying.__name__ == "safetensors(copy=True)"

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b"", id="empty"),
            pytest.param(b"\x00" * 8, id="zero-header"),
            pytest.param((10**9).to_bytes(8, "little") + b"{}", id="header-too-long"),
            pytest.param(safetensors_bytes() + b"\x00", id="trailing-byte"),
        ],
    )
    def test_refusals_are_typed_load_errors(self, data: bytes) -> None:
        """Whatever is wrong with the file, the loader raises ModelLoadError(load_error)."""
        with pytest.raises(cr.ModelLoadError) as info:
            loaders.safetensors(data)

        assert info.value.reason == cr.Reason.LOAD_ERROR

    def test_non_contiguous_buffer_is_refused(self) -> None:
        """A strided view cannot be viewed as one file: a typed error, not a crash."""
        strided = memoryview(safetensors_bytes() * 2)[::2]

        with pytest.raises(cr.ModelLoadError, match="contiguous"):
            loaders.safetensors(strided)


class TestNumpy:
    def test_npy_round_trip(self, tmp_path: pathlib.Path) -> None:
        """A verified .npy file loads as the saved array."""
        path, sha256 = write(tmp_path, npy_bytes())

        array = cr.load_verified(path, sha256=sha256, loader=loaders.numpy)

        assert isinstance(array, np.ndarray)
        np.testing.assert_array_equal(array, TENSORS["embedding"])
        assert array.dtype == np.float32

    def test_fortran_order_is_kept(self) -> None:
        """A Fortran-ordered array comes back with the same values."""
        array = np.asfortranarray(TENSORS["embedding"])

        loaded = loaders.numpy(npy_bytes(array))

        np.testing.assert_array_equal(loaded, array)

    @pytest.mark.parametrize(
        "compressed", [pytest.param(False, id="savez"), pytest.param(True, id="savez_compressed")]
    )
    def test_npz_round_trip(self, tmp_path: pathlib.Path, compressed: bool) -> None:
        """A verified .npz archive loads as a dict of every array."""
        path, sha256 = write(tmp_path, npz_bytes(compressed))

        arrays = cr.load_verified(path, sha256=sha256, loader=loaders.numpy)

        assert isinstance(arrays, dict)
        assert_same_tensors(arrays, TENSORS)

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(object_array_npy(), id="npy-object-array"),
            pytest.param(zip_of(**{"ok.npy": npy_bytes(), "bad.npy": object_array_npy()}),
                         id="npz-with-object-array"),
            pytest.param(zip_of(**{"ok.npy": npy_bytes(), "code.pkl": b"\x80\x04."}),
                         id="npz-with-non-npy-member"),
        ],
    )  # fmt: skip
    def test_pickled_content_is_refused(self, tmp_path: pathlib.Path, data: bytes) -> None:
        """Object arrays (which need pickle) are refused as an unsafe format."""
        path, sha256 = write(tmp_path, data)

        with pytest.raises(cr.ModelLoadError) as info:
            cr.load_verified(path, sha256=sha256, loader=loaders.numpy)

        assert info.value.reason == cr.Reason.UNSAFE_FORMAT


class TestNumpyZeroCopy:
    @pytest.mark.parametrize(
        "wrap",
        [
            pytest.param(lambda b: b, id="bytes"),
            pytest.param(lambda b: memoryview(bytearray(b)).toreadonly(), id="readonly-view"),
        ],
    )
    @pytest.mark.parametrize("fortran", [pytest.param(False, id="C"), pytest.param(True, id="F")])
    def test_npy_is_a_read_only_view(self, wrap: Callable[[bytes], Any], fortran: bool) -> None:
        """A .npy array views the buffer (C or Fortran order) and cannot be written."""
        expected = np.asfortranarray(WEIGHT) if fortran else WEIGHT
        data = wrap(npy_bytes(expected))

        array = loaders.numpy(data)

        assert isinstance(array, np.ndarray)
        np.testing.assert_array_equal(array, expected)
        assert array.flags.f_contiguous == fortran
        assert np.shares_memory(array, np.frombuffer(data, dtype=np.uint8))
        with pytest.raises(ValueError, match="read-only"):
            array[0, 0] = 1.0

    @pytest.mark.parametrize(
        "array",
        [
            pytest.param(np.array(2.5), id="scalar"),
            pytest.param(np.zeros((0, 4), np.float32), id="empty"),
            pytest.param(np.arange(6, dtype=">i4").reshape(2, 3), id="big-endian"),
            pytest.param(np.zeros(3, [("a", "<i2"), ("b", "<f8")]), id="structured"),
            pytest.param(np.zeros(3, "V0"), id="zero-itemsize"),
            pytest.param(np.asfortranarray(np.arange(12.0).reshape(3, 4)), id="fortran"),
        ],
    )
    def test_npy_equals_numpy_load(self, array: np.ndarray) -> None:
        """Each kind of .npy loads with np.load's dtype, shape and bytes, read-only."""
        data = npy_bytes(array)
        expected = np.load(io.BytesIO(data))

        loaded = loaders.numpy(data)

        assert isinstance(loaded, np.ndarray)
        assert (loaded.dtype, loaded.shape) == (expected.dtype, expected.shape)
        assert loaded.tobytes() == expected.tobytes()
        assert not loaded.flags.writeable

    def test_npy_copy_is_writable(self) -> None:
        """numpy(copy=True), also as a loader factory, gives a private writable array."""
        data = npy_bytes()

        array = loaders.numpy(copy=True)(data)

        assert isinstance(array, np.ndarray)
        assert array.flags.writeable
        assert not np.shares_memory(array, np.frombuffer(data, dtype=np.uint8))
        np.testing.assert_array_equal(array, TENSORS["embedding"])

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(npy_bytes()[:-1], id="truncated-data"),
            pytest.param(npy_bytes()[:9], id="truncated-header"),
            pytest.param(b"\x93NUMPY\x09\x00" + bytes(8), id="unknown-version"),
        ],
    )
    def test_malformed_npy_is_a_load_error(self, data: bytes) -> None:
        """A damaged .npy is a ModelLoadError(load_error), never an untyped error."""
        with pytest.raises(cr.ModelLoadError) as info:
            loaders.numpy(data)

        assert info.value.reason == cr.Reason.LOAD_ERROR

    def test_truncated_npy_says_so(self) -> None:
        """A .npy shorter than its header promises is refused with that reason."""
        with pytest.raises(cr.ModelLoadError, match="shorter than its header"):
            loaders.numpy(npy_bytes()[:-1])

    def test_stored_npz_members_are_views(self) -> None:
        """np.savez members (stored, not compressed) are read-only views of the archive."""
        data = memoryview(bytearray(npz_bytes())).toreadonly()

        arrays = loaders.numpy(data)

        assert isinstance(arrays, dict)
        assert_same_tensors(arrays, TENSORS)
        for array in arrays.values():
            assert np.shares_memory(array, np.frombuffer(data, dtype=np.uint8))
            assert not array.flags.writeable

    def test_compressed_npz_members_are_read_only(self) -> None:
        """np.savez_compressed members are inflated once, then returned read-only."""
        arrays = loaders.numpy(npz_bytes(compressed=True))

        assert isinstance(arrays, dict)
        assert_same_tensors(arrays, TENSORS)
        assert not any(array.flags.writeable for array in arrays.values())

    def test_stored_member_with_bad_crc_is_refused(self) -> None:
        """A stored member whose bytes do not match its CRC-32 is refused, as zipfile would."""
        data = bytearray(npz_bytes())
        data[data.index(b"\x93NUMPY") + 200] ^= 0xFF  # inside the first member's data

        with pytest.raises(cr.ModelLoadError, match="CRC") as info:
            loaders.numpy(bytes(data))

        assert info.value.reason == cr.Reason.LOAD_ERROR

    def test_broken_archive_is_a_load_error(self) -> None:
        """A zip whose central directory is cut off is a ModelLoadError, not BadZipFile."""
        with pytest.raises(cr.ModelLoadError) as info:
            loaders.numpy(npz_bytes()[:-30])

        assert info.value.reason == cr.Reason.LOAD_ERROR


NUMPY_FILES = [npy_bytes(), npy_bytes(np.asfortranarray(WEIGHT)), npz_bytes(), npz_bytes(True)]


class TestNumpyDamagedFiles:
    @settings(max_examples=150, deadline=None)
    @given(
        st.sampled_from(NUMPY_FILES),
        st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=3),
        st.floats(0, 1),
    )
    def test_only_model_load_errors(
        self, data: bytes, flips: list[tuple[float, int]], keep: float
    ) -> None:
        """A damaged .npy/.npz either loads or raises ModelLoadError, nothing else."""
        damaged = bytearray(data)
        for where, value in flips:
            damaged[int(where * len(damaged))] = value
        damaged = damaged[: max(1, int(keep * len(damaged)))]

        with contextlib.suppress(cr.ModelLoadError):  # any other exception fails the test
            loaders.numpy(bytes(damaged))


class FakeTorch:
    """A numpy-backed stand-in for the few torch calls safetensors_torch makes."""

    def __init__(self) -> None:
        self.module = types.ModuleType("torch")
        for name in ("bool", "uint8", "int8", "uint16", "int16", "float16", "uint32", "int32",
                     "float32", "uint64", "int64", "float64", "complex64"):  # fmt: skip
            setattr(self.module, name, np.dtype(name))
        self.module.bfloat16 = np.dtype("uint16")  # type: ignore[attr-defined]  # same width
        self.module.frombuffer = self.frombuffer  # type: ignore[attr-defined]
        self.module.empty = lambda shape, dtype: FakeTensor(np.empty(shape, dtype))  # type: ignore[attr-defined]
        self.buffers: list[Any] = []

    def frombuffer(self, buffer: Any, *, dtype: Any, count: int, offset: int) -> FakeTensor:
        self.buffers.append(buffer)
        array = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
        if not array.flags.writeable:
            warnings.warn(
                "The given buffer is not writable, and PyTorch does not support non-writable "
                "tensors.",
                UserWarning,
                stacklevel=2,
            )
        return FakeTensor(array)


class FakeTensor:
    def __init__(self, array: np.ndarray, cloned: bool = False) -> None:
        self.array, self.cloned = array, cloned

    def reshape(self, shape: tuple[int, ...]) -> FakeTensor:
        return FakeTensor(self.array.reshape(shape), self.cloned)

    def clone(self) -> FakeTensor:
        return FakeTensor(self.array.copy(), cloned=True)


class TestSafetensorsTorch:
    def test_tensors_view_the_buffer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each tensor is torch.frombuffer over the verified buffer, without torch's warning."""
        fake = FakeTorch()
        monkeypatch.setitem(sys.modules, "torch", fake.module)
        data = safetensors_bytes()

        tensors = loaders.safetensors_torch(data)

        assert {name: t.array.tobytes() for name, t in tensors.items()} == {
            name: a.tobytes() for name, a in TENSORS.items()
        }
        assert all(buffer is data for buffer in fake.buffers)
        assert not any(t.cloned for t in tensors.values())

    def test_bf16_and_empty_tensors(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """BF16 maps to torch.bfloat16; a zero-size tensor is made by torch.empty."""
        fake = FakeTorch()
        monkeypatch.setitem(sys.modules, "torch", fake.module)
        header = {
            "none": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
            "half": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
        }
        text = json.dumps(header).encode()
        data = len(text).to_bytes(8, "little") + text + b"\x80?\x00@"

        tensors = loaders.safetensors_torch(data)

        assert tensors["half"].array.tobytes() == b"\x80?\x00@"
        assert tensors["none"].array.shape == (0, 3)
        assert len(fake.buffers) == 1

    def test_copy_clones_every_tensor(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """safetensors_torch(copy=True) clones each tensor out of the buffer."""
        monkeypatch.setitem(sys.modules, "torch", FakeTorch().module)

        tensors = loaders.safetensors_torch(copy=True)(safetensors_bytes())

        assert all(t.cloned for t in tensors.values())

    def test_dtype_missing_from_torch_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A dtype this torch lacks (here F8_E5M2) is a ModelLoadError naming it."""
        monkeypatch.setitem(sys.modules, "torch", FakeTorch().module)
        text = b'{"t":{"dtype":"F8_E5M2","shape":[1],"data_offsets":[0,1]}}'
        data = len(text).to_bytes(8, "little") + text + b"\x01"

        with pytest.raises(cr.ModelLoadError, match="F8_E5M2"):
            loaders.safetensors_torch(data)

    def test_invalid_file_is_refused_before_torch_sees_it(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The header is validated as strictly as the numpy loader's."""
        fake = FakeTorch()
        monkeypatch.setitem(sys.modules, "torch", fake.module)

        with pytest.raises(cr.ModelLoadError):
            loaders.safetensors_torch(safetensors_bytes() + b"\x00")

        assert fake.buffers == []


class TestOnnx:
    def test_inference_session_runs_the_model(self, tmp_path: pathlib.Path) -> None:
        """A verified ONNX model becomes a CPU InferenceSession computing x @ W + b."""
        path, sha256 = write(tmp_path, linear_onnx())
        x = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]], dtype=np.float32)

        session = cr.load_verified(path, sha256=sha256, loader=loaders.onnx)
        (y,) = session.run(None, {"x": x})

        assert isinstance(session, onnxruntime.InferenceSession)
        assert session.get_providers() == ["CPUExecutionProvider"]
        np.testing.assert_allclose(y, x @ WEIGHT + BIAS, rtol=1e-6)

    def test_read_only_view_is_accepted(self) -> None:
        """A read-only memoryview becomes bytes for onnxruntime, which needs them."""
        session = loaders.onnx(memoryview(bytearray(linear_onnx())).toreadonly())

        (y,) = session.run(None, {"x": np.ones((1, 3), np.float32)})
        np.testing.assert_allclose(y, [WEIGHT.sum(0) + BIAS], rtol=1e-6)

    def test_garbage_is_a_load_error(self) -> None:
        """Bytes that are not a model make onnxruntime fail; load_verified would wrap it."""
        with pytest.raises(Exception, match=r"(?i)protobuf|parse|load") as info:
            loaders.onnx(b"\x08\x07garbage")

        assert not isinstance(info.value, cr.ClarityResilienceError)


class TorchStub:
    """Stands in for torch, which cannot be installed here; records how it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, dict[str, Any]]] = []
        self.module = types.ModuleType("torch")
        self.module.load = self.load  # type: ignore[attr-defined]

    def load(self, f: io.BytesIO, **kwargs: Any) -> dict[str, Any]:
        self.calls.append((f.read(), kwargs))
        if not kwargs.get("weights_only"):
            raise AssertionError("torch.load called without weights_only=True")
        return {"weight": "tensor"}


class TestTorch:
    def test_loads_with_weights_only_on_cpu(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """torch.load gets the verified bytes with weights_only=True and map_location='cpu'."""
        stub = TorchStub()
        monkeypatch.setitem(sys.modules, "torch", stub.module)
        data = torch_zip()
        path, sha256 = write(tmp_path, data)

        model = cr.load_verified(path, sha256=sha256, loader=loaders.torch)

        assert model == {"weight": "tensor"}
        assert stub.calls == [(data, {"weights_only": True, "map_location": "cpu"})]

    def test_never_retries_without_weights_only(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When the weights-only unpickler refuses a file, the load fails; it is not retried."""
        stub = TorchStub()

        def refuse(f: io.BytesIO, **kwargs: Any) -> None:
            stub.calls.append((f.read(), kwargs))
            raise pickle.UnpicklingError("Weights only load failed")

        stub.module.load = refuse  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "torch", stub.module)
        path, sha256 = write(tmp_path, torch_zip())

        with pytest.raises(cr.ModelLoadError) as info:
            cr.load_verified(path, sha256=sha256, loader=loaders.torch)

        assert isinstance(info.value.__cause__, pickle.UnpicklingError)
        assert [kwargs["weights_only"] for _, kwargs in stub.calls] == [True]


class TestMissingDependency:
    @pytest.mark.parametrize(
        ("loader", "package", "extra", "data"),
        [
            pytest.param(loaders.safetensors, "numpy", "safetensors", safetensors_bytes(),
                         id="safetensors"),
            pytest.param(loaders.safetensors_torch, "torch", "torch", safetensors_bytes(),
                         id="safetensors_torch"),
            pytest.param(loaders.numpy, "numpy", "numpy", npy_bytes(), id="numpy"),
            pytest.param(loaders.onnx, "onnxruntime", "onnx", linear_onnx(), id="onnx"),
            pytest.param(loaders.torch, "torch", "torch", torch_zip(), id="torch"),
            pytest.param(loaders.auto, "torch", "torch", torch_zip(), id="auto-torch"),
            pytest.param(loaders.unsafe_joblib, "joblib", "joblib", joblib_bytes(), id="joblib"),
        ],
    )  # fmt: skip
    def test_names_the_extra_to_install(
        self,
        monkeypatch: pytest.MonkeyPatch,
        loader: Callable[[bytes], Any],
        package: str,
        extra: str,
        data: bytes,
    ) -> None:
        """Without its library, a loader raises ModelLoadError naming the pip extra."""
        hide(monkeypatch, package)

        with pytest.raises(cr.ModelLoadError, match=rf"clarity-resilience\[{extra}\]") as info:
            loader(data)

        assert info.value.reason == cr.Reason.LOAD_ERROR
        assert isinstance(info.value.__cause__, ImportError)


class TestUnsafeLoaders:
    def test_unsafe_pickle_round_trip(self, tmp_path: pathlib.Path) -> None:
        """unsafe_pickle, passed explicitly, unpickles the verified bytes."""
        obj = {"coef": [1.0, 2.0], "name": "linear"}
        path, sha256 = write(tmp_path, pickle.dumps(obj))

        assert cr.load_verified(path, sha256=sha256, loader=loaders.unsafe_pickle) == obj

    def test_unsafe_joblib_round_trip(self, tmp_path: pathlib.Path) -> None:
        """unsafe_joblib, passed explicitly, loads a joblib.dump file."""
        path, sha256 = write(tmp_path, joblib_bytes())

        model = cr.load_verified(path, sha256=sha256, loader=loaders.unsafe_joblib)

        assert model["name"] == "linear"
        np.testing.assert_array_equal(model["coef"], np.arange(5.0))


# --- format detection and auto --------------------------------------------------------


DETECTION_TABLE = [
    pytest.param(safetensors_bytes, "safetensors", id="safetensors"),
    pytest.param(safetensors_with_header_length_byte_0x80, "safetensors",
                 id="safetensors-header-length-0x80"),
    pytest.param(npy_bytes, "numpy", id="npy"),
    pytest.param(lambda: npz_bytes(False), "npz", id="npz"),
    pytest.param(lambda: npz_bytes(True), "npz", id="npz-compressed"),
    pytest.param(linear_onnx, "onnx", id="onnx"),
    pytest.param(torch_zip, "torch", id="torch-zip"),
    pytest.param(lambda: zip_of(**{"model/data.pkl": b"\x80\x02."}), "torch",
                 id="torch-zip-minimal"),
    pytest.param(lambda: pickle.dumps([1, 2], protocol=2), "pickle", id="pickle-protocol-2"),
    pytest.param(lambda: pickle.dumps([1, 2], protocol=5), "pickle", id="pickle-protocol-5"),
    pytest.param(joblib_bytes, "pickle", id="joblib"),
    pytest.param(lambda: pickle.dumps([1, 2], protocol=0), "unknown", id="pickle-protocol-0"),
    pytest.param(lambda: b"", "unknown", id="empty"),
    pytest.param(lambda: b"\x08", "unknown", id="one-byte"),
    pytest.param(lambda: b'{"weights": [1, 2]}', "unknown", id="json"),
    pytest.param(lambda: random.Random(7).randbytes(4096), "unknown", id="random"),
    pytest.param(lambda: b"\x08\x07" + random.Random(8).randbytes(100), "unknown",
                 id="onnx-like-tag-then-garbage"),
    pytest.param(lambda: linear_onnx()[:-5], "unknown", id="onnx-truncated"),
    pytest.param(lambda: b"PK\x03\x04" + bytes(60), "unknown", id="broken-zip"),
    pytest.param(lambda: zip_of(**{"model.txt": b"hi"}), "unknown", id="zip-other-members"),
    pytest.param(lambda: (10**6).to_bytes(8, "little") + b'{"a":1}', "unknown",
                 id="safetensors-header-longer-than-file"),
    pytest.param(lambda: bytes(8) + b"{}", "unknown", id="safetensors-zero-header-length"),
]  # fmt: skip


class TestDetect:
    @pytest.mark.parametrize(("build", "expected"), DETECTION_TABLE)
    def test_names_the_format_from_leading_bytes(
        self, build: Callable[[], bytes], expected: str
    ) -> None:
        """detect() names each format from its content alone."""
        assert loaders.detect(build()) == expected

    def test_accepts_memoryview(self) -> None:
        """detect() works on a view of the bytes without copying them first."""
        assert loaders.detect(memoryview(linear_onnx())) == "onnx"


class TestAuto:
    @pytest.mark.parametrize(
        ("build", "check"),
        [
            pytest.param(safetensors_bytes, lambda m: assert_same_tensors(m, TENSORS),
                         id="safetensors"),
            pytest.param(npy_bytes, lambda m: np.testing.assert_array_equal(
                m, TENSORS["embedding"]), id="npy"),
            pytest.param(npz_bytes, lambda m: assert_same_tensors(m, TENSORS), id="npz"),
            pytest.param(linear_onnx, lambda m: np.testing.assert_allclose(
                m.run(None, {"x": np.ones((1, 3), np.float32)})[0], [WEIGHT.sum(0) + BIAS]),
                id="onnx"),
        ],
    )  # fmt: skip
    def test_loads_each_safe_format(
        self, tmp_path: pathlib.Path, build: Callable[[], bytes], check: Callable[[Any], None]
    ) -> None:
        """load_verified's default loader picks the right loader for each safe format."""
        path, sha256 = write(tmp_path, build())

        check(cr.load_verified(path, sha256=sha256))

    @pytest.mark.parametrize(
        "build",
        [pytest.param(safetensors_bytes, id="safetensors"), pytest.param(npy_bytes, id="npy"),
         pytest.param(npz_bytes, id="npz")],
    )  # fmt: skip
    def test_read_only_view_loads_zero_copy(self, build: Callable[[], bytes]) -> None:
        """auto takes a read-only memoryview and returns read-only views of it."""
        data = memoryview(bytearray(build())).toreadonly()

        model = loaders.auto(data)

        arrays = model.values() if isinstance(model, dict) else [model]
        whole = np.frombuffer(data, dtype=np.uint8)
        assert all(np.shares_memory(a, whole) and not a.flags.writeable for a in arrays)

    def test_torch_archive_goes_to_the_weights_only_loader(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A torch.save archive is loaded by loaders.torch (weights_only=True)."""
        stub = TorchStub()
        monkeypatch.setitem(sys.modules, "torch", stub.module)

        assert loaders.auto(torch_zip()) == {"weight": "tensor"}
        assert stub.calls[0][1]["weights_only"] is True

    @pytest.mark.parametrize(
        "protocol", [pytest.param(2, id="protocol-2"), pytest.param(5, id="protocol-5")]
    )
    def test_pickle_is_refused_and_never_run(
        self, tmp_path: pathlib.Path, events: list[Event], protocol: int
    ) -> None:
        """A pickle is refused as unsafe_format, pointing to unsafe_pickle, without running it."""
        marker = tmp_path / "pickle-ran"
        path, sha256 = write(tmp_path, pickle.dumps(Payload(marker), protocol=protocol))

        with pytest.raises(cr.ModelLoadError, match=r"loaders\.unsafe_pickle") as info:
            cr.load_verified(path, sha256=sha256)

        assert info.value.reason == cr.Reason.UNSAFE_FORMAT
        assert not marker.exists()
        failed = [e for e in events if isinstance(e, ModelLoadFailed)]
        assert [e.reason for e in failed] == ["unsafe_format"]
        # The same bytes do run code when unpickled: the refusal above is what stopped it.
        loaders.unsafe_pickle(path.read_bytes())
        assert marker.is_dir()

    def test_garbage_is_refused(self, tmp_path: pathlib.Path) -> None:
        """Verified bytes in no known format are refused as unsafe_format."""
        path, sha256 = write(tmp_path, random.Random(3).randbytes(10_000))

        with pytest.raises(cr.ModelLoadError) as info:
            cr.load_verified(path, sha256=sha256)

        assert info.value.reason == cr.Reason.UNSAFE_FORMAT

    def test_object_array_is_refused(self, tmp_path: pathlib.Path) -> None:
        """An .npy object array is detected as numpy and refused (no pickle)."""
        path, sha256 = write(tmp_path, object_array_npy())

        with pytest.raises(cr.ModelLoadError) as info:
            cr.load_verified(path, sha256=sha256)

        assert info.value.reason == cr.Reason.UNSAFE_FORMAT


# --- library hygiene --------------------------------------------------------------------


OPTIONAL = ["fastapi", "flask", "httpx", "joblib", "ml_dtypes", "numpy", "onnx",
            "onnxruntime", "safetensors", "starlette", "torch"]  # fmt: skip


class TestImportHygiene:
    def test_import_pulls_in_no_optional_library(self) -> None:
        """Importing the package and its loaders imports no loader library or web framework."""
        code = (
            "import json, sys, clarity_resilience, clarity_resilience.loaders; "
            f"print(json.dumps(sorted(set(sys.modules) & set({OPTIONAL!r}))))"
        )

        child = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )

        assert json.loads(child.stdout) == []

    def test_all_is_sorted_and_public(self) -> None:
        """loaders.__all__ is sorted and names only documented callables."""
        assert loaders.__all__ == sorted(loaders.__all__)
        for name in loaders.__all__:
            function = getattr(loaders, name)
            assert callable(function)
            assert function.__doc__
