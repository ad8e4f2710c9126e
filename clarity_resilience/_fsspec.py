"""Object stores through fsspec: S3, GCS, Azure, the Hugging Face Hub and local files.

:class:`FsspecSource` is a transport on the shared download core
(:class:`~clarity_resilience._download.CachedSource`): it only opens a byte stream for the
artifact. The fsspec implementation of each store comes from an extra, imported when a
source is created. Credentials (``storage_options``, URL user info) stay inside the
filesystem object: messages, events and metrics name the credential-free URL, and
transport error texts are scrubbed of every secret-looking option value.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hmac
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._download import DEFAULT_DEADLINE, Body, CachedSource, _clock
from ._fsspec_hf import open_hf, parse_hf
from ._http import redact, require_extra
from ._integrity import UNNAMED
from ._loop_stream import CHUNK, LoopStream, read_chunks, run_on_loop
from ._reasons import Reason
from .exceptions import ChecksumMismatchError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["FsspecSource"]

# protocol -> (extra, the module that implements it)
_EXTRAS: dict[str, tuple[str, str]] = {
    "s3": ("s3", "s3fs"),
    "s3a": ("s3", "s3fs"),
    "gs": ("gcs", "gcsfs"),
    "gcs": ("gcs", "gcsfs"),
    "az": ("azure", "adlfs"),
    "abfs": ("azure", "adlfs"),
    "abfss": ("azure", "adlfs"),
    "hf": ("hf", "huggingface_hub"),
    "file": ("fsspec", "fsspec"),
    "local": ("fsspec", "fsspec"),
}
_S3 = frozenset({"s3", "s3a"})
_AZURE = frozenset({"az", "abfs", "abfss"})
_GCS = frozenset({"gs", "gcs"})
# Storage option names whose values are secrets, scrubbed from any error text.
_SECRET_HINTS = ("key", "secret", "token", "password", "credential", "sas", "connection")
# The secret parts of an Azure connection string or SAS token.
_SECRET_PIECE = re.compile(
    r"(?i)(?:AccountKey|SharedAccessKey|SharedAccessSignature|sig)=([^;&\s]{4,})"
)
# Error classes (by name, anywhere in a cause chain) of failures that may pass on a retry:
# botocore's, aiohttp's, azure-core's, httpx's (huggingface_hub's client) and the stdlib's
# connection resets, timeouts and broken bodies.
_TRANSIENT_NAMES = frozenset({
    "ConnectionError", "TimeoutError", "HTTPClientError", "ReadTimeoutError",
    "ConnectTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
    "IncompleteRead", "ResponseParserError", "ResponseStreamingError", "ClientPayloadError",
    "ClientConnectionError", "ServerDisconnectedError", "FSTimeoutError",
    "ServiceRequestError", "ServiceResponseError", "IncompleteReadError",
    "TimeoutException", "NetworkError", "RemoteProtocolError",
})  # fmt: skip
_TIMEOUT_NAMES = frozenset({
    "TimeoutError", "ReadTimeoutError", "ConnectTimeoutError", "FSTimeoutError",
    "ServiceRequestTimeoutError", "ServiceResponseTimeoutError", "TimeoutException",
})  # fmt: skip
# Error codes of a store asking to be called again later (S3's, then Azure's).
_THROTTLED = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "RequestTimeout", "InternalError", "ServiceUnavailable", "TooManyRequests",
    "ServerBusy", "OperationTimedOut",
})  # fmt: skip
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class FsspecSource(CachedSource):
    """An artifact in an object store (any fsspec URL), cached locally and verified.

    Args:
        url: ``s3://bucket/key``, ``gs://``, ``az://``, ``hf://owner/repo@<commit>/file``
            or ``file://``; the store's extra must be installed.
        sha256: The expected SHA-256 hex digest of the artifact.
        size: The expected size in bytes; caps the download and must match exactly.
        cache_dir: Directory of verified downloads (created if missing).
        storage_options: Passed to the fsspec filesystem (credentials, ``endpoint_url``).
            Never logged. For ``hf://``: ``endpoint``, ``token``, and ``cache_dir`` with
            ``local_files_only`` (read huggingface_hub's cache, send no request).
        version_id: S3 only: the object version to fetch.
        allow_unpinned_revision: ``hf://`` only: accept a branch or tag (or no revision)
            instead of a 40-hex commit hash. The digest still pins the bytes.
        max_size: As for :class:`~clarity_resilience.sources.HttpSource`.
        timeout: As for ``HttpSource``.
        deadline: As for ``HttpSource``.
        attempts: As for ``HttpSource``.
        wait_initial: As for ``HttpSource``.
        wait_max: As for ``HttpSource``.
        wait_jitter: As for ``HttpSource``.
        model: As for ``HttpSource``.
        registry: As for ``HttpSource``.
        filename: As for ``HttpSource``.
        lock_timeout: As for ``HttpSource``.

    Raises:
        ValueError: An unsupported or malformed URL, an unpinned Hub revision, a
            ``version_id`` outside S3, a malformed digest or a bad argument.
        ClarityResilienceError: The store's extra is not installed (also an ImportError).
    """

    def __init__(
        self,
        url: str,
        *,
        sha256: str,
        size: int | None = None,
        cache_dir: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        version_id: str | None = None,
        allow_unpinned_revision: bool = False,
        max_size: int | None = None,
        timeout: float = 5.0,
        deadline: float = DEFAULT_DEADLINE,
        attempts: int = 3,
        wait_initial: float = 0.1,
        wait_max: float = 5.0,
        wait_jitter: float = 1.0,
        model: str = UNNAMED,
        registry: CollectorRegistry | None = None,
        filename: str | None = None,
        lock_timeout: float | None = None,
    ) -> None:
        display = redact(url)
        protocol, sep, _ = url.partition("://")
        protocol = protocol.lower()
        if not sep or "::" in url:
            raise ValueError(
                f"url must be a plain fsspec URL like s3://bucket/key, got {display!r}"
            )
        if protocol in ("http", "https"):
            raise ValueError(f"use HttpSource for {display!r}")
        if version_id is not None and (protocol not in _S3 or not version_id):
            raise ValueError("version_id applies to s3:// URLs only")
        self.protocol = protocol
        self.version_id = version_id
        self.revision: str | None = None
        self._hf: dict[str, str | None] | None = None
        if protocol == "hf":
            self._hf = parse_hf(url, allow_unpinned_revision)
            self.revision = self._hf["revision"]
        super().__init__(
            display,
            sha256=sha256,
            size=size,
            cache_dir=cache_dir,
            max_size=max_size,
            timeout=timeout,
            deadline=deadline,
            attempts=attempts,
            wait_initial=wait_initial,
            wait_max=wait_max,
            wait_jitter=wait_jitter,
            model=model,
            registry=registry,
            filename=filename,
            lock_timeout=lock_timeout,
        )
        extra, module = _EXTRAS.get(protocol, ("fsspec", "fsspec"))
        modules = ("fsspec", "stamina", "filelock", module)
        require_extra("FsspecSource", extra, modules)
        if protocol not in _EXTRAS:
            _require_protocol(protocol, display)
        self.url = url
        self._options = dict(storage_options or {})
        self._secrets = _secrets(self._options, url)
        self._fs: Any = None

    def __enter__(self) -> FsspecSource:
        return self

    # -- transport ------------------------------------------------------------------

    def _filesystem(self) -> tuple[Any, str]:
        """Return the (lazily made, then reused) filesystem and the object's path."""
        import fsspec

        with self._lock:
            if self._fs is None:
                options = dict(self._options)
                if self.protocol in _GCS:
                    from ._gcs import gcs_filesystem

                    self._fs, self._path = gcs_filesystem(self.url, options, self.timeout)
                    return self._fs, self._path
                if self.protocol in _S3:
                    # Bounded socket waits; the core retries (with jitter), not botocore
                    # or s3fs, so ``attempts`` means what it says.
                    config = {
                        "connect_timeout": self.timeout,
                        "read_timeout": self.timeout,
                        "retries": {"total_max_attempts": 1},
                    }
                    options["config_kwargs"] = config | dict(options.get("config_kwargs", {}))
                    if self.version_id is not None:
                        options["version_aware"] = True
                self._fs, self._path = fsspec.core.url_to_fs(
                    self.url, skip_instance_cache=True, **options
                )
                if self.protocol in _S3:
                    self._fs.retries = 1  # s3fs's own retry loop (a class attribute)
            return self._fs, self._path

    @contextlib.contextmanager
    def _open(self, deadline_at: float) -> Iterator[Body]:
        """Open the object (after the S3 checksum cross-check) and yield its chunks."""
        if self._hf is not None:
            with open_hf(self, deadline_at) as body:
                yield body
            return
        if self.protocol in _GCS:
            from ._gcs import open_gcs

            yield open_gcs(*self._filesystem(), deadline_at)
            return
        fs, path = self._filesystem()
        if self.protocol in _AZURE:
            try:
                size, stream = self._open_azure(fs, path, deadline_at)
                try:
                    yield Body(size, stream)
                finally:
                    stream.close()
            except BaseException:
                self._drop_azure_client(fs)
                raise
            return
        if self.protocol not in _S3:
            with fs.open(path, "rb", cache_type="none", block_size=CHUNK) as f:
                size = getattr(f, "size", None)
                yield Body(size if isinstance(size, int) else None, read_chunks(f))
            return
        size, stream = self._open_s3(fs, path, deadline_at)
        try:
            yield Body(size, stream)
        finally:
            stream.close()

    def _drop_azure_client(self, fs: Any) -> None:
        """Close the Azure client of a failed attempt; the next attempt makes a new one.

        A request abandoned mid-body (at the deadline, or on a refusal) leaves its
        connection open inside the SDK, which offers no way to close one download: it
        would linger until garbage collection (and warn then). Closing the client's HTTP
        session closes it now, and the next attempt starts on fresh connections.
        """
        with self._lock:
            if self._fs is fs:
                self._fs = None
        # Best effort: the attempt's own failure is what is reported, not this one.
        with contextlib.suppress(Exception):
            run_on_loop(fs.loop, fs.service_client.close(), _clock() + self.timeout, _clock)

    def _open_s3(self, fs: Any, path: str, deadline_at: float) -> tuple[int | None, LoopStream]:
        """HEAD the object (size, checksum cross-check), then stream it through one GET.

        One request per attempt, not a ranged GET per read: the body is read on s3fs's
        event loop one chunk ahead of the chunk being hashed and written.
        """
        bucket, key, _ = fs.split_path(path)
        params = {"Bucket": bucket, "Key": key}
        if self.version_id is not None:
            params["VersionId"] = self.version_id
        size = self._head_s3(fs, params, deadline_at)

        async def get() -> Any:
            response = await fs._call_s3("get_object", **params)
            return response["Body"]

        return size, LoopStream(fs.loop, get, deadline_at, _clock)

    def _open_azure(self, fs: Any, path: str, deadline_at: float) -> tuple[int | None, LoopStream]:
        """Read the blob's size, then stream it with the Azure SDK's own downloader.

        adlfs passes no timeout or retry setting to its reads, and the SDK's default
        policy retries with a 15 s backoff inside the attempt: every request here sets
        ``retry_total=0`` (the core retries, with jitter, so ``attempts`` means what it
        says) and bounds its socket waits by ``timeout``.
        """
        container, blob, _ = fs.split_path(path)
        client = fs.service_client.get_blob_client(container=container, blob=blob)
        options = {
            "retry_total": 0,
            "connection_timeout": self.timeout,
            "read_timeout": self.timeout,
        }
        properties = run_on_loop(
            fs.loop, client.get_blob_properties(**options), deadline_at, _clock
        )
        size = getattr(properties, "size", None)

        async def download() -> Any:
            return await client.download_blob(max_concurrency=1, **options)

        return (size if isinstance(size, int) else None), LoopStream(
            fs.loop, download, deadline_at, _clock
        )

    def _head_s3(self, fs: Any, params: dict[str, str], deadline_at: float) -> int | None:
        """Return the object's size; refuse it if its S3 ``ChecksumSHA256`` is not pinned.

        Costs one HEAD request and no body byte: an object over the size cap, or whose
        full-object checksum the store computed differs, is refused before the GET.

        Raises:
            ChecksumMismatchError: The store computed another SHA-256 for the object.
        """
        head = run_on_loop(
            fs.loop, fs._call_s3("head_object", ChecksumMode="ENABLED", **params), deadline_at,
            _clock,
        )  # fmt: skip
        size = head.get("ContentLength")
        size = size if isinstance(size, int) else None
        encoded = head.get("ChecksumSHA256")
        # A multipart upload's composite checksum ("...-N") is not the object's digest.
        if not isinstance(encoded, str) or head.get("ChecksumType", "FULL_OBJECT") != (
            "FULL_OBJECT"
        ) or "-" in encoded:  # fmt: skip
            return size
        try:
            actual = base64.b64decode(encoded, validate=True).hex()
        except (binascii.Error, ValueError):
            return size  # not a checksum we can read: the streamed digest still decides
        if not hmac.compare_digest(actual, self.sha256):
            raise ChecksumMismatchError(
                f"{self.display_url} has S3 ChecksumSHA256 {actual}, expected "
                f"{self.sha256}: refused before downloading",
                path=self.display_url,
                expected=self.sha256,
                actual=actual,
            )
        return size

    def _transient(self, cause: BaseException) -> bool | float:
        chain = list(_chain(cause))
        if any(isinstance(e, _PERMANENT) for e in chain):
            return False
        status, code = _status(chain)
        if status is not None or code is not None:
            # 408 and 429: the store asks for a retry (gcsfs's HttpError has no code name).
            return code in _THROTTLED or status in (408, 429) or (status or 0) >= 500
        if any(isinstance(e, OSError) and e.errno in (errno.EBUSY, errno.EAGAIN) for e in chain):
            return True  # s3fs's mapping of a throttled request
        return any(c.__name__ in _TRANSIENT_NAMES for e in chain for c in type(e).__mro__)

    def _failure(self, cause: BaseException) -> tuple[str, Reason, object]:
        chain = list(_chain(cause))
        timed_out = any(c.__name__ in _TIMEOUT_NAMES for e in chain for c in type(e).__mro__)
        status, _ = _status(chain)
        text = f"{type(cause).__name__}: {cause}"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        problem = f"{'timed out' if timed_out else 'failed'}: {text}"
        return problem, Reason.TIMEOUT if timed_out else Reason.FETCH_ERROR, status


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _status(chain: list[BaseException]) -> tuple[int | None, str | None]:
    """Return the HTTP status and error code of a store's error in the chain.

    botocore's ``ClientError`` carries them in its ``response`` dict, azure-core's
    ``HttpResponseError`` as ``status_code`` and ``error_code``, huggingface_hub's
    ``HfHubHTTPError`` in its httpx ``response`` (status and ``X-Error-Code``), and
    gcsfs's ``HttpError`` (any status but 404, 403, 412, 502) the status as ``code``:
    without it a GCS 503 or 429 would look permanent.
    """
    for e in chain:
        gcs_status = getattr(e, "code", None)
        if type(e).__name__ == "HttpError" and isinstance(gcs_status, int):
            return gcs_status, None
        status_code = getattr(e, "status_code", None)
        if isinstance(status_code, int) and not isinstance(status_code, bool):
            code = getattr(e, "error_code", None)
            code = getattr(code, "value", code)  # the SDK's StorageErrorCode enum
            return status_code, (str(code) if code is not None else None)
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            meta = response.get("ResponseMetadata", {})
            error = response.get("Error", {})
            status = meta.get("HTTPStatusCode") if isinstance(meta, dict) else None
            code = error.get("Code") if isinstance(error, dict) else None
            return (status if isinstance(status, int) else None), (
                code if isinstance(code, str) else None
            )
        # huggingface_hub's HfHubHTTPError carries the httpx response itself.
        status = getattr(response, "status_code", None)
        if isinstance(status, int) and not isinstance(status, bool):
            headers = getattr(response, "headers", None)
            code = headers.get("X-Error-Code") if isinstance(headers, Mapping) else None
            return status, (code if isinstance(code, str) else None)
    return None, None


def _secrets(options: Mapping[str, Any], url: str) -> list[str]:
    """Return the secret-looking option values, URL user info and query values, longest first.

    Each also percent-encoded, as a transport quoting a URL path writes it.
    """
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, secret or any(h in str(k).lower() for h in _SECRET_HINTS))
        elif isinstance(value, str) and secret and len(value) >= 4:
            found.append(value)
            # A connection string or SAS token is quoted in pieces (the key alone, the
            # signature URL-encoded): each secret piece is scrubbed on its own too.
            for piece in _SECRET_PIECE.findall(value):
                found.extend({piece, urllib.parse.unquote(piece)})

    walk(options, False)
    parts = urllib.parse.urlsplit(url)
    found += [x for x in (parts.username, parts.password) if x]
    # Query values too (gs://bucket/key?token=...: gcsfs takes the query for part of the
    # key), and every secret as a URL path quotes it: gcsfs's 404 names the quoted path.
    found += [value for _, value in urllib.parse.parse_qsl(parts.query) if len(value) >= 4]
    found += [urllib.parse.quote(x, safe="") for x in found]
    return sorted(set(found), key=len, reverse=True)


def _require_protocol(protocol: str, display: str) -> None:
    """Raise a typed error when fsspec knows no implementation of ``protocol``."""
    import fsspec

    from ._http import MissingExtraError

    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as e:
        raise MissingExtraError(
            f"FsspecSource cannot open {display!r}: {e}", reason=Reason.INTERNAL
        ) from e
    except ValueError as e:
        raise ValueError(f"unknown protocol {protocol!r} in {display!r}") from e
