"""S3 benchmark (issue 13): a verified fetch from S3 against a plain ``s3fs`` download.

A 256 MiB object (``--quick``: 16 MiB) is served by moto's S3 server, started as a
child process on 127.0.0.1 (a real S3 REST endpoint, in its own process so that the
server does not share this process's GIL with the client being timed).

- ``verified_fetch``: ``cr.sources.FsspecSource(url, sha256=..., size=...,
  cache_dir=<fresh directory>).fetch()``: HEAD with ``ChecksumMode`` (the S3 checksum
  cross-check), streamed download hashed on the way, fsync, atomic rename into the
  digest-named cache, under the host-wide file lock.
- ``s3fs_get``: ``s3fs.S3FileSystem(...).get(url, <fresh file>)``: what a user does
  without this library (no hash, no fsync). Both make a new filesystem object (a new
  client) per run, as a fresh source does; ``s3fs_get_warm_client`` reuses one client
  (no target, to show what the client set-up costs).

Target: verified fetch <= 1.15 x the plain ``s3fs`` get (medians). The server's CPU time
counts as "other processes" in ``_common.measure``, so every run reads as contended and
none is retried (``contended_runs`` says nothing here; the load average does). The object is
uploaded with ``ChecksumAlgorithm=SHA256`` so the cross-check runs as it would against
AWS; ``s3_checksum_cross_check`` says whether the store returned one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import log, measure, target

from clarity_resilience.sources import FsspecSource

MIB = 1024 * 1024
BUCKET, KEY = "models", "model.safetensors"
#: Dummy credentials: moto accepts any.
OPTIONS: dict[str, Any] = {
    "key": "AKIABENCHMARKKEY0001",
    "secret": "benchmark-secret",
    "anon": False,
    "client_kwargs": {"region_name": "us-east-1"},
    "config_kwargs": {"s3": {"addressing_style": "path"}},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _moto_server() -> Any:
    """Run ``python -m moto.server`` on a free loopback port; yield its endpoint."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the moto server exited at start")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > end:
                raise RuntimeError("the moto server did not answer")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Scratch:
    """A fresh directory for one run, removed when the run's result is dropped."""

    def __init__(self, parent: pathlib.Path) -> None:
        self.path = pathlib.Path(tempfile.mkdtemp(dir=parent))

    def __del__(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _upload(endpoint: str, data: bytes) -> bool:
    """Create the bucket and object; return whether S3 reports a SHA-256 checksum."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=OPTIONS["key"],
        aws_secret_access_key=OPTIONS["secret"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=KEY, Body=data, ChecksumAlgorithm="SHA256")
    head = client.head_object(Bucket=BUCKET, Key=KEY, ChecksumMode="ENABLED")
    return "ChecksumSHA256" in head


def bench_fetch(workdir: pathlib.Path, nbytes: int, repeat: int) -> dict[str, Any]:
    import s3fs

    data = os.urandom(nbytes)
    sha256 = hashlib.sha256(data).hexdigest()
    url = f"s3://{BUCKET}/{KEY}"
    with _moto_server() as endpoint:
        log(f"s3: uploading {nbytes // MIB} MiB to moto at {endpoint}")
        cross_check = _upload(endpoint, data)
        del data
        options = {**OPTIONS, "endpoint_url": endpoint}

        def verified_fetch() -> _Scratch:
            scratch = _Scratch(workdir)
            source = FsspecSource(
                url,
                sha256=sha256,
                size=nbytes,
                cache_dir=scratch.path / "cache",
                storage_options=options,
                timeout=60.0,
            )
            path = source.fetch()
            assert path.stat().st_size == nbytes
            return scratch

        def s3fs_get() -> _Scratch:
            scratch = _Scratch(workdir)
            fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
            fs.get(url, str(scratch.path / "model.safetensors"))
            return scratch

        warm = s3fs.S3FileSystem(skip_instance_cache=True, **options)

        def s3fs_get_warm_client() -> _Scratch:
            scratch = _Scratch(workdir)
            warm.get(url, str(scratch.path / "model.safetensors"))
            return scratch

        log("s3: timing")
        t = measure(
            {
                "verified_fetch": verified_fetch,
                "s3fs_get": s3fs_get,
                "s3fs_get_warm_client": s3fs_get_warm_client,
            },
            repeat,
            # The server is another process working for the run being timed: its CPU
            # time would count as contention on every run, so no run is retried.
            retries=0,
        )
    verified, plain = t["verified_fetch"], t["s3fs_get"]
    return {
        "object_mib": round(nbytes / MIB, 1),
        "s3_checksum_cross_check": cross_check,
        "seconds": {name: timing.as_dict() for name, timing in t.items()},
        "verified_fetch_mib_s": round(nbytes / MIB / verified.median, 1),
        "s3fs_get_mib_s": round(nbytes / MIB / plain.median, 1),
        "verified_vs_s3fs_get": target(verified.median / plain.median, "<=", 1.15),
        "verified_vs_s3fs_get_best": round(verified.best / plain.best, 3),
        "verified_vs_s3fs_get_warm_client": round(
            verified.median / t["s3fs_get_warm_client"].median, 3
        ),
    }


def run(quick: bool) -> dict[str, Any]:
    nbytes = (16 if quick else 256) * MIB
    repeat = 3 if quick else 5
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        return {"fetch": bench_fetch(pathlib.Path(tmp), nbytes, repeat)}
