"""Tests for clarity_resilience.Manifest: formats, sha256sum interop, build, check and verify."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from trees import make_tree

from clarity_resilience import (
    ChecksumMismatchError,
    IntegrityError,
    ManifestError,
    Reason,
    SizeMismatchError,
    _manifest,
)
from clarity_resilience._integrity import verify_entry
from clarity_resilience._manifest import Manifest, ManifestEntry
from clarity_resilience._manifest_fs import hash_file
from clarity_resilience.instrumentation import Event, IntegrityCheckFailed, IntegrityCheckPassed

POSITIONS = pytest.mark.parametrize(
    "position", [pytest.param(-1, id="last"), pytest.param(0, id="first")]
)
FILES = {
    "weights.bin": b"\x00\x01" * 5000,
    "config.json": b'{"layers": 2}',
    "sub/tokenizer.txt": b"hello tokens",
}
A = "a" * 64
B = "b" * 64


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """Return a small model directory with a nested file."""
    return make_tree(tmp_path / "model", FILES)


@pytest.fixture
def manifest(model_dir: pathlib.Path) -> Manifest:
    return Manifest.build(model_dir, version="1.0")


def meet_in_threads(original: Callable[..., Any], parties: int = 2) -> tuple[Any, set[str]]:
    """Wrap ``original`` so its first ``parties`` calls must overlap in different threads.

    With a single worker the first call waits for a second that never comes, the
    barrier times out and BrokenBarrierError propagates: the test fails.
    """
    barrier = threading.Barrier(parties, timeout=10)
    names: set[str] = set()
    calls = iter(range(1_000_000))

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        names.add(threading.current_thread().name)
        if next(calls) < parties:
            barrier.wait()
        return original(*args, **kwargs)

    return wrapped, names


class TestManifestEntry:
    def test_normalizes_path_and_digest(self) -> None:
        """A leading ./ is dropped and the digest is stored in lower case."""
        entry = ManifestEntry("./sub/./a.bin", A.upper(), 3)
        assert (entry.path, entry.sha256, entry.size) == ("sub/a.bin", A, 3)

    @pytest.mark.parametrize(
        "size",
        [
            pytest.param(-1, id="negative"),
            pytest.param(True, id="bool"),
            pytest.param(1.0, id="float"),
        ],
    )
    def test_rejects_bad_size(self, size: Any) -> None:
        """A size that is not a non-negative int is refused."""
        with pytest.raises(ManifestError, match="non-negative int"):
            ManifestEntry("a", A, size)

    def test_rejects_unsafe_path(self) -> None:
        """An entry cannot name a path outside its directory."""
        with pytest.raises(ManifestError, match=r"'\.\.' segment") as info:
            ManifestEntry("../a", A)
        assert info.value.reason is Reason.UNSAFE_PATH


class TestManifestConstructor:
    def test_entries_are_sorted_and_read_only(self) -> None:
        """Entries come back sorted by path in a mapping that cannot be changed."""
        manifest = Manifest([ManifestEntry("b", B), ManifestEntry("a", A)], version="v")
        assert list(manifest.entries) == ["a", "b"]
        assert manifest.version == "v"
        assert len(manifest) == 2
        with pytest.raises(TypeError):
            manifest.entries["c"] = ManifestEntry("c", A)  # type: ignore[index]

    def test_rejects_duplicates_after_normalizing(self) -> None:
        """Two entries for the same file (a and ./a) are refused."""
        with pytest.raises(ManifestError, match="listed twice"):
            Manifest([ManifestEntry("a", A), ManifestEntry("./a", B)])

    def test_rejects_an_empty_manifest(self) -> None:
        """A manifest listing nothing would verify anything, so it cannot exist."""
        with pytest.raises(ManifestError, match="at least one file"):
            Manifest([])


class TestRoundTrip:
    def test_sha256sum_form_keeps_paths_and_digests(self, manifest: Manifest) -> None:
        """build -> dumps -> parse keeps every path and digest (sizes are not in this form)."""
        parsed = Manifest.parse(manifest.dumps("sha256sum"))
        assert {p: e.sha256 for p, e in parsed.entries.items()} == {
            name: sha(data) for name, data in FILES.items()
        }
        assert all(e.size is None for e in parsed.entries.values())

    def test_json_form_keeps_sizes_and_version(self, manifest: Manifest) -> None:
        """A JSON round trip gives back an equal manifest, sizes and version included."""
        parsed = Manifest.parse(manifest.dumps("json"))
        assert parsed == manifest
        assert parsed.version == "1.0"
        assert parsed.entries["weights.bin"].size == len(FILES["weights.bin"])

    def test_json_document_shape(self, manifest: Manifest) -> None:
        """The JSON form is the documented document."""
        document = json.loads(manifest.dumps("json"))
        assert document["format"] == "clarity-resilience-manifest"
        assert document["format_version"] == 1
        assert document["model_version"] == "1.0"
        assert document["files"]["config.json"] == {
            "sha256": sha(FILES["config.json"]),
            "size": len(FILES["config.json"]),
        }

    @pytest.mark.parametrize(
        "form", [pytest.param("sha256sum", id="sha256sum"), pytest.param("json", id="json")]
    )
    def test_write_then_read(self, manifest: Manifest, tmp_path: pathlib.Path, form: Any) -> None:
        """A written manifest reads back the same, mode 0644, with no temporary file left."""
        target = tmp_path / f"MANIFEST.{form}"
        manifest.write(target, format=form)
        assert Manifest.read(target).dumps(form) == manifest.dumps(form)
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert sorted(p.name for p in tmp_path.iterdir()) == ["MANIFEST." + form, "model"]

    def test_failed_write_leaves_the_old_file(
        self, manifest: Manifest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the final rename fails, the previous manifest is intact and no temp file remains."""
        target = tmp_path / "MANIFEST"
        target.write_text("old\n")

        def refuse(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", refuse)
        with pytest.raises(OSError, match="No space"):
            manifest.write(target)
        assert target.read_text() == "old\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["MANIFEST", "model"]

    def test_unknown_format_is_refused(self, manifest: Manifest) -> None:
        """dumps() names the two formats it knows."""
        with pytest.raises(ValueError, match="'sha256sum' or 'json'"):
            manifest.dumps("yaml")  # type: ignore[arg-type]

    def test_json_refuses_a_backslash_name(self) -> None:
        """A backslash name cannot be written as JSON, where it would read as a Windows path."""
        manifest = Manifest([ManifestEntry("a\\b", A)])
        with pytest.raises(ManifestError, match="backslash") as info:
            manifest.dumps("json")
        assert info.value.reason is Reason.UNSAFE_PATH


AWKWARD = {
    "plain.bin": b"plain",
    "with space.bin": b"space",
    "back\\slash.bin": b"backslash",
    "new\nline.bin": b"newline",
    "sub/deep.bin": b"deep",
}


class TestSha256sumInterop:
    def test_sha256sum_accepts_our_output(self, tmp_path: pathlib.Path, sha256sum: str) -> None:
        """`sha256sum -c --strict` accepts our manifest, awkward names included."""
        root = make_tree(tmp_path / "m", AWKWARD)
        Manifest.build(root).write(tmp_path / "MANIFEST")
        done = subprocess.run(
            [sha256sum, "-c", "--strict", str(tmp_path / "MANIFEST")],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.count(": OK") == len(AWKWARD)

    def test_sha256sum_rejects_our_output_after_tampering(
        self, tmp_path: pathlib.Path, sha256sum: str
    ) -> None:
        """The interop check is real: sha256sum fails our manifest once a file changes."""
        root = make_tree(tmp_path / "m", AWKWARD)
        Manifest.build(root).write(tmp_path / "MANIFEST")
        (root / "with space.bin").write_bytes(b"SPACE")
        done = subprocess.run(
            [sha256sum, "-c", str(tmp_path / "MANIFEST")],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 1
        assert "with space.bin: FAILED" in done.stdout

    @pytest.mark.parametrize(
        "flags",
        [
            pytest.param([], id="gnu-text"),
            pytest.param(["--binary"], id="gnu-binary"),
            pytest.param(["--tag"], id="bsd-tag"),
        ],
    )
    def test_we_read_sha256sum_output(
        self, tmp_path: pathlib.Path, sha256sum: str, flags: list[str]
    ) -> None:
        """Output of sha256sum (plain, binary mark, --tag) parses to the right digests."""
        root = make_tree(tmp_path / "m", AWKWARD)
        done = subprocess.run(
            [sha256sum, *flags, *AWKWARD], cwd=root, capture_output=True, check=True
        )
        parsed = Manifest.parse(done.stdout.decode())
        assert {p: e.sha256 for p, e in parsed.entries.items()} == {
            name: sha(data) for name, data in AWKWARD.items()
        }
        assert parsed.check(root) == []

    def test_gnu_and_bsd_lines_may_mix(self) -> None:
        """One manifest can hold GNU and BSD lines, escaped or not, and CRLF endings."""
        text = f"{A}  a\r\nSHA256 (b) = {B}\r\n\\{A}  c\\\\d\n\\SHA256 (e\\nf) = {B}\n"
        parsed = Manifest.parse(text)
        assert {p: e.sha256 for p, e in parsed.entries.items()} == {
            "a": A,
            "b": B,
            "c\\d": A,
            "e\nf": B,
        }


def _json(files: object = None, **top: object) -> str:
    document: dict[str, object] = {
        "format": "clarity-resilience-manifest",
        "format_version": 1,
        "model_version": None,
        "files": {"a.bin": {"sha256": A, "size": 1}} if files is None else files,
    }
    document.update(top)
    return json.dumps(document, indent=2)


MALFORMED = [
    # (text, line, reason, message fragment)
    pytest.param("hello", 1, Reason.MANIFEST_INVALID, "not a sha256sum line", id="garbage"),
    pytest.param(
        f"{A}  a\n\n{'a' * 63}  b", 3, Reason.MANIFEST_INVALID, "63-digit", id="short-digest"
    ),
    pytest.param(f"{'a' * 128}  b", 1, Reason.MANIFEST_INVALID, "128-digit", id="sha512-digest"),
    pytest.param(
        f"{'g' * 64}  b", 1, Reason.MANIFEST_INVALID, "not a sha256sum line", id="non-hex"
    ),
    pytest.param(f"{A} b", 1, Reason.MANIFEST_INVALID, "two spaces", id="one-space"),
    pytest.param(f"{A}  ", 1, Reason.MANIFEST_INVALID, "empty file name", id="empty-name"),
    pytest.param(
        f"MD5 (a) = {'a' * 32}", 1, Reason.MANIFEST_INVALID, "'MD5' algorithm", id="bsd-md5"
    ),
    pytest.param(
        f"SHA512 (a) = {A}{A}", 1, Reason.MANIFEST_INVALID, "'SHA512' algorithm", id="bsd-sha512"
    ),
    pytest.param(
        "SHA256 (a) = abc", 1, Reason.MANIFEST_INVALID, "not 64 hexadecimal", id="bsd-short"
    ),
    pytest.param(f"{A}  /etc/passwd", 1, Reason.UNSAFE_PATH, "is absolute", id="absolute"),
    pytest.param(
        f"SHA256 (/etc/x) = {A}", 1, Reason.UNSAFE_PATH, "is absolute", id="bsd-absolute"
    ),
    pytest.param(f"{A}  ../x", 1, Reason.UNSAFE_PATH, "'..' segment", id="dotdot"),
    pytest.param(
        f"{A}  a\n{A}  a/../../x", 2, Reason.UNSAFE_PATH, "'..' segment", id="inner-dotdot"
    ),
    pytest.param(f"{A}  a//b", 1, Reason.UNSAFE_PATH, "empty segment", id="double-slash"),
    pytest.param(f"{A}  a/", 1, Reason.UNSAFE_PATH, "empty segment", id="trailing-slash"),
    pytest.param(f"{A}  .", 1, Reason.UNSAFE_PATH, "directory itself", id="dot"),
    pytest.param(f"{A}  a\x00b", 1, Reason.UNSAFE_PATH, "NUL", id="nul"),
    pytest.param(f"{A}  a\udcffb", 1, Reason.UNSAFE_PATH, "not valid UTF-8", id="not-utf8"),
    pytest.param(
        f"{A} *models\\a.bin", 1, Reason.UNSAFE_PATH, "Windows path separator", id="windows"
    ),
    pytest.param(f"\\{A}  a\\tb", 1, Reason.MANIFEST_INVALID, "invalid escape", id="bad-escape"),
    pytest.param(
        f"\\{A}  ab\\", 1, Reason.MANIFEST_INVALID, "invalid escape", id="lone-backslash"
    ),
    pytest.param(
        f"{A}  a\n{B}  ./a", 2, Reason.MANIFEST_INVALID, "first on line 1", id="duplicate"
    ),
    pytest.param("{", 1, Reason.MANIFEST_INVALID, "not valid JSON", id="json-syntax"),
    pytest.param(
        _json(format="other"), 2, Reason.MANIFEST_INVALID, "format must be", id="json-format"
    ),
    pytest.param(
        _json(format_version=2), 3, Reason.MANIFEST_INVALID, "not supported", id="json-version"
    ),
    pytest.param(
        _json(format_version=True),
        3,
        Reason.MANIFEST_INVALID,
        "not supported",
        id="json-version-bool",
    ),
    pytest.param(
        _json(extra=1), 11, Reason.MANIFEST_INVALID, "unknown key 'extra'", id="json-unknown-key"
    ),
    pytest.param(
        _json(model_version=3),
        4,
        Reason.MANIFEST_INVALID,
        "model_version",
        id="json-model-version",
    ),
    pytest.param(
        _json(files=[]),
        5,
        Reason.MANIFEST_INVALID,
        "files must be an object",
        id="json-files-list",
    ),
    pytest.param(
        _json(files={"a": "x"}),
        6,
        Reason.MANIFEST_INVALID,
        "must be an object",
        id="json-entry-str",
    ),
    pytest.param(
        _json(files={"a": {"sha256": A, "mode": 1}}),
        6,
        Reason.MANIFEST_INVALID,
        "unknown key 'mode'",
        id="json-entry-key",
    ),
    pytest.param(
        _json(files={"a": {"sha256": "x"}}),
        6,
        Reason.MANIFEST_INVALID,
        "64 hexadecimal",
        id="json-digest",
    ),
    pytest.param(
        _json(files={"a": {"sha256": A, "size": -1}}),
        6,
        Reason.MANIFEST_INVALID,
        "non-negative",
        id="json-negative-size",
    ),
    pytest.param(
        _json(files={"a": {"sha256": A, "size": "1"}}),
        6,
        Reason.MANIFEST_INVALID,
        "non-negative",
        id="json-string-size",
    ),
    pytest.param(
        _json(files={"a": {"sha256": A, "size": 1.5}}),
        6,
        Reason.MANIFEST_INVALID,
        "non-negative",
        id="json-float-size",
    ),
    pytest.param(
        _json(files={"../a": {"sha256": A}}),
        6,
        Reason.UNSAFE_PATH,
        "'..' segment",
        id="json-dotdot",
    ),
    pytest.param(
        _json(files={"/a": {"sha256": A}}),
        6,
        Reason.UNSAFE_PATH,
        "is absolute",
        id="json-absolute",
    ),
    pytest.param(
        _json(files={"m\\a": {"sha256": A}}),
        6,
        Reason.UNSAFE_PATH,
        "Windows path separator",
        id="json-windows",
    ),
    pytest.param(
        _json(files={"a": {"sha256": A}, "./a": {"sha256": B}}),
        9,
        Reason.MANIFEST_INVALID,
        "listed twice",
        id="json-duplicate-normalized",
    ),
    pytest.param(
        '{"files": {"a": {"sha256": "' + A + '"},\n"a": {}}}',
        2,
        Reason.MANIFEST_INVALID,
        "appears twice",
        id="json-duplicate-key",
    ),
]


class TestParseErrors:
    @pytest.mark.parametrize(("text", "line", "reason", "fragment"), MALFORMED)
    def test_rejected_with_line_number(
        self, text: str, line: int, reason: Reason, fragment: str
    ) -> None:
        """Each malformed or unsafe manifest is refused with its reason and 1-based line."""
        with pytest.raises(ManifestError) as info:
            Manifest.parse(text, source="MANIFEST")
        error = info.value
        assert (error.line, error.reason) == (line, reason)
        assert fragment in str(error)
        assert str(error).startswith(f"line {line} of MANIFEST: ")
        assert "\n" not in str(error)

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("", id="empty"),
            pytest.param("\n  \n\r\n", id="blank-lines"),
            pytest.param(_json(files={}), id="json-no-files"),
        ],
    )
    def test_a_manifest_must_list_files(self, text: str) -> None:
        """A manifest with no entry is refused: it would verify any directory."""
        with pytest.raises(ManifestError, match="lists no files"):
            Manifest.parse(text)

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param('{"files": ' + "[" * 100_000, id="deep-nesting"),
            pytest.param('{"format_version": ' + "9" * 5000 + "}", id="huge-int"),
        ],
    )
    def test_hostile_json_is_a_manifest_error(self, text: str) -> None:
        """Absurd nesting or numbers fail as ManifestError, not RecursionError or ValueError."""
        with pytest.raises(ManifestError):
            Manifest.parse(text)

    def test_message_stays_short_for_a_huge_line(self) -> None:
        """A megabyte of garbage is refused with a message of one short line."""
        with pytest.raises(ManifestError) as info:
            Manifest.parse("x" * 1_000_000)
        assert len(str(info.value)) < 200

    def test_missing_manifest_file(self, tmp_path: pathlib.Path) -> None:
        """Reading a manifest that does not exist fails closed with reason MISSING."""
        with pytest.raises(ManifestError, match="does not exist") as info:
            Manifest.read(tmp_path / "nope")
        assert info.value.reason is Reason.MISSING

    def test_non_utf8_name_in_file_is_refused_on_its_line(self, tmp_path: pathlib.Path) -> None:
        """A name that is not UTF-8 is refused with the line it is on."""
        path = tmp_path / "MANIFEST"
        path.write_bytes(f"{A}  ok\n{B}  bad".encode() + b"\xff\n")
        with pytest.raises(ManifestError, match="not valid UTF-8") as info:
            Manifest.read(path)
        assert info.value.line == 2

    def test_uppercase_digests_and_bom_are_accepted(self) -> None:
        """Upper-case hex (as some tools write) and a leading BOM are read normally."""
        parsed = Manifest.parse(f"\ufeff{A.upper()} *a\n")
        assert parsed.entries["a"].sha256 == A


