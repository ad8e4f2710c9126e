"""Differential tests: our safetensors parser against safetensors itself, as the oracle."""

from __future__ import annotations

import json
import struct
import sys
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clarity_resilience as cr
from clarity_resilience import _safetensors, loaders

DTYPES = sorted(_safetensors.DTYPE_BITS)
# The quick suite runs these; a few hundred cases per test keep each under a few seconds.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Expected = dict[str, tuple[str, list[int], bytes]] | None


def frame(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def one_tensor(dtype: str, shape: list[int], raw: bytes) -> bytes:
    """Return a safetensors file holding one tensor ``t`` (any dtype, even ones numpy lacks)."""
    header = {"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(raw)]}}
    return frame(json.dumps(header).encode(), raw)


def oracle(data: bytes) -> Expected:
    """Return what safetensors' own parser finds in ``data``, or None if it refuses it."""
    try:
        flat = safetensors.deserialize(data)
    except safetensors.SafetensorError:
        return None
    return {name: (view["dtype"], view["shape"], bytes(view["data"])) for name, view in flat}


def ours(data: bytes) -> Expected:
    """Return what our parser finds in ``data``, or None if it refuses it."""
    try:
        header = _safetensors.parse(memoryview(data))
    except _safetensors.HeaderError:
        return None
    return {
        name: (info.dtype, list(info.shape), data[info.begin : info.end])
        for name, info in header.tensors.items()
    }


def assert_loader_agrees(data: bytes) -> None:
    """Check loaders.safetensors against safetensors.numpy.load: same verdict, same bits."""
    try:
        expected = safetensors.numpy.load(data)
    except KeyError:  # safetensors.numpy has no numpy dtype for BF16/F8/F4/F6
        expected = None
        refused = oracle(data) is None
    except (safetensors.SafetensorError, ValueError):  # ValueError: numpy cannot reshape
        expected, refused = None, True
    else:
        refused = False
    try:
        actual = loaders.safetensors(data)
    except cr.ModelLoadError:
        assert refused or expected is None, "refused a file safetensors.numpy loads"
        return
    assert not refused, "loaded a file safetensors refuses"
    if expected is None:  # dtypes numpy lacks: compare with the raw tensors safetensors found
        raw = oracle(data)
        assert raw is not None
        assert {k: (list(v.shape), v.tobytes()) for k, v in actual.items()} == {
            k: (shape, blob) for k, (_, shape, blob) in raw.items()
        }
        return
    assert actual.keys() == expected.keys()
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype
        assert actual[name].shape == array.shape
        assert actual[name].tobytes() == array.tobytes()  # bit for bit: NaN != NaN


# --- generated files ----------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8"), max_size=6)
dims = st.lists(st.sampled_from([0, 1, 2, 3, 5]), max_size=3)


def rare(draw: st.DrawFn) -> bool:
    """Draw True one time in 25: each flaw is rare, so most files stay valid."""
    return draw(st.integers(0, 24)) == 0


@st.composite
def entry_json(draw: st.DrawFn, dtype: str, shape: list[int], offsets: list[int]) -> Any:
    """Render one tensor entry in any of the forms serde accepts (and some it does not)."""
    dtype_value: Any = draw(st.sampled_from([dtype, dtype, dtype, {dtype: None}]))
    if rare(draw):
        dtype_value = draw(st.sampled_from([dtype.lower(), {dtype: 1}, {dtype: None, "U8": None}]))
    if draw(st.integers(0, 4)) == 0:
        return [dtype_value, shape, offsets, 0][
            : 3 if not rare(draw) else draw(st.sampled_from([2, 4]))
        ]
    entry = {"dtype": dtype_value, "shape": shape, "data_offsets": offsets}
    if draw(st.integers(0, 4)) == 0:  # serde ignores unknown fields
        entry[draw(st.sampled_from(["x", "dtype_", "offsets"]))] = draw(
            st.sampled_from([1.5, -0, None, [[[]]], "s", 10**30, -(2**63) - 1])
        )
    if rare(draw):
        del entry[draw(st.sampled_from(sorted(entry)))]
    return entry


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """Build a file close to valid: real layouts with rare flaws in every part."""
    tensors = draw(st.dictionaries(names, st.tuples(st.sampled_from(DTYPES), dims), max_size=4))
    header: dict[str, Any] = {}
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(names, names, max_size=2) | st.none())
        if rare(draw):
            header["__metadata__"] = {"k": draw(st.sampled_from([1, None, ["v"]]))}
    position, data = 0, b""
    for name, (dtype, shape) in tensors.items():
        size = int(np.prod(shape)) * _safetensors.DTYPE_BITS[dtype] // 8
        if rare(draw):
            size += draw(st.sampled_from([1, -1]))
        offsets = [position, position + size]
        if rare(draw):
            offsets = [position + 1, position + size]  # a gap or an overlap
        header[name] = draw(entry_json(dtype, shape, offsets))
        data += draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))
        position += max(size, 0)
    items = list(header.items())
    items = draw(st.permutations(items))  # safetensors sorts by offsets, not by name
    text = json.dumps(dict(items), ensure_ascii=draw(st.booleans()))
    text += " " * draw(st.integers(0, 7))  # writers pad the header to 8 bytes
    if rare(draw):
        data += b"\x00"  # trailing garbage
    return frame(text.encode("utf-8"), data)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """Flip, drop or insert a few bytes anywhere in a generated file."""
    data = bytearray(draw(safetensors_files()))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "drop", "insert", "truncate"]))
        if op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "drop":
            del data[at]
        elif op == "insert":
            data.insert(at, draw(st.sampled_from(b'{}[]",:0-19e. \\u\xff')))
        else:
            del data[at:]
    return bytes(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | names,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8,
)


