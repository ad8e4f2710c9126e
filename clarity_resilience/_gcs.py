"""gs:// for FsspecSource: a gcsfs filesystem and a byte stream that keep the promises.

gcsfs's defaults would let a GCS download outlive ``timeout`` and ``deadline`` and retry
behind the core's back; this module sets them right (see :func:`gcs_filesystem`) and
reads an object by ranged GETs, each abandoned at the attempt's deadline.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

from ._download import Body, _clock
from ._loop_stream import CHUNK, MAX_READ, run_on_loop

__all__ = ["gcs_filesystem", "open_gcs"]


def gcs_filesystem(url: str, options: dict[str, Any], timeout: float) -> tuple[Any, str]:
    """Return a gcsfs filesystem whose requests are each tried once and bounded by ``timeout``.

    Three gcsfs defaults would break the source's promises:

    - The class fsspec registers for ``gs://`` is, by default
      (``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT``), gcsfs's zonal/HNS class. Before opens and
      reads it asks the Storage Control API (gRPC) for the bucket's layout: up to 30 s a
      call and 60 s of retries, repeated on every read when the lookup fails (a reader
      without the permission, a JSON-only endpoint). No ``timeout`` or ``deadline`` bounds
      it. A verified download needs only the JSON API: use gcsfs's core class.
    - No request timeout: ``requests_timeout`` caps every connect and socket read instead.
    - ``_request`` retries 6 times with up to 32 s of backoff, fixed when gcsfs's class is
      defined (its ``retries`` attribute changes nothing). The core retries with jitter, so
      the undecorated request is bound to this filesystem: ``attempts`` means what it says.
    """
    import importlib

    import aiohttp

    # Imported by name: gcsfs ships no type information (mypy would need an override).
    GCSFileSystem: Any = importlib.import_module("gcsfs.core").GCSFileSystem
    options = GCSFileSystem._get_kwargs_from_urls(url) | options
    options.setdefault(
        "requests_timeout", aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout)
    )
    fs = GCSFileSystem(skip_instance_cache=True, **options)
    once = getattr(GCSFileSystem._request, "__wrapped__", None)
    if once is not None:  # gcsfs's retry decorator; tests fail if it moves
        fs._request = types.MethodType(once, fs)
    return fs, fs._strip_protocol(url)


def open_gcs(fs: Any, path: str, deadline_at: float) -> Body:
    """Return a GCS object's size (one metadata GET) and its chunks, read by ranged GETs.

    gcsfs's file object waits on each read without a limit, so a trickling link would hold
    one read (up to 16 MiB) far past the attempt's deadline. Here each request runs on
    gcsfs's event loop and is abandoned (cancelled: its connection closed) at the deadline.
    """
    info = run_on_loop(fs.loop, fs._get_object(path), deadline_at, _clock)
    size = info.get("size")
    size = size if isinstance(size, int) else None

    def chunks() -> Iterator[bytes]:
        start, length = 0, CHUNK
        while size is None or start < size:
            chunk = run_on_loop(
                fs.loop, fs._cat_file(path, start=start, end=start + length), deadline_at,
                _clock,
            )  # fmt: skip
            if not chunk:
                return
            yield bytes(chunk)
            start += len(chunk)
            length = min(length * 2, MAX_READ)  # as read_chunks: few requests for a big object

    return Body(size, chunks())
