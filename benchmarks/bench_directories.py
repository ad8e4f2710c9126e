"""Directories benchmark: sharded models read on every core, in bounded memory, and copied.

4 safetensors shards of 128 MiB each (``--quick``: 4 x 8 MiB), listed in a manifest:

(a) parallel: ``read_verified_files(directory, manifest)`` (default workers: one per
    CPU) against a single-threaded loop of ``read_verified`` over the same files.
    Target: >= 1.7 x speed-up (2 cores).
(b) memory: peak RSS (``VmHWM``) of a fresh process doing ``load_verified_files`` of
    every shard with ``loaders.safetensors`` against one doing
    ``safetensors.numpy.load_file`` of every shard (no verification).
    Target: <= 1.1 x.
(c) materialize: ``materialize(directory, manifest=..., into=cache)`` of the same files
    against ``cp -r`` of the directory on the same filesystem (the destination is
    removed, untimed, before every run). Target: <= 1.2 x. ``materialize`` fsyncs what
    it writes and ``cp`` does not, so ``cp -r`` followed by ``sync -f`` is reported too
    (no target). Whether the filesystem can clone files (``FICLONE``, a reflink) is
    probed on a scratch file and reported; ``materialize`` never clones (it hashes the
    bytes it writes), GNU ``cp`` >= 9 does when it can. SHA-256 of every file on every
    CPU (``hashlib.file_digest`` in a thread pool), materialize's floor, is reported too.

Timings are medians of N interleaved runs after one untimed warm-up run (page cache
warm); see ``_common.measure``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _common import child_env, log, measure, target
from bench_signing import FILES, MIB, write_shards
from prometheus_client import CollectorRegistry

import clarity_resilience as cr
from clarity_resilience import Manifest, instrumentation

#: linux/fs.h: _IOW(0x94, 9, int), clone a whole file (Btrfs, XFS with reflink, bcachefs).
FICLONE = 0x40049409


def _file_digest(path: pathlib.Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def reflink_support(directory: pathlib.Path) -> str:
    """Return whether ``directory``'s filesystem can clone a file (``FICLONE``)."""
    source, clone = directory / ".reflink-probe-src", directory / ".reflink-probe-dst"
    source.write_bytes(b"\0" * 4096)
    try:
        with open(source, "rb") as src, open(clone, "wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV):
            return "unsupported"
        return f"unknown ({errno.errorcode.get(e.errno or 0, e.errno)})"
    finally:
        source.unlink()
        with contextlib.suppress(FileNotFoundError):
            clone.unlink()
    return "supported"


def filesystem_type(path: pathlib.Path) -> str:
    """Return the type of the filesystem holding ``path`` (Linux), from /proc/self/mounts."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            mount = fields[1]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


def bench_parallel(directory: pathlib.Path, manifest: Manifest, repeat: int) -> dict[str, Any]:
    registry = CollectorRegistry()
    listed = [(directory / name, entry) for name, entry in manifest.entries.items()]

    def single_thread() -> object:
        return [
            cr.read_verified(path, sha256=e.sha256, size=e.size, registry=registry)
            for path, e in listed
        ]

    log("directories/parallel: timing")
    t = measure(
        {
            "read_verified_files_parallel": lambda: cr.read_verified_files(
                directory, manifest, registry=registry
            ),
            "single_thread_read_verified_loop": single_thread,
        },
        repeat,
    )
    parallel, loop = t["read_verified_files_parallel"], t["single_thread_read_verified_loop"]
    total_mib = sum(e.size for _, e in listed) / MIB
    return {
        "workers": min(len(listed), os.cpu_count() or 1),
        "seconds": {name: timing.as_dict() for name, timing in t.items()},
        "throughput_mib_s": {
            name: round(total_mib / timing.median, 1) for name, timing in t.items()
        },
        "parallel_vs_single_thread": target(loop.median / parallel.median, ">=", 1.7),
        "parallel_vs_single_thread_best": round(loop.best / parallel.best, 3),
    }


# Peak RSS of the child itself (VmHWM; ru_maxrss elsewhere): see bench_integrity.
MEMORY_CHILD = textwrap.dedent(
    """
    import pathlib, resource, sys
    sys.path.insert(0, sys.argv[1])
    import safetensors.numpy
    import clarity_resilience
    from clarity_resilience import Manifest, instrumentation
    from bench_signing import load_all

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

    mode, directory, manifest_path = sys.argv[2], pathlib.Path(sys.argv[3]), sys.argv[4]
    instrumentation.set_on_event_hooks([])
    manifest = Manifest.read(manifest_path)
    before = peak_rss()
    if mode == "verified":
        model = clarity_resilience.load_verified_files(directory, manifest, loader=load_all)
    else:
        model = {
            name: safetensors.numpy.load_file(str(directory / name)) for name in manifest.entries
        }
    assert len(model) == len(manifest.entries)
    print(before, peak_rss())
    """
)


def bench_memory(
    directory: pathlib.Path, manifest_path: pathlib.Path, repeat: int
) -> dict[str, Any]:
    env = child_env()
    here = str(pathlib.Path(__file__).resolve().parent)
    log("directories/memory: measuring peak RSS in fresh processes")

    def peak(mode: str) -> tuple[int, int]:
        runs = []
        for _ in range(repeat):
            args = [here, mode, str(directory), str(manifest_path)]
            out = subprocess.run(
                [sys.executable, "-c", MEMORY_CHILD, *args],
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
        "peak_rss_mib": {
            "load_verified_files": round(verified_peak / MIB, 1),
            "safetensors_load_file_unverified": round(plain_peak / MIB, 1),
        },
        "rss_before_load_mib": {
            "load_verified_files": round(verified_before / MIB, 1),
            "safetensors_load_file_unverified": round(plain_before / MIB, 1),
        },
        "verified_vs_unverified_peak": target(verified_peak / plain_peak, "<=", 1.1),
        "verified_vs_unverified_growth": round(
            (verified_peak - verified_before) / (plain_peak - plain_before), 3
        ),
    }


def bench_materialize(
    directory: pathlib.Path, manifest: Manifest, scratch: pathlib.Path, repeat: int
) -> dict[str, Any]:
    registry = CollectorRegistry()
    cache, copy, synced = scratch / "cache", scratch / "cp-copy", scratch / "cp-copy-synced"
    cp = shutil.which("cp") or "cp"

    def clean() -> None:
        for path in (cache, copy, synced):
            shutil.rmtree(path, ignore_errors=True)

    def cp_then_sync() -> object:
        subprocess.run([cp, "-r", str(directory), str(synced)], check=True)
        return subprocess.run(["sync", "-f", str(synced)], check=True)

    sources = [directory / name for name in manifest.entries]
    log("directories/materialize: timing")
    pool = ThreadPoolExecutor(max_workers=min(len(sources), os.cpu_count() or 1))
    try:
        t = measure(
            {
                "materialize": lambda: cr.materialize(
                    directory, manifest=manifest, into=cache, registry=registry
                ),
                "cp_r": lambda: subprocess.run([cp, "-r", str(directory), str(copy)], check=True),
                "cp_r_then_sync": cp_then_sync,
                # materialize's floor on this machine: SHA-256 of every file, one
                # thread per CPU (what cp does not do at all).
                "hash_only_thread_pool": lambda: list(pool.map(_file_digest, sources)),
            },
            repeat,
            setup=clean,
        )
    finally:
        pool.shutdown()
        clean()
    version = subprocess.run([cp, "--version"], capture_output=True, text=True, check=False)
    ours, cp_r = t["materialize"], t["cp_r"]
    return {
        "filesystem": filesystem_type(scratch),
        "reflink_ficlone": reflink_support(scratch),
        # materialize reads, hashes and writes every byte (what it hashed is what it
        # wrote), so it never clones; cp (GNU coreutils >= 9: --reflink=auto) may.
        "materialize_uses_reflink": False,
        "cp_version": (version.stdout.splitlines() or ["unknown"])[0],
        "seconds": {name: timing.as_dict() for name, timing in t.items()},
        "materialize_vs_cp_r": target(ours.median / cp_r.median, "<=", 1.2),
        "materialize_vs_cp_r_best": round(ours.best / cp_r.best, 3),
        "materialize_vs_cp_r_then_sync": round(ours.median / t["cp_r_then_sync"].median, 3),
        "materialize_vs_hash_only": round(ours.median / t["hash_only_thread_pool"].median, 3),
    }


def run(quick: bool) -> dict[str, Any]:
    """Run (a) parallel, (b) memory and (c) materialize; return figures and targets."""
    file_bytes = (8 if quick else 128) * MIB
    repeat = 5 if quick else 7
    previous = instrumentation.get_on_event_hooks()
    # Metrics as in production (into a private registry); no structlog output on stdout.
    instrumentation.set_on_event_hooks([instrumentation.PrometheusOnEventHook])
    try:
        with tempfile.TemporaryDirectory(prefix="clarity-bench-dirs-") as tmp:
            workdir = pathlib.Path(tmp)
            directory = workdir / "model"
            log(f"directories: writing {FILES} x {file_bytes // MIB} MiB safetensors")
            write_shards(directory, FILES, file_bytes)
            manifest = Manifest.build(directory)
            manifest_path = workdir / "SHA256SUMS"
            manifest.write(manifest_path)
            total = sum(e.size for e in manifest.entries.values())
            return {
                "method": "medians of N interleaved runs after one untimed warm-up run "
                "(page cache warm); best runs reported alongside",
                "files": FILES,
                "total_mib": round(total / MIB, 1),
                "parallel": bench_parallel(directory, manifest, repeat),
                "memory": bench_memory(directory, manifest_path, 3),
                "materialize": bench_materialize(directory, manifest, workdir, repeat),
            }
    finally:
        instrumentation.set_on_event_hooks(previous)