class TestDifferential:
    @FUZZ
    @given(safetensors_files())
    def test_generated_files(self, data: bytes) -> None:
        """On near-valid files our parser accepts exactly what safetensors accepts, same bytes."""
        assert ours(data) == oracle(data)
        assert_loader_agrees(data)

    @FUZZ
    @given(mutated_files())
    def test_mutated_files(self, data: bytes) -> None:
        """On randomly damaged files the two parsers agree, and the loader raises only ours."""
        assert ours(data) == oracle(data)
        assert_loader_agrees(data)

    @FUZZ
    @given(json_values, st.binary(max_size=8))
    def test_arbitrary_json_headers(self, header: Any, tail: bytes) -> None:
        """Any JSON value as the header gets the same verdict from both parsers."""
        data = frame(json.dumps(header).encode(), tail)
        assert ours(data) == oracle(data)
        assert_loader_agrees(data)

    @FUZZ
    @given(st.binary(max_size=64))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Random bytes (a short header length makes most of them reach the JSON parser)."""
        data = frame(data[:32], data[32:]) if len(data) % 2 else data
        assert ours(data) == oracle(data)
        assert_loader_agrees(data)


E = '"dtype":"U8","shape":[2],"data_offsets":[0,2]'


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_entry(template: str) -> str:
    """Put a valid 2-byte U8 entry wherever ``template`` says ``$E``."""
    return template.replace("$E", E)


class TestSerdeQuirks:
    @pytest.mark.parametrize(
        "header",
        [
            pytest.param(with_entry('{"a":{$E,"x":' + nested(125) + "}}"), id="depth-127"),
            pytest.param(with_entry('{"a":{$E,"x":' + nested(126) + "}}"), id="depth-128"),
            pytest.param(with_entry('{"a":{$E,"x":1e400}}'), id="float-out-of-range"),
            pytest.param(with_entry('{"a":{$E,"x":' + "9" * 400 + '}}'), id="int-out-of-range"),
            pytest.param(with_entry('{"a":{$E,"x":-' + "9" * 30 + '}}'), id="negative-beyond-i64"),
            pytest.param(with_entry('{"a":{$E,"x":' + "9" * 5000 + '}}'), id="int-digit-limit"),
            pytest.param(with_entry('{"a":{$E,"x":"\\ud800"}}'), id="lone-surrogate-ignored"),
            pytest.param(with_entry('{"a":{$E,"x":"\\ud83d\\ude00"}}'), id="surrogate-pair"),
            pytest.param(with_entry('{"\\udc00":{$E}}'), id="lone-surrogate-name"),
            pytest.param(with_entry('{"a":{$E,"x":NaN}}'), id="nan-literal"),
            pytest.param(with_entry('{"a":{$E,"x":1,"x":2}}'), id="repeated-unknown-field"),
            pytest.param(with_entry('{"a":{$E,"dtype":"U8"}}'), id="repeated-known-field"),
            pytest.param(with_entry('{"a":5,"a":{$E}}'), id="repeated-name-first-ill-typed"),
            pytest.param(with_entry('{"a":{$E},"a":{' + E + '}}'), id="repeated-name"),
            pytest.param('{"a":["U8",[2],[0,2]]}', id="array-entry"),
            pytest.param('{"a":["U8",[2],[0,2],1]}', id="array-entry-too-long"),
            pytest.param('{"a":{"dtype":{"U8":null},"shape":[2],"data_offsets":[0,2]}}',
                         id="tagged-dtype"),
            pytest.param('{"a":{"dtype":{"U8":[]},"shape":[2],"data_offsets":[0,2]}}',
                         id="tagged-dtype-not-null"),
            pytest.param(with_entry('{"z":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]},'
                                    '"a":{$E}}'), id="minus-zero"),
            pytest.param('{"a":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}}',
                         id="float-dim"),
            pytest.param('{"a":{"dtype":"U8","shape":[true,2],"data_offsets":[0,2]}}',
                         id="bool-dim"),
            pytest.param('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2,2]}}',
                         id="three-offsets"),
            pytest.param('{"a":{"dtype":"U8","shape":[2],"data_offsets":[2]}}', id="one-offset"),
            pytest.param(with_entry('{"a":{$E,"x":-' + "9" * 400 + "}}"),
                         id="negative-out-of-range"),
            pytest.param(with_entry('{"__metadata__":null,"a":{$E}}'), id="null-metadata"),
            pytest.param(with_entry('{"__metadata__":{},"__metadata__":{},"a":{$E}}'),
                         id="repeated-metadata"),
            pytest.param(with_entry('{"__metadata__":{"k":"1","k":"2"},"a":{$E}}'),
                         id="repeated-metadata-key"),
            pytest.param(with_entry('{"__metadata__":{"k":1},"a":{$E}}'), id="metadata-not-str"),
            pytest.param(with_entry('\ufeff{"a":{$E}}'), id="bom"),
            pytest.param(with_entry('{"a":{$E}}\x0b'), id="vertical-tab-after"),
            pytest.param(with_entry('{"a":{$E}}\t\r\n '), id="json-whitespace-after"),
            pytest.param('[]', id="array-header"),
        ],
    )  # fmt: skip
    def test_same_verdict_as_safetensors(self, header: str) -> None:
        """Each serde_json/serde quirk is mirrored: the same file gets the same verdict."""
        data = frame(header.encode("utf-8", "surrogatepass"), b"ab")

        assert ours(data) == oracle(data)

    @pytest.mark.parametrize(
        ("shape", "offsets"),
        [
            pytest.param([2**32, 2**32, 0], [0, 0], id="overflow-before-zero"),
            pytest.param([0, 2**32, 2**32], [0, 0], id="zero-before-overflow"),
            pytest.param([2**61], [0, 0], id="bits-overflow"),
            pytest.param([0, 2**64 - 1], [0, 0], id="u64-max-dim"),
            pytest.param([0, 2**64], [0, 0], id="dim-beyond-u64"),
            pytest.param([0], [0, 2**64 - 1], id="huge-offset"),
        ],
    )
    def test_size_arithmetic_matches_checked_usize(
        self, shape: list[int], offsets: list[int]
    ) -> None:
        """Sizes overflow exactly where safetensors' checked 64-bit arithmetic does."""
        header = {"a": {"dtype": "U64", "shape": shape, "data_offsets": offsets}}
        data = frame(json.dumps(header).encode())

        assert ours(data) == oracle(data)
        assert_loader_agrees(data)

    @pytest.mark.parametrize(
        "length",
        [
            pytest.param(_safetensors.MAX_HEADER_SIZE + 1, id="over-the-bound"),
            pytest.param(2**63, id="huge"),
            pytest.param(3, id="past-the-end"),
        ],
    )
    def test_header_length_bound(self, length: int) -> None:
        """A header length over 100,000,000 or past the end is refused, as by safetensors."""
        data = struct.pack("<Q", length) + b"{}"

        assert oracle(data) is None
        assert ours(data) is None
        with pytest.raises(cr.ModelLoadError) as info:
            loaders.safetensors(data)
        assert info.value.reason == cr.Reason.LOAD_ERROR

    def test_header_of_more_than_100_mb_is_refused_even_if_present(self) -> None:
        """A well-formed header one byte over the bound is refused, as safetensors does."""
        header = b"{}" + b" " * (_safetensors.MAX_HEADER_SIZE - 1)
        data = frame(header)

        assert oracle(data) is None
        assert ours(data) is None

    def test_short_file_is_refused(self) -> None:
        """Fewer than 8 bytes is refused by both."""
        assert oracle(b"\x02\x00") is None
        assert ours(b"\x02\x00") is None

    def test_unordered_offsets_are_sorted(self) -> None:
        """Entries listed out of offset order are accepted, as safetensors sorts them."""
        header = (
            '{"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},'
            '"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
        )
        data = frame(header.encode(), b"xy")

        assert ours(data) == oracle(data) == {"a": ("U8", [1], b"x"), "b": ("U8", [1], b"y")}

    @pytest.mark.parametrize(
        "tail", [pytest.param(b"a", id="short"), pytest.param(b"abc", id="long")]
    )
    def test_data_must_end_with_the_last_tensor(self, tail: bytes) -> None:
        """A data section shorter or longer than the tensors claim is refused."""
        data = frame((with_entry('{"a":{$E}}')).encode(), tail)

        assert oracle(data) is None
        assert ours(data) is None


