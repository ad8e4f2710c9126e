"""Chunked benchmark: one huge file verified on every core, against per-chunk digests.

SHA-256 of one file is sequential, so ``read_verified`` hashes at one core's speed
however many cores there are. ``clarity_resilience._chunked.read_verified_chunks``
checks a digest per 64 MiB chunk instead, reading and hashing chunks on one thread
per CPU into slices of one buffer.

(a) ``read_verified_chunks`` of a 2 GiB file (``--quick``: 256 MiB) against the
    single-threaded verified read ``cr.read_verified`` of the same file (same open
    rules, one whole-file digest). Target: <= 0.56 (1.8x faster on 2 cores).
    Also reported against bare ``hashlib.file_digest`` (one core's hashing floor) and
    ``chunk_digests`` (the parallel hashing floor: no buffer kept).

The file lives on ``/dev/shm`` (tmpfs: always "page cache warm") when it has room,
else in the temporary directory after one warm-up read. Timings are medians of N
interleaved runs after one untimed warm-up run each (see ``_common.measure``).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile
from typing import Any

import numpy as np
from _common import log, measure, target
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience import instrumentation
from clarity_resilience._chunked import DEFAULT_CHUNK_SIZE, chunk_digests, read_verified_chunks

MIB = 1024 * 1024
GIB = 1024 * MIB


def _scratch_dir(nbytes: int) -> str | None:
    """Return /dev/shm if it can hold the file twice over (file + the process's buffers)."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and shutil.disk_usage(shm).free > 2 * nbytes:
        return shm
    return None


def _write_random(path: pathlib.Path, nbytes: int) -> None:
    rng = np.random.default_rng(2)
    with open(path, "wb") as f:
        for _ in range(nbytes // (64 * MIB)):
            f.write(rng.bytes(64 * MIB))
        f.write(rng.bytes(nbytes % (64 * MIB)))


def _file_digest(path: pathlib.Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def bench_chunked(workdir: pathlib.Path, nbytes: int, repeat: int) -> dict[str, Any]:
    path = workdir / "huge.bin"
    log(f"chunked: writing {nbytes // MIB} MiB to {workdir}")
    _write_random(path, nbytes)
    digests = chunk_digests(path, chunk_size=DEFAULT_CHUNK_SIZE)
    whole = _file_digest(path)
    registry = CollectorRegistry()

    def chunked() -> object:
        return read_verified_chunks(
            path, size=digests.size, chunk_size=digests.chunk_size, chunk_sha256=digests.sha256
        )

    log("chunked: timing")
    t = measure(
        {
            "read_verified_chunks": chunked,
            "read_verified_single_thread": lambda: cr.read_verified(
                path, sha256=whole, size=nbytes, registry=registry
            ),
            "hash_only_file_digest": lambda: _file_digest(path),
            "chunk_digests_parallel_hash_only": lambda: chunk_digests(
                path, chunk_size=DEFAULT_CHUNK_SIZE
            ),
        },
        repeat,
        retries=2,  # each run reads GiBs: a busy machine would make retries very long
    )
    chunked_t, single = t["read_verified_chunks"], t["read_verified_single_thread"]
    hash_only = t["hash_only_file_digest"]
    return {
        "file_mib": round(nbytes / MIB, 1),
        "chunk_mib": DEFAULT_CHUNK_SIZE // MIB,
        "chunks": len(digests.sha256),
        "workers": os.cpu_count(),
        "storage": "tmpfs (/dev/shm)" if str(workdir).startswith("/dev/shm") else "page cache",
        "seconds": {name: timing.as_dict() for name, timing in t.items()},
        "throughput_mib_s": {
            name: round(nbytes / MIB / timing.median, 1) for name, timing in t.items()
        },
        "chunked_vs_single_thread": target(chunked_t.median / single.median, "<=", 0.56),
        "chunked_vs_single_thread_best": round(chunked_t.best / single.best, 3),
        "chunked_vs_hash_only": round(chunked_t.median / hash_only.median, 3),
        "single_thread_vs_hash_only": round(single.median / hash_only.median, 3),
        "parallel_hash_vs_hash_only": round(
            t["chunk_digests_parallel_hash_only"].median / hash_only.median, 3
        ),
    }


def run(quick: bool) -> dict[str, Any]:
    """Run (a); return figures, ratios and the target."""
    nbytes = (256 * MIB) if quick else (2 * GIB)
    repeat = 3 if quick else 5
    previous = instrumentation.get_on_event_hooks()
    instrumentation.set_on_event_hooks([instrumentation.PrometheusOnEventHook])
    try:
        with tempfile.TemporaryDirectory(prefix="clarity-bench-", dir=_scratch_dir(nbytes)) as tmp:
            return {
                "method": "medians of N interleaved runs after one untimed warm-up run each "
                "(file on tmpfs or in the page cache: warm)",
                "load": bench_chunked(pathlib.Path(tmp), nbytes, repeat),
            }
    finally:
        instrumentation.set_on_event_hooks(previous)
