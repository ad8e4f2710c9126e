"""Manifest text formats: GNU ``sha256sum``, BSD ``--tag`` and JSON, plus the path rules.

Parsing is strict on purpose (promise 2): a manifest that cannot be read exactly is
refused, with the 1-based line number of the first offending line, rather than
guessed at. Paths must be safe relative POSIX paths, so that no manifest can name a
file outside the directory it describes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from ._reasons import Reason
from .exceptions import ManifestError

__all__ = [
    "JSON_FORMAT",
    "Record",
    "dump_json",
    "dump_sha256sum",
    "excerpt",
    "format_hash_line",
    "is_utf8",
    "normalize_path",
    "normalize_digest",
    "parse_text",
]

#: The ``format`` value of a JSON manifest.
JSON_FORMAT = "clarity-resilience-manifest"
_JSON_VERSION = 1
_JSON_KEYS = frozenset({"format", "format_version", "model_version", "files"})
_ENTRY_KEYS = frozenset({"sha256", "size", "chunks"})
_CHUNK_KEYS = frozenset({"size", "sha256"})

_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")
# GNU: digest, one space, then " " (text) or "*" (binary), then the name.
_GNU = re.compile(r"([0-9A-Fa-f]{64}) [ *](.*)", re.DOTALL)
_GNU_LIKE = re.compile(r"([0-9A-Fa-f]+)[ \t]")
# BSD --tag: the greedy name runs to the last ") = ", as GNU's own parser does.
_TAG = re.compile(r"([A-Za-z0-9_/-]+) \((.*)\) = (.*)", re.DOTALL)
_ESCAPE = re.compile(r"\\(.?)", re.DOTALL)
_UNESCAPED = {"\\": "\\", "n": "\n", "r": "\r"}


class Record(NamedTuple):
    """One parsed manifest entry (with per-chunk digests when the JSON form has them)."""

    path: str
    sha256: str
    size: int | None
    chunk_size: int | None = None
    chunks: tuple[str, ...] = ()


def excerpt(value: object, limit: int = 60) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters, so messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalize_path(name: object) -> str:
    """Return ``name`` as a normalized relative POSIX path, or raise ``ManifestError``.

    ``.`` segments (``./model.bin``) are dropped. A backslash is kept as an ordinary
    character: the formats decide whether one can be told apart from a separator.

    Raises:
        ManifestError: Empty (``MANIFEST_INVALID``); absolute, a ``..`` or empty
            segment, a NUL character or not valid UTF-8 (``UNSAFE_PATH``).
    """
    if not isinstance(name, str):
        raise ManifestError(
            f"path must be a str, not {type(name).__name__}", reason=Reason.MANIFEST_INVALID
        )
    if not name:
        raise ManifestError("path is empty", reason=Reason.MANIFEST_INVALID)
    problem = None
    if "\x00" in name:
        problem = "contains a NUL character"
    elif not is_utf8(name):
        problem = "is not valid UTF-8"
    elif name.startswith("/"):
        problem = "is absolute"
    else:
        segments = [segment for segment in name.split("/") if segment != "."]
        if not segments:
            problem = "names the directory itself, not a file"
        elif "" in segments:
            problem = "has an empty segment"
        elif ".." in segments:
            problem = "has a '..' segment"
        else:
            return "/".join(segments)
    raise ManifestError(
        f"path {excerpt(name)} {problem}", path=None, actual=name, reason=Reason.UNSAFE_PATH
    )


def normalize_digest(digest: object) -> str:
    """Return a SHA-256 hex digest in lower case, or raise ``ManifestError``."""
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise ManifestError(
            f"digest {excerpt(digest)} is not 64 hexadecimal digits",
            actual=digest,
            reason=Reason.MANIFEST_INVALID,
        )
    return digest.lower()


def is_utf8(text: str) -> bool:
    """Return whether ``text`` can be written as UTF-8 (holds no lone surrogate)."""
    # Names decoded with surrogateescape carry undecodable bytes as lone surrogates.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(line: int | None, source: str | None) -> str:
    if line is None:
        return source or "manifest"
    return f"line {line} of {source}" if source else f"manifest line {line}"


def _fail(
    problem: str, *, line: int | None, source: str | None, reason: Reason = Reason.MANIFEST_INVALID
) -> ManifestError:
    return ManifestError(
        f"{_where(line, source)}: {problem}", path=source, line=line, reason=reason
    )


def _relocate(error: ManifestError, line: int | None, source: str | None) -> ManifestError:
    """Return ``error`` (from the path or digest rules) restated with its line number."""
    return _fail(str(error), line=line, source=source, reason=error.reason)


def parse_text(text: str, source: str | None = None) -> tuple[list[Record], str | None]:
    """Parse a manifest in any supported format; return its records and model version.

    Args:
        text: The manifest text. JSON if its first non-blank character is ``{``,
            otherwise ``sha256sum`` lines (GNU and BSD ``--tag`` may mix).
        source: Where the text came from, for messages.

    Raises:
        ManifestError: The text is malformed, unsafe, or lists no file.
    """
    if not isinstance(text, str):
        raise TypeError(f"manifest text must be a str, not {type(text).__name__}")
    text = text.removeprefix("\ufeff")  # a BOM left by a Windows editor is not content
    if text.lstrip().startswith("{"):
        records, version = _parse_json(text, source)
    else:
        records, version = _parse_lines(text, source), None
    if not records:
        raise _fail("lists no files", line=None, source=source)
    return records, version


def _parse_lines(text: str, source: str | None) -> list[Record]:
    records: list[Record] = []
    seen: dict[str, int] = {}
    # Only "\n" ends a line: str.splitlines() would also split names at \x0b, \x1c, \u2028...
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")  # CRLF files, as GNU accepts them
        if not line.strip():
            continue
        try:
            path, digest = _parse_line(line)
            path = normalize_path(path)
        except ManifestError as e:
            raise _relocate(e, number, source) from None
        if path in seen:
            raise _fail(
                f"path {excerpt(path)} is listed twice (first on line {seen[path]})",
                line=number,
                source=source,
            )
        seen[path] = number
        records.append(Record(path, digest, None))
    return records


def _parse_line(line: str) -> tuple[str, str]:
    """Return the raw name and normalized digest of one GNU or BSD line."""
    # GNU and BSD mark a name holding "\\", "\n" or "\r" with a leading backslash.
    escaped = line.startswith("\\")
    body = line[1:] if escaped else line
    if match := _GNU.fullmatch(body):
        digest, name = match.groups()
    elif match := _TAG.fullmatch(body):
        algorithm, name, digest = match.groups()
        if algorithm != "SHA256":
            raise ManifestError(
                f"uses the {excerpt(algorithm, 20)} algorithm; only SHA256 is accepted"
            )
        digest = normalize_digest(digest)
    elif match := _GNU_LIKE.match(body):
        length = len(match.group(1))
        if length != 64:
            raise ManifestError(f"has a {length}-digit digest; SHA-256 needs 64 hex digits")
        raise ManifestError("needs two spaces, or a space and '*', between digest and name")
    else:
        raise ManifestError(
            f"is not a sha256sum line ('<digest>  <name>' or 'SHA256 (<name>) = <digest>'): "
            f"{excerpt(line)}"
        )
    if not name:
        raise ManifestError("has an empty file name")
    if escaped:
        name = _ESCAPE.sub(_unescape, name)
    elif "\\" in name:
        # GNU always escapes a real backslash, so a bare one is a Windows separator.
        raise ManifestError(
            f"path {excerpt(name)} uses a backslash, a Windows path separator; use '/'",
            reason=Reason.UNSAFE_PATH,
        )
    return name, digest.lower()


def _unescape(match: re.Match[str]) -> str:
    replacement = _UNESCAPED.get(match.group(1))
    if replacement is None:
        raise ManifestError(
            f"has an invalid escape {excerpt(match.group(0))} (only \\\\, \\n and \\r exist)"
        )
    return replacement


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys silently; a manifest must not.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def _line_of(text: str, key: str, occurrence: int = 1) -> int | None:
    """Return the line of the ``occurrence``-th ``"key"`` in ``text`` (best effort)."""
    needle = json.dumps(key, ensure_ascii=False)
    index = -1
    for _ in range(occurrence):
        index = text.find(needle, index + 1)
        if index < 0:
            return None
    return text.count("\n", 0, index) + 1


def _parse_json(text: str, source: str | None) -> tuple[list[Record], str | None]:
    try:
        data = json.loads(text, object_pairs_hook=_unique_object)
    except json.JSONDecodeError as e:
        raise _fail(f"is not valid JSON: {e.msg}", line=e.lineno, source=source) from None
    except _DuplicateKeyError as e:
        line = _line_of(text, e.key, occurrence=2)
        raise _fail(f"key {excerpt(e.key)} appears twice", line=line, source=source) from None
    except (ValueError, RecursionError) as e:  # over-long integers, absurd nesting
        problem = f"is not a usable JSON document: {excerpt(str(e))}"
        raise _fail(problem, line=None, source=source) from None

    opening = text.count("\n", 0, text.find("{")) + 1

    def bad(problem: str, key: str | None = None) -> ManifestError:
        # A problem with a key points at its line; one with the whole object, at its "{".
        line = _line_of(text, key) if key is not None and key in data else opening
        return _fail(problem, line=line, source=source)

    if not isinstance(data, dict):
        raise bad("a JSON manifest must be an object")
    unknown = sorted(set(data) - _JSON_KEYS)
    if unknown:
        raise bad(f"unknown key {excerpt(unknown[0])}", unknown[0])
    if data.get("format") != JSON_FORMAT:
        raise bad(f"format must be {JSON_FORMAT!r}", "format")
    format_version = data.get("format_version")
    if type(format_version) is not int or format_version != _JSON_VERSION:
        raise bad(
            f"format_version {excerpt(format_version)} is not supported (expected 1)",
            "format_version",
        )
    version = data.get("model_version")
    if version is not None and not (isinstance(version, str) and is_utf8(version)):
        raise bad("model_version must be a string or null", "model_version")
    files = data.get("files")
    if not isinstance(files, dict):
        raise bad("files must be an object mapping paths to entries", "files")
    return _json_records(files, text, source), version


def _json_records(files: dict[str, Any], text: str, source: str | None) -> list[Record]:
    records: list[Record] = []
    seen: set[str] = set()
    for key, value in files.items():
        try:
            record = _json_entry(key, value)
            if record.path in seen:
                raise ManifestError(f"path {excerpt(record.path)} is listed twice")
        except ManifestError as e:
            # Searched for only on failure: finding every key's line would be quadratic.
            raise _relocate(e, _line_of(text, key), source) from None
        seen.add(record.path)
        records.append(record)
    return records


def _json_entry(key: str, value: object) -> Record:
    if "\\" in key:
        raise ManifestError(
            f"path {excerpt(key)} uses a backslash, a Windows path separator; use '/'",
            reason=Reason.UNSAFE_PATH,
        )
    path = normalize_path(key)
    if not isinstance(value, dict):
        raise ManifestError(f"entry {excerpt(key)} must be an object")
    unknown = sorted(set(value) - _ENTRY_KEYS)
    if unknown:
        raise ManifestError(f"entry {excerpt(key)} has an unknown key {excerpt(unknown[0])}")
    digest = normalize_digest(value.get("sha256"))
    size = value.get("size")
    if size is not None and (type(size) is not int or size < 0):
        raise ManifestError(
            f"entry {excerpt(key)} has size {excerpt(size)}, not a non-negative integer"
        )
    chunks = value.get("chunks")
    if chunks is None:
        return Record(path, digest, size)
    chunk_size, digests = _json_chunks(key, chunks, size)
    return Record(path, digest, size, chunk_size, digests)


def _json_chunks(key: str, chunks: object, size: int | None) -> tuple[int, tuple[str, ...]]:
    """Return a JSON entry's chunk size and per-chunk digests, checked against its size."""
    if not isinstance(chunks, dict) or set(chunks) != _CHUNK_KEYS:
        raise ManifestError(f"entry {excerpt(key)}: chunks must be {{'size': .., 'sha256': [..]}}")
    chunk_size, digests = chunks["size"], chunks["sha256"]
    if type(chunk_size) is not int or chunk_size < 1:
        raise ManifestError(f"entry {excerpt(key)}: chunk size must be a positive integer")
    if size is None:
        raise ManifestError(f"entry {excerpt(key)}: chunks need the file's size")
    if not isinstance(digests, list):
        raise ManifestError(f"entry {excerpt(key)}: chunk digests must be a list")
    expected = max(1, -(-size // chunk_size))
    if len(digests) != expected:
        raise ManifestError(
            f"entry {excerpt(key)}: {size} bytes in chunks of {chunk_size} need {expected} "
            f"digests, not {len(digests)}"
        )
    return chunk_size, tuple(normalize_digest(d) for d in digests)


def _escape_name(name: str) -> tuple[str, str]:
    """Return GNU's line prefix (a backslash or nothing) and the escaped form of ``name``."""
    if "\\" not in name and "\n" not in name and "\r" not in name:
        return "", name
    return "\\", name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def dump_sha256sum(entries: Iterable[tuple[str, str]]) -> str:
    """Return ``(path, sha256)`` pairs as GNU ``sha256sum`` lines (two spaces, as it writes)."""
    lines = []
    for path, digest in entries:
        prefix, name = _escape_name(path)
        lines.append(f"{prefix}{digest}  {name}\n")
    return "".join(lines)


def format_hash_line(name: str, digest: str) -> str:
    """Return one ``sha256sum`` output line for ``name`` (escaped as GNU does)."""
    prefix, escaped = _escape_name(name)
    return f"{prefix}{digest}  {escaped}\n"


def dump_json(entries: Iterable[Record], version: str | None) -> str:
    """Return records as a JSON manifest (sizes and chunk digests kept).

    Raises:
        ManifestError: A path holds a backslash, which the JSON form reserves as an
            error (it is how Windows tools write separators).
    """
    files: dict[str, dict[str, object]] = {}
    for path, digest, size, chunk_size, chunks in entries:
        if "\\" in path:
            raise ManifestError(
                f"path {excerpt(path)} holds a backslash, which the JSON form refuses; "
                "use the sha256sum format",
                reason=Reason.UNSAFE_PATH,
            )
        files[path] = {"sha256": digest, "size": size}
        if chunk_size is not None:
            files[path]["chunks"] = {"size": chunk_size, "sha256": list(chunks)}
    document = {
        "format": JSON_FORMAT,
        "format_version": _JSON_VERSION,
        "model_version": version,
        "files": files,
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
