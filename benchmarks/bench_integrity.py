"""Integrity benchmark: what verifying costs over not verifying.

(a) load: ``load_verified(loader=loaders.safetensors)`` on a 512 MiB safetensors file
    (``--quick``: 64 MiB) against its parts measured separately (hash the file with
    ``hashlib.file_digest``; parse bytes already in memory), against the naive
    ``hash, then safetensors.numpy.load_file(path)`` (which re-opens the path: unsafe)
    and against ``safetensors.numpy.load_file`` alone (no verification at all).
    Targets: verified load <= 0.6 x naive; <= 1.1 x hash only; <= 1.15 x (hash only +
    parse).
(b) directory: ``Manifest.verify`` on 8 x 64 MiB files (``--quick``: 8 x 8 MiB) against
    a single-threaded loop of ``sha256_file``, bare hashlib in a thread pool (the
    platform's ceiling) and ``sha256sum -c``.
    Target: >= 1.7 x the single-threaded loop's throughput (2 cores).
(c) memory: peak RSS (``VmHWM``; ``ru_maxrss`` off Linux) of a fresh process doing a
    verified load against one doing ``open().read()`` + ``safetensors.numpy.load``, and
    its growth over the process's size with imports done, against the file's size.
    Targets: within 1.1 x the unverified load; growth <= 1.05 x the file size.

Timings are medians of N interleaved runs after one untimed warm-up run (page cache
warm); best runs are reported too. Runs disturbed by other processes or by storage reads
are retried (see ``_common.measure``) and counted in the output.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import safetensors.numpy
from _common import Timing, child_env, log, measure, target
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience import Manifest, instrumentation, loaders

MIB = 1024 * 1024
TENSORS = 16


def _file_digest(path: pathlib.Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _file_digest_big_chunks(path: pathlib.Path) -> str:
    hasher, buffer = hashlib.sha256(), bytearray(8 * MIB)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(buffer):
            hasher.update(view[:got])
    return hasher.hexdigest()


def _write_safetensors(path: pathlib.Path, nbytes: int) -> None:
    rng = np.random.default_rng(0)
    count = nbytes // 4 // TENSORS
    tensors = {f"layer{i}.weight": rng.random(count, dtype=np.float32) for i in range(TENSORS)}
    safetensors.numpy.save_file(tensors, str(path))


def _ratio(numerator: Timing, *denominators: Timing, best: bool = False) -> float:
    """Return numerator / sum(denominators), on medians (or best runs)."""
    if best:
        return numerator.best / sum(d.best for d in denominators)
    return numerator.median / sum(d.median for d in denominators)


HERE = pathlib.Path(__file__).resolve().parent
# glibc keeps freed memory for reuse instead of returning it to the kernel: fresh pages
# are the expensive part of loading on some virtual machines (see docs/performance.md).
RECYCLED_MEMORY = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"

RECYCLED_CHILD = """
import json, pathlib, sys
sys.path.insert(0, sys.argv[1])
import bench_integrity
from clarity_resilience import instrumentation
instrumentation.set_on_event_hooks([instrumentation.PrometheusOnEventHook])
workdir, nbytes, repeat = pathlib.Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(json.dumps(bench_integrity.bench_load(workdir, nbytes, repeat, with_target=False)))
"""


def bench_load_recycled(workdir: pathlib.Path, nbytes: int, repeat: int) -> dict[str, Any]:
    """Run (a) again in a process whose allocator reuses freed memory (no target).

    Separates what verification costs from what fresh memory costs on this machine.
    """
    if platform.libc_ver()[0] != "glibc":
        return {"skipped": "needs glibc (GLIBC_TUNABLES)"}
    log("integrity/load: again with recycled memory (GLIBC_TUNABLES)")
    env = {**child_env(), "GLIBC_TUNABLES": RECYCLED_MEMORY}
    out = subprocess.run(
        [sys.executable, "-c", RECYCLED_CHILD, str(HERE), str(workdir), str(nbytes), str(repeat)],
        env=env, stdout=subprocess.PIPE, text=True, check=True,
    ).stdout  # fmt: skip
    return {"glibc_tunables": RECYCLED_MEMORY, **json.loads(out)}


def bench_load(
    workdir: pathlib.Path, nbytes: int, repeat: int, with_target: bool = True
) -> dict[str, Any]:
    path = workdir / "model.safetensors"
    if not path.exists():
        log(f"integrity/load: writing {nbytes // MIB} MiB safetensors")
        _write_safetensors(path, nbytes)
    sha256, size = _file_digest(path), path.stat().st_size
    registry = CollectorRegistry()
    in_memory = path.read_bytes()

    def verified_load() -> object:
        model = cr.load_verified(
            path, sha256=sha256, size=size, loader=loaders.safetensors, registry=registry
        )
        assert len(model) == TENSORS
        return model

    def naive() -> object:
        if _file_digest(path) != sha256:
            raise AssertionError("digest changed")
        return safetensors.numpy.load_file(str(path))

    def unverified() -> object:
        with open(path, "rb") as f:
            return safetensors.numpy.load(f.read())

    log("integrity/load: timing")
    t = measure(
        {
            "hash_only_file_digest": lambda: _file_digest(path),
            "plain_read_into_bytes": path.read_bytes,
            # The platform's price of fresh memory (allocate and zero-fill file-size
            # bytes): every load that reads the file into memory pays it.
            "allocate_and_touch_file_size": lambda: b"\x01" * size,
            "parse_from_bytes": lambda: safetensors.numpy.load(in_memory),
            "read_verified": lambda: cr.read_verified(
                path, sha256=sha256, size=size, registry=registry
            ),
            "verified_load": verified_load,
            "naive_hash_then_load_file": naive,
            "safetensors_load_file_unverified": lambda: safetensors.numpy.load_file(str(path)),
            "unverified_read_then_parse": unverified,
        },
        repeat,
    )
    hash_only, parse, verified = (
        t["hash_only_file_digest"], t["parse_from_bytes"], t["verified_load"]
    )  # fmt: skip
    naive_t, load_file = t["naive_hash_then_load_file"], t["safetensors_load_file_unverified"]

    def ratio(bound: float, *denominators: Timing) -> dict[str, Any] | float:
        value = _ratio(verified, *denominators)
        return target(value, "<=", bound) if with_target else round(value, 3)

    return {
        "file_mib": round(size / MIB, 1),
        "seconds": {name: timing.as_dict() for name, timing in t.items()},
        "hash_throughput_mib_s": round(size / MIB / hash_only.median, 1),
        "read_verified_throughput_mib_s": round(size / MIB / t["read_verified"].median, 1),
        # The headline figures (issue 14): verifying next to not verifying safely...
        "verified_vs_naive": ratio(0.6, naive_t),
        "verified_vs_naive_best": round(_ratio(verified, naive_t, best=True), 3),
        # ...and next to the floor of any SHA-256 check of the file.
        "verified_vs_hash_only": ratio(1.1, hash_only),
        "verified_vs_hash_only_best": round(_ratio(verified, hash_only, best=True), 3),
        "verified_vs_hash_plus_parse": ratio(1.15, hash_only, parse),
        "verified_vs_hash_plus_parse_best": round(
            _ratio(verified, hash_only, parse, best=True), 3
        ),
        "verified_vs_safetensors_load_file": round(_ratio(verified, load_file), 3),
        "read_verified_vs_hash_only": round(_ratio(t["read_verified"], hash_only), 3),
        # Reading into new memory and hashing can overlap at best (2 free cores) and add
        # up at worst (1 core): where read_verified falls between the two.
        "read_verified_vs_perfect_overlap": round(
            t["read_verified"].median / max(hash_only.median, t["plain_read_into_bytes"].median),
            3,
        ),
        "read_verified_vs_no_overlap": round(
            _ratio(t["read_verified"], hash_only, t["plain_read_into_bytes"]), 3
        ),
        "verified_vs_unverified": round(_ratio(verified, t["unverified_read_then_parse"]), 3),
    }


def bench_directory(
    workdir: pathlib.Path, files: int, file_bytes: int, repeat: int
) -> dict[str, Any]:
    directory = workdir / "model-dir"
    directory.mkdir()
    log(f"integrity/directory: writing {files} x {file_bytes // MIB} MiB")
    rng = np.random.default_rng(1)
    for i in range(files):
        (directory / f"shard-{i:02d}.bin").write_bytes(rng.bytes(file_bytes))
    paths = sorted(directory.iterdir())
    manifest = Manifest.build(directory)
    sums = workdir / "SHA256SUMS"
    manifest.write(sums, format="sha256sum")
    registry = CollectorRegistry()
    total_mib = files * file_bytes / MIB
    pool = ThreadPoolExecutor(max_workers=os.cpu_count())
    candidates = {
        "manifest_verify": lambda: manifest.verify(directory, registry=registry),
        "single_thread_sha256_file_loop": lambda: [cr.sha256_file(p) for p in paths],
        # The platform's ceiling: bare hashlib in a thread pool, no manifest logic.
        "thread_pool_bare_hashlib": lambda: list(pool.map(_file_digest_big_chunks, paths)),
    }
    sha256sum = shutil.which("sha256sum")
    if sha256sum is not None:
        candidates["sha256sum_check"] = lambda: subprocess.run(
            [sha256sum, "--check", "--quiet", str(sums)], cwd=directory, check=True
        )

    log("integrity/directory: timing")
    with pool:
        t = measure(candidates, repeat)
    verify, loop = t["manifest_verify"], t["single_thread_sha256_file_loop"]
    result: dict[str, Any] = {
        "files": files,
        "file_mib": file_bytes // MIB,
        "workers": os.cpu_count(),
        "seconds": {name: timing.as_dict() for name, timing in t.items()},
        "throughput_mib_s": {
            name: round(total_mib / timing.median, 1) for name, timing in t.items()
        },
        "verify_vs_single_thread": target(loop.median / verify.median, ">=", 1.7),
        "verify_vs_single_thread_best": round(loop.best / verify.best, 3),
        "bare_thread_pool_vs_single_thread": round(
            loop.median / t["thread_pool_bare_hashlib"].median, 3
        ),
    }
    if sha256sum is None:
        result["verify_vs_sha256sum"] = "skipped: sha256sum not found"
    else:
        result["verify_vs_sha256sum"] = round(t["sha256sum_check"].median / verify.median, 3)
    return result


# Peak RSS of the child itself. On Linux ru_maxrss is not usable for this: exec() folds
# the parent's peak RSS into it (the child starts from the parent's memory map), so a
# child of a large benchmark process would report the parent's size. VmHWM is the
# high-water mark of the child's own memory map; elsewhere ru_maxrss is used.
MEMORY_CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy, safetensors.numpy
    import clarity_resilience
    from clarity_resilience import instrumentation, loaders

    def peak_rss():
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024

    mode, path, sha256, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    instrumentation.set_on_event_hooks([])
    before = peak_rss()
    if mode == "verified":
        model = clarity_resilience.load_verified(
            path, sha256=sha256, size=size, loader=loaders.safetensors
        )
    else:
        with open(path, "rb") as f:
            model = safetensors.numpy.load(f.read())
    assert len(model) > 0
    print(before, peak_rss())
    """
)


