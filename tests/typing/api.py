"""The public API as a user's code types it: checked by ``mypy --strict``, never run.

Each ``assert_type`` pins what a user's type checker sees. A signature that drifts
(a result typed ``Any`` where it was precise, ``Never`` where a loader is omitted, a
guard that needs an annotation) fails the typecheck session, not a user.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any, assert_type

import numpy as np
from numpy.typing import NDArray

import clarity_resilience as cr
from clarity_resilience.sources import HttpSource

PATH = pathlib.Path("model.safetensors")
DIGEST = "0" * 64


def parse(data: bytes) -> list[int]:
    return list(data)


def weights(model: dict[str, NDArray[Any]], scale: float) -> float:
    return float(model["w"].sum()) * scale


async def aweights(model: dict[str, NDArray[Any]], scale: float) -> float:
    return weights(model, scale)


def loading() -> None:
    assert_type(cr.read_verified(PATH, sha256=DIGEST), bytes)
    assert_type(cr.sha256_file(PATH), str)
    # Without a loader the format is detected at run time: documented as Any.
    assert_type(cr.load_verified(PATH, sha256=DIGEST), Any)
    assert_type(cr.load_verified(PATH, sha256=DIGEST, loader=parse), list[int])
    assert_type(cr.load_verified("m.bin", sha256=DIGEST, loader=bytes, size=3), bytes)
    assert_type(
        cr.load_verified(PATH, sha256=DIGEST, loader=cr.loaders.safetensors),
        dict[str, NDArray[Any]],
    )


async def anything(model: Any, scale: float) -> float:
    return scale


async def guard_without_a_loader() -> None:
    guard = cr.ModelGuard("m", path=PATH, sha256=DIGEST)  # no annotation needed
    assert_type(guard, cr.ModelGuard[Any])
    assert_type(guard.model, Any)
    assert_type(guard.load(), Any)
    assert_type(guard.predict(weights, 2.0), float)
    # An Any in fn's signature must not make the overloads ambiguous (and the result Any).
    assert_type(await guard.predict_async(anything, 2.0), float)
    assert_type(await guard.predict_async(aweights, 2.0), float)
    assert_type(await guard.predict_async(weights, 2.0), float)
    manifest_guard = cr.ModelGuard("m", path="dir", manifest="dir/SHA256SUMS", entry="w")
    assert_type(manifest_guard, cr.ModelGuard[Any])


async def guard_with_a_loader(source: HttpSource) -> None:
    guard = cr.ModelGuard("m", path=PATH, sha256=DIGEST, loader=cr.loaders.safetensors)
    assert_type(guard, cr.ModelGuard[dict[str, NDArray[Any]]])
    assert_type(guard.model, dict[str, NDArray[Any]])
    assert_type(guard.load(), dict[str, NDArray[Any]])
    assert_type(await guard.load_async(), dict[str, NDArray[Any]])
    assert_type(guard.reload(path=PATH, sha256=DIGEST, size=3), dict[str, NDArray[Any]])
    assert_type(await guard.reload_async(source=source), dict[str, NDArray[Any]])
    assert_type(guard.ready, bool)
    assert_type(guard.status(), dict[str, Any])

    # predict: fn(model, *args) with fn's result type; arguments are checked.
    assert_type(guard.predict(weights, 2.0), float)
    assert_type(guard.predict(len), int)
    guard.predict(weights, "2.0")  # type: ignore[arg-type]
    guard.predict(weights)  # type: ignore[call-arg]

    # predict_async: the awaited result, for async and plain functions alike.
    assert_type(await guard.predict_async(aweights, 2.0), float)
    assert_type(await guard.predict_async(weights, 2.0), float)
    await guard.predict_async(aweights, "2.0")  # type: ignore[call-overload]

    # A per-call deadline keeps the same typing (and leaves fn's keywords alone).
    assert_type(guard.with_timeout(1.5).predict(weights, 2.0), float)
    assert_type(await guard.with_timeout(1.5).predict_async(aweights, 2.0), float)
    assert_type(await guard.with_timeout(1.5).predict_async(weights, 2.0), float)
    guard.with_timeout(1.5).predict(weights, "2.0")  # type: ignore[arg-type]

    numpy_guard = cr.ModelGuard("n", path=PATH, sha256=DIGEST, loader=cr.loaders.numpy)
    assert_type(numpy_guard.model, NDArray[Any] | dict[str, NDArray[Any]])


def breaker() -> None:
    b = cr.Breaker("b", fail_max=3, reset_timeout=10.0)

    def add(x: int, y: int) -> int:
        return x + y

    async def aadd(x: int, y: int) -> int:
        return x + y

    assert_type(b.call(add, 1, 2), int)
    b.call(add, 1, "2")  # type: ignore[arg-type]
    assert_type(b.state, str)
    assert_type(b.retry_after(), float)

    @b
    def decorated(x: int) -> str:
        return str(x)

    @b
    async def adecorated(x: int) -> str:
        return str(x)

    assert_type(decorated(1), str)
    with b.guard():
        pass


def fleet_breaker() -> None:
    storage = cr.RedisStorage("redis://127.0.0.1:6379/0", namespace="ranker", timeout=0.1)
    b = cr.Breaker("ranker", storage=storage)
    assert_type(b.state, str)
    cr.RedisStorage(6379)  # type: ignore[arg-type]


async def breaker_async() -> None:
    b = cr.Breaker("b")

    async def aadd(x: int, y: int) -> int:
        return x + y

    @b
    async def adecorated(x: int) -> str:
        return str(x)

    assert_type(await b.call_async(aadd, 1, 2), int)
    assert_type(await adecorated(1), str)
    async with b.guard():
        pass


def arrays() -> NDArray[np.float32]:
    return np.zeros(3, np.float32)


def from_files(files: Mapping[str, bytes]) -> dict[str, NDArray[Any]]:
    return {name: np.frombuffer(data, np.uint8) for name, data in files.items()}


def from_path(path: pathlib.Path) -> str:
    return str(path)


def warm(model: dict[str, NDArray[Any]]) -> None:
    del model


def directories(manifest: cr.Manifest) -> None:
    signed = cr.ModelGuard(
        "m",
        path="model",
        signature="model/model.sig",
        public_key="key.pub",
        entry="model.safetensors",
        loader=cr.loaders.safetensors,
        warmup=warm,
        warmup_timeout=30.0,
    )
    assert_type(signed, cr.ModelGuard[dict[str, NDArray[Any]]])
    sharded = cr.ModelGuard(
        "m",
        path="model",
        manifest="manifest.json",
        manifest_sha256=DIGEST,
        entries="*.safetensors",
        loader=from_files,
        warmup=warm,
    )
    assert_type(sharded, cr.ModelGuard[dict[str, NDArray[Any]]])
    snapshot = cr.ModelGuard(
        "m",
        path="model",
        certificate_chain=["root.pem"],
        signature="model/model.sig",
        materialize_into="/var/cache/models",
        loader=from_path,
    )
    assert_type(snapshot, cr.ModelGuard[str])
    assert_type(
        cr.load_verified_files("model", manifest, loader=from_files, entries=["a", "b"]),
        dict[str, NDArray[Any]],
    )
    signed_manifest = cr.Manifest.from_signature("model.sig", public_key="key.pub")
    assert_type(signed_manifest, cr.SignedManifest)
    assert_type(signed_manifest.signer, str)
    # Several files are a mapping, never bytes: a bytes loader with entries= is a type error.
    cr.ModelGuard("m", path="d", manifest="m", entries="*", loader=parse)  # type: ignore[arg-type]
