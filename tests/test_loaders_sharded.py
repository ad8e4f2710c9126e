"""Tests for loaders.safetensors_sharded: real sharded models, every inconsistency refused."""

from __future__ import annotations

import json
import pathlib
import sys
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from safetensors.numpy import load_file, save

import clarity_resilience as cr
from clarity_resilience import loaders
from clarity_resilience.instrumentation import Event, ModelLoadFailed

INDEX = "model.safetensors.index.json"
S1, S2, S3 = (f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3))
SHARDS: dict[str, dict[str, np.ndarray]] = {
    S1: {
        "embed.weight": np.arange(24, dtype=np.float32).reshape(4, 6) / 7,
        "embed.ids": np.array([1, 2**40, -3], dtype=np.int64),
    },
    S2: {
        "layer.0.weight": np.linspace(-1, 1, 12, dtype=np.float16).reshape(3, 4),
        "layer.0.mask": np.array([True, False, True]),
    },
    S3: {"head.bias": np.array([0, 255, 7], dtype=np.uint8), "head.empty": np.zeros((0, 2))},
}


def weight_map(shards: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, str]:
    return {tensor: shard for shard, tensors in shards.items() for tensor in tensors}


def index_bytes(mapping: dict[str, Any], **extra: Any) -> bytes:
    total = sum(a.nbytes for tensors in SHARDS.values() for a in tensors.values())
    return json.dumps({"metadata": {"total_size": total}, "weight_map": mapping, **extra}).encode()


def model_files(**overrides: bytes | None) -> dict[str, bytes]:
    """Return the files of a three-shard model (index, shards, config); None removes one."""
    files = {name: save(tensors) for name, tensors in SHARDS.items()}
    files[INDEX] = index_bytes(weight_map(SHARDS))
    files["config.json"] = b'{"hidden_size": 6}'
    for name, data in overrides.items():
        if data is None:
            del files[name]
        else:
            files[name] = data
    return files