class TestBuild:
    def test_records_digests_and_sizes(self, manifest: Manifest) -> None:
        """Every regular file is listed with its digest and size, nested paths with '/'."""
        assert {p: (e.sha256, e.size) for p, e in manifest.entries.items()} == {
            name: (sha(data), len(data)) for name, data in FILES.items()
        }

    def test_excludes_files_and_directories(self, model_dir: pathlib.Path) -> None:
        """exclude leaves out a file and a whole directory."""
        (model_dir / "MANIFEST").write_text("stale")
        built = Manifest.build(model_dir, exclude=["./MANIFEST", "sub"])
        assert list(built.entries) == ["config.json", "weights.bin"]

    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda d: (d / "link").symlink_to(d / "weights.bin"), id="file-symlink"),
            pytest.param(lambda d: (d / "dirlink").symlink_to(d / "sub"), id="dir-symlink"),
            pytest.param(
                lambda d: (d / "sub" / "dangling").symlink_to("/nonexistent"), id="dangling"
            ),
        ],
    )
    def test_refuses_symlinks(
        self, model_dir: pathlib.Path, make: Callable[[pathlib.Path], None]
    ) -> None:
        """A symlink anywhere below the directory is refused as unsafe."""
        make(model_dir)
        with pytest.raises(ManifestError, match="symbolic link") as info:
            Manifest.build(model_dir)
        assert info.value.reason is Reason.UNSAFE_PATH

    def test_refuses_special_files(self, model_dir: pathlib.Path) -> None:
        """A FIFO is not a regular file and is refused (without blocking)."""
        os.mkfifo(model_dir / "pipe")
        with pytest.raises(ManifestError, match="not a regular file") as info:
            Manifest.build(model_dir)
        assert info.value.reason is Reason.UNSAFE_PATH

    def test_directory_itself_may_be_a_symlink(
        self, model_dir: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """The directory named by the caller may be a symlink, as in current -> v3."""
        (tmp_path / "current").symlink_to(model_dir)
        assert Manifest.build(tmp_path / "current") == Manifest.build(model_dir)

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            pytest.param("nope", Reason.MISSING, id="missing"),
            pytest.param("empty", Reason.MANIFEST_INVALID, id="empty"),
        ],
    )
    def test_missing_or_empty_directory(
        self, tmp_path: pathlib.Path, name: str, reason: Reason
    ) -> None:
        """A missing or empty directory gives no manifest."""
        (tmp_path / "empty").mkdir()
        with pytest.raises(ManifestError) as info:
            Manifest.build(tmp_path / name)
        assert info.value.reason is reason

    def test_hashes_in_several_threads(
        self, model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Files are hashed concurrently by the manifest's worker threads."""
        wrapped, names = meet_in_threads(hash_file)
        monkeypatch.setattr(_manifest, "hash_file", wrapped)
        Manifest.build(model_dir, workers=3)
        assert len(names) >= 2
        assert all(name.startswith("clarity-manifest") for name in names)

    def test_workers_must_be_positive(self, model_dir: pathlib.Path) -> None:
        """workers=0 is a programming error, not a silent default."""
        with pytest.raises(ValueError, match="at least 1"):
            Manifest.build(model_dir, workers=0)


class TestCheck:
    def test_clean_directory_has_no_problems(
        self, manifest: Manifest, model_dir: pathlib.Path
    ) -> None:
        """An untouched directory checks clean."""
        assert manifest.check(model_dir) == []

    def test_checksum_mismatch(self, manifest: Manifest, model_dir: pathlib.Path) -> None:
        """Same size, different bytes: a ChecksumMismatchError with both digests."""
        (model_dir / "config.json").write_bytes(b'{"layers": 3}')
        [problem] = manifest.check(model_dir)
        assert isinstance(problem, ChecksumMismatchError)
        assert problem.path == os.path.join(model_dir, "config.json")
        assert problem.expected == sha(FILES["config.json"])
        assert problem.actual == sha(b'{"layers": 3}')

    def test_size_mismatch(self, manifest: Manifest, model_dir: pathlib.Path) -> None:
        """A truncated file is a SizeMismatchError with both sizes."""
        (model_dir / "weights.bin").write_bytes(b"\x00")
        [problem] = manifest.check(model_dir)
        assert isinstance(problem, SizeMismatchError)
        assert (problem.expected, problem.actual) == (len(FILES["weights.bin"]), 1)

    def test_missing_file(self, manifest: Manifest, model_dir: pathlib.Path) -> None:
        """A listed file that is gone is reported with reason MISSING."""
        (model_dir / "sub" / "tokenizer.txt").unlink()
        [problem] = manifest.check(model_dir)
        assert problem.reason is Reason.MISSING
        assert problem.path == os.path.join(model_dir, "sub", "tokenizer.txt")

    def test_missing_directory_on_the_way(
        self, manifest: Manifest, model_dir: pathlib.Path
    ) -> None:
        """A listed file whose directory is gone is MISSING."""
        shutil.rmtree(model_dir / "sub")
        [problem] = manifest.check(model_dir)
        assert problem.reason is Reason.MISSING

    def test_extra_file(self, manifest: Manifest, model_dir: pathlib.Path) -> None:
        """A file the manifest does not list is a problem naming that file."""
        (model_dir / "sub" / "backdoor.py").write_text("import os")
        [problem] = manifest.check(model_dir)
        assert type(problem) is IntegrityError
        assert problem.reason is Reason.MANIFEST_INVALID
        assert "sub/backdoor.py is not listed" in str(problem)

    def test_extra_file_allowed(self, manifest: Manifest, model_dir: pathlib.Path) -> None:
        """allow_extra accepts unlisted files (listed ones are still checked)."""
        (model_dir / "README").write_text("hi")
        assert manifest.check(model_dir, allow_extra=True) == []
        (model_dir / "config.json").write_text("{}")
        assert len(manifest.check(model_dir, allow_extra=True)) == 1

    def test_excluded_extra_is_not_reported(
        self, manifest: Manifest, model_dir: pathlib.Path
    ) -> None:
        """An excluded path (the manifest itself) is not an extra file."""
        (model_dir / "MANIFEST").write_text("x")
        assert manifest.check(model_dir, exclude=["MANIFEST"]) == []

    def test_symlink_in_place_of_a_file(
        self, manifest: Manifest, model_dir: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """A symlink to identical bytes is still refused: listed files must be regular files."""
        outside = tmp_path / "outside.json"
        outside.write_bytes(FILES["config.json"])
        (model_dir / "config.json").unlink()
        (model_dir / "config.json").symlink_to(outside)
        [problem] = manifest.check(model_dir)
        assert problem.reason is Reason.UNSAFE_PATH

    def test_symlinked_directory_escaping(
        self, manifest: Manifest, model_dir: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """A directory on a listed path replaced by a symlink leaving the tree is one problem."""
        shutil.move(model_dir / "sub", tmp_path / "elsewhere")
        (model_dir / "sub").symlink_to(tmp_path / "elsewhere")
        [problem] = manifest.check(model_dir)
        assert problem.reason is Reason.UNSAFE_PATH
        assert "symbolic link" in str(problem)

    def test_version_mismatch(self, manifest: Manifest, model_dir: pathlib.Path) -> None:
        """expected_version must equal the manifest's version."""
        assert manifest.check(model_dir, expected_version="1.0") == []
        [problem] = manifest.check(model_dir, expected_version="2.0")
        assert isinstance(problem, ManifestError)
        assert problem.reason is Reason.VERSION_MISMATCH
        assert (problem.expected, problem.actual) == ("2.0", "1.0")

    def test_several_problems_in_order(self, manifest: Manifest, model_dir: pathlib.Path) -> None:
        """Every problem is reported: version first, then by path."""
        (model_dir / "weights.bin").unlink()
        (model_dir / "config.json").write_text("changed!!!!!!")
        (model_dir / "extra.txt").write_text("x")
        problems = manifest.check(model_dir, expected_version="2")
        assert [p.reason for p in problems] == [
            Reason.VERSION_MISMATCH,
            Reason.CHECKSUM_MISMATCH,
            Reason.MANIFEST_INVALID,
            Reason.MISSING,
        ]

    def test_missing_directory_is_one_problem(
        self, manifest: Manifest, tmp_path: pathlib.Path
    ) -> None:
        """A missing model directory is one MISSING problem, not one per file."""
        [problem] = manifest.check(tmp_path / "nope")
        assert problem.reason is Reason.MISSING

    def test_verifies_in_several_threads(
        self, manifest: Manifest, model_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Listed files are verified concurrently by the manifest's worker threads."""
        wrapped, names = meet_in_threads(verify_entry)
        monkeypatch.setattr(_manifest, "verify_entry", wrapped)
        assert manifest.check(model_dir, workers=3) == []
        assert len(names) >= 2
        assert all(name.startswith("clarity-manifest") for name in names)


def failures(registry: CollectorRegistry, model: str, reason: Reason) -> float | None:
    return registry.get_sample_value(
        "model_integrity_failures_total", {"model": model, "reason": reason.value}
    )


class TestVerify:
    def test_pass_emits_one_event(
        self,
        manifest: Manifest,
        model_dir: pathlib.Path,
        events: list[Event],
        registry: CollectorRegistry,
    ) -> None:
        """A clean directory emits one IntegrityCheckPassed with the total size."""
        manifest.verify(model_dir, model="m", registry=registry)
        [event] = events
        assert isinstance(event, IntegrityCheckPassed)
        assert (event.model, event.path) == ("m", os.fspath(model_dir))
        assert event.size == sum(len(data) for data in FILES.values())
        assert failures(registry, "m", Reason.CHECKSUM_MISMATCH) == 0.0

    def test_one_problem_is_raised_as_is(
        self,
        manifest: Manifest,
        model_dir: pathlib.Path,
        events: list[Event],
        registry: CollectorRegistry,
    ) -> None:
        """A single problem is raised itself, reported once and counted once."""
        (model_dir / "config.json").write_bytes(b'{"layers": 9}')
        with pytest.raises(ChecksumMismatchError):
            manifest.verify(model_dir, model="m", registry=registry)
        [event] = events
        assert isinstance(event, IntegrityCheckFailed)
        assert (event.reason, event.error_type) == (
            Reason.CHECKSUM_MISMATCH,
            "ChecksumMismatchError",
        )
        assert event.path == os.path.join(model_dir, "config.json")
        assert failures(registry, "m", Reason.CHECKSUM_MISMATCH) == 1.0

    def test_several_problems_raise_manifest_error(
        self,
        manifest: Manifest,
        model_dir: pathlib.Path,
        events: list[Event],
        registry: CollectorRegistry,
    ) -> None:
        """Several problems raise one ManifestError holding all, with an event and count each."""
        (model_dir / "weights.bin").unlink()
        (model_dir / "config.json").write_bytes(b'{"layers": 9}')
        with pytest.raises(ManifestError) as info:
            manifest.verify(model_dir, model="m", registry=registry)
        error = info.value
        assert [p.reason for p in error.problems] == [Reason.CHECKSUM_MISMATCH, Reason.MISSING]
        assert error.reason is Reason.CHECKSUM_MISMATCH
        assert str(error).startswith("2 problems verifying")
        assert [e.reason for e in events if isinstance(e, IntegrityCheckFailed)] == [
            Reason.CHECKSUM_MISMATCH,
            Reason.MISSING,
        ]
        assert failures(registry, "m", Reason.CHECKSUM_MISMATCH) == 1.0
        assert failures(registry, "m", Reason.MISSING) == 1.0

    def test_message_stays_short_with_many_problems(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """Fifty problems give a message that names three and counts the rest."""
        root = make_tree(tmp_path / "m", {f"f{i:02}.bin": b"x" for i in range(50)})
        built = Manifest.build(root)
        for path in root.iterdir():
            path.write_bytes(b"y")
        with pytest.raises(ManifestError) as info:
            built.verify(root, registry=registry)
        assert len(info.value.problems) == 50
        assert str(info.value).endswith("f00.bin, f01.bin, f02.bin and 47 more")


class TestNearMisses:
    """Checks that a one-token change to the product would slip past (mutation testing)."""

    @staticmethod
    def one_digit_off(digest: str, position: int) -> str:
        digits = list(digest)
        digits[position] = "0" if digits[position] != "0" else "1"
        return "".join(digits)

    @POSITIONS
    def test_verify_refuses_a_digest_one_digit_off(
        self, model_dir: pathlib.Path, registry: CollectorRegistry, position: int
    ) -> None:
        """Manifest.verify compares all 64 digits of every entry."""
        wrong = self.one_digit_off(sha(FILES["config.json"]), position)
        manifest = Manifest([ManifestEntry("config.json", wrong)])
        with pytest.raises(ChecksumMismatchError) as info:
            manifest.verify(model_dir, allow_extra=True, model="m", registry=registry)
        assert info.value.expected == wrong
        assert failures(registry, "m", Reason.CHECKSUM_MISMATCH) == 1.0

    @POSITIONS
    def test_read_entry_refuses_a_digest_one_digit_off(
        self, model_dir: pathlib.Path, position: int
    ) -> None:
        """read_entry compares all 64 digits."""
        wrong = self.one_digit_off(sha(FILES["weights.bin"]), position)
        manifest = Manifest([ManifestEntry("weights.bin", wrong)])
        with pytest.raises(ChecksumMismatchError):
            manifest.read_entry(model_dir, "weights.bin")

    def test_verify_refuses_an_extra_file_by_default(
        self, manifest: Manifest, model_dir: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """verify (not only check) refuses an unlisted file unless allow_extra is given."""
        (model_dir / "sub" / "planted.py").write_text("import os")
        with pytest.raises(IntegrityError, match="not listed") as info:
            manifest.verify(model_dir, model="m", registry=registry)
        assert info.value.reason is Reason.MANIFEST_INVALID
        assert failures(registry, "m", Reason.MANIFEST_INVALID) == 1.0
        manifest.verify(model_dir, allow_extra=True)

    def test_read_entry_checks_the_listed_size_first(
        self, model_dir: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """An entry whose size is wrong is refused for size even though its digest matches."""
        data = FILES["weights.bin"]
        manifest = Manifest([ManifestEntry("weights.bin", sha(data), len(data) + 1)])
        with pytest.raises(SizeMismatchError) as info:
            manifest.read_entry(model_dir, "weights.bin", model="m", registry=registry)
        assert (info.value.expected, info.value.actual) == (len(data) + 1, len(data))
        assert failures(registry, "m", Reason.SIZE_MISMATCH) == 1.0

    def test_verify_checks_the_listed_size(self, model_dir: pathlib.Path) -> None:
        """verify refuses a right digest with a wrong size too."""
        data = FILES["config.json"]
        manifest = Manifest([ManifestEntry("config.json", sha(data), len(data) - 1)])
        with pytest.raises(SizeMismatchError):
            manifest.verify(model_dir, allow_extra=True)


class TestReadEntry:
    def test_returns_verified_bytes(self, manifest: Manifest, model_dir: pathlib.Path) -> None:
        """read_entry returns the bytes of a listed file that matches."""
        assert manifest.read_entry(model_dir, "./sub/tokenizer.txt") == FILES["sub/tokenizer.txt"]

    def test_tampered_entry_is_refused(
        self, manifest: Manifest, model_dir: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """A changed file is never returned."""
        (model_dir / "config.json").write_bytes(b'{"layers": 7}')
        with pytest.raises(ChecksumMismatchError):
            manifest.read_entry(model_dir, "config.json", model="m", registry=registry)

    def test_unknown_name_is_refused_and_reported(
        self,
        manifest: Manifest,
        model_dir: pathlib.Path,
        events: list[Event],
        registry: CollectorRegistry,
    ) -> None:
        """Asking for a file the manifest does not list fails closed, with an event and count."""
        (model_dir / "other.bin").write_bytes(b"x")
        with pytest.raises(ManifestError, match="not listed") as info:
            manifest.read_entry(model_dir, "other.bin", model="m", registry=registry)
        assert info.value.reason is Reason.MANIFEST_INVALID
        assert [type(e) for e in events] == [IntegrityCheckFailed]
        assert failures(registry, "m", Reason.MANIFEST_INVALID) == 1.0

    def test_symlinked_directory_is_refused(
        self, manifest: Manifest, model_dir: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        """An entry below a symlinked directory is not read, even with matching bytes."""
        shutil.move(model_dir / "sub", tmp_path / "elsewhere")
        (model_dir / "sub").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(IntegrityError) as info:
            manifest.read_entry(model_dir, "sub/tokenizer.txt")
        assert info.value.reason is Reason.UNSAFE_PATH

    def test_path_of(self, manifest: Manifest, model_dir: pathlib.Path) -> None:
        """path_of gives the checked path of a listed entry and refuses unsafe names."""
        expected = os.path.join(model_dir, "sub", "tokenizer.txt")
        assert manifest.path_of(model_dir, "./sub/tokenizer.txt") == expected
        with pytest.raises(ManifestError) as info:
            manifest.path_of(model_dir, "../etc/passwd")
        assert info.value.reason is Reason.UNSAFE_PATH


HEX = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
SEGMENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\\\x00"),
    min_size=1,
    max_size=10,
).filter(lambda s: s not in {".", ".."})
NAMES = st.lists(SEGMENT, min_size=1, max_size=3).map("/".join)
GNU_SEGMENT = st.text(alphabet="ab \\\n\r*()=", min_size=1, max_size=6).filter(
    lambda s: s not in {".", ".."}
)
GNU_ONLY_NAMES = st.lists(GNU_SEGMENT, min_size=1, max_size=3).map("/".join)
VERSIONS = st.none() | st.text(alphabet=st.characters(codec="utf-8"))
SIZES = st.none() | st.integers(min_value=0, max_value=2**40)
LINE_LIKE = st.one_of(
    st.text(),
    st.builds("{}{}{}".format, HEX, st.sampled_from([" ", "  ", " *", "\t"]), st.text()),
    st.builds("SHA256 ({}) = {}".format, st.text(), HEX),
    st.builds("\\{}  {}".format, HEX, st.text()),
)
JSON_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | HEX,
    lambda inner: st.lists(inner) | st.dictionaries(st.text() | NAMES, inner),
).map(
    lambda value: json.dumps(
        {"format": "clarity-resilience-manifest", "format_version": 1, "files": value}
    )
)


def parse_or_manifest_error(text: str) -> None:
    try:
        result = Manifest.parse(text)
    except ManifestError:
        return
    assert isinstance(result, Manifest)


class TestProperties:
    @given(st.text())
    def test_any_text_parses_or_raises_manifest_error(self, text: str) -> None:
        """Arbitrary text gives a Manifest or a ManifestError, never another exception."""
        parse_or_manifest_error(text)

    @given(st.binary())
    def test_any_bytes_parse_or_raise_manifest_error(self, data: bytes) -> None:
        """Arbitrary bytes (as Manifest.read decodes them) never escape as another exception."""
        parse_or_manifest_error(data.decode("utf-8", "surrogateescape"))

    @given(st.lists(LINE_LIKE, max_size=6).map("\n".join) | JSON_LIKE)
    def test_near_manifests_parse_or_raise_manifest_error(self, text: str) -> None:
        """Text shaped like a manifest gives a Manifest or a ManifestError, nothing else."""
        parse_or_manifest_error(text)

    @settings(max_examples=200)
    @given(
        st.dictionaries(NAMES, st.tuples(HEX, SIZES), min_size=1, max_size=8),
        VERSIONS,
    )
    def test_safe_names_round_trip(
        self, files: dict[str, tuple[str, int | None]], version: str | None
    ) -> None:
        """Any set of safe names survives both formats (JSON also keeps sizes and version)."""
        manifest = Manifest(
            [ManifestEntry(name, digest, size) for name, (digest, size) in files.items()],
            version=version,
        )
        assert Manifest.parse(manifest.dumps("json")) == manifest
        from_gnu = Manifest.parse(manifest.dumps("sha256sum"))
        assert {p: e.sha256 for p, e in from_gnu.entries.items()} == {
            p: e.sha256 for p, e in manifest.entries.items()
        }

    @given(st.dictionaries(GNU_ONLY_NAMES, HEX, min_size=1, max_size=6))
    def test_escaped_names_round_trip_through_sha256sum_form(self, files: dict[str, str]) -> None:
        """Names with backslashes, newlines and carriage returns survive the GNU escapes."""
        manifest = Manifest([ManifestEntry(name, digest) for name, digest in files.items()])
        parsed = Manifest.parse(manifest.dumps("sha256sum"))
        assert parsed == manifest
