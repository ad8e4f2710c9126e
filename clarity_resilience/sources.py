"""Remote artifact sources: fetch a model into a verified local cache.

:class:`HttpSource` (HTTP(S)) and :class:`FsspecSource` (S3, GCS, Azure, the Hugging
Face Hub, local paths) download one artifact whose SHA-256 is known in advance. Both
run on one core (:class:`~clarity_resilience._download.CachedSource`): the bytes are
hashed as published while they stream into a temporary file in the cache directory;
only a download whose digest and size match is renamed (atomically) to its final name,
which is derived from the digest. A per-artifact file lock makes the processes of one
host download once. A failed or killed download never leaves a file that looks
complete, and a stale file can never be taken for another version. Loading still goes
through :func:`~clarity_resilience.read_verified`, which verifies the bytes it loads.

Every attempt has an overall ``deadline`` besides the socket ``timeout``, so a server
that trickles bytes cannot keep a load busy for long. Transient failures (connect
errors, timeouts, a missed deadline, broken or truncated responses, HTTP 5xx and 429,
throttling) are retried with stamina (exponential backoff plus jitter, bounded
attempts); nothing else is. Each transport's packages come from an extra (``http``,
``s3``, ``gcs``, ``azure``, ``hf``, ``fsspec``), imported only when a source is created.
:func:`read_manifest` fetches a pinned manifest through any source, and
:func:`read_signed_manifest` an OpenSSF Model Signing signature.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._download import DEFAULT_DEADLINE, Body, CachedSource
from ._fsspec import FsspecSource
from ._http import (
    StatusError,
    is_transient,
    parse_retry_after,
    redact,
    require_extra,
)
from ._integrity import UNNAMED
from ._reasons import Reason

if TYPE_CHECKING:
    from collections.abc import Iterable

    import httpx
    from cryptography.hazmat.primitives.asymmetric import ec
    from prometheus_client import CollectorRegistry

    from ._manifest import Manifest
    from ._signing import PemSource, SignedManifest

__all__ = [
    "CachedSource",
    "DEFAULT_DEADLINE",
    "FsspecSource",
    "HttpSource",
    "read_manifest",
    "read_signed_manifest",
]


class HttpSource(CachedSource):
    """An artifact fetched over HTTP(S) into a local cache, verified by SHA-256.

    Args:
        url: ``http://`` or ``https://`` address of the artifact.
        sha256: The expected SHA-256 hex digest of the artifact.
        size: The expected size in bytes; caps the download and must match exactly.
        cache_dir: Directory of verified downloads (created if missing). Partial
            downloads are written there too, so the final rename is atomic.
        max_size: Cap on the download when ``size`` is unknown (``None``: no cap).
        timeout: Seconds allowed to connect and for each read (or write) on the socket.
        deadline: Seconds one attempt may take in all (request, headers and the whole
            body), checked as bytes arrive: a server that trickles bytes fails with
            reason ``timeout`` at most ``min(timeout, deadline)`` later.
        attempts: Total attempts for transient failures (1 disables retries).
        wait_initial: Backoff before the first retry, in seconds (doubles each retry).
        wait_max: Longest backoff between attempts, also for a server's ``Retry-After``.
        wait_jitter: Largest random jitter added to each backoff, in seconds.
        client: An ``httpx.Client`` to use (never closed by the source). By default each
            download uses a client of its own that follows redirects and is closed when
            the download ends.
        model: The ``model`` label for metrics and audit events.
        registry: The Prometheus registry to record into (default registry if None).
        filename: Appended to the digest in the cache file name, e.g. ``model.onnx``.

    Raises:
        ValueError: A non-HTTP(S) URL, a malformed digest, or a bad argument.
        ClarityResilienceError: ``httpx`` or ``stamina`` is not installed (it is also an
            ``ImportError``).
    """

    def __init__(
        self,
        url: str,
        *,
        sha256: str,
        size: int | None = None,
        cache_dir: str | os.PathLike[str],
        max_size: int | None = None,
        timeout: float = 5.0,
        deadline: float = DEFAULT_DEADLINE,
        attempts: int = 3,
        wait_initial: float = 0.1,
        wait_max: float = 5.0,
        wait_jitter: float = 1.0,
        client: httpx.Client | None = None,
        model: str = UNNAMED,
        registry: CollectorRegistry | None = None,
        filename: str | None = None,
        lock_timeout: float | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// URL, got {redact(url)!r}")
        super().__init__(
            redact(url),
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
        require_extra("HttpSource", "http", ("httpx", "stamina", "filelock"))
        import httpx

        try:
            httpx.URL(url)
        except httpx.InvalidURL as e:
            raise ValueError(f"invalid url {redact(url)!r}: {e}") from e
        self.url = url
        self._timeout = httpx.Timeout(self.timeout)
        self._client = client

    def __enter__(self) -> HttpSource:
        return self

    @contextlib.contextmanager
    def _client_for_download(self) -> Iterator[httpx.Client]:
        """Yield the user's client, or one made for this download and closed after it.

        Downloads are rare (a load or a reload); a client per download means a source
        handed to ``ModelGuard.reload(source=...)`` and then dropped leaks nothing.
        """
        import httpx

        if self._client is not None:
            yield self._client
            return
        with httpx.Client(timeout=self._timeout, follow_redirects=True) as owned:
            yield owned

    @contextlib.contextmanager
    def _open(self, deadline_at: float) -> Iterator[Body]:
        """Send the GET and yield its raw body (never decoded)."""
        # identity: the digest is of the bytes as published, and Content-Length counts
        # them. A server may encode anyway: the raw body is what is hashed and stored.
        headers = {"Accept-Encoding": "identity"}
        with (
            self._client_for_download() as client,
            client.stream("GET", self.url, headers=headers, timeout=self._timeout) as response,
        ):
            if not 200 <= response.status_code <= 299:
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), self._waits[1]
                )
                raise StatusError(response.status_code, retry_after)
            announced = response.headers.get("Content-Length", "")
            # iter_raw, never iter_bytes: no Content-Encoding is undone, so nothing is
            # hashed but the published bytes and no decompression bomb can expand.
            yield Body(int(announced) if announced.isdigit() else None, response.iter_raw())

    def _transient(self, cause: BaseException) -> bool | float:
        return isinstance(cause, Exception) and is_transient(cause)

    def _failure(self, cause: BaseException) -> tuple[str, Reason, object]:
        import httpx

        if isinstance(cause, StatusError):
            return f"failed: HTTP {cause.status}", Reason.FETCH_ERROR, cause.status
        timed_out = isinstance(cause, httpx.TimeoutException)
        problem = f"{'timed out' if timed_out else 'failed'}: {type(cause).__name__}: {cause}"
        return problem, Reason.TIMEOUT if timed_out else Reason.FETCH_ERROR, None


def read_manifest(
    source: CachedSource, *, model: str | None = None, registry: CollectorRegistry | None = None
) -> Manifest:
    """Fetch a pinned manifest through ``source`` and parse the bytes that verified.

    The manifest's own digest (``source.sha256``) pins it, so a whole model directory
    can be verified from a store: fetch the manifest this way, then each listed file
    with a source built from its entry.

    Args:
        source: Any source (``HttpSource``, ``FsspecSource``) of the manifest file.
        model: As for ``fetch``: the ``model`` label to report under.
        registry: With ``model``: the Prometheus registry to record into.

    Returns:
        The parsed :class:`~clarity_resilience.Manifest`.

    Raises:
        IntegrityError: The fetch failed (see ``fetch``) or the bytes read back differ.
        ManifestError: The verified bytes are not a valid manifest.
    """
    from ._integrity import read_verified
    from ._manifest import Manifest

    path = source.fetch(model=model, registry=registry)
    # Parse the bytes read_verified hashed, never a second read of the file.
    data = read_verified(path, sha256=source.sha256, size=source.size)
    return Manifest.parse(
        bytes(data).decode("utf-8", "surrogateescape"), source=source.display_url
    )


def read_signed_manifest(
    source: CachedSource,
    *,
    public_key: PemSource | ec.EllipticCurvePublicKey | None = None,
    certificate_chain: PemSource | Iterable[PemSource] | None = None,
    identity: str | None = None,
    issuer: str | None = None,
    model: str | None = None,
    registry: CollectorRegistry | None = None,
) -> SignedManifest:
    """Fetch an OpenSSF Model Signing signature through ``source`` and authenticate it.

    The signature's digest (``source.sha256``) pins which signed release is served; the
    signature, checked against the one trust root given, says who signed it and lists
    the files. The bytes authenticated are the bytes that were hashed (never a second
    read of the cached file). Then fetch or check each listed file as with
    :func:`read_manifest`. Needs the ``signing`` extra.

    Args:
        source: Any source (``HttpSource``, ``FsspecSource``) of the signature file.
        public_key: The trust root, as for :meth:`~clarity_resilience.Manifest.from_signature`
            (or ``certificate_chain``, or ``identity`` with ``issuer``).
        certificate_chain: As for ``Manifest.from_signature``.
        identity: As for ``Manifest.from_signature``.
        issuer: As for ``Manifest.from_signature``.
        model: As for ``fetch``: the ``model`` label to report under.
        registry: With ``model``: the Prometheus registry to record into.

    Returns:
        The :class:`~clarity_resilience.SignedManifest` the signature signs.

    Raises:
        TypeError: Not exactly one trust root.
        IntegrityError: The fetch failed (see ``fetch``) or the bytes read back differ.
        ManifestError: The signature is not trusted, not valid, too large or not usable
            (``SIGNATURE_INVALID``).
    """
    from ._integrity import read_verified
    from ._signing import MAX_SIGNATURE_SIZE, trust_from
    from ._signing_statement import refuse
    from .exceptions import SizeMismatchError

    # The trust root first: a usage error costs no download.
    trust = trust_from(
        public_key=public_key, certificate_chain=certificate_chain, identity=identity,
        issuer=issuer,
    )  # fmt: skip
    path = source.fetch(model=model, registry=registry)
    try:
        data = read_verified(
            path, sha256=source.sha256, size=source.size, max_size=MAX_SIGNATURE_SIZE
        )
    except SizeMismatchError as e:
        if source.size is not None:
            raise
        # Pinned, but no signature is that large: unusable, like a local one.
        raise refuse(f"too large: {e}", source.display_url) from e
    return trust.verify_bytes(bytes(data), source.display_url)