# --- the numpy loader against safetensors.numpy --------------------------------------------

NUMPY_DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.float16, np.uint32,
                np.int32, np.float32, np.uint64, np.int64, np.float64, np.complex64]  # fmt: skip


def sample(dtype: Any, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Return an array of random bits (NaN payloads included) of ``dtype`` and ``shape``."""
    raw = np.random.default_rng(seed).bytes(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    array = np.frombuffer(raw, dtype=np.uint8).view(dtype).reshape(shape).copy()
    return array.astype(bool) if dtype is np.bool_ else array


def assert_bitwise_equal(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype, name
        assert actual[name].shape == array.shape, name
        assert actual[name].tobytes() == array.tobytes(), name


class TestEqualToSafetensors:
    @pytest.mark.parametrize("dtype", [pytest.param(d, id=np.dtype(d).name) for d in NUMPY_DTYPES])
    @pytest.mark.parametrize(
        "shape",
        [
            pytest.param((), id="scalar"),
            pytest.param((0,), id="empty"),
            pytest.param((3, 0, 2), id="empty-inner"),
            pytest.param((7,), id="vector"),
            pytest.param((2, 3, 5), id="3d"),
        ],
    )
    def test_every_numpy_dtype_and_shape(self, dtype: Any, shape: tuple[int, ...]) -> None:
        """Each numpy dtype safetensors supports, in every kind of shape, loads bit for bit."""
        data = safetensors.numpy.save({"t": sample(dtype, shape, seed=len(shape))})

        assert_bitwise_equal(loaders.safetensors(data), safetensors.numpy.load(data))

    def test_many_tensors_with_metadata(self) -> None:
        """A file of many tensors of mixed dtypes, with metadata, loads bit for bit."""
        tensors = {
            f"layer.{i}": sample(dtype, (i % 4, 3) if i % 5 else (), seed=i)
            for i, dtype in enumerate(NUMPY_DTYPES * 2)
        }
        data = safetensors.numpy.save(tensors, metadata={"format": "np", "ü": "√"})

        assert_bitwise_equal(loaders.safetensors(data), safetensors.numpy.load(data))

    def test_unaligned_offsets(self) -> None:
        """A header whose length is not a multiple of 8 still gives equal (unaligned) views."""
        header = b'{"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}'
        assert len(header) % 8
        data = frame(header, np.array([1.5, -0.0]).tobytes())

        loaded = loaders.safetensors(data)

        assert_bitwise_equal(loaded, safetensors.numpy.load(data))
        assert not loaded["a"].flags.aligned


ML_DTYPES = {
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}


class TestDtypesNumpyLacks:
    @pytest.mark.parametrize("name", sorted(ML_DTYPES))
    def test_loaded_with_ml_dtypes(self, name: str) -> None:
        """BF16 and F8 tensors become ml_dtypes arrays holding the file's exact bits."""
        dtype = np.dtype(getattr(ml_dtypes, ML_DTYPES[name]))
        raw = bytes(range(256))[: 6 * dtype.itemsize]
        data = one_tensor(name, [2, 3], raw)

        loaded = loaders.safetensors(data)["t"]

        assert loaded.dtype == dtype
        assert loaded.shape == (2, 3)
        assert loaded.tobytes() == raw
        assert not loaded.flags.writeable

    def test_without_ml_dtypes_bf16_is_refused_clearly(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without ml_dtypes a BF16 tensor is a ModelLoadError naming ml_dtypes and torch."""
        monkeypatch.setitem(sys.modules, "ml_dtypes", None)
        data = one_tensor("BF16", [1], b"\x80?")

        with pytest.raises(cr.ModelLoadError, match=r"ml_dtypes.*safetensors_torch") as info:
            loaders.safetensors(data)

        assert info.value.reason == cr.Reason.LOAD_ERROR

    @pytest.mark.parametrize("name", ["F4", "F6_E2M3", "F6_E3M2"])
    def test_packed_sub_byte_dtypes_are_refused(self, name: str) -> None:
        """F4/F6 pack several values per byte; numpy cannot view them, so they are refused."""
        size = 4 * _safetensors.DTYPE_BITS[name] // 8
        data = one_tensor(name, [4], bytes(size))
        assert oracle(data) is not None

        with pytest.raises(cr.ModelLoadError, match=name):
            loaders.safetensors(data)