def write_model(root: pathlib.Path, files: Mapping[str, bytes]) -> cr.Manifest:
    """Write ``files`` under ``root``; return a manifest built over them."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return cr.Manifest.build(root)


def expected(root: pathlib.Path, shards: list[str]) -> dict[str, np.ndarray]:
    """Load each shard with safetensors itself: the oracle."""
    merged: dict[str, np.ndarray] = {}
    for name in shards:
        merged.update(load_file(str(root / name)))
    return merged


def assert_bit_equal(actual: Mapping[str, np.ndarray], oracle: Mapping[str, np.ndarray]) -> None:
    assert set(actual) == set(oracle)
    for name, array in oracle.items():
        assert actual[name].dtype == array.dtype, name
        assert actual[name].shape == array.shape, name
        assert actual[name].tobytes() == array.tobytes(), name


def refused(files: Mapping[str, Any]) -> loaders.ShardIndexError:
    with pytest.raises(loaders.ShardIndexError) as caught:
        loaders.safetensors_sharded(files)
    assert isinstance(caught.value, cr.ModelLoadError)
    assert caught.value.reason is cr.Reason.LOAD_ERROR
    return caught.value


def without(mapping: dict[str, str], tensor: str) -> dict[str, str]:
    return {k: v for k, v in mapping.items() if k != tensor}


class TestAccept:
    def test_equals_safetensors_bit_for_bit(self, tmp_path: pathlib.Path) -> None:
        """Every tensor of every shard, in the index's order, as safetensors loads it."""
        files = model_files()
        write_model(tmp_path, files)

        model = loaders.safetensors_sharded(files)

        assert_bit_equal(model, expected(tmp_path, [S1, S2, S3]))
        assert list(model) == list(weight_map(SHARDS))
        assert not any(array.flags.writeable for array in model.values())

    def test_arrays_view_the_verified_buffers(self) -> None:
        """Nothing is copied: each array views its shard's buffer (a read-only memoryview)."""
        owners = {name: bytearray(data) for name, data in model_files().items()}
        views = {name: memoryview(data).toreadonly() for name, data in owners.items()}

        model = loaders.safetensors_sharded(types.MappingProxyType(views))

        weight = SHARDS[S1]["embed.weight"]
        start = bytes(owners[S1]).find(weight.tobytes())
        last = start + weight.nbytes - 4
        owners[S1][last : last + 4] = np.float32(42).tobytes()
        assert float(model["embed.weight"][-1, -1]) == 42.0
        assert float(model["embed.weight"][0, 1]) == float(weight[0, 1])

    def test_copy_gives_private_writable_arrays(self) -> None:
        """copy=True, called directly or as a loader factory, gives writable private copies."""
        files = model_files()
        factory = loaders.safetensors_sharded(copy=True)
        assert factory.__name__ == "safetensors_sharded(copy=True)"
        assert loaders.safetensors_sharded(copy=False) is loaders.safetensors_sharded

        for model in (factory(files), loaders.safetensors_sharded(files, copy=True)):
            assert_bit_equal(model, loaders.safetensors_sharded(files))
            weight = model["embed.weight"]
            assert weight.flags.writeable
            weight[0, 0] = 99.0
            assert loaders.safetensors_sharded(files)["embed.weight"][0, 0] == 0.0

    def test_single_file_without_index_is_the_whole_model(self, tmp_path: pathlib.Path) -> None:
        """A lone model.safetensors (no index) loads as one shard; other files are ignored."""
        files = {"model.safetensors": save(SHARDS[S2]), "config.json": b"{}"}
        write_model(tmp_path, files)

        model = loaders.safetensors_sharded(files)

        assert_bit_equal(model, expected(tmp_path, ["model.safetensors"]))

    def test_another_index_name_is_found_when_it_is_the_only_one(self) -> None:
        """Without model.safetensors.index.json, the one *.safetensors.index.json is used."""
        files = model_files(**{INDEX: None})
        files["consolidated.safetensors.index.json"] = index_bytes(weight_map(SHARDS))

        assert_bit_equal(
            loaders.safetensors_sharded(files), loaders.safetensors_sharded(model_files())
        )

    def test_model_index_wins_over_another_index(self) -> None:
        """model.safetensors.index.json is the index even next to another (unread) one."""
        files = model_files()
        files["other.safetensors.index.json"] = b"not json"

        assert set(loaders.safetensors_sharded(files)) == set(weight_map(SHARDS))

    def test_index_in_a_subdirectory_names_shards_relative_to_it(self) -> None:
        """An index under unet/ maps to shards in unet/ (a diffusers-style component)."""
        files = {f"unet/{name}": data for name, data in model_files().items()}
        files["unet/diffusion_pytorch_model.safetensors.index.json"] = files.pop(f"unet/{INDEX}")

        model = loaders.safetensors_sharded(files)

        assert_bit_equal(model, loaders.safetensors_sharded(model_files()))

    def test_unknown_index_fields_and_absent_metadata_are_accepted(self) -> None:
        """metadata is optional; other top-level fields are ignored (forward compatible)."""
        bare = json.dumps({"weight_map": weight_map(SHARDS), "format": "pt"}).encode()
        null = json.dumps({"weight_map": weight_map(SHARDS), "metadata": None}).encode()

        for index in (bare, null):
            assert set(loaders.safetensors_sharded(model_files(**{INDEX: index}))) == set(
                weight_map(SHARDS)
            )


MAP = weight_map(SHARDS)
BAD_JSON = "the index is not UTF-8 JSON"
UNSAFE = "not a safe relative file name"


def raw_index(text: str) -> dict[str, bytes | None]:
    return {INDEX: text.encode()}