def bench_memory(workdir: pathlib.Path, repeat: int) -> dict[str, Any]:
    path = workdir / "model.safetensors"
    sha256, size = _file_digest(path), path.stat().st_size
    env = child_env()
    log("integrity/memory: measuring peak RSS in fresh processes")

    def peak(mode: str) -> tuple[int, int]:
        runs = []
        for _ in range(repeat):
            out = subprocess.run(
                [sys.executable, "-c", MEMORY_CHILD, mode, str(path), sha256, str(size)],
                capture_output=True, text=True, check=True, env=env,
            ).stdout  # fmt: skip
            before, after = (int(v) for v in out.split())
            runs.append((after, before))
        runs.sort()  # peak RSS varies little between fresh processes: take the median
        after, before = runs[len(runs) // 2]
        return before, after

    verified_before, verified_peak = peak("verified")
    plain_before, plain_peak = peak("unverified")
    return {
        "file_mib": round(size / MIB, 1),
        "peak_rss_mib": {
            "verified_load": round(verified_peak / MIB, 1),
            "unverified_read_then_parse": round(plain_peak / MIB, 1),
        },
        "rss_before_load_mib": {
            "verified_load": round(verified_before / MIB, 1),
            "unverified_read_then_parse": round(plain_before / MIB, 1),
        },
        "verified_vs_unverified_peak": target(verified_peak / plain_peak, "<=", 1.1),
        "verified_vs_unverified_growth": round(
            (verified_peak - verified_before) / (plain_peak - plain_before), 3
        ),
        # What a verified load adds to a process that has imported everything: the
        # verified buffer is unavoidable (1.0); a loader that copies it adds another.
        "verified_growth_vs_file_size": target(
            (verified_peak - verified_before) / size, "<=", 1.05
        ),
        "unverified_growth_vs_file_size": round((plain_peak - plain_before) / size, 3),
    }


def run(quick: bool) -> dict[str, Any]:
    """Run (a) load, (b) directory and (c) memory; return figures, ratios and targets."""
    model_bytes = (64 if quick else 512) * MIB
    file_bytes = (8 if quick else 64) * MIB
    repeat = 5 if quick else 9
    previous = instrumentation.get_on_event_hooks()
    # Metrics as in production (into a private registry); no structlog output on stdout.
    instrumentation.set_on_event_hooks([instrumentation.PrometheusOnEventHook])
    try:
        with tempfile.TemporaryDirectory(prefix="clarity-bench-") as tmp:
            workdir = pathlib.Path(tmp)
            return {
                "method": "medians of N interleaved runs after one untimed warm-up run "
                "(page cache warm); best runs reported alongside",
                "load": bench_load(workdir, model_bytes, repeat),
                "load_recycled_memory": bench_load_recycled(workdir, model_bytes, repeat),
                "memory": bench_memory(workdir, 3),
                "directory": bench_directory(workdir, 8, file_bytes, repeat),
            }
    finally:
        instrumentation.set_on_event_hooks(previous)
