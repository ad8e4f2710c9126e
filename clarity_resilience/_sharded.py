"""Sharded safetensors: find and strictly check the index, then join the shards.

A Hugging Face sharded checkpoint is a ``model.safetensors.index.json`` whose
``weight_map`` maps every tensor name to the shard file that holds it, plus the shards.
Every inconsistency between the index and the verified shards is refused, so the model
that loads is exactly the one the index describes: no missing shard, no tensor missing
from its shard, no tensor in two shards, no shard the index does not mention.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ._safetensors import MAX_HEADER_SIZE
from .exceptions import ModelLoadError

__all__ = ["INDEX_NAME", "Index", "ShardIndexError", "find_index", "join", "parse_index"]

#: The index name transformers writes (``SAFE_WEIGHTS_INDEX_NAME``).
INDEX_NAME = "model.safetensors.index.json"
_INDEX_SUFFIX = ".safetensors.index.json"
_SHARD_SUFFIX = ".safetensors"

_T = TypeVar("_T")


class ShardIndexError(ModelLoadError):
    """A sharded safetensors model whose index and shards disagree, or a malformed index.

    Attributes:
        file: The file at fault (the index, or a shard), as named in the mapping.
        tensor: The tensor at fault, if one is.
    """

    def __init__(
        self, message: str, *, file: str | None = None, tensor: str | None = None
    ) -> None:
        super().__init__(message)
        self.file = file
        self.tensor = tensor


@dataclass(frozen=True, slots=True)
class Index:
    """A parsed index: its name, tensor -> shard (mapping keys) in file order, and metadata."""

    name: str
    weight_map: dict[str, str]
    metadata: dict[str, Any] | None


class _Pairs(list[tuple[str, Any]]):
    """A JSON object kept as its pairs, so that a repeated key stays visible."""


def _refuse_constant(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")


def _object(value: Any, what: str, index: str) -> dict[str, Any]:
    if not isinstance(value, _Pairs):
        raise ShardIndexError(f"{what} must be a JSON object", file=index)
    result: dict[str, Any] = {}
    for key, item in value:
        if key in result:
            # json.loads would keep the last value: a tensor "in two shards" in one index.
            raise ShardIndexError(f"{what} repeats the key {key!r}", file=index, tensor=key)
        result[key] = item
    return result


def _shard_path(value: Any, tensor: str, index: str) -> str:
    """Return the mapping key of the shard ``value`` names, relative to the index."""
    parts = value.split("/") if isinstance(value, str) else []
    if (
        not parts
        or value.startswith("/")
        or "\\" in value
        or "\x00" in value
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ShardIndexError(
            f"the index maps {tensor!r} to {value!r:.80}, which is not a safe relative file name",
            file=index,
            tensor=tensor,
        )
    return posixpath.join(posixpath.dirname(index), value)


def find_index(files: Mapping[str, Any]) -> str | None:
    """Return the mapping key of the index, or None if there is none.

    ``model.safetensors.index.json`` (at the top) wins; otherwise exactly one file named
    ``*.safetensors.index.json`` (anywhere) must exist.

    Raises:
        ShardIndexError: Several candidate indexes and none is ``model.safetensors.index.json``.
    """
    if INDEX_NAME in files:
        return INDEX_NAME
    found = sorted(name for name in files if name.endswith(_INDEX_SUFFIX))
    if len(found) > 1:
        raise ShardIndexError(
            f"several safetensors indexes ({', '.join(found)}); select one model's files "
            "with entries=",
            file=found[0],
        )
    return found[0] if found else None


def parse_index(name: str, data: Any) -> Index:
    """Parse the index ``name`` strictly (``data`` is its verified bytes).

    Raises:
        ShardIndexError: Not UTF-8 JSON, not an object, no ``weight_map`` object of
            tensor name -> safe relative shard name, a repeated key, or a ``metadata``
            that is not an object.
    """
    view = memoryview(data).cast("B")
    if len(view) > MAX_HEADER_SIZE:
        raise ShardIndexError(f"the index is larger than {MAX_HEADER_SIZE} bytes", file=name)
    try:
        tree = json.loads(
            bytes(view).decode("utf-8"), object_pairs_hook=_Pairs, parse_constant=_refuse_constant
        )
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise ShardIndexError(f"the index is not UTF-8 JSON: {e}", file=name) from None
    top = _object(tree, "the index", name)
    if "weight_map" not in top:
        raise ShardIndexError("the index has no weight_map", file=name)
    raw_map = _object(top["weight_map"], "weight_map", name)
    if not raw_map:
        raise ShardIndexError("the index's weight_map lists no tensor", file=name)
    weight_map = {tensor: _shard_path(shard, tensor, name) for tensor, shard in raw_map.items()}
    metadata = top.get("metadata")
    return Index(
        name, weight_map, None if metadata is None else _object(metadata, "metadata", name)
    )


def _check_files(index: Index, files: Mapping[str, Any]) -> list[str]:
    """Return the shards, in index order; refuse a missing or an unmentioned shard."""
    shards = list(dict.fromkeys(index.weight_map.values()))
    for tensor, shard in index.weight_map.items():
        if shard not in files:
            raise ShardIndexError(
                f"the index puts {tensor!r} in {shard!r}, which is not among the files",
                file=shard,
                tensor=tensor,
            )
    mentioned = set(shards)
    for name in sorted(files):
        if name.endswith(_SHARD_SUFFIX) and name not in mentioned:
            raise ShardIndexError(
                f"{name!r} is a safetensors file that the index does not mention", file=name
            )
    return shards


def _check_shard(index: Index, shard: str, held: Mapping[str, Any]) -> None:
    """Refuse a shard that lacks a tensor the index puts in it, or holds any other."""
    for tensor, owner in index.weight_map.items():
        if owner == shard and tensor not in held:
            raise ShardIndexError(
                f"the index puts {tensor!r} in {shard!r}, which does not hold it",
                file=shard,
                tensor=tensor,
            )
    for tensor in held:
        elsewhere = index.weight_map.get(tensor)
        if elsewhere != shard:
            where = (
                "the index does not list it"
                if elsewhere is None
                else f"the index puts it in {elsewhere!r}"
            )
            raise ShardIndexError(
                f"{shard!r} holds {tensor!r}, but {where}", file=shard, tensor=tensor
            )


def join(files: Mapping[str, Any], load_shard: Callable[[Any], dict[str, _T]]) -> dict[str, _T]:
    """Load every shard with ``load_shard`` and return one dict, in the index's order.

    Without an index, exactly one ``*.safetensors`` file is loaded as the whole model.

    Raises:
        ShardIndexError: The index or the files are inconsistent (see the module docstring).
        ModelLoadError: A shard is not a valid safetensors file (``file`` names it).
    """
    name = find_index(files)
    if name is None:
        single = [key for key in files if key.endswith(_SHARD_SUFFIX)]
        if len(single) != 1:
            raise ShardIndexError(
                f"no {INDEX_NAME} and {len(single)} safetensors files; a model without an "
                "index must be exactly one .safetensors file",
                file=None,
            )
        return _load(single[0], files[single[0]], load_shard)
    index = parse_index(name, files[name])
    loaded = {
        shard: _load(shard, files[shard], load_shard) for shard in _check_files(index, files)
    }
    for shard, held in loaded.items():
        _check_shard(index, shard, held)
    return {tensor: loaded[shard][tensor] for tensor, shard in index.weight_map.items()}


def _load(shard: str, data: Any, load_shard: Callable[[Any], dict[str, _T]]) -> dict[str, _T]:
    try:
        return load_shard(data)
    except ModelLoadError as e:
        raise ShardIndexError(f"shard {shard!r}: {e}", file=shard) from e