# (overrides, extra files, message pattern, expected .file, expected .tensor)
REFUSALS = [
    pytest.param({S2: None}, {}, f"in '{S2}', which is not among the files", S2,
                 "layer.0.weight", id="index-names-a-missing-shard"),
    pytest.param({INDEX: index_bytes({**MAP, "ghost": S1})}, {}, "which does not hold it", S1,
                 "ghost", id="tensor-its-shard-does-not-hold"),
    pytest.param({INDEX: index_bytes({**MAP, "head.bias": S1})}, {},
                 f"in '{S1}', which does not hold it", S1, "head.bias",
                 id="index-puts-a-tensor-in-the-wrong-shard"),
    pytest.param({S1: save({**SHARDS[S1], "head.bias": SHARDS[S3]["head.bias"]})}, {},
                 f"'{S1}' holds 'head.bias', but the index puts it in '{S3}'", S1, "head.bias",
                 id="tensor-held-by-two-shards"),
    pytest.param({INDEX: index_bytes(without(MAP, "layer.0.mask"))}, {},
                 "holds 'layer.0.mask', but the index does not list it", S2, "layer.0.mask",
                 id="tensor-the-index-does-not-list"),
    pytest.param(raw_index('{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}'), {},
                 "weight_map repeats the key 'a'", INDEX, "a", id="tensor-twice-in-weight-map"),
    pytest.param({}, {"extra.safetensors": save({"x": np.ones(2)})},
                 "'extra.safetensors' is a safetensors file that the index does not mention",
                 "extra.safetensors", None, id="shard-the-index-does-not-mention"),
    pytest.param({S3: None, INDEX: index_bytes({k: v for k, v in MAP.items() if v != S3})},
                 {f"sub/{S3}": save(SHARDS[S3])}, "does not mention", f"sub/{S3}", None,
                 id="unmentioned-shard-in-a-subdirectory"),
    pytest.param({S3: save(SHARDS[S3])[:-1]}, {}, f"shard '{S3}': not a valid safetensors",
                 S3, None, id="shard-not-safetensors"),
    pytest.param({INDEX: b"{not json"}, {}, BAD_JSON, INDEX, None, id="not-json"),
    pytest.param({INDEX: b'{"weight_map": {"a": "\xff.safetensors"}}'}, {}, BAD_JSON, INDEX,
                 None, id="not-utf8"),
    pytest.param(raw_index('{"weight_map": {"a": NaN}}'), {}, BAD_JSON, INDEX, None,
                 id="nan-constant"),
    pytest.param(raw_index("[" * 100_000), {}, BAD_JSON, INDEX, None, id="nested-too-deeply"),
    pytest.param(raw_index("[]"), {}, "the index must be a JSON object", INDEX, None,
                 id="not-an-object"),
    pytest.param(raw_index('{"metadata": {}}'), {}, "has no weight_map", INDEX, None,
                 id="no-weight-map"),
    pytest.param(raw_index('{"weight_map": ["a"]}'), {}, "weight_map must be a JSON object",
                 INDEX, None, id="weight-map-not-an-object"),
    pytest.param(raw_index('{"weight_map": {}}'), {}, "lists no tensor", INDEX, None,
                 id="empty-weight-map"),
    pytest.param(raw_index('{"weight_map": {"a": "x.safetensors"}, "weight_map": {}}'), {},
                 "the index repeats the key 'weight_map'", INDEX, "weight_map",
                 id="weight-map-twice"),
    pytest.param({INDEX: index_bytes(MAP).replace(b'"metadata": {', b'"metadata": [{', 1)
                  .replace(b"}, \"weight_map\"", b"}], \"weight_map\"", 1)}, {},
                 "metadata must be a JSON object", INDEX, None, id="metadata-not-an-object"),
    *(
        pytest.param({INDEX: index_bytes({**MAP, "head.bias": shard})}, {}, UNSAFE, INDEX,
                     "head.bias", id=f"shard-name-{label}")
        for label, shard in [
            ("parent", f"../{S3}"), ("absolute", f"/{S3}"), ("backslash", f"..\\{S3}"),
            ("dot", f"./{S3}"), ("empty-part", f"sub//{S3}"), ("empty", ""),
            ("nul", f"{S3}\x00"), ("number", 3), ("null", None), ("list", [S3]),
            ("inner-parent", f"sub/../{S3}"), ("trailing-slash", f"{S3}/"),
        ]
    ),
]  # fmt: skip


