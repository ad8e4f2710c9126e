"""hf:// for FsspecSource: the Hugging Face Hub, asked first, then streamed (or its cache).

Online, one HEAD (``get_hf_file_metadata``) refuses a known mismatch before any body byte,
then one GET per attempt streams the file through huggingface_hub's HTTP client into the
source's verified cache. Offline, huggingface_hub's cache is read without any request and
never trusted. See :func:`open_hf`.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import urllib.parse
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from ._download import Body
from ._hashing import open_regular
from ._loop_stream import read_chunks
from ._reasons import Reason
from .exceptions import ChecksumMismatchError, IntegrityError

if TYPE_CHECKING:
    from ._fsspec import FsspecSource

__all__ = ["open_hf", "parse_hf"]

_COMMIT = re.compile(r"[0-9a-f]{40}")
# An LFS file's etag on the Hub: its SHA-256.
_SHA256 = re.compile(r"[0-9a-f]{64}")
# hf://[datasets/|spaces/|models/]owner/name[@revision]/path/in/repo
_HF_URL = re.compile(
    r"hf://(?:(?P<type>datasets|spaces|models)/)?(?P<repo>[^/@]+/[^/@]+)"
    r"(?:@(?P<revision>[^/]+))?/(?P<file>[^@]+)"
)


@contextlib.contextmanager
def open_hf(source: FsspecSource, deadline_at: float) -> Iterator[Body]:
    """Ask the Hub about the file (refuse a known mismatch), then stream it.

    Online, one HEAD (``get_hf_file_metadata``) comes first: an LFS SHA-256 other
    than the pinned digest, a size over the cap or a commit other than the pinned
    one is refused before any body byte. The body is then streamed by one GET
    through huggingface_hub's own HTTP client straight into the verified cache,
    not through ``hf_hub_download``: that one bounds its GET by a process-wide
    timeout (``HF_HUB_DOWNLOAD_TIMEOUT``), retries and resumes it up to five times
    by itself and returns only once the whole file is in its cache, so neither
    ``timeout``, ``attempts`` nor the deadline would mean what they say, and
    unverified bytes would land in a cache other programs trust. With
    ``local_files_only`` (or ``HF_HUB_OFFLINE``) the file comes from the Hub
    cache, opened as a regular file and hashed again: that cache is never trusted.
    """
    import huggingface_hub

    hf = source._hf
    assert hf is not None
    options = source._options
    if bool(options.get("local_files_only", False)) or huggingface_hub.is_offline_mode():
        with _open_cache(source) as body:
            yield body
        return
    endpoint = options.get("endpoint")
    token = options.get("token")
    url = huggingface_hub.hf_hub_url(
        hf["repo"] or "",
        hf["file"] or "",
        repo_type=hf["type"],
        revision=source.revision,
        endpoint=endpoint,
    )
    # retry_on_errors=False (the default): the core retries, so ``attempts`` holds.
    meta = huggingface_hub.get_hf_file_metadata(
        url, token=token, timeout=source.timeout, endpoint=endpoint
    )
    _check_metadata(source, meta)
    chunks = _chunks(source, url, meta.location, token, deadline_at)
    try:
        # The GET is sent on the first chunk: the core refuses an announced size
        # over the cap before asking for it.
        yield Body(meta.size, chunks)
    finally:
        chunks.close()


def _check_metadata(source: FsspecSource, meta: Any) -> None:
    """Refuse what the Hub's metadata already shows to be wrong, before any body byte.

    Raises:
        ChecksumMismatchError: The file's LFS SHA-256 is not the pinned digest.
        IntegrityError: ``version_mismatch``: the Hub answered a pinned commit with
            another one; ``fetch_error``: it named no commit (not a Hub endpoint).
    """
    commit = meta.commit_hash
    if not isinstance(commit, str):
        # huggingface_hub refuses such an answer too (FileMetadataError).
        raise IntegrityError(
            f"{source.display_url}: the endpoint sent no X-Repo-Commit; it does not "
            "answer like a Hugging Face Hub",
            path=source.display_url,
            expected=source.revision,
            reason=Reason.FETCH_ERROR,
        )
    # Plain equality: a commit hash is public, and a hostile header may hold non-ASCII
    # text that hmac.compare_digest would refuse with a TypeError.
    if _is_commit(source.revision) and commit != source.revision:
        # The pin is the caller's trust root: a Hub (or mirror, or proxy) that serves
        # another commit for it is not serving the pinned repository state. The
        # digest would still catch other bytes, but the answer itself is wrong and
        # will not improve on a retry: version_mismatch, like a manifest of another
        # version, is not retried and waits for an operator.
        raise IntegrityError(
            f"{source.display_url} was answered from commit {commit}, not the pinned "
            f"{source.revision}: refused before downloading",
            path=source.display_url,
            expected=source.revision,
            actual=commit,
            reason=Reason.VERSION_MISMATCH,
        )
    etag = meta.etag
    # An LFS file's etag is its SHA-256 (64 hex); a git file's is its git SHA-1
    # (40 hex), which says nothing about the SHA-256: the streamed digest decides.
    if (
        isinstance(etag, str)
        and _SHA256.fullmatch(etag) is not None
        and not hmac.compare_digest(etag, source.sha256)
    ):
        raise ChecksumMismatchError(
            f"{source.display_url} has LFS SHA-256 {etag}, expected {source.sha256}: "
            "refused before downloading",
            path=source.display_url,
            expected=source.sha256,
            actual=etag,
        )


def _chunks(
    source: FsspecSource, url: str, location: str, token: Any, deadline_at: float
) -> Generator[bytes, None, None]:
    """Send the one GET of an attempt and yield its raw body, chunk by chunk."""
    from huggingface_hub import get_session, hf_raise_for_status
    from huggingface_hub.utils._headers import build_hf_headers

    target = urllib.parse.urljoin(url, location)
    # The token goes to the Hub's own origin only, never to the CDN it redirects to.
    same_origin = _origin(target) == _origin(url)
    headers = build_hf_headers(token=token if same_origin else False)
    # identity and iter_raw: the published bytes are hashed, nothing is decoded.
    # No chunk size: each piece is yielded as it arrives, so the core checks the
    # deadline after every socket read (each bounded by ``timeout``), not after a
    # chunk that a trickle could take minutes to fill.
    headers["Accept-Encoding"] = "identity"
    source._check_deadline(deadline_at)
    with get_session().stream(
        "GET", target, headers=headers, timeout=source.timeout, follow_redirects=True
    ) as response:
        hf_raise_for_status(response)
        yield from response.iter_raw()


@contextlib.contextmanager
def _open_cache(source: FsspecSource) -> Iterator[Body]:
    """Open the file in huggingface_hub's cache (no request at all) and yield its chunks.

    ``try_to_load_from_cache``, not ``hf_hub_download(local_files_only=True)``: the
    latter builds request headers, and huggingface_hub fetches a registry from
    ``HF_ENDPOINT`` the first time it does so in a process. The blob is opened as a
    regular file without blocking: one swapped for a FIFO or a device is refused
    (``unsafe_path``), it cannot hang the fetch.

    Raises:
        FileNotFoundError: The file is not in the cache as a regular file (permanent).
    """
    import huggingface_hub

    hf = source._hf
    assert hf is not None
    cache_dir = source._options.get("cache_dir")
    local = huggingface_hub.try_to_load_from_cache(
        hf["repo"] or "",
        hf["file"] or "",
        cache_dir=cache_dir,
        revision=source.revision,
        repo_type=hf["type"],
    )
    if not isinstance(local, str):
        raise FileNotFoundError(
            f"{source.display_url} is not a regular file in huggingface_hub's cache "
            f"({cache_dir or 'the default one'}); offline, so no request was made"
        )
    # The snapshot entry is a symlink into blobs/ by design: resolve it, then open
    # the blob itself without following anything.
    opened = open_regular(os.path.realpath(local))
    try:
        with os.fdopen(opened.fd, "rb", closefd=False) as f:
            yield Body(opened.st.st_size, read_chunks(f))
    finally:
        opened.close()


def parse_hf(url: str, allow_unpinned: bool) -> dict[str, str | None]:
    """Split an ``hf://`` URL; refuse a revision that is not a commit hash unless allowed."""
    match = _HF_URL.fullmatch(url)
    if match is None:
        raise ValueError(
            f"hf:// URL must be hf://[datasets/|spaces/]owner/repo@<commit>/path, got {url!r}"
        )
    revision = match["revision"]
    revision = urllib.parse.unquote(revision) if revision else None
    if not _is_commit(revision) and not allow_unpinned:
        raise ValueError(
            f"hf:// revision must be a 40-hex commit hash, got {revision!r} "
            "(a branch or tag can move; pass allow_unpinned_revision=True to accept it)"
        )
    kind = match["type"]
    return {
        "type": None if kind in (None, "models") else kind[:-1],
        "repo": match["repo"],
        "revision": revision,
        "file": match["file"],
    }


def _origin(url: str) -> tuple[str, str, int | None]:
    """Return the (scheme, host, port) a URL is sent to."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def _is_commit(revision: str | None) -> bool:
    """Return whether ``revision`` pins a commit (40 lowercase hex digits)."""
    return revision is not None and _COMMIT.fullmatch(revision) is not None