class TestRefuse:
    @pytest.mark.parametrize(("overrides", "extra", "match", "file", "tensor"), REFUSALS)
    def test_inconsistent_or_malformed_model_is_refused(
        self,
        overrides: dict[str, bytes | None],
        extra: dict[str, bytes],
        match: str,
        file: str,
        tensor: str | None,
    ) -> None:
        """Each inconsistency is a ShardIndexError (load_error) naming the file and tensor."""
        error = refused({**model_files(**overrides), **extra})

        assert match in str(error)
        assert (error.file, error.tensor) == (file, tensor)

    def test_invalid_shard_keeps_the_parser_error_as_cause(self) -> None:
        """A shard safetensors would refuse is reported with the parser's error chained."""
        error = refused(model_files(**{S1: save(SHARDS[S1]) + b"\x00"}))

        assert isinstance(error.__cause__, cr.ModelLoadError)
        assert "do not cover the data section" in str(error)

    def test_several_indexes_without_the_model_index_are_refused(self) -> None:
        """Two *.safetensors.index.json and no model.safetensors.index.json: ambiguous."""
        files = model_files(**{INDEX: None})
        files["a.safetensors.index.json"] = files["b.safetensors.index.json"] = index_bytes(MAP)

        error = refused(files)

        assert "several safetensors indexes" in str(error)
        assert error.file == "a.safetensors.index.json"

    @pytest.mark.parametrize("count", [0, 2])
    def test_no_index_needs_exactly_one_safetensors_file(self, count: int) -> None:
        """Without an index, zero or several .safetensors files are refused."""
        files = {f"part{i}.safetensors": save(SHARDS[S2]) for i in range(count)}
        files["config.json"] = b"{}"

        error = refused(files)

        assert f"no {INDEX} and {count} safetensors files" in str(error)
        assert error.file is None

    def test_oversized_index_is_refused_before_parsing(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An index larger than the safetensors header bound is refused unread."""
        from clarity_resilience import _sharded

        monkeypatch.setattr(_sharded, "MAX_HEADER_SIZE", 10)

        error = refused(model_files())

        assert "larger than 10 bytes" in str(error)


class FakeTorch:
    """A numpy-backed stand-in for torch.frombuffer/empty (torch is not installed here)."""

    def __init__(self) -> None:
        self.module = types.ModuleType("torch")
        for name in ("bool", "uint8", "int64", "float16", "float32", "float64"):
            setattr(self.module, name, np.dtype(name))
        self.module.frombuffer = self.frombuffer  # type: ignore[attr-defined]
        self.module.empty = lambda shape, dtype: FakeTensor(np.empty(shape, dtype))  # type: ignore[attr-defined]
        self.buffers: list[Any] = []

    def frombuffer(self, buffer: Any, *, dtype: Any, count: int, offset: int) -> FakeTensor:
        self.buffers.append(buffer)
        array = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
        if not array.flags.writeable:
            warnings.warn("The given buffer is not writable", UserWarning, stacklevel=2)
        return FakeTensor(array)


class FakeTensor:
    def __init__(self, array: np.ndarray, cloned: bool = False) -> None:
        self.array, self.cloned = array, cloned

    def reshape(self, shape: tuple[int, ...]) -> FakeTensor:
        return FakeTensor(self.array.reshape(shape), self.cloned)

    def clone(self) -> FakeTensor:
        return FakeTensor(self.array.copy(), cloned=True)


class TestShardedTorch:
    def test_tensors_view_every_shard(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """One dict of tensors, each from torch.frombuffer over its own shard's bytes."""
        fake = FakeTorch()
        monkeypatch.setitem(sys.modules, "torch", fake.module)
        files = model_files()

        tensors = loaders.safetensors_sharded_torch(files)

        assert {n: t.array.tobytes() for n, t in tensors.items()} == {
            n: a.tobytes() for n, a in loaders.safetensors_sharded(files).items()
        }
        assert list(tensors) == list(MAP)
        assert {id(b) for b in fake.buffers} == {id(files[s]) for s in (S1, S2, S3)}
        assert not any(t.cloned for t in tensors.values())

    def test_copy_clones_every_tensor(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """safetensors_sharded_torch(copy=True) is a loader that clones each tensor."""
        monkeypatch.setitem(sys.modules, "torch", FakeTorch().module)
        loader = loaders.safetensors_sharded_torch(copy=True)
        assert loader.__name__ == "safetensors_sharded_torch(copy=True)"
        assert loaders.safetensors_sharded_torch(copy=False) is loaders.safetensors_sharded_torch

        tensors = loader(model_files())

        assert all(t.cloned for t in tensors.values())

    def test_inconsistent_index_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The torch variant checks the index as strictly; a missing shard never reaches torch."""
        fake = FakeTorch()
        monkeypatch.setitem(sys.modules, "torch", fake.module)

        with pytest.raises(loaders.ShardIndexError, match="not among the files"):
            loaders.safetensors_sharded_torch(model_files(**{S2: None}))
        assert fake.buffers == []
        with pytest.raises(loaders.ShardIndexError, match="index puts it in"):
            loaders.safetensors_sharded_torch(
                model_files(**{S1: save({**SHARDS[S1], "head.bias": np.zeros(3, np.uint8)})})
            )

    def test_missing_torch_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without torch, the load fails with the extra to install."""
        monkeypatch.setitem(sys.modules, "torch", None)

        with pytest.raises(cr.ModelLoadError, match=r"clarity-resilience\[torch\]"):
            loaders.safetensors_sharded_torch(model_files())


def spying(loader: Callable[[Mapping[str, bytes]], Any], calls: list[int]) -> Any:
    def spy(files: Mapping[str, bytes]) -> Any:
        calls.append(1)
        return loader(files)

    return spy


class TestEndToEnd:
    def test_load_verified_files_accepts_the_model(self, tmp_path: pathlib.Path) -> None:
        """Through load_verified_files, the model equals safetensors' own load of the shards."""
        manifest = write_model(tmp_path, model_files())

        model = cr.load_verified_files(tmp_path, manifest, loader=loaders.safetensors_sharded)

        assert_bit_equal(model, expected(tmp_path, [S1, S2, S3]))

    @pytest.mark.parametrize("tamper", ["one-byte", "swapped", "missing"])
    def test_bad_shard_never_reaches_the_loader(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry, tamper: str
    ) -> None:
        """A tampered, swapped or deleted shard is an integrity refusal; the loader never runs."""
        manifest = write_model(tmp_path, model_files())
        first, second = tmp_path / S1, tmp_path / S2
        if tamper == "one-byte":
            data = bytearray(second.read_bytes())
            data[-1] ^= 1
            second.write_bytes(bytes(data))
        elif tamper == "swapped":
            one, two = first.read_bytes(), second.read_bytes()
            first.write_bytes(two)
            second.write_bytes(one)
        else:
            second.unlink()
        calls: list[int] = []

        with pytest.raises(cr.IntegrityError):
            cr.load_verified_files(
                tmp_path,
                manifest,
                loader=spying(loaders.safetensors_sharded, calls),
                registry=registry,
            )
        assert calls == []

    @pytest.mark.parametrize(
        ("overrides", "match"),
        [
            pytest.param({S2: None}, "not among the files", id="shard-never-published"),
            pytest.param({INDEX: index_bytes({**MAP, "head.bias": S1})}, "does not hold it",
                         id="inconsistent-index"),
        ],
    )  # fmt: skip
    def test_verified_but_inconsistent_model_is_a_load_error(
        self,
        tmp_path: pathlib.Path,
        registry: CollectorRegistry,
        events: list[Event],
        overrides: dict[str, bytes | None],
        match: str,
    ) -> None:
        """Files that all match their digests but disagree are refused, audited and counted."""
        manifest = write_model(tmp_path, model_files(**overrides))

        with pytest.raises(cr.ModelLoadError, match=match) as caught:
            cr.load_verified_files(
                tmp_path, manifest, loader=loaders.safetensors_sharded, registry=registry
            )
        assert caught.value.reason is cr.Reason.LOAD_ERROR
        assert isinstance(caught.value, loaders.ShardIndexError)
        (failed,) = [e for e in events if isinstance(e, ModelLoadFailed)]
        assert failed.reason is cr.Reason.LOAD_ERROR

    def test_guard_serves_and_keeps_serving_through_bad_versions(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """ModelGuard(entries='*'): v1 serves; a swapped-shard or inconsistent v2 is refused."""
        good = tmp_path / "v1"
        good.mkdir()
        write_model(good, model_files())
        manifest = tmp_path / "v1.json"
        cr.Manifest.build(good).write(manifest, format="json")
        guard = cr.ModelGuard(
            "m",
            path=good,
            manifest=manifest,
            entries="*",
            loader=loaders.safetensors_sharded,
            registry=registry,
        )
        assert_bit_equal(guard.load(), expected(good, [S1, S2, S3]))

        swapped = tmp_path / "v2"
        swapped.mkdir()
        write_model(swapped, model_files())
        (swapped / S1).write_bytes((good / S2).read_bytes())
        (swapped / S2).write_bytes((good / S1).read_bytes())
        with pytest.raises(cr.IntegrityError) as caught:  # size, then digest, differ
            guard.reload(path=swapped, manifest=manifest)
        assert str(caught.value.path).endswith(S1)

        inconsistent = tmp_path / "v3"
        inconsistent.mkdir()
        write_model(inconsistent, model_files(**{INDEX: index_bytes(without(MAP, "head.bias"))}))
        manifest3 = tmp_path / "v3.json"
        cr.Manifest.build(inconsistent).write(manifest3, format="json")
        with pytest.raises(cr.ModelLoadError, match="does not list it"):
            guard.reload(path=inconsistent, manifest=manifest3)

        assert guard.predict(lambda model: float(model["embed.weight"][1, 0])) == pytest.approx(
            6 / 7
        )
